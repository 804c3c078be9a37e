//! Upstream attempts per key and minute over the last hour, for the status page's small
//! bar charts.
//!
//! In scope: a ring of [`MINUTES`] buckets per key id (attempts, and those that failed),
//! filled by one [`PerMinute::record`] per attempt and read oldest minute first by
//! [`PerMinute::last_hour`]. Out of scope: what counts as an attempt or a failure (the
//! caller, `metrics`, which `relay` tells of every attempt), and the clock (the caller
//! passes Unix seconds, so tests need no sleep).
//!
//! Cheap on the hot path: one short mutex per attempt and no allocation once a key has
//! been seen. Bounded: one ring (under half a kilobyte) per key id that has had an
//! attempt, and ids come from keys.txt, never from requests. A minute is a whole UTC
//! minute (`unix_secs / 60`), so the current minute's bucket is still filling.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Minutes kept per key: the last hour, the current minute included.
pub const MINUTES: usize = 60;

/// One key's buckets: `requests[m % 60]` and `failures[m % 60]` hold minute `m` for the
/// 60 minutes up to `newest`; a bucket of a minute after `newest` still holds an hour-old
/// minute, and is cleared when that minute comes.
#[derive(Debug, Clone)]
struct Ring {
    newest: u64,
    requests: [u32; MINUTES],
    failures: [u32; MINUTES],
}

impl Ring {
    fn new(minute: u64) -> Ring {
        Ring { newest: minute, requests: [0; MINUTES], failures: [0; MINUTES] }
    }

    fn record(&mut self, minute: u64, failed: bool) {
        if minute > self.newest {
            // Clears the buckets of the minutes between, at most a whole ring.
            let gap = (minute - self.newest).min(MINUTES as u64);
            for passed in minute + 1 - gap..=minute {
                let slot = slot(passed);
                self.requests[slot] = 0;
                self.failures[slot] = 0;
            }
            self.newest = minute;
        } else if self.newest - minute >= MINUTES as u64 {
            // A clock set back by more than an hour: that minute has no bucket left.
            return;
        }
        let slot = slot(minute);
        self.requests[slot] = self.requests[slot].saturating_add(1);
        self.failures[slot] = self.failures[slot].saturating_add(u32::from(failed));
    }

    /// The count of `minute` in `buckets`, 0 for a minute this ring holds nothing of.
    fn at(&self, buckets: &[u32; MINUTES], minute: u64) -> u32 {
        match minute <= self.newest && self.newest - minute < MINUTES as u64 {
            true => buckets[slot(minute)],
            false => 0,
        }
    }
}

fn slot(minute: u64) -> usize {
    (minute % MINUTES as u64) as usize
}

/// A key's last hour: attempts and failures per minute, oldest first, the current
/// minute last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastHour {
    /// Upstream attempts with the key, per minute.
    pub requests: Vec<u32>,
    /// Those that failed, per minute.
    pub failures: Vec<u32>,
}

/// Every key's ring, by key id.
#[derive(Debug, Default)]
pub struct PerMinute {
    rings: Mutex<BTreeMap<String, Ring>>,
}

impl PerMinute {
    /// No key counted yet.
    pub const fn new() -> PerMinute {
        PerMinute { rings: Mutex::new(BTreeMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Ring>> {
        // A panic elsewhere while counting leaves counts that are still counts.
        self.rings.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one attempt of key `id` at `now` (Unix seconds), and whether it failed.
    pub fn record(&self, id: &str, failed: bool, now: u64) {
        let minute = now / 60;
        let mut rings = self.lock();
        match rings.get_mut(id) {
            Some(ring) => ring.record(minute, failed),
            None => rings.entry(id.to_string()).or_insert_with(|| Ring::new(minute)).record(minute, failed),
        }
    }

    /// Key `id`'s last [`MINUTES`] minutes as of `now` (Unix seconds): zeros for a key
    /// without attempts.
    pub fn last_hour(&self, id: &str, now: u64) -> LastHour {
        let current = now / 60;
        let minutes = (0..MINUTES as u64).rev().map(|ago| current.checked_sub(ago));
        let rings = self.lock();
        let Some(ring) = rings.get(id) else {
            return LastHour { requests: vec![0; MINUTES], failures: vec![0; MINUTES] };
        };
        let read = |buckets| minutes.clone().map(|m| m.map_or(0, |m| ring.at(buckets, m))).collect();
        LastHour { requests: read(&ring.requests), failures: read(&ring.failures) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC

    #[test]
    fn attempts_land_in_their_minute_oldest_first() {
        let counts = PerMinute::new();
        counts.record("a", false, NOW);
        counts.record("a", true, NOW + 10);
        counts.record("a", false, NOW - 60);
        counts.record("b", true, NOW);
        let hour = counts.last_hour("a", NOW + 20);
        assert_eq!((hour.requests.len(), hour.failures.len()), (MINUTES, MINUTES));
        assert_eq!(&hour.requests[57..], [0, 1, 2]);
        assert_eq!(&hour.failures[57..], [0, 0, 1]);
        assert_eq!(hour.requests.iter().sum::<u32>(), 3);
        assert_eq!(counts.last_hour("b", NOW).failures[59], 1);
        assert_eq!(
            counts.last_hour("unknown", NOW),
            LastHour { requests: vec![0; 60], failures: vec![0; 60] }
        );
    }

    #[test]
    fn minutes_slide_out_after_an_hour_and_a_long_gap_clears_the_ring() {
        let counts = PerMinute::new();
        for minute in 0..60 {
            counts.record("a", minute % 2 == 0, NOW + minute * 60);
        }
        let hour = counts.last_hour("a", NOW + 59 * 60);
        assert_eq!(hour.requests, vec![1; 60]);
        // Read later, the old minutes have slid out without any new attempt.
        let later = counts.last_hour("a", NOW + 69 * 60);
        assert_eq!(later.requests.iter().sum::<u32>(), 50);
        assert_eq!(&later.requests[50..], [0; 10]);
        // Written after two hours: only the new attempt is left.
        counts.record("a", false, NOW + 180 * 60);
        let after = counts.last_hour("a", NOW + 180 * 60);
        assert_eq!((after.requests.iter().sum::<u32>(), after.failures.iter().sum::<u32>()), (1, 0));
        assert_eq!(after.requests[59], 1);
    }

    #[test]
    fn a_clock_set_back_counts_within_the_hour_and_drops_what_is_older() {
        let counts = PerMinute::new();
        counts.record("a", false, NOW);
        counts.record("a", false, NOW - 5 * 60);
        counts.record("a", false, NOW - 2 * 3600);
        let hour = counts.last_hour("a", NOW);
        assert_eq!((hour.requests[59], hour.requests[54], hour.requests.iter().sum::<u32>()), (1, 1, 2));
        // Read at a time before the newest minute: the minutes after it are not shown.
        assert_eq!(counts.last_hour("a", NOW - 10 * 60).requests.iter().sum::<u32>(), 0);
        // Near the epoch there are fewer than 60 minutes behind: they read as zero.
        let early = PerMinute::new();
        early.record("a", false, 30);
        assert_eq!(early.last_hour("a", 30).requests[59], 1);
    }
}
