//! Non-streamed chat: what upstream receives for an OpenAI request (`POST /api/chat`,
//! `stream: false`, messages, images, options), and the `chat.completion` the client gets
//! back (content, usage, finish_reason, tool calls, thinking).

use crate::fake::{chat_answer, Fake, FakeReply, Ndjson};
use crate::util::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A 1x1 PNG, base64.
const PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

fn gateway_over(fake: &Fake) -> Gateway {
    Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url))
}

#[test]
fn request_becomes_a_native_api_chat_call() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("A red dot.")));
    let gateway = gateway_over(&fake);
    let reply = gateway.chat(&json!({
        "model": "llava",
        "max_tokens": 50,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Describe "},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}},
                {"type": "text", "text": "this."},
            ]},
        ],
    }));
    assert_eq!(reply.status, 200, "{}", reply.text);

    let upstream = fake.only_request();
    eqnice!(("POST", "/api/chat"), (upstream.method.as_str(), upstream.path.as_str()));
    let body = upstream.body();
    eqjson!(json!("llava"), body["model"]);
    eqjson!(json!(false), body["stream"], "stream must be sent explicitly: native defaults to true");
    eqjson!(
        json!([
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Describe this.", "images": [PNG]},
        ]),
        body["messages"],
        "text and image parts of one message stay one native message"
    );
    eqjson!(json!(50), body["options"]["num_predict"], "max_tokens becomes num_predict");
    eqjson!(json!(0.2), body["options"]["temperature"]);
}

#[test]
fn reply_is_a_chat_completion_with_usage() {
    let native = json!({
        "model": "llama3.2",
        "created_at": "2023-11-14T22:13:20.123Z",
        "message": {"role": "assistant", "content": "Hello! How are you today?"},
        "done": true, "done_reason": "stop",
        "total_duration": 5191566416u64, "load_duration": 2154458,
        "prompt_eval_count": 26, "prompt_eval_duration": 383809000,
        "eval_count": 298, "eval_duration": 4799921000u64,
    });
    let fake = Fake::always(200, native);
    let gateway = gateway_over(&fake);
    let completion = completion(&gateway.chat(&chat_body("llama3.2", false)));

    assert!(completion.id.starts_with("chatcmpl-"), "id {}", completion.id);
    eqnice!(1_700_000_000, completion.created, "created is upstream's created_at in Unix seconds");
    eqnice!("llama3.2", completion.model);
    eqnice!(1, completion.choices.len());
    let choice = &completion.choices[0];
    eqnice!(0, choice.index);
    eqnice!(Some("stop"), choice.finish_reason.as_deref());
    eqnice!(Some("assistant"), choice.message.role.as_deref());
    eqnice!(Some("Hello! How are you today?"), choice.message.content.as_deref());
    assert!(choice.message.reasoning_content.is_none() && choice.message.tool_calls.is_none());
    eqnice!(
        wire::Usage {
            prompt_tokens: 26,
            completion_tokens: 298,
            total_tokens: 324,
            prompt_tokens_details: None
        },
        completion.usage
    );
}

#[test]
fn finish_reason_follows_done_reason() {
    // (done_reason upstream, finish_reason expected)
    let cases = [("stop", "stop"), ("length", "length"), ("", "stop")];
    let fake = Fake::start(|recorded| {
        let mut answer = chat_answer("partial");
        answer["done_reason"] = json!(recorded.model().trim_start_matches("reason-"));
        FakeReply::ok(answer)
    });
    let gateway = gateway_over(&fake);
    for (done_reason, want) in cases {
        let completion = completion(&gateway.chat(&chat_body(&format!("reason-{done_reason}"), false)));
        eqnice!(Some(want), completion.choices[0].finish_reason.as_deref(), "done_reason {done_reason:?}");
    }
}

#[test]
fn tool_calls_get_string_arguments_and_ids() {
    let native = json!({
        "model": "llama3.2",
        "created_at": "2023-11-14T22:13:20Z",
        "message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"id": "call_k3b9x2q1", "function": {"name": "get_time", "arguments": {"zone": "JST", "h24": true}}},
        ]},
        "done": true, "done_reason": "stop", "prompt_eval_count": 169, "eval_count": 15,
    });
    let fake = Fake::always(200, native);
    let gateway = gateway_over(&fake);
    let mut body = chat_body("llama3.2", false);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);
    let completion = completion(&gateway.chat(&body));

    let choice = &completion.choices[0];
    eqnice!(Some("tool_calls"), choice.finish_reason.as_deref(), "stop with tool calls becomes tool_calls");
    let calls = choice.message.tool_calls.as_ref().expect("tool_calls");
    eqnice!(2, calls.len());
    let synthesized = &calls[0].id;
    assert!(
        synthesized.starts_with("call_") && synthesized.len() > "call_".len(),
        "an id is made up when upstream sends none, got {synthesized:?}"
    );
    eqnice!("call_k3b9x2q1", calls[1].id, "upstream's id is kept");
    let got: Vec<(&str, &str, Value)> = calls
        .iter()
        .map(|c| {
            let arguments = serde_json::from_str(&c.function.arguments).unwrap_or_else(|e| {
                panic!("arguments is not a JSON string ({e}): {:?}", c.function.arguments)
            });
            (c.kind.as_str(), c.function.name.as_str(), arguments)
        })
        .collect();
    eqnice!(
        vec![
            ("function", "get_weather", json!({"city": "Tokyo"})),
            ("function", "get_time", json!({"zone": "JST", "h24": true})),
        ],
        got
    );
    // The tools were forwarded for the model to use.
    eqjson!(body["tools"], fake.only_request().body()["tools"]);
}

#[test]
fn thinking_goes_to_the_configured_reasoning_field() {
    // (config line, expected reasoning_content, expected reasoning)
    let cases = [
        ("", Some("Let me think."), None),
        ("reasoning_field = \"reasoning_content\"", Some("Let me think."), None),
        ("reasoning_field = \"reasoning\"", None, Some("Let me think.")),
        ("reasoning_field = \"both\"", Some("Let me think."), Some("Let me think.")),
    ];
    let mut native = chat_answer("42");
    native["message"]["thinking"] = json!("Let me think.");
    let fake = Fake::always(200, native);
    for (config, reasoning_content, reasoning) in cases {
        let gateway = Gateway::start(&format!("{config}\n{}", alice()), &format!("{}|{KEY_A}\n", fake.url));
        let completion = completion(&gateway.chat(&chat_body("qwen3", false)));
        let message = &completion.choices[0].message;
        eqnice!(
            (reasoning_content, reasoning, Some("42")),
            (message.reasoning_content.as_deref(), message.reasoning.as_deref(), message.content.as_deref()),
            "config {config:?}"
        );
    }
}

#[test]
fn upstream_model_not_found_keeps_its_status() {
    let fake = Fake::start(|_| FakeReply::error(404, "model 'nope' not found"));
    let gateway = gateway_over(&fake);
    let error = assert_envelope(&gateway.chat(&chat_body("nope", false)), 404);
    eqnice!("model 'nope' not found", error.message);
    eqnice!(Some("model_not_found"), error.code.as_deref());
}

#[test]
fn an_upstream_answer_that_is_not_json_is_a_502() {
    let fake = Fake::start(|_| FakeReply::Text { status: 200, body: "<html>It works!</html>".to_string() });
    let gateway = gateway_over(&fake);
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 502);
    eqnice!("api_error", error.kind, "{}", error.message);
}

#[test]
fn an_upstream_that_does_not_answer_in_idle_timeout_is_a_504() {
    let fake = Fake::start(|_| {
        std::thread::sleep(Duration::from_secs(3));
        FakeReply::ok(chat_answer("too late"))
    });
    let config = format!("[upstream]\nidle_timeout_secs = 1\n{}", alice());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 504);
    eqnice!("api_error", error.kind, "{}", error.message);
}

#[test]
fn an_upstream_that_stalls_mid_answer_is_a_504() {
    // The head and half the JSON arrive, then nothing for longer than idle_timeout_secs.
    let fake = Fake::start(|_| {
        FakeReply::Ndjson(Ndjson {
            lines: vec![r#"{"model": "llama3.2","#.to_string(), r#""done": true}"#.to_string()],
            delay: Duration::from_secs(3),
            gate: None,
        })
    });
    let config = format!("[upstream]\nidle_timeout_secs = 1\n{}", alice());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 504);
    eqnice!("api_error", error.kind, "{}", error.message);
}

#[test]
fn the_spec_example_request_is_translated_in_full() {
    // openai-ollama.md §1.6: options, stop, response_format, an assistant tool call with
    // reasoning, and a tool result whose function name is found from the call's id.
    let fake = Fake::start(crate::fake::healthy);
    let gateway = gateway_over(&fake);
    let client = json!({
        "model": "llama3.2", "stream": true, "max_tokens": 999, "seed": 123, "stop": ["\n", "stop"],
        "temperature": 3.0, "frequency_penalty": 4.0, "presence_penalty": 5.0, "top_p": 6.0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": null, "reasoning": "Need the tool.",
             "tool_calls": [{"id": "id_abc", "type": "function", "function": {
                 "name": "get_current_weather",
                 "arguments": "{\"location\":\"Paris, France\",\"format\":\"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "id_abc", "content": "20 degrees Celsius"},
        ],
    });
    gateway.stream("/v1/chat/completions", Some(TOKEN), &client);

    let mut native = fake.only_request().body().clone();
    // Free per the spec: whether a tool call's function carries Go's zero `index`.
    if let Some(function) =
        native.pointer_mut("/messages/2/tool_calls/0/function").and_then(Value::as_object_mut)
    {
        function.remove("index");
    }
    eqjson!(
        json!({
            "model": "llama3.2", "stream": true, "format": "json",
            "options": {"num_predict": 999, "seed": 123, "stop": ["\n", "stop"], "temperature": 3.0,
                        "frequency_penalty": 4.0, "presence_penalty": 5.0, "top_p": 6.0},
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "What's the weather in Paris?"},
                {"role": "assistant", "content": "", "thinking": "Need the tool.",
                 "tool_calls": [{"id": "id_abc", "function": {"name": "get_current_weather",
                     "arguments": {"location": "Paris, France", "format": "celsius"}}}]},
                {"role": "tool", "content": "20 degrees Celsius", "tool_name": "get_current_weather",
                 "tool_call_id": "id_abc"},
            ],
        }),
        native
    );
}
