//! The gateway's counters, gauges and histograms, and their Prometheus text exposition
//! (format 0.0.4).
//!
//! In scope: the process-wide registry ([`global`]) that `server` tells of each finished
//! request and `relay` of each upstream attempt; the bounds on every label; rendering a
//! scrape ([`Metrics::render`]) from the registry and what the caller read at scrape time
//! (the key states of the current config, requests in flight). Out of scope: who may
//! scrape and the HTTP answer (`api::metrics`), and reading the key store (the caller
//! passes the states in, so this module sits below `gateway` and `relay`).
//!
//! One registry per process, like `log`'s logger: counters outlive config generations
//! (a reload must not reset them), and `relay` records into it without a handle threaded
//! through every call. Labels never take text a client chose: token names and key labels
//! come from the config (a key's label is its `name=`, else its masked key), families and
//! statuses are the gateway's own, and model names, which do come from requests, are kept
//! only for answers the upstream counted tokens for, up to [`MAX_MODELS`] distinct names;
//! later ones count as `(other)`. The hot path takes one short mutex per finished request
//! and one per upstream attempt, allocates only when a series first appears, and the
//! histograms are atomics.
//!
//! Each attempt also goes into the registry's [`PerMinute`] rings (the last hour per key,
//! for the status page), so `relay` still makes one call per attempt.

use crate::auth::Token;
use crate::error::Family;
use crate::keys::KeyEntry;
use crate::keystate::{self, Failure, Health};
use crate::minutes::PerMinute;
use crate::translate::Usage;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Distinct model names the token counters keep; the rest count as [`OTHER_MODEL`].
pub const MAX_MODELS: usize = 100;
/// Longest model name kept as a label; a longer one counts as [`OTHER_MODEL`].
pub const MAX_MODEL_BYTES: usize = 200;
/// The model label of names past [`MAX_MODELS`] (or longer than [`MAX_MODEL_BYTES`]).
pub const OTHER_MODEL: &str = "(other)";
/// The token (and model) label of a request without one.
pub const NONE: &str = "-";

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the duration histograms' buckets, as written in `le` and in
/// microseconds: from a 5 ms refusal to a 10-minute stream (`request_timeout_secs`).
const BUCKETS: [(&str, u64); 16] = [
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.25", 250_000),
    ("0.5", 500_000),
    ("1", 1_000_000),
    ("2.5", 2_500_000),
    ("5", 5_000_000),
    ("10", 10_000_000),
    ("30", 30_000_000),
    ("60", 60_000_000),
    ("120", 120_000_000),
    ("300", 300_000_000),
    ("600", 600_000_000),
];

/// The `family` label values, by index.
const FAMILIES: [&str; 4] = ["openai", "anthropic", "ollama", "other"];

fn family_index(family: Option<Family>) -> usize {
    match family {
        Some(Family::OpenAi) => 0,
        Some(Family::Anthropic) => 1,
        // The `/sys/*` aliases are Ollama's native API under the Gin proxy's paths.
        Some(Family::Ollama | Family::Gin) => 2,
        None => 3,
    }
}

/// The `outcome` label values of upstream attempts, by index.
const OUTCOMES: [&str; 9] =
    ["ok", "invalid", "exhausted", "transient", "busy", "model_locked", "trouble", "request", "refused"];

fn outcome_index(failure: Option<&Failure>) -> usize {
    match failure {
        None => 0,
        Some(Failure::Invalid) => 1,
        Some(Failure::Exhausted { .. }) => 2,
        Some(Failure::Transient { .. }) => 3,
        Some(Failure::Busy) => 4,
        Some(Failure::ModelLocked) => 5,
        Some(Failure::Trouble) => 6,
        Some(Failure::Request) => 7,
        Some(Failure::Refused) => 8,
    }
}

/// The `state` label values of keys, in the order they are written.
const STATES: [(Health, &str); 4] = [
    (Health::Healthy, "healthy"),
    (Health::Invalid, "invalid"),
    (Health::Exhausted, "exhausted"),
    (Health::Backoff, "backoff"),
];

/// A key's label in metrics: its `name=`, else its masked key (`abcd…wxyz`, as in logs),
/// else, for a keyless upstream, its URL without any `user:password@`. The URL is left out
/// of keyed labels: a pool's keys mostly share one, and it would only lengthen every series.
pub fn key_label(entry: &KeyEntry) -> String {
    entry.name_or_mask().unwrap_or_else(|| entry.shown_url())
}

/// `name` when it is the name of one of `tokens`, for the `token` label: anything else (no
/// token, an anonymous caller) is [`NONE`], so the label can only hold configured names.
pub fn configured<'n>(name: Option<&'n str>, tokens: &[Token]) -> Option<&'n str> {
    name.filter(|name| tokens.iter().any(|token| token.name == *name))
}

/// A request the server has finished answering.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The API family of its endpoint (`None`: the gateway's own routes and unknown paths).
    pub family: Option<Family>,
    /// The status answered.
    pub status: u16,
    /// The configured token it came with (see [`configured`]).
    pub token: Option<&'a str>,
    /// The model asked for.
    pub model: Option<&'a str>,
    /// Tokens of the answer, when the upstream counted them.
    pub usage: Option<Usage>,
    /// From its head read to its last byte written.
    pub duration: Duration,
    /// From its head read to the first byte of the answer written (a stream's head).
    pub first_byte: Option<Duration>,
}

/// A key of the current config and its state now, for the `key_state` gauge.
#[derive(Debug, Clone, Copy)]
pub struct KeyNow<'a> {
    /// Its pool.
    pub pool: &'a str,
    /// Its id in the key store.
    pub id: &'a str,
    /// The key (for its label).
    pub entry: &'a KeyEntry,
    /// Its health now (waits that are over already expired).
    pub health: Health,
}

/// What is read at scrape time rather than counted.
#[derive(Debug, Clone, Copy)]
pub struct Scrape<'a> {
    /// Every key of the current config.
    pub keys: &'a [KeyNow<'a>],
    /// Requests taken and not finished (waiting for a worker, or served).
    pub in_flight: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Time since the gateway started.
    pub uptime: Duration,
}

/// A histogram of durations: a count per bucket (not cumulative: summed when rendered, so a
/// scrape never shows a bucket above `+Inf`), one past the last bound, and the sum.
struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram { counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1], sum_micros: AtomicU64::new(0) }
    }

    fn observe(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS.iter().position(|(_, bound)| micros <= *bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// The counters of finished requests, under one lock.
#[derive(Default)]
struct Requests {
    /// By token name, then by (family index, status).
    by_token: BTreeMap<String, BTreeMap<(usize, u16), u64>>,
    /// Prompt and completion tokens by token name, then model label.
    tokens: BTreeMap<String, BTreeMap<String, [u64; 2]>>,
    /// The model labels in use (at most [`MAX_MODELS`]).
    models: BTreeSet<String>,
}

/// The attempts of one key.
struct KeySeries {
    /// Its label when first seen (see [`key_label`]).
    label: String,
    /// By outcome index.
    counts: [u64; OUTCOMES.len()],
}

/// The registry.
pub struct Metrics {
    requests: Mutex<Requests>,
    /// By pool, then key id.
    attempts: Mutex<BTreeMap<String, BTreeMap<String, KeySeries>>>,
    duration: [Histogram; FAMILIES.len()],
    first_byte: [Histogram; FAMILIES.len()],
    /// Attempts per key and minute, under a lock of their own.
    per_minute: PerMinute,
}

static GLOBAL: Metrics = Metrics::new();

/// The process's registry.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while counting leaves counts that are still counts.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `change` on the value of `key`, inserting a default first when there is none: the
/// key is copied only then.
fn with_entry<V: Default, R>(
    map: &mut BTreeMap<String, V>,
    key: &str,
    change: impl FnOnce(&mut V) -> R,
) -> R {
    match map.get_mut(key) {
        Some(value) => change(value),
        None => change(map.entry(key.to_string()).or_default()),
    }
}

impl Metrics {
    /// An empty registry (tests make their own; the server uses [`global`]).
    pub const fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(Requests {
                by_token: BTreeMap::new(),
                tokens: BTreeMap::new(),
                models: BTreeSet::new(),
            }),
            attempts: Mutex::new(BTreeMap::new()),
            duration: [const { Histogram::new() }; FAMILIES.len()],
            first_byte: [const { Histogram::new() }; FAMILIES.len()],
            per_minute: PerMinute::new(),
        }
    }

    /// Every key's attempts per minute over the last hour.
    pub fn per_minute(&self) -> &PerMinute {
        &self.per_minute
    }

    /// Counts a finished request: its status, its duration and time to first byte, and its
    /// tokens when known.
    pub fn request(&self, done: &Finished<'_>) {
        let family = family_index(done.family);
        self.duration[family].observe(done.duration);
        if let Some(first_byte) = done.first_byte {
            self.first_byte[family].observe(first_byte);
        }
        let token = done.token.unwrap_or(NONE);
        let mut requests = lock(&self.requests);
        with_entry(&mut requests.by_token, token, |by_status| {
            *by_status.entry((family, done.status)).or_insert(0) += 1;
        });
        let Some(usage) = done.usage else { return };
        let Requests { tokens, models, .. } = &mut *requests;
        let model = model_label(models, done.model.unwrap_or(NONE));
        with_entry(tokens, token, |by_model| {
            with_entry(by_model, model, |counts| {
                counts[0] += usage.prompt;
                counts[1] += usage.completion;
            })
        });
    }

    /// Counts one upstream attempt of key `id` (in `pool`): `failure` is `None` when it
    /// succeeded.
    pub fn attempt(&self, pool: &str, id: &str, entry: &KeyEntry, failure: Option<&Failure>) {
        let outcome = outcome_index(failure);
        self.per_minute.record(id, failure.is_some(), keystate::now());
        let mut attempts = lock(&self.attempts);
        with_entry(&mut attempts, pool, |keys| match keys.get_mut(id) {
            Some(series) => series.counts[outcome] += 1,
            None => {
                let mut counts = [0; OUTCOMES.len()];
                counts[outcome] = 1;
                keys.insert(id.to_string(), KeySeries { label: key_label(entry), counts });
            }
        });
    }

    /// The scrape: every metric in the text format, families in a fixed order and series
    /// sorted within each, so two scrapes compare line by line.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let text = &mut out;
        header(text, "build_info", "gauge", "The gateway's version, as a label; always 1.");
        sample(text, "build_info", &[("version", env!("CARGO_PKG_VERSION"))], "1");
        header(text, "uptime_seconds", "gauge", "Seconds since the gateway started.");
        sample(text, "uptime_seconds", &[], &format!("{:.3}", scrape.uptime.as_secs_f64()));
        header(
            text,
            "requests_in_flight",
            "gauge",
            "Requests taken and not yet finished: reading their body, waiting for a worker, or being served.",
        );
        sample(text, "requests_in_flight", &[], &scrape.in_flight.to_string());
        header(text, "requests_queued", "gauge", "Requests waiting for a free worker.");
        sample(text, "requests_queued", &[], &scrape.queued.to_string());

        let requests = lock(&self.requests);
        header(text, "requests_total", "counter", "Requests answered, by API family, status and token name.");
        let mut rows: Vec<(usize, u16, &str, u64)> = Vec::new();
        for (token, by_status) in &requests.by_token {
            rows.extend(by_status.iter().map(|((family, status), n)| (*family, *status, token.as_str(), *n)));
        }
        rows.sort_unstable();
        for (family, status, token, n) in rows {
            let status = status.to_string();
            let labels = [("family", FAMILIES[family]), ("status", status.as_str()), ("token", token)];
            sample(text, "requests_total", &labels, &n.to_string());
        }
        header(
            text,
            "tokens_total",
            "counter",
            "Prompt and completion tokens the upstream counted, by token name and model asked for.",
        );
        for (token, by_model) in &requests.tokens {
            for (model, counts) in by_model {
                for (kind, n) in ["prompt", "completion"].iter().zip(counts) {
                    let labels = [("token", token.as_str()), ("model", model.as_str()), ("kind", kind)];
                    sample(text, "tokens_total", &labels, &n.to_string());
                }
            }
        }
        drop(requests);

        histogram(
            text,
            "request_duration_seconds",
            "Time from a request's head read to the last byte of its answer, by API family.",
            &self.duration,
        );
        histogram(
            text,
            "time_to_first_byte_seconds",
            "Time from a request's head read to the first byte of its answer (a stream's head), by API family.",
            &self.first_byte,
        );

        let attempts = lock(&self.attempts);
        let labels = KeyLabels::new(&attempts, scrape.keys);
        header(
            text,
            "upstream_attempts_total",
            "counter",
            "Upstream requests, by pool, key label and outcome (ok, or the failure class).",
        );
        for (pool, keys) in attempts.iter() {
            let mut rows: Vec<(String, &KeySeries)> =
                keys.iter().map(|(id, series)| (labels.get(pool, id, &series.label), series)).collect();
            rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            for (label, series) in rows {
                for (outcome, n) in OUTCOMES.iter().zip(&series.counts).filter(|(_, n)| **n > 0) {
                    let labels = [("pool", pool.as_str()), ("key", label.as_str()), ("outcome", outcome)];
                    sample(text, "upstream_attempts_total", &labels, &n.to_string());
                }
            }
        }
        header(
            text,
            "key_state",
            "gauge",
            "1 for each upstream key's current state (healthy, invalid, exhausted, backoff), 0 for the others.",
        );
        let mut keys: Vec<(&str, String, Health)> = scrape
            .keys
            .iter()
            .map(|key| (key.pool, labels.get(key.pool, key.id, &key_label(key.entry)), key.health))
            .collect();
        keys.sort_unstable_by(|(pool_a, a, _), (pool_b, b, _)| (pool_a, a).cmp(&(pool_b, b)));
        for (pool, label, health) in keys {
            for (state, name) in STATES {
                let value = if state == health { "1" } else { "0" };
                sample(text, "key_state", &[("pool", pool), ("key", &label), ("state", name)], value);
            }
        }
        out
    }
}

/// The model label for `model`: itself while fewer than [`MAX_MODELS`] are in use (or it
/// already is), else [`OTHER_MODEL`].
fn model_label<'m>(models: &mut BTreeSet<String>, model: &'m str) -> &'m str {
    if model == NONE || models.contains(model) {
        return model;
    }
    if models.len() >= MAX_MODELS || model.len() > MAX_MODEL_BYTES {
        return OTHER_MODEL;
    }
    models.insert(model.to_string());
    model
}

/// The label of each key in a scrape. Two keys of a pool may have the same label (two
/// masked keys that share their first and last four characters, two keyless lines of one
/// host): both then get ` #` and the start of their store id, so their series stay apart
/// (a scrape with two identical series is refused). The id is a hash, never the key.
struct KeyLabels {
    /// (pool, id) → label, for the keys whose label is shared.
    shared: BTreeMap<(String, String), String>,
}

impl KeyLabels {
    fn new(attempts: &BTreeMap<String, BTreeMap<String, KeySeries>>, keys: &[KeyNow<'_>]) -> KeyLabels {
        // (pool, label) → the ids that have it.
        let mut ids: BTreeMap<(&str, String), BTreeSet<&str>> = BTreeMap::new();
        for (pool, series) in attempts {
            for (id, series) in series {
                ids.entry((pool.as_str(), series.label.clone())).or_default().insert(id.as_str());
            }
        }
        for key in keys {
            ids.entry((key.pool, key_label(key.entry))).or_default().insert(key.id);
        }
        let mut shared = BTreeMap::new();
        for ((pool, label), ids) in ids.into_iter().filter(|(_, ids)| ids.len() > 1) {
            for id in ids {
                let short = id.get(..8).unwrap_or(id);
                shared.insert((pool.to_string(), id.to_string()), format!("{label} #{short}"));
            }
        }
        KeyLabels { shared }
    }

    /// The label of key `id` of `pool`, whose own label is `label`. (Scrape time only: the
    /// copies cost nothing on the request path.)
    fn get(&self, pool: &str, id: &str, label: &str) -> String {
        match self.shared.get(&(pool.to_string(), id.to_string())) {
            Some(shared) => shared.clone(),
            None => label.to_string(),
        }
    }
}

/// `# HELP` and `# TYPE` of metric `name` (without its prefix).
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP ollama_gateway_{name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE ollama_gateway_{name} {kind}");
}

/// One sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str("ollama_gateway_");
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_into(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A histogram per family: cumulative `_bucket`s ending with `+Inf`, `_sum` and `_count`
/// (which is the `+Inf` bucket, by construction).
fn histogram(out: &mut String, name: &str, help: &str, by_family: &[Histogram; FAMILIES.len()]) {
    header(out, name, "histogram", help);
    let (bucket, sum, count) = (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
    for (family, histogram) in FAMILIES.iter().zip(by_family) {
        let mut total = 0;
        for ((le, _), count) in BUCKETS.iter().zip(&histogram.counts) {
            total += count.load(Ordering::Relaxed);
            sample(out, &bucket, &[("family", family), ("le", le)], &total.to_string());
        }
        total += histogram.counts[BUCKETS.len()].load(Ordering::Relaxed);
        sample(out, &bucket, &[("family", family), ("le", "+Inf")], &total.to_string());
        let seconds = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        sample(out, &sum, &[("family", family)], &seconds.to_string());
        sample(out, &count, &[("family", family)], &total.to_string());
    }
}

/// A label value as the text format writes it: `\`, `"` and newlines escaped.
fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text as the text format writes it: `\` and newlines escaped (quotes stay).
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyOptions;
    use crate::secret::Secret;

    fn entry(key: Option<&str>, name: Option<&str>, url: &str) -> KeyEntry {
        KeyEntry {
            pool: "default".into(),
            base_url: url.into(),
            key: key.map(Secret::new),
            line: 1,
            options: KeyOptions { name: name.map(str::to_string), ..KeyOptions::default() },
        }
    }

    fn finished(family: Option<Family>, status: u16, token: Option<&'static str>) -> Finished<'static> {
        Finished {
            family,
            status,
            token,
            model: None,
            usage: None,
            duration: Duration::from_millis(3),
            first_byte: None,
        }
    }

    fn scrape(metrics: &Metrics, keys: &[KeyNow<'_>]) -> String {
        metrics.render(&Scrape { keys, in_flight: 2, queued: 1, uptime: Duration::from_millis(1500) })
    }

    /// The value of the one sample line starting with `series ` (name and labels as written).
    fn value(text: &str, series: &str) -> Option<String> {
        let found: Vec<&str> =
            text.lines().filter_map(|line| line.strip_prefix(&format!("{series} "))).collect();
        assert!(found.len() <= 1, "{series} appears {} times", found.len());
        found.first().map(|v| v.to_string())
    }

    #[test]
    fn label_values_are_escaped_and_help_text_too() {
        let mut line = String::new();
        sample(&mut line, "x_total", &[("a", "back\\slash \"quoted\"\nnext"), ("b", "plain…")], "1");
        assert_eq!(
            line,
            "ollama_gateway_x_total{a=\"back\\\\slash \\\"quoted\\\"\\nnext\",b=\"plain…\"} 1\n"
        );
        assert_eq!(escape_help("a \\ b\n\"c\""), "a \\\\ b\\n\"c\"");
        let mut bare = String::new();
        sample(&mut bare, "up", &[], "1");
        assert_eq!(bare, "ollama_gateway_up 1\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count() {
        let metrics = Metrics::new();
        for millis in [1, 5, 7, 300, 2000, 700_000] {
            let done = Finished {
                duration: Duration::from_millis(millis),
                ..finished(Some(Family::OpenAi), 200, None)
            };
            metrics.request(&done);
        }
        let text = scrape(&metrics, &[]);
        let bucket = |le: &str| {
            value(
                &text,
                &format!("ollama_gateway_request_duration_seconds_bucket{{family=\"openai\",le=\"{le}\"}}"),
            )
        };
        // 5 ms sits on the 0.005 bound: `le` is "less or equal".
        assert_eq!(bucket("0.005").as_deref(), Some("2"));
        assert_eq!(bucket("0.01").as_deref(), Some("3"));
        assert_eq!(bucket("0.25").as_deref(), Some("3"));
        assert_eq!(bucket("0.5").as_deref(), Some("4"));
        assert_eq!(bucket("2.5").as_deref(), Some("5"));
        assert_eq!(bucket("600").as_deref(), Some("5"));
        assert_eq!(bucket("+Inf").as_deref(), Some("6"), "a 700 s request is past the last bound");
        let count = value(&text, "ollama_gateway_request_duration_seconds_count{family=\"openai\"}");
        assert_eq!(count.as_deref(), Some("6"));
        let sum: f64 = value(&text, "ollama_gateway_request_duration_seconds_sum{family=\"openai\"}")
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 702.313).abs() < 1e-9, "{sum}");
        // Every bucket line of a family, in order, never goes down.
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("ollama_gateway_request_duration_seconds_bucket{family=\"openai\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), BUCKETS.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        // The families never seen are there at zero, so a rate over them starts from 0.
        assert_eq!(
            value(&text, "ollama_gateway_time_to_first_byte_seconds_count{family=\"anthropic\"}").as_deref(),
            Some("0")
        );
        assert!(text.contains("# TYPE ollama_gateway_request_duration_seconds histogram\n"));
    }

    #[test]
    fn requests_and_tokens_are_counted_by_their_labels() {
        let metrics = Metrics::new();
        let usage = Some(Usage { prompt: 3, completion: 5 });
        for _ in 0..2 {
            metrics.request(&Finished {
                model: Some("llama3.2"),
                usage,
                ..finished(Some(Family::Ollama), 200, Some("alice"))
            });
        }
        metrics.request(&finished(None, 401, None));
        metrics.request(&finished(Some(Family::Anthropic), 429, Some("bob")));
        let text = scrape(&metrics, &[]);
        let get = |series: &str| value(&text, series);
        assert_eq!(
            get("ollama_gateway_requests_total{family=\"ollama\",status=\"200\",token=\"alice\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            get("ollama_gateway_requests_total{family=\"other\",status=\"401\",token=\"-\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            get("ollama_gateway_requests_total{family=\"anthropic\",status=\"429\",token=\"bob\"}")
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            get("ollama_gateway_tokens_total{token=\"alice\",model=\"llama3.2\",kind=\"prompt\"}").as_deref(),
            Some("6")
        );
        assert_eq!(
            get("ollama_gateway_tokens_total{token=\"alice\",model=\"llama3.2\",kind=\"completion\"}")
                .as_deref(),
            Some("10")
        );
        assert_eq!(get("ollama_gateway_requests_in_flight").as_deref(), Some("2"));
        assert_eq!(get("ollama_gateway_requests_queued").as_deref(), Some("1"));
        assert_eq!(get("ollama_gateway_uptime_seconds").as_deref(), Some("1.500"));
        let version = format!("ollama_gateway_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(get(&version).as_deref(), Some("1"));
    }

    #[test]
    fn model_labels_are_bounded() {
        let metrics = Metrics::new();
        let usage = Some(Usage { prompt: 1, completion: 1 });
        let names: Vec<String> = (0..MAX_MODELS + 20).map(|i| format!("model-{i:03}")).collect();
        for name in names.iter().chain(std::iter::once(&"x".repeat(MAX_MODEL_BYTES + 1))) {
            metrics.request(&Finished {
                model: Some(name),
                usage,
                ..finished(Some(Family::OpenAi), 200, Some("alice"))
            });
        }
        // A name already kept stays kept after the bound is reached.
        metrics.request(&Finished {
            model: Some("model-000"),
            usage,
            ..finished(Some(Family::OpenAi), 200, Some("alice"))
        });
        let text = scrape(&metrics, &[]);
        let models: BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("ollama_gateway_tokens_total{"))
            .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(models.len(), MAX_MODELS + 1, "{models:?}");
        assert!(
            models.contains(OTHER_MODEL) && models.contains("model-099") && !models.contains("model-100")
        );
        let other = "ollama_gateway_tokens_total{token=\"alice\",model=\"(other)\",kind=\"prompt\"}";
        assert_eq!(value(&text, other).as_deref(), Some("21"));
        let first = "ollama_gateway_tokens_total{token=\"alice\",model=\"model-000\",kind=\"prompt\"}";
        assert_eq!(value(&text, first).as_deref(), Some("2"));
    }

    #[test]
    fn attempts_and_key_states_use_the_key_label_and_never_the_key() {
        let metrics = Metrics::new();
        let named = entry(Some("sk-named-0123456789-SECRET"), Some("paid-1"), "https://ollama.com");
        let masked = entry(Some("sk-masked-0123456789-SECRET"), None, "https://ollama.com");
        let keyless = entry(None, None, "http://user:pass@10.0.0.5:11434");
        metrics.attempt("default", "id-named", &named, None);
        metrics.attempt("default", "id-named", &named, Some(&Failure::ModelLocked));
        metrics.attempt("default", "id-masked", &masked, Some(&Failure::Exhausted { until: 9 }));
        let keys = [
            KeyNow { pool: "default", id: "id-named", entry: &named, health: Health::Healthy },
            KeyNow { pool: "default", id: "id-masked", entry: &masked, health: Health::Exhausted },
            KeyNow { pool: "local", id: "id-keyless", entry: &keyless, health: Health::Backoff },
        ];
        let text = scrape(&metrics, &keys);
        let get = |series: &str| value(&text, series);
        assert_eq!(
            get("ollama_gateway_upstream_attempts_total{pool=\"default\",key=\"paid-1\",outcome=\"ok\"}")
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            get("ollama_gateway_upstream_attempts_total{pool=\"default\",key=\"paid-1\",outcome=\"model_locked\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            get("ollama_gateway_upstream_attempts_total{pool=\"default\",key=\"sk-m…CRET\",outcome=\"exhausted\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            get("ollama_gateway_key_state{pool=\"default\",key=\"sk-m…CRET\",state=\"exhausted\"}")
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            get("ollama_gateway_key_state{pool=\"default\",key=\"sk-m…CRET\",state=\"healthy\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            get("ollama_gateway_key_state{pool=\"default\",key=\"paid-1\",state=\"healthy\"}").as_deref(),
            Some("1")
        );
        let local =
            "ollama_gateway_key_state{pool=\"local\",key=\"http://10.0.0.5:11434\",state=\"backoff\"}";
        assert_eq!(get(local).as_deref(), Some("1"));
        assert_eq!(
            text.lines().filter(|l| l.starts_with("ollama_gateway_key_state{")).count(),
            3 * STATES.len()
        );
        for secret in ["named-0123456789", "masked-0123456789", "user:pass"] {
            assert!(!text.contains(secret), "{secret} in:\n{text}");
        }
    }

    #[test]
    fn keys_with_the_same_label_stay_apart() {
        let metrics = Metrics::new();
        let (one, two) = (
            entry(Some("abcd-1111111-wxyz"), None, "https://a"),
            entry(Some("abcd-2222222-wxyz"), None, "https://a"),
        );
        metrics.attempt("default", "0123456789abcdef", &one, None);
        let keys = [
            KeyNow { pool: "default", id: "0123456789abcdef", entry: &one, health: Health::Healthy },
            KeyNow { pool: "default", id: "fedcba9876543210", entry: &two, health: Health::Invalid },
        ];
        let text = scrape(&metrics, &keys);
        let attempts = "ollama_gateway_upstream_attempts_total{pool=\"default\",key=\"abcd…wxyz #01234567\",outcome=\"ok\"}";
        assert_eq!(value(&text, attempts).as_deref(), Some("1"));
        let state =
            "ollama_gateway_key_state{pool=\"default\",key=\"abcd…wxyz #fedcba98\",state=\"invalid\"}";
        assert_eq!(value(&text, state).as_deref(), Some("1"));
    }

    #[test]
    fn only_configured_token_names_become_labels() {
        let token = |name: &str| Token {
            name: name.into(),
            digest: [0; 32],
            pool: "default".into(),
            pools: vec!["default".into()],
            models: None,
            scopes: Vec::new(),
            limits: Default::default(),
        };
        let tokens = [token("alice")];
        assert_eq!(configured(Some("alice"), &tokens), Some("alice"));
        assert_eq!(configured(Some("anonymous"), &tokens), None);
        assert_eq!(configured(None, &tokens), None);
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let metrics = Metrics::new();
        metrics.request(&finished(Some(Family::OpenAi), 200, Some("alice")));
        let text = scrape(&metrics, &[]);
        let mut typed = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let family =
                ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            assert!(typed.contains(name) || typed.contains(family), "{line} before its TYPE");
        }
        assert!(text.ends_with('\n'));
    }
}
