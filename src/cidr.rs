//! Address blocks (`10.0.0.0/8`, `2001:db8::/32`) and which address a request comes from.
//!
//! In scope: reading a CIDR block as written in `config.toml` (a bare address is a block
//! of one), whether an address lies in a block, and the client address of a request: the
//! socket's peer, or, when that peer is one of `trusted_proxies`, the right-most
//! `X-Forwarded-For` address that is not. Out of scope: what an address may do (`limits`,
//! `lockout`) and reading headers off a socket (`server`). Addresses are parsed by std;
//! prefixes and masks by hand, so no crate is needed.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A block of addresses: the network address and how many leading bits are fixed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The block of exactly one address.
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { network: addr, prefix }
    }

    /// Reads `10.0.0.0/8`, `fd00::/8` or a bare address (`127.0.0.1`, a block of one).
    /// The error says what was wrong and what form is expected.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!(
                "'{text}' is not an address block: write an IPv4 or IPv6 address with an optional \
                 /prefix, such as \"10.0.0.0/8\", \"192.168.1.7\" or \"fd00::/8\""
            )
        })?;
        if let IpAddr::V6(v6) = network {
            // Client addresses written so are matched as IPv4: a block written so never would.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(format!(
                    "'{text}' is an IPv4 address written as IPv6; write it as IPv4, such as \"{v4}\" \
                     (its prefix less 96 bits)"
                ));
            }
        }
        let max = max_prefix(network);
        let prefix = match prefix {
            None => max,
            Some(digits) => match digits.parse::<u8>() {
                Ok(bits) if bits <= max && !digits.starts_with('+') => bits,
                _ => return Err(format!("'{text}': the prefix after / must be a number from 0 to {max}")),
            },
        };
        let block = Cidr { network, prefix };
        if block.masked(network) != network {
            return Err(format!(
                "'{text}' has bits set past its /{prefix} prefix; did you mean \"{}\"?",
                Cidr { network: block.masked(network), prefix }
            ));
        }
        Ok(block)
    }

    /// Whether `addr` is in the block. An IPv4 address written as IPv6 (`::ffff:10.1.2.3`,
    /// as a dual-stack socket reports IPv4 peers) counts as the IPv4 address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.network.is_ipv4() && self.masked(addr) == self.network
    }

    /// `addr` with the bits past the prefix cleared (same family as the block).
    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from((u32::from(v4) & mask).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::from((u128::from(v6) & mask).to_be_bytes())
            }
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Whether any block of `blocks` holds `addr`.
pub fn any_contains(blocks: &[Cidr], addr: IpAddr) -> bool {
    blocks.iter().any(|block| block.contains(addr))
}

/// The address a request comes from: its `peer`, unless the peer is one of `trusted`
/// proxies; then the right-most address of `forwarded` (the `X-Forwarded-For` values in the
/// order received) that is not a trusted proxy itself.
///
/// Each proxy appends the address it got the request from, so reading from the right
/// stops at the first hop no trusted proxy vouches for; anything to its left was written
/// by the client and may be made up. An entry that is not an address ends the walk at the
/// hop before it, and a chain of trusted proxies only gives its left-most one.
pub fn client_addr<'h>(peer: IpAddr, forwarded: impl Iterator<Item = &'h str>, trusted: &[Cidr]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !any_contains(trusted, client) {
        return client;
    }
    let entries: Vec<&str> = forwarded.flat_map(|value| value.split(',')).collect();
    for entry in entries.iter().rev() {
        let Some(hop) = forwarded_addr(entry) else { return client };
        client = hop;
        if !any_contains(trusted, hop) {
            return hop;
        }
    }
    client
}

/// One `X-Forwarded-For` entry as an address: `203.0.113.7`, `2001:db8::1`, and with a
/// port as some proxies write them, `203.0.113.7:5123` or `[2001:db8::1]:5123`.
fn forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let addr = entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()));
    let addr = addr.or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok());
    addr.map(|addr| addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_are_read_and_shown_as_written() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 127.0.0.1/32 ", "127.0.0.1/32"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::1", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::/0", "::/0"),
        ];
        for (text, shown) in cases {
            assert_eq!(Cidr::parse(text).map(|c| c.to_string()).as_deref(), Ok(shown), "{text}");
        }
    }

    #[test]
    fn bad_blocks_say_what_is_wrong() {
        let cases = [
            ("10.0.0.0/33", "from 0 to 32"),
            ("fd00::/129", "from 0 to 128"),
            ("10.0.0.0/", "from 0 to 32"),
            ("10.0.0.0/+8", "from 0 to 32"),
            ("10.0.0.0/8/8", "from 0 to 32"),
            ("10.0.0.0/-1", "from 0 to 32"),
            ("10.0.0/8", "not an address block"),
            ("localhost", "not an address block"),
            ("", "not an address block"),
            ("10.0.0.256/32", "not an address block"),
            ("10.1.2.3/8", "did you mean \"10.0.0.0/8\""),
            ("192.168.1.0/16", "did you mean \"192.168.0.0/16\""),
            ("fd00::1/8", "did you mean \"fd00::/8\""),
            ("::ffff:10.0.0.0/104", "write it as IPv4, such as \"10.0.0.0\""),
        ];
        for (text, needle) in cases {
            let err = Cidr::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn membership_follows_the_prefix() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("192.168.4.0/22", "192.168.7.255", true),
            ("192.168.4.0/22", "192.168.8.0", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "10.0.0.1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("fe80::/10", "febf::1", true),
            ("fe80::/10", "fec0::1", false),
            ("::1/128", "::1", true),
            // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
        ];
        for (block, addr, want) in cases {
            assert_eq!(Cidr::parse(block).unwrap().contains(ip(addr)), want, "{addr} in {block}");
        }
    }

    #[test]
    fn the_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let trusted = [Cidr::parse("127.0.0.1/32").unwrap(), Cidr::parse("10.0.0.0/8").unwrap()];
        let cases: [(&str, &[&str], &str); 11] = [
            // An untrusted peer: whatever it forwards is ignored.
            ("203.0.113.5", &["198.51.100.1"], "203.0.113.5"),
            // A trusted peer without the header is the client itself.
            ("127.0.0.1", &[], "127.0.0.1"),
            ("127.0.0.1", &["198.51.100.1"], "198.51.100.1"),
            // The right-most untrusted hop; what the client wrote to its left is ignored.
            ("127.0.0.1", &["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
            ("127.0.0.1", &["6.6.6.6, 198.51.100.1, 10.1.1.1"], "198.51.100.1"),
            // Several headers read as one list, in order.
            ("127.0.0.1", &["6.6.6.6", "198.51.100.1, 10.1.1.1"], "198.51.100.1"),
            // Only trusted hops: the left-most.
            ("127.0.0.1", &["10.2.2.2, 10.1.1.1"], "10.2.2.2"),
            // Garbage ends the walk at the hop before it.
            ("127.0.0.1", &["198.51.100.1, unknown"], "127.0.0.1"),
            ("127.0.0.1", &["unknown, 10.1.1.1"], "10.1.1.1"),
            // Ports, brackets and mapped addresses.
            ("::ffff:127.0.0.1", &["198.51.100.1:4711"], "198.51.100.1"),
            ("127.0.0.1", &["[2001:db8::1]:4711"], "2001:db8::1"),
        ];
        for (peer, forwarded, want) in cases {
            let got = client_addr(ip(peer), forwarded.iter().copied(), &trusted);
            assert_eq!(got, ip(want), "peer {peer}, X-Forwarded-For {forwarded:?}");
        }
        assert_eq!(client_addr(ip("127.0.0.1"), ["198.51.100.1"].into_iter(), &[]), ip("127.0.0.1"));
    }
}
