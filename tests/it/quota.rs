//! Key pools at their limits: even spreading over the keys a request can use, failover
//! bounded by a deadline instead of a fixed count, per-key concurrency slots (waiting for
//! one, and the 429 when the wait runs out), the upstream's own "busy" answer, fallback
//! pools, the 403 of a model no key's plan has, `least-busy` and key weights.
//!
//! The upstream here is [`Upstream`], a scripted fake of this module's own: it tells keys
//! apart by the `Authorization` header, counts the requests each key has in flight and the
//! most it ever had at once, and holds answers open as long as a test needs, so what a
//! test asserts is what the upstream saw. A request stops counting as in flight just
//! before its last line goes out, so the gateway cannot have seen an answer end while the
//! upstream still counts it: a slow machine can only make the counts smaller, never make a
//! well-behaved gateway look as if it overloaded a key.

use crate::fake::{chat_answer, content_line, dead_url, done_line, Gate, OpenOnDrop};
use crate::util::named::assert_anthropic_error;
use crate::util::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A third upstream key.
const KEY_C: &str = "kc-5555555555-secret-CCCC";
/// What Ollama Cloud answers (429) when a key already serves as many requests as its plan
/// allows at once.
const BUSY: &str = "timed out waiting for a concurrent request slot";
/// What Ollama Cloud answers (429) when a key's weekly quota is spent.
const WEEKLY_LIMIT: &str = "you (x) have reached your weekly usage limit, please wait or upgrade to continue";
/// What Ollama Cloud answers (403) for a model the key's plan lacks.
const NO_SUBSCRIPTION: &str = "this model requires a subscription, upgrade for access";
/// How long "a few seconds later" may take on a slow shared machine.
const FEW_SECONDS: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// A scripted upstream that counts requests in flight per key
// ---------------------------------------------------------------------------------------

/// One request the upstream received.
#[derive(Debug, Clone)]
struct Call {
    /// The key of its `Authorization: Bearer` header (`-` when it had none).
    key: String,
    /// The `model` of its body.
    model: String,
    /// Whether it asked for a stream (Ollama streams unless `"stream": false`).
    stream: bool,
    /// Requests with this key in flight when it arrived, itself included.
    in_flight: usize,
    /// The status it was answered with.
    status: u16,
}

/// What the upstream does with one request.
enum Act {
    /// Waits `after`, then answers `status` with Ollama's `{"error": message}`.
    Fail { status: u16, message: String, after: Duration },
    /// Answers like Ollama: `lines` content lines `part0 `, `part1 `, … `pause` apart and
    /// a done line when streaming (ending early when the reader goes away), else after the
    /// same time one answer with their text.
    Serve { lines: usize, pause: Duration },
    /// A stream whose first line (`held `) goes out at once and whose done line only once
    /// the gate opens.
    Hold(Arc<Gate>),
}

impl Act {
    /// An error answer, at once.
    fn fail(status: u16, message: &str) -> Act {
        Act::Fail { status, message: message.to_string(), after: Duration::ZERO }
    }

    /// The 429 of a key with no free concurrent request slot.
    fn busy() -> Act {
        Act::fail(429, BUSY)
    }

    /// A two-line answer, at once.
    fn quick() -> Act {
        Act::Serve { lines: 2, pause: Duration::ZERO }
    }

    /// A three-line answer that takes about 200 ms.
    fn slow() -> Act {
        Act::Serve { lines: 3, pause: Duration::from_millis(100) }
    }

    fn status(&self) -> u16 {
        match self {
            Act::Fail { status, .. } => *status,
            Act::Serve { .. } | Act::Hold(_) => 200,
        }
    }
}

/// The text an [`Act::Serve`] of `lines` lines answers.
fn text(lines: usize) -> String {
    (0..lines).map(|i| format!("part{i} ")).collect()
}

/// The text of an [`Act::Hold`] stream.
const HELD_TEXT: &str = "held ";

type Script = dyn Fn(&Call) -> Act + Send + Sync;

/// What the upstream has seen, shared with its request threads.
#[derive(Default)]
struct Seen {
    calls: Mutex<Vec<Call>>,
    in_flight: Mutex<HashMap<String, usize>>,
    peak: Mutex<HashMap<String, usize>>,
    /// Streams that ended early because the reader went away.
    cut: AtomicUsize,
}

/// A running scripted upstream on `127.0.0.1:0`; each request is answered on its own
/// thread by what the script returns for it.
struct Upstream {
    /// Its base URL.
    url: String,
    server: Arc<tiny_http::Server>,
    seen: Arc<Seen>,
}

impl Upstream {
    fn start(script: impl Fn(&Call) -> Act + Send + Sync + 'static) -> Upstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the scripted upstream"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let seen = Arc::new(Seen::default());
        let script: Arc<Script> = Arc::new(script);
        let (accept, shared) = (Arc::clone(&server), Arc::clone(&seen));
        thread::spawn(move || {
            for request in accept.incoming_requests() {
                let (script, seen) = (Arc::clone(&script), Arc::clone(&shared));
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || answer(request, &*script, &seen))
                    .expect("spawn an upstream request thread");
            }
        });
        Upstream { url: format!("http://127.0.0.1:{port}"), server, seen }
    }

    /// Every request so far, in arrival order.
    fn calls(&self) -> Vec<Call> {
        self.seen.calls.lock().expect("the calls lock").clone()
    }

    /// How many requests arrived.
    fn count(&self) -> usize {
        self.seen.calls.lock().expect("the calls lock").len()
    }

    /// How many requests with `key` were answered `status`.
    fn answered(&self, key: &str, status: u16) -> usize {
        self.calls().iter().filter(|c| c.key == key && c.status == status).count()
    }

    /// How many requests with `key` were served (200).
    fn served_by(&self, key: &str) -> usize {
        self.answered(key, 200)
    }

    /// How many requests with `key` arrived.
    fn sent_with(&self, key: &str) -> usize {
        self.calls().iter().filter(|c| c.key == key).count()
    }

    /// The most requests each of `keys` had in flight at once.
    fn peaks(&self, keys: &[&str]) -> Vec<usize> {
        let peak = self.seen.peak.lock().expect("the peak lock");
        keys.iter().map(|key| peak.get(*key).copied().unwrap_or(0)).collect()
    }

    /// Streams cut short because the gateway closed the connection.
    fn cut(&self) -> usize {
        self.seen.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// One request counted in flight for its key until [`InFlight::end`] or drop.
struct InFlight<'a> {
    seen: &'a Seen,
    key: String,
    ended: bool,
}

impl InFlight<'_> {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            let mut in_flight = self.seen.in_flight.lock().expect("the in-flight lock");
            *in_flight.get_mut(&self.key).expect("counted in") -= 1;
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

fn answer(mut request: tiny_http::Request, script: &Script, seen: &Seen) {
    let mut raw = String::new();
    let _ = request.as_reader().read_to_string(&mut raw);
    let body: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let key = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("authorization"))
        .map_or("-".to_string(), |h| h.value.as_str().trim_start_matches("Bearer ").to_string());
    let in_flight = {
        let mut counts = seen.in_flight.lock().expect("the in-flight lock");
        let count = counts.entry(key.clone()).or_insert(0);
        *count += 1;
        *count
    };
    {
        let mut peak = seen.peak.lock().expect("the peak lock");
        let most = peak.entry(key.clone()).or_insert(0);
        *most = (*most).max(in_flight);
    }
    let mut flight = InFlight { seen, key: key.clone(), ended: false };
    let mut call = Call {
        key,
        model: body.get("model").and_then(Value::as_str).unwrap_or("").to_string(),
        stream: body.get("stream") != Some(&Value::Bool(false)),
        in_flight,
        status: 0,
    };
    let act = script(&call);
    call.status = act.status();
    let streams = call.stream;
    seen.calls.lock().expect("the calls lock").push(call);

    match act {
        Act::Fail { status, message, after } => {
            thread::sleep(after);
            flight.end();
            respond_json(request, status, &json!({ "error": message }));
        }
        Act::Serve { lines, pause } if !streams => {
            thread::sleep(pause * lines.saturating_sub(1) as u32);
            flight.end();
            respond_json(request, 200, &chat_answer(&text(lines)));
        }
        Act::Serve { lines, pause } => {
            let mut writer = request.into_writer();
            let mut sent = write_head(&mut writer);
            for i in 0..lines {
                if i > 0 {
                    thread::sleep(pause);
                }
                sent = sent.and_then(|_| write_line(&mut writer, &content_line(&format!("part{i} "))));
                if sent.is_err() {
                    break;
                }
            }
            flight.end();
            if sent.and_then(|_| write_end(&mut writer)).is_err() {
                seen.cut.fetch_add(1, Ordering::SeqCst);
            }
        }
        Act::Hold(gate) => {
            let mut writer = request.into_writer();
            let sent =
                write_head(&mut writer).and_then(|_| write_line(&mut writer, &content_line(HELD_TEXT)));
            if sent.is_ok() {
                gate.wait();
            }
            flight.end();
            if sent.and_then(|_| write_end(&mut writer)).is_err() {
                seen.cut.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn respond_json(request: tiny_http::Request, status: u16, body: &Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    let response =
        tiny_http::Response::from_string(body.to_string()).with_status_code(status).with_header(header);
    let _ = request.respond(response);
}

type Writer = Box<dyn Write + Send>;

fn write_head(writer: &mut Writer) -> std::io::Result<()> {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    writer.write_all(head.as_bytes())?;
    writer.flush()
}

fn write_line(writer: &mut Writer, line: &Value) -> std::io::Result<()> {
    let data = format!("{line}\n");
    write!(writer, "{:x}\r\n", data.len())?;
    writer.write_all(data.as_bytes())?;
    writer.write_all(b"\r\n")?;
    writer.flush()
}

/// The done line and the end of the chunked body.
fn write_end(writer: &mut Writer) -> std::io::Result<()> {
    write_line(writer, &done_line("stop", 3, 2))?;
    writer.write_all(b"0\r\n\r\n")?;
    writer.flush()
}

// ---------------------------------------------------------------------------------------
// Clients and helpers
// ---------------------------------------------------------------------------------------

/// `config.toml` text: `extra` (top-level keys and tables), then [`alice`]'s token.
fn config(extra: &str) -> String {
    format!("{extra}\n{}", alice())
}

/// keys.txt with `keys` on `url`, in that order.
fn keys_on(url: &str, keys: &[&str]) -> String {
    keys.iter().map(|key| format!("{url}|{key}\n")).collect()
}

/// Runs `total` requests, `concurrency` at a time, from threads that start together;
/// `request(i)` makes the `i`-th. What went wrong, one line per failed request.
fn run_concurrently(
    concurrency: usize,
    total: usize,
    request: impl Fn(usize) -> Result<(), String> + Sync,
) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let start = Barrier::new(concurrency);
    thread::scope(|scope| {
        for _ in 0..concurrency {
            scope.spawn(|| {
                start.wait();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    if let Err(what) = request(i) {
                        failures.lock().expect("the failures lock").push(format!("request {i}: {what}"));
                    }
                }
            });
        }
    });
    failures.into_inner().expect("the failures lock")
}

/// A non-streamed chat for `model` as [`TOKEN`]: the answer's text, or what went wrong.
fn chat(gateway: &Gateway, model: &str) -> Result<String, String> {
    let reply = gateway.chat(&chat_body(model, false));
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, reply.text));
    }
    reply.body["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no message content: {}", reply.text))
}

/// A streamed chat for `model` as [`TOKEN`], read to its end: the text it carried, or what
/// went wrong (a status other than 200, an error event, no `[DONE]` at the end).
fn stream(gateway: &Gateway, model: &str) -> Result<String, String> {
    let mut conn = SseConn::open(&gateway.addr, "/v1/chat/completions", Some(TOKEN), &chat_body(model, true));
    if conn.status != 200 {
        let status = conn.status;
        return Err(format!("status {status}: {}", conn.read_body()));
    }
    stream_text(conn.events())
}

/// The text of a chat stream's events, or what is wrong with them.
fn stream_text(events: Vec<(Instant, String)>) -> Result<String, String> {
    let events = decode_events(&events);
    if let Some(Event::Error(error)) = events.iter().find(|e| matches!(e, Event::Error(_))) {
        return Err(format!("an error event: {error:?}"));
    }
    if !matches!(events.last(), Some(Event::Done)) {
        return Err(format!("the stream does not end with [DONE]: {events:?}"));
    }
    Ok(events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk(chunk) => chunk.choices.first().and_then(|c| c.delta.content.clone()),
            _ => None,
        })
        .collect())
}

/// `Ok` when `got` is `Ok(expected)`, else what was got instead.
fn expect_text(got: Result<String, String>, expected: &str) -> Result<(), String> {
    match got {
        Ok(text) if text == expected => Ok(()),
        Ok(text) => Err(format!("the text {text:?}, expected {expected:?}")),
        Err(what) => Err(what),
    }
}

/// The value of `name=` among the space-separated fields of a log line (quotes dropped).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .map(|value| value.trim_matches('"'))
}

/// The request log lines of `/v1/chat/completions`, in the order written.
fn chat_log_lines(gateway: &Gateway) -> Vec<String> {
    gateway
        .logs()
        .lines()
        .filter(|l| l.contains("/v1/chat/completions token=") && l.contains(" status="))
        .map(str::to_string)
        .collect()
}

/// Waits until the gateway has logged `count` chat requests (it logs each one just after
/// answering it), and returns those lines.
#[track_caller]
fn wait_for_chat_lines(gateway: &Gateway, count: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = chat_log_lines(gateway);
        if lines.len() >= count {
            return lines;
        }
        if Instant::now() > deadline {
            panic!("{} chat requests logged, expected {count}; logs:\n{}", lines.len(), gateway.logs());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `Retry-After` header as seconds.
#[track_caller]
fn retry_after(reply: &JsonReply) -> u64 {
    let value = reply.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {reply:#?}"));
    value.parse().unwrap_or_else(|_| panic!("Retry-After is not seconds: {value:?}"))
}

/// A stream whose upstream request is in flight: its first event has arrived.
struct HeldStream {
    conn: SseConn,
    first: (Instant, String),
}

impl HeldStream {
    /// Opens a stream as [`TOKEN`] and reads its first event.
    #[track_caller]
    fn open(gateway: &Gateway) -> HeldStream {
        let mut conn = gateway.open_stream(&chat_body("m", true));
        if conn.status != 200 {
            let status = conn.status;
            panic!("a stream that should be held open got status {status}: {}", conn.read_body());
        }
        let first = conn.next_event().expect("a held stream's first event");
        HeldStream { conn, first }
    }

    /// Reads the stream to its end: its whole text, or what is wrong with it.
    fn finish(mut self) -> Result<String, String> {
        let mut events = vec![self.first];
        events.extend(self.conn.events());
        stream_text(events)
    }
}

/// Runs `serve` on the config in `dir` and waits for it to exit, which it should (a config
/// error); panics if it starts serving instead, or has not exited after [`PATIENCE`].
fn serve_refused(dir: &TempDir) -> CliOutput {
    let config = dir.path().join("config.toml");
    let mut child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().expect("a UTF-8 temp path")])
        .env("RUST_LOG", "info")
        .env_remove("OLLAMA_GATEWAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway");
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&stderr);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            sink.lock().expect("the stderr lock").push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the gateway") {
            break status;
        }
        let started = stderr.lock().expect("the stderr lock").contains("listening on");
        if started || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the gateway {} instead of refusing its config; stderr:\n{}",
                if started { "started serving" } else { "neither served nor exited" },
                stderr.lock().expect("the stderr lock")
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    reader.join().expect("the stderr reader");
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let stderr = stderr.lock().expect("the stderr lock").clone();
    CliOutput { code: status.code().unwrap_or(-1), stdout, stderr }
}

// ---------------------------------------------------------------------------------------
// 1. Even spreading over the keys a request can use
// ---------------------------------------------------------------------------------------

const SPENT: &str = "spent-0123456789-secret";
const REVOKED: &str = "revoked-0123456789-secret";
const DEAD: &str = "dead-0123456789-secret";
const GOOD1: &str = "good1-0123456789-secret";
const GOOD2: &str = "good2-0123456789-secret";

/// The pool: a spent key, a revoked one and an unreachable upstream, in a row,
/// before two good keys. Round-robin over all five used to hand the three bad keys' turns
/// to the key after them, so good1 served four requests in five.
#[test]
fn three_bad_keys_in_a_row_cost_no_request_and_the_good_keys_share_the_load_evenly() {
    let upstream = Upstream::start(|call| match call.key.as_str() {
        SPENT => Act::fail(429, WEEKLY_LIMIT),
        REVOKED => Act::fail(401, "unauthorized"),
        _ => Act::quick(),
    });
    let url = &upstream.url;
    let keys =
        format!("{url}|{SPENT}\n{url}|{REVOKED}\n{}|{DEAD}\n{url}|{GOOD1}\n{url}|{GOOD2}\n", dead_url());
    let gateway = Gateway::with_keys(&keys);

    // (a) Cold start: the gateway learns about the bad keys while serving streams.
    let failures = run_concurrently(4, 200, |_| expect_text(stream(&gateway, "m"), &text(2)));
    eqnice!(Vec::<String>::new(), failures, "cold start: every one of 200 streams completes");
    let warm_calls = upstream.count();
    wait_for_chat_lines(&gateway, 200);

    // (b) Warmed up.
    let started = Instant::now();
    let failures = run_concurrently(4, 2000, |_| expect_text(chat(&gateway, "m"), &text(2)));
    let took = started.elapsed();
    eqnice!(Vec::<String>::new(), failures, "warmed up: every one of 2,000 requests succeeds");
    let after = &upstream.calls()[warm_calls..];
    let sent = |key: &str| after.iter().filter(|c| c.key == key).count();
    let (good1, good2) = (sent(GOOD1), sent(GOOD2));
    assert!(
        (950..=1050).contains(&good1) && (950..=1050).contains(&good2),
        "good1 {good1} and good2 {good2} requests, expected 1000 ± 5% each"
    );
    eqnice!((0, 0), (sent(SPENT), sent(REVOKED)), "after the warm-up the spent and revoked keys get nothing");
    // The dead upstream cannot count its requests; the log's attempts say whether any
    // request tried it (or any other bad key) first. It backs off for 30 s, then is tried
    // once more: a slow machine whose phase took longer may see that one attempt.
    let lines = wait_for_chat_lines(&gateway, 2200);
    let retried: Vec<&String> = lines[200..].iter().filter(|l| field(l, "attempts") != Some("1")).collect();
    assert!(
        retried.len() <= (took.as_secs() / 30) as usize,
        "after the warm-up every request takes one attempt; {} did not (phase took {took:?}), e.g.:\n{}",
        retried.len(),
        retried.iter().take(5).map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 2. Per-key concurrency slots
// ---------------------------------------------------------------------------------------

#[test]
fn requests_beyond_the_keys_slots_wait_for_one_and_no_key_ever_serves_more_than_its_limit() {
    // The upstream's plan allows 2 requests per key at once and says "busy" past that.
    let upstream = Upstream::start(|call| if call.in_flight > 2 { Act::busy() } else { Act::slow() });
    let keys = [KEY_A, KEY_B, KEY_C];
    let gateway =
        Gateway::start(&config("[upstream]\nmax_concurrent_per_key = 2\n"), &keys_on(&upstream.url, &keys));
    // 6 clients fill the 3 keys' 6 slots; 12 clients are twice as many as there are slots.
    for (clients, each) in [(6, 4), (12, 3)] {
        let failures =
            run_concurrently(clients, clients * each, |_| expect_text(stream(&gateway, "m"), &text(3)));
        eqnice!(Vec::<String>::new(), failures, "{clients} clients: no client sees an error, they wait");
        let peaks = upstream.peaks(&keys);
        assert!(
            peaks.iter().all(|&p| p <= 2),
            "{clients} clients: most requests in flight per key {peaks:?}, limit 2; busy answers: {}",
            upstream.calls().iter().filter(|c| c.status == 429).count()
        );
    }
    let peaks = upstream.peaks(&keys);
    assert!(peaks.contains(&2), "the gateway used the keys' second slots: peaks {peaks:?}");
    eqnice!(6 * 4 + 12 * 3, upstream.count(), "one upstream request per client request");
}

#[test]
fn a_request_that_finds_every_slot_taken_for_slot_wait_secs_gets_429_with_retry_after() {
    let gate = Gate::new();
    let _release = OpenOnDrop(Arc::clone(&gate));
    let held = Arc::clone(&gate);
    let upstream = Upstream::start(move |call| match (call.in_flight > 2, call.stream) {
        (true, _) => Act::busy(),
        (false, true) => Act::Hold(Arc::clone(&held)),
        (false, false) => Act::quick(),
    });
    let gateway = Gateway::start(
        &config("[upstream]\nmax_concurrent_per_key = 2\nslot_wait_secs = 1\n"),
        &keys_on(&upstream.url, &[KEY_A, KEY_B, KEY_C]),
    );
    // Six streams hold the three keys' six slots until the gate opens.
    let streams: Vec<HeldStream> = (0..6).map(|_| HeldStream::open(&gateway)).collect();
    eqnice!(6, upstream.count(), "the six streams, one upstream request each");

    let started = Instant::now();
    let reply = gateway.chat(&chat_body("m", false));
    let waited = started.elapsed();
    let error = assert_envelope(&reply, 429);
    eqnice!(Some("rate_limit_exceeded"), error.code.as_deref(), "{}", reply.text);
    let wait = retry_after(&reply);
    assert!(wait >= 1, "Retry-After {wait}: a client should come back later, not at once");
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(8)).contains(&waited),
        "the request waited about slot_wait_secs (1 s) before its 429, not {waited:?}"
    );
    eqnice!(6, upstream.count(), "the request beyond capacity never reached a busy key");

    gate.open();
    for (i, stream) in streams.into_iter().enumerate() {
        eqnice!(Ok(HELD_TEXT.to_string()), stream.finish(), "held stream {i} completes");
    }
    eqnice!(Ok(text(2)), chat(&gateway, "m"), "the slots are free again once the streams end");
}

#[test]
fn a_stream_holds_its_slot_until_its_client_leaves() {
    // The stream goes on for 20 s unless the gateway closes it.
    let upstream = Upstream::start(|call| match call.stream {
        true => Act::Serve { lines: 200, pause: Duration::from_millis(100) },
        false => Act::quick(),
    });
    let gateway = Gateway::start(
        &config("[upstream]\nmax_concurrent_per_key = 1\n"),
        &keys_on(&upstream.url, &[KEY_A]),
    );
    let conn = HeldStream::open(&gateway);
    thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            let started = Instant::now();
            (chat(&gateway, "m"), started.elapsed())
        });
        thread::sleep(Duration::from_secs(1));
        eqnice!(1, upstream.count(), "while the stream holds the key's only slot, the next request waits");
        drop(conn);
        let (answer, took) = waiting.join().expect("the waiting request's thread");
        eqnice!(Ok(text(2)), answer, "the waiting request is served once the stream's client leaves");
        assert!(took < FEW_SECONDS, "served {took:?} after it was sent: the slot came back late");
    });
    // The upstream sees the connection closed at its next write.
    wait_until(PATIENCE, "the gateway closes the abandoned stream upstream", || upstream.cut() == 1);
}

#[test]
fn a_client_that_leaves_while_waiting_for_a_slot_gives_up_its_place_and_sends_nothing() {
    let (gate, _release, upstream) = holding_streams();
    let gateway = Gateway::start(
        &config("[upstream]\nmax_concurrent_per_key = 1\n"),
        &keys_on(&upstream.url, &[KEY_A]),
    );
    let stream = HeldStream::open(&gateway);
    // A client sends a request that must wait for the only slot, then hangs up.
    let body = chat_body("leaver", false).to_string();
    let mut leaver = std::net::TcpStream::connect(&gateway.addr).expect("connect to the gateway");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    leaver.write_all(request.as_bytes()).expect("send the request that will wait");
    thread::sleep(Duration::from_secs(1));
    drop(leaver);
    // Within seconds, not at the end of slot_wait_secs (30 s).
    wait_until(FEW_SECONDS, "the gateway logs the waiting client that left (499)", || {
        gateway.logs().lines().any(|line| line.contains("status=499"))
    });
    thread::scope(|scope| {
        let next = scope.spawn(|| chat(&gateway, "stayer"));
        thread::sleep(Duration::from_secs(1));
        gate.open();
        eqnice!(
            Ok(text(2)),
            next.join().expect("the next request's thread"),
            "the client that stayed is served"
        );
    });
    eqnice!(Ok(HELD_TEXT.to_string()), stream.finish(), "the held stream completes");
    let models: Vec<String> = upstream.calls().iter().map(|c| c.model.clone()).collect();
    eqnice!(
        vec!["m".to_string(), "stayer".to_string()],
        models,
        "the request of the client that left never went upstream"
    );
}

#[test]
fn requests_waiting_for_a_slot_get_it_in_the_order_they_came() {
    let (gate, _release, upstream) = holding_streams();
    let gateway = Gateway::start(
        &config("[upstream]\nmax_concurrent_per_key = 1\n"),
        &keys_on(&upstream.url, &[KEY_A]),
    );
    let stream = HeldStream::open(&gateway);
    let models = ["first", "second", "third"];
    thread::scope(|scope| {
        let gateway = &gateway;
        // A second apart, so each is waiting before the next is sent.
        let waiting: Vec<_> = models
            .iter()
            .map(|model| {
                let request = scope.spawn(move || chat(gateway, model));
                thread::sleep(Duration::from_secs(1));
                request
            })
            .collect();
        eqnice!(1, upstream.count(), "all three wait while the stream holds the key's only slot");
        gate.open();
        for (request, model) in waiting.into_iter().zip(models) {
            eqnice!(Ok(text(2)), request.join().expect("a waiting request's thread"), "{model}");
        }
    });
    eqnice!(Ok(HELD_TEXT.to_string()), stream.finish(), "the held stream completes");
    let order: Vec<String> = upstream.calls()[1..].iter().map(|c| c.model.clone()).collect();
    eqnice!(models.to_vec(), order, "the freed slot went to the waiting requests in arrival order");
}

// ---------------------------------------------------------------------------------------
// 3. Slots per pool and per key
// ---------------------------------------------------------------------------------------

#[test]
fn a_pools_max_concurrent_per_key_overrides_the_upstream_setting() {
    let upstream = Upstream::start(|call| if call.in_flight > 1 { Act::busy() } else { Act::slow() });
    let gateway = Gateway::start(
        &config("[upstream]\nmax_concurrent_per_key = 3\n[pools.default]\nmax_concurrent_per_key = 1\n"),
        &keys_on(&upstream.url, &[KEY_A, KEY_B]),
    );
    let failures = run_concurrently(4, 12, |_| expect_text(stream(&gateway, "m"), &text(3)));
    eqnice!(Vec::<String>::new(), failures, "4 clients on 2 one-slot keys: they wait, no errors");
    eqnice!(vec![1, 1], upstream.peaks(&[KEY_A, KEY_B]), "each key served one request at a time");
    eqnice!(12, upstream.count(), "one upstream request per client request");
}

/// Key-line options are parsed by work landing separately; this test may pass only once
/// keys.txt reads `max_concurrent=N`.
#[test]
fn a_key_lines_max_concurrent_limits_that_key_alone() {
    // Key A's plan allows one request at a time; key B's has no limit.
    let upstream = Upstream::start(|call| match call.key == KEY_A && call.in_flight > 1 {
        true => Act::busy(),
        false => Act::Serve { lines: 3, pause: Duration::from_millis(150) },
    });
    let url = &upstream.url;
    let gateway = Gateway::with_keys(&format!("{url}|{KEY_A} max_concurrent=1\n{url}|{KEY_B}\n"));
    let failures = run_concurrently(4, 12, |_| expect_text(stream(&gateway, "m"), &text(3)));
    eqnice!(Vec::<String>::new(), failures, "no client sees an error");
    let peaks = upstream.peaks(&[KEY_A, KEY_B]);
    assert!(peaks[0] == 1, "key A had {} requests in flight at once, its line says 1", peaks[0]);
    assert!(peaks[1] >= 2, "key B, with no limit, served several at once: peaks {peaks:?}");
    assert!(upstream.served_by(KEY_A) >= 1, "key A served too: {:?}", upstream.calls());
}

// ---------------------------------------------------------------------------------------
// 4. The upstream's busy answer
// ---------------------------------------------------------------------------------------

#[test]
fn an_upstream_busy_answer_fails_over_and_the_key_serves_again_seconds_later() {
    // No slots configured: the gateway learns a key is full only from its answer. The
    // upstream allows one request per key at once.
    let gate = Gate::new();
    let _release = OpenOnDrop(Arc::clone(&gate));
    let held = Arc::clone(&gate);
    let upstream = Upstream::start(move |call| match (call.in_flight > 1, call.stream) {
        (true, _) => Act::busy(),
        (false, true) => Act::Hold(Arc::clone(&held)),
        (false, false) => Act::quick(),
    });
    let gateway = Gateway::with_keys(&keys_on(&upstream.url, &[KEY_A, KEY_B]));
    // Client 1 holds a stream on one key; client 2 sends requests meanwhile.
    let conn = HeldStream::open(&gateway);
    let full = upstream.calls()[0].key.clone();
    let other = if full == KEY_A { KEY_B } else { KEY_A };
    let started = Instant::now();
    let failures: Vec<String> =
        (0..10).filter_map(|i| chat(&gateway, "m").err().map(|e| format!("request {i}: {e}"))).collect();
    let took = started.elapsed();
    eqnice!(Vec::<String>::new(), failures, "every request of client 2 is served (by the other key)");
    let busy = upstream.answered(&full, 429);
    assert!(
        busy >= 1,
        "some request tried the key holding the stream and was told it is busy: {:?}",
        upstream.calls()
    );
    assert!(
        busy <= 1 + took.as_secs() as usize,
        "a key that answered busy rests ~2 s: {busy} busy answers in {took:?}"
    );
    eqnice!(10, upstream.served_by(other), "the other key served all ten");

    gate.open();
    eqnice!(Ok(HELD_TEXT.to_string()), conn.finish(), "the held stream completes");
    // The busy key is used again within seconds (not after a 30 s back-off).
    let served = upstream.served_by(&full);
    let deadline = Instant::now() + FEW_SECONDS;
    while upstream.served_by(&full) == served {
        assert!(Instant::now() < deadline, "the busy key still rests after {FEW_SECONDS:?}");
        eqnice!(Ok(text(2)), chat(&gateway, "m"));
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// 5. Failover: a deadline, not a count
// ---------------------------------------------------------------------------------------

#[test]
fn failover_starts_no_attempt_after_failover_deadline_secs() {
    // Each key answers 500 after 2 s; with a 3 s deadline the second attempt starts (at
    // 2 s) and a third would start at 4 s, past it. Three attempts would take 6 s.
    let upstream = Upstream::start(|_| Act::Fail {
        status: 500,
        message: "model runner crashed".to_string(),
        after: Duration::from_secs(2),
    });
    let gateway = Gateway::start(
        &config("[upstream]\nfailover_deadline_secs = 3\n"),
        &keys_on(&upstream.url, &[KEY_A, KEY_B, KEY_C]),
    );
    let started = Instant::now();
    let reply = gateway.chat(&chat_body("m", false));
    let took = started.elapsed();
    let calls: Vec<String> = upstream.calls().iter().map(|c| c.key.clone()).collect();
    eqnice!(2, calls.len(), "two attempts, the third would start past the deadline: {calls:?}");
    assert_ne!(calls[0], calls[1], "two different keys");
    assert!(reply.status >= 500, "the request fails with the upstream's error: {}", reply.text);
    assert_envelope(&reply, reply.status);
    assert!(took < Duration::from_millis(5500), "answered after {took:?}, well before three attempts' 6 s");
}

#[test]
fn failover_tries_every_usable_key_unless_max_attempts_caps_it() {
    // Six keys; the first five (where the first request starts) fail, the last serves.
    let keys: Vec<String> = (0..6).map(|i| format!("key-{i}-0123456789")).collect();
    let last = keys[5].clone();
    let script = move |call: &Call| match call.key == last {
        true => Act::quick(),
        false => Act::fail(500, "model runner crashed"),
    };
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let upstream = Upstream::start(script.clone());
    let gateway = Gateway::with_keys(&keys_on(&upstream.url, &refs));
    eqnice!(Ok(text(2)), chat(&gateway, "m"), "with no max_attempts, failover reaches the sixth key");
    eqnice!(6, upstream.count(), "each key tried once");

    let upstream = Upstream::start(script);
    let gateway = Gateway::start(&config("[upstream]\nmax_attempts = 2\n"), &keys_on(&upstream.url, &refs));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 500);
    assert!(error.message.contains("model runner crashed"), "{}", error.message);
    eqnice!(2, upstream.count(), "max_attempts = 2 still caps the keys tried");
}

// ---------------------------------------------------------------------------------------
// 6. Fallback pools
// ---------------------------------------------------------------------------------------

#[test]
fn a_pool_with_no_usable_key_goes_on_in_its_fallback_pool() {
    // Pool free's two keys have spent their quota until `spent` is cleared.
    let spent = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&spent);
    let upstream = Upstream::start(move |call| {
        match (call.key == KEY_A || call.key == KEY_B) && flag.load(Ordering::SeqCst) {
            true => Act::fail(429, WEEKLY_LIMIT),
            false => Act::quick(),
        }
    });
    let url = &upstream.url;
    let keys = format!("[free]\n{url}|{KEY_A}\n{url}|{KEY_B}\n[paid]\n{url}|{KEY_C}\n");
    let config_text = format!("[pools.free]\nfallback = \"paid\"\n{}", token_entry("alice", TOKEN, "free"));

    let gateway = Gateway::start(&config_text, &keys);
    for i in 0..4 {
        eqnice!(Ok(text(2)), chat(&gateway, "m"), "request {i} of a token of pool free is served");
    }
    eqnice!(4, upstream.served_by(KEY_C), "the paid key served them: {:?}", upstream.calls());
    eqnice!(
        (1, 1),
        (upstream.sent_with(KEY_A), upstream.sent_with(KEY_B)),
        "free's spent keys were tried once each"
    );
    let pools: Vec<Option<String>> =
        wait_for_chat_lines(&gateway, 4).iter().map(|l| field(l, "pool").map(str::to_string)).collect();
    eqnice!(
        vec![Some("paid".to_string()); 4],
        pools,
        "each request's log line names the pool that served it"
    );

    // A new gateway whose free keys are good: free serves, paid is left alone.
    spent.store(false, Ordering::SeqCst);
    let gateway = Gateway::start(&config_text, &keys);
    for i in 0..4 {
        eqnice!(Ok(text(2)), chat(&gateway, "m"), "request {i}");
    }
    eqnice!(4, upstream.served_by(KEY_C), "the paid key served nothing more");
    eqnice!(4, upstream.served_by(KEY_A) + upstream.served_by(KEY_B), "pool free's keys served");
    let pools: Vec<Option<String>> =
        wait_for_chat_lines(&gateway, 4).iter().map(|l| field(l, "pool").map(str::to_string)).collect();
    eqnice!(vec![Some("free".to_string()); 4], pools);
}

#[test]
fn a_pool_whose_keys_stay_busy_past_the_wait_goes_on_in_its_fallback_pool() {
    let took = served_by_paid_while_free_is_busy(1, None);
    assert!(took >= Duration::from_millis(900), "it waited slot_wait_secs for free's key first: {took:?}");
}

#[test]
fn a_pool_with_slot_wait_secs_0_goes_on_to_its_fallback_at_once() {
    let took = served_by_paid_while_free_is_busy(20, Some(0));
    assert!(took < FEW_SECONDS, "no wait for free's busy key: {took:?}");
}

/// Pool `free` (one key with one slot, taken by a held stream) falls back to `paid`, with
/// `[upstream] slot_wait_secs` and free's own when given: a chat of free's token is served
/// by paid, and the log says so. Returns how long the chat took.
fn served_by_paid_while_free_is_busy(slot_wait_secs: u64, free_slot_wait_secs: Option<u64>) -> Duration {
    let (gate, _release, upstream) = holding_streams();
    let url = &upstream.url;
    let keys = format!("[free]\n{url}|{KEY_A} max_concurrent=1\n[paid]\n{url}|{KEY_C}\n");
    let free_wait = free_slot_wait_secs.map_or(String::new(), |secs| format!("slot_wait_secs = {secs}\n"));
    let config_text = format!(
        "[upstream]\nslot_wait_secs = {slot_wait_secs}\n[pools.free]\nfallback = \"paid\"\n{free_wait}{}",
        token_entry("alice", TOKEN, "free")
    );
    let gateway = Gateway::start(&config_text, &keys);
    let stream = HeldStream::open(&gateway);
    let started = Instant::now();
    eqnice!(Ok(text(2)), chat(&gateway, "m"), "served although free's only key is busy");
    let took = started.elapsed();
    eqnice!(1, upstream.served_by(KEY_C), "the paid key served it: {:?}", upstream.calls());
    gate.open();
    eqnice!(Ok(HELD_TEXT.to_string()), stream.finish(), "the held stream completes");
    let pools: Vec<Option<String>> =
        wait_for_chat_lines(&gateway, 2).iter().map(|l| field(l, "pool").map(str::to_string)).collect();
    assert!(pools.contains(&Some("paid".to_string())), "a log line names pool paid: {pools:?}");
    took
}

/// An upstream that holds every stream until the gate opens (at the latest when the guard
/// is dropped, so a failing test never hangs) and answers everything else at once.
fn holding_streams() -> (Arc<Gate>, OpenOnDrop, Upstream) {
    let gate = Gate::new();
    let held = Arc::clone(&gate);
    let upstream = Upstream::start(move |call| match call.stream {
        true => Act::Hold(Arc::clone(&held)),
        false => Act::quick(),
    });
    (Arc::clone(&gate), OpenOnDrop(gate), upstream)
}

#[test]
fn listing_models_does_not_wait_behind_a_key_at_its_limit() {
    let gate = Gate::new();
    let _release = OpenOnDrop(Arc::clone(&gate));
    let held = Arc::clone(&gate);
    // Only the chat stream is held; a model list (no body, no model) is answered at once.
    let upstream = Upstream::start(move |call| match call.model.as_str() {
        "m" => Act::Hold(Arc::clone(&held)),
        _ => Act::quick(),
    });
    let gateway = Gateway::start(
        &config("[upstream]\nmax_concurrent_per_key = 1\nslot_wait_secs = 20\n"),
        &keys_on(&upstream.url, &[KEY_A]),
    );
    let stream = HeldStream::open(&gateway);
    let auth = format!("Bearer {TOKEN}");
    let started = Instant::now();
    for path in ["/v1/models", "/api/tags"] {
        let reply = gateway.raw("GET", path, &[("authorization", auth.as_str())], b"");
        // This upstream answers every request with a chat, which is no model list: what
        // matters here is that the list went upstream at once instead of waiting.
        assert_ne!(429, reply.status, "{path} while the key's only slot is taken: {}", reply.text);
    }
    assert!(started.elapsed() < FEW_SECONDS, "the model lists did not wait for the slot");
    eqnice!(3, upstream.count(), "both lists reached the upstream beside the stream");
    gate.open();
    eqnice!(Ok(HELD_TEXT.to_string()), stream.finish(), "the held stream completes");
}

#[test]
fn when_a_pools_line_is_full_more_requests_are_answered_at_once() {
    let gate = Gate::new();
    let _release = OpenOnDrop(Arc::clone(&gate));
    let held = Arc::clone(&gate);
    let upstream = Upstream::start(move |_| Act::Hold(Arc::clone(&held)));
    // workers = 4: at most 2 requests wait for the pool's slots.
    let gateway = Gateway::start(
        &config("workers = 4\n[upstream]\nmax_concurrent_per_key = 1\nslot_wait_secs = 20\n"),
        &keys_on(&upstream.url, &[KEY_A]),
    );
    let stream = HeldStream::open(&gateway);
    thread::scope(|scope| {
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let waiter = scope.spawn(|| stream_of(&gateway));
                thread::sleep(Duration::from_millis(500));
                waiter
            })
            .collect();
        let started = Instant::now();
        let over = gateway.chat(&chat_body("m", false));
        eqnice!(429, over.status, "a third waiter is not taken: {}", over.text);
        assert!(retry_after(&over) >= 1);
        assert!(started.elapsed() < FEW_SECONDS, "answered at once, not after slot_wait_secs");
        gate.open();
        for waiter in waiting {
            eqnice!(
                Ok(HELD_TEXT.to_string()),
                waiter.join().expect("a waiter's thread"),
                "the waiters are served"
            );
        }
    });
    eqnice!(Ok(HELD_TEXT.to_string()), stream.finish(), "the held stream completes");
}

/// A held stream's text, opened and read to its end.
fn stream_of(gateway: &Gateway) -> Result<String, String> {
    stream(gateway, "m")
}

#[test]
fn a_request_whose_time_ran_out_blames_no_key_it_did_not_try() {
    let upstream =
        Upstream::start(|_| Act::Fail { status: 500, message: "slow".into(), after: Duration::from_secs(3) });
    let gateway = Gateway::start(
        &config("[upstream]\nrequest_timeout_secs = 1\n"),
        &keys_on(&upstream.url, &[KEY_A, KEY_B, KEY_C]),
    );
    let reply = gateway.chat(&chat_body("m", false));
    assert!(reply.status >= 500, "the request timed out: {} {}", reply.status, reply.text);
    thread::sleep(Duration::from_millis(300));
    eqnice!(1, upstream.count(), "one key was tried before the time ran out");
    let blamed = gateway.logs().lines().filter(|line| line.contains("failed (")).count();
    eqnice!(1, blamed, "only the key that was tried is blamed: {}", gateway.logs());
}

#[test]
fn a_fallback_loop_stops_the_gateway_at_start_naming_its_pools() {
    let dir = TempDir::new();
    dir.write_config(
        &format!(
            "[pools.alpha]\nfallback = \"beta\"\n[pools.beta]\nfallback = \"alpha\"\n{}",
            token_entry("alice", TOKEN, "alpha")
        ),
        &format!("[alpha]\nhttp://127.0.0.1:9|{KEY_A}\n[beta]\nhttp://127.0.0.1:9|{KEY_B}\n"),
    );
    let out = serve_refused(&dir);
    eqnice!(2, out.code, "a config error: {out:#?}");
    assert!(
        out.stderr.contains("alpha") && out.stderr.contains("beta"),
        "the error names both pools of the loop:\n{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 7. A model no key's plan has
// ---------------------------------------------------------------------------------------

#[test]
fn a_model_every_keys_plan_lacks_gets_403_permission_error_and_other_models_still_work() {
    let upstream = Upstream::start(|call| match call.model.as_str() {
        "big" => Act::fail(403, NO_SUBSCRIPTION),
        _ => Act::quick(),
    });
    let gateway = Gateway::with_keys(&keys_on(&upstream.url, &[KEY_A, KEY_B]));
    let big_calls = || upstream.calls().iter().filter(|c| c.model == "big").count();

    let first = gateway.chat(&chat_body("big", false));
    assert_ne!(200, first.status, "{}", first.text);
    eqnice!(2, big_calls(), "the first request tried both keys");

    let reply = gateway.chat(&chat_body("big", false));
    let error = assert_envelope(&reply, 403);
    eqnice!("permission_error", error.kind, "{}", reply.text);
    assert!(error.message.contains("big"), "the message names the model: {}", error.message);
    eqnice!(None, reply.header("retry-after"), "waiting does not help: no Retry-After");

    let native = gateway.post_json(
        "/api/chat",
        Some(TOKEN),
        &json!({"model": "big", "stream": false, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    eqnice!(403, native.status, "/api/chat: {}", native.text);
    let message =
        native.body["error"].as_str().unwrap_or_else(|| panic!("Ollama's error shape: {}", native.text));
    assert!(message.contains("big"), "/api/chat: {message}");
    eqnice!(None, native.header("retry-after"), "/api/chat");

    let messages = gateway.post_json(
        "/v1/messages",
        Some(TOKEN),
        &json!({"model": "big", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    let message = assert_anthropic_error(&messages, 403, "permission_error");
    assert!(message.contains("big"), "/v1/messages: {message}");
    eqnice!(None, messages.header("retry-after"), "/v1/messages");

    eqnice!(2, big_calls(), "no upstream call for big once every key is known to lack it");
    eqnice!(Ok(text(2)), chat(&gateway, "small"), "another model still works");
}

// ---------------------------------------------------------------------------------------
// 8. Strategies and weights
// ---------------------------------------------------------------------------------------

#[test]
fn least_busy_sends_requests_to_the_key_with_fewest_in_flight() {
    let (gate, _release, upstream) = holding_streams();
    let gateway = Gateway::start(
        &config("[upstream]\nstrategy = \"least-busy\"\n"),
        &keys_on(&upstream.url, &[KEY_A, KEY_B]),
    );
    let conn = HeldStream::open(&gateway);
    let streaming = upstream.calls()[0].key.clone();
    let idle = if streaming == KEY_A { KEY_B } else { KEY_A };
    for i in 0..10 {
        eqnice!(Ok(text(2)), chat(&gateway, "m"), "request {i}");
    }
    let keys: Vec<String> = upstream.calls()[1..].iter().map(|c| c.key.clone()).collect();
    eqnice!(vec![idle.to_string(); 10], keys, "every request went to the key with nothing in flight");
    gate.open();
    eqnice!(Ok(HELD_TEXT.to_string()), conn.finish(), "the held stream completes");
}

/// Key-line options are parsed by work landing separately; this test may pass only once
/// keys.txt reads `weight=N`.
#[test]
fn a_key_lines_weight_sets_its_share_of_the_traffic() {
    let upstream = Upstream::start(|_| Act::quick());
    let url = &upstream.url;
    let gateway = Gateway::with_keys(&format!("{url}|{KEY_A} weight=3\n{url}|{KEY_B}\n"));
    let failures = run_concurrently(4, 400, |_| expect_text(chat(&gateway, "m"), &text(2)));
    eqnice!(Vec::<String>::new(), failures, "every request succeeds");
    let (a, b) = (upstream.served_by(KEY_A), upstream.served_by(KEY_B));
    assert!(
        (285..=315).contains(&a) && (95..=105).contains(&b),
        "key A (weight 3) served {a}, key B (weight 1) {b}: expected 300 and 100, ± 5%"
    );
}
