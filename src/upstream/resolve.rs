//! Upstream host names to addresses, without a thread per request.
//!
//! ureq resolves the host of every request before it looks for a pooled connection, and
//! its resolver runs the lookup on a new thread whenever a timeout applies (ours always
//! does, for `request_timeout_secs`): a thread started and joined per request, which was
//! most of the gateway's own cost in front of a fast upstream. Upstream hosts are few and
//! come from keys.txt, so this resolver answers IP literals at once and names from a
//! short-lived cache; only a miss goes to ureq's resolver (and its thread).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a looked-up name is trusted. Short, so a moved upstream is followed soon;
/// long enough that a busy gateway looks each name up a few times a minute at most.
const TTL: Duration = Duration::from_secs(30);

/// Names kept at most (keys.txt names a handful of hosts; this only bounds the map).
const MAX_NAMES: usize = 64;

/// IP literals at once, names through a cache in front of ureq's resolver.
#[derive(Debug, Default)]
pub(super) struct CachingResolver {
    lookup: DefaultResolver,
    names: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(authority), Some(port)) = (uri.authority(), default_port(uri)) else {
            return self.lookup.resolve(uri, config, timeout);
        };
        if let Some(ip) = ip_literal(authority.host()) {
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let name = format!("{}:{port}", authority.host());
        if let Some((at, addrs)) = self.lock().get(&name) {
            if at.elapsed() < TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.lookup.resolve(uri, config, timeout)?;
        let mut names = self.lock();
        if names.len() >= MAX_NAMES {
            names.retain(|_, (at, _)| at.elapsed() < TTL);
            if names.len() >= MAX_NAMES {
                names.clear();
            }
        }
        names.insert(name, (Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

impl CachingResolver {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ResolvedSocketAddrs)>> {
        self.names.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The port of `uri`: its own, or its scheme's.
fn default_port(uri: &Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("http") => Some(80),
        Some("https") => Some(443),
        _ => None,
    })
}

/// `host` as an address when it is one (`[::1]` as well as `127.0.0.1`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(host).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        let config = ureq::Agent::config_builder().build();
        let resolver = CachingResolver::default();
        resolver.resolve(&uri, &config, NextTimeout::default()).map(|addrs| addrs.to_vec())
    }

    #[test]
    fn ip_literals_need_no_lookup_and_get_their_scheme_port() {
        let cases = [
            ("http://127.0.0.1:11434/api/chat", "127.0.0.1:11434"),
            ("http://10.0.0.7/api/chat", "10.0.0.7:80"),
            ("https://[::1]/v1", "[::1]:443"),
            ("https://[fe80::1]:8443/v1", "[fe80::1]:8443"),
        ];
        for (url, want) in cases {
            assert_eq!(resolve(url).unwrap(), [want.parse::<SocketAddr>().unwrap()], "{url}");
        }
    }

    #[test]
    fn names_are_looked_up_once_then_cached() {
        let uri: Uri = "http://localhost:11434/api/chat".parse().unwrap();
        let config = ureq::Agent::config_builder().build();
        let resolver = CachingResolver::default();
        let timeout = NextTimeout::default;
        let first = resolver.resolve(&uri, &config, timeout()).unwrap().to_vec();
        assert!(first.iter().all(|addr| addr.port() == 11434 && addr.ip().is_loopback()), "{first:?}");
        assert!(resolver.lock().contains_key("localhost:11434"));
        assert_eq!(resolver.resolve(&uri, &config, timeout()).unwrap().to_vec(), first);
    }
}
