//! `POST /v1/messages` and `/v1/messages/count_tokens` (what Claude Code speaks) over the
//! real binary: the native body a Claude-Code-shaped request becomes, the `message` and its
//! stream (`message_start` … `message_stop`, block indexes, usage), live delivery, a stream
//! that breaks, both ways of sending the token and Anthropic's headers, every error in
//! Anthropic's envelope, the local token count, the retry without thinking, glob aliases,
//! OpenAI-compatible pools, and the aliases without `/v1`.

use crate::fake::{
    content_line, done_line, message_line, ollama, Fake, FakeReply, Gate, Ndjson, OpenOnDrop, Recorded,
};
use crate::util::named::{assert_anthropic_error, check_message, check_messages_stream};
use crate::util::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn gateway_over(fake: &Fake) -> Gateway {
    Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url))
}

/// The headers Claude Code sends besides its token.
const ANTHROPIC_HEADERS: [(&str, &str); 2] = [
    ("anthropic-version", "2023-06-01"),
    ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14,effort-2025-11-24"),
];

/// `Authorization: Bearer` [`TOKEN`] and [`ANTHROPIC_HEADERS`].
fn claude_headers(bearer: &str) -> Vec<(&str, &str)> {
    let mut headers = vec![("authorization", bearer)];
    headers.extend(ANTHROPIC_HEADERS);
    headers
}

/// `POST path` as Claude Code sends it (Bearer [`TOKEN`], Anthropic's headers); the whole
/// reply.
fn post(gateway: &Gateway, path: &str, body: &Value) -> JsonReply {
    let bearer = format!("Bearer {TOKEN}");
    gateway.post_raw(path, &claude_headers(&bearer), body.to_string().as_bytes())
}

/// A streamed [`post`]: asserts 200 and SSE, returns every named event.
fn stream(gateway: &Gateway, path: &str, body: &Value) -> Vec<Named> {
    let bearer = format!("Bearer {TOKEN}");
    let mut conn =
        SseConn::open_raw(&gateway.addr, path, &claude_headers(&bearer), body.to_string().as_bytes());
    if conn.status != 200 {
        let status = conn.status;
        panic!("stream status {status}; body: {}", conn.read_body());
    }
    eqnice!(
        (Some("text/event-stream"), Some("no-cache")),
        (conn.header("content-type"), conn.header("cache-control"))
    );
    conn.named_events()
}

/// A minimal Messages request.
fn hi(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
}

/// The input schema of the `Bash` tool.
fn bash_schema() -> Value {
    json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
           "properties": {"command": {"type": "string"}}, "required": ["command"],
           "additionalProperties": false})
}

/// A request shaped like Claude Code's follow-up after a tool call: system text blocks
/// (the billing header first, then prompts with `cache_control`), a `system` message inside
/// `messages`, an assistant turn with thinking, text and `tool_use`, the `tool_result` with
/// `cache_control`, a custom tool and a server tool, and the fields Claude Code always sends.
fn claude_request(stream: bool) -> Value {
    json!({
        "model": "llama3.2",
        "max_tokens": 32000,
        "stream": stream,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.5ea; cc_entrypoint=sdk-cli;"},
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>Be kind.</system-reminder>"},
                {"type": "text", "text": "Print a marker."},
            ]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment\nPlatform: linux"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I will run echo.", "signature": "c2lnbmF0dXJl"},
                {"type": "text", "text": "Running it."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash",
                 "input": {"command": "echo marker", "description": "Print a marker"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "marker", "is_error": false,
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Now say done."},
            ]},
        ],
        "tools": [
            {"name": "Bash", "description": "Runs a command.", "input_schema": bash_schema()},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "metadata": {"user_id": "user-1"},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    })
}

/// What [`claude_request`] must reach Ollama as (with its `stream`).
fn claude_native(stream: bool) -> Value {
    json!({
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "You are a coding agent.\nBe brief."},
            {"role": "user", "content": "<system-reminder>Be kind.</system-reminder>\nPrint a marker."},
            {"role": "system", "content": "# Environment\nPlatform: linux"},
            {"role": "assistant", "content": "Running it.", "thinking": "I will run echo.", "tool_calls": [
                {"id": "toolu_1", "function": {"name": "Bash",
                                               "arguments": {"command": "echo marker", "description": "Print a marker"}}},
            ]},
            {"role": "tool", "content": "marker", "tool_name": "Bash", "tool_call_id": "toolu_1"},
            {"role": "user", "content": "Now say done."},
        ],
        "stream": stream,
        "options": {"num_predict": 32000},
        "tools": [
            {"type": "function", "function": {"name": "Bash", "description": "Runs a command.",
                                              "parameters": bash_schema()}},
        ],
        "think": "high",
    })
}

/// The native lines of a reply that thinks, answers and calls `Bash`.
fn thinking_text_and_call_lines() -> Vec<Value> {
    vec![
        message_line(json!({"thinking": "Let me "})),
        message_line(json!({"thinking": "look."})),
        message_line(json!({"content": "Here"})),
        message_line(json!({"content": " it is."})),
        message_line(json!({"tool_calls": [{"function": {"name": "Bash", "arguments": {"command": "ls"}}}]})),
        done_line("stop", 12, 6),
    ]
}

/// The same reply as one non-streamed answer.
fn thinking_text_and_call_answer() -> Value {
    let mut answer = done_line("stop", 12, 6);
    answer["message"] = json!({
        "role": "assistant", "content": "Here it is.", "thinking": "Let me look.",
        "tool_calls": [{"function": {"name": "Bash", "arguments": {"command": "ls"}}}],
    });
    answer
}

#[test]
fn a_claude_code_request_becomes_a_native_chat_body() {
    let fake = Fake::start(|recorded| match recorded.wants_stream() {
        true => FakeReply::ndjson(&[content_line("Hi"), done_line("stop", 3, 1)]),
        false => FakeReply::ok(crate::fake::chat_answer("Hi")),
    });
    let gateway = gateway_over(&fake);
    for streamed in [true, false] {
        if streamed {
            check_messages_stream(&stream(&gateway, "/v1/messages?beta=true", &claude_request(true)));
        } else {
            let reply = post(&gateway, "/v1/messages?beta=true", &claude_request(false));
            eqnice!(200, reply.status, "{}", reply.text);
        }
        let sent = fake.requests().pop().expect("an upstream request");
        eqnice!(("POST", "/api/chat"), (sent.method.as_str(), sent.path.as_str()));
        eqjson!(
            claude_native(streamed),
            sent.body().clone(),
            "system blocks joined without the billing header, the system message kept in place, \
             tool_use as tool_calls, tool_result as a tool message, max_tokens as num_predict, the \
             effort as think, the server tool dropped"
        );
    }
}

#[test]
fn a_reply_is_a_message_with_its_blocks_stop_reason_and_usage() {
    let fake = Fake::always(200, thinking_text_and_call_answer());
    let gateway = gateway_over(&fake);
    let reply = post(&gateway, "/v1/messages", &claude_request(false));
    eqnice!(200, reply.status, "{}", reply.text);
    let message = check_message(&reply.body);
    assert!(message.id.starts_with("msg_"), "{}", message.id);
    let tool_id = reply.body["content"][2]["id"].as_str().unwrap_or("");
    assert!(tool_id.starts_with("toolu_") && tool_id.len() > 6, "a synthesized tool_use id: {}", reply.text);
    let signature = reply.body["content"][0]["signature"].as_str().unwrap_or("");
    assert!(!signature.is_empty(), "a thinking block has a signature: {}", reply.text);
    eqjson!(
        json!({
            "id": message.id, "type": "message", "role": "assistant", "model": "llama3.2",
            "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": signature},
                {"type": "text", "text": "Here it is."},
                {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": "ls"}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        }),
        reply.body
    );
}

#[test]
fn a_stream_runs_from_message_start_to_message_stop_with_indexed_blocks() {
    let fake = Fake::start(|_| FakeReply::ndjson(&thinking_text_and_call_lines()));
    let gateway = gateway_over(&fake);
    let events = stream(&gateway, "/v1/messages?beta=true", &claude_request(true));
    eqnice!(
        vec![
            "start",
            "ping",
            "block 0 thinking",
            "delta 0",
            "delta 0",
            "delta 0",
            "stop 0",
            "block 1 text",
            "delta 1",
            "delta 1",
            "stop 1",
            "block 2 tool_use",
            "delta 2",
            "stop 2",
            "message_delta tool_use",
            "message_stop",
        ],
        check_messages_stream(&events)
    );
    let start = &events[0].data["message"];
    assert!(start["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{start}");
    eqnice!((Some("llama3.2"), Some(0)), (start["model"].as_str(), start["usage"]["output_tokens"].as_u64()));
    assert!(start["usage"]["input_tokens"].as_u64() > Some(0), "message_start carries an estimate: {start}");

    // The message as an SDK accumulates it from the deltas.
    let deltas = |index: usize, key: &str| -> String {
        events
            .iter()
            .filter(|e| e.name == "content_block_delta" && e.data["index"] == json!(index))
            .filter_map(|e| e.data["delta"][key].as_str())
            .collect()
    };
    eqnice!("Let me look.", deltas(0, "thinking"));
    assert!(!deltas(0, "signature").is_empty(), "the thinking block is signed before it stops");
    eqnice!("Here it is.", deltas(1, "text"));
    let input: Value = serde_json::from_str(&deltas(2, "partial_json")).expect("the tool input is JSON");
    eqjson!(json!({"command": "ls"}), input);
    let tool = &events.iter().find(|e| e.data["content_block"]["type"] == json!("tool_use")).unwrap().data;
    eqjson!(json!("Bash"), tool["content_block"]["name"]);
    assert!(tool["content_block"]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")), "{tool}");

    let delta = &events.iter().find(|e| e.name == "message_delta").unwrap().data;
    eqjson!(
        json!({"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}),
        delta["usage"],
        "upstream's counts at the end"
    );
}

#[test]
fn events_leave_as_upstream_lines_arrive() {
    // The fake writes its first line and then waits at a gate until the client has seen
    // that line's delta: a gateway that held events back would never let the client see it.
    let gate = Gate::new();
    let held = Arc::clone(&gate);
    let fake = Fake::start(move |_| {
        let lines = [content_line("Hel"), content_line("lo"), done_line("stop", 3, 2)];
        FakeReply::Ndjson(Ndjson {
            lines: lines.iter().map(Value::to_string).collect(),
            delay: Duration::ZERO,
            gate: Some(Arc::clone(&held)),
        })
    });
    let _opens = OpenOnDrop(Arc::clone(&gate));
    let gateway = gateway_over(&fake);
    let bearer = format!("Bearer {TOKEN}");
    let body = hi("llama3.2", true).to_string();
    let mut conn =
        SseConn::open_raw(&gateway.addr, "/v1/messages", &claude_headers(&bearer), body.as_bytes());
    eqnice!(200, conn.status);
    let mut seen = Vec::new();
    let first = loop {
        let event = conn.next_named().unwrap_or_else(|| panic!("the stream ended early: {seen:?}"));
        seen.push(event.name.clone());
        if event.name == "content_block_delta" {
            break event;
        }
    };
    eqnice!(vec!["message_start", "ping", "content_block_start", "content_block_delta"], seen);
    eqnice!(Some("Hel"), first.data["delta"]["text"].as_str());
    let stats = &fake.streams()[0];
    // The fake counts a line once its write returned, which may be just after the client
    // read it: what matters is that the second line is still held at the gate.
    assert!(stats.written() <= 1, "the fake wrote {} lines before the gate", stats.written());
    assert!(!stats.completed.load(std::sync::atomic::Ordering::SeqCst), "the stream ended before the gate");
    gate.open();
    let rest = conn.named_events();
    let names: Vec<&str> = rest.iter().map(|e| e.name.as_str()).collect();
    eqnice!(vec!["content_block_delta", "content_block_stop", "message_delta", "message_stop"], names);
    eqnice!(Some("lo"), rest[0].data["delta"]["text"].as_str());
}

#[test]
fn a_stream_that_breaks_mid_way_ends_with_an_error_event() {
    // (model, upstream lines after a first content line, text the error must contain)
    let cases: [(&str, Vec<String>, &str); 3] = [
        ("error-line", vec![json!({"error": "boom"}).to_string()], "boom"),
        ("garbage", vec!["this is not json".to_string()], ""),
        ("eof-before-done", vec![], ""),
    ];
    let scripted: Vec<(&str, Vec<String>)> =
        cases.iter().map(|(model, rest, _)| (*model, rest.clone())).collect();
    let fake = crate::fake::breaking_streams(&scripted);
    let gateway = gateway_over(&fake);
    for (model, _, needle) in &cases {
        let events = stream(&gateway, "/v1/messages", &hi(model, true));
        eqnice!(
            vec!["start", "ping", "block 0 text", "delta 0", "stop 0", "error"],
            check_messages_stream(&events),
            "{model}"
        );
        let error = &events.last().unwrap().data;
        eqnice!(
            (Some("error"), Some("api_error")),
            (error["type"].as_str(), error["error"]["type"].as_str())
        );
        let message = error["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty() && message.contains(needle), "{model}: {error}");
    }
}

#[test]
fn x_api_key_and_bearer_both_work_with_anthropics_headers_and_query() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let bearer = format!("Bearer {TOKEN}");
    let with = |auth: (&'static str, &str)| {
        let mut headers: Vec<(&str, String)> = vec![(auth.0, auth.1.to_string())];
        headers.extend(ANTHROPIC_HEADERS.iter().map(|(n, v)| (*n, v.to_string())));
        headers
    };
    let cases = [
        ("x-api-key", "/v1/messages", with(("x-api-key", TOKEN))),
        ("x-api-key", "/v1/messages?beta=true", with(("x-api-key", TOKEN))),
        ("bearer", "/v1/messages?beta=true", with(("authorization", &bearer))),
        ("bearer, no anthropic headers", "/v1/messages", vec![("authorization", bearer.clone())]),
    ];
    for (what, path, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = gateway.post_raw(path, &headers, hi("llama3.2", false).to_string().as_bytes());
        eqnice!(200, reply.status, "{what} {path}: {}", reply.text);
        eqnice!(Some("Hello"), reply.body["content"][0]["text"].as_str(), "{what} {path}");
        let body = hi("llama3.2", true).to_string();
        let mut conn = SseConn::open_raw(&gateway.addr, path, &headers, body.as_bytes());
        eqnice!(200, conn.status, "{what} {path}, streamed");
        check_messages_stream(&conn.named_events());
        let reply = gateway.post_raw(
            &path.replace("/v1/messages", "/v1/messages/count_tokens"),
            &headers,
            json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]})
                .to_string()
                .as_bytes(),
        );
        eqnice!(200, reply.status, "{what} {path}, count_tokens: {}", reply.text);
    }
    let key = format!("Bearer {KEY_A}");
    for sent in fake.requests() {
        eqnice!(Some(key.as_str()), sent.authorization(), "the pool's key goes upstream");
        assert!(
            !sent.headers.iter().any(|(_, v)| v.contains(TOKEN)),
            "the client token went upstream: {sent:?}"
        );
    }
    eqnice!(8, fake.count(), "two upstream calls per case; count_tokens makes none");
}

/// The fake for [`errors_come_in_anthropics_envelope`] and the SDK: [`ollama`], plus
/// `busy` (a spent session quota, `Retry-After: 120`) and `overloaded` (a 503).
pub fn troubled(recorded: &Recorded) -> FakeReply {
    match recorded.model() {
        "busy" => FakeReply::error_with(
            429,
            "you (ka) have reached your session usage limit",
            &[("Retry-After", "120")],
        ),
        "overloaded" => FakeReply::error(503, "Server overloaded, please retry shortly"),
        _ => ollama(recorded),
    }
}

/// A request of [`errors_come_in_anthropics_envelope`] and the error it must get.
struct Refused<'a> {
    what: &'a str,
    method: &'a str,
    path: &'a str,
    /// The `Authorization` header.
    auth: Option<&'a str>,
    body: Option<Value>,
    status: u16,
    /// The error's `type`.
    kind: &'a str,
    /// Text its message must hold.
    says: &'a str,
}

#[test]
fn errors_come_in_anthropics_envelope() {
    let fake = Fake::start(troubled);
    let config = format!("max_body_bytes = 4096\n{}models = [\"llama3.2*\", \"nope\"]\n", alice());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let (good, wrong) = (format!("Bearer {TOKEN}"), "Bearer sk-not-the-token-0000000000".to_string());
    let mut no_max_tokens = hi("llama3.2", false);
    no_max_tokens.as_object_mut().unwrap().remove("max_tokens");
    let mut too_big = hi("llama3.2", false);
    too_big["messages"][0]["content"] = json!("x".repeat(5000));
    let count = json!({"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "Hi"}]});
    let post = |what, auth, body, (status, kind, says)| Refused {
        what,
        method: "POST",
        path: "/v1/messages",
        auth,
        body: Some(body),
        status,
        kind,
        says,
    };
    let forbidden = (403, "permission_error", "gpt-oss:20b");
    let not_found = (404, "not_found_error", "model 'nope' not found");
    let cases = [
        post("no token", None, hi("llama3.2", false), (401, "authentication_error", "token")),
        post("wrong token", Some(&wrong), hi("llama3.2", false), (401, "authentication_error", "token")),
        post("not allowed", Some(&good), hi("gpt-oss:20b", false), forbidden),
        post("not allowed, stream", Some(&good), hi("gpt-oss:20b", true), forbidden),
        Refused {
            what: "not allowed, count",
            path: "/v1/messages/count_tokens",
            ..post("", Some(&good), count, forbidden)
        },
        post("unknown model", Some(&good), hi("nope", false), not_found),
        post("unknown model, stream", Some(&good), hi("nope", true), not_found),
        post(
            "no max_tokens",
            Some(&good),
            no_max_tokens,
            (400, "invalid_request_error", "max_tokens is required"),
        ),
        post("over max_body_bytes", Some(&good), too_big, (413, "request_too_large", "max_body_bytes")),
        Refused {
            method: "GET",
            body: None,
            ..post("wrong method", Some(&good), json!({}), (405, "invalid_request_error", "POST"))
        },
    ];
    for Refused { what, method, path, auth, body, status, kind, says } in &cases {
        let mut headers: Vec<(&str, &str)> = ANTHROPIC_HEADERS.to_vec();
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        let body = body.as_ref().map(Value::to_string).unwrap_or_default();
        let reply = gateway.raw(method, path, &headers, body.as_bytes());
        let message = assert_anthropic_error(&reply, *status, kind);
        assert!(message.contains(says), "{what}: the message says {says:?}: {message}");
        assert!(!message.contains("sk-not-the-token"), "{what}: a token echoed: {message}");
    }
    eqnice!(2, fake.count(), "only the two requests for an unknown model went upstream");
}

#[test]
fn a_spent_pool_is_a_429_with_retry_after_in_anthropics_envelope() {
    let fake = Fake::start(troubled);
    let gateway = gateway_over(&fake);
    for (what, body, upstream_calls) in
        [("spends the pool", hi("busy", false), 1), ("finds it spent", hi("llama3.2", true), 1)]
    {
        let reply = post(&gateway, "/v1/messages", &body);
        let message = assert_anthropic_error(&reply, 429, "rate_limit_error");
        assert!(message.contains("usage limit") || message.contains("quota spent"), "{what}: {message}");
        let wait: u64 = reply.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            panic!("{what}: no Retry-After in seconds: {:?}", reply.headers);
        });
        assert!((1..=120).contains(&wait), "{what}: Retry-After {wait}, expected up to 120");
        eqnice!(upstream_calls, fake.count(), "{what}");
    }
}

#[test]
fn an_overloaded_upstream_is_a_503_overloaded_error() {
    let fake = Fake::start(troubled);
    let gateway = Gateway::with_keys(&format!("{0}|{KEY_A}\n{0}|{KEY_B}\n", fake.url));
    let reply = post(&gateway, "/v1/messages", &hi("overloaded", false));
    let message = assert_anthropic_error(&reply, 503, "overloaded_error");
    assert!(message.contains("Server overloaded") && message.contains("all 2 keys"), "{message}");
    eqnice!(2, fake.count(), "both keys were tried");
}

#[test]
fn count_tokens_is_answered_locally_and_grows_with_the_input() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let count = |body: Value| -> u64 {
        let reply = post(&gateway, "/v1/messages/count_tokens?beta=true", &body);
        eqnice!(200, reply.status, "{}", reply.text);
        let keys: Vec<&String> = reply.body.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        eqnice!(vec!["input_tokens"], keys, "{}", reply.text);
        reply.body["input_tokens"].as_u64().unwrap_or_else(|| panic!("not a count: {}", reply.text))
    };
    let short = count(json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}));
    let long = count(
        json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi there. ".repeat(100)}]}),
    );
    let mut with_tools = claude_request(false);
    with_tools.as_object_mut().unwrap().remove("max_tokens");
    let whole = count(with_tools.clone());
    with_tools.as_object_mut().unwrap().remove("tools");
    let without_tools = count(with_tools);
    assert!(short >= 1, "{short}");
    assert!(long > short + 200, "1000 more bytes of text count for about 250 tokens: {short} -> {long}");
    assert!(whole > without_tools, "tools count too: {without_tools} -> {whole}");
    eqnice!(0, fake.count(), "count_tokens never calls upstream");
}

/// A fake whose models cannot think: a body asking for thinking gets Ollama's 400.
fn cannot_think(recorded: &Recorded) -> FakeReply {
    match recorded.body().get("think") {
        Some(think) if think != &json!(false) => {
            FakeReply::error(400, &format!("\"{}\" does not support thinking", recorded.model()))
        }
        _ if recorded.model() == "bad" => FakeReply::error(400, "invalid option: num_predict"),
        _ => ollama(recorded),
    }
}

#[test]
fn a_model_that_cannot_think_is_asked_again_without_thinking() {
    let fake = Fake::start(cannot_think);
    let gateway = gateway_over(&fake);
    let mut enabled = hi("llama3.2", false);
    enabled["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let reply = post(&gateway, "/v1/messages", &enabled);
    eqnice!(200, reply.status, "{}", reply.text);
    eqnice!(
        Some("Hello"),
        check_message(&reply.body).content.first().and_then(|b| match b {
            crate::util::named::Block::Text { text } => Some(text.as_str()),
            _ => None,
        })
    );

    let mut adaptive = claude_request(true);
    adaptive["messages"] = json!([{"role": "user", "content": "Hi"}]);
    let events = stream(&gateway, "/v1/messages", &adaptive);
    eqnice!(Some(&"message_stop".to_string()), check_messages_stream(&events).last());

    let requests = fake.requests();
    eqnice!(4, requests.len(), "each request went twice");
    for (first, second, think) in
        [(&requests[0], &requests[1], json!(true)), (&requests[2], &requests[3], json!("high"))]
    {
        eqjson!(think, first.body()["think"], "asked with thinking first");
        let mut without = first.body().clone();
        without.as_object_mut().unwrap().remove("think");
        eqjson!(without, second.body().clone(), "then the same body without think");
    }

    // Thinking turned off is not refused, and another 400 is not retried.
    let mut disabled = hi("llama3.2", false);
    disabled["thinking"] = json!({"type": "disabled"});
    eqnice!(200, post(&gateway, "/v1/messages", &disabled).status);
    let mut bad = hi("bad", false);
    bad["thinking"] = json!({"type": "disabled"});
    let message = assert_anthropic_error(&post(&gateway, "/v1/messages", &bad), 400, "invalid_request_error");
    assert!(message.contains("invalid option"), "{message}");
    eqnice!(6, fake.count(), "one request each");
}

#[test]
fn glob_aliases_reach_their_target_and_replies_name_the_model_asked_for() {
    let fake = Fake::start(ollama);
    let config = format!(
        "{}models = [\"llama3.2*\", \"qwen3:*\", \"gpt-oss:*\"]\n[aliases]\n\"claude-*\" = \"llama3.2\"\n\
         \"claude-haiku-*\" = \"qwen3:8b\"\n\"claude-opus-4-1\" = \"gpt-oss:20b\"\n",
        alice()
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    // (asked for, what upstream must get): an exact name first, then the most specific glob.
    let cases = [
        ("claude-opus-4-1", "gpt-oss:20b"),
        ("claude-haiku-4-5-20251001", "qwen3:8b"),
        ("claude-sonnet-4-5-20250929", "llama3.2"),
    ];
    for (asked, target) in cases {
        let reply = post(&gateway, "/v1/messages", &hi(asked, false));
        eqnice!(200, reply.status, "{asked}: {}", reply.text);
        eqnice!(asked, check_message(&reply.body).model, "the reply names the model asked for");
        eqnice!(target, fake.requests().pop().unwrap().model(), "{asked}");

        let events = stream(&gateway, "/v1/messages", &hi(asked, true));
        check_messages_stream(&events);
        eqnice!(Some(asked), events[0].data["message"]["model"].as_str(), "{asked}, streamed");
        eqnice!(target, fake.requests().pop().unwrap().model(), "{asked}, streamed");

        let counted = post(
            &gateway,
            "/v1/messages/count_tokens",
            &json!({"model": asked, "messages": [
            {"role": "user", "content": "Hi"}]}),
        );
        eqnice!(200, counted.status, "{asked}: count_tokens through the alias: {}", counted.text);
    }
    eqnice!(6, fake.count());
}

#[test]
fn an_openai_pool_refuses_messages_in_anthropics_envelope() {
    let fake = Fake::start(ollama);
    let config = format!(
        "{}[pools.compat]\nprovider = \"openai\"\nbase_url = \"{}/v1\"\n",
        token_entry("alice", TOKEN, "compat"),
        fake.url
    );
    let gateway = Gateway::start(&config, "[compat]\nsk-compat-0123456789-secret\n");
    for streamed in [false, true] {
        let reply = post(&gateway, "/v1/messages", &hi("llama3.2", streamed));
        let message = assert_anthropic_error(&reply, 400, "invalid_request_error");
        assert!(message.contains("OpenAI-compatible") && message.contains("compat"), "{message}");
    }
    eqnice!(0, fake.count(), "nothing went upstream");
}

#[test]
fn the_aliases_without_v1_need_the_token_too() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let bearer = format!("Bearer {TOKEN}");
    let message = hi("llama3.2", false).to_string();
    let count = json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let cases = [
        ("/messages", &message),
        ("//v1//messages", &message),
        ("/messages?beta=true", &message),
        ("/messages/count_tokens", &count),
        ("//v1/messages//count_tokens/", &count),
    ];
    for (path, body) in cases {
        let reply = gateway.raw("POST", path, &ANTHROPIC_HEADERS, body.as_bytes());
        assert_anthropic_error(&reply, 401, "authentication_error");
        let mut headers = ANTHROPIC_HEADERS.to_vec();
        headers.push(("Authorization", &bearer));
        let reply = gateway.raw("POST", path, &headers, body.as_bytes());
        eqnice!(200, reply.status, "{path}: {}", reply.text);
    }
    eqnice!(3, fake.count(), "the three messages with the token went upstream");
}
