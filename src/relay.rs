//! Failover: one request tried on the usable keys of a pool, then of its fallbacks, until
//! one answers.
//!
//! [`send`] takes, attempt by attempt, a usable key the request has not tried yet, with a
//! free concurrency slot ([`Slots`]; when every usable key is at its limit it waits, in
//! arrival order, up to `slot_wait_secs`). Each answer is read into a [`Failure`] class and
//! recorded in the key's state: a revoked key is set aside, a spent quota rests until its
//! window ends, a busy key rests a moment, transient trouble backs off. An attempt that
//! fails before anything was sent to the client moves on to the next key while untried
//! usable keys remain, until `failover_deadline_secs` after the request came in (and at
//! most `max_attempts` upstream requests when that is set; no retries hide underneath); a
//! 400 or 404 goes straight back, because the request is wrong, not the key. When no key
//! of a pool can serve, the request goes on in the pool's `fallback`. When none can at
//! all, the client is told why: 429 with when the first key frees up, or 403 when the
//! model is in no key's plan.
//!
//! Each attempt that comes back (not one cut short by a client that left) is counted in
//! [`crate::metrics`] under its key and outcome.

use crate::cancel;
use crate::error::ApiError;
use crate::keys::KeyEntry;
use crate::keystate::KeyStore;
use crate::keystate::{self, Failure, Policy};
use crate::metrics;
use crate::pool::{Pool, PoolUnavailable};
use crate::slots::{Acquired, Slot, Slots};
use crate::upstream::upstream_message;
use crate::upstream::{self, UpstreamError, UpstreamResponse};
use std::collections::HashMap;
use std::io::{self, BufRead, Cursor, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the relay did, for the request log and token accounting.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Upstream requests made.
    pub attempts: u32,
    /// The pool of the key that answered last.
    pub pool: Option<String>,
    /// The masked label of the key that answered last.
    pub key: Option<String>,
    /// The store id of the key that answered.
    pub key_id: Option<String>,
}

/// Where and how to relay: the agent, the key states and slots, the pools (for fallbacks)
/// and the failover settings.
#[derive(Clone, Copy)]
pub struct Relay<'a> {
    /// The shared upstream agent.
    pub agent: &'a ureq::Agent,
    /// Every key's state.
    pub store: &'a KeyStore,
    /// Every key's requests in flight.
    pub slots: &'a Arc<Slots>,
    /// The pools by name, where fallbacks are found.
    pub pools: &'a HashMap<String, Pool>,
    /// How failures are judged.
    pub policy: Policy,
    /// Upstream requests allowed for one client request, if capped.
    pub max_attempts: Option<u32>,
    /// No attempt starts after this.
    pub failover_deadline: Instant,
    /// Longest wait for a free slot, in each pool (a pool may say otherwise).
    pub slot_wait: Duration,
    /// Most requests waiting for a slot in one pool; more are answered at once.
    pub max_waiting: usize,
    /// When the whole upstream exchange of this request must be over (`request_timeout_secs`).
    pub deadline: Option<Instant>,
}

/// The failure class of an upstream error.
pub fn failure_of(error: &UpstreamError, now: u64, policy: &Policy) -> Failure {
    match error {
        UpstreamError::Status { status, body, retry_after } => keystate::classify(
            Some(*status),
            &upstream_message(body),
            *retry_after,
            now,
            policy.cooldown_secs,
        ),
        UpstreamError::Timeout(_) | UpstreamError::Connect(_) | UpstreamError::Protocol(_) => {
            Failure::Trouble
        }
    }
}

/// Why a request could not be relayed; `From<RelayError> for ApiError` turns each into the
/// client's answer.
#[derive(Debug)]
pub enum RelayError {
    /// No key of the pool is usable now: `reasons` says what holds them back, `wait`
    /// when the first frees up (`None`: none will on its own).
    Unavailable {
        /// The pool.
        pool: String,
        /// What holds the keys back ("2 quota spent, 1 invalid").
        reasons: String,
        /// Seconds until the first key frees up.
        wait: Option<u64>,
    },
    /// No usable key of the pool may use the model: waiting will not help.
    ModelLocked {
        /// The pool.
        pool: String,
        /// The model asked for.
        model: String,
    },
    /// Every usable key stayed at its limit of requests at once for the whole wait.
    Busy {
        /// The pool.
        pool: String,
        /// Keys that were busy.
        keys: usize,
        /// How long the request waited.
        waited: Duration,
    },
    /// The pool has no keys at all.
    NoKeys {
        /// The pool.
        pool: String,
    },
    /// The upstream refused the request itself (a 400 or 404): no other key would do better.
    Refused(UpstreamError),
    /// Every attempt failed; `error` is the last one's.
    Failed {
        /// The last attempt's failure.
        error: UpstreamError,
        /// Upstream requests made.
        attempts: u32,
        /// The pool.
        pool: String,
        /// When to come back: when the pool frees up, or the upstream's own `Retry-After`.
        retry_after: Option<u64>,
    },
    /// The client left while the request waited on upstream.
    ClientGone,
}

impl RelayError {
    /// Which of two tiers' failures the client hears of: an upstream's own answer first,
    /// then a wait that ends, then a lasting refusal.
    fn weight(&self) -> u8 {
        match self {
            RelayError::Failed { .. } => 4,
            RelayError::Unavailable { wait: Some(_), .. } | RelayError::Busy { .. } => 3,
            RelayError::ModelLocked { .. } => 2,
            RelayError::Unavailable { .. } => 1,
            RelayError::NoKeys { .. } | RelayError::Refused(_) | RelayError::ClientGone => 0,
        }
    }
}

/// What an answer must show before its attempt counts as a success. Nothing has reached
/// the client until then, so an answer that fails here still moves on to the next key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An NDJSON (or SSE) stream: its first line arrives and is not an error.
    Stream,
    /// One JSON value: it arrives whole (up to [`MAX_WHOLE_ANSWER`]) and parses.
    Json,
    /// Anything with a 2xx status (an empty `/api/delete` answer, a blob).
    Raw,
}

/// Largest answer read whole.
pub const MAX_WHOLE_ANSWER: u64 = 256 * 1024 * 1024;

/// One request to relay: the same for every key, except that Ollama Cloud upstreams may
/// get their own body (model names without the local `-cloud` suffix).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Upstream path, such as `/api/chat`.
    pub path: &'a str,
    /// JSON body, if any.
    pub body: Option<&'a [u8]>,
    /// The body for Ollama Cloud upstreams, when it differs from `body`.
    pub cloud_body: Option<&'a [u8]>,
    /// What the answer must be before the attempt counts as a success.
    pub answer: Answer,
    /// The model asked of upstream, for keys whose plan lacks it.
    pub model: Option<&'a str>,
    /// The body's media type.
    pub content_type: &'a str,
    /// Whether it runs a model (chat, generate, embeddings), and so takes one of the key's
    /// concurrency slots; listing or describing models does not.
    pub takes_slot: bool,
}

impl<'a> Outgoing<'a> {
    /// A request without a body.
    pub fn get(path: &'a str) -> Outgoing<'a> {
        Outgoing {
            method: "GET",
            path,
            body: None,
            cloud_body: None,
            answer: Answer::Json,
            model: None,
            content_type: "application/json",
            takes_slot: false,
        }
    }

    fn body_for(&self, entry: &KeyEntry) -> Option<&'a [u8]> {
        match self.cloud_body {
            Some(cloud) if crate::keys::is_ollama_cloud(&entry.base_url) => Some(cloud),
            _ => self.body,
        }
    }
}

/// Sends `request` on the usable keys of `pool`, then of its fallback pools, in turn until
/// one gives a 2xx answer. The answer's body holds the key's slot until it is dropped.
pub fn send(
    relay: Relay<'_>,
    pool: &Pool,
    request: Outgoing<'_>,
    trace: &mut Trace,
) -> Result<UpstreamResponse, RelayError> {
    let mut tier = pool;
    let mut worst: Option<RelayError> = None;
    // Config refuses fallback loops; the count only bounds the walk whatever happens.
    for _ in 0..relay.pools.len().max(1) {
        let error = match send_in_pool(relay, tier, request, trace) {
            Ok(response) => return Ok(response),
            Err(error @ (RelayError::Refused(_) | RelayError::ClientGone)) => return Err(error),
            Err(error) => error,
        };
        let next = tier.fallback.as_deref().and_then(|name| relay.pools.get(name));
        let capped = relay.max_attempts.is_some_and(|cap| trace.attempts >= cap);
        worst = match worst {
            Some(earlier) if earlier.weight() > error.weight() => Some(earlier),
            _ => Some(error),
        };
        match next {
            Some(next) if !capped && Instant::now() < relay.failover_deadline => {
                log::info!("pool '{}' cannot serve the request; going on in pool '{}'", tier.name, next.name);
                tier = next;
            }
            _ => break,
        }
    }
    Err(worst.unwrap_or(RelayError::NoKeys { pool: pool.name.clone() }))
}

/// [`send`] within one pool.
fn send_in_pool(
    relay: Relay<'_>,
    pool: &Pool,
    request: Outgoing<'_>,
    trace: &mut Trace,
) -> Result<UpstreamResponse, RelayError> {
    if pool.keys.is_empty() {
        return Err(RelayError::NoKeys { pool: pool.name.clone() });
    }
    let wait_started = Instant::now();
    let slot_wait = pool.slot_wait.unwrap_or(relay.slot_wait);
    let wait_until = [Some(wait_started + slot_wait), Some(relay.failover_deadline), relay.deadline]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(wait_started);
    let mut tried = vec![false; pool.keys.len()];
    let turn = pool.turn();
    let mut last_error = None;
    let mut busy_keys = 0;
    let out_of_time = || relay.deadline.is_some_and(|deadline| Instant::now() >= deadline);
    loop {
        let capped = relay.max_attempts.is_some_and(|cap| trace.attempts >= cap);
        let late = Instant::now() >= relay.failover_deadline || out_of_time();
        if capped || (last_error.is_some() && late) {
            break;
        }
        let acquired = relay.slots.acquire(
            &pool.name,
            || {
                let now = keystate::now();
                let mut listed = pool.candidates(request.model, relay.store, now, &tried);
                if let Ok(keys) = &mut listed {
                    busy_keys = keys.len();
                    // Listing or describing models is not what a key's slots limit.
                    keys.iter_mut().filter(|_| !request.takes_slot).for_each(|key| key.limit = 0);
                }
                match listed {
                    // A key resting a few seconds (busy) frees up within the wait: wait.
                    Err(why) if frees_up_soon(&why, now, wait_until) => Ok(Vec::new()),
                    listed => listed,
                }
            },
            |free| pool.choose(free, turn, relay.store),
            (wait_until, relay.max_waiting),
            cancel::cancelled,
        );
        let (index, slot) = match acquired {
            Acquired::Slot(index, slot) => (index, slot),
            Acquired::Abandoned => return Err(RelayError::ClientGone),
            _ if last_error.is_some() => break,
            Acquired::NoKey(why) => return Err(unavailable(pool, request.model, why)),
            Acquired::Busy | Acquired::LineFull => {
                let waited = wait_started.elapsed();
                return Err(RelayError::Busy { pool: pool.name.clone(), keys: busy_keys, waited });
            }
        };
        tried[index] = true;
        if out_of_time() {
            // The time ran out while this request waited: no key is to blame for that.
            drop(slot);
            let error =
                UpstreamError::Timeout("request_timeout_secs ran out before an upstream answered".into());
            last_error = last_error.or(Some(error));
            break;
        }
        let now = keystate::now();
        let (entry, id): (&KeyEntry, &str) = (&pool.keys[index], &pool.ids[index]);
        trace.attempts += 1;
        trace.pool = Some(pool.name.clone());
        trace.key = Some(entry.label());
        trace.key_id = Some(id.to_string());
        let body = request.body_for(entry).map(|body| (body, request.content_type));
        let sent = upstream::send(relay.agent, entry, request.method, request.path, body, relay.deadline);
        let sent = sent.and_then(|response| match request.answer {
            Answer::Stream => first_line_checked(response),
            Answer::Json => whole_json_checked(response),
            Answer::Raw => Ok(response),
        });
        if cancel::cancelled() {
            // The client left and its upstream socket was shut: not the key's fault, and
            // nobody is waiting for another attempt.
            return Err(RelayError::ClientGone);
        }
        let sent = sent.map_err(|error| {
            let failure = failure_of(&error, now, &relay.policy);
            (error, failure)
        });
        metrics::global().attempt(&pool.name, id, entry, sent.as_ref().err().map(|(_, failure)| failure));
        match sent {
            Ok(response) => {
                relay.store.update(id, |state| {
                    state.record_attempt(now);
                    state.record_success(now);
                });
                // A whole answer is in memory: the key is free before the client reads it.
                return Ok(match request.answer {
                    Answer::Json => response,
                    Answer::Stream | Answer::Raw => holding(response, slot),
                });
            }
            Err((error, failure)) => {
                drop(slot);
                let text = error.to_string();
                relay.store.update(id, |state| {
                    state.record_attempt(now);
                    state.record_failure(&failure, request.model, &text, now, &relay.policy);
                });
                // A request the upstream refuses (a 400, a 404) says nothing about the key,
                // and a handler may still recover (asking again without thinking).
                let level = if failure == Failure::Request { log::Level::Info } else { log::Level::Warn };
                log::log!(level, "pool '{}': {} failed ({failure:?}): {error}", pool.name, entry.label());
                if failure == Failure::Request {
                    return Err(RelayError::Refused(error));
                }
                last_error = Some(error);
            }
        }
    }
    let Some(error) = last_error else {
        return Err(RelayError::NoKeys { pool: pool.name.clone() });
    };
    // When this request spent the pool, say when it will serve again, as the next
    // request's 429 would; else pass on the upstream's own Retry-After.
    let now = keystate::now();
    let retry_after = match pool.unavailable(request.model, relay.store, now) {
        Some(PoolUnavailable { soonest: Some(until), .. }) => Some(until.saturating_sub(now).max(1)),
        _ => match error {
            UpstreamError::Status { retry_after, .. } => retry_after,
            _ => None,
        },
    };
    Err(RelayError::Failed { error, attempts: trace.attempts, pool: pool.name.clone(), retry_after })
}

/// Longest rest of every key that a request waits out instead of failing (a busy key's).
const SHORT_REST_SECS: u64 = 5;

/// Whether the first key of a pool with none usable frees up on its own within a few
/// seconds and before `until`.
fn frees_up_soon(why: &PoolUnavailable, now: u64, until: Instant) -> bool {
    let left = until.saturating_duration_since(Instant::now()).as_secs();
    why.soonest.is_some_and(|soonest| soonest.saturating_sub(now) <= SHORT_REST_SECS.min(left))
}

/// The error of a pool with no usable key.
fn unavailable(pool: &Pool, model: Option<&str>, why: PoolUnavailable) -> RelayError {
    match (why.model_locked, model) {
        (true, Some(model)) => RelayError::ModelLocked { pool: pool.name.clone(), model: model.to_string() },
        _ => {
            let now = keystate::now();
            RelayError::Unavailable {
                pool: pool.name.clone(),
                reasons: why.reasons,
                wait: why.soonest.map(|until| until.saturating_sub(now).max(1)),
            }
        }
    }
}

/// An answer whose body keeps its key's slot taken until it is dropped (a stream, until it
/// ends or the client leaves).
fn holding(response: UpstreamResponse, slot: Slot) -> UpstreamResponse {
    let UpstreamResponse { status, content_type, body } = response;
    UpstreamResponse { status, content_type, body: Box::new(Held { body, _slot: slot }) }
}

/// A body and the slot it holds.
struct Held {
    body: Box<dyn BufRead + Send>,
    _slot: Slot,
}

impl Read for Held {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

impl BufRead for Held {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.body.fill_buf()
    }
    fn consume(&mut self, amount: usize) {
        self.body.consume(amount)
    }
}

/// Reads a whole answer and checks it is JSON (without building it): a body cut off, a
/// timeout, garbage or an HTML page is a failed attempt, not a 200.
fn whole_json_checked(response: UpstreamResponse) -> Result<UpstreamResponse, UpstreamError> {
    let UpstreamResponse { status, content_type, mut body } = response;
    let bytes = match upstream::read_whole(&mut body, MAX_WHOLE_ANSWER) {
        Ok(bytes) => bytes,
        Err(err) => {
            let text = format!("reading the answer failed: {err}");
            return Err(match upstream::is_timeout(&err) {
                true => UpstreamError::Timeout(text),
                false => UpstreamError::Protocol(text),
            });
        }
    };
    if bytes.len() as u64 > MAX_WHOLE_ANSWER {
        return Err(UpstreamError::Protocol(format!(
            "the answer is larger than {} MiB",
            MAX_WHOLE_ANSWER >> 20
        )));
    }
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|err| err.to_string());
    if let Err(err) = parsed.and_then(|_| object.then_some(()).ok_or_else(|| "not an object".to_string())) {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
        return Err(UpstreamError::Protocol(format!(
            "the answer is not valid JSON ({err}; it begins {shown:?}); is base_url an Ollama server?"
        )));
    }
    Ok(UpstreamResponse { status, content_type, body: Box::new(Cursor::new(bytes)) })
}

/// Reads a stream's first line: an `{"error":…}` there (a model that fails at once) or an
/// upstream that ends or stalls before any line is a failed attempt, not a 200.
fn first_line_checked(response: UpstreamResponse) -> Result<UpstreamResponse, UpstreamError> {
    let UpstreamResponse { status, content_type, body: mut reader } = response;
    let mut line = Vec::new();
    loop {
        match upstream::read_line(&mut reader, &mut line, upstream::MAX_LINE_BYTES) {
            Ok(true) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(true) => break,
            Ok(false) => {
                return Err(UpstreamError::Protocol("the upstream ended the stream before any line".into()))
            }
            Err(err) if upstream::is_timeout(&err) => return Err(UpstreamError::Timeout(err.to_string())),
            Err(err) => return Err(UpstreamError::Protocol(err.to_string())),
        }
    }
    // An NDJSON line, or the first event of an OpenAI-style SSE stream.
    let json = line.strip_prefix(b"data: ").unwrap_or(&line);
    // Only its `error` is looked at, so the line is not built into a tree (the translator
    // reads it again anyway); a line that is not a JSON object is the translator's to judge.
    let object = json.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{');
    if let (true, Ok(ErrorProbe { error: Some(error) })) =
        (object, serde_json::from_slice::<ErrorProbe>(json))
    {
        // Kept as a body, so it reads like any upstream error; a quota message in the
        // stream still counts as a spent quota (read by the same table as a 429's).
        let body = format!("{{\"error\":{}}}", error.get()).into_bytes();
        let spent = keystate::names_a_spent_quota(&upstream_message(&body));
        return Err(UpstreamError::Status { status: if spent { 429 } else { 502 }, body, retry_after: None });
    }
    line.push(b'\n');
    Ok(UpstreamResponse { status, content_type, body: Box::new(Cursor::new(line).chain(reader)) })
}

/// The one field of a stream's first line the relay needs: an upstream error reported
/// with a 200 status (`null` is no error).
#[derive(serde::Deserialize)]
struct ErrorProbe<'a> {
    #[serde(borrow, default)]
    error: Option<&'a serde_json::value::RawValue>,
}

impl From<RelayError> for ApiError {
    fn from(error: RelayError) -> ApiError {
        match error {
            RelayError::Unavailable { pool, reasons, wait: Some(wait) } => ApiError {
                status: 429,
                kind: "rate_limit_error",
                message: format!(
                    "no upstream key of pool '{pool}' is usable now ({reasons}); the first one frees up in {wait} s"
                ),
                param: None,
                code: Some("rate_limit_exceeded"),
                retry_after: Some(wait),
            },
            RelayError::Unavailable { pool, reasons, wait: None } => ApiError {
                status: 429,
                kind: "rate_limit_error",
                message: format!(
                    "no upstream key of pool '{pool}' is usable ({reasons}), and none frees up on its own: the \
                     gateway operator should fix keys.txt or run `ollama-gateway check`{}",
                    // "disabled" is one of `PoolUnavailable`'s reasons: the operator's own choice.
                    match reasons.contains("disabled") {
                        true => ", or enable a disabled key (POST /admin/api/keys/ID/enable)",
                        false => "",
                    }
                ),
                param: None,
                code: Some("rate_limit_exceeded"),
                retry_after: None,
            },
            RelayError::ModelLocked { pool, model } => ApiError {
                status: 403,
                kind: "permission_error",
                message: format!(
                    "no upstream key of pool '{pool}' may use model '{model}' (their plans lack it): \
                     ask for another model, or the gateway operator may add a key whose plan includes it"
                ),
                param: Some("model".into()),
                code: Some("model_not_available"),
                retry_after: None,
            },
            RelayError::Busy { pool, keys, waited } => ApiError {
                status: 429,
                kind: "rate_limit_error",
                message: format!(
                    "all {keys} usable upstream keys of pool '{pool}' stayed at their limit of requests at \
                     once for {:.0} s; try again shortly",
                    waited.as_secs_f64()
                ),
                param: None,
                code: Some("rate_limit_exceeded"),
                retry_after: Some(1),
            },
            RelayError::NoKeys { pool } => {
                ApiError::server(503, format!("pool '{pool}' has no upstream keys: add some to keys.txt"))
            }
            RelayError::Refused(error) => ApiError::from(&error),
            RelayError::Failed { error, attempts, pool, retry_after } => {
                let mut answer = ApiError::from(&error);
                if attempts > 1 {
                    answer.message =
                        format!("all {attempts} keys tried in pool '{pool}' failed; the last one: {}", answer.message);
                }
                answer.retry_after = retry_after;
                answer
            }
            RelayError::ClientGone => ApiError::client_gone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> UpstreamError {
        UpstreamError::Status { status, body: br#"{"error":"x"}"#.to_vec(), retry_after: None }
    }

    #[test]
    fn a_first_line_fails_the_attempt_only_when_it_is_an_object_with_an_error() {
        let first = |line: &str| {
            let body = Box::new(Cursor::new(format!("{line}\n{{\"done\":true}}\n").into_bytes()));
            first_line_checked(UpstreamResponse { status: 200, content_type: None, body })
        };
        for line in [r#"{"error":"model 'x' not found"}"#, r#"data: {"error":{"message":"boom"}}"#] {
            match first(line) {
                Err(UpstreamError::Status { status: 502, body, .. }) => {
                    assert!(
                        upstream_message(&body) == "model 'x' not found" || upstream_message(&body) == "boom"
                    )
                }
                other => panic!("{line}: {:?}", other.map(|_| ())),
            }
        }
        for spent in
            [r#"{"error":"you've reached your weekly usage limit"}"#, r#"{"error":"monthly credits spent"}"#]
        {
            assert!(matches!(first(spent), Err(UpstreamError::Status { status: 429, .. })), "{spent}");
        }
        // A full key is not a spent one: 502, which the table reads as busy.
        let busy = first(r#"{"error":"timed out waiting for a concurrent request slot"}"#);
        match busy {
            Err(UpstreamError::Status { status: 502, body, .. }) => {
                assert_eq!(
                    failure_of(
                        &UpstreamError::Status { status: 502, body, retry_after: None },
                        0,
                        &Policy::default()
                    ),
                    Failure::Busy
                )
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        // Not an error: passed on whole, first line included, for the translator to judge.
        for line in [r#"{"error":null,"done":false}"#, r#"["boom"]"#, "not json", r#"{"message":{}}"#] {
            let mut passed = String::new();
            first(line)
                .map_err(|err| format!("{line}: {err}"))
                .unwrap()
                .body
                .read_to_string(&mut passed)
                .unwrap();
            assert_eq!(passed, format!("{line}\n{{\"done\":true}}\n"));
        }
    }

    #[test]
    fn key_failures_fail_over_and_request_errors_do_not() {
        let fails_over = |error: &UpstreamError| failure_of(error, 0, &Policy::default()) != Failure::Request;
        for code in [401, 403, 429, 500, 502, 503] {
            assert!(fails_over(&status(code)), "{code}");
        }
        for code in [400, 404, 405, 413, 422] {
            assert!(!fails_over(&status(code)), "{code}");
        }
        assert!(fails_over(&UpstreamError::Connect("refused".into())));
        assert!(fails_over(&UpstreamError::Timeout("read".into())));
    }
}
