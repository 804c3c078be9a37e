//! A fake Ollama: a tiny_http server on `127.0.0.1:0` whose answers a test scripts with a
//! closure, and which records every request it receives.
//!
//! Each request is served on its own thread, so many streams can be open at once. NDJSON
//! streams write the HTTP head and chunked frames by hand through `Request::into_writer()`
//! and flush after every line (tiny_http's `respond` would hold small chunks back), and
//! record per stream how many lines went out and whether a write failed (the gateway
//! closed the upstream connection). A stream "ends without a done line" simply by not
//! having one among its lines: the body then ends cleanly after the last line.

use serde_json::Value;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// The longest a thread waits at a [`Gate`] before it carries on regardless.
const GATE_TIMEOUT: Duration = Duration::from_secs(60);

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method, upper case.
    pub method: String,
    /// The URL path (and query).
    pub path: String,
    /// Headers, names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub raw: String,
    /// The body as JSON, when it is JSON.
    pub json: Option<Value>,
}

impl Recorded {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The `Authorization` header.
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    /// The JSON body (panics when the body is not JSON).
    pub fn body(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| panic!("upstream body is not JSON: {:?}", self.raw))
    }

    /// Whether the request asked for a stream (`"stream": true`).
    pub fn wants_stream(&self) -> bool {
        self.json.as_ref().and_then(|j| j.get("stream")).and_then(Value::as_bool) == Some(true)
    }

    /// The requested model.
    pub fn model(&self) -> &str {
        self.json.as_ref().and_then(|j| j.get("model")).and_then(Value::as_str).unwrap_or("")
    }
}

/// What the fake answers.
pub enum FakeReply {
    /// A JSON body with a status.
    Json {
        /// HTTP status.
        status: u16,
        /// The body.
        body: Value,
    },
    /// A plain-text body with a status.
    Text {
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// A 200 NDJSON stream written line by line.
    Ndjson(Ndjson),
    /// A JSON body with a status and extra headers (such as `Retry-After`).
    WithHeaders {
        /// HTTP status.
        status: u16,
        /// Extra headers, after `Content-Type: application/json`.
        headers: Vec<(String, String)>,
        /// The body.
        body: Value,
    },
}

/// A scripted NDJSON stream.
pub struct Ndjson {
    /// The lines, each written with a trailing `\n` (a line need not be JSON).
    pub lines: Vec<String>,
    /// The pause before each line after the first.
    pub delay: Duration,
    /// When set, the stream waits at this gate after writing its first line.
    pub gate: Option<Arc<Gate>>,
}

impl FakeReply {
    /// A 200 JSON answer.
    pub fn ok(body: Value) -> FakeReply {
        FakeReply::Json { status: 200, body }
    }

    /// Ollama's error shape, `{"error": message}`, with a status.
    pub fn error(status: u16, message: &str) -> FakeReply {
        FakeReply::Json { status, body: serde_json::json!({ "error": message }) }
    }

    /// Ollama's error shape with a status and extra headers.
    pub fn error_with(status: u16, message: &str, headers: &[(&str, &str)]) -> FakeReply {
        FakeReply::WithHeaders {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: serde_json::json!({ "error": message }),
        }
    }

    /// A stream of JSON lines, sent without pauses.
    pub fn ndjson(lines: &[Value]) -> FakeReply {
        FakeReply::Ndjson(Ndjson {
            lines: lines.iter().map(Value::to_string).collect(),
            delay: Duration::ZERO,
            gate: None,
        })
    }
}

/// What happened to one NDJSON stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Lines written and flushed without error.
    pub lines_written: AtomicUsize,
    /// A write failed: the reader went away.
    pub write_failed: AtomicBool,
    /// The stream was written to its end.
    pub completed: AtomicBool,
}

impl StreamStats {
    /// Lines written so far.
    pub fn written(&self) -> usize {
        self.lines_written.load(Ordering::SeqCst)
    }

    /// Whether a write failed.
    pub fn failed(&self) -> bool {
        self.write_failed.load(Ordering::SeqCst)
    }
}

/// A gate that held threads pass once it is opened (or after a minute, so a failing test
/// cannot leave them behind forever).
#[derive(Debug, Default)]
pub struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Lets every held thread go on, and every later one pass at once.
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    /// Waits until the gate is open.
    pub fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _unused = self.changed.wait_timeout_while(open, GATE_TIMEOUT, |open| !*open).unwrap();
    }
}

/// Opens its gate when dropped, so a test that fails while a stream waits at the gate does
/// not leave the fake's thread waiting.
pub struct OpenOnDrop(pub Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

type Handler = dyn Fn(&Recorded) -> FakeReply + Send + Sync;

/// A running fake Ollama.
pub struct Fake {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    server: Arc<tiny_http::Server>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    streams: Arc<Mutex<Vec<Arc<StreamStats>>>>,
}

impl Fake {
    /// Starts a fake that answers every request with `handler`.
    pub fn start(handler: impl Fn(&Recorded) -> FakeReply + Send + Sync + 'static) -> Fake {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (accept, records, stats) = (Arc::clone(&server), Arc::clone(&requests), Arc::clone(&streams));
        thread::spawn(move || {
            for request in accept.incoming_requests() {
                let (handler, records, stats) =
                    (Arc::clone(&handler), Arc::clone(&records), Arc::clone(&stats));
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || serve(request, &*handler, &records, &stats))
                    .expect("spawn a fake request thread");
            }
        });
        Fake { url: format!("http://127.0.0.1:{port}"), server, requests, streams }
    }

    /// A fake that answers every request with the same JSON.
    pub fn always(status: u16, body: Value) -> Fake {
        Fake::start(move |_| FakeReply::Json { status, body: body.clone() })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The only request received (panics unless there was exactly one).
    #[track_caller]
    pub fn only_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "expected exactly one upstream request, got {requests:#?}");
        requests.into_iter().next().unwrap()
    }

    /// The NDJSON streams started so far.
    pub fn streams(&self) -> Vec<Arc<StreamStats>> {
        self.streams.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn serve(
    mut request: tiny_http::Request,
    handler: &Handler,
    records: &Mutex<Vec<Recorded>>,
    streams: &Mutex<Vec<Arc<StreamStats>>>,
) {
    let mut raw = String::new();
    let _ = request.as_reader().read_to_string(&mut raw);
    let recorded = Recorded {
        method: request.method().as_str().to_ascii_uppercase(),
        path: request.url().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
            .collect(),
        // serde_json with `raw_value` (as this workspace builds it) parses the string under
        // its private RawValue key again without a depth limit: bodies that carry it (sent
        // to test the gateway against exactly that) are recorded unparsed.
        json: match raw.contains("$serde_json::private::RawValue") {
            true => None,
            false => serde_json::from_str(&raw).ok(),
        },
        raw,
    };
    records.lock().unwrap().push(recorded.clone());
    match handler(&recorded) {
        FakeReply::Json { status, body } => respond(request, status, "application/json", body.to_string()),
        FakeReply::Text { status, body } => respond(request, status, "text/plain", body),
        FakeReply::WithHeaders { status, headers, body } => {
            let mut response = tiny_http::Response::from_string(body.to_string())
                .with_status_code(status)
                .with_header(tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap());
            for (name, value) in headers {
                response.add_header(tiny_http::Header::from_bytes(name, value).expect("a valid header"));
            }
            let _ = request.respond(response);
        }
        FakeReply::Ndjson(script) => {
            let stats = Arc::new(StreamStats::default());
            streams.lock().unwrap().push(Arc::clone(&stats));
            write_ndjson(request.into_writer(), &script, &stats);
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, content_type: &str, body: String) {
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).unwrap();
    let _ =
        request.respond(tiny_http::Response::from_string(body).with_status_code(status).with_header(header));
}

fn write_ndjson(mut writer: Box<dyn Write + Send>, script: &Ndjson, stats: &StreamStats) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    if writer.write_all(head.as_bytes()).and_then(|_| writer.flush()).is_err() {
        stats.write_failed.store(true, Ordering::SeqCst);
        return;
    }
    for (i, line) in script.lines.iter().enumerate() {
        if i > 0 && !script.delay.is_zero() {
            thread::sleep(script.delay);
        }
        let data = format!("{line}\n");
        let written = write!(writer, "{:x}\r\n", data.len())
            .and_then(|_| writer.write_all(data.as_bytes()))
            .and_then(|_| writer.write_all(b"\r\n"))
            .and_then(|_| writer.flush());
        if written.is_err() {
            stats.write_failed.store(true, Ordering::SeqCst);
            return;
        }
        stats.lines_written.fetch_add(1, Ordering::SeqCst);
        if i == 0 {
            if let Some(gate) = &script.gate {
                gate.wait();
            }
        }
    }
    match writer.write_all(b"0\r\n\r\n").and_then(|_| writer.flush()) {
        Ok(()) => stats.completed.store(true, Ordering::SeqCst),
        Err(_) => stats.write_failed.store(true, Ordering::SeqCst),
    }
}

/// A fake whose stream for each model of `cases` (model, lines after a first content line
/// "Hel") breaks in its own way: an error line, garbage, an early end.
pub fn breaking_streams(cases: &[(&str, Vec<String>)]) -> Fake {
    let scripts: Vec<(String, Vec<String>)> = cases
        .iter()
        .map(|(model, rest)| {
            let lines =
                std::iter::once(content_line("Hel").to_string()).chain(rest.iter().cloned()).collect();
            (model.to_string(), lines)
        })
        .collect();
    Fake::start(move |recorded| {
        let (_, lines) =
            scripts.iter().find(|(model, _)| model == recorded.model()).expect("a scripted model");
        FakeReply::Ndjson(Ndjson { lines: lines.clone(), delay: Duration::ZERO, gate: None })
    })
}

/// An `http://` URL on which nothing listens: connecting is refused at once.
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a throwaway port");
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------
// Native Ollama lines
// ---------------------------------------------------------------------------------------

/// A native `/api/chat` stream line carrying `content`.
pub fn content_line(content: &str) -> Value {
    serde_json::json!({
        "model": "llama3.2",
        "created_at": "2023-11-14T22:13:20Z",
        "message": {"role": "assistant", "content": content},
        "done": false,
    })
}

/// A native `/api/chat` stream line whose message holds `fields` (`thinking`, `content`,
/// `tool_calls`) over an empty assistant message.
pub fn message_line(fields: Value) -> Value {
    let mut message = serde_json::json!({"role": "assistant", "content": ""});
    if let (Some(message), Value::Object(fields)) = (message.as_object_mut(), fields) {
        message.extend(fields);
    }
    serde_json::json!({"model": "llama3.2", "created_at": "2023-11-14T22:13:20Z", "message": message, "done": false})
}

/// A native final (`done: true`) line with token counts.
pub fn done_line(done_reason: &str, prompt_eval_count: u64, eval_count: u64) -> Value {
    serde_json::json!({
        "model": "llama3.2",
        "created_at": "2023-11-14T22:13:21Z",
        "message": {"role": "assistant", "content": ""},
        "done": true,
        "done_reason": done_reason,
        "prompt_eval_count": prompt_eval_count,
        "eval_count": eval_count,
    })
}

/// A native non-streamed `/api/chat` answer with `content`.
pub fn chat_answer(content: &str) -> Value {
    serde_json::json!({
        "model": "llama3.2",
        "created_at": "2023-11-14T22:13:20.123Z",
        "message": {"role": "assistant", "content": content},
        "done": true,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 5,
    })
}

/// The `/api/chat` answer of `model` made of message `parts` (objects holding `content`,
/// `thinking` or `tool_calls`, each as one Ollama stream line carries it): one line per part
/// and a done line when the request streams (Ollama's default when `stream` is absent), else
/// the parts merged into one answer, as Ollama sends it with `stream: false`.
pub fn chat_reply(recorded: &Recorded, model: &str, parts: &[Value]) -> FakeReply {
    let mut done = done_line("stop", 12, parts.len() as u64);
    done["model"] = model.into();
    let streams = recorded.json.as_ref().and_then(|j| j.get("stream")) != Some(&Value::Bool(false));
    if streams {
        let mut lines: Vec<Value> = parts
            .iter()
            .map(|part| {
                let mut line = content_line("");
                line["model"] = model.into();
                line["message"] = serde_json::json!({"role": "assistant", "content": ""});
                for (key, value) in part.as_object().expect("a message part is an object") {
                    line["message"][key] = value.clone();
                }
                line
            })
            .collect();
        lines.push(done);
        return FakeReply::ndjson(&lines);
    }
    let (mut content, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
    for part in parts {
        content.push_str(part.get("content").and_then(Value::as_str).unwrap_or(""));
        thinking.push_str(part.get("thinking").and_then(Value::as_str).unwrap_or(""));
        calls.extend(part.get("tool_calls").and_then(Value::as_array).into_iter().flatten().cloned());
    }
    done["message"]["content"] = content.into();
    if !thinking.is_empty() {
        done["message"]["thinking"] = thinking.into();
    }
    if !calls.is_empty() {
        done["message"]["tool_calls"] = calls.into();
    }
    FakeReply::ok(done)
}

/// A handler that answers like a healthy Ollama: a stream when one is asked for.
pub fn healthy(recorded: &Recorded) -> FakeReply {
    if recorded.wants_stream() {
        FakeReply::ndjson(&[content_line("Hello"), done_line("stop", 3, 1)])
    } else {
        FakeReply::ok(chat_answer("Hello"))
    }
}

// ---------------------------------------------------------------------------------------
// A whole Ollama
// ---------------------------------------------------------------------------------------

/// The models [`ollama`] has, in the order `/api/tags` lists them. Its other endpoints
/// answer 404 `model '<name>' not found` for any other name (`llama3.2` stands for
/// `llama3.2:latest`, as in Ollama).
pub const MODELS: [&str; 5] =
    ["llama3.2:latest", "gpt-oss:20b", "qwen3:8b", "all-minilm:latest", "hf.co/org/model:Q4_K_M"];

/// The `modified_at` (and `created_at`) [`ollama`] reports: Unix time 1_700_000_000.
pub const MODIFIED_AT: &str = "2023-11-14T22:13:20Z";

/// The vector [`ollama`] embeds the `i`-th input as: `[0.1, -0.2, 0.3]` (spec §6.2's
/// example) shifted by `i`.
pub fn embedding_of(i: usize) -> Vec<f64> {
    let shift = i as f64;
    vec![0.1 + shift, -0.2 + shift, 0.3 + shift]
}

/// The prompt tokens [`ollama`] counts per embedded input.
pub const EMBED_TOKENS_PER_INPUT: u64 = 4;

/// An `/api/tags` answer listing `names`.
pub fn tags(names: &[&str]) -> Value {
    let models: Vec<Value> = names
        .iter()
        .map(|name| {
            serde_json::json!({
                "name": name, "model": name, "modified_at": MODIFIED_AT, "size": 1234, "digest": "sha256:0",
                "details": {"format": "gguf", "family": "llama", "parameter_size": "3B"},
            })
        })
        .collect();
    serde_json::json!({ "models": models })
}

/// A native `/api/generate` line; the `done` one carries `done_reason: stop` and 5 prompt
/// and 2 completion tokens.
pub fn generate_line(model: &str, response: &str, done: bool) -> Value {
    let mut line =
        serde_json::json!({"model": model, "created_at": MODIFIED_AT, "response": response, "done": done});
    if done {
        line["done_reason"] = "stop".into();
        line["context"] = serde_json::json!([1, 2, 3]);
        line["prompt_eval_count"] = 5.into();
        line["eval_count"] = 2.into();
    }
    line
}

/// A handler that answers like an Ollama holding [`MODELS`]: `/api/tags`, `/api/show`,
/// `/api/chat` (`Hello`, streamed as `Hel`, `lo`), `/api/generate` (`Hi there`, streamed
/// as `Hi`, ` there`, then an empty done line) and `/api/embed` (one [`embedding_of`] per
/// input). Replies name the model asked for.
pub fn ollama(recorded: &Recorded) -> FakeReply {
    let model = recorded.model();
    let known = MODELS.iter().any(|m| *m == model || m.strip_suffix(":latest") == Some(model));
    let with_model = |mut line: Value| {
        line["model"] = model.into();
        line
    };
    match (recorded.method.as_str(), recorded.path.as_str()) {
        ("GET", "/api/tags") => FakeReply::ok(tags(&MODELS)),
        ("POST", "/api/show" | "/api/chat" | "/api/generate" | "/api/embed") if !known => {
            FakeReply::error(404, &format!("model '{model}' not found"))
        }
        ("POST", "/api/show") => FakeReply::ok(serde_json::json!({
            "modified_at": MODIFIED_AT,
            "details": {"format": "gguf", "family": "llama"},
            "capabilities": ["completion"],
        })),
        ("POST", "/api/chat") if recorded.wants_stream() => FakeReply::ndjson(
            &[content_line("Hel"), content_line("lo"), done_line("stop", 3, 2)].map(with_model),
        ),
        ("POST", "/api/chat") => FakeReply::ok(with_model(chat_answer("Hello"))),
        ("POST", "/api/generate") if recorded.wants_stream() => FakeReply::ndjson(&[
            generate_line(model, "Hi", false),
            generate_line(model, " there", false),
            generate_line(model, "", true),
        ]),
        ("POST", "/api/generate") => FakeReply::ok(generate_line(model, "Hi there", true)),
        ("POST", "/api/embed") => {
            let inputs = match recorded.body().get("input") {
                Some(Value::Array(inputs)) => inputs.len(),
                _ => 1,
            };
            FakeReply::ok(serde_json::json!({
                "model": model,
                "embeddings": (0..inputs).map(embedding_of).collect::<Vec<_>>(),
                "total_duration": 14143917,
                "prompt_eval_count": EMBED_TOKENS_PER_INPUT * inputs as u64,
            }))
        }
        _ => FakeReply::Text { status: 404, body: "404 page not found".to_string() },
    }
}

// ---------------------------------------------------------------------------------------
// Ollama Cloud's account endpoints
// ---------------------------------------------------------------------------------------

/// An Ollama Cloud `GET /api/usage` answer with `limits` (such as
/// `{"monthly": {"usage": 1.0}}`), around it the fields a live answer also carries.
pub fn plan_usage(limits: Value) -> FakeReply {
    FakeReply::ok(serde_json::json!({
        "activity": {
            "cost": "1.68054",
            "period": {"type": "last_4_weeks", "starting_at": "2023-10-17T00:00:00Z", "ending_at": MODIFIED_AT},
            "models": [{"name": "kimi-k3", "request_count": 47, "cost": "1.68054"}],
        },
        "limits": limits,
    }))
}
