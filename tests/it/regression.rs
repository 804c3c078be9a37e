//! Bugs found in review, each pinned by the test that would have caught it.

use crate::fake::{chat_answer, content_line, done_line, healthy, Fake, FakeReply, Ndjson};
use crate::util::{alice, chat_body, wait_until, Gateway, SseConn, KEY_A, KEY_B, PATIENCE, TOKEN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn gateway_over(fake: &Fake, config_extra: &str) -> Gateway {
    Gateway::start(&format!("{config_extra}\n{}", alice()), &format!("{}|{KEY_A}\n", fake.url))
}

fn connect(gateway: &Gateway) -> TcpStream {
    let socket = TcpStream::connect(&gateway.addr).expect("connect to the gateway");
    socket.set_read_timeout(Some(PATIENCE)).expect("set a read timeout");
    socket
}

/// Everything the gateway sends until it closes the connection.
fn read_to_close(socket: &mut TcpStream) -> String {
    let mut text = Vec::new();
    let _ = socket.read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Bytes after an oversized body must never be served as a request of their own. Before the
/// fix, a chunked body over `max_body_bytes` was left in the socket, and the request
/// written after it was parsed and served (request smuggling).
#[test]
fn bytes_after_an_oversized_chunked_body_are_not_a_request() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "max_body_bytes = 2048");
    let mut socket = connect(&gateway);
    let chunk = "x".repeat(3000);
    let smuggled = "GET /smuggled-chunked HTTP/1.1\r\nHost: x\r\n\r\n";
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{smuggled}",
        chunk.len()
    );
    socket.write_all(request.as_bytes()).expect("send");
    // Done sending, as a client that read `Connection: close` would be.
    socket.shutdown(std::net::Shutdown::Write).expect("half-close");
    let answer = read_to_close(&mut socket);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer, then the connection closes: {answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    gateway.wait_for_log(&["status=413"]);
    assert!(!gateway.logs().contains("/smuggled"), "{}", gateway.logs());
    assert_eq!(fake.count(), 0);
}

/// The same with a Content-Length body over the limit followed by a request.
#[test]
fn bytes_after_an_oversized_fixed_body_are_not_a_request() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "max_body_bytes = 2048");
    let mut socket = connect(&gateway);
    let body = "y".repeat(3000);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\n\r\n{body}GET /smuggled-fixed HTTP/1.1\r\nHost: x\r\n\r\n",
        body.len()
    );
    socket.write_all(request.as_bytes()).expect("send");
    socket.shutdown(std::net::Shutdown::Write).expect("half-close");
    let answer = read_to_close(&mut socket);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    gateway.wait_for_log(&["status=413"]);
    assert!(!gateway.logs().contains("/smuggled"), "{}", gateway.logs());
}

/// A client without a token must not be able to hold a worker by starting a body and never
/// finishing it: the token is checked from the headers, before the body is read.
#[test]
fn a_stalled_upload_without_a_token_does_not_hold_a_worker() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "workers = 1\nqueue_size = 0");
    let mut stalled = connect(&gateway);
    stalled
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"mod")
        .expect("send a head and a little body");
    let mut status_line = String::new();
    BufReader::new(&stalled).read_line(&mut status_line).expect("an answer without the body");
    assert!(status_line.starts_with("HTTP/1.1 401"), "{status_line:?}");
    // The one worker is free: a real request goes through while the stalled one is open.
    let reply = gateway.chat(&chat_body("m", false));
    assert_eq!(reply.status, 200, "{}", reply.text);
    drop(stalled);
}

/// An `Expect: 100-continue` request over the limit gets its 413 without the gateway waiting
/// for a body it told the client not to send.
#[test]
fn expect_continue_over_the_limit_is_answered_at_once() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "max_body_bytes = 2048\nworkers = 1\nqueue_size = 0");
    let mut socket = connect(&gateway);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Expect: 100-continue\r\nContent-Length: 100000\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).expect("send the head");
    let mut status_line = String::new();
    BufReader::new(&socket).read_line(&mut status_line).expect("an answer");
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line:?}");
    drop(socket);
    let reply = gateway.chat(&chat_body("m", false));
    assert_eq!(reply.status, 200, "the only worker is free again: {}", reply.text);
}

/// An HTTP/1.0 client asking for keep-alive gets a stream that ends: with no chunked
/// encoding in HTTP/1.0, the end of the body is the end of the connection.
#[test]
fn an_http10_keep_alive_stream_ends() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let mut socket = connect(&gateway);
    let body = chat_body("m", true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).expect("send");
    let started = Instant::now();
    let answer = read_to_close(&mut socket);
    assert!(started.elapsed() < Duration::from_secs(5), "the connection closed after the stream");
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.trim_end().ends_with("data: [DONE]"), "{answer}");
}

/// An error as the first line of a 200 stream is a failed attempt: nothing has reached the
/// client yet, so the next key is tried.
#[test]
fn an_error_as_the_first_stream_line_fails_over() {
    let fake = Fake::start(|recorded| {
        if recorded.authorization() == Some(&format!("Bearer {KEY_A}")) {
            return FakeReply::Ndjson(Ndjson {
                lines: vec![r#"{"error":"model runner has unexpectedly stopped"}"#.to_string()],
                delay: Duration::ZERO,
                gate: None,
            });
        }
        FakeReply::ndjson(&[content_line("fine"), done_line("stop", 1, 1)])
    });
    let keys = format!("{url}|{KEY_A}\n{url}|{KEY_B}\n", url = fake.url);
    let gateway = Gateway::start(&format!("{}\n[upstream]\nstrategy = \"round-robin\"", alice()), &keys);
    // Round-robin starts each request at the next key: after at most two requests one has
    // started at KEY_A, and every stream must still succeed.
    for _ in 0..2 {
        let events = gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("m", true));
        let text: Vec<&str> = events.iter().map(|(_, data)| data.as_str()).collect();
        assert!(text.iter().any(|d| d.contains("\"fine\"")), "{text:?}");
        assert_eq!(text.last(), Some(&"[DONE]"), "{text:?}");
    }
    let tried_a =
        fake.requests().iter().filter(|r| r.authorization() == Some(&format!("Bearer {KEY_A}"))).count();
    assert_eq!(tried_a, 1, "KEY_A was tried once and failed over");
}

/// A header line without end must not grow without bound; the gateway stays up.
#[test]
fn an_endless_header_line_is_refused() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let mut socket = connect(&gateway);
    let mut line = b"GET /health HTTP/1.1\r\nX-Long: ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 64 * 1024));
    // The gateway may close before all of it is written; either way it must not accept it.
    let _ = socket.write_all(&line);
    let answer = read_to_close(&mut socket);
    assert!(!answer.contains("200 OK"), "{answer}");
    wait_until(PATIENCE, "the gateway still answers", || gateway.get("/health").status == 200);
}

/// Timeouts in the config are bounded: a huge one used to pass validation and then make every
/// request panic on an overflowing deadline.
#[test]
fn an_absurd_timeout_is_a_config_error() {
    let dir = crate::util::TempDir::new();
    let config = dir
        .write("config.toml", &format!("{}\n[upstream]\nidle_timeout_secs = 9223372036854775807\n", alice()));
    dir.write("keys.txt", "http://127.0.0.1:9\n");
    let out = crate::util::run_cli(&["serve", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("idle_timeout_secs") && out.stderr.contains("86400"), "{}", out.stderr);
}

/// serde_json's private `RawValue` key (the `raw_value` feature) made it parse the string
/// under it again as JSON, with a fresh nesting limit each time: twelve such levels of 120
/// arrays, 20 KB of body, overflowed a worker's stack and aborted the whole gateway. The
/// key is now refused before parsing, in the body and in tool-call arguments.
// See: the json_cost review (`api::parse_json_body`); `/api/*` bodies are parsed elsewhere.
#[test]
fn the_raw_value_key_cannot_crash_the_gateway() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let mut nested = serde_json::json!(0);
    for _ in 0..12 {
        let inner = format!("{}{nested}{}", "[".repeat(120), "]".repeat(120));
        nested = serde_json::json!({ "$serde_json::private::RawValue": inner });
    }
    let arguments = serde_json::json!({ "$serde_json::private::RawValue": "[0]" }).to_string();
    let call =
        serde_json::json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}});
    let bodies = [
        ("/v1/chat/completions", serde_json::json!({"model": "llama3.2", "messages": [], "extra": nested})),
        ("/v1/completions", serde_json::json!({"model": "llama3.2", "prompt": nested})),
        ("/v1/embeddings", serde_json::json!({"model": "all-minilm", "input": [nested]})),
        (
            "/v1/chat/completions",
            serde_json::json!({"model": "llama3.2", "messages": [{"role": "assistant", "tool_calls": [call]}]}),
        ),
    ];
    for (path, body) in bodies {
        let reply = gateway.post_json(path, Some(TOKEN), &body);
        let error = crate::util::assert_envelope(&reply, 400);
        assert!(error.message.contains("reserved key"), "{path}: {}", error.message);
        assert_eq!(gateway.get("/health").status, 200, "the gateway is still up after {path}");
    }
    assert_eq!(fake.count(), 0);
    // Native bodies are read by the gateway at the top level only: whatever they nest
    // goes upstream as written, and the gateway stays up.
    let native = [
        ("/api/chat", serde_json::json!({"model": "llama3.2", "messages": [], "extra": nested})),
        ("/api/generate", serde_json::json!({"model": "llama3.2", "prompt": "x", "options": nested})),
        ("/api/chat", nested.clone()),
    ];
    for (path, body) in native {
        let reply = gateway.post_json(path, Some(TOKEN), &body);
        assert!(reply.status < 500, "{path}: {} {}", reply.status, reply.text);
        assert_eq!(gateway.get("/health").status, 200, "the gateway is still up after {path}");
    }
}

/// Codex with `model_reasoning_effort` set sends `reasoning.effort` whatever the model; a
/// model that cannot think refuses `think` with 400, which `/v1/responses` passed on, so
/// every Codex turn failed (`/v1/messages` already asked again without thinking). Found by
/// running Codex 0.171 with `model_reasoning_effort = "high"` on llama3.2.
#[test]
fn responses_ask_again_without_thinking_when_the_model_cannot_think() {
    for stream in [false, true] {
        let fake = Fake::start(|recorded| match recorded.body().get("think") {
            Some(_) => FakeReply::error(400, "\"llama3.2\" does not support thinking"),
            None if recorded.wants_stream() => {
                FakeReply::ndjson(&[content_line("Hello"), done_line("stop", 3, 1)])
            }
            None => FakeReply::ok(chat_answer("Hello")),
        });
        let gateway = gateway_over(&fake, "");
        let body =
            json!({"model": "llama3.2", "input": "Hi", "reasoning": {"effort": "high"}, "stream": stream});
        let text = if stream {
            let mut conn = SseConn::open(&gateway.addr, "/v1/responses", Some(TOKEN), &body);
            assert_eq!(conn.status, 200);
            let sse = conn.read_body();
            let mut events = sse.lines().filter_map(|line| line.strip_prefix("data: "));
            let completed = events.find(|data| data.contains("\"type\":\"response.completed\""));
            let event: Value = serde_json::from_str(completed.unwrap_or("null")).unwrap_or_default();
            event["response"].clone()
        } else {
            let reply = gateway.post_json("/v1/responses", Some(TOKEN), &body);
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.body
        }["output"][0]["content"][0]["text"]
            .clone();
        assert_eq!(text, json!("Hello"), "stream: {stream}; logs:\n{}", gateway.logs());
        let thinks: Vec<Option<Value>> =
            fake.requests().iter().map(|r| r.body().get("think").cloned()).collect();
        assert_eq!(thinks, [Some(json!("high")), None], "stream: {stream}");
    }
}
