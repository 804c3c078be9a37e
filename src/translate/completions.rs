//! Legacy completions: OpenAI `/v1/completions` <-> Ollama `/api/generate`.
//!
//! [`to_ollama`] validates an OpenAI completions request and builds the native
//! `/api/generate` body; [`from_ollama`] turns a native non-streaming reply into a
//! `text_completion` object; and [`CompletionStream`] turns native NDJSON lines, one at a
//! time, into `text_completion` SSE chunks. The rules are those of Ollama's own `/v1` layer
//! plus the gateway's extensions (spec `openai-ollama.md` §5, and §11 items 6, 7, 9 and 11).
//!
//! In scope: request validation with errors that name the field at fault, option mapping,
//! `finish_reason`, usage, the SSE chunks, and the error event that ends a broken stream.
//! Out of scope: IO, the clock and ids (callers pass `created_fallback` and a `cmpl-…` id in
//! the [`ReplyContext`]), model routing and keys. Native `thinking` text and logprobs are
//! not returned, as in Ollama's `/v1/completions`.

use super::fields::{
    describe, expected, field, include_usage, object_and_model, opt_bool, opt_integer, opt_number, opt_str,
};
use super::reply::{error_event, usage_json, ReplyContext, StreamHead, FINGERPRINT};
use super::stream::{ending_field, Ending, Events};
use crate::error::ApiError;
use serde_json::{json, Map, Value};

/// Ollama's text for a bad `stop`, kept as the start of ours.
const INVALID_STOP: &str = "invalid type for 'stop' field";

// ---------------------------------------------------------------------------------------
// Request: OpenAI -> native
// ---------------------------------------------------------------------------------------

/// A validated completions request, translated for upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// The body for `POST /api/generate`.
    pub native: Value,
    /// The model asked for, as sent by the client.
    pub model: String,
    /// The client's `stream` (default `false`); also sent explicitly upstream.
    pub stream: bool,
    /// `stream_options.include_usage`: whether a stream ends with a usage chunk.
    pub include_usage: bool,
}

/// Validates an OpenAI completions request and translates it into a native
/// `/api/generate` body.
///
/// Wrong types give a 400 whose `param` names the field at fault. Unknown fields (and
/// `echo`, `best_of`, `n`, `logit_bias`, `user`) are ignored; JSON `null` counts as absent.
pub fn to_ollama(body: &Value) -> Result<CompletionRequest, ApiError> {
    let (req, model) = object_and_model(body, "the name of a model, such as \"llama3.2\"")?;
    let prompt = prompt(req)?;
    let stream = opt_bool(req, "", "stream")?.unwrap_or(false);
    let include_usage = include_usage(req)?;

    let mut native = Map::new();
    native.insert("model".into(), Value::String(model.clone()));
    native.insert("prompt".into(), Value::String(prompt));
    if let Some(suffix) = opt_str(req, "", "suffix")? {
        native.insert("suffix".into(), suffix.into());
    }
    native.insert("stream".into(), Value::Bool(stream));
    native.insert("options".into(), Value::Object(options(req)?));
    match field(req, "logprobs") {
        None => {}
        Some(Value::Number(n)) if n.is_u64() => {
            if let Some(top) = n.as_u64().filter(|top| *top > 0) {
                native.insert("logprobs".into(), Value::Bool(true));
                native.insert("top_logprobs".into(), top.into());
            }
        }
        other => {
            let what = "a non-negative integer: how many most likely tokens to report per position";
            return Err(expected("logprobs", what, other));
        }
    }
    if let Some(keep_alive) = field(req, "keep_alive") {
        native.insert("keep_alive".into(), keep_alive.clone());
    }
    Ok(CompletionRequest { native: Value::Object(native), model, stream, include_usage })
}

/// The prompt: a string, or an array holding exactly one string.
fn prompt(req: &Map<String, Value>) -> Result<String, ApiError> {
    let list = match field(req, "prompt") {
        Some(Value::String(prompt)) => return Ok(prompt.clone()),
        Some(Value::Array(list)) => list,
        other => return Err(expected("prompt", "a string such as \"Once upon a time\"", other)),
    };
    let got = match list.as_slice() {
        [Value::String(prompt)] => return Ok(prompt.clone()),
        [] => "an empty array".to_string(),
        [item] => format!("an array holding {}", describe(Some(item))),
        items => format!("an array of {} prompts", items.len()),
    };
    Err(ApiError::bad_request(
        format!(
            "prompt must be a string, or an array of exactly one string: Ollama takes one text prompt per request (send one request per prompt; token arrays are not supported), got {got}"
        ),
        Some("prompt"),
    ))
}

/// Native `options` from the sampling fields, with Ollama's defaults: `temperature` and
/// `top_p` 1.0 (an explicit `top_p` of 0 too), both penalties always sent, 0.0 by default.
fn options(req: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut options = Map::new();
    if let Some(limit) = opt_integer(req, "", "max_tokens")? {
        options.insert("num_predict".into(), limit);
    }
    options.insert("temperature".into(), opt_number(req, "temperature")?.unwrap_or(json!(1.0)));
    let top_p = opt_number(req, "top_p")?.filter(|top_p| top_p.as_f64() != Some(0.0));
    options.insert("top_p".into(), top_p.unwrap_or(json!(1.0)));
    for key in ["frequency_penalty", "presence_penalty"] {
        options.insert(key.into(), opt_number(req, key)?.unwrap_or(json!(0.0)));
    }
    if let Some(seed) = opt_integer(req, "", "seed")? {
        options.insert("seed".into(), seed);
    }
    if let Some(stop) = stop(req)? {
        options.insert("stop".into(), stop);
    }
    Ok(options)
}

/// Native `options.stop`: a string becomes a one-item array; an array must hold only
/// strings; an empty array sends nothing.
fn stop(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    match field(req, "stop") {
        None => Ok(None),
        Some(Value::String(stop)) => Ok(Some(json!([stop]))),
        Some(Value::Array(stops)) => {
            if let Some((i, item)) = stops.iter().enumerate().find(|(_, stop)| !stop.is_string()) {
                return Err(ApiError::bad_request(
                    format!("{INVALID_STOP}: stop[{i}] must be a string, got {}", describe(Some(item))),
                    Some("stop"),
                ));
            }
            Ok((!stops.is_empty()).then(|| Value::Array(stops.clone())))
        }
        other => Err(ApiError::bad_request(
            format!("{INVALID_STOP}: stop must be a string or an array of strings, got {}", describe(other)),
            Some("stop"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Reply: native -> OpenAI
// ---------------------------------------------------------------------------------------

/// Non-streaming: an upstream `/api/generate` reply (`stream:false`) as a `text_completion`.
pub fn from_ollama(native: &Value, ctx: &ReplyContext) -> Value {
    json!({
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created(native),
        "model": ctx.model(native),
        "system_fingerprint": FINGERPRINT,
        "choices": [choice(native, Some(finish_reason(native)))],
        "usage": usage_json(native),
    })
}

/// The one choice of a native object: its `response` text and the given `finish_reason`.
fn choice(native: &Value, finish_reason: Option<String>) -> Value {
    let text = native.get("response").and_then(Value::as_str).unwrap_or("");
    json!({"text": text, "index": 0, "finish_reason": finish_reason})
}

/// `done_reason`, or `"stop"` when missing or empty.
fn finish_reason(native: &Value) -> String {
    match native.get("done_reason").and_then(Value::as_str) {
        Some(reason) if !reason.is_empty() => reason.into(),
        _ => "stop".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

/// Streaming translator: native `/api/generate` NDJSON lines in, `text_completion` SSE
/// chunks out (spec §5.3), one chunk per line, with an error event when upstream fails
/// mid-stream.
#[derive(Debug)]
pub struct CompletionStream {
    head: StreamHead,
    ending: Ending,
}

impl CompletionStream {
    /// A translator for one reply.
    pub fn new(ctx: ReplyContext) -> Self {
        CompletionStream { head: StreamHead::new(ctx, "text_completion"), ending: Ending::default() }
    }
}

impl Events for CompletionStream {
    ending_field!();

    fn object(&mut self, line: &Value, done: bool, out: &mut Vec<u8>) {
        self.head.follow(line);
        let finish = done.then(|| finish_reason(line));
        self.head.write(json!([choice(line, finish)]), out);
        if done {
            self.head.finish(line, out);
        }
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        error_event(message, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::{self, eq_json, openai_error};
    use crate::translate::{Flow, LineTranslator, Usage};

    // -- helpers --------------------------------------------------------------------

    /// `{"model":"m","prompt":"hi"}` plus the given field.
    fn with(key: &str, value: Value) -> Value {
        testkit::with_field(json!({"model": "m", "prompt": "hi"}), key, value)
    }

    fn native_of(body: Value) -> Value {
        testkit::translated(to_ollama, &body).native
    }

    fn rejected(body: Value) -> ApiError {
        testkit::refused(to_ollama, &body)
    }

    /// Splits SSE output into payloads: parsed JSON, or the string `[DONE]`. Checks the
    /// framing and that no chunk has a stray field.
    fn events(out: &[u8]) -> Vec<Value> {
        testkit::openai_events::<strict::Completion>(out)
    }

    /// Runs lines through a fresh stream; returns the events, the last flow and the stream.
    fn run(ctx: ReplyContext, lines: &[&str]) -> (Vec<Value>, Flow, CompletionStream) {
        let (out, flow, stream) = testkit::run_lines(CompletionStream::new(ctx), lines);
        (events(&out), flow, stream)
    }

    /// The reply context of the tests.
    fn ctx() -> ReplyContext {
        testkit::reply_context("cmpl-58")
    }

    /// Mirror types of what clients decode, with no room for stray fields.
    mod strict {
        #![allow(dead_code)] // Fields exist to be checked by serde, not read.
        use serde::Deserialize;

        pub type Completion = crate::translate::testkit::strict::Chunk<Choice>;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Choice {
            text: String,
            index: u32,
            finish_reason: Option<String>,
        }
    }

    // -- request --------------------------------------------------------------------

    #[test]
    fn spec_5_1_upstream_body_example() {
        let body =
            json!({"model":"m","prompt":"Hello","temperature":0.8,"stop":["\n","stop"],"suffix":"suffix"});
        let req = to_ollama(&body).unwrap();
        assert_eq!((req.model.as_str(), req.stream, req.include_usage), ("m", false, false));
        eq_json(
            &req.native,
            &json!({"model":"m","prompt":"Hello","suffix":"suffix","stream":false,
             "options":{"frequency_penalty":0.0,"presence_penalty":0.0,"temperature":0.8,"top_p":1.0,"stop":["\n","stop"]}}),
        );
    }

    #[test]
    fn defaults_ignored_fields_and_keep_alive() {
        let req = to_ollama(&json!({
            "model": "m", "prompt": "hi", "stream": true, "stream_options": {"include_usage": true},
            "keep_alive": "10m", "echo": true, "best_of": 2, "n": 1, "logit_bias": {"50256": -100}, "user": "u",
            "some_future_field": {"x": 1},
        }))
        .unwrap();
        assert!(req.stream && req.include_usage);
        eq_json(
            &req.native,
            &json!({"model": "m", "prompt": "hi", "stream": true, "keep_alive": "10m",
                "options": {"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}}),
        );
        // Explicit nulls count as absent; `stream` is always sent.
        let native = native_of(json!({"model": "m", "prompt": "hi", "stream": null, "suffix": null,
            "temperature": null, "stop": null, "logprobs": null, "stream_options": null}));
        eq_json(
            &native,
            &json!({"model": "m", "prompt": "hi", "stream": false,
                "options": {"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}}),
        );
    }

    #[test]
    fn prompt_forms() {
        for (prompt, want) in
            [(json!("Hello"), "Hello"), (json!(""), ""), (json!(["Once upon"]), "Once upon")]
        {
            assert_eq!(native_of(with("prompt", prompt.clone()))["prompt"], json!(want), "{prompt}");
        }
        let cases = [
            (json!([]), "got an empty array"),
            (json!(["a", "b"]), "got an array of 2 prompts"),
            (json!([1, 2, 3]), "got an array of 3 prompts"),
            (json!([[1, 2]]), "got an array holding an array"),
            (json!([7]), "got an array holding a number"),
            (json!(5), "got a number"),
            (json!({"text": "x"}), "got an object"),
            (json!(null), "got nothing"),
        ];
        for (prompt, fragment) in cases {
            let err = rejected(with("prompt", prompt.clone()));
            assert_eq!(
                (err.status, err.kind, err.param.as_deref()),
                (400, "invalid_request_error", Some("prompt"))
            );
            assert!(err.message.starts_with("prompt must be"), "{prompt}: {}", err.message);
            assert!(err.message.contains(fragment), "{prompt}: {:?} lacks {fragment:?}", err.message);
        }
        let err = rejected(json!({"model": "m"}));
        assert_eq!(err.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn option_mapping() {
        let cases = [
            (json!({"max_tokens": 50}), json!({"num_predict": 50})),
            (json!({"max_tokens": -1}), json!({"num_predict": -1})),
            (json!({"seed": 123}), json!({"seed": 123})),
            (json!({"temperature": 0}), json!({"temperature": 0})),
            (json!({"top_p": 0}), json!({"top_p": 1.0})),
            (json!({"top_p": 0.0}), json!({"top_p": 1.0})),
            (json!({"top_p": 0.5}), json!({"top_p": 0.5})),
            (
                json!({"frequency_penalty": 1.5, "presence_penalty": -0.5}),
                json!({"frequency_penalty": 1.5, "presence_penalty": -0.5}),
            ),
            (json!({"stop": "END"}), json!({"stop": ["END"]})),
            (json!({"stop": ["a", "b"]}), json!({"stop": ["a", "b"]})),
        ];
        for (fields, want) in cases {
            let mut body = json!({"model": "m", "prompt": "hi"});
            body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            let mut options =
                json!({"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0});
            options.as_object_mut().unwrap().extend(want.as_object().unwrap().clone());
            eq_json(&native_of(body)["options"], &options);
        }
        assert_eq!(native_of(with("stop", json!([])))["options"].get("stop"), None);
    }

    #[test]
    fn logprobs_count_becomes_top_logprobs() {
        let native = native_of(with("logprobs", json!(3)));
        assert_eq!((&native["logprobs"], &native["top_logprobs"]), (&json!(true), &json!(3)));
        for off in [json!(0), json!(null)] {
            let native = native_of(with("logprobs", off.clone()));
            assert!(native.get("logprobs").is_none() && native.get("top_logprobs").is_none(), "{off}");
        }
        for bad in [json!(-1), json!(true), json!(1.5), json!("2")] {
            let err = rejected(with("logprobs", bad.clone()));
            assert_eq!((err.status, err.param.as_deref()), (400, Some("logprobs")), "{bad}");
            assert!(err.message.contains("non-negative integer"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!("hi"), None, "must be a JSON object"),
            (json!({"prompt": "hi"}), Some("model"), "model must be the name of a model"),
            (with("model", json!("")), Some("model"), "got an empty string"),
            (with("model", json!(3)), Some("model"), "got a number"),
            (with("suffix", json!(3)), Some("suffix"), "suffix must be a string"),
            (with("stream", json!("yes")), Some("stream"), "true or false"),
            (with("stream_options", json!(true)), Some("stream_options"), "an object"),
            (
                with("stream_options", json!({"include_usage": 1})),
                Some("stream_options.include_usage"),
                "true or false",
            ),
            (with("max_tokens", json!(1.5)), Some("max_tokens"), "an integer"),
            (with("temperature", json!("hot")), Some("temperature"), "a number"),
            (with("top_p", json!(true)), Some("top_p"), "a number"),
            (with("seed", json!("1")), Some("seed"), "an integer"),
            (with("frequency_penalty", json!([])), Some("frequency_penalty"), "a number"),
            (with("presence_penalty", json!({})), Some("presence_penalty"), "a number"),
            (with("stop", json!(5)), Some("stop"), "invalid type for 'stop' field: stop must be a string"),
            (
                with("stop", json!(["a", 1])),
                Some("stop"),
                "invalid type for 'stop' field: stop[1] must be a string",
            ),
            (with("stop", json!(["a", null])), Some("stop"), "invalid type for 'stop' field"),
            (with("logprobs", json!({})), Some("logprobs"), "logprobs must be a non-negative integer"),
        ];
        testkit::assert_refusals(cases, rejected);
    }

    // -- non-streaming reply -------------------------------------------------------------

    #[test]
    fn spec_5_2_non_stream_example() {
        let native = json!({"model":"m","created_at":"2023-11-14T22:13:20Z","response":"Hi there","done":true,
            "done_reason":"stop","context":[1,2,3],"prompt_eval_count":5,"eval_count":2});
        let reply = from_ollama(&native, &ctx());
        let _strict: strict::Completion = serde_json::from_value(reply.clone()).unwrap();
        eq_json(
            &reply,
            &json!({"id":"cmpl-58","object":"text_completion","created":1700000000,"model":"m","system_fingerprint":"fp_ollama",
             "choices":[{"text":"Hi there","index":0,"finish_reason":"stop"}],
             "usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}),
        );
    }

    #[test]
    fn non_stream_finish_reason_model_created_and_usage() {
        for (done_reason, want) in [
            (json!("length"), "length"),
            (json!("unload"), "unload"),
            (json!(null), "stop"),
            (json!(""), "stop"),
        ] {
            let native = json!({"model": "m", "response": "x", "done": true, "done_reason": done_reason});
            assert_eq!(from_ollama(&native, &ctx())["choices"][0]["finish_reason"], json!(want), "{native}");
        }
        // No created_at: the fallback; thinking is dropped; absent counts are zeros.
        let native = json!({"model": "real", "response": "ok", "thinking": "hmm", "done": true});
        let reply = from_ollama(&native, &ReplyContext { response_model: Some("alias".into()), ..ctx() });
        assert_eq!((&reply["created"], &reply["model"]), (&json!(42), &json!("alias")));
        eq_json(&reply["choices"], &json!([{"text": "ok", "index": 0, "finish_reason": "stop"}]));
        eq_json(&reply["usage"], &json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}));
        // Cached prompt tokens are reported as chat does.
        let native = json!({"model": "m", "response": "", "done": true, "prompt_eval_count": 10,
            "prompt_eval_cached_count": 8, "eval_count": 1});
        eq_json(
            &from_ollama(&native, &ctx())["usage"],
            &json!({"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11,
                    "prompt_tokens_details": {"cached_tokens": 8}}),
        );
    }

    // -- streaming --------------------------------------------------------------------

    const LINES: [&str; 3] = [
        r#"{"model":"gemma4","created_at":"2023-11-14T22:13:20Z","response":" Yes","done":false}"#,
        r#"{"model":"gemma4","created_at":"2023-11-14T22:13:21Z","response":".","done":false}"#,
        r#"{"model":"gemma4","created_at":"2023-11-14T22:13:22Z","response":"","done":true,"done_reason":"length","context":[1,2],"prompt_eval_count":7,"eval_count":2}"#,
    ];

    /// A chunk of the stream with id `cmpl-58`, pinned `created` and model `gemma4`.
    fn chunk(text: &str, finish_reason: Option<&str>) -> Value {
        json!({"id": "cmpl-58", "object": "text_completion", "created": 1700000000, "model": "gemma4",
               "system_fingerprint": "fp_ollama",
               "choices": [{"text": text, "index": 0, "finish_reason": finish_reason}]})
    }

    #[test]
    fn stream_one_chunk_per_line_then_done() {
        let (events, flow, stream) = run(ctx(), &LINES);
        eq_json(
            &Value::Array(events),
            &json!([chunk(" Yes", None), chunk(".", None), chunk("", Some("length")), "[DONE]"]),
        );
        assert_eq!(flow, Flow::Done);
        assert_eq!(stream.usage(), Some(Usage { prompt: 7, completion: 2 }));
    }

    #[test]
    fn stream_include_usage_adds_one_usage_chunk_and_none_on_text_chunks() {
        let (events, flow, _) = run(ReplyContext { include_usage: true, ..ctx() }, &LINES);
        let mut usage = chunk("", None);
        usage["choices"] = json!([]);
        usage["usage"] = json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9});
        eq_json(
            &Value::Array(events.clone()),
            &json!([chunk(" Yes", None), chunk(".", None), chunk("", Some("length")), usage, "[DONE]"]),
        );
        assert!(events[..3].iter().all(|e| e.get("usage").is_none()), "{events:?}");
        assert_eq!(flow, Flow::Done);
    }

    #[test]
    fn stream_id_created_and_model_are_constant() {
        let context = ReplyContext { response_model: Some("alias".into()), include_usage: true, ..ctx() };
        let (events, _, _) = run(context, &LINES);
        let chunks = &events[..events.len() - 1];
        assert!(chunks.iter().all(|e| e["id"] == json!("cmpl-58")), "{chunks:?}");
        // Pinned to the first line's created_at, though later lines carry later times.
        assert!(chunks.iter().all(|e| e["created"] == json!(1_700_000_000)), "{chunks:?}");
        assert!(chunks.iter().all(|e| e["model"] == json!("alias")), "{chunks:?}");
        // Without any created_at, the fallback is used for every chunk.
        let (events, _, _) = run(ctx(), &[r#"{"response":"a"}"#, r#"{"response":"","done":true}"#]);
        assert!(events[..2].iter().all(|e| e["created"] == json!(42)), "{events:?}");
    }

    #[test]
    fn stream_done_line_without_reason_finishes_with_stop_and_keeps_its_text() {
        let (events, flow, stream) = run(
            ctx(),
            &[
                r#"{"model":"gemma4","created_at":"2023-11-14T22:13:20Z","response":"All","thinking":"t","done":true}"#,
            ],
        );
        eq_json(&Value::Array(events), &json!([chunk("All", Some("stop")), "[DONE]"]));
        assert_eq!(flow, Flow::Done);
        assert_eq!(stream.usage(), Some(Usage { prompt: 0, completion: 0 }));
    }

    #[test]
    fn stream_mid_stream_error_line_ends_with_an_error_event() {
        for (line, message) in testkit::ERROR_LINES {
            let (out, stream) =
                testkit::after_a_bad_line(CompletionStream::new(ctx()), LINES[0], line, LINES[2]);
            eq_json(&Value::Array(events(&out)), &json!([chunk(" Yes", None), openai_error(message)]));
            assert_eq!(stream.usage(), None);
        }
    }

    #[test]
    fn stream_garbage_line_is_an_error_event() {
        let events = testkit::garbage_line_events(|lines| run(ctx(), lines), LINES[0]);
        assert!(!events.contains(&json!("[DONE]")));
    }

    #[test]
    fn stream_upstream_ending_early_is_an_error_event() {
        let message = testkit::openai_early_ends(|| CompletionStream::new(ctx()), events, &LINES);
        assert!(message.contains("closed the stream before finishing"), "{message}");
    }

    #[test]
    fn stream_blank_and_cr_lines_are_skipped() {
        let mut stream = CompletionStream::new(ctx());
        testkit::assert_blanks_skipped(&mut stream, &testkit::BLANK_LINES);
        let mut out = Vec::new();
        for line in LINES {
            stream.push_line(format!("{line}\r").as_bytes(), &mut out);
        }
        eq_json(
            &Value::Array(events(&out)),
            &json!([chunk(" Yes", None), chunk(".", None), chunk("", Some("length")), "[DONE]"]),
        );
    }
}
