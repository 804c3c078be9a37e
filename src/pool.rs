//! Key pools: which upstream keys a request may use, and in what order to try them.
//!
//! A [`Pool`] is one keys.txt section. For each request it hands out an attempt order of
//! distinct keys, starting where the [`Strategy`] says, so load spreads over the pool and a
//! failing key is followed by the next one. Sending requests and judging answers is
//! `relay`'s job; this module never does IO.

use crate::config::Strategy;
use crate::keys::KeyEntry;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One pool of upstream keys.
#[derive(Debug)]
pub struct Pool {
    /// The keys.txt section name.
    pub name: String,
    /// Its keys, in keys.txt order.
    pub keys: Vec<KeyEntry>,
    strategy: Strategy,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `keys` (which must all belong to it).
    pub fn new(name: &str, keys: Vec<KeyEntry>, strategy: Strategy) -> Pool {
        Pool { name: name.to_string(), keys, strategy, next: AtomicUsize::new(0) }
    }

    /// Indices into [`Pool::keys`] to try for one request, at most `max_attempts` and each
    /// key at most once.
    pub fn attempt_order(&self, max_attempts: usize) -> Vec<usize> {
        let count = self.keys.len();
        if count == 0 {
            return Vec::new();
        }
        let take = max_attempts.min(count);
        match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
                (0..take).map(|offset| (start + offset) % count).collect()
            }
            Strategy::Random => {
                let mut order: Vec<usize> = (0..count).collect();
                fastrand::shuffle(&mut order);
                order.truncate(take);
                order
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize, strategy: Strategy) -> Pool {
        let keys = (0..size)
            .map(|i| KeyEntry {
                pool: "default".into(),
                base_url: format!("http://127.0.0.1:{}", 1000 + i),
                key: None,
                line: i + 1,
            })
            .collect();
        Pool::new("default", keys, strategy)
    }

    #[test]
    fn round_robin_starts_each_request_at_the_next_key() {
        let pool = pool(3, Strategy::RoundRobin);
        assert_eq!(pool.attempt_order(3), vec![0, 1, 2]);
        assert_eq!(pool.attempt_order(3), vec![1, 2, 0]);
        assert_eq!(pool.attempt_order(2), vec![2, 0]);
        assert_eq!(pool.attempt_order(5), vec![0, 1, 2], "never more attempts than keys");
    }

    #[test]
    fn round_robin_spreads_first_attempts_evenly() {
        let pool = pool(4, Strategy::RoundRobin);
        let mut firsts = [0usize; 4];
        for _ in 0..4000 {
            firsts[pool.attempt_order(3)[0]] += 1;
        }
        assert_eq!(firsts, [1000; 4]);
    }

    #[test]
    fn random_order_has_distinct_keys_and_reaches_every_key() {
        let pool = pool(4, Strategy::Random);
        let mut seen_first = [false; 4];
        for _ in 0..400 {
            let order = pool.attempt_order(3);
            assert_eq!(order.len(), 3);
            let mut sorted = order.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "{order:?}");
            seen_first[order[0]] = true;
        }
        assert_eq!(seen_first, [true; 4]);
    }

    #[test]
    fn an_empty_pool_offers_nothing() {
        assert!(pool(0, Strategy::RoundRobin).attempt_order(3).is_empty());
    }
}
