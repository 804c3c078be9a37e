//! SSE chat streams: headers and framing, the chunk sequence (one id, role first, finish,
//! usage, `[DONE]`), tool calls, events that leave as soon as upstream sends them, errors
//! before and after the first byte, and a client that hangs up mid-stream.

use crate::fake::{content_line, done_line, Fake, FakeReply, Ndjson};
use crate::util::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn gateway_over(fake: &Fake) -> Gateway {
    Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url))
}

/// The chunks of a decoded stream that ends with `[DONE]`, which is checked and dropped.
#[track_caller]
fn chunks_until_done(events: Vec<Event>) -> Vec<wire::Chunk> {
    let mut chunks = Vec::new();
    let count = events.len();
    for (i, event) in events.into_iter().enumerate() {
        match event {
            Event::Chunk(chunk) => chunks.push(chunk),
            Event::Done => assert_eq!(i, count - 1, "[DONE] must be the last event"),
            Event::Error(error) => panic!("unexpected error event: {error:?}"),
        }
    }
    chunks
}

/// The delta of each chunk that has a choice.
fn deltas(chunks: &[wire::Chunk]) -> Vec<&wire::Message> {
    chunks.iter().filter_map(|c| c.choices.first()).map(|choice| &choice.delta).collect()
}

fn delta(role: Option<&str>, content: Option<&str>, reasoning_content: Option<&str>) -> wire::Message {
    wire::Message {
        role: role.map(str::to_string),
        content: content.map(str::to_string),
        reasoning_content: reasoning_content.map(str::to_string),
        ..wire::Message::default()
    }
}

#[test]
fn a_stream_is_sse_with_one_id_role_first_finish_usage_and_done() {
    // Spec §4.5: thinking, then content, then the done line with token counts.
    let lines = [
        json!({"model":"qwen3:8b","created_at":"2023-11-14T22:13:20Z","message":{"role":"assistant","content":"","thinking":"The user"},"done":false}),
        json!({"model":"qwen3:8b","created_at":"2023-11-14T22:13:21Z","message":{"role":"assistant","content":"Hi","thinking":" greets."},"done":false}),
        json!({"model":"qwen3:8b","created_at":"2023-11-14T22:13:22Z","message":{"role":"assistant","content":"!"},"done":false}),
        json!({"model":"qwen3:8b","created_at":"2023-11-14T22:13:23Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":12,"eval_count":30}),
    ];
    let fake = Fake::start(move |_| FakeReply::ndjson(&lines));
    let gateway = gateway_over(&fake);

    for include_usage in [true, false] {
        let mut body = chat_body("qwen3:8b", true);
        body["stream_options"] = json!({ "include_usage": include_usage });
        let mut conn = gateway.open_stream(&body);
        eqnice!(200, conn.status);
        eqnice!(
            (Some("text/event-stream"), Some("no-cache"), Some("no")),
            (conn.header("content-type"), conn.header("cache-control"), conn.header("x-accel-buffering"))
        );
        let chunks = chunks_until_done(decode_events(&conn.events()));

        let first = &chunks[0];
        assert!(first.id.starts_with("chatcmpl-"), "id {}", first.id);
        for chunk in &chunks {
            eqnice!(
                (first.id.as_str(), 1_700_000_000, "qwen3:8b", "fp_ollama"),
                (chunk.id.as_str(), chunk.created, chunk.model.as_str(), chunk.system_fingerprint.as_str()),
                "every chunk carries the same id and the first line's created"
            );
        }
        let expected = [
            delta(Some("assistant"), Some(""), Some("The user")),
            delta(None, None, Some(" greets.")),
            delta(None, Some("Hi"), None),
            delta(None, Some("!"), None),
            wire::Message::default(),
        ];
        eqnice!(expected.iter().collect::<Vec<_>>(), deltas(&chunks), "include_usage {include_usage}");
        let finish_reasons: Vec<Option<&str>> =
            chunks.iter().filter_map(|c| c.choices.first()).map(|c| c.finish_reason.as_deref()).collect();
        eqnice!(vec![None, None, None, None, Some("stop")], finish_reasons);

        let usage_chunks: Vec<&wire::Chunk> = chunks.iter().filter(|c| c.usage.is_some()).collect();
        if include_usage {
            eqnice!(
                chunks.len() - 1,
                chunks.iter().position(|c| c.usage.is_some()).unwrap(),
                "usage comes last"
            );
            eqnice!(1, usage_chunks.len());
            assert!(usage_chunks[0].choices.is_empty(), "the usage chunk has no choices");
            eqnice!(
                Some(&wire::Usage {
                    prompt_tokens: 12,
                    completion_tokens: 30,
                    total_tokens: 42,
                    prompt_tokens_details: None
                }),
                usage_chunks[0].usage.as_ref()
            );
        } else {
            eqnice!(0, usage_chunks.len(), "no usage chunk unless stream_options.include_usage");
        }
    }

    for upstream in fake.requests() {
        eqnice!(("/api/chat", Some(true)), (upstream.path.as_str(), upstream.body()["stream"].as_bool()));
    }
}

#[test]
fn tool_calls_in_a_stream_get_running_indices_and_finish_as_tool_calls() {
    let call_line = |id: Option<&str>, name: &str, arguments: Value, done: bool| {
        let mut call = json!({"function": {"name": name, "arguments": arguments}});
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        let mut line = json!({
            "model": "llama3.2", "created_at": "2023-11-14T22:13:20Z",
            "message": {"role": "assistant", "content": "", "tool_calls": [call]},
            "done": done,
        });
        if done {
            line["done_reason"] = json!("stop");
        }
        line
    };
    let lines = [
        call_line(Some("call_k3b9x2q1"), "get_weather", json!({"city": "Tokyo"}), false),
        call_line(None, "get_time", json!({"zone": "JST"}), false),
        call_line(None, "get_news", json!({}), true),
    ];
    let fake = Fake::start(move |_| FakeReply::ndjson(&lines));
    let gateway = gateway_over(&fake);
    let chunks = chunks_until_done(decode_events(&gateway.stream(
        "/v1/chat/completions",
        Some(TOKEN),
        &chat_body("m", true),
    )));

    let calls: Vec<&wire::ToolCall> =
        deltas(&chunks).into_iter().filter_map(|d| d.tool_calls.as_ref()).flatten().collect();
    let got: Vec<(Option<u32>, &str, &str, Value)> = calls
        .iter()
        .map(|c| {
            (
                c.index,
                c.kind.as_str(),
                c.function.name.as_str(),
                serde_json::from_str(&c.function.arguments).unwrap(),
            )
        })
        .collect();
    eqnice!(
        vec![
            (Some(0), "function", "get_weather", json!({"city": "Tokyo"})),
            (Some(1), "function", "get_time", json!({"zone": "JST"})),
            (Some(2), "function", "get_news", json!({})),
        ],
        got,
        "one call per line, indices counted over the stream, the done line's call included"
    );
    eqnice!("call_k3b9x2q1", calls[0].id);
    for call in &calls[1..] {
        assert!(call.id.starts_with("call_") && call.id.len() > 5, "synthesized id {:?}", call.id);
    }
    assert_ne!(calls[1].id, calls[2].id, "synthesized ids differ");
    let last = chunks.last().unwrap();
    eqnice!(Some("tool_calls"), last.choices[0].finish_reason.as_deref());
}

#[test]
fn events_reach_the_client_as_upstream_sends_them() {
    const GAP: Duration = Duration::from_millis(300);
    let lines: Vec<String> = ["one", "two", "three", "four"]
        .iter()
        .map(|word| content_line(word).to_string())
        .chain([done_line("stop", 1, 4).to_string()])
        .collect();
    let fake =
        Fake::start(move |_| FakeReply::Ndjson(Ndjson { lines: lines.clone(), delay: GAP, gate: None }));
    let gateway = gateway_over(&fake);
    let events = gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("m", true));
    let decoded = decode_events(&events);
    let content_times: Vec<Instant> = events
        .iter()
        .zip(&decoded)
        .filter(|(_, event)| {
            matches!(event, Event::Chunk(c) if c.choices.first().is_some_and(|c| c.delta.content.is_some()))
        })
        .map(|((at, _), _)| *at)
        .collect();
    eqnice!(4, content_times.len(), "events: {events:?}");
    let gaps: Vec<Duration> = content_times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_millis(200)),
        "upstream lines 300 ms apart must reach the client as separate, spaced events, not batched; gaps {gaps:?}"
    );
    let end = events.last().unwrap().0;
    assert!(
        end - content_times[0] >= Duration::from_millis(900),
        "the first event must arrive long before the stream ends, got {:?} before",
        end - content_times[0]
    );
}

#[test]
fn an_upstream_error_before_the_first_byte_is_a_plain_http_error() {
    let fake = Fake::start(|_| FakeReply::error(404, "model 'x' not found"));
    let gateway = gateway_over(&fake);
    let reply = gateway.open_stream(&chat_body("x", true)).into_reply();
    let error = assert_envelope(&reply, 404);
    eqnice!("model 'x' not found", error.message);
    eqnice!(Some("model_not_found"), error.code.as_deref());
}

#[test]
fn an_upstream_failure_mid_stream_ends_it_with_one_error_event() {
    // (model, upstream lines after a first content line, text the error must contain)
    let cases: [(&str, Vec<String>, &str); 4] = [
        ("error-line", vec![json!({"error": "boom"}).to_string()], "boom"),
        (
            "error-then-more",
            vec![json!({"error": "boom again"}).to_string(), content_line("never sent").to_string()],
            "boom again",
        ),
        ("garbage", vec!["this is not json".to_string()], ""),
        ("eof-before-done", vec![], ""),
    ];
    let scripted: Vec<(&str, Vec<String>)> =
        cases.iter().map(|(model, rest, _)| (*model, rest.clone())).collect();
    let fake = crate::fake::breaking_streams(&scripted);
    let gateway = gateway_over(&fake);

    for (model, _, needle) in &cases {
        let events =
            decode_events(&gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body(model, true)));
        let summary = format!("{model}: {events:#?}");
        eqnice!(2, events.len(), "one content chunk, then one error event, then nothing; {summary}");
        match &events[0] {
            Event::Chunk(chunk) => {
                eqnice!(Some("Hel"), chunk.choices[0].delta.content.as_deref(), "{summary}")
            }
            other => panic!("expected the content chunk first, got {other:?}; {summary}"),
        }
        match &events[1] {
            Event::Error(error) => {
                assert!(error.message.contains(needle), "the error names upstream's text; {summary}");
                eqnice!("api_error", error.kind, "{summary}");
            }
            other => panic!("expected a final error event, got {other:?}; {summary}"),
        }
    }
}

#[test]
fn a_client_that_hangs_up_closes_the_upstream_stream() {
    let lines: Vec<String> = (0..100).map(|i| content_line(&format!("token{i} ")).to_string()).collect();
    let fake = Fake::start(move |_| {
        FakeReply::Ndjson(Ndjson { lines: lines.clone(), delay: Duration::from_millis(50), gate: None })
    });
    let gateway = gateway_over(&fake);
    let mut conn = gateway.open_stream(&chat_body("m", true));
    eqnice!(200, conn.status);
    assert!(conn.next_event().is_some(), "a first event");
    drop(conn);

    wait_until(PATIENCE, "the fake sees its upstream connection closed", || {
        fake.streams().first().is_some_and(|stats| stats.failed())
    });
    let written = fake.streams()[0].written();
    assert!(written < 30, "the gateway kept reading {written} of 100 lines after the client left");
    gateway.wait_for_log(&["/v1/chat/completions", "status=200"]);
}

#[test]
fn an_upstream_that_goes_silent_mid_stream_ends_it_with_an_error_event() {
    let lines = vec![
        content_line("Hel").to_string(),
        content_line("lo").to_string(),
        done_line("stop", 1, 2).to_string(),
    ];
    let fake = Fake::start(move |_| {
        FakeReply::Ndjson(Ndjson { lines: lines.clone(), delay: Duration::from_secs(3), gate: None })
    });
    let config = format!("[upstream]\nidle_timeout_secs = 1\n{}", alice());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let events = decode_events(&gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("m", true)));
    let summary = format!("{events:#?}");
    eqnice!(2, events.len(), "one content chunk, then one error event; {summary}");
    match &events[1] {
        Event::Error(error) => {
            assert!(error.message.contains("idle_timeout_secs"), "the error names the setting: {summary}")
        }
        other => panic!("expected a final error event, got {other:?}"),
    }
}
