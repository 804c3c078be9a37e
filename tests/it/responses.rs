//! `POST /v1/responses` (what Codex speaks) over the real binary: the native body a
//! Codex-shaped request becomes, the `response` object and its stream (event order,
//! sequence numbers, the items `response.output_item.done` carries, usage), live delivery,
//! a stream that breaks, what a stateless gateway refuses, glob aliases, OpenAI-compatible
//! pools, and the alias without `/v1`.

use crate::fake::{content_line, done_line, message_line, ollama, Fake, FakeReply, Gate, Ndjson, OpenOnDrop};
use crate::util::named::{check_response, check_responses_stream};
use crate::util::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn gateway_over(fake: &Fake) -> Gateway {
    Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url))
}

/// `POST path` as [`TOKEN`]; the whole reply.
fn post(gateway: &Gateway, path: &str, body: &Value) -> JsonReply {
    gateway.post_json(path, Some(TOKEN), body)
}

/// A streamed `POST path` as [`TOKEN`]: asserts 200 and SSE, returns every named event.
fn stream(gateway: &Gateway, path: &str, body: &Value) -> Vec<Named> {
    let mut conn = SseConn::open(&gateway.addr, path, Some(TOKEN), body);
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

fn names(events: &[Named]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// The input schema of the `exec_command` tool.
fn exec_schema() -> Value {
    json!({"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"],
           "additionalProperties": false})
}

/// The input schema of the namespaced `spawn_agent` tool.
fn spawn_schema() -> Value {
    json!({"type": "object", "properties": {"task": {"type": "string"}}})
}

/// A request shaped like Codex's follow-up after tool calls: developer and user messages
/// of `input_text` parts, a reasoning item, a function call and its output, a call of a
/// namespaced function and its output, an assistant message; a function tool, a namespace
/// tool and the hosted `web_search`; and the fields Codex always sends. Plus
/// `instructions`, which Codex leaves out and other clients send.
fn codex_request(stream: bool) -> Value {
    json!({
        "model": "llama3.2",
        "stream": stream,
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "id": "msg_a1", "role": "developer", "content": [
                {"type": "input_text", "text": "<permissions>workspace-write</permissions>"},
                {"type": "input_text", "text": " Be careful."},
            ]},
            {"type": "message", "id": "msg_a2", "role": "user",
             "content": [{"type": "input_text", "text": "List the files."}]},
            {"type": "reasoning", "id": "rs_a3", "summary": [{"type": "summary_text", "text": "I should run ls."}],
             "encrypted_content": "b3BhcXVl"},
            {"type": "function_call", "status": "completed", "id": "fc_a4", "name": "exec_command",
             "arguments": "{\"cmd\": \"ls\"}", "call_id": "call_1"},
            {"type": "function_call_output", "id": "fco_a5", "call_id": "call_1", "output": "Cargo.toml\nsrc\n"},
            {"type": "function_call", "id": "fc_a6", "namespace": "multi_agent_v1", "name": "spawn_agent",
             "arguments": "{\"task\": \"review\"}", "call_id": "call_2"},
            {"type": "function_call_output", "call_id": "call_2", "output": "agent started"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Two entries.", "annotations": []}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks."}]},
        ],
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Runs a command.", "strict": false,
             "parameters": exec_schema()},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
                {"type": "function", "name": "spawn_agent", "description": "Starts an agent.", "strict": false,
                 "parameters": spawn_schema()},
            ]},
            {"type": "web_search", "external_web_access": false},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"summary": "auto"},
        "store": false,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "cache-key-1",
        "client_metadata": {"session_id": "session-1"},
    })
}

/// What [`codex_request`] must reach Ollama as (with its `stream`).
fn codex_native(stream: bool) -> Value {
    json!({
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {"role": "system", "content": "<permissions>workspace-write</permissions> Be careful."},
            {"role": "user", "content": "List the files."},
            {"role": "assistant", "content": "", "thinking": "I should run ls.", "tool_calls": [
                {"id": "call_1", "function": {"name": "exec_command", "arguments": {"cmd": "ls"}}},
            ]},
            {"role": "tool", "content": "Cargo.toml\nsrc\n", "tool_name": "exec_command", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_2", "function": {"name": "multi_agent_v1__spawn_agent", "arguments": {"task": "review"}}},
            ]},
            {"role": "tool", "content": "agent started", "tool_name": "multi_agent_v1__spawn_agent",
             "tool_call_id": "call_2"},
            {"role": "assistant", "content": "Two entries."},
            {"role": "user", "content": "Thanks."},
        ],
        "stream": stream,
        "options": {"temperature": 1.0},
        "tools": [
            {"type": "function", "function": {"name": "exec_command", "description": "Runs a command.",
                                              "parameters": exec_schema()}},
            {"type": "function", "function": {"name": "multi_agent_v1__spawn_agent",
                                              "description": "Starts an agent.", "parameters": spawn_schema()}},
        ],
    })
}

/// The native lines of a reply that thinks, answers and calls the namespaced function.
fn thinking_text_and_call_lines() -> Vec<Value> {
    vec![
        message_line(json!({"thinking": "Let me "})),
        message_line(json!({"thinking": "look."})),
        message_line(json!({"content": "Here"})),
        message_line(json!({"content": " it is."})),
        message_line(json!({"tool_calls": [
            {"function": {"name": "multi_agent_v1__spawn_agent", "arguments": {"task": "review"}}},
        ]})),
        done_line("stop", 12, 6),
    ]
}

/// The same reply as one non-streamed answer.
fn thinking_text_and_call_answer() -> Value {
    let mut answer = done_line("stop", 12, 6);
    answer["message"] = json!({
        "role": "assistant", "content": "Here it is.", "thinking": "Let me look.",
        "tool_calls": [{"function": {"name": "multi_agent_v1__spawn_agent", "arguments": {"task": "review"}}}],
    });
    answer
}

/// Checks the output items of the reply above, whatever their ids, and that the ids are
/// distinct; returns them.
#[track_caller]
fn assert_thinking_text_and_call_output(output: &Value) -> Vec<Value> {
    let items = output.as_array().unwrap_or_else(|| panic!("output is not an array: {output}")).clone();
    eqnice!(3, items.len(), "{output}");
    let id = |i: usize| items[i]["id"].as_str().unwrap_or("").to_string();
    assert!(id(0).starts_with("rs_") && id(1).starts_with("msg_") && id(2).starts_with("fc_"), "{output}");
    let call_id = items[2]["call_id"].as_str().unwrap_or("");
    assert!(call_id.starts_with("call_") && call_id.len() > 5, "a synthesized call id: {output}");
    eqjson!(
        json!([
            {"id": id(0), "type": "reasoning", "summary": [{"type": "summary_text", "text": "Let me look."}]},
            {"id": id(1), "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Here it is.", "annotations": [], "logprobs": []}]},
            {"id": id(2), "type": "function_call", "status": "completed", "arguments": "{\"task\":\"review\"}",
             "call_id": call_id, "name": "spawn_agent", "namespace": "multi_agent_v1"},
        ]),
        Value::Array(items.clone()),
        "reasoning, message, then the call mapped back to its namespace"
    );
    items
}

#[test]
fn a_codex_request_becomes_a_native_chat_body() {
    let fake = Fake::start(|recorded| match recorded.wants_stream() {
        true => FakeReply::ndjson(&[content_line("Hi"), done_line("stop", 3, 1)]),
        false => FakeReply::ok(crate::fake::chat_answer("Hi")),
    });
    let gateway = gateway_over(&fake);
    for streamed in [true, false] {
        if streamed {
            check_responses_stream(&stream(&gateway, "/v1/responses", &codex_request(true)));
        } else {
            eqnice!(200, post(&gateway, "/v1/responses", &codex_request(false)).status);
        }
        let sent = fake.requests().pop().expect("an upstream request");
        eqnice!(("POST", "/api/chat"), (sent.method.as_str(), sent.path.as_str()));
        eqjson!(
            codex_native(streamed),
            sent.body().clone(),
            "instructions and developer text as system messages, assistant items as one turn, tool \
             outputs named after their calls, the namespace flattened, web_search dropped"
        );
    }
}

#[test]
fn a_reply_is_a_response_object_with_its_items_and_usage() {
    let fake = Fake::always(200, thinking_text_and_call_answer());
    let gateway = gateway_over(&fake);
    let reply = post(&gateway, "/v1/responses", &codex_request(false));
    eqnice!(200, reply.status, "{}", reply.text);
    let response = check_response(&reply.body);
    assert!(response.id.starts_with("resp_"), "{}", response.id);
    eqnice!(("completed", "llama3.2"), (response.status.as_str(), response.model.as_str()));
    assert_thinking_text_and_call_output(&reply.body["output"]);
    eqjson!(
        json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 6,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18}),
        reply.body["usage"]
    );
    eqjson!(codex_request(false)["tools"], reply.body["tools"], "the tools are echoed as sent");
    eqjson!(json!({"effort": null, "summary": "auto"}), reply.body["reasoning"]);
    eqjson!(json!("cache-key-1"), reply.body["prompt_cache_key"]);
}

#[test]
fn a_stream_has_its_events_in_order_and_ends_with_the_completed_response() {
    let fake = Fake::start(|_| FakeReply::ndjson(&thinking_text_and_call_lines()));
    let gateway = gateway_over(&fake);
    let events = stream(&gateway, "/v1/responses", &codex_request(true));
    let completed = check_responses_stream(&events);
    eqnice!(
        vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ],
        names(&events)
    );
    // Codex reads the final message and each call from output_item.done alone.
    let done: Vec<Value> = events
        .iter()
        .filter(|e| e.name == "response.output_item.done")
        .map(|e| e.data["item"].clone())
        .collect();
    let items = assert_thinking_text_and_call_output(&Value::Array(done));
    eqjson!(Value::Array(items), completed["output"], "response.completed holds the same items");
    eqnice!(Some("completed"), completed["status"].as_str());
    eqjson!(
        json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 6,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 18}),
        completed["usage"]
    );
    let deltas: String = events
        .iter()
        .filter(|e| e.name == "response.output_text.delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    eqnice!("Here it is.", deltas);
    let added = events.iter().find(|e| e.name == "response.output_item.added").unwrap();
    eqjson!(json!([]), events[0].data["response"]["output"], "created has no output yet");
    assert!(added.data["output_index"] == json!(0), "{}", added.data);
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
    let mut conn = SseConn::open(
        &gateway.addr,
        "/v1/responses",
        Some(TOKEN),
        &json!({
        "model": "llama3.2", "stream": true, "input": "Hi"}),
    );
    eqnice!(200, conn.status);
    let mut seen = Vec::new();
    let first = loop {
        let event = conn.next_named().unwrap_or_else(|| panic!("the stream ended early: {seen:?}"));
        seen.push(event.name.clone());
        if event.name == "response.output_text.delta" {
            break event;
        }
    };
    eqnice!(Some("Hel"), first.data["delta"].as_str());
    let stats = &fake.streams()[0];
    // The fake counts a line once its write returned, which may be just after the client
    // read it: what matters is that the second line is still held at the gate.
    assert!(stats.written() <= 1, "the fake wrote {} lines before the gate", stats.written());
    assert!(!stats.completed.load(std::sync::atomic::Ordering::SeqCst), "the stream ended before the gate");
    gate.open();
    let rest = conn.named_events();
    let text: String = rest
        .iter()
        .filter(|e| e.name == "response.output_text.delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    eqnice!("lo", text, "the second line's delta came after the gate opened");
    eqnice!(Some("response.completed"), rest.last().map(|e| e.name.as_str()));
}

#[test]
fn a_stream_that_breaks_mid_way_ends_with_response_failed() {
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
        let events =
            stream(&gateway, "/v1/responses", &json!({"model": model, "stream": true, "input": "Hi"}));
        let failed = check_responses_stream(&events);
        eqnice!(
            vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.failed",
            ],
            names(&events),
            "{model}"
        );
        eqnice!(Some("failed"), failed["status"].as_str(), "{model}");
        eqnice!(Some("server_error"), failed["error"]["code"].as_str(), "{model}");
        let message = failed["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty() && message.contains(needle), "{model}: {failed}");
    }
}

#[test]
fn an_upstream_error_before_the_first_byte_is_a_plain_http_error() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    for streamed in [false, true] {
        let reply =
            post(&gateway, "/v1/responses", &json!({"model": "nope", "stream": streamed, "input": "Hi"}));
        let error = assert_envelope(&reply, 404);
        eqnice!(
            ("model 'nope' not found", Some("model_not_found")),
            (error.message.as_str(), error.code.as_deref())
        );
    }
}

#[test]
fn stored_state_is_refused_naming_the_field() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let cases = [
        ("previous_response_id", json!("resp_abc123")),
        ("conversation", json!("conv_abc123")),
        ("background", json!(true)),
    ];
    for (field, value) in cases {
        let mut body = json!({"model": "llama3.2", "input": "Hi"});
        body[field] = value;
        let error = assert_envelope(&post(&gateway, "/v1/responses", &body), 400);
        eqnice!(("invalid_request_error", Some(field)), (error.kind.as_str(), error.param.as_deref()));
        assert!(error.message.contains("stateless"), "says why: {}", error.message);
    }
    eqnice!(0, fake.count(), "nothing went upstream");
}

#[test]
fn glob_aliases_reach_their_target_and_replies_name_the_model_asked_for() {
    let fake = Fake::start(ollama);
    let config = format!(
        "{}[aliases]\n\"gpt-5*\" = \"qwen3:8b\"\n\"gpt-5-codex*\" = \"gpt-oss:20b\"\n\"gpt-5.1\" = \"llama3.2\"\n",
        alice()
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    // (asked for, what upstream must get): an exact name first, then the most specific glob.
    let cases = [("gpt-5.1", "llama3.2"), ("gpt-5-codex-mini", "gpt-oss:20b"), ("gpt-5-nano", "qwen3:8b")];
    for (asked, target) in cases {
        let reply = post(&gateway, "/v1/responses", &json!({"model": asked, "input": "Hi"}));
        eqnice!(200, reply.status, "{asked}: {}", reply.text);
        eqnice!(Some(asked), reply.body["model"].as_str(), "the reply names the model asked for");
        eqnice!(target, fake.requests().pop().unwrap().model(), "{asked}");

        let events =
            stream(&gateway, "/v1/responses", &json!({"model": asked, "stream": true, "input": "Hi"}));
        let completed = check_responses_stream(&events);
        eqnice!(Some(asked), completed["model"].as_str(), "{asked}, streamed");
        eqnice!(target, fake.requests().pop().unwrap().model(), "{asked}, streamed");
    }
}

#[test]
fn the_alias_without_v1_needs_the_token_too() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let body = json!({"model": "llama3.2", "input": "Hi"}).to_string();
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/responses", "//v1//responses", "/v1/responses/"] {
        let reply = gateway.raw("POST", path, &[], body.as_bytes());
        let error = assert_envelope(&reply, 401);
        eqnice!(Some("invalid_api_key"), error.code.as_deref(), "{path}");
        let reply = gateway.raw("POST", path, &[("Authorization", &bearer)], body.as_bytes());
        eqnice!(200, reply.status, "{path}: {}", reply.text);
        eqnice!(Some("Hello"), reply.body["output"][0]["content"][0]["text"].as_str(), "{path}");
    }
    eqnice!(3, fake.count(), "only the requests with the token went upstream");
}

/// The key of the OpenAI-compatible pool in [`an_openai_pool_passes_responses_through_unchanged`].
const COMPAT_KEY: &str = "sk-compat-0123456789-secret";

#[test]
fn an_openai_pool_passes_responses_through_unchanged() {
    // What an OpenAI-compatible upstream answers: a response object, or its SSE stream.
    let answer = json!({"id": "resp_upstream", "object": "response", "status": "completed", "model": "gpt-5-mini",
                        "output": [], "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}});
    let sse = vec![
        "event: response.created".to_string(),
        format!("data: {}", json!({"type": "response.created", "sequence_number": 0, "response": answer})),
        String::new(),
        "event: response.completed".to_string(),
        format!("data: {}", json!({"type": "response.completed", "sequence_number": 1, "response": answer})),
        String::new(),
    ];
    let (whole, pieces) = (answer.clone(), sse.clone());
    let fake = Fake::start(move |recorded| match (recorded.path.as_str(), recorded.wants_stream()) {
        ("/v1/responses", false) => FakeReply::ok(whole.clone()),
        ("/v1/responses", true) => {
            FakeReply::Ndjson(Ndjson { lines: pieces.clone(), delay: Duration::ZERO, gate: None })
        }
        _ => FakeReply::error(404, "no such route"),
    });
    let config = format!(
        "{}[aliases]\n\"gpt-5*\" = \"openai/gpt-5-mini\"\n\
         [pools.compat]\nprovider = \"openai\"\nbase_url = \"{}/v1\"\n",
        token_entry("alice", TOKEN, "compat"),
        fake.url
    );
    let gateway = Gateway::start(&config, &format!("[compat]\n{COMPAT_KEY}\n"));

    // Fields the translator would refuse or drop (previous_response_id, a hosted tool) pass.
    let sent = concat!(
        r#"{"model":"gpt-5-codex", "input":[{"role":"user","content":"Hi"}], "#,
        r#""previous_response_id":"resp_1", "tools":[{"type":"web_search"}], "store":true}"#
    );
    let bearer = format!("Bearer {TOKEN}");
    let headers = [("authorization", bearer.as_str())];
    let reply = gateway.post_raw("/v1/responses", &headers, sent.as_bytes());
    eqnice!(200, reply.status, "{}", reply.text);
    eqjson!(answer, reply.body, "the upstream's answer, untranslated");
    let upstream = fake.only_request();
    eqnice!(("POST", "/v1/responses"), (upstream.method.as_str(), upstream.path.as_str()));
    eqnice!(
        sent.replace("\"gpt-5-codex\"", "\"openai/gpt-5-mini\""),
        upstream.raw,
        "byte for byte, the alias resolved"
    );
    let key = format!("Bearer {COMPAT_KEY}");
    eqnice!(Some(key.as_str()), upstream.authorization());

    let streamed = sent.replace("\"store\":true", "\"stream\":true");
    let reply = gateway.post_raw("/v1/responses", &headers, streamed.as_bytes());
    eqnice!(200, reply.status, "{}", reply.text);
    let want: String = sse.iter().map(|line| format!("{line}\n")).collect();
    eqnice!(want, reply.text, "the upstream's stream, byte for byte");
}
