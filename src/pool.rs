//! Key pools: which keys a request may use, and which of them it takes.
//!
//! A [`Pool`] is one keys.txt section. For each attempt of a request it lists the keys
//! usable now (not invalid, not resting after a spent quota, a back-off or a busy answer,
//! not locked out of the model) that the request has not tried yet, each with its limit of
//! requests at once ([`Pool::candidates`]), and picks one of those with a free slot by its
//! [`Strategy`], among the usable keys only, so load stays even however many keys rest
//! ([`Pool::choose`]). Counting slots and waiting for one is `slots`'s job; sending
//! requests and judging answers is `relay`'s.

use crate::config::{Provider, Strategy};
use crate::keys::KeyEntry;
use crate::keystate::{key_id, KeyStore};
use crate::slots::{Candidate, Free};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a pool has no key to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUnavailable {
    /// When the first key frees up on its own (none when every key is invalid).
    pub soonest: Option<u64>,
    /// What holds the keys back, in words ("2 quota spent, 1 invalid").
    pub reasons: String,
    /// Whether waiting cannot help: every key is invalid or locked out of the model, and
    /// at least one is locked out (the model is in no usable key's plan).
    pub model_locked: bool,
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
    /// The pool a request goes on in when no key of this one can serve it.
    pub fallback: Option<String>,
    /// How long a request waits for a free slot here, when the pool says.
    pub slot_wait: Option<std::time::Duration>,
    strategy: Strategy,
    /// Each key's limit of requests at once (0: none).
    limits: Vec<u32>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool over `keys` (which must all belong to it), speaking Ollama's API, whose keys
    /// take at most `max_concurrent` requests at once (0: no limit) unless their line says.
    pub fn new(name: &str, keys: Vec<KeyEntry>, strategy: Strategy, max_concurrent: u32) -> Pool {
        let ids = keys.iter().map(|k| key_id(&k.base_url, k.key.as_ref())).collect();
        let limits = keys.iter().map(|k| k.options.max_concurrent.unwrap_or(max_concurrent)).collect();
        Pool {
            name: name.to_string(),
            keys,
            ids,
            provider: Provider::Ollama,
            fallback: None,
            slot_wait: None,
            strategy,
            limits,
            next: AtomicUsize::new(0),
        }
    }

    /// This pool speaking `provider`'s API (an OpenAI pool's keys' `base_url` is the API base).
    pub fn speaking(self, provider: Provider) -> Pool {
        Pool { provider, ..self }
    }

    /// This pool handing what it cannot serve to pool `fallback`, after waiting up to
    /// `slot_wait` (when it says) for a busy key.
    pub fn falling_back_to(self, fallback: Option<String>, slot_wait: Option<std::time::Duration>) -> Pool {
        Pool { fallback, slot_wait, ..self }
    }

    /// The keys usable for `model` at `now` that are not marked in `tried`, in keys.txt
    /// order, or why there are none. A key known to be unusable is never offered, so no
    /// attempt is spent on it.
    pub fn candidates(
        &self,
        model: Option<&str>,
        store: &KeyStore,
        now: u64,
        tried: &[bool],
    ) -> Result<Vec<Candidate<'_>>, PoolUnavailable> {
        let availability = store.availability(&self.ids, model, now);
        let mut usable = Vec::with_capacity(self.keys.len());
        let mut soonest: Option<u64> = None;
        let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
        let (mut locked, mut timed) = (false, false);
        for (index, available) in availability.iter().enumerate() {
            match available {
                Ok(()) if tried.get(index).copied().unwrap_or(false) => {}
                Ok(()) => usable.push(Candidate { index, id: &self.ids[index], limit: self.limits[index] }),
                Err(why) => {
                    *reasons.entry(why.reason).or_default() += 1;
                    locked |= why.model_locked();
                    timed |= why.waiting_helps();
                    if let Some(until) = why.until.filter(|_| why.waiting_helps()) {
                        soonest = Some(soonest.map_or(until, |s| s.min(until)));
                    }
                }
            }
        }
        if !usable.is_empty() {
            return Ok(usable);
        }
        let reasons = match reasons.is_empty() {
            true if self.keys.is_empty() => "no keys".to_string(),
            true => format!("all {} tried", self.keys.len()),
            false => reasons.iter().map(|(why, n)| format!("{n} {why}")).collect::<Vec<_>>().join(", "),
        };
        Err(PoolUnavailable { soonest, reasons, model_locked: locked && !timed })
    }

    /// Why no key is usable now, if none is.
    pub fn unavailable(&self, model: Option<&str>, store: &KeyStore, now: u64) -> Option<PoolUnavailable> {
        self.candidates(model, store, now, &[]).err()
    }

    /// How it spreads requests over its keys.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The limit of requests at once of its key at `index` (0: none).
    pub fn limit(&self, index: usize) -> u32 {
        self.limits.get(index).copied().unwrap_or(0)
    }

    /// This request's turn in the pool's rotation, drawn once per request: its later
    /// attempts keep it, so with the tried keys gone they go on to the keys after.
    pub fn turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Which of `free` (keys with a free slot, by index) the next attempt of the request
    /// whose [`Pool::turn`] is `turn` takes: its position in `free`. Round-robin and random
    /// go by the keys' weights; least-busy takes the key with the fewest requests in flight
    /// for its weight, then the lowest known usage of its plan, and rotates among keys that
    /// tie.
    pub fn choose(&self, free: &[Free], turn: usize, store: &KeyStore) -> usize {
        let weight = |f: &Free| u64::from(self.keys[f.index].options.weight.max(1));
        let by_weight = |ticket: u64| {
            let mut left = ticket;
            free.iter().position(|f| match left.checked_sub(weight(f)) {
                Some(rest) => {
                    left = rest;
                    false
                }
                None => true,
            })
        };
        let total: u64 = free.iter().map(weight).sum();
        let position = match self.strategy {
            Strategy::RoundRobin => by_weight(turn as u64 % total.max(1)),
            Strategy::Random => by_weight(fastrand::u64(0..total.max(1))),
            Strategy::LeastBusy => {
                let ids: Vec<&str> = free.iter().map(|f| self.ids[f.index].as_str()).collect();
                let usage = store.usage_permille(&ids);
                let load = |i: usize| (u64::from(free[i].in_flight), weight(&free[i]));
                // a/b < c/d, without division: a·d < c·b.
                let less = |i: usize, j: usize| {
                    let ((a, b), (c, d)) = (load(i), load(j));
                    (a * d, usage[i].unwrap_or(0)).cmp(&(c * b, usage[j].unwrap_or(0)))
                };
                let best: Vec<usize> =
                    (0..free.len()).filter(|&i| (0..free.len()).all(|j| less(i, j).is_le())).collect();
                best.get(turn % best.len().max(1)).copied()
            }
        };
        position.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyOptions;
    use crate::keystate::{Failure, KeyState, Policy};
    use std::collections::BTreeSet;

    const NOW: u64 = 1_700_000_000;

    fn pool(weights: &[u32], strategy: Strategy) -> Pool {
        let keys = (0..weights.len())
            .map(|i| KeyEntry {
                pool: "default".into(),
                base_url: format!("http://127.0.0.1:{}", 1000 + i),
                key: None,
                line: i + 1,
                options: KeyOptions { weight: weights[i], ..KeyOptions::default() },
            })
            .collect();
        Pool::new("default", keys, strategy, 0)
    }

    fn fail(pool: &Pool, store: &KeyStore, index: usize, failure: Failure) {
        store
            .update(&pool.ids[index], |s| s.record_failure(&failure, Some("m"), "", NOW, &Policy::default()));
    }

    /// The key one attempt takes, every candidate with `in_flight[i]` requests in flight.
    fn pick(pool: &Pool, store: &KeyStore, in_flight: &[u32]) -> usize {
        let candidates = pool.candidates(Some("m"), store, NOW, &[]).expect("a usable key");
        let free: Vec<Free> = candidates
            .iter()
            .map(|c| Free { index: c.index, in_flight: in_flight.get(c.index).copied().unwrap_or(0) })
            .collect();
        free[pool.choose(&free, pool.turn(), store)].index
    }

    fn counts(pool: &Pool, store: &KeyStore, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.keys.len()];
        (0..picks).for_each(|_| counts[pick(pool, store, &[])] += 1);
        counts
    }

    #[test]
    fn round_robin_spreads_evenly_over_the_usable_keys_only() {
        let (pool, store) = (pool(&[1; 5], Strategy::RoundRobin), KeyStore::default());
        assert_eq!(counts(&pool, &store, 5000), [1000; 5]);
        fail(&pool, &store, 0, Failure::Exhausted { until: NOW + 60 });
        fail(&pool, &store, 1, Failure::Invalid);
        fail(&pool, &store, 2, Failure::ModelLocked);
        // The key after a run of unusable ones does not take their turns.
        assert_eq!(counts(&pool, &store, 2000), [0, 0, 0, 1000, 1000]);
    }

    #[test]
    fn weights_share_the_traffic() {
        let (pool, store) = (pool(&[3, 1], Strategy::RoundRobin), KeyStore::default());
        assert_eq!(counts(&pool, &store, 4000), [3000, 1000]);
        let random = pool_random(&[3, 1]);
        let shares = counts(&random, &store, 4000);
        assert!((2700..=3300).contains(&shares[0]), "{shares:?}");
    }

    fn pool_random(weights: &[u32]) -> Pool {
        pool(weights, Strategy::Random)
    }

    #[test]
    fn random_reaches_every_usable_key() {
        let (pool, store) = (pool_random(&[1; 4]), KeyStore::default());
        fail(&pool, &store, 2, Failure::Invalid);
        let shares = counts(&pool, &store, 4000);
        assert_eq!(shares[2], 0);
        assert!(shares.iter().enumerate().all(|(i, n)| i == 2 || (1100..=1570).contains(n)), "{shares:?}");
    }

    #[test]
    fn least_busy_takes_the_fewest_in_flight_then_the_lowest_usage_and_rotates_ties() {
        let (pool, store) = (pool(&[1, 1, 1], Strategy::LeastBusy), KeyStore::default());
        assert_eq!(pick(&pool, &store, &[2, 0, 1]), 1);
        assert_eq!(pick(&pool, &store, &[2, 3, 1]), 2);
        let mut seen = BTreeSet::new();
        (0..6).for_each(|_| {
            seen.insert(pick(&pool, &store, &[0, 0, 0]));
        });
        assert_eq!(seen.len(), 3, "ties rotate");
        store.update(&pool.ids[0], |s| s.usage_permille = Some(900));
        store.update(&pool.ids[1], |s| s.usage_permille = Some(100));
        store.update(&pool.ids[2], |s| s.usage_permille = Some(500));
        assert_eq!(pick(&pool, &store, &[0, 0, 0]), 1, "the lowest usage");
        let weighted = self::pool(&[4, 1], Strategy::LeastBusy);
        assert_eq!(pick(&weighted, &store, &[3, 1]), 0, "3 of 4 is less busy than 1 of 1");
    }

    #[test]
    fn unusable_and_tried_keys_are_never_candidates() {
        let (pool, store) = (pool(&[1; 3], Strategy::RoundRobin), KeyStore::default());
        fail(&pool, &store, 1, Failure::Exhausted { until: NOW + 60 });
        let indices = |model, tried: &[bool]| -> Vec<usize> {
            pool.candidates(model, &store, NOW, tried)
                .map(|c| c.iter().map(|c| c.index).collect())
                .unwrap_or_default()
        };
        assert_eq!(indices(Some("m"), &[]), [0, 2]);
        assert_eq!(indices(Some("m"), &[true, false, false]), [2]);
        fail(&pool, &store, 0, Failure::ModelLocked);
        assert_eq!(indices(Some("m"), &[]), [2], "key 0 is locked out of model m only");
        assert_eq!(indices(Some("other"), &[]), [0, 2]);
        let all_tried = pool.candidates(Some("m"), &store, NOW, &[false, false, true]).unwrap_err();
        assert_eq!(all_tried.reasons, "1 no access to the model, 1 quota spent");
    }

    #[test]
    fn an_exhausted_pool_says_when_and_why() {
        let (pool, store) = (pool(&[1; 3], Strategy::RoundRobin), KeyStore::default());
        fail(&pool, &store, 0, Failure::Exhausted { until: NOW + 90 });
        fail(&pool, &store, 1, Failure::Exhausted { until: NOW + 30 });
        fail(&pool, &store, 2, Failure::Invalid);
        let why = pool.candidates(None, &store, NOW, &[]).unwrap_err();
        assert_eq!(why.soonest, Some(NOW + 30));
        assert_eq!(why.reasons, "1 invalid, 2 quota spent");
        assert!(!why.model_locked);
        assert!(pool.candidates(None, &store, NOW + 30, &[]).is_ok(), "free again when the window ends");
    }

    #[test]
    fn a_model_no_usable_key_may_use_is_not_a_wait() {
        let (pool, store) = (pool(&[1; 3], Strategy::RoundRobin), KeyStore::default());
        fail(&pool, &store, 0, Failure::ModelLocked);
        fail(&pool, &store, 1, Failure::ModelLocked);
        fail(&pool, &store, 2, Failure::Invalid);
        let why = pool.candidates(Some("m"), &store, NOW, &[]).unwrap_err();
        assert!(why.model_locked, "{why:?}");
        assert_eq!(why.soonest, None, "the lock-outs are not waits");
        fail(&pool, &store, 2, Failure::Exhausted { until: NOW + 60 });
        store.update(&pool.ids[2], |s| s.state = crate::keystate::Health::Exhausted);
        let why = pool.candidates(Some("m"), &store, NOW, &[]).unwrap_err();
        assert!(!why.model_locked, "a key that rests for time may have the model: {why:?}");
        assert_eq!(why.soonest, Some(NOW + 60));
    }

    #[test]
    fn a_pool_whose_keys_are_all_disabled_says_so_and_claims_no_wait() {
        let (pool, store) = (pool(&[1; 3], Strategy::RoundRobin), KeyStore::default());
        fail(&pool, &store, 0, Failure::Exhausted { until: NOW + 60 });
        for id in &pool.ids {
            store.update(id, |s| s.disabled = true);
        }
        let why = pool.candidates(Some("m"), &store, NOW, &[]).unwrap_err();
        assert_eq!(why, PoolUnavailable { soonest: None, reasons: "3 disabled".into(), model_locked: false });
        store.update(&pool.ids[2], |s| s.disabled = false);
        let usable = pool.candidates(Some("m"), &store, NOW, &[]).expect("key 2 is back");
        assert_eq!(usable.iter().map(|c| c.index).collect::<Vec<_>>(), [2]);
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
