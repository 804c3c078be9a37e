//! What the gateway knows about each upstream key, and how each answer changes it.
//!
//! In scope: reading an upstream failure into a [`Failure`] class (revoked, quota spent,
//! transient, busy, model not in the plan, upstream trouble, the request's own fault) by
//! one table of statuses and Ollama Cloud's wording, when each usage window resets, the
//! [`KeyState`] each key carries (health, until-when, counters), and when a key may be
//! used. Pure: the clock is passed in as Unix seconds (read it with [`now`]). The
//! [`KeyStore`] holds every key's state by key id, shared by all pools and kept across
//! config reloads. Out of scope: sending requests
//! (`relay`), keeping states across restarts (`statefile`), probing keys (`health`).

use crate::secret;
use crate::utc;
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
/// garbled answer); `message` is the upstream's error text. The first row of the table
/// `WORDING` whose status and phrases fit decides; a status no row names is the request's
/// fault.
pub fn classify(
    status: Option<u16>,
    message: &str,
    retry_after: Option<u64>,
    now: u64,
    cooldown_secs: u64,
) -> Failure {
    let Some(status) = status else { return Failure::Trouble };
    let text = message.to_ascii_lowercase();
    let row = WORDING.iter().find(|row| row.when.admits(status) && row.all.iter().all(|p| text.contains(p)));
    match row.map(|row| row.class) {
        None => Failure::Request,
        Some(Class::Invalid) => Failure::Invalid,
        Some(Class::Exhausted(window)) => {
            let until = match (retry_after, window) {
                (Some(secs), _) => now.saturating_add(secs),
                (None, Some(window)) => window.resets_after(now),
                (None, None) => now.saturating_add(cooldown_secs),
            };
            Failure::Exhausted { until }
        }
        Some(Class::Transient) => Failure::Transient { retry_after },
        Some(Class::Busy) => Failure::Busy,
        Some(Class::ModelLocked) => Failure::ModelLocked,
        Some(Class::Refused) => Failure::Refused,
        Some(Class::Trouble) => Failure::Trouble,
    }
}

/// Whether `message` names a spent quota (a usage limit, a monthly credit), as a 429 with
/// it would be read: for errors that arrive without a status of their own (a stream's
/// error line).
pub fn names_a_spent_quota(message: &str) -> bool {
    matches!(classify(Some(429), message, None, 0, 0), Failure::Exhausted { .. })
}

/// The statuses a row of [`WORDING`] applies to.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Any status (a stream's error line comes as 502, see `relay`).
    Any,
    /// This status only.
    Is(u16),
    /// This status and every one above it.
    AtLeast(u16),
}

impl When {
    fn admits(self, status: u16) -> bool {
        match self {
            When::Any => true,
            When::Is(want) => status == want,
            When::AtLeast(low) => status >= low,
        }
    }
}

/// What a row of [`WORDING`] reads a failure as: a [`Failure`] before the clock and
/// `Retry-After` are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Invalid,
    /// Spent until this window resets (`None`: no window named, `cooldown_secs`), unless
    /// `Retry-After` says otherwise.
    Exhausted(Option<Window>),
    Transient,
    Busy,
    ModelLocked,
    Refused,
    Trouble,
}

/// A usage window of a plan, by when it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// One hour from now.
    Hourly,
    /// [`SESSION_WINDOW_SECS`] from now.
    Session,
    /// The next Monday 00:00 UTC.
    Weekly,
    /// The first day of the next month, 00:00 UTC.
    Monthly,
}

impl Window {
    /// When a window spent at `now` (Unix seconds) is full again, when the upstream does
    /// not say.
    pub fn resets_after(self, now: u64) -> u64 {
        match self {
            Window::Hourly => now.saturating_add(HOURLY_WINDOW_SECS),
            Window::Session => now.saturating_add(SESSION_WINDOW_SECS),
            Window::Weekly => next_monday_utc(now),
            Window::Monthly => first_of_next_month_utc(now),
        }
    }
}

/// One row of [`WORDING`]: a failure with a status `when` admits, whose lower-cased text
/// contains every phrase of `all` (an empty `all`: any text), is of `class`.
struct Row {
    when: When,
    all: &'static [&'static str],
    class: Class,
}

const fn row(when: When, all: &'static [&'static str], class: Class) -> Row {
    Row { when, all, class }
}

/// How upstream failures read, walked top to bottom; the first row that fits decides.
///
/// Ollama Cloud's own words, as reported in public bug reports:
/// - 429 session: "you (ae2055838) have reached your session usage limit, upgrade for
///   higher limits: https://ollama.com/upgrade" (continuedev/continue#11444), later with
///   " or add extra usage: https://ollama.com/settings (ref: …)" (Anantys-oss/koan#1862).
/// - 429 weekly: "you (seppe) have reached your weekly usage limit, upgrade for higher
///   limits: …" (NousResearch/hermes-agent#68832); "you've reached your weekly usage
///   limit, please wait or upgrade to continue" (HomericIntelligence/Scylla#346).
/// - 429 hourly: "you've reached your hourly usage limit, please wait or upgrade to
///   continue" (continuedev/continue#9233).
/// - 429 monthly: no report of the wording yet. Plans since 2026-08-31 have a monthly pool
///   of usage credits instead of the session and weekly caps (slkiser/opencode-quota#289,
///   fgrehm/pi-ollama-cloud#53); the rows expect it in the same shape as the others
///   ("monthly usage limit") or naming the credits ("monthly credit").
/// - 403: "this model requires a subscription, upgrade for access: https://ollama.com/upgrade
///   (ref: …)" (xtekky/gpt4free#3436, ollama/ollama#15990).
/// - 503: "Server overloaded, please retry shortly (ref: …)" (ollama/ollama#15934).
/// - Any status: `{"error":"timed out waiting for a concurrent request slot"}`
///   (devops-thiago/ThrillhouseBot#838): more requests than the plan's concurrency.
///
/// A text naming several windows rests by the first row it fits (weekly, hourly, session,
/// then monthly), as before the monthly rows existed.
#[rustfmt::skip]
const WORDING: &[Row] = &[
    // A refused key is refused whatever the text says.
    row(When::Is(401),     &[],                          Class::Invalid),
    row(When::Any,         &["concurrent request slot"], Class::Busy),
    row(When::Is(429),     &["weekly", "usage limit"],   Class::Exhausted(Some(Window::Weekly))),
    row(When::Is(429),     &["weekly", "quota"],         Class::Exhausted(Some(Window::Weekly))),
    row(When::Is(429),     &["hourly", "usage limit"],   Class::Exhausted(Some(Window::Hourly))),
    row(When::Is(429),     &["hourly", "quota"],         Class::Exhausted(Some(Window::Hourly))),
    row(When::Is(429),     &["session", "usage limit"],  Class::Exhausted(Some(Window::Session))),
    row(When::Is(429),     &["session", "quota"],        Class::Exhausted(Some(Window::Session))),
    row(When::Is(429),     &["monthly", "usage limit"],  Class::Exhausted(Some(Window::Monthly))),
    row(When::Is(429),     &["monthly", "quota"],        Class::Exhausted(Some(Window::Monthly))),
    row(When::Is(429),     &["monthly", "credit"],       Class::Exhausted(Some(Window::Monthly))),
    row(When::Is(429),     &["usage limit"],             Class::Exhausted(None)),
    row(When::Is(429),     &["quota"],                   Class::Exhausted(None)),
    row(When::Is(429),     &[],                          Class::Transient),
    row(When::Is(503),     &["overload"],                Class::Transient),
    row(When::Is(503),     &["busy"],                    Class::Transient),
    row(When::Is(403),     &["subscription"],            Class::ModelLocked),
    // Payment required: a spent balance, with no window to read.
    row(When::Is(402),     &[],                          Class::Exhausted(None)),
    // A content filter or a policy: another key may be let through.
    row(When::Is(403),     &[],                          Class::Refused),
    row(When::Is(408),     &[],                          Class::Trouble),
    row(When::AtLeast(500), &[],                         Class::Trouble),
];

/// Unix seconds of the next Monday 00:00 UTC after `now` (when weekly limits reset).
pub fn next_monday_utc(now: u64) -> u64 {
    let day = now / 86_400;
    // 1970-01-01 was a Thursday: day 0 is weekday 3 when Monday is 0.
    let weekday = (day + 3) % 7;
    (day + 7 - weekday) * 86_400
}

/// Unix seconds of the first day of the month after the one `now` falls in, 00:00 UTC
/// (when monthly limits reset); on the first at midnight itself, the first of the next.
pub fn first_of_next_month_utc(now: u64) -> u64 {
    let (year, month, _) = utc::civil_from_days(now / 86_400);
    let (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    utc::days_from_civil(year, month, 1) * 86_400
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
    /// Set aside by the operator (the admin API) until enabled again: never offered,
    /// whatever its health. Only the running gateway changes it; probes and `check` keep it.
    pub disabled: bool,
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
        ![REASON_INVALID, REASON_NO_MODEL_ACCESS, REASON_DISABLED].contains(&self.reason)
    }

    /// Whether the key is locked out of the model asked for (its plan lacks it).
    pub fn model_locked(&self) -> bool {
        self.reason == REASON_NO_MODEL_ACCESS
    }
}

const REASON_INVALID: &str = "invalid";
const REASON_NO_MODEL_ACCESS: &str = "no access to the model";
const REASON_DISABLED: &str = "disabled";

impl KeyState {
    /// Whether the key may serve `model` at `now`.
    pub fn available(&self, model: Option<&str>, now: u64) -> Result<(), Unavailable> {
        if self.disabled {
            return Err(Unavailable { until: None, reason: REASON_DISABLED });
        }
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
            // No streak and no doubling: the key is fine, only full. A longer rest already
            // running (a spent quota another request found, an invalid key) stands.
            Failure::Busy => {
                let until = now.saturating_add(BUSY_REST_SECS);
                let resting = match self.state {
                    Health::Invalid => true,
                    Health::Exhausted | Health::Backoff => self.until.is_some_and(|u| u >= until),
                    Health::Healthy => false,
                };
                if !resting {
                    self.set(Health::Backoff, Some(until), now);
                }
            }
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
    /// `known`: a key's health when its change is at least as recent as ours, each model
    /// lock-out at its later end, and the usage fraction it read; counters, failure
    /// streaks and the operator's `disabled` stay this process's (a file that says
    /// otherwise was written from an older copy, and is saved over with ours).
    pub fn merge_newer(&self, other: BTreeMap<String, KeyState>, known: &BTreeSet<String>) {
        let mut states = self.lock();
        for (id, theirs) in other.into_iter().filter(|(id, _)| known.contains(id)) {
            let ours = states.entry(id).or_default();
            if theirs.disabled != ours.disabled {
                self.dirty.store(true, Ordering::Release);
            }
            // `>=`: a change made in the same second by `check` still counts (this process
            // never merges its own saves back).
            if theirs.changed_at >= ours.changed_at && theirs.changed_at > 0 {
                ours.state = theirs.state;
                ours.until = theirs.until;
                ours.last_error = theirs.last_error;
                ours.changed_at = theirs.changed_at;
            }
            // A reading carries no date, but the file changed since this process last saved
            // it: `check` wrote it, with its own readings (a key it read none for keeps the
            // one this process saved last, seconds ago).
            if theirs.usage_permille.is_some() {
                ours.usage_permille = theirs.usage_permille;
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

    fn class(status: Option<u16>, text: &str, retry: Option<u64>) -> Failure {
        classify(status, text, retry, NOW, 3600)
    }

    #[test]
    fn failure_classes_of_the_table() {
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
    fn the_rest_of_the_table_keeps_its_classes() {
        let cooldown = Failure::Exhausted { until: NOW + 3600 };
        #[rustfmt::skip]
        let cases = [
            (Some(429), "weekly quota exceeded", Failure::Exhausted { until: next_monday_utc(NOW) }),
            (Some(429), "hourly quota exceeded", Failure::Exhausted { until: NOW + HOURLY_WINDOW_SECS }),
            (Some(429), "session quota exceeded", Failure::Exhausted { until: NOW + SESSION_WINDOW_SECS }),
            (Some(429), "QUOTA EXCEEDED", cooldown.clone()),
            // Several windows named: weekly, hourly, session, in that order.
            (Some(429), "session usage limit; weekly too", Failure::Exhausted { until: next_monday_utc(NOW) }),
            (Some(429), "weekly", Failure::Transient { retry_after: None }),
            (Some(503), "server busy", Failure::Transient { retry_after: None }),
            (Some(503), "service unavailable", Failure::Trouble),
            (Some(402), "payment required", cooldown),
            (Some(408), "request timeout", Failure::Trouble),
            (Some(599), "", Failure::Trouble),
            (Some(418), "usage limit", Failure::Request),
            (Some(401), "timed out waiting for a concurrent request slot", Failure::Invalid),
            (None, "timed out waiting for a concurrent request slot", Failure::Trouble),
        ];
        for (status, text, want) in cases {
            assert_eq!(class(status, text, None), want, "{status:?} {text:?}");
        }
        assert_eq!(class(Some(402), "", Some(60)), Failure::Exhausted { until: NOW + 60 });
    }

    #[test]
    fn the_table_is_written_in_lower_case() {
        for row in WORDING {
            for phrase in row.all {
                assert_eq!(*phrase, phrase.to_ascii_lowercase(), "the text is lower-cased before matching");
            }
        }
    }

    #[test]
    fn a_retry_after_too_large_saturates() {
        let failure = class(Some(429), "session usage limit", Some(u64::MAX));
        assert_eq!(failure, Failure::Exhausted { until: u64::MAX });
    }

    // Ollama Cloud's own messages, one test each; where each comes from is in `WORDING`'s doc.

    #[test]
    fn ollama_cloud_session_limit_rests_five_hours_or_retry_after() {
        for text in [
            "you (ae2055838) have reached your session usage limit, upgrade for higher limits: \
             https://ollama.com/upgrade",
            "you (atoomic) have reached your session usage limit, upgrade for higher limits: \
             https://ollama.com/upgrade or add extra usage: https://ollama.com/settings (ref: \
             5d0fb402-680e-49fb-a261-4de5249a0bda)",
        ] {
            assert_eq!(class(Some(429), text, None), Failure::Exhausted { until: NOW + SESSION_WINDOW_SECS });
            assert_eq!(class(Some(429), text, Some(90)), Failure::Exhausted { until: NOW + 90 });
            assert!(names_a_spent_quota(text));
        }
    }

    #[test]
    fn ollama_cloud_weekly_limit_rests_until_monday() {
        for text in [
            "you (seppe) have reached your weekly usage limit, upgrade for higher limits: \
             https://ollama.com/upgrade or add extra usage: https://ollama.com/settings (ref: x)",
            "you've reached your weekly usage limit, please wait or upgrade to continue",
        ] {
            assert_eq!(class(Some(429), text, None), Failure::Exhausted { until: next_monday_utc(NOW) });
            assert!(names_a_spent_quota(text));
        }
    }

    #[test]
    fn ollama_cloud_hourly_limit_rests_an_hour() {
        let text = "you've reached your hourly usage limit, please wait or upgrade to continue";
        assert_eq!(class(Some(429), text, None), Failure::Exhausted { until: NOW + HOURLY_WINDOW_SECS });
    }

    #[test]
    fn a_monthly_limit_rests_until_the_first_of_next_month() {
        let december = first_of_next_month_utc(NOW); // 2023-12-01 00:00 UTC
        assert_eq!(december, 1_701_388_800);
        for text in [
            "you (x) have reached your monthly usage limit, upgrade for higher limits: https://ollama.com/upgrade",
            "you've used all of your monthly credits; add extra usage: https://ollama.com/settings",
            "Monthly quota exceeded",
        ] {
            assert_eq!(class(Some(429), text, None), Failure::Exhausted { until: december }, "{text}");
            assert_eq!(class(Some(429), text, Some(60)), Failure::Exhausted { until: NOW + 60 }, "{text}");
            assert!(names_a_spent_quota(text), "{text}");
        }
        assert_eq!(class(Some(403), "monthly credit", None), Failure::Refused, "a 429 only");
    }

    #[test]
    fn ollama_cloud_subscription_locks_the_model() {
        for text in [
            "this model requires a subscription, upgrade for access: https://ollama.com/upgrade \
             (ref: b7b9f6f9-5486-478e-8050-857feaa13152)",
            "this model\n      requires a subscription, upgrade for access:",
        ] {
            assert_eq!(class(Some(403), text, None), Failure::ModelLocked);
            assert!(!names_a_spent_quota(text));
        }
    }

    #[test]
    fn ollama_cloud_overload_is_transient() {
        let text = "Server overloaded, please retry shortly (ref: aaa65c70-cfa0-446b-86f1-4ab0e2deb9e4)";
        assert_eq!(class(Some(503), text, None), Failure::Transient { retry_after: None });
        assert_eq!(class(Some(503), text, Some(3)), Failure::Transient { retry_after: Some(3) });
        assert!(!names_a_spent_quota(text));
    }

    #[test]
    fn ollama_cloud_slot_timeout_is_busy_at_any_status() {
        let text = "timed out waiting for a concurrent request slot";
        // 502: how `relay` passes on an error line of a 200 stream.
        for status in [429, 503, 500, 502, 504, 200] {
            assert_eq!(class(Some(status), text, None), Failure::Busy, "{status}");
            assert_eq!(class(Some(status), &text.to_uppercase(), Some(9)), Failure::Busy, "{status}");
        }
        assert!(!names_a_spent_quota(text), "a full key has quota left");
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
    fn first_of_next_month_crosses_month_and_year_ends_and_leap_days() {
        let day = |y, m, d| utc::days_from_civil(y, m, d) * 86_400;
        #[rustfmt::skip]
        let cases = [
            (day(2023, 11, 14) + 80_000, day(2023, 12, 1)),
            (day(2023, 12, 31) + 86_399, day(2024, 1, 1)),   // the last second of a year
            (day(2024, 1, 1),            day(2024, 2, 1)),   // on the first itself: the next one
            (day(2024, 1, 31) + 86_399,  day(2024, 2, 1)),
            (day(2024, 2, 28),           day(2024, 3, 1)),
            (day(2024, 2, 29) + 43_200,  day(2024, 3, 1)),   // a leap day
            (day(2023, 2, 28) + 86_399,  day(2023, 3, 1)),
            (day(2100, 2, 28),           day(2100, 3, 1)),   // 2100 has no 29 February
            (day(2000, 2, 29),           day(2000, 3, 1)),   // 2000 has one
            (day(2024, 4, 30) + 86_399,  day(2024, 5, 1)),
            (0,                          day(1970, 2, 1)),
        ];
        for (now, want) in cases {
            assert_eq!(first_of_next_month_utc(now), want, "{}", utc::short(now));
            assert_eq!(utc::civil_from_days(want / 86_400).2, 1, "a first of the month");
        }
        assert_eq!(day(2024, 3, 1) - day(2024, 2, 1), 29 * 86_400);
        assert_eq!(first_of_next_month_utc(1_704_067_199), 1_704_067_200); // 2024-01-01 00:00 UTC
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
    fn busy_rests_a_moment_without_a_failure_streak_or_doubling() {
        let mut state = KeyState::default();
        for _ in 0..10 {
            fail(&mut state, Failure::Busy);
        }
        assert_eq!((state.consecutive_failures, state.backoff_level), (0, 0), "{state:?}");
        assert_eq!((state.state, state.until), (Health::Backoff, Some(NOW + BUSY_REST_SECS)));
        assert_eq!(state.available(None, NOW + BUSY_REST_SECS - 1).unwrap_err().reason, "backing off");
        assert!(state.available(None, NOW + BUSY_REST_SECS).is_ok());
        assert_eq!(state.failures, 10, "each counts as a failed request");
        // Trouble after busy answers counts from zero; a transient 429 starts at 30 s.
        fail(&mut state, Failure::Trouble);
        assert_eq!(state.consecutive_failures, 1);
        fail(&mut state, Failure::Transient { retry_after: None });
        assert_eq!(state.until, Some(NOW + BACKOFF_START_SECS));
    }

    #[test]
    fn busy_keeps_a_streak_and_a_doubling_already_there() {
        let mut state = KeyState::default();
        fail(&mut state, Failure::Trouble);
        fail(&mut state, Failure::Trouble);
        fail(&mut state, Failure::Busy);
        assert_eq!(state.consecutive_failures, 2, "not reset either: busy proves nothing");
        let mut doubled = KeyState::default();
        fail(&mut doubled, Failure::Transient { retry_after: Some(1) });
        fail(&mut doubled, Failure::Busy);
        assert_eq!(doubled.backoff_level, 1);
    }

    #[test]
    fn busy_never_shortens_a_longer_rest() {
        for (before, until) in [
            (Failure::Exhausted { until: NOW + 3600 }, Some(NOW + 3600)),
            (Failure::Transient { retry_after: Some(60) }, Some(NOW + 60)),
            (Failure::Invalid, None),
        ] {
            let mut state = KeyState::default();
            fail(&mut state, before.clone());
            let health = state.state;
            fail(&mut state, Failure::Busy);
            assert_eq!((state.state, state.until), (health, until), "{before:?}");
        }
        // A rest shorter than a busy one is lengthened to it.
        let mut state = KeyState::default();
        fail(&mut state, Failure::Transient { retry_after: Some(1) });
        fail(&mut state, Failure::Busy);
        assert_eq!(state.until, Some(NOW + BUSY_REST_SECS));
    }

    #[test]
    fn a_disabled_key_is_never_available_and_waiting_does_not_help() {
        let mut state = KeyState { disabled: true, ..KeyState::default() };
        let why = state.available(None, NOW).unwrap_err();
        assert_eq!((why.reason, why.until), ("disabled", None));
        assert!(!why.waiting_helps() && !why.model_locked());
        // Nothing a key's answers or probes do brings it back: only enabling it.
        state.record_success(NOW);
        state.record_probe_ok(NOW, true);
        state.expire(NOW + 365 * 86_400);
        assert_eq!(state.available(Some("m"), NOW + 365 * 86_400).unwrap_err().reason, "disabled");
        state.disabled = false;
        assert!(state.available(None, NOW).is_ok());
    }

    #[test]
    fn merging_keeps_this_processs_disabled_flags_and_saves_them_again() {
        let store = KeyStore::default();
        let known = BTreeSet::from(["a".to_string(), "b".to_string()]);
        store.update("a", |s| s.disabled = true);
        store.update("b", |s| s.disabled = false);
        assert!(store.take_dirty());
        // A `check` that read the file before this process saved its flags, and probed.
        let probed = KeyState { state: Health::Invalid, changed_at: NOW, ..KeyState::default() };
        let same = BTreeMap::from([("a".to_string(), KeyState { disabled: true, ..probed.clone() })]);
        store.merge_newer(same, &known);
        assert!(!store.take_dirty(), "the file agrees: nothing to write back");
        let stale = BTreeMap::from([
            ("a".to_string(), probed.clone()),
            ("b".to_string(), KeyState { disabled: true, ..probed }),
        ]);
        store.merge_newer(stale, &known);
        assert_eq!((store.get("a").disabled, store.get("b").disabled), (true, false));
        assert_eq!(store.get("a").state, Health::Invalid, "the probe's finding is taken");
        assert!(store.take_dirty(), "the file lost a flag: it is written again");
    }

    #[test]
    fn merging_takes_the_usage_fraction_check_read() {
        let store = KeyStore::default();
        let known = BTreeSet::from(["a".to_string(), "b".to_string()]);
        store.update("a", |s| s.usage_permille = Some(400));
        store.update("b", |s| s.usage_permille = Some(700));
        let read = KeyState { usage_permille: Some(910), ..KeyState::default() };
        let file = BTreeMap::from([("a".to_string(), read), ("b".to_string(), KeyState::default())]);
        store.merge_newer(file, &known);
        assert_eq!(store.get("a").usage_permille, Some(910));
        assert_eq!(store.get("b").usage_permille, Some(700), "no reading: ours stays");
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
