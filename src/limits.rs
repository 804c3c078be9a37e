//! Per-token limits at the door: `expires`, `ips`, `rpm` and `max_concurrent` of a
//! `[[tokens]]` entry, checked from a request's head before its body is read, and the
//! counts behind them.
//!
//! The counts live in one [`Limits`] shared by every config generation and keyed by token
//! name, so a reload keeps them: a token whose `rpm` changes is held to the new rate at
//! once, with the requests it already made. `rpm` is a sliding window: a request is taken
//! when fewer than `rpm` requests of the token started in the 60 seconds before it, so no
//! minute, wherever it starts, holds more; refused requests do not count. A token's
//! requests in flight are counted from admission until its [`Permit`] drops, which
//! `server` holds until the answer is written (a stream's last byte, or its client
//! leaving). The `rpm` window is kept only while `rpm` is set, so a limit that a reload
//! adds counts from then. Also here: the address lock-out ([`Lockout`]) after wrong
//! tokens. Out of scope: the limits' values and their validation (`config`), which
//! address a request comes from (`cidr`), and answering (`api` puts these errors in the
//! family's envelope).

use crate::auth::TokenLimits;
use crate::cidr;
use crate::error::ApiError;
use crate::lockout::Lockout;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The window `rpm` counts requests in.
pub const RPM_WINDOW: Duration = Duration::from_secs(60);

/// Every token's counts and the address lock-out, shared across reloads.
#[derive(Default)]
pub struct Limits {
    tokens: Mutex<HashMap<String, Arc<Mutex<Window>>>>,
    /// Addresses locked out after wrong tokens.
    pub lockout: Lockout,
}

impl Limits {
    /// Takes a request of token `name` at `now` under its `limits`, or answers the 429
    /// that says which limit it is over and when to retry.
    pub fn admit(&self, name: &str, limits: &TokenLimits, now: Instant) -> Result<Permit, ApiError> {
        let window = {
            let mut tokens = lock(&self.tokens);
            match tokens.get(name) {
                Some(window) => Arc::clone(window),
                None => Arc::clone(tokens.entry(name.to_string()).or_default()),
            }
        };
        let over = lock(&window).start(limits.rpm, limits.max_concurrent, now);
        match over {
            Ok(()) => Ok(Permit(Some(window))),
            Err(Over::Rpm { rpm, retry_after }) => Err(too_many(
                format!("token '{name}' is over its rpm = {rpm} limit; retry in {retry_after} s"),
                retry_after,
            )),
            Err(Over::Concurrent { max }) => Err(too_many(
                format!(
                    "token '{name}' already has {max} requests in flight, its max_concurrent = {max} limit; \
                     retry when one ends"
                ),
                1,
            )),
        }
    }

    /// Forgets the counts of tokens not in `names` (renamed or removed by a reload).
    pub fn keep_only<'n>(&self, names: impl Iterator<Item = &'n str>) {
        let names: Vec<&str> = names.collect();
        lock(&self.tokens).retain(|name, _| names.contains(&name.as_str()));
    }
}

/// Whether token `name` may be used at `unix` (seconds) from `from`: the 403 when it has
/// expired or the address is not in its `ips`.
pub fn check_access(
    name: &str,
    limits: &TokenLimits,
    from: Option<IpAddr>,
    unix: u64,
) -> Result<(), ApiError> {
    let refuse = |code, message| ApiError {
        status: 403,
        kind: "permission_error",
        message,
        param: None,
        code: Some(code),
        retry_after: None,
    };
    if let Some(expires) = limits.expires.filter(|&expires| unix >= expires) {
        return Err(refuse(
            "token_expired",
            format!(
                "token '{name}' expired at {}; ask the gateway operator for a new token",
                crate::utc::short(expires)
            ),
        ));
    }
    let Some(blocks) = &limits.ips else { return Ok(()) };
    match from {
        Some(addr) if cidr::any_contains(blocks, addr) => Ok(()),
        Some(addr) => Err(refuse(
            "address_not_allowed",
            format!(
                "token '{name}' may not be used from {addr} (not in its ips); use it from an allowed \
                 address, or ask the gateway operator to allow this one"
            ),
        )),
        None => Err(refuse(
            "address_not_allowed",
            format!("token '{name}' may be used from some addresses only, and this request's is unknown"),
        )),
    }
}

/// Whether token `name`, which `used` tokens today (UTC, asked only when it has a limit) by
/// `unix` seconds, may start another request: the 429 naming its `daily_tokens` when it
/// may not, to retry when the day ends. Requests in flight are counted when they end, so a
/// day may end a little over.
pub fn check_daily(
    name: &str,
    limits: &TokenLimits,
    used: impl FnOnce() -> u64,
    unix: u64,
) -> Result<(), ApiError> {
    let Some(daily) = limits.daily_tokens else { return Ok(()) };
    let used = used();
    if used < daily {
        return Ok(());
    }
    let midnight = (unix / 86_400 + 1) * 86_400;
    let retry_after = midnight.saturating_sub(unix).max(1);
    Err(too_many(
        format!(
            "token '{name}' has used {used} tokens today, its daily_tokens = {daily} limit; it resets at \
             00:00 UTC, in {} h {} min",
            retry_after / 3600,
            retry_after % 3600 / 60
        ),
        retry_after,
    ))
}

fn too_many(message: String, retry_after: u64) -> ApiError {
    ApiError {
        status: 429,
        kind: "rate_limit_error",
        message,
        param: None,
        code: Some("rate_limit_exceeded"),
        retry_after: Some(retry_after),
    }
}

/// One token's recent starts and requests in flight.
#[derive(Debug, Default)]
pub struct Window {
    /// When its requests of the last [`RPM_WINDOW`] started, oldest first (only while it
    /// has an `rpm`).
    started: VecDeque<Instant>,
    in_flight: u32,
}

/// Which limit a request is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `rpm` requests started in the last minute; a place frees in `retry_after` seconds.
    Rpm {
        /// The limit.
        rpm: u32,
        /// Whole seconds until the oldest start that matters leaves the window.
        retry_after: u64,
    },
    /// `max` requests are in flight.
    Concurrent {
        /// The limit.
        max: u32,
    },
}

impl Window {
    /// Starts a request at `now`, unless that would pass `rpm` or `max_concurrent`.
    pub fn start(&mut self, rpm: Option<u32>, max_concurrent: Option<u32>, now: Instant) -> Result<(), Over> {
        // Callers read the clock before they take the lock, so two may come in out of
        // order: the starts stay sorted, which expiring them from the front relies on.
        let now = self.started.back().map_or(now, |&last| now.max(last));
        while self.started.front().is_some_and(|&at| now.saturating_duration_since(at) >= RPM_WINDOW) {
            self.started.pop_front();
        }
        if let Some(rpm) = rpm {
            // After a reload that lowered rpm more may be counted than it allows: a place
            // frees when the count falls below rpm, as the start `rpm` from the newest leaves.
            let count = self.started.len();
            if count >= rpm as usize {
                let oldest_that_matters = self.started[count - rpm as usize];
                let wait = (oldest_that_matters + RPM_WINDOW).saturating_duration_since(now);
                // Round up: a client that waits exactly Retry-After must be let in.
                let retry_after = (wait.as_millis().div_ceil(1000) as u64).max(1);
                return Err(Over::Rpm { rpm, retry_after });
            }
        } else {
            self.started.clear();
        }
        if let Some(max) = max_concurrent.filter(|&max| self.in_flight >= max) {
            return Err(Over::Concurrent { max });
        }
        if rpm.is_some() {
            self.started.push_back(now);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Ends a request [`Window::start`] took.
    pub fn end(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

/// A request counted in its token's window; dropping it ends the request.
#[derive(Debug, Default)]
pub struct Permit(Option<Arc<Mutex<Window>>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(window) = self.0.take() {
            lock(&window).end();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn daily_tokens_refuse_once_the_days_use_reaches_them_until_midnight_utc() {
        let limits = TokenLimits { daily_tokens: Some(1000), ..TokenLimits::default() };
        let noon = 1_700_000_000 / 86_400 * 86_400 + 12 * 3600;
        assert!(check_daily("alice", &limits, || 999, noon).is_ok());
        let over = check_daily("alice", &limits, || 1000, noon).unwrap_err();
        assert_eq!((over.status, over.retry_after), (429, Some(12 * 3600)));
        assert!(
            over.message.contains("daily_tokens = 1000") && over.message.contains("in 12 h 0 min"),
            "{over:?}"
        );
        let never = || -> u64 { panic!("the day's use is not looked up without a limit") };
        assert!(check_daily("alice", &TokenLimits::default(), never, noon).is_ok(), "no limit");
    }

    #[test]
    fn rpm_is_a_sliding_minute() {
        let (mut window, t0) = (Window::default(), Instant::now());
        for at in [0, 10, 20] {
            assert_eq!(window.start(Some(3), None, t0 + secs(at)), Ok(()), "start at {at} s");
            window.end();
        }
        // The oldest start (0 s) leaves the window at 60 s.
        assert_eq!(window.start(Some(3), None, t0 + secs(21)), Err(Over::Rpm { rpm: 3, retry_after: 39 }));
        assert_eq!(
            window.start(Some(3), None, t0 + Duration::from_millis(59_001)),
            Err(Over::Rpm { rpm: 3, retry_after: 1 }),
            "rounded up"
        );
        assert_eq!(window.start(Some(3), None, t0 + secs(60)), Ok(()), "taken at Retry-After");
        // Now 10, 20 and 60 count: the next place frees at 70 s, whatever fixed minute it is.
        assert_eq!(window.start(Some(3), None, t0 + secs(61)), Err(Over::Rpm { rpm: 3, retry_after: 9 }));
        assert_eq!(window.started.len(), 3, "refused requests do not count");
    }

    #[test]
    fn a_changed_rpm_applies_to_the_counts_already_made() {
        let (mut window, t0) = (Window::default(), Instant::now());
        for at in 0..10 {
            assert!(window.start(Some(10), None, t0 + secs(at)).is_ok());
        }
        // Lowered to 4: the 4 newest starts (6..9 s) are what hold it back; the 6 s one
        // leaves at 66 s.
        assert_eq!(window.start(Some(4), None, t0 + secs(10)), Err(Over::Rpm { rpm: 4, retry_after: 56 }));
        // Raised to 20: there is room again.
        assert!(window.start(Some(20), None, t0 + secs(10)).is_ok());
        // Without rpm nothing is kept, so memory stays flat for unlimited tokens.
        assert!(window.start(None, None, t0 + secs(11)).is_ok());
        assert!(window.started.is_empty());
    }

    #[test]
    fn max_concurrent_counts_until_the_permit_drops() {
        let (limits, t0) = (Limits::default(), Instant::now());
        let one = TokenLimits { max_concurrent: Some(1), ..TokenLimits::default() };
        let held = limits.admit("alice", &one, t0).expect("the first is taken");
        let refused = limits.admit("alice", &one, t0).expect_err("a second in flight is not");
        assert_eq!((refused.status, refused.retry_after), (429, Some(1)));
        assert!(refused.message.contains("max_concurrent = 1"), "{}", refused.message);
        assert!(limits.admit("bob", &one, t0).is_ok(), "another token has its own count");
        drop(held);
        assert!(limits.admit("alice", &one, t0).is_ok(), "a request that ended frees its place");
    }

    #[test]
    fn counts_are_kept_by_name_whatever_the_limits_say() {
        let (limits, t0) = (Limits::default(), Instant::now());
        let three = TokenLimits { rpm: Some(3), ..TokenLimits::default() };
        for _ in 0..3 {
            drop(limits.admit("alice", &three, t0).expect("within rpm"));
        }
        let refused = limits.admit("alice", &three, t0 + secs(12)).expect_err("the 4th");
        assert_eq!(
            (refused.status, refused.code, refused.retry_after),
            (429, Some("rate_limit_exceeded"), Some(48))
        );
        assert_eq!(refused.message, "token 'alice' is over its rpm = 3 limit; retry in 48 s");
        // A reload to rpm = 5 (a new TokenLimits for the same name) keeps the 3 made.
        let five = TokenLimits { rpm: Some(5), ..TokenLimits::default() };
        assert!(limits.admit("alice", &five, t0 + secs(13)).is_ok());
        assert!(limits.admit("alice", &five, t0 + secs(13)).is_ok());
        assert!(limits.admit("alice", &five, t0 + secs(13)).is_err());
        limits.keep_only(["bob"].into_iter());
        assert!(limits.admit("alice", &five, t0 + secs(13)).is_ok(), "a removed token's counts are gone");
    }

    #[test]
    fn expired_tokens_and_other_addresses_get_403() {
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let limits = TokenLimits {
            expires: Some(1_700_000_000),
            ips: Some(vec![cidr::Cidr::parse("10.0.0.0/8").unwrap(), cidr::Cidr::parse("::1").unwrap()]),
            ..TokenLimits::default()
        };
        assert!(check_access("alice", &limits, ip("10.1.2.3"), 1_699_999_999).is_ok());
        assert!(check_access("alice", &limits, ip("::1"), 1_699_999_999).is_ok());
        let expired = check_access("alice", &limits, ip("10.1.2.3"), 1_700_000_000).unwrap_err();
        assert_eq!((expired.status, expired.code), (403, Some("token_expired")));
        assert!(expired.message.contains("expired at 2023-11-14 22:13Z"), "{}", expired.message);
        for from in [ip("127.0.0.1"), ip("::2"), None] {
            let refused = check_access("alice", &limits, from, 0).unwrap_err();
            assert_eq!((refused.status, refused.code), (403, Some("address_not_allowed")), "{from:?}");
        }
        assert!(check_access("alice", &TokenLimits::default(), None, u64::MAX).is_ok(), "no limits");
    }
}
