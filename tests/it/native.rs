//! Ollama's native API (`/api/*`) behind the gateway, and OpenAI-compatible upstream pools.
//!
//! Native calls: every route family, streamed and not, reaches the fake Ollama with the
//! pool's key and comes back unchanged and live; `GET /` answers like Ollama; tokens, scopes,
//! the `?api_key=` query token, the model allowlist and aliases, failover with token
//! accounting, and errors in Ollama's `{"error": "…"}` shape. OpenAI pools: a second fake
//! speaking OpenAI's API at `/api/v1`, reached through `/openrouter/v1/…` without
//! translation (SSE byte for byte), with failover between its keys, beside the default
//! Ollama pool.
//!
//! The shared fake Ollama (`fake::ollama`) answers chat, generate, embed, tags and show;
//! [`native_upstream`] adds the routes it lacks. Replies that must be checked byte for byte
//! (blobs, SSE) come from [`RawFake`], a fake of this file that keeps bodies as bytes and
//! writes any status, media type and stream.

use crate::fake::{
    content_line, done_line, embedding_of, generate_line, ollama, tags, Fake, FakeReply, Ndjson, Recorded,
    MODELS,
};
use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A token with every scope (`inference`, `models`, `manage`).
const ADMIN: &str = "sk-test-admin-2718281828";
/// A token with only the `models` scope.
const VIEWER: &str = "sk-test-viewer-1414213562";
/// A token with both pools, `default` first.
const MULTI: &str = "sk-test-multi-1732050807";
/// OpenRouter-style keys of the `[openrouter]` section.
const OR_KEY_A: &str = "sk-or-v1-aaaaaaaaaaaaaaaaaaaa";
const OR_KEY_B: &str = "sk-or-v1-bbbbbbbbbbbbbbbbbbbb";

/// The pause between the lines of the fake's slow streams.
const SLOW: Duration = Duration::from_millis(300);
/// The least gap that proves a line was not held back until the next one.
const LIVE_GAP: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// The fake Ollama's extra routes
// ---------------------------------------------------------------------------------------

/// The status lines [`native_upstream`] streams for `/api/pull`.
fn pull_lines() -> Vec<Value> {
    let (layer, size) =
        ("sha256:dde5aa3fc5ffc17176b5e8bdc82f587b24b2678c6c66101bf7da77af9f7ccdff", 2019393189u64);
    vec![
        json!({"status": "pulling manifest"}),
        json!({"status": "pulling dde5aa3fc5ff", "digest": layer, "total": size, "completed": 0}),
        json!({"status": "pulling dde5aa3fc5ff", "digest": layer, "total": size, "completed": size}),
        json!({"status": "verifying sha256 digest"}),
        json!({"status": "writing manifest"}),
        json!({"status": "success"}),
    ]
}

/// What [`native_upstream`] answers `GET /api/ps`.
fn ps_answer() -> Value {
    json!({"models": [{
        "name": "llama3.2:latest", "model": "llama3.2:latest", "size": 5137025024u64,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B"},
        "expires_at": "2023-11-14T22:18:20Z", "size_vram": 5137025024u64,
    }]})
}

/// The legacy `/api/embeddings` answer.
fn legacy_embedding() -> Value {
    json!({"embedding": [0.5670403838157654, 0.009260174818336964, 0.23178744316101074]})
}

/// The chat lines of the `slow` model, [`SLOW`] apart.
fn slow_lines() -> Vec<String> {
    [content_line("Hel"), content_line("lo"), done_line("stop", 3, 2)]
        .map(|mut line| {
            line["model"] = "slow".into();
            line.to_string()
        })
        .to_vec()
}

/// [`ollama`] plus what it lacks: `ps`, `version`, the legacy `embeddings`, `pull` (a
/// stream of status lines), `copy` and `delete` (200, empty), and the model `slow`, whose
/// chat stream pauses [`SLOW`] between lines.
fn native_upstream(recorded: &Recorded) -> FakeReply {
    match (recorded.method.as_str(), recorded.path.as_str()) {
        ("GET", "/api/ps") => FakeReply::ok(ps_answer()),
        ("GET", "/api/version") => FakeReply::ok(json!({"version": "0.12.3"})),
        ("POST", "/api/embeddings") => FakeReply::ok(legacy_embedding()),
        ("POST", "/api/pull") => FakeReply::ndjson(&pull_lines()),
        ("POST", "/api/copy") | ("DELETE", "/api/delete") => {
            FakeReply::Text { status: 200, body: String::new() }
        }
        ("POST", "/api/chat") if recorded.model() == "slow" => {
            FakeReply::Ndjson(Ndjson { lines: slow_lines(), delay: SLOW, gate: None })
        }
        _ => ollama(recorded),
    }
}

/// keys.txt with [`KEY_A`] for `url`.
fn key_a(url: &str) -> String {
    format!("{url}|{KEY_A}\n")
}

// ---------------------------------------------------------------------------------------
// Talking to the gateway
// ---------------------------------------------------------------------------------------

/// A whole reply, its body kept as bytes.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The body as JSON (panics when it is not).
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|err| panic!("the reply is not JSON ({err}): {} {:?}", self.status, self.text()))
    }

    /// Asserts an Ollama-style error, `{"error": "<text>"}` and nothing else, with `status`;
    /// returns the text.
    #[track_caller]
    fn ollama_error(&self, status: u16) -> String {
        eqnice!(status, self.status, "body: {}", self.text());
        let body = self.json();
        let fields: Vec<&String> = body.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        eqnice!(vec!["error"], fields, "an Ollama error is {{\"error\": \"…\"}}; got {body}");
        body["error"].as_str().unwrap_or_else(|| panic!("`error` is not a string: {body}")).to_string()
    }
}

/// `Authorization: Bearer <token>`.
fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `method path` with these headers and, when given, a body; the whole reply.
fn send(
    gateway: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut request = ureq::http::Request::builder().method(method).uri(gateway.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let agent = test_agent();
    let result = match body {
        Some(body) => agent.run(request.body(body.to_vec()).expect("a valid request")),
        None => agent.run(request.body(()).expect("a valid request")),
    };
    let mut response = result.unwrap_or_else(|err| panic!("{method} {path} failed: {err}"));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|err| panic!("reading the reply to {method} {path}: {err}"));
    Answer { status, headers, bytes }
}

/// `GET path` as `token` (no token when `None`).
fn get(gateway: &Gateway, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    send(gateway, "GET", path, &headers, None)
}

/// `method path` with a JSON body as `token`.
fn call(gateway: &Gateway, method: &str, path: &str, token: Option<&str>, body: &Value) -> Answer {
    let auth = token.map(bearer);
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
    send(gateway, method, path, &headers, Some(body.to_string().as_bytes()))
}

/// `POST path` with a JSON body as `token`.
fn post(gateway: &Gateway, path: &str, token: Option<&str>, body: &Value) -> Answer {
    call(gateway, "POST", path, token, body)
}

/// A reply read line by line as it arrives.
struct Live {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<Box<dyn Read + Send>>,
}

impl Live {
    /// `POST path` with a JSON body as `token`; the reply's head.
    fn post(gateway: &Gateway, path: &str, token: &str, body: &Value) -> Live {
        let response = test_agent()
            .post(gateway.url(path))
            .header("authorization", bearer(token))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap_or_else(|err| panic!("POST {path} failed: {err}"));
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let status = response.status().as_u16();
        let reader: Box<dyn Read + Send> = Box::new(response.into_body().into_reader());
        Live { status, headers, reader: BufReader::new(reader) }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every line to the end of the body, each with its `\n` (if it had one) and the
    /// instant it arrived.
    fn lines(mut self) -> Vec<(Instant, String)> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).expect("read the reply");
            if n == 0 {
                return lines;
            }
            lines.push((Instant::now(), String::from_utf8(line).expect("a UTF-8 line")));
        }
    }
}

/// Asserts consecutive lines arrived at least [`LIVE_GAP`] apart (the upstream sent them
/// [`SLOW`] apart, so nothing held them back).
#[track_caller]
fn assert_live(lines: &[(Instant, String)], what: &str) {
    for pair in lines.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= LIVE_GAP,
            "{what}: {:?} arrived {gap:?} after {:?}; sent {SLOW:?} apart, so they were held back",
            pair[1].1,
            pair[0].1
        );
    }
}

/// Asserts every upstream request carried `Authorization: Bearer <key>`, and neither its
/// headers nor its body held one of `tokens`.
#[track_caller]
fn assert_keys_not_tokens(requests: &[Recorded], key: &str, tokens: &[&str]) {
    for sent in requests {
        eqnice!(Some(bearer(key).as_str()), sent.authorization(), "{} {}", sent.method, sent.path);
        for token in tokens {
            assert!(
                !sent.headers.iter().any(|(_, v)| v.contains(token)) && !sent.raw.contains(token),
                "the client token went upstream: {sent:#?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A fake that keeps bytes
// ---------------------------------------------------------------------------------------

/// One request a [`RawFake`] received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The path and query.
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("upstream body is not JSON ({err}): {:?}", self.body))
    }
}

/// What a [`RawFake`] answers.
enum RawReply {
    /// A whole body with a status and media type (no body on `HEAD`).
    Whole { status: u16, content_type: &'static str, body: Vec<u8> },
    /// A 200 `text/event-stream`, each piece written and flushed on its own, `delay` apart.
    Stream { pieces: Vec<String>, delay: Duration },
}

type RawHandler = dyn Fn(&Seen) -> RawReply + Send + Sync;

/// A fake upstream that records request bodies as bytes and writes its replies by hand.
struct RawFake {
    url: String,
    server: Arc<tiny_http::Server>,
    requests: Arc<Mutex<Vec<Seen>>>,
}

impl RawFake {
    fn start(handler: impl Fn(&Seen) -> RawReply + Send + Sync + 'static) -> RawFake {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the raw fake"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<RawHandler> = Arc::new(handler);
        let (accept, records) = (Arc::clone(&server), Arc::clone(&requests));
        thread::spawn(move || {
            for request in accept.incoming_requests() {
                let (handler, records) = (Arc::clone(&handler), Arc::clone(&records));
                thread::spawn(move || serve_raw(request, &*handler, &records));
            }
        });
        RawFake { url: format!("http://127.0.0.1:{port}"), server, requests }
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for RawFake {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn serve_raw(mut request: tiny_http::Request, handler: &RawHandler, records: &Mutex<Vec<Seen>>) {
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let seen = Seen {
        method: request.method().as_str().to_ascii_uppercase(),
        url: request.url().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
            .collect(),
        body,
    };
    records.lock().unwrap().push(seen.clone());
    let reply = handler(&seen);
    let mut writer = request.into_writer();
    let _ = match reply {
        RawReply::Whole { status, content_type, body } => {
            let head = format!(
                "HTTP/1.1 {status} Fake\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let body = if seen.method == "HEAD" { &[][..] } else { &body[..] };
            writer
                .write_all(head.as_bytes())
                .and_then(|_| writer.write_all(body))
                .and_then(|_| writer.flush())
        }
        RawReply::Stream { pieces, delay } => (|| {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\
                        Connection: close\r\n\r\n";
            writer.write_all(head.as_bytes())?;
            writer.flush()?;
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    thread::sleep(delay);
                }
                write!(writer, "{:x}\r\n{piece}\r\n", piece.len())?;
                writer.flush()?;
            }
            writer.write_all(b"0\r\n\r\n")?;
            writer.flush()
        })(),
    };
}

// ---------------------------------------------------------------------------------------
// Native routes, stream and not
// ---------------------------------------------------------------------------------------

#[test]
fn native_chat_streams_ndjson_unchanged_and_live() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));
    let body =
        json!({"model": "slow", "messages": [{"role": "user", "content": "Hi"}], "options": {"seed": 7}});

    let live = Live::post(&gateway, "/api/chat", TOKEN, &body);
    eqnice!(200, live.status);
    eqnice!(Some("application/x-ndjson"), live.header("content-type"), "the upstream's media type");
    let lines = live.lines();
    let want: Vec<String> = slow_lines().into_iter().map(|line| format!("{line}\n")).collect();
    eqnice!(want, lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(), "the lines as Ollama sent them");
    assert_live(&lines, "/api/chat");

    let sent = fake.only_request();
    eqnice!(("POST", "/api/chat"), (sent.method.as_str(), sent.path.as_str()));
    eqjson!(body, *sent.body(), "the body as the client sent it");
    assert_keys_not_tokens(&[sent], KEY_A, &[TOKEN]);
}

#[test]
fn native_chat_without_stream_is_one_json_object_unchanged() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));
    let body = json!({"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "Hi"}]});

    let reply = post(&gateway, "/api/chat", Some(TOKEN), &body);
    eqnice!(200, reply.status, "{}", reply.text());
    eqnice!(Some("application/json"), reply.header("content-type"));
    let FakeReply::Json { body: answer, .. } = ollama(&fake.only_request()) else { unreachable!() };
    eqnice!(answer.to_string(), reply.text().trim_end().to_string(), "Ollama's object, byte for byte");
    eqnice!(1, reply.text().trim_end().lines().count(), "one object");
    eqjson!(body, *fake.only_request().body());
    assert_keys_not_tokens(&fake.requests(), KEY_A, &[TOKEN]);
}

#[test]
fn generate_embed_and_embeddings_pass_through() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));

    let streamed =
        json!({"model": "llama3.2", "prompt": "Once upon", "stream": true, "options": {"seed": 1}});
    let live = Live::post(&gateway, "/api/generate", TOKEN, &streamed);
    eqnice!((200, Some("application/x-ndjson")), (live.status, live.header("content-type")));
    let want: Vec<String> = [("Hi", false), (" there", false), ("", true)]
        .iter()
        .map(|(text, done)| format!("{}\n", generate_line("llama3.2", text, *done)))
        .collect();
    eqnice!(want, live.lines().into_iter().map(|(_, l)| l).collect::<Vec<_>>(), "/api/generate stream");

    let whole = json!({"model": "llama3.2", "prompt": "Once upon", "stream": false});
    let reply = post(&gateway, "/api/generate", Some(TOKEN), &whole);
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(generate_line("llama3.2", "Hi there", true), reply.json(), "/api/generate, not streamed");

    let embed = json!({"model": "all-minilm", "input": ["a", "b"], "truncate": true});
    let reply = post(&gateway, "/api/embed", Some(TOKEN), &embed);
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(json!([embedding_of(0), embedding_of(1)]), reply.json()["embeddings"], "/api/embed");
    eqjson!(json!(8), reply.json()["prompt_eval_count"]);

    let legacy = json!({"model": "all-minilm", "prompt": "a"});
    let reply = post(&gateway, "/api/embeddings", Some(TOKEN), &legacy);
    eqnice!(200, reply.status, "{}", reply.text());
    // Compared as text: a JSON parser may round the last digit of a float.
    eqnice!(legacy_embedding().to_string(), reply.text().trim_end().to_string(), "/api/embeddings");

    let requests = fake.requests();
    let seen: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    eqnice!(
        vec![
            ("POST", "/api/generate"),
            ("POST", "/api/generate"),
            ("POST", "/api/embed"),
            ("POST", "/api/embeddings")
        ],
        seen
    );
    for (sent, body) in requests.iter().zip([&streamed, &whole, &embed, &legacy]) {
        eqjson!(*body, *sent.body(), "{} arrives as sent", sent.path);
    }
    assert_keys_not_tokens(&requests, KEY_A, &[TOKEN]);
}

#[test]
fn model_listing_routes_pass_through() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));

    let reply = get(&gateway, "/api/tags", Some(TOKEN));
    eqnice!(200, reply.status, "{}", reply.text());
    eqnice!(tags(&MODELS).to_string(), reply.text().trim_end().to_string(), "/api/tags unchanged");

    let show = json!({"model": "llama3.2", "verbose": false});
    let reply = post(&gateway, "/api/show", Some(TOKEN), &show);
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(json!(["completion"]), reply.json()["capabilities"], "/api/show");

    let reply = get(&gateway, "/api/ps", Some(TOKEN));
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(ps_answer(), reply.json(), "/api/ps");

    let reply = get(&gateway, "/api/version", Some(TOKEN));
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(json!({"version": "0.12.3"}), reply.json(), "/api/version");

    let requests = fake.requests();
    let seen: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    eqnice!(
        vec![("GET", "/api/tags"), ("POST", "/api/show"), ("GET", "/api/ps"), ("GET", "/api/version")],
        seen
    );
    eqjson!(show, *requests[1].body(), "/api/show arrives as sent");
    assert_keys_not_tokens(&requests, KEY_A, &[TOKEN]);
}

#[test]
fn model_management_routes_pass_through_for_a_manage_token() {
    let fake = Fake::start(native_upstream);
    let config = format!(
        "{}scopes = [\"inference\", \"models\", \"manage\"]\n[aliases]\n\"gpt-4o-mini\" = \"llama3.2\"\n",
        token_entry("admin", ADMIN, "default")
    );
    let gateway = Gateway::start(&config, &key_a(&fake.url));

    let pull = json!({"model": "llama3.2", "insecure": false});
    let live = Live::post(&gateway, "/api/pull", ADMIN, &pull);
    eqnice!((200, Some("application/x-ndjson")), (live.status, live.header("content-type")));
    let want: Vec<String> = pull_lines().iter().map(|line| format!("{line}\n")).collect();
    eqnice!(want, live.lines().into_iter().map(|(_, l)| l).collect::<Vec<_>>(), "/api/pull status lines");

    let reply =
        post(&gateway, "/api/copy", Some(ADMIN), &json!({"source": "gpt-4o-mini", "destination": "backup"}));
    eqnice!((200, String::new()), (reply.status, reply.text()), "/api/copy");

    let reply = call(&gateway, "DELETE", "/api/delete", Some(ADMIN), &json!({"model": "backup"}));
    eqnice!((200, String::new()), (reply.status, reply.text()), "DELETE /api/delete");

    let requests = fake.requests();
    let seen: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    eqnice!(vec![("POST", "/api/pull"), ("POST", "/api/copy"), ("DELETE", "/api/delete")], seen);
    eqjson!(pull, *requests[0].body());
    eqjson!(
        json!({"source": "llama3.2", "destination": "backup"}),
        *requests[1].body(),
        "the alias resolved"
    );
    eqjson!(json!({"model": "backup"}), *requests[2].body());
    assert_keys_not_tokens(&requests, KEY_A, &[ADMIN]);
}

#[test]
fn blobs_are_forwarded_byte_for_byte_with_their_status() {
    let known = format!("sha256:{}", "ab".repeat(32));
    let exists = format!("/api/blobs/{known}");
    let upstream = exists.clone();
    let fake = RawFake::start(move |seen| match (seen.method.as_str(), seen.url.as_str()) {
        ("HEAD", url) if url == upstream => {
            RawReply::Whole { status: 200, content_type: "text/plain", body: vec![] }
        }
        ("POST", url) if url.starts_with("/api/blobs/") => {
            RawReply::Whole { status: 201, content_type: "text/plain", body: vec![] }
        }
        _ => {
            RawReply::Whole { status: 404, content_type: "text/plain", body: b"404 page not found".to_vec() }
        }
    });
    let config = format!(
        "{}scopes = [\"inference\", \"models\", \"manage\"]\n{}",
        token_entry("admin", ADMIN, "default"),
        alice()
    );
    let gateway = Gateway::start(&config, &key_a(&fake.url));
    let auth = bearer(ADMIN);

    let head = send(&gateway, "HEAD", &exists, &[("authorization", auth.as_str())], None);
    eqnice!(200, head.status, "HEAD of a blob upstream has");
    let missing = format!("/api/blobs/sha256:{}", "cd".repeat(32));
    eqnice!(
        404,
        send(&gateway, "HEAD", &missing, &[("authorization", auth.as_str())], None).status,
        "HEAD of a missing blob"
    );

    // Every byte value, CR LF, NUL, no final newline: what a GGUF file holds.
    let blob: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 256) as u8).chain(*b"\r\n\0\xff").collect();
    let headers = [("authorization", auth.as_str()), ("content-type", "application/octet-stream")];
    let reply = send(&gateway, "POST", &missing, &headers, Some(&blob));
    eqnice!(201, reply.status, "the upstream's 201 Created; body: {}", reply.text());

    let requests = fake.requests();
    let seen: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.url.as_str())).collect();
    eqnice!(vec![("HEAD", exists.as_str()), ("HEAD", missing.as_str()), ("POST", missing.as_str())], seen);
    let uploaded = &requests[2].body;
    assert!(
        *uploaded == blob,
        "the blob arrived changed: {} bytes sent, {} received, first difference at {:?}",
        blob.len(),
        uploaded.len(),
        blob.iter().zip(uploaded.iter()).position(|(a, b)| a != b)
    );
    for sent in &requests {
        eqnice!(Some(bearer(KEY_A).as_str()), sent.header("authorization"), "{} {}", sent.method, sent.url);
    }

    // Blobs need the manage scope.
    let refused = send(&gateway, "HEAD", &exists, &[("authorization", bearer(TOKEN).as_str())], None);
    eqnice!(403, refused.status);
    eqnice!(3, fake.count(), "no upstream call without the manage scope");
}

// ---------------------------------------------------------------------------------------
// The root, tokens, scopes, the query token
// ---------------------------------------------------------------------------------------

#[test]
fn the_root_answers_ollama_is_running_without_a_token() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));
    let reply = get(&gateway, "/", None);
    eqnice!((200, "Ollama is running".to_string()), (reply.status, reply.text()));
    assert!(reply.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{reply:?}");
    let head = send(&gateway, "HEAD", "/", &[], None);
    eqnice!((200, 0), (head.status, head.bytes.len()), "HEAD /");
    eqnice!(0, fake.count());
}

#[test]
fn a_native_call_without_a_token_gets_401_in_ollamas_shape() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));
    let reply = post(&gateway, "/api/chat", None, &chat_body("llama3.2", false));
    let message = reply.ollama_error(401);
    assert!(message.contains("API key"), "{message}");
    get(&gateway, "/api/tags", None).ollama_error(401);
    eqnice!(0, fake.count(), "no upstream call without a token");

    // x-api-key works as well as Authorization.
    let headers = [("x-api-key", TOKEN)];
    let reply = send(&gateway, "GET", "/api/tags", &headers, None);
    eqnice!(200, reply.status, "{}", reply.text());
    eqnice!(MODELS.len(), reply.json()["models"].as_array().map_or(0, Vec::len));
    assert_keys_not_tokens(&fake.requests(), KEY_A, &[TOKEN]);
}

#[test]
fn scopes_decide_which_routes_a_token_may_call() {
    let fake = Fake::start(native_upstream);
    let config = format!(
        "{}{}scopes = [\"models\"]\n{}scopes = [\"inference\", \"models\", \"manage\"]\n",
        alice(),
        token_entry("viewer", VIEWER, "default"),
        token_entry("admin", ADMIN, "default"),
    );
    let gateway = Gateway::start(&config, &key_a(&fake.url));
    let pull = json!({"model": "llama3.2"});

    // The default scopes are inference and models.
    let message = post(&gateway, "/api/pull", Some(TOKEN), &pull).ollama_error(403);
    assert!(message.contains("'manage'"), "the error names the missing scope: {message}");
    eqnice!(0, fake.count(), "a pull outside the token's scopes never reaches upstream");

    // A models-only token lists models but may not chat, natively or through /v1.
    let message = post(&gateway, "/api/chat", Some(VIEWER), &chat_body("llama3.2", false)).ollama_error(403);
    assert!(message.contains("'inference'"), "{message}");
    let reply = gateway.post_json("/v1/chat/completions", Some(VIEWER), &chat_body("llama3.2", false));
    let error = assert_envelope(&reply, 403);
    assert!(error.message.contains("'inference'"), "{error:?}");
    eqnice!(0, fake.count(), "refused calls never reach upstream");
    eqnice!(200, get(&gateway, "/api/tags", Some(VIEWER)).status);

    // Every scope: pulls work.
    let live = Live::post(&gateway, "/api/pull", ADMIN, &pull);
    eqnice!(200, live.status);
    eqnice!(pull_lines().len(), live.lines().len());
    let seen: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    eqnice!(vec!["/api/tags", "/api/pull"], seen);
}

#[test]
fn the_query_token_works_only_when_allowed_and_is_never_forwarded_or_logged() {
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::start(&format!("allow_query_token = true\n{}", alice()), &key_a(&fake.url));
    let reply = get(&gateway, &format!("/api/tags?api_key={TOKEN}"), None);
    eqnice!(200, reply.status, "{}", reply.text());
    eqnice!(MODELS.len(), reply.json()["models"].as_array().map_or(0, Vec::len));
    let reply = post(&gateway, &format!("/api/chat?api_key={TOKEN}"), None, &chat_body("llama3.2", false));
    eqnice!(200, reply.status, "{}", reply.text());

    let requests = fake.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    eqnice!(vec!["/api/tags", "/api/chat"], paths, "the query string is not forwarded");
    assert_keys_not_tokens(&requests, KEY_A, &[TOKEN]);
    gateway.wait_for_log(&["POST /api/chat", "token=alice"]);
    let logs = gateway.logs();
    assert!(!logs.contains(TOKEN) && !logs.contains("api_key="), "the logs hold the query token:\n{logs}");

    // Without allow_query_token, the URL's token is no token.
    let fake = Fake::start(native_upstream);
    let gateway = Gateway::with_keys(&key_a(&fake.url));
    get(&gateway, &format!("/api/tags?api_key={TOKEN}"), None).ollama_error(401);
    eqnice!(0, fake.count());
}

// ---------------------------------------------------------------------------------------
// Allowlists, aliases, failover, errors
// ---------------------------------------------------------------------------------------

#[test]
fn the_allowlist_and_aliases_apply_to_native_calls() {
    let fake = Fake::start(native_upstream);
    let config = format!(
        "{}models = [\"llama*\"]\n[aliases]\n\"gpt-4o-mini\" = \"llama3.2\"\n\"fast\" = \"qwen3:8b\"\n",
        alice()
    );
    let gateway = Gateway::start(&config, &key_a(&fake.url));

    let message = post(&gateway, "/api/chat", Some(TOKEN), &chat_body("qwen3", false)).ollama_error(403);
    assert!(message.contains("qwen3"), "{message}");
    post(&gateway, "/api/chat", Some(TOKEN), &chat_body("fast", false)).ollama_error(403);
    post(&gateway, "/api/show", Some(TOKEN), &json!({"model": "qwen3:8b"})).ollama_error(403);
    eqnice!(0, fake.count(), "refused models never reach upstream");

    let reply = post(&gateway, "/api/chat", Some(TOKEN), &chat_body("gpt-4o-mini", false));
    eqnice!(200, reply.status, "{}", reply.text());
    eqnice!("llama3.2", fake.only_request().model(), "upstream is asked for the alias's target");

    let reply = get(&gateway, "/api/tags", Some(TOKEN));
    eqnice!(200, reply.status, "{}", reply.text());
    let mut names: Vec<String> = reply.json()["models"]
        .as_array()
        .expect("a models list")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    eqnice!(vec!["gpt-4o-mini", "llama3.2:latest"], names, "the allowed models and allowed aliases only");
}

#[test]
fn native_calls_fail_over_and_count_tokens_from_the_done_line() {
    let fake = Fake::start(|recorded| match recorded.authorization() == Some(bearer(KEY_A).as_str()) {
        true => FakeReply::error(429, "you (ka) have reached your session usage limit, please wait"),
        false => native_upstream(recorded),
    });
    let gateway = Gateway::with_keys(&format!("{0}|{KEY_A}\n{0}|{KEY_B}\n", fake.url));

    let live = Live::post(&gateway, "/api/chat", TOKEN, &chat_body("llama3.2", true));
    eqnice!(200, live.status);
    let lines = live.lines();
    let text: String = lines
        .iter()
        .map(|(_, l)| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .map(|v| v["message"]["content"].as_str().unwrap_or("").to_string())
        .collect();
    eqnice!("Hello", text);
    let keys: Vec<Option<String>> =
        fake.requests().iter().map(|r| r.authorization().map(String::from)).collect();
    eqnice!(vec![Some(bearer(KEY_A)), Some(bearer(KEY_B))], keys, "the spent key, then the next");
    let line = gateway.wait_for_log(&["POST /api/chat", "attempts=2"]);
    assert!(line.contains("status=200") && line.contains("tokens=3+2"), "tokens from the done line: {line}");

    // Not streamed: the spent key rests, the other answers at once.
    let reply = post(&gateway, "/api/chat", Some(TOKEN), &chat_body("llama3.2", false));
    eqnice!(200, reply.status, "{}", reply.text());
    eqnice!(3, fake.count());
    gateway.wait_for_log(&["POST /api/chat", "attempts=1", "tokens=3+5"]);
}

#[test]
fn upstream_errors_keep_ollamas_shape() {
    let fake = Fake::start(|recorded| match recorded.model() {
        "busy" => FakeReply::error(429, "you (ka) have reached your session usage limit, please wait"),
        _ => native_upstream(recorded),
    });
    let gateway = Gateway::with_keys(&key_a(&fake.url));
    for stream in [false, true] {
        let reply = post(&gateway, "/api/chat", Some(TOKEN), &chat_body("x", stream));
        eqnice!("model 'x' not found", reply.ollama_error(404), "stream: {stream}");
    }
    let reply = post(&gateway, "/api/show", Some(TOKEN), &json!({"model": "x"}));
    eqnice!("model 'x' not found", reply.ollama_error(404));
    let reply = post(&gateway, "/api/chat", Some(TOKEN), &chat_body("busy", false));
    let message = reply.ollama_error(429);
    assert!(message.contains("usage limit"), "{message}");
}

// ---------------------------------------------------------------------------------------
// OpenAI-compatible pools
// ---------------------------------------------------------------------------------------

/// The SSE pieces [`openai_upstream`] streams for `model`: a comment, three chunks, `[DONE]`.
fn openai_pieces(model: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "gen-1700000000-abc", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model, "provider": "OpenAI",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    };
    let mut last = chunk(json!({"role": "assistant", "content": ""}), json!("stop"));
    last["usage"] = json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11});
    let mut pieces = vec![": OPENROUTER PROCESSING\n\n".to_string()];
    pieces.extend(
        [
            chunk(json!({"role": "assistant", "content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            last,
        ]
        .iter()
        .map(|c| format!("data: {c}\n\n")),
    );
    pieces.push("data: [DONE]\n\n".to_string());
    pieces
}

/// The non-streamed `chat.completion` [`openai_upstream`] answers for `model`.
fn openai_completion(model: &str) -> Value {
    json!({
        "id": "gen-1700000000-xyz", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from OpenRouter"},
                     "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    })
}

/// An OpenAI-compatible API at `/api/v1` (as OpenRouter's `https://openrouter.ai/api/v1`):
/// chat completions, streamed as SSE ([`SLOW`] apart) or not; [`OR_KEY_A`] is rate-limited
/// for the model `busy`.
fn openai_upstream(seen: &Seen) -> RawReply {
    if seen.method != "POST" || seen.url != "/api/v1/chat/completions" {
        let body = json!({"error": {"message": "Not Found", "code": 404}}).to_string().into_bytes();
        return RawReply::Whole { status: 404, content_type: "application/json", body };
    }
    let request = seen.json();
    let model = request["model"].as_str().unwrap_or("").to_string();
    if model == "busy" && seen.header("authorization") == Some(bearer(OR_KEY_A).as_str()) {
        let body = json!({"error": {"message": "Rate limit exceeded: free-models-per-min", "code": 429}});
        return RawReply::Whole {
            status: 429,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
        };
    }
    match request["stream"] == json!(true) {
        true => RawReply::Stream { pieces: openai_pieces(&model), delay: SLOW },
        false => RawReply::Whole {
            status: 200,
            content_type: "application/json",
            body: openai_completion(&model).to_string().into_bytes(),
        },
    }
}

/// Both fakes and a gateway with the `default` (Ollama) and `openrouter` (OpenAI) pools:
/// [`MULTI`] has both, [`TOKEN`] only `default`; `fast` is an alias of `openai/gpt-4o-mini`.
fn two_pools() -> (Fake, RawFake, Gateway) {
    let ollama_fake = Fake::start(native_upstream);
    let openai_fake = RawFake::start(openai_upstream);
    let config = format!(
        "{}pools = [\"default\", \"openrouter\"]\n{}\
         [aliases]\n\"fast\" = \"openai/gpt-4o-mini\"\n\
         [pools.openrouter]\nprovider = \"openai\"\nbase_url = \"{}/api/v1\"\n",
        token_entry("multi", MULTI, "default"),
        alice(),
        openai_fake.url
    );
    let keys = format!("{}|{KEY_A}\n[openrouter]\n{OR_KEY_A}\n{OR_KEY_B}\n", ollama_fake.url);
    let gateway = Gateway::start(&config, &keys);
    (ollama_fake, openai_fake, gateway)
}

#[test]
fn an_openai_pool_gets_v1_requests_unchanged() {
    let (ollama_fake, openai_fake, gateway) = two_pools();
    let body = json!({
        "model": "fast", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0.2,
        "max_tokens": 64, "provider": {"order": ["openai"]}, "transforms": ["middle-out"],
    });
    let reply = post(&gateway, "/openrouter/v1/chat/completions", Some(MULTI), &body);
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(openai_completion("openai/gpt-4o-mini"), reply.json(), "the upstream's answer, untranslated");

    let requests = openai_fake.requests();
    eqnice!(1, requests.len());
    let sent = &requests[0];
    eqnice!(("POST", "/api/v1/chat/completions"), (sent.method.as_str(), sent.url.as_str()));
    let mut want = body.clone();
    want["model"] = "openai/gpt-4o-mini".into();
    eqjson!(want, sent.json(), "the body as sent, the alias resolved");
    let auth = sent.header("authorization").unwrap_or("");
    assert!(auth == bearer(OR_KEY_A) || auth == bearer(OR_KEY_B), "an openrouter key: {auth:?}");
    assert!(!sent.headers.iter().any(|(_, v)| v.contains(MULTI)), "the client token went upstream");
    eqnice!(0, ollama_fake.count(), "the Ollama pool is not involved");
}

#[test]
fn an_openai_pool_checks_every_key_that_names_a_model() {
    let openai_fake = RawFake::start(openai_upstream);
    let config = format!(
        "{}models = [\"openai/*\"]\n\
         [aliases]\n\"fast\" = \"openai/gpt-4o-mini\"\n\"openai/cheap\" = \"anthropic/claude-opus-4\"\n\
         [pools.openrouter]\nprovider = \"openai\"\nbase_url = \"{}/api/v1\"\n",
        token_entry("limited", MULTI, "openrouter"),
        openai_fake.url
    );
    let gateway = Gateway::start(&config, &format!("[openrouter]\n{OR_KEY_A}\n"));
    let path = "/openrouter/v1/chat/completions";
    let hi = r#""messages":[{"role":"user","content":"Hi"}]"#;
    let headers = [("authorization", bearer(MULTI)), ("content-type", "application/json".to_string())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    // (body, status, the field at fault)
    let refused = [
        (format!(r#"{{"model":"openai/gpt-4o-mini","MODEL":"anthropic/claude-opus-4",{hi}}}"#), 400, "model"),
        (format!(r#"{{"Model":"anthropic/claude-opus-4",{hi}}}"#), 403, "Model"),
        (format!(r#"{{"model":"openai/cheap",{hi}}}"#), 403, "model"),
        (
            format!(r#"{{"model":"openai/gpt-4o-mini","models":["anthropic/claude-opus-4"],{hi}}}"#),
            403,
            "models",
        ),
        (format!(r#"{{"model":"openai/gpt-4o-mini","Models":["openai/cheap"],{hi}}}"#), 403, "Models"),
        (format!(r#"{{"model":"openai/gpt-4o-mini","models":[1],{hi}}}"#), 400, "models"),
        (format!(r#"{{{hi}}}"#), 400, "model"),
    ];
    for (body, status, param) in &refused {
        let reply = send(&gateway, "POST", path, &headers, Some(body.as_bytes()));
        let envelope: Value = reply.json();
        eqnice!(*status, reply.status, "{body}: {envelope}");
        eqnice!(Some(*param), envelope["error"]["param"].as_str(), "{body}: {envelope}");
    }
    eqnice!(0, openai_fake.count(), "refused bodies never reach the provider");

    let body = format!(r#"{{"MODEL":"fast", "models":["fast","openai/gpt-4o"],{hi}}}"#);
    let reply = send(&gateway, "POST", path, &headers, Some(body.as_bytes()));
    eqnice!(200, reply.status, "{}", reply.text());
    let sent = String::from_utf8(openai_fake.requests()[0].body.clone()).unwrap();
    eqnice!(
        format!(r#"{{"MODEL":"openai/gpt-4o-mini", "models":["openai/gpt-4o-mini","openai/gpt-4o"],{hi}}}"#),
        sent,
        "aliases resolved in place, the rest byte for byte"
    );
}

#[test]
fn an_openai_pool_streams_sse_byte_for_byte_and_live() {
    let (_ollama_fake, openai_fake, gateway) = two_pools();
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let body = json!({"model": "openai/gpt-4o-mini", "stream": true, "messages": hi});
    let live = Live::post(&gateway, "/openrouter/v1/chat/completions", MULTI, &body);
    eqnice!((200, Some("text/event-stream")), (live.status, live.header("content-type")));
    let lines = live.lines();
    let got: String = lines.iter().map(|(_, l)| l.as_str()).collect();
    eqnice!(openai_pieces("openai/gpt-4o-mini").concat(), got, "the SSE stream byte for byte");
    // Each piece's first line arrived SLOW after the previous piece's.
    let starts: Vec<(Instant, String)> = lines.iter().filter(|(_, l)| l.as_str() != "\n").cloned().collect();
    assert_live(&starts, "/openrouter/v1/chat/completions");
    eqjson!(body, openai_fake.requests()[0].json());
}

#[test]
fn without_a_prefix_the_first_pool_is_used() {
    let (ollama_fake, openai_fake, gateway) = two_pools();
    let reply = gateway.post_json("/v1/chat/completions", Some(MULTI), &chat_body("llama3.2", false));
    eqnice!("Hello", completion(&reply).choices[0].message.content.as_deref().unwrap_or(""));
    let sent = ollama_fake.only_request();
    eqnice!("/api/chat", sent.path, "translated for the Ollama pool");
    eqnice!(Some(bearer(KEY_A).as_str()), sent.authorization());
    eqnice!(0, openai_fake.count());
}

#[test]
fn an_openai_pool_fails_over_between_its_keys() {
    let (_ollama_fake, openai_fake, gateway) = two_pools();
    let reply = post(&gateway, "/openrouter/v1/chat/completions", Some(MULTI), &chat_body("busy", false));
    eqnice!(200, reply.status, "{}", reply.text());
    eqjson!(openai_completion("busy"), reply.json());
    let keys: Vec<Option<String>> =
        openai_fake.requests().iter().map(|r| r.header("authorization").map(String::from)).collect();
    eqnice!(
        vec![Some(bearer(OR_KEY_A)), Some(bearer(OR_KEY_B))],
        keys,
        "the rate-limited key, then the next"
    );
    gateway.wait_for_log(&["POST /openrouter/v1/chat/completions", "status=200", "attempts=2"]);
}

#[test]
fn a_pool_prefix_the_token_lacks_is_404_and_openai_pools_serve_v1_only() {
    let (ollama_fake, openai_fake, gateway) = two_pools();
    let reply = gateway.post_json("/openrouter/v1/chat/completions", Some(TOKEN), &chat_body("fast", false));
    let error = assert_envelope(&reply, 404);
    assert!(error.message.contains("openrouter"), "{error:?}");
    assert_envelope(
        &gateway.post_json("/nowhere/v1/chat/completions", Some(MULTI), &chat_body("fast", false)),
        404,
    );

    let message =
        post(&gateway, "/openrouter/api/chat", Some(MULTI), &chat_body("fast", false)).ollama_error(400);
    assert!(message.contains("/v1"), "says the pool serves /v1 only: {message}");
    eqnice!((0, 0), (ollama_fake.count(), openai_fake.count()), "nothing reached upstream");
}

// ---------------------------------------------------------------------------------------
// Bodies as sent
// ---------------------------------------------------------------------------------------

/// Whether the keys of the first `"properties"` object in `text` come in this order.
fn properties_in_order(text: &str, keys: &[&str]) -> bool {
    let Some(start) = text.find("\"properties\":") else {
        return false;
    };
    let positions: Vec<Option<usize>> =
        keys.iter().map(|key| text[start..].find(&format!("\"{key}\":"))).collect();
    positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1])
}

/// A JSON schema whose properties are deliberately not in alphabetical order: structured
/// outputs (Ollama's `format`, OpenAI's `json_schema`) generate keys in the schema's order.
const SCHEMA: &str = concat!(
    r#"{"type":"object","properties":{"name":{"type":"string"},"capital":{"type":"string"},"#,
    r#""age":{"type":"integer"}},"required":["name","capital","age"]}"#
);

#[test]
fn request_bodies_keep_their_key_order() {
    let (ollama_fake, openai_fake, gateway) = two_pools();
    let order = ["name", "capital", "age"];

    let hi = r#""messages":[{"role":"user","content":"Hi"}]"#;
    let native = format!(r#"{{"model":"llama3.2","stream":false,{hi},"format":{SCHEMA}}}"#);
    let headers = [("authorization", bearer(MULTI)), ("content-type", "application/json".to_string())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    eqnice!(200, send(&gateway, "POST", "/api/chat", &headers, Some(native.as_bytes())).status);
    let format = format!(r#"{{"type":"json_schema","json_schema":{{"name":"country","schema":{SCHEMA}}}}}"#);
    let openai = format!(r#"{{"model":"openai/gpt-4o-mini",{hi},"response_format":{format}}}"#);
    let path = "/openrouter/v1/chat/completions";
    eqnice!(200, send(&gateway, "POST", path, &headers, Some(openai.as_bytes())).status);

    assert!(
        properties_in_order(&native, &order) && properties_in_order(&openai, &order),
        "the test's own bodies"
    );
    let native_upstream = ollama_fake.only_request().raw;
    let openai_upstream = String::from_utf8_lossy(&openai_fake.requests()[0].body).into_owned();
    assert!(
        properties_in_order(&native_upstream, &order) && properties_in_order(&openai_upstream, &order),
        "the schema's properties must reach upstream in the client's order {order:?} (structured \
         outputs follow it); sent\n  {native}\n  {openai}\nupstream got\n  {native_upstream}\n  \
         {openai_upstream}"
    );
}
