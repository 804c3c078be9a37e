//! Test helpers shared by the translators' unit tests.
//!
//! Built only for tests (`#[cfg(test)]` on its `mod` line), where a panic is the report.
//! In scope: comparing JSON, splitting SSE output, running request translators over
//! tables, driving stream translators through the cases every stream must get right
//! (error lines, early ends, blank lines), and what chat and completions tests share (the
//! reply context, the error event, the chunk mirror type).

use super::{Flow, LineTranslator, ReasoningField, ReplyContext};
use crate::error::ApiError;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::fmt::Debug;

/// Asserts two JSON values are equal, printing both as blocks when not.
#[track_caller]
pub fn eq_json(got: &Value, want: &Value) {
    if got != want {
        panic!(
            "\n--- want ---\n{}\n--- got ---\n{}\n",
            serde_json::to_string_pretty(want).unwrap(),
            serde_json::to_string_pretty(got).unwrap()
        );
    }
}

/// The payloads of SSE `data:` events, each parsed (`[DONE]` as the string `"[DONE]"`);
/// fails on any framing other than `data: …\n\n`.
#[track_caller]
pub fn sse_payloads(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "unterminated event in {text:?}");
    text.split_terminator("\n\n")
        .map(|event| {
            let payload =
                event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {event:?}"));
            match payload {
                "[DONE]" => Value::String("[DONE]".into()),
                _ => serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad payload {payload}: {e}")),
            }
        })
        .collect()
}

/// The payloads of a chat or completions stream ([`sse_payloads`]), failing on a chunk
/// that does not decode as the mirror type `T` (error events and `[DONE]` aside).
#[track_caller]
pub fn openai_events<T: DeserializeOwned>(out: &[u8]) -> Vec<Value> {
    let events = sse_payloads(out);
    for value in events.iter().filter(|v| v.is_object() && v.get("error").is_none()) {
        let _strict: T =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("bad chunk {value}: {e}"));
    }
    events
}

/// The payloads of named SSE events (`event: NAME\ndata: JSON\n\n`), each parsed; fails on
/// other framing, when a payload's `type` is not its event's name, and when it does not
/// decode as the mirror type `T`.
#[track_caller]
pub fn sse_events<T: DeserializeOwned>(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "unterminated event in {text:?}");
    text.split_terminator("\n\n")
        .map(|frame| {
            let (name, data) = frame
                .strip_prefix("event: ")
                .and_then(|rest| rest.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an event frame: {frame:?}"));
            let value: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("bad data {data}: {e}"));
            assert_eq!(value["type"], json!(name), "{frame}");
            let _strict: T =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("bad event {value}: {e}"));
            value
        })
        .collect()
}

// -- requests ---------------------------------------------------------------------------

/// What a request translator makes of `body`; fails the test when it refuses it.
#[track_caller]
pub fn translated<T>(to_ollama: fn(&Value) -> Result<T, ApiError>, body: &Value) -> T {
    to_ollama(body).unwrap_or_else(|err| panic!("request rejected: {err}\nbody: {body}"))
}

/// The error a request translator answers `body` with; fails the test when it accepts it.
#[track_caller]
pub fn refused<T: Debug>(to_ollama: fn(&Value) -> Result<T, ApiError>, body: &Value) -> ApiError {
    match to_ollama(body) {
        Ok(req) => panic!("request accepted, expected a 400\nbody: {body}\ntranslated: {req:?}"),
        Err(err) => err,
    }
}

/// `body` with `key` set to `value`.
pub fn with_field(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

/// Checks a table of refused requests: each `(input, param, fragment)` gets a 400
/// `invalid_request_error` whose `param` is `param` and whose message holds `fragment`.
#[track_caller]
pub fn assert_refusals<'a, P: Into<Option<&'a str>>>(
    cases: Vec<(Value, P, &str)>,
    rejected: impl Fn(Value) -> ApiError,
) {
    for (input, param, fragment) in cases {
        let err = rejected(input.clone());
        assert_eq!((err.status, err.kind), (400, "invalid_request_error"), "{input}");
        assert_eq!(err.param.as_deref(), param.into(), "{input}: {}", err.message);
        assert!(err.message.contains(fragment), "{input}: message {:?} lacks {fragment:?}", err.message);
    }
}

// -- streams ----------------------------------------------------------------------------

/// Blank upstream lines, which every stream skips.
pub const BLANK_LINES: [&[u8]; 4] = [b"", b"\r", b"  ", b" \r"];

/// Lines that must fail a stream, each with the start of the error message it gives: an
/// error line with a string, one with an object, and a long line that is not JSON.
pub fn bad_lines() -> [(String, &'static str); 3] {
    [
        (
            r#"{"error":"an error was encountered while running the model"}"#.into(),
            "an error was encountered while running the model",
        ),
        (r#"{"error":{"message":"model crashed"}}"#.into(), "model crashed"),
        (
            format!("<html>{}</html>", "x".repeat(500)),
            "upstream sent an invalid line (expected a JSON object): <html>xxx",
        ),
    ]
}

/// Pushes `lines` through `stream`; returns what it wrote, the last flow and the stream.
pub fn run_lines<S: LineTranslator>(mut stream: S, lines: &[&str]) -> (Vec<u8>, Flow, S) {
    let mut out = Vec::new();
    let mut flow = Flow::Continue;
    for line in lines {
        flow = stream.push_line(line.as_bytes(), &mut out);
    }
    (out, flow, stream)
}

/// Pushes `lines`, then ends the upstream with `error`; returns what was written.
pub fn ended_early<S: LineTranslator>(stream: S, lines: &[&str], error: Option<&str>) -> (Vec<u8>, S) {
    let (mut out, _, mut stream) = run_lines(stream, lines);
    stream.upstream_ended(error, &mut out);
    (out, stream)
}

/// Pushes `first` (which goes on), then the failing `bad` line (which ends the stream),
/// then `done` and the upstream's end, which must add nothing; returns what was written.
#[track_caller]
pub fn after_a_bad_line<S: LineTranslator>(
    mut stream: S,
    first: &str,
    bad: &str,
    done: &str,
) -> (Vec<u8>, S) {
    let mut out = Vec::new();
    assert_eq!(stream.push_line(first.as_bytes(), &mut out), Flow::Continue);
    assert_eq!(stream.push_line(bad.as_bytes(), &mut out), Flow::Done);
    // Nothing more after the error, not even at EOF.
    assert_eq!(stream.push_line(done.as_bytes(), &mut out), Flow::Done);
    stream.upstream_ended(None, &mut out);
    (out, stream)
}

/// After a finished stream (all of `lines`), the upstream's end adds nothing.
#[track_caller]
pub fn assert_end_adds_nothing<S: LineTranslator>(stream: S, lines: &[&str]) {
    let (_, _, mut stream) = run_lines(stream, lines);
    let mut out = Vec::new();
    stream.upstream_ended(None, &mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}

/// Each of `blanks` is skipped: the stream goes on and writes nothing.
#[track_caller]
pub fn assert_blanks_skipped(stream: &mut impl LineTranslator, blanks: &[&[u8]]) {
    let mut out = Vec::new();
    for blank in blanks {
        assert_eq!(stream.push_line(blank, &mut out), Flow::Continue);
    }
    assert!(out.is_empty());
}

// -- chat and completions ---------------------------------------------------------------

/// The context chat and completions stream tests run with: reply `id`, `created`
/// fallback 42, upstream's model, thinking under `reasoning`, no usage chunk.
pub fn reply_context(id: &str) -> ReplyContext {
    ReplyContext {
        id: id.into(),
        created_fallback: 42,
        response_model: None,
        reasoning_field: ReasoningField::Reasoning,
        include_usage: false,
    }
}

/// Upstream error lines, each with the message its error event must carry: a string, an
/// object with a `type` of its own, and an empty string.
pub const ERROR_LINES: [(&str, &str); 3] = [
    (
        r#"{"error":"an error was encountered while running the model"}"#,
        "an error was encountered while running the model",
    ),
    (r#"{"error":{"message":"model crashed","type":"x"}}"#, "model crashed"),
    (r#"{"error":""}"#, "upstream reported an error without a message"),
];

/// The OpenAI error event every broken chat or completions stream ends with.
pub fn openai_error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "api_error", "param": null, "code": null}})
}

/// How a chat or completions stream (made by `new`, its output read by `events`) ends
/// early: after the first of `lines`, with one chunk and an error event but no `[DONE]`;
/// before any line, on a read error, with that error alone and no usage; after all of
/// `lines`, with nothing more. Returns the message of the first error event.
#[track_caller]
pub fn openai_early_ends<S: LineTranslator>(
    new: impl Fn() -> S,
    events: fn(&[u8]) -> Vec<Value>,
    lines: &[&str],
) -> String {
    let (out, _) = ended_early(new(), &lines[..1], None);
    let got = events(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(!got.contains(&json!("[DONE]")));

    let (out, stream) = ended_early(new(), &[], Some("timed out reading from upstream"));
    eq_json(&Value::Array(events(&out)), &json!([openai_error("timed out reading from upstream")]));
    assert_eq!(stream.usage(), None);

    // After a finished stream, EOF adds nothing.
    assert_end_adds_nothing(new(), lines);
    got[1]["error"]["message"].as_str().unwrap().to_string()
}

/// A chat or completions stream given an upstream line that is not JSON (after `first`)
/// ends with one error event quoting it, and so does one given a JSON array; returns the
/// events of the latter.
#[track_caller]
pub fn garbage_line_events<S>(run: impl Fn(&[&str]) -> (Vec<Value>, Flow, S), first: &str) -> Vec<Value> {
    let garbage = format!("<html>{}</html>", "x".repeat(500));
    let (events, flow, _) = run(&[first, &garbage]);
    assert_eq!(flow, Flow::Done);
    assert_eq!(events.len(), 2, "{events:?}");
    let message = events[1]["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("upstream sent an invalid line"), "{message}");
    assert!(message.contains("<html>xxx") && message.len() < 300, "{message}");
    assert_eq!(events[1]["error"]["type"], json!("api_error"));
    let (events, _, _) = run(&["[1,2]"]);
    assert!(events[0]["error"]["message"].as_str().unwrap().contains("[1,2]"));
    events
}

/// Mirror types of what OpenAI clients decode, with no room for stray fields.
pub mod strict {
    #![allow(dead_code)] // Fields exist to be checked by serde, not read.
    use serde::Deserialize;
    use serde_json::Value;

    /// A `chat.completion.chunk` or `text_completion` object with choices `C`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Chunk<C> {
        id: String,
        object: String,
        created: i64,
        model: String,
        system_fingerprint: String,
        choices: Vec<C>,
        usage: Option<Value>,
    }
}
