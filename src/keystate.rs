//! What the gateway knows about each upstream key, and how each answer changes it.
//!
//! In scope: reading an upstream failure into a [`Failure`] class (revoked, quota spent,
//! transient, model not in the plan, upstream trouble, the request's own fault), the
//! [`KeyState`] each key carries (health, until-when, counters), and when a key may be
//! used. Pure: the clock is passed in as Unix seconds (read it with [`now`]). The
//! [`KeyStore`] holds every key's state by key id, shared by all pools and kept across
//! config reloads. Out of scope: sending requests
//! (`relay`), keeping states across restarts (`statefile`), probing keys (`health`).

use crate::secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A session usage window of Ollama Cloud.
pub const SESSION_WINDOW_SECS: u64 = 5 * 3600;
/// An hourly usage window.
pub const HOURLY_WINDOW_SECS: u64 = 3600;
/// How long a key that answered "busy" (no free concurrent request slot) rests.
pub const BUSY_REST_SECS: u64 = 2;
/// The first back-off after a transient failure; it doubles on each repeat.
pub const BACKOFF_START_SECS: u64 = 30;
/// The longest back-off.
pub const BACKOFF_MAX_SECS: u64 = 600;

/// What an upstream failure says about the key that got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 401: the key is wrong or revoked.
    Invalid,
    /// 429 naming a usage limit: the key's quota is spent until `until`.
    Exhausted {
        /// Unix seconds when the window resets.
        until: u64,
    },
    /// Another 429, or 503 "overloaded": try again a little later.
    Transient {
        /// `Retry-After`, when the upstream sent one.
        retry_after: Option<u64>,
    },
    /// "timed out waiting for a concurrent request slot": the key is serving as many
    /// requests as its plan allows; it rests a few seconds, with no other penalty.
    Busy,
    /// 403 "requires a subscription": this key's plan lacks this model.
    ModelLocked,
    /// Another 5xx, a connect error or a timeout: upstream trouble.
    Trouble,
    /// 400, 404 and the like: the request is wrong, not the key.
    Request,
    /// Another 403 (a content filter, a policy): another key may be allowed, but this one
    /// is not at fault either; failed over without a penalty.
    Refused,
}

/// Reads an upstream failure. `status` is `None` for a transport failure (connect, timeout,
/// garbled answer); `message` is the upstream's error text.
pub fn classify(
    status: Option<u16>,
    message: &str,
    retry_after: Option<u64>,
    now: u64,
    cooldown_secs: u64,
) -> Failure {
    let text = message.to_ascii_lowercase();
    match status {
        None => Failure::Trouble,
        Some(401) => Failure::Invalid,
        Some(429) if text.contains("usage limit") || text.contains("quota") => {
            let until = match retry_after {
                Some(secs) => now + secs,
                None if text.contains("weekly") => next_monday_utc(now),
                None if text.contains("hourly") => now + HOURLY_WINDOW_SECS,
                None if text.contains("session") => now + SESSION_WINDOW_SECS,
                None => now + cooldown_secs,
            };
            Failure::Exhausted { until }
        }
        Some(429) => Failure::Transient { retry_after },
        Some(503) if text.contains("overload") || text.contains("busy") => Failure::Transient { retry_after },
        Some(403) if text.contains("subscription") => Failure::ModelLocked,
        Some(402) => Failure::Exhausted { until: retry_after.map_or(now + cooldown_secs, |secs| now + secs) },
        Some(403) => Failure::Refused,
        Some(status) if status >= 500 || status == 408 => Failure::Trouble,
        Some(_) => Failure::Request,
    }
}

/// Unix seconds of the next Monday 00:00 UTC after `now` (when weekly limits reset).
pub fn next_monday_utc(now: u64) -> u64 {
    let day = now / 86_400;
    // 1970-01-01 was a Thursday: day 0 is weekday 3 when Monday is 0.
    let weekday = (day + 3) % 7;
    (day + 7 - weekday) * 86_400
}

/// A key's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Usable.
    #[default]
    Healthy,
    /// Refused by the upstream (401) until a check or a reload finds it good.
    Invalid,
    /// Its quota is spent until `until`.
    Exhausted,
    /// Backing off after failures until `until`.
    Backoff,
}

/// Everything known about one key; what the state file holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct KeyState {
    /// Health.
    pub state: Health,
    /// Unix seconds when an exhausted or backing-off key may be used again.
    pub until: Option<u64>,
    /// The last error's text (never holding the key).
    pub last_error: Option<String>,
    /// Failures in a row since the last success.
    pub consecutive_failures: u32,
    /// How many back-offs in a row; each doubles the wait.
    pub backoff_level: u32,
    /// Models this key may not use until a time (its plan lacks them).
    pub model_cooldowns: BTreeMap<String, u64>,
    /// Requests sent with this key.
    pub requests: u64,
    /// Requests that succeeded.
    pub successes: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Prompt tokens used.
    pub prompt_tokens: u64,
    /// Completion tokens generated.
    pub completion_tokens: u64,
    /// Unix seconds of the last request.
    pub last_used: Option<u64>,
    /// Unix seconds of the last change of health (merging a state file keeps the newer).
    pub changed_at: u64,
    /// The highest `usage` fraction of the key's plan windows, in thousandths, as last read
    /// from the upstream's usage endpoint (1000: a window is used up).
    pub usage_permille: Option<u32>,
}

/// Why a key cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// When it frees up, if ever on its own.
    pub until: Option<u64>,
    /// In words: "invalid", "quota spent", "backing off", "no access to the model".
    pub reason: &'static str,
}

impl Unavailable {
    /// Whether the key frees up with time alone (a spent quota, a back-off), so a client
    /// that waits may be served.
    pub fn waiting_helps(&self) -> bool {
        self.reason != REASON_INVALID && self.reason != REASON_NO_MODEL_ACCESS
    }

    /// Whether the key is locked out of the model asked for (its plan lacks it).
    pub fn model_locked(&self) -> bool {
        self.reason == REASON_NO_MODEL_ACCESS
    }
}

const REASON_INVALID: &str = "invalid";
const REASON_NO_MODEL_ACCESS: &str = "no access to the model";

impl KeyState {
    /// Whether the key may serve `model` at `now`.
    pub fn available(&self, model: Option<&str>, now: u64) -> Result<(), Unavailable> {
        match self.state {
            Health::Invalid => return Err(Unavailable { until: None, reason: REASON_INVALID }),
            Health::Exhausted | Health::Backoff if self.until.is_some_and(|until| until > now) => {
                let reason = if self.state == Health::Exhausted { "quota spent" } else { "backing off" };
                return Err(Unavailable { until: self.until, reason });
            }
            _ => {}
        }
        if let Some(until) = model.and_then(|m| self.model_cooldowns.get(m)).filter(|until| **until > now) {
            return Err(Unavailable { until: Some(*until), reason: REASON_NO_MODEL_ACCESS });
        }
        Ok(())
    }

    /// Counts a request about to be sent.
    pub fn record_attempt(&mut self, now: u64) {
        self.requests += 1;
        self.last_used = Some(now);
    }

    /// A success: the key is healthy and its failure streak ends.
    pub fn record_success(&mut self, now: u64) {
        self.successes += 1;
        self.consecutive_failures = 0;
        self.backoff_level = 0;
        if self.state != Health::Healthy {
            self.state = Health::Healthy;
            self.until = None;
            self.changed_at = now;
        }
    }

    /// Tokens of a finished reply.
    pub fn record_usage(&mut self, prompt: u64, completion: u64) {
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
    }

    /// A failure of class `failure` for `model`, with the error's (key-free) text.
    pub fn record_failure(
        &mut self,
        failure: &Failure,
        model: Option<&str>,
        error: &str,
        now: u64,
        policy: &Policy,
    ) {
        if *failure == Failure::Request {
            return;
        }
        self.failures += 1;
        self.last_error = Some(error.chars().take(300).collect());
        match failure {
            Failure::Invalid => self.set(Health::Invalid, None, now),
            Failure::Exhausted { until } => self.set(Health::Exhausted, Some(*until), now),
            Failure::ModelLocked => {
                if let Some(model) = model {
                    self.model_cooldowns.insert(model.to_string(), now + policy.cooldown_secs);
                }
            }
            Failure::Transient { retry_after } => {
                let wait = retry_after.unwrap_or_else(|| self.next_backoff());
                self.backoff_level += 1;
                self.set(Health::Backoff, Some(now + wait), now);
            }
            Failure::Trouble => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= policy.failure_threshold {
                    let wait = self.next_backoff();
                    self.backoff_level += 1;
                    self.set(Health::Backoff, Some(now + wait), now);
                }
            }
            Failure::Busy => self.set(Health::Backoff, Some(now + BUSY_REST_SECS), now),
            Failure::Request | Failure::Refused => {}
        }
    }

    /// A health check found the key good. That proves it authenticates (an invalid key is
    /// back) and the upstream answers (the failure streak ends); a spent quota or a back-off
    /// ends only with its window, unless the probe itself generated (`proves_quota`).
    pub fn record_probe_ok(&mut self, now: u64, proves_quota: bool) {
        self.consecutive_failures = 0;
        let waiting =
            matches!(self.state, Health::Exhausted | Health::Backoff) && self.until.is_some_and(|u| u > now);
        if self.state == Health::Invalid || !waiting || proves_quota {
            self.backoff_level = 0;
            self.set(Health::Healthy, None, now);
        }
    }

    fn next_backoff(&self) -> u64 {
        BACKOFF_START_SECS.saturating_mul(1 << self.backoff_level.min(10)).min(BACKOFF_MAX_SECS)
    }

    fn set(&mut self, state: Health, until: Option<u64>, now: u64) {
        self.state = state;
        self.until = until;
        self.changed_at = now;
    }

    /// Forgets expired waits (an exhausted key whose window has passed is healthy again).
    pub fn expire(&mut self, now: u64) {
        if matches!(self.state, Health::Exhausted | Health::Backoff) && self.until.is_some_and(|u| u <= now) {
            self.state = Health::Healthy;
            self.until = None;
        }
        self.model_cooldowns.retain(|_, until| *until > now);
    }
}

/// The settings that shape how failures are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Quota cool-down when a 429 names no window.
    pub cooldown_secs: u64,
    /// Upstream failures in a row before a back-off.
    pub failure_threshold: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { cooldown_secs: 3600, failure_threshold: 3 }
    }
}

/// A key's identity in the state file: a hash of its URL and key, never the key itself.
pub fn key_id(base_url: &str, key: Option<&secret::Secret>) -> String {
    let text = format!("{base_url}\n{}", key.map(secret::Secret::expose).unwrap_or(""));
    secret::sha256_hex(&text)[..24].to_string()
}

/// Every key's state, by [`key_id`].
#[derive(Debug, Default)]
pub struct KeyStore {
    states: Mutex<BTreeMap<String, KeyState>>,
    dirty: AtomicBool,
}

impl KeyStore {
    /// A store starting from `states` (as read from the state file).
    pub fn new(states: BTreeMap<String, KeyState>) -> KeyStore {
        KeyStore { states: Mutex::new(states), dirty: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, KeyState>> {
        self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes one key's state.
    pub fn update<R>(&self, id: &str, change: impl FnOnce(&mut KeyState) -> R) -> R {
        let mut states = self.lock();
        // Known keys (every request after the first) are found without allocating.
        let result = match states.get_mut(id) {
            Some(state) => change(state),
            None => change(states.entry(id.to_string()).or_default()),
        };
        drop(states);
        self.dirty.store(true, Ordering::Release);
        result
    }

    /// One key's state (default when unknown).
    pub fn get(&self, id: &str) -> KeyState {
        self.lock().get(id).cloned().unwrap_or_default()
    }

    /// Whether each of `ids` may serve `model` at `now`, under one lock and without copies
    /// (this runs on every request).
    pub fn availability(
        &self,
        ids: &[String],
        model: Option<&str>,
        now: u64,
    ) -> Vec<Result<(), Unavailable>> {
        let states = self.lock();
        ids.iter().map(|id| states.get(id).map_or(Ok(()), |state| state.available(model, now))).collect()
    }

    /// The last known usage of each key's plan, in thousandths (see [`KeyState`]).
    pub fn usage_permille(&self, ids: &[&str]) -> Vec<Option<u32>> {
        let states = self.lock();
        ids.iter().map(|id| states.get(*id).and_then(|state| state.usage_permille)).collect()
    }

    /// A copy of every state, for saving (waits that are over are saved as over).
    pub fn snapshot(&self) -> BTreeMap<String, KeyState> {
        let now = now();
        let mut states = self.lock().clone();
        states.values_mut().for_each(|state| state.expire(now));
        states
    }

    /// Whether anything changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Forgets keys that are no longer in keys.txt.
    pub fn retain(&self, ids: &BTreeSet<String>) {
        let mut states = self.lock();
        let before = states.len();
        states.retain(|id, _| ids.contains(id));
        if states.len() != before {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Takes in what another process (`ollama-gateway check`) found about the keys in
    /// `known`: a key's health when its change is at least as recent as ours, and each model
    /// lock-out at its later end; counters and failure streaks stay this process's.
    pub fn merge_newer(&self, other: BTreeMap<String, KeyState>, known: &BTreeSet<String>) {
        let mut states = self.lock();
        for (id, theirs) in other.into_iter().filter(|(id, _)| known.contains(id)) {
            let ours = states.entry(id).or_default();
            // `>=`: a change made in the same second by `check` still counts (this process
            // never merges its own saves back).
            if theirs.changed_at >= ours.changed_at && theirs.changed_at > 0 {
                ours.state = theirs.state;
                ours.until = theirs.until;
                ours.last_error = theirs.last_error;
                ours.changed_at = theirs.changed_at;
            }
            for (model, until) in theirs.model_cooldowns {
                let mine = ours.model_cooldowns.entry(model).or_insert(until);
                *mine = (*mine).max(until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000; // Tuesday 2023-11-14 22:13:20 UTC

    fn fail(state: &mut KeyState, failure: Failure) {
        state.record_failure(&failure, Some("m"), "boom", NOW, &Policy::default());
    }

    #[test]
    fn failure_classes_of_the_table() {
        let class = |status, text: &str, retry| classify(status, text, retry, NOW, 3600);
        assert_eq!(class(Some(401), "unauthorized", None), Failure::Invalid);
        assert_eq!(
            class(Some(429), "you (x) have reached your session usage limit, upgrade", None),
            Failure::Exhausted { until: NOW + 5 * 3600 }
        );
        assert_eq!(
            class(Some(429), "you have reached your weekly usage limit", None),
            Failure::Exhausted { until: next_monday_utc(NOW) }
        );
        assert_eq!(
            class(Some(429), "hourly usage limit, please wait", None),
            Failure::Exhausted { until: NOW + 3600 }
        );
        assert_eq!(class(Some(429), "usage limit reached", None), Failure::Exhausted { until: NOW + 3600 });
        assert_eq!(
            class(Some(429), "session usage limit", Some(120)),
            Failure::Exhausted { until: NOW + 120 }
        );
        assert_eq!(class(Some(429), "rate limit exceeded", None), Failure::Transient { retry_after: None });
        assert_eq!(
            class(Some(503), "Server overloaded, please retry", Some(5)),
            Failure::Transient { retry_after: Some(5) }
        );
        assert_eq!(class(Some(403), "this model requires a subscription", None), Failure::ModelLocked);
        assert_eq!(class(Some(500), "runner crashed", None), Failure::Trouble);
        assert_eq!(class(Some(502), "bad gateway", None), Failure::Trouble);
        assert_eq!(class(None, "connection refused", None), Failure::Trouble);
        assert_eq!(class(Some(403), "your input was flagged by moderation", None), Failure::Refused);
        assert_eq!(class(Some(400), "invalid options", None), Failure::Request);
        assert_eq!(class(Some(404), "model 'x' not found", None), Failure::Request);
    }

    #[test]
    fn next_monday_is_midnight_utc() {
        assert_eq!(next_monday_utc(NOW), 1_700_438_400); // Monday 2023-11-20 00:00 UTC
        assert_eq!(
            next_monday_utc(1_700_438_400),
            1_700_438_400 + 7 * 86_400,
            "on Monday itself: the next one"
        );
        assert_eq!(next_monday_utc(1_700_438_399), 1_700_438_400);
    }

    #[test]
    fn invalid_keys_stay_out_until_a_check_finds_them_good() {
        let mut state = KeyState::default();
        fail(&mut state, Failure::Invalid);
        assert_eq!(state.available(None, NOW + 365 * 86_400).unwrap_err().reason, "invalid");
        state.record_probe_ok(NOW, false);
        assert!(state.available(None, NOW).is_ok());
    }

    #[test]
    fn a_free_probe_does_not_end_a_spent_quota() {
        let mut state = KeyState::default();
        fail(&mut state, Failure::Exhausted { until: NOW + 100 });
        state.record_probe_ok(NOW, false);
        assert_eq!(state.available(None, NOW).unwrap_err().reason, "quota spent", "usage/show cost nothing");
        state.record_probe_ok(NOW, true);
        assert!(state.available(None, NOW).is_ok(), "a generated token proves the quota is back");
    }

    #[test]
    fn exhausted_keys_wait_for_their_window() {
        let mut state = KeyState::default();
        fail(&mut state, Failure::Exhausted { until: NOW + 100 });
        assert_eq!(state.available(None, NOW + 99).unwrap_err().until, Some(NOW + 100));
        assert!(state.available(None, NOW + 100).is_ok());
    }

    #[test]
    fn transient_failures_back_off_doubling_to_ten_minutes() {
        let mut state = KeyState::default();
        let mut waits = Vec::new();
        for _ in 0..7 {
            fail(&mut state, Failure::Transient { retry_after: None });
            waits.push(state.until.unwrap() - NOW);
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
        state.record_success(NOW);
        fail(&mut state, Failure::Transient { retry_after: None });
        assert_eq!(state.until, Some(NOW + 30), "a success resets the doubling");
    }

    #[test]
    fn upstream_trouble_backs_off_after_the_threshold_only() {
        let mut state = KeyState::default();
        fail(&mut state, Failure::Trouble);
        fail(&mut state, Failure::Trouble);
        assert!(state.available(None, NOW).is_ok(), "two failures in a row: still tried");
        fail(&mut state, Failure::Trouble);
        assert_eq!(state.available(None, NOW).unwrap_err().until, Some(NOW + 30));
        let mut other = KeyState::default();
        fail(&mut other, Failure::Trouble);
        fail(&mut other, Failure::Trouble);
        other.record_success(NOW);
        fail(&mut other, Failure::Trouble);
        assert_eq!(other.consecutive_failures, 1, "a success resets the count");
    }

    #[test]
    fn a_model_lock_cools_down_only_that_model() {
        let mut state = KeyState::default();
        fail(&mut state, Failure::ModelLocked);
        assert_eq!(state.available(Some("m"), NOW).unwrap_err().reason, "no access to the model");
        assert!(state.available(Some("other"), NOW).is_ok());
        assert!(state.available(None, NOW).is_ok());
    }

    #[test]
    fn request_errors_cost_the_key_nothing() {
        let mut state = KeyState::default();
        for _ in 0..5 {
            fail(&mut state, Failure::Request);
        }
        assert_eq!(state, KeyState::default());
    }

    #[test]
    fn key_ids_hide_the_key() {
        let key = secret::Secret::new("0123456789abcdef.SECRET");
        let id = key_id("https://ollama.com", Some(&key));
        assert_eq!(id.len(), 24);
        assert!(!id.contains("SECRET"));
        assert_ne!(id, key_id("https://other.example", Some(&key)));
        assert_eq!(id, key_id("https://ollama.com", Some(&key)), "stable across runs");
    }
}
