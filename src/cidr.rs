//! Address blocks in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a bare address): read from
//! the config, and asked whether a client's address falls in one.
//!
//! Pure and without DNS: a host name is an error, not a lookup. A block whose address has
//! bits set past its prefix (`10.1.2.3/8`) is refused with the block it probably means,
//! since such a typo would otherwise open a wider range than the operator read. An
//! IPv4-mapped IPv6 client address (`::ffff:10.1.2.3`, what a dual-stack `[::]` listener
//! reports for an IPv4 client) is matched as the IPv4 address it carries.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A block of addresses: a network address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Reads `ADDRESS/PREFIX` or a bare `ADDRESS`; the error says what is wrong and which
    /// form was expected.
    ///
    /// ```
    /// use ollama_gateway::cidr::Cidr;
    /// let block = Cidr::parse("10.0.0.0/8").unwrap();
    /// assert!(block.contains("10.200.3.4".parse().unwrap()));
    /// assert!(Cidr::parse("10.1.2.3/8").unwrap_err().contains("10.0.0.0/8"));
    /// ```
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let expected = "write an address or a block, such as \"10.0.0.0/8\", \"192.168.1.7\" or \"fd00::/8\"";
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("'{text}' is not an IP address or CIDR block: {expected}"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would also take "+8".
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                match digits.parse::<u8>() {
                    Ok(prefix) if prefix <= max => prefix,
                    _ => return Err(format!("'{text}': the prefix after '/' must be 0 to {max}")),
                }
            }
            Some(_) => return Err(format!("'{text}': the prefix after '/' must be a number; {expected}")),
        };
        let block = Cidr { network, prefix };
        let masked = block.masked(network);
        if masked != network {
            return Err(format!(
                "'{text}' has bits set past its /{prefix} prefix; write the block as {}",
                Cidr { network: masked, prefix }
            ));
        }
        Ok(block)
    }

    /// Whether `addr` is in the block (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        addr.is_ipv4() == self.network.is_ipv4() && self.masked(addr) == self.network
    }

    /// `addr` with the bits past the prefix cleared (same family as the block).
    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether any block of `blocks` holds `addr`.
pub fn any_contains(blocks: &[Cidr], addr: IpAddr) -> bool {
    blocks.iter().any(|block| block.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_and_the_addresses_they_hold() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0", true),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("192.168.1.0/24", "192.168.1.77", true),
            ("192.168.1.0/24", "192.168.2.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::1", "::1", true),
            ("::1/128", "::2", false),
            ("fd00::/8", "fd12:3456::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "10.0.0.1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/33", "2001:db8:8000::1", false),
            // A dual-stack listener reports IPv4 clients as mapped IPv6 addresses.
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("10.0.0.0/8", "::ffff:11.1.2.3", false),
            ("::1", "::ffff:127.0.0.1", false),
        ];
        for (block, addr, want) in cases {
            let parsed = Cidr::parse(block).unwrap_or_else(|err| panic!("{block}: {err}"));
            assert_eq!(parsed.contains(ip(addr)), want, "{block} holds {addr}?");
        }
    }

    #[test]
    fn bad_blocks_say_what_is_wrong() {
        let cases = [
            ("localhost", "not an IP address"),
            ("10.0.0/8", "not an IP address"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/", "must be a number"),
            ("10.0.0.0/+8", "must be a number"),
            ("10.0.0.0/8/8", "must be a number"),
            ("10.1.2.3/8", "write the block as 10.0.0.0/8"),
            ("192.168.1.1/24", "write the block as 192.168.1.0/24"),
            ("fd00::1/8", "write the block as fd00::/8"),
        ];
        for (text, needle) in cases {
            let err = Cidr::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn display_and_host_blocks() {
        assert_eq!(Cidr::parse(" 10.0.0.0/8 ").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("::1").unwrap(), Cidr::host(ip("::1")));
        assert_eq!(Cidr::host(ip("127.0.0.1")).to_string(), "127.0.0.1/32");
        let blocks = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("::1").unwrap()];
        assert!(any_contains(&blocks, ip("::1")) && !any_contains(&blocks, ip("127.0.0.1")));
    }
}
