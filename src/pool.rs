//! Key pools: which keys a request may use, in what order.
//!
//! A [`Pool`] is one keys.txt section. For each request it hands out an attempt order of
//! distinct keys that are usable now (not invalid, not resting after a spent quota or a
//! back-off, not locked out of the model), starting where the [`Strategy`] says, from the
//! states in the [`KeyStore`]. Sending requests and judging answers is `relay`'s job.

use crate::config::{Provider, Strategy};
use crate::keys::KeyEntry;
use crate::keystate::{key_id, KeyStore};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a pool has no key to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUnavailable {
    /// When the first key frees up on its own (none when every key is invalid).
    pub soonest: Option<u64>,
    /// What holds the keys back, in words ("2 quota spent, 1 invalid").
    pub reasons: String,
}

/// One pool of upstream keys.
#[derive(Debug)]
pub struct Pool {
    /// The keys.txt section name.
    pub name: String,
    /// Its keys, in keys.txt order.
    pub keys: Vec<KeyEntry>,
    /// Their ids in the key store.
    pub ids: Vec<String>,
    /// What its upstreams speak.
    pub provider: Provider,
    strategy: Strategy,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `keys` (which must all belong to it), speaking Ollama's API.
    pub fn new(name: &str, keys: Vec<KeyEntry>, strategy: Strategy) -> Pool {
        let ids = keys.iter().map(|k| key_id(&k.base_url, k.key.as_ref())).collect();
        Pool {
            name: name.to_string(),
            keys,
            ids,
            provider: Provider::Ollama,
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// A pool of an OpenAI-compatible API (its keys' `base_url` is the API base).
    pub fn openai(name: &str, keys: Vec<KeyEntry>, strategy: Strategy) -> Pool {
        Pool { provider: Provider::Openai, ..Pool::new(name, keys, strategy) }
    }

    /// Indices into [`Pool::keys`] to try for one request: keys usable for `model` at `now`,
    /// at most `max_attempts`, each once, in strategy order. A key known to be unusable is
    /// never offered, so no attempt is spent on it.
    pub fn attempt_order(
        &self,
        max_attempts: usize,
        model: Option<&str>,
        store: &KeyStore,
        now: u64,
    ) -> Result<Vec<usize>, PoolUnavailable> {
        let count = self.keys.len();
        let order: Vec<usize> = match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % count.max(1);
                (0..count).map(|offset| (start + offset) % count).collect()
            }
            Strategy::Random => {
                let mut order: Vec<usize> = (0..count).collect();
                fastrand::shuffle(&mut order);
                order
            }
        };
        self.select((model, store, now), order, max_attempts)
    }

    /// Why no key is usable now, if none is (without moving the round-robin cursor).
    pub fn unavailable(&self, model: Option<&str>, store: &KeyStore, now: u64) -> Option<PoolUnavailable> {
        self.select((model, store, now), (0..self.keys.len()).collect(), 1).err()
    }

    /// The keys of `order` usable for `model` at `now` by `store`, at most `max_attempts`.
    fn select(
        &self,
        (model, store, now): (Option<&str>, &KeyStore, u64),
        order: Vec<usize>,
        max_attempts: usize,
    ) -> Result<Vec<usize>, PoolUnavailable> {
        let count = self.keys.len();
        let availability = store.availability(&self.ids, model, now);
        let mut usable = Vec::with_capacity(max_attempts.min(count));
        let mut soonest: Option<u64> = None;
        let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
        for index in order {
            match &availability[index] {
                Ok(()) if usable.len() < max_attempts => usable.push(index),
                Ok(()) => {}
                Err(why) => {
                    *reasons.entry(why.reason).or_default() += 1;
                    if let Some(until) = why.until {
                        soonest = Some(soonest.map_or(until, |s| s.min(until)));
                    }
                }
            }
        }
        if usable.is_empty() {
            let reasons = match reasons.is_empty() {
                true => "no keys".to_string(),
                false => reasons.iter().map(|(why, n)| format!("{n} {why}")).collect::<Vec<_>>().join(", "),
            };
            return Err(PoolUnavailable { soonest, reasons });
        }
        Ok(usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystate::{Failure, KeyState, Policy};
    use std::collections::BTreeSet;

    const NOW: u64 = 1_700_000_000;

    fn pool(size: usize, strategy: Strategy) -> Pool {
        let keys = (0..size)
            .map(|i| KeyEntry {
                pool: "default".into(),
                base_url: format!("http://127.0.0.1:{}", 1000 + i),
                key: None,
                line: i + 1,
                options: Default::default(),
            })
            .collect();
        Pool::new("default", keys, strategy)
    }

    fn order(pool: &Pool, max: usize, store: &KeyStore) -> Vec<usize> {
        pool.attempt_order(max, Some("m"), store, NOW).unwrap()
    }

    #[test]
    fn round_robin_starts_each_request_at_the_next_key() {
        let (pool, store) = (pool(3, Strategy::RoundRobin), KeyStore::default());
        assert_eq!(order(&pool, 3, &store), vec![0, 1, 2]);
        assert_eq!(order(&pool, 3, &store), vec![1, 2, 0]);
        assert_eq!(order(&pool, 2, &store), vec![2, 0]);
        assert_eq!(order(&pool, 5, &store), vec![0, 1, 2], "never more attempts than keys");
    }

    #[test]
    fn round_robin_spreads_first_attempts_evenly() {
        let (pool, store) = (pool(4, Strategy::RoundRobin), KeyStore::default());
        let mut firsts = [0usize; 4];
        for _ in 0..4000 {
            firsts[order(&pool, 3, &store)[0]] += 1;
        }
        assert_eq!(firsts, [1000; 4]);
    }

    #[test]
    fn random_order_has_distinct_keys_and_reaches_every_key() {
        let (pool, store) = (pool(4, Strategy::Random), KeyStore::default());
        let mut seen_first = [false; 4];
        for _ in 0..400 {
            let order = order(&pool, 3, &store);
            let distinct: BTreeSet<usize> = order.iter().copied().collect();
            assert_eq!((order.len(), distinct.len()), (3, 3), "{order:?}");
            seen_first[order[0]] = true;
        }
        assert_eq!(seen_first, [true; 4]);
    }

    #[test]
    fn unusable_keys_are_never_offered() {
        let (pool, store) = (pool(3, Strategy::RoundRobin), KeyStore::default());
        let policy = Policy::default();
        store.update(&pool.ids[1], |s| {
            s.record_failure(&Failure::Exhausted { until: NOW + 60 }, None, "", NOW, &policy)
        });
        for _ in 0..6 {
            assert!(!order(&pool, 3, &store).contains(&1));
        }
        store.update(&pool.ids[0], |s| s.record_failure(&Failure::ModelLocked, Some("m"), "", NOW, &policy));
        assert_eq!(order(&pool, 3, &store), vec![2], "key 0 is locked out of model m only");
        assert_eq!(pool.attempt_order(3, Some("other"), &store, NOW).unwrap().len(), 2);
    }

    #[test]
    fn an_exhausted_pool_says_when_and_why() {
        let (pool, store) = (pool(3, Strategy::RoundRobin), KeyStore::default());
        let policy = Policy::default();
        store.update(&pool.ids[0], |s| {
            s.record_failure(&Failure::Exhausted { until: NOW + 90 }, None, "", NOW, &policy)
        });
        store.update(&pool.ids[1], |s| {
            s.record_failure(&Failure::Exhausted { until: NOW + 30 }, None, "", NOW, &policy)
        });
        store.update(&pool.ids[2], |s| s.record_failure(&Failure::Invalid, None, "", NOW, &policy));
        let why = pool.attempt_order(3, None, &store, NOW).unwrap_err();
        assert_eq!(why.soonest, Some(NOW + 30));
        assert_eq!(why.reasons, "1 invalid, 2 quota spent");
        assert!(pool.attempt_order(3, None, &store, NOW + 30).is_ok(), "free again when the window ends");
    }

    #[test]
    fn merging_takes_the_newer_health_and_keeps_counters() {
        let store = KeyStore::default();
        store.update("a", |s| {
            s.requests = 10;
            s.changed_at = 5;
        });
        let mut file = BTreeMap::new();
        file.insert(
            "a".to_string(),
            KeyState {
                state: crate::keystate::Health::Invalid,
                changed_at: 9,
                requests: 1,
                ..KeyState::default()
            },
        );
        store.merge_newer(file, &BTreeSet::from(["a".to_string()]));
        let merged = store.get("a");
        assert_eq!((merged.state, merged.requests), (crate::keystate::Health::Invalid, 10));
    }
}
