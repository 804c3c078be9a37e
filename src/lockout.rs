//! Locking out an address that keeps presenting wrong tokens.
//!
//! After [`MAX_FAILURES`] wrong tokens from one client address within [`FAILURE_WINDOW`]
//! of the first, every request from that address is refused with 429 for [`LOCK_FOR`], on
//! every route. Only wrong tokens count: a request with no token at all is a client not
//! yet set up, not one guessing. The lock is per address, never per token, so nobody can
//! lock a token's owner out from elsewhere. The table holds at most [`MAX_ADDRESSES`]
//! addresses, dropping the one whose last failure (or refusal) is oldest, so a client
//! rotating through addresses cannot make it grow. Out of scope: which address a request
//! comes from (`cidr::client_addr`) and telling a wrong token from a right one (`auth`).
//! Every method takes the time, so tests can move the clock.

use crate::error::ApiError;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens from one address, within [`FAILURE_WINDOW`], that lock it out.
pub const MAX_FAILURES: u32 = 20;
/// The window the failures are counted in, from the first of them.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a locked-out address is refused.
pub const LOCK_FOR: Duration = Duration::from_secs(300);
/// Addresses tracked at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// The addresses with recent wrong tokens, safe to share between threads.
pub struct Lockout {
    table: Mutex<Table>,
}

impl Default for Lockout {
    fn default() -> Lockout {
        Lockout { table: Mutex::new(Table::new(MAX_ADDRESSES)) }
    }
}

impl Lockout {
    /// The 429 for a request from `addr` when that address is locked out at `now`.
    pub fn refusal(&self, addr: IpAddr, now: Instant) -> Option<ApiError> {
        let left = self.lock().locked(block_of(addr), now)?;
        let addr = shown_block(addr);
        // Round up: a client that waits exactly Retry-After must find the lock gone.
        let secs = left.as_millis().div_ceil(1000).max(1) as u64;
        Some(ApiError {
            status: 429,
            kind: "rate_limit_error",
            message: format!(
                "too many wrong tokens from {addr}: every request from this address is refused for \
                 {secs} s more; check the token the client sends"
            ),
            param: None,
            code: Some("too_many_wrong_tokens"),
            retry_after: Some(secs),
        })
    }

    /// Counts a wrong token from `addr` at `now`, and logs when that locks the address out.
    pub fn wrong_token(&self, addr: IpAddr, now: Instant) {
        if self.lock().fail(block_of(addr), now) {
            let addr = shown_block(addr);
            log::warn!(
                "{addr}: {MAX_FAILURES} wrong tokens within {} s; refusing every request from it for {} s",
                FAILURE_WINDOW.as_secs(),
                LOCK_FOR.as_secs()
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The block an address is locked out by: an IPv4 address itself, an IPv6 one its /64,
/// since one IPv6 client is handed a whole /64 to pick addresses from.
fn block_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// [`block_of`] as written in messages: `2001:db8::/64`, or the IPv4 address.
fn shown_block(addr: IpAddr) -> String {
    match block_of(addr) {
        IpAddr::V6(block) => format!("{block}/64"),
        v4 => v4.to_string(),
    }
}

/// How many of the oldest addresses a full table looks through for one that is not locked
/// out, to forget it rather than a lock.
const EVICTION_LOOK: usize = 64;

/// What is known of one address.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The first failure of the current window.
    first: Instant,
    /// Failures since `first`.
    failures: u32,
    /// Refused until then, when locked out.
    locked_until: Option<Instant>,
    /// Its place in [`Table::order`]: higher is more recent.
    seq: u64,
}

/// The lockout table itself, without a lock or a clock of its own.
#[derive(Debug)]
pub struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// Addresses by their latest activity, oldest first.
    order: BTreeMap<u64, IpAddr>,
    next_seq: u64,
    capacity: usize,
}

impl Table {
    /// An empty table holding at most `capacity` addresses (at least one).
    pub fn new(capacity: usize) -> Table {
        Table { entries: HashMap::new(), order: BTreeMap::new(), next_seq: 0, capacity: capacity.max(1) }
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How long `addr` stays locked out after `now`, if it is.
    pub fn locked(&mut self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(&addr)?;
        match entry.locked_until {
            Some(until) if until > now => {
                // An address still knocking stays in the table ahead of quiet ones.
                self.touch(addr);
                Some(until - now)
            }
            Some(_) => {
                // Served its time; failures were reset when the lock began.
                self.remove(addr);
                None
            }
            None => None,
        }
    }

    /// Counts one wrong token from `addr`; true when it locks the address out.
    pub fn fail(&mut self, addr: IpAddr, now: Instant) -> bool {
        match self.entries.contains_key(&addr) {
            true => self.touch(addr),
            false => {
                if self.entries.len() >= self.capacity {
                    // The oldest address not locked out goes, so a flood of new addresses
                    // does not free the locked ones; when all are locked, the oldest.
                    let entries = &self.entries;
                    let unlocked = self.order.values().take(EVICTION_LOOK).find(|old| {
                        entries
                            .get(*old)
                            .is_none_or(|entry| entry.locked_until.is_none_or(|until| until <= now))
                    });
                    if let Some(forgotten) = unlocked.or_else(|| self.order.values().next()).copied() {
                        self.remove(forgotten);
                    }
                }
                let seq = self.take_seq();
                self.entries.insert(addr, Entry { first: now, failures: 0, locked_until: None, seq });
                self.order.insert(seq, addr);
            }
        }
        let Some(entry) = self.entries.get_mut(&addr) else { return false };
        if entry.locked_until.is_some_and(|until| until > now) {
            return false;
        }
        if entry.locked_until.is_some() || now.saturating_duration_since(entry.first) >= FAILURE_WINDOW {
            *entry = Entry { first: now, failures: 0, locked_until: None, seq: entry.seq };
        }
        entry.failures += 1;
        if entry.failures < MAX_FAILURES {
            return false;
        }
        entry.locked_until = Some(now + LOCK_FOR);
        entry.failures = 0;
        true
    }

    /// Makes `addr` the most recent address.
    fn touch(&mut self, addr: IpAddr) {
        let seq = self.take_seq();
        if let Some(entry) = self.entries.get_mut(&addr) {
            self.order.remove(&entry.seq);
            entry.seq = seq;
            self.order.insert(seq, addr);
        }
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn remove(&mut self, addr: IpAddr) {
        if let Some(entry) = self.entries.remove(&addr) {
            self.order.remove(&entry.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn twenty_wrong_tokens_in_a_minute_lock_the_address_for_five_minutes() {
        let (mut table, t0) = (Table::new(10), Instant::now());
        let (guesser, bystander) = (addr(1), addr(2));
        for i in 0..MAX_FAILURES - 1 {
            assert!(!table.fail(guesser, t0 + secs(u64::from(i))), "failure {i} alone does not lock");
            assert_eq!(table.locked(guesser, t0 + secs(u64::from(i))), None);
        }
        assert!(table.fail(guesser, t0 + secs(30)), "the 20th failure locks");
        assert_eq!(table.locked(guesser, t0 + secs(30)), Some(LOCK_FOR));
        assert_eq!(table.locked(guesser, t0 + secs(329)), Some(secs(1)));
        assert_eq!(table.locked(bystander, t0 + secs(31)), None, "the lock is per address");
        assert_eq!(table.locked(guesser, t0 + secs(330)), None, "the lock ends after LOCK_FOR");
        assert!(table.is_empty(), "an address that served its time is forgotten");
        assert!(!table.fail(guesser, t0 + secs(331)), "it starts again from nothing");
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let (mut table, t0) = (Table::new(10), Instant::now());
        for i in 0..MAX_FAILURES - 1 {
            table.fail(addr(1), t0 + Duration::from_millis(u64::from(i)));
        }
        // 61 s after the first failure its window is over: the count starts again.
        assert!(!table.fail(addr(1), t0 + secs(61)));
        for i in 0..MAX_FAILURES - 2 {
            assert!(!table.fail(addr(1), t0 + secs(62 + u64::from(i))));
        }
        assert!(table.fail(addr(1), t0 + secs(100)), "20 within a minute of the new window's first");
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_quietest_address() {
        let (mut table, t0) = (Table::new(3), Instant::now());
        for n in 1..=MAX_FAILURES {
            table.fail(addr(1), t0 + Duration::from_millis(u64::from(n)));
        }
        assert!(table.locked(addr(1), t0 + secs(1)).is_some());
        table.fail(addr(2), t0 + secs(2));
        table.fail(addr(3), t0 + secs(3));
        // The locked address knocks again, so it is the most recent.
        assert!(table.locked(addr(1), t0 + secs(4)).is_some());
        // Many new addresses: the table keeps three, and the knocking address stays.
        table.fail(addr(4), t0 + secs(5));
        assert_eq!(table.len(), 3);
        assert!(table.locked(addr(1), t0 + secs(6)).is_some(), "the most recent stays");
        for n in 5..10_000 {
            table.fail(addr(n), t0 + secs(7));
        }
        assert_eq!((table.len(), table.order.len()), (3, 3), "bounded, the order index too");
        assert!(table.locked(addr(1), t0 + secs(8)).is_some(), "a flood of new addresses keeps the lock");
    }

    #[test]
    fn an_ipv6_client_is_locked_out_by_its_slash_64() {
        let (lockout, t0) = (Lockout::default(), Instant::now());
        let in_block = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 7, 0, 0, 0, n]);
        for n in 0..MAX_FAILURES as u16 {
            lockout.wrong_token(in_block(n), t0);
        }
        let refusal = lockout.refusal(in_block(999), t0).expect("another address of the /64 is locked out");
        assert!(refusal.message.contains("2001:db8:0:7::/64"), "{}", refusal.message);
        assert!(
            lockout.refusal(IpAddr::from([0x2001, 0xdb8, 0, 8, 0, 0, 0, 1]), t0).is_none(),
            "the next /64 is not"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("an address");
        for _ in 0..MAX_FAILURES {
            lockout.wrong_token(mapped, t0);
        }
        assert!(lockout.refusal("192.0.2.1".parse().expect("an address"), t0).is_some(), "mapped is IPv4");
    }

    #[test]
    fn the_refusal_is_a_429_with_retry_after_rounded_up() {
        let (lockout, t0) = (Lockout::default(), Instant::now());
        let from = addr(7);
        for _ in 0..MAX_FAILURES {
            lockout.wrong_token(from, t0);
        }
        let refusal = lockout.refusal(from, t0 + Duration::from_millis(500)).expect("locked out");
        assert_eq!((refusal.status, refusal.kind, refusal.retry_after), (429, "rate_limit_error", Some(300)));
        assert!(
            refusal.message.contains("0.0.0.7") && refusal.message.contains("300 s"),
            "{}",
            refusal.message
        );
        assert!(lockout.refusal(addr(8), t0).is_none());
    }
}
