//! Health checks: asking an upstream whether one key works, without spending a real request.
//!
//! In scope: the probes (`usage`, `show`, `generate`, and `GET /api/version` for keyless
//! upstreams), reading each answer into an [`Outcome`] with a short key-free note (and,
//! for `usage`, the plan's usage fractions, read by `quota`), probing many keys on a
//! bounded number of threads, and applying a result to a [`KeyState`].
//! Out of scope: when to probe (the server's checker and `ollama-gateway check`), printing
//! results, and saving states (`statefile`).
//!
//! Why not `GET /api/tags`: ollama.com answers it without a key, so it proves nothing.

use crate::config::{Config, Probe, ProbeKind};
use crate::keys::{self, KeyEntry};
use crate::keystate::{classify, key_id, Failure, KeyState, KeyStore, Policy};
use crate::quota::{self, PlanUsage, Reading};
use crate::upstream::upstream_message;
use crate::upstream::{self, UpstreamError};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most of a successful answer read (the usage one is judged by it; the others are thrown
/// away, read only so the connection can be reused).
const MAX_DRAIN: u64 = 64 * 1024;

/// Longest upstream text quoted in a note.
const MAX_NOTE_TEXT: usize = 160;

/// What a probe found out about a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The key works.
    Good,
    /// The key failed; never [`Failure::Request`] (a probe the upstream rejects says
    /// nothing about the key, and is [`Outcome::Unknown`]).
    Failed(Failure),
    /// The answer tells nothing either way; the key's state is left as it is.
    Unknown,
}

impl Outcome {
    /// In a word or two, for reports: `ok`, `invalid`, `exhausted`, `backing off`, `busy`,
    /// `no access to model`, `unreachable`, `refused`, `unknown`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Good => "ok",
            Outcome::Failed(Failure::Invalid) => "invalid",
            Outcome::Failed(Failure::Exhausted { .. }) => "exhausted",
            Outcome::Failed(Failure::Transient { .. }) => "backing off",
            Outcome::Failed(Failure::Busy) => "busy",
            Outcome::Failed(Failure::ModelLocked) => "no access to model",
            Outcome::Failed(Failure::Trouble) => "unreachable",
            Outcome::Failed(Failure::Request | Failure::Refused) => "refused",
            Outcome::Unknown => "unknown",
        }
    }
}

/// A probe's outcome, how long it took, and why, in words.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// What the probe found.
    pub outcome: Outcome,
    /// Time for the whole probe, fallback included.
    pub latency: Duration,
    /// A short text for tables and logs, like `200 via /api/usage` or
    /// `401 via /api/show: unauthorized`; never holds the key.
    pub note: String,
    /// Whether a good answer also proves the key has quota left (it generated a token, or
    /// the upstream is a keyless self-hosted Ollama); `usage` and `show` cost nothing and
    /// answer even when the quota is spent.
    pub proves_quota: bool,
    /// What `GET /api/usage` said about the plan's windows, when it answered in its shape.
    pub usage: Option<PlanUsage>,
    /// Why the usage fractions are unknown when they were expected (Ollama Cloud answered
    /// `/api/usage` with something else, or not at all); also in the note. Never a failure.
    pub warning: Option<String>,
}

/// What one probe found, before it is timed and scrubbed into a [`ProbeResult`].
struct Found {
    outcome: Outcome,
    note: String,
    usage: Option<PlanUsage>,
    warning: Option<String>,
}

impl From<(Outcome, String)> for Found {
    fn from((outcome, note): (Outcome, String)) -> Found {
        Found { outcome, note, usage: None, warning: None }
    }
}

/// Probes one key. Keyless upstreams get `GET /api/version` whatever `probe.kind` says.
/// `now` (Unix seconds) and `policy` date an exhausted key's reset.
pub fn probe(agent: &ureq::Agent, entry: &KeyEntry, probe: &Probe, now: u64, policy: &Policy) -> ProbeResult {
    let start = Instant::now();
    let ctx = Ctx { agent, entry, now, policy, cloud: keys::is_ollama_cloud(&entry.base_url) };
    let found = match (&entry.key, probe.kind) {
        (None, _) => ctx.version().into(),
        (Some(_), ProbeKind::Usage) => ctx.usage(&probe.model),
        (Some(_), ProbeKind::Show) => ctx.show(&probe.model).into(),
        (Some(_), ProbeKind::Generate) => ctx.generate(&probe.model).into(),
    };
    ProbeResult {
        outcome: found.outcome,
        latency: start.elapsed(),
        note: upstream::scrub(&found.note, entry),
        proves_quota: entry.key.is_none() || probe.kind == ProbeKind::Generate,
        usage: found.usage,
        warning: found.warning.map(|warning| upstream::scrub(&warning, entry)),
    }
}

/// Probes every key of `config` as its `[health]` says, in keys.txt order. Keys of
/// OpenAI-compatible pools are not probed (their APIs have no such call in common).
pub fn probe_config_keys(
    agent: &ureq::Agent,
    config: &Config,
    now: u64,
    policy: &Policy,
) -> Vec<ProbeResult> {
    probe_keys(agent, config, &config.keys, now, policy)
}

/// Probes `keys` (of `config`) as `[health]` says, skipping OpenAI-compatible pools.
pub fn probe_keys(
    agent: &ureq::Agent,
    config: &Config,
    keys: &[KeyEntry],
    now: u64,
    policy: &Policy,
) -> Vec<ProbeResult> {
    let probe = config.raw.health.probe();
    let ollama: Vec<KeyEntry> = keys.iter().filter(|k| !config.is_openai_pool(&k.pool)).cloned().collect();
    let mut results = probe_all(agent, &ollama, &probe, PARALLEL, now, policy).into_iter();
    keys.iter()
        .map(|key| match config.is_openai_pool(&key.pool) {
            true => not_probed("not probed: OpenAI-compatible pool"),
            false => results.next().unwrap_or_else(|| not_probed("not probed")),
        })
        .collect()
}

/// Probes `keys` (of `config`) as [`probe_keys`] does and applies each result to its
/// key's state in `store`: what the background checker, a reload's recheck and the admin
/// API's check share. Results are in the order of `keys`.
pub fn probe_into(
    store: &KeyStore,
    agent: &ureq::Agent,
    config: &Config,
    keys: &[KeyEntry],
    now: u64,
    policy: &Policy,
) -> Vec<ProbeResult> {
    let model = &config.raw.health.model;
    let results = probe_keys(agent, config, keys, now, policy);
    for (entry, result) in keys.iter().zip(&results) {
        let id = key_id(&entry.base_url, entry.key.as_ref());
        store.update(&id, |state| apply(state, result, Some(model), now, policy));
    }
    results
}

/// Keys probed at once.
pub const PARALLEL: usize = 8;

/// The result for a key that is not probed (an OpenAI-compatible upstream).
pub fn not_probed(why: &str) -> ProbeResult {
    ProbeResult {
        outcome: Outcome::Unknown,
        latency: Duration::ZERO,
        note: why.to_string(),
        proves_quota: false,
        usage: None,
        warning: None,
    }
}

/// Probes every key, at most `parallelism` (at least 1) at a time; results are in the order
/// of `entries`.
pub fn probe_all(
    agent: &ureq::Agent,
    entries: &[KeyEntry],
    probe: &Probe,
    parallelism: usize,
    now: u64,
    policy: &Policy,
) -> Vec<ProbeResult> {
    let next = AtomicUsize::new(0);
    let workers = parallelism.clamp(1, entries.len().max(1));
    let mut slots: Vec<Option<ProbeResult>> = vec![None; entries.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(entry) = entries.get(i) else { break done };
                        done.push((i, self::probe(agent, entry, probe, now, policy)));
                    }
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => done.into_iter().for_each(|(i, result)| slots[i] = Some(result)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots.into_iter().map(|slot| slot.unwrap_or_else(|| not_probed("not probed"))).collect()
}

/// Applies a probe result to a key's state: a good key is healthy again whatever held it
/// back; a failure counts as one (with the note as its error text; `probed_model` is the
/// model a [`Failure::ModelLocked`] cools down, i.e. the probe's model for `generate`);
/// an unknown outcome changes nothing. Usage fractions read replace the ones known.
pub fn apply(
    state: &mut KeyState,
    result: &ProbeResult,
    probed_model: Option<&str>,
    now: u64,
    policy: &Policy,
) {
    if let Some(usage) = &result.usage {
        state.usage_permille = usage.highest_permille();
    }
    match &result.outcome {
        Outcome::Good => state.record_probe_ok(now, result.proves_quota),
        Outcome::Failed(failure) => state.record_failure(failure, probed_model, &result.note, now, policy),
        Outcome::Unknown => {}
    }
}

/// What every probe needs.
struct Ctx<'a> {
    agent: &'a ureq::Agent,
    entry: &'a KeyEntry,
    now: u64,
    policy: &'a Policy,
    /// The upstream is Ollama Cloud: its `/api/usage` must answer in its shape.
    cloud: bool,
}

/// An upstream answer, read down to what the probes judge.
enum Answer {
    /// A 2xx status, with the start of the body (at most [`MAX_DRAIN`] bytes).
    Ok { status: u16, body: Vec<u8> },
    /// Another status, with the upstream's message and `Retry-After`.
    Status { status: u16, message: String, retry_after: Option<u64> },
    /// No HTTP answer at all.
    Transport(UpstreamError),
}

impl Ctx<'_> {
    fn call(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Answer {
        let body = body.map(serde_json::Value::to_string);
        match upstream::send(
            self.agent,
            self.entry,
            method,
            path,
            body.as_deref().map(|b| (b.as_bytes(), "application/json")),
            None,
        ) {
            Ok(response) => {
                // Reading the body also lets the connection be reused; a read that fails
                // leaves what came before it, which only `usage` looks at.
                let mut body = Vec::new();
                let _ = response.body.take(MAX_DRAIN).read_to_end(&mut body);
                Answer::Ok { status: response.status, body }
            }
            Err(UpstreamError::Status { status, body, retry_after }) => {
                Answer::Status { status, message: upstream_message(&body), retry_after }
            }
            Err(err) => Answer::Transport(err),
        }
    }

    fn classify(&self, status: u16, message: &str, retry_after: Option<u64>) -> Outcome {
        match classify(Some(status), message, retry_after, self.now, self.policy.cooldown_secs) {
            Failure::Request | Failure::Refused => Outcome::Unknown,
            // Every slot of the key was taken: it authenticates and has quota, so it works
            // (a cron `check` must not report a pool dead because its key was busy).
            Failure::Busy => Outcome::Good,
            failure => Outcome::Failed(failure),
        }
    }

    /// A keyless upstream (a self-hosted Ollama): is it up?
    fn version(&self) -> (Outcome, String) {
        const PATH: &str = "/api/version";
        match self.call("GET", PATH, None) {
            Answer::Ok { status, .. } => (Outcome::Good, format!("{status} via {PATH}")),
            Answer::Status { status, message, retry_after } => {
                (self.classify(status, &message, retry_after), status_note(status, PATH, &message))
            }
            Answer::Transport(err) => (Outcome::Failed(Failure::Trouble), transport_note(PATH, &err)),
        }
    }

    /// `GET /api/usage`: 200 is good, unless the plan's usage it reports has a window used
    /// up; 401 invalid; anything else falls back to `show`, except a failed connection,
    /// which `show` would only repeat.
    fn usage(&self, model: &str) -> Found {
        const PATH: &str = "/api/usage";
        let first = match self.call("GET", PATH, None) {
            Answer::Ok { status, body } => return self.read_usage(status, &body),
            Answer::Status { status: 401, message, .. } => {
                return (Outcome::Failed(Failure::Invalid), status_note(401, PATH, &message)).into()
            }
            Answer::Transport(err @ UpstreamError::Connect(_)) => {
                return (Outcome::Failed(Failure::Trouble), transport_note(PATH, &err)).into()
            }
            Answer::Status { status, .. } => format!("{PATH} answered {status}"),
            Answer::Transport(err) => transport_note(PATH, &err),
        };
        let (outcome, note) = self.show(model);
        // Ollama Cloud has the endpoint: without it, the fractions are unknown.
        let warning = self.cloud.then(|| format!("{first}; usage fractions unknown"));
        let note = match &warning {
            Some(warning) => format!("{note} (warning: {warning})"),
            None => format!("{note} ({first})"),
        };
        Found { outcome, note, usage: None, warning }
    }

    /// A 2xx answer of `/api/usage`: the key works, and its plan's usage says whether it has
    /// quota left. A body that is not the usage shape is a warning from Ollama Cloud and
    /// nothing from another upstream.
    fn read_usage(&self, status: u16, body: &[u8]) -> Found {
        let ok = format!("{status} via /api/usage");
        match quota::read(body, self.cloud) {
            Reading::NotUsage => (Outcome::Good, ok).into(),
            Reading::Unreadable(why) => {
                let warning = format!("{why}; usage fractions unknown");
                let note = format!("{ok} (warning: {warning})");
                Found { outcome: Outcome::Good, note, usage: None, warning: Some(warning) }
            }
            // The fractions themselves go with the result (`check` shows them in a column).
            Reading::Usage(usage) => {
                let (outcome, note) = match usage.exhausted_until(self.now) {
                    Some(until) => (
                        Outcome::Failed(Failure::Exhausted { until }),
                        format!("{ok}: {} used up", usage.used_up()),
                    ),
                    None => (Outcome::Good, ok),
                };
                Found { outcome, note, usage: Some(usage), warning: None }
            }
        }
    }

    /// `POST /api/show`: any answer but 401 that needed a key to give proves the key.
    fn show(&self, model: &str) -> (Outcome, String) {
        const PATH: &str = "/api/show";
        match self.call("POST", PATH, Some(&serde_json::json!({ "model": model }))) {
            Answer::Ok { status, .. } => (Outcome::Good, format!("{status} via {PATH}")),
            Answer::Status { status: 401, message, .. } => {
                (Outcome::Failed(Failure::Invalid), status_note(401, PATH, &message))
            }
            Answer::Status { status: 404, message, .. } => {
                let note = status_note(404, PATH, &message);
                (Outcome::Good, format!("{note}; the key authenticated, check [health] model"))
            }
            Answer::Status { status, message, retry_after } => {
                match self.classify(status, &message, retry_after) {
                    Outcome::Failed(Failure::ModelLocked) => {
                        let note = status_note(status, PATH, &message);
                        (Outcome::Good, format!("{note}; the key works for models its plan includes"))
                    }
                    outcome => (outcome, status_note(status, PATH, &message)),
                }
            }
            Answer::Transport(err) => (Outcome::Failed(Failure::Trouble), transport_note(PATH, &err)),
        }
    }

    /// `POST /api/generate` for one token: the only probe that proves the model runs.
    fn generate(&self, model: &str) -> (Outcome, String) {
        const PATH: &str = "/api/generate";
        let body = serde_json::json!({
            "model": model,
            "prompt": "hi",
            "stream": false,
            "options": { "num_predict": 1 },
        });
        match self.call("POST", PATH, Some(&body)) {
            Answer::Ok { status, .. } => (Outcome::Good, format!("{status} via {PATH}")),
            Answer::Status { status, message, retry_after } => {
                (self.classify(status, &message, retry_after), status_note(status, PATH, &message))
            }
            Answer::Transport(err) => (Outcome::Failed(Failure::Trouble), transport_note(PATH, &err)),
        }
    }
}

fn status_note(status: u16, path: &str, message: &str) -> String {
    format!("{status} via {path}: {}", short(message))
}

fn transport_note(path: &str, err: &UpstreamError) -> String {
    format!("{path}: {}", short(&err.to_string()))
}

/// One line of at most [`MAX_NOTE_TEXT`] characters.
fn short(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX_NOTE_TEXT {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_NOTE_TEXT - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystate::{Health, SESSION_WINDOW_SECS};
    use crate::secret::Secret;
    use std::sync::{Arc, Mutex};
    use std::thread;

    const NOW: u64 = 1_700_000_000;
    const KEY: &str = "0123456789abcdef.TESTKEY";

    /// One request the fake saw.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        key: Option<String>,
        body: String,
    }

    type Answerer = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

    /// `(path, status, body)` answers of a fake; other paths get 500.
    type Routes = &'static [(&'static str, u16, &'static str)];

    /// A fake upstream on `127.0.0.1:0`, one thread per request, answering by a closure.
    struct Fake {
        url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        server: Arc<tiny_http::Server>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Fake {
        fn new(answer: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> Fake {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake"));
            let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let answer: Arc<Answerer> = Arc::new(answer);
            let (server2, seen2) = (Arc::clone(&server), Arc::clone(&seen));
            let thread = thread::spawn(move || {
                for mut request in server2.incoming_requests() {
                    let (seen, answer) = (Arc::clone(&seen2), Arc::clone(&answer));
                    thread::spawn(move || {
                        let mut body = String::new();
                        let _ = request.as_reader().read_to_string(&mut body);
                        let auth = request.headers().iter().find(|h| h.field.equiv("authorization"));
                        let key = auth.map(|h| h.value.as_str().trim_start_matches("Bearer ").to_string());
                        let call = Seen {
                            method: request.method().as_str().to_string(),
                            path: request.url().to_string(),
                            key,
                            body,
                        };
                        seen.lock().expect("seen lock").push(call.clone());
                        let (status, text) = answer(&call);
                        let response = tiny_http::Response::from_string(text).with_status_code(status);
                        let _ = request.respond(response);
                    });
                }
            });
            Fake { url, seen, server, thread: Some(thread) }
        }

        /// Answers from a table of routes.
        fn routes(routes: Routes) -> Fake {
            Fake::new(move |seen| {
                let route = routes.iter().find(|(path, ..)| *path == seen.path);
                route.map_or((500, "no route".into()), |(_, status, body)| (*status, body.to_string()))
            })
        }

        fn paths(&self) -> Vec<String> {
            self.seen.lock().expect("seen lock").iter().map(|s| s.path.clone()).collect()
        }

        fn entry(&self, key: Option<&str>) -> KeyEntry {
            KeyEntry {
                pool: "default".into(),
                base_url: self.url.clone(),
                key: key.map(Secret::new),
                line: 1,
                options: Default::default(),
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn agent() -> ureq::Agent {
        upstream::agent(Duration::from_secs(2), Duration::from_secs(2), 4)
    }

    fn probe_of(kind: ProbeKind) -> Probe {
        Probe { kind, model: "gpt-oss:120b".into() }
    }

    #[test]
    fn answers_become_outcomes() {
        use ProbeKind::*;
        let session = Failure::Exhausted { until: NOW + SESSION_WINDOW_SECS };
        #[rustfmt::skip]
        let cases: [(ProbeKind, Routes, Outcome, &[&str], &str); 11] = [
            (Usage, &[("/api/usage", 200, "{}")], Outcome::Good, &["/api/usage"], "200 via /api/usage"),
            (Usage, &[("/api/usage", 401, r#"{"error":"unauthorized"}"#)],
                Outcome::Failed(Failure::Invalid), &["/api/usage"], "401 via /api/usage: unauthorized"),
            (Usage, &[("/api/usage", 404, "404 page not found"), ("/api/show", 200, "{}")],
                Outcome::Good, &["/api/usage", "/api/show"], "200 via /api/show (/api/usage answered 404)"),
            (Usage, &[("/api/usage", 404, ""), ("/api/show", 401, r#"{"error":"unauthorized"}"#)],
                Outcome::Failed(Failure::Invalid), &["/api/usage", "/api/show"], "401 via /api/show"),
            (Show, &[("/api/show", 200, "{}")], Outcome::Good, &["/api/show"], "200 via /api/show"),
            (Show, &[("/api/show", 429, r#"{"error":"you have reached your session usage limit"}"#)],
                Outcome::Failed(session.clone()), &["/api/show"], "429 via /api/show: you have reached"),
            (Show, &[("/api/show", 404, r#"{"error":"model 'gpt-oss:120b' not found"}"#)],
                Outcome::Good, &["/api/show"], "the key authenticated"),
            (Show, &[("/api/show", 403, r#"{"error":"this model requires a subscription"}"#)],
                Outcome::Good, &["/api/show"], "works for models its plan includes"),
            (Generate, &[("/api/generate", 200, r#"{"response":"Hi","done":true}"#)],
                Outcome::Good, &["/api/generate"], "200 via /api/generate"),
            (Generate, &[("/api/generate", 503, r#"{"error":"server overloaded"}"#)],
                Outcome::Failed(Failure::Transient { retry_after: None }), &["/api/generate"], "503 via"),
            // A key whose slots were all taken works: check must not call its pool dead.
            (Generate, &[("/api/generate", 429, r#"{"error":"timed out waiting for a concurrent request slot"}"#)],
                Outcome::Good, &["/api/generate"], "429 via /api/generate: timed out"),
        ];
        for (kind, routes, expected, paths, note) in cases {
            let fake = Fake::routes(routes);
            let result = probe(&agent(), &fake.entry(Some(KEY)), &probe_of(kind), NOW, &Policy::default());
            assert_eq!(result.outcome, expected, "{kind:?} {routes:?}: {}", result.note);
            assert_eq!(fake.paths(), paths, "{kind:?} {routes:?}");
            assert!(result.note.contains(note), "{kind:?} {routes:?}: note {:?}", result.note);
            for seen in fake.seen.lock().expect("seen lock").iter() {
                assert_eq!(seen.key.as_deref(), Some(KEY), "every probe sends the key");
            }
        }
    }

    #[test]
    fn usage_answers_in_their_shape_give_fractions_and_may_spend_the_key() {
        let december = crate::keystate::first_of_next_month_utc(NOW);
        #[rustfmt::skip]
        let cases: [(&'static str, Outcome, Option<u32>, &str); 4] = [
            (r#"{"limits":{"session":{"usage":0.42},"weekly":{"usage":0.07}},"activity":{}}"#, Outcome::Good,
                Some(420), "200 via /api/usage"),
            (r#"{"limits":{"monthly":{"usage":1.0}}}"#, Outcome::Failed(Failure::Exhausted { until: december }),
                Some(1000), "200 via /api/usage: monthly used up"),
            (r#"{"limits":{"session":{"usage":null}}}"#, Outcome::Good, None, "200 via /api/usage"),
            // Not the shape, from an upstream that is not Ollama Cloud: nothing to read.
            (r#"{"usage":{}}"#, Outcome::Good, None, "200 via /api/usage"),
        ];
        for (body, outcome, permille, note) in cases {
            let fake = Fake::new(move |_| (200, body.to_string()));
            let result = probe(&agent(), &fake.entry(Some(KEY)), &Probe::default(), NOW, &Policy::default());
            assert_eq!((&result.outcome, result.note.as_str()), (&outcome, note), "{body}");
            assert_eq!(result.usage.as_ref().and_then(PlanUsage::highest_permille), permille, "{body}");
            assert_eq!(result.usage.is_some(), body.contains("limits"), "{body}");
            assert_eq!((result.warning, result.proves_quota), (None, false), "{body}");
            assert_eq!(fake.paths(), ["/api/usage"], "no fallback: {body}");
        }
    }

    /// `usage` run as for an Ollama Cloud upstream (the fake is not on ollama.com).
    fn cloud_usage(fake: &Fake) -> Found {
        let (agent, entry, policy) = (agent(), fake.entry(Some(KEY)), Policy::default());
        Ctx { agent: &agent, entry: &entry, now: NOW, policy: &policy, cloud: true }.usage("gpt-oss:120b")
    }

    #[test]
    fn ollama_cloud_answers_out_of_shape_are_warnings_and_the_key_stays_good() {
        #[rustfmt::skip]
        let cases: [(Routes, &[&str], &str); 5] = [
            (&[("/api/usage", 200, "<html>Sign in</html>")], &["/api/usage"], "not a JSON object"),
            (&[("/api/usage", 200, r#"{"usage":{}}"#)], &["/api/usage"], "no \"limits\""),
            (&[("/api/usage", 200, r#"{"limits":{"monthly":{"usage":"lots"}}}"#)], &["/api/usage"],
                "unexpected \"limits\""),
            (&[("/api/usage", 200, r#"{"limits":{"daily":{"usage":1}}}"#)], &["/api/usage"], "no session, weekly"),
            (&[("/api/usage", 404, "404 page not found"), ("/api/show", 200, "{}")], &["/api/usage", "/api/show"],
                "/api/usage answered 404"),
        ];
        for (routes, paths, why) in cases {
            let fake = Fake::routes(routes);
            let found = cloud_usage(&fake);
            assert_eq!(found.outcome, Outcome::Good, "{routes:?}: {}", found.note);
            assert_eq!(fake.paths(), paths, "{routes:?}");
            let warning =
                found.warning.unwrap_or_else(|| panic!("{routes:?}: no warning in {:?}", found.note));
            assert!(
                warning.contains(why) && warning.contains("usage fractions unknown"),
                "{routes:?}: {warning}"
            );
            assert!(found.note.contains(&format!("warning: {warning}")), "{routes:?}: {}", found.note);
            assert_eq!(found.usage, None);
        }
        // In shape: read as from any upstream.
        let fake = Fake::routes(&[("/api/usage", 200, r#"{"limits":{"monthly":{"usage":0.91}}}"#)]);
        let found = cloud_usage(&fake);
        assert_eq!(
            (found.outcome, found.note.as_str(), found.warning),
            (Outcome::Good, "200 via /api/usage", None)
        );
        assert_eq!(found.usage.and_then(|usage| usage.monthly.used), Some(0.91));
    }

    #[test]
    fn the_fake_tells_keys_apart_by_their_authorization() {
        let fake = Fake::new(|seen| match seen.key.as_deref() {
            Some(KEY) => (200, "{}".into()),
            _ => (401, r#"{"error":"unauthorized"}"#.into()),
        });
        let good = probe(&agent(), &fake.entry(Some(KEY)), &Probe::default(), NOW, &Policy::default());
        let bad =
            probe(&agent(), &fake.entry(Some("wrong-key-0000")), &Probe::default(), NOW, &Policy::default());
        assert_eq!((good.outcome, bad.outcome), (Outcome::Good, Outcome::Failed(Failure::Invalid)));
    }

    #[test]
    fn show_and_generate_send_the_model() {
        let fake = Fake::new(|_| (200, "{}".into()));
        for kind in [ProbeKind::Show, ProbeKind::Generate] {
            probe(&agent(), &fake.entry(Some(KEY)), &probe_of(kind), NOW, &Policy::default());
        }
        let seen = fake.seen.lock().expect("seen lock").clone();
        let bodies: Vec<serde_json::Value> =
            seen.iter().map(|s| serde_json::from_str(&s.body).expect("JSON body")).collect();
        assert_eq!(
            (seen[0].method.as_str(), &bodies[0]),
            ("POST", &serde_json::json!({"model": "gpt-oss:120b"}))
        );
        assert_eq!(seen[1].method, "POST");
        assert_eq!(
            bodies[1],
            serde_json::json!({"model": "gpt-oss:120b", "prompt": "hi", "stream": false, "options": {"num_predict": 1}})
        );
    }

    #[test]
    fn keyless_upstreams_are_asked_for_their_version() {
        let fake = Fake::routes(&[("/api/version", 200, r#"{"version":"0.12.0"}"#)]);
        for kind in [ProbeKind::Usage, ProbeKind::Show, ProbeKind::Generate] {
            let result = probe(&agent(), &fake.entry(None), &probe_of(kind), NOW, &Policy::default());
            assert_eq!(result.outcome, Outcome::Good, "{kind:?}");
            assert_eq!(result.note, "200 via /api/version");
        }
        assert_eq!(fake.paths(), ["/api/version"; 3]);
        assert!(
            fake.seen.lock().expect("seen lock").iter().all(|s| s.key.is_none()),
            "no Authorization sent"
        );
        let broken = Fake::routes(&[("/api/version", 500, "runner crashed")]);
        let result = probe(&agent(), &broken.entry(None), &Probe::default(), NOW, &Policy::default());
        assert_eq!(result.outcome, Outcome::Failed(Failure::Trouble));
    }

    #[test]
    fn a_dead_port_is_upstream_trouble_without_a_fallback() {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}");
        for key in [Some(Secret::new(KEY)), None] {
            let entry = KeyEntry {
                pool: "default".into(),
                base_url: url.clone(),
                key,
                line: 1,
                options: Default::default(),
            };
            let result = probe(&agent(), &entry, &Probe::default(), NOW, &Policy::default());
            assert_eq!(result.outcome, Outcome::Failed(Failure::Trouble), "{}", result.note);
            assert!(result.note.contains("unreachable"), "{}", result.note);
        }
    }

    #[test]
    fn notes_never_hold_the_key() {
        let fake = Fake::new(|seen| {
            let key = seen.key.clone().unwrap_or_default();
            (401, format!(r#"{{"error":"key {key} is not valid"}}"#))
        });
        let result = probe(&agent(), &fake.entry(Some(KEY)), &Probe::default(), NOW, &Policy::default());
        assert_eq!(result.outcome, Outcome::Failed(Failure::Invalid));
        assert!(!result.note.contains("TESTKEY") && result.note.contains("not valid"), "{}", result.note);
    }

    #[test]
    fn probe_all_keeps_order_and_bounds_parallelism() {
        let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (in_flight2, most2) = (Arc::clone(&in_flight), Arc::clone(&most));
        let fake = Fake::new(move |seen| {
            let now = in_flight2.fetch_add(1, Ordering::SeqCst) + 1;
            most2.fetch_max(now, Ordering::SeqCst);
            // Earlier keys answer later, so finishing order differs from key order.
            let index: u64 =
                seen.key.as_deref().and_then(|k| k.rsplit('-').next()?.parse().ok()).unwrap_or(0);
            thread::sleep(Duration::from_millis(60 - 10 * index));
            in_flight2.fetch_sub(1, Ordering::SeqCst);
            if index == 3 {
                (401, r#"{"error":"unauthorized"}"#.into())
            } else {
                (200, "{}".into())
            }
        });
        let entries: Vec<KeyEntry> = (0..6).map(|i| fake.entry(Some(&format!("key-abcdefgh-{i}")))).collect();
        let results = probe_all(&agent(), &entries, &Probe::default(), 2, NOW, &Policy::default());
        let outcomes: Vec<Outcome> = results.into_iter().map(|r| r.outcome).collect();
        let invalid = Outcome::Failed(Failure::Invalid);
        let good = Outcome::Good;
        assert_eq!(outcomes, [good.clone(), good.clone(), good.clone(), invalid, good.clone(), good]);
        assert_eq!(most.load(Ordering::SeqCst), 2, "two probes at a time, never more");
        assert!(probe_all(&agent(), &[], &Probe::default(), 0, NOW, &Policy::default()).is_empty());
    }

    #[test]
    fn apply_maps_outcomes_onto_the_key_state() {
        let policy = Policy::default();
        let result = |outcome| ProbeResult { outcome, note: "401 via /api/usage".into(), ..not_probed("") };
        let mut state = KeyState::default();
        apply(&mut state, &result(Outcome::Failed(Failure::Invalid)), None, NOW, &policy);
        assert_eq!((state.state, state.last_error.as_deref()), (Health::Invalid, Some("401 via /api/usage")));
        apply(&mut state, &result(Outcome::Unknown), None, NOW + 1, &policy);
        assert_eq!(state.state, Health::Invalid, "unknown changes nothing");
        apply(&mut state, &result(Outcome::Good), None, NOW + 2, &policy);
        assert_eq!((state.state, state.until, state.changed_at), (Health::Healthy, None, NOW + 2));
        let until = NOW + SESSION_WINDOW_SECS;
        apply(&mut state, &result(Outcome::Failed(Failure::Exhausted { until })), None, NOW, &policy);
        assert_eq!((state.state, state.until), (Health::Exhausted, Some(until)));
        apply(&mut state, &result(Outcome::Good), None, NOW, &policy);
        assert!(state.available(None, NOW).is_err(), "a free probe (usage, show) does not end a spent quota");
        let generated = ProbeResult { proves_quota: true, ..result(Outcome::Good) };
        apply(&mut state, &generated, None, NOW, &policy);
        assert!(state.available(None, NOW).is_ok(), "a generated token ends it early");
        apply(&mut state, &result(Outcome::Failed(Failure::ModelLocked)), Some("m"), NOW, &policy);
        assert!(state.available(Some("m"), NOW).is_err() && state.available(Some("n"), NOW).is_ok());
    }

    #[test]
    fn apply_keeps_the_highest_usage_fraction_read_last() {
        let policy = Policy::default();
        let read = |body: &str| match quota::read(body.as_bytes(), true) {
            Reading::Usage(usage) => Some(usage),
            other => panic!("{other:?}"),
        };
        let with = |usage| ProbeResult { outcome: Outcome::Good, usage, ..not_probed("") };
        let mut state = KeyState::default();
        apply(
            &mut state,
            &with(read(r#"{"limits":{"session":{"usage":0.42},"weekly":{"usage":0.9}}}"#)),
            None,
            NOW,
            &policy,
        );
        assert_eq!(state.usage_permille, Some(900));
        apply(&mut state, &with(None), None, NOW, &policy);
        assert_eq!(state.usage_permille, Some(900), "a probe that read no usage leaves it");
        apply(&mut state, &with(read(r#"{"limits":{"monthly":{"usage":null}}}"#)), None, NOW, &policy);
        assert_eq!(state.usage_permille, None, "a plan without limits has none");
        let spent = ProbeResult {
            outcome: Outcome::Failed(Failure::Exhausted { until: NOW + 60 }),
            ..with(read(r#"{"limits":{"monthly":{"usage":1.2}}}"#))
        };
        apply(&mut state, &spent, None, NOW, &policy);
        assert_eq!((state.usage_permille, state.state), (Some(1200), Health::Exhausted));
    }
}
