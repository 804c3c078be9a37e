//! The streaming reply: native `/api/chat` NDJSON lines as Anthropic's named SSE events.
//!
//! One reply is one message: `message_start` and a `ping` with the first line, then content
//! blocks indexed from 0 in the order they come, each opened by `content_block_start` and
//! closed by `content_block_stop`: thinking (`thinking_delta`s, then a `signature_delta`),
//! text (`text_delta`s), and one `tool_use` block per tool call (Ollama sends each call
//! whole, so one `input_json_delta` holds all its input). Thinking that comes after text
//! opens a new thinking block. The `done` line closes the open block and sends
//! `message_delta` (stop reason, usage) and `message_stop`. An upstream error line, a line
//! that is not JSON, or an upstream that ends early closes the open block and sends
//! `event: error` instead: never a silent stop.

use super::{stop_reason, tool_use_parts, usage_json, MessageContext, THINKING_SIGNATURE};
use crate::translate::reply::{message_text, native_tool_calls};
use crate::translate::stream::{ending_field, sse_event, Ending, Events};
use serde_json::{json, Value};

/// The kind of a block that stays open across lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
}

/// Streaming translator: native `/api/chat` NDJSON lines in, Anthropic SSE events out.
#[derive(Debug)]
pub struct MessagesStream {
    ctx: MessageContext,
    /// What `message_start` reports as `input_tokens` (upstream counts come at the end).
    input_estimate: u64,
    /// Whether `message_start` has gone out.
    started: bool,
    /// The open thinking or text block and its index.
    open: Option<(Open, usize)>,
    /// The index of the next block.
    next_index: usize,
    made_tool_calls: bool,
    ending: Ending,
}

impl MessagesStream {
    /// A translator for one reply; `input_estimate` is [`super::MessagesRequest::input_estimate`].
    pub fn new(ctx: MessageContext, input_estimate: u64) -> MessagesStream {
        MessagesStream {
            ctx,
            input_estimate,
            started: false,
            open: None,
            next_index: 0,
            made_tool_calls: false,
            ending: Ending::default(),
        }
    }

    /// `message_start` (with an empty message) and a `ping`, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": self.ctx.id,
            "type": "message",
            "role": "assistant",
            "model": self.ctx.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        });
        sse_event("message_start", &json!({"type": "message_start", "message": message}), out);
        sse_event("ping", &json!({"type": "ping"}), out);
    }

    /// Opens a block at the next index; `content_block` is its empty form.
    fn start_block(&mut self, content_block: Value, out: &mut Vec<u8>) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        let data = json!({"type": "content_block_start", "index": index, "content_block": content_block});
        sse_event("content_block_start", &data, out);
        index
    }

    fn delta(index: usize, delta: Value, out: &mut Vec<u8>) {
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            out,
        );
    }

    fn stop_block(index: usize, out: &mut Vec<u8>) {
        sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": index}), out);
    }

    /// The index of an open block of `kind`, closing another open block and opening one
    /// of `kind` when needed.
    fn ensure_open(&mut self, kind: Open, out: &mut Vec<u8>) -> usize {
        if let Some((open, index)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close_open(out);
        let empty = match kind {
            Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Open::Text => json!({"type": "text", "text": ""}),
        };
        let index = self.start_block(empty, out);
        self.open = Some((kind, index));
        index
    }

    /// Closes the open block, if any; a thinking block gets its signature first.
    fn close_open(&mut self, out: &mut Vec<u8>) {
        let Some((kind, index)) = self.open.take() else { return };
        if kind == Open::Thinking {
            Self::delta(index, json!({"type": "signature_delta", "signature": THINKING_SIGNATURE}), out);
        }
        Self::stop_block(index, out);
    }
}

impl Events for MessagesStream {
    ending_field!();

    fn object(&mut self, line: &Value, done: bool, out: &mut Vec<u8>) {
        self.start(out);

        let text = |key: &str| message_text(line, key);
        if !text("thinking").is_empty() {
            let index = self.ensure_open(Open::Thinking, out);
            Self::delta(index, json!({"type": "thinking_delta", "thinking": text("thinking")}), out);
        }
        if !text("content").is_empty() {
            let index = self.ensure_open(Open::Text, out);
            Self::delta(index, json!({"type": "text_delta", "text": text("content")}), out);
        }
        for call in native_tool_calls(line) {
            self.close_open(out);
            let (id, name, input) = tool_use_parts(call);
            let index =
                self.start_block(json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
            Self::delta(index, json!({"type": "input_json_delta", "partial_json": input.to_string()}), out);
            Self::stop_block(index, out);
            self.made_tool_calls = true;
        }

        if !done {
            return;
        }
        self.close_open(out);
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(line, self.made_tool_calls), "stop_sequence": null},
            "usage": usage_json(line),
        });
        sse_event("message_delta", &delta, out);
        sse_event("message_stop", &json!({"type": "message_stop"}), out);
    }

    /// Closes the open block and sends an error event.
    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.close_open(out);
        sse_event("error", &crate::error::anthropic_error("api_error", message), out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::ctx;
    use super::*;
    use crate::translate::testkit::{self, eq_json};
    use crate::translate::{Flow, LineTranslator, Usage};

    /// Mirror types of the events clients decode, with no room for stray fields.
    mod strict {
        #![allow(dead_code)] // Fields exist to be checked by serde, not read.
        use crate::translate::anthropic::testkit::strict::{Block, Message, Usage};
        use serde::Deserialize;
        use serde_json::Value;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
        pub enum Event {
            MessageStart { message: Message<Value, Option<String>> },
            Ping,
            ContentBlockStart { index: usize, content_block: Block },
            ContentBlockDelta { index: usize, delta: Delta },
            ContentBlockStop { index: usize },
            MessageDelta { delta: MessageDelta, usage: Usage },
            MessageStop,
            Error { error: Error },
        }

        /// Variants named by their `type` without its `_delta`.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, tag = "type")]
        pub enum Delta {
            #[serde(rename = "text_delta")]
            Text { text: String },
            #[serde(rename = "thinking_delta")]
            Thinking { thinking: String },
            #[serde(rename = "signature_delta")]
            Signature { signature: String },
            #[serde(rename = "input_json_delta")]
            InputJson { partial_json: String },
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct MessageDelta {
            stop_reason: String,
            stop_sequence: Option<String>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Error {
            r#type: String,
            message: String,
        }
    }

    /// Splits SSE output into event payloads, checking the `event: NAME\ndata: JSON\n\n`
    /// framing, that each name matches its payload's `type`, and that no event has a stray
    /// field.
    #[track_caller]
    fn events(out: &[u8]) -> Vec<Value> {
        testkit::sse_events::<strict::Event>(out)
    }

    /// Runs lines through a fresh stream; returns the events, the last flow and the stream.
    fn run(lines: &[&str]) -> (Vec<Value>, Flow, MessagesStream) {
        let (out, flow, stream) = testkit::run_lines(MessagesStream::new(ctx(), 11), lines);
        (events(&out), flow, stream)
    }

    /// Each event as a short string, for sequence checks: `start`, `ping`,
    /// `block+0:text`, `text 0 "Hi"`, `stop 0`, `delta end_turn`, `message_stop`, `error`.
    fn outline(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e["type"].as_str().unwrap() {
                "message_start" => "start".to_string(),
                "ping" => "ping".to_string(),
                "content_block_start" => {
                    format!("block+{}:{}", e["index"], e["content_block"]["type"].as_str().unwrap())
                }
                "content_block_delta" => {
                    let d = &e["delta"];
                    let body = match d["type"].as_str().unwrap() {
                        "text_delta" => format!("text {}", d["text"]),
                        "thinking_delta" => format!("thinking {}", d["thinking"]),
                        "signature_delta" => "signature".to_string(),
                        _ => format!("json {}", d["partial_json"]),
                    };
                    format!("{} {body}", e["index"])
                }
                "content_block_stop" => format!("stop {}", e["index"]),
                "message_delta" => format!("delta {}", e["delta"]["stop_reason"].as_str().unwrap()),
                other => other.to_string(),
            })
            .collect()
    }

    /// Every started block is stopped once, indexes count up from 0, and deltas go only
    /// to the open block.
    #[track_caller]
    fn assert_blocks_balanced(events: &[Value]) {
        let mut open: Option<u64> = None;
        let mut next = 0;
        for e in events {
            match e["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert_eq!(open, None, "block started inside another: {e}");
                    assert_eq!(e["index"], json!(next), "{e}");
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => {
                    assert_eq!(e["index"].as_u64(), open, "delta to a closed block: {e}")
                }
                "content_block_stop" => {
                    assert_eq!(e["index"].as_u64(), open, "{e}");
                    open = None;
                }
                _ => assert_eq!(open, None, "{e} while block {open:?} is open"),
            }
        }
    }

    const DONE: &str = r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":30,"eval_count":7}"#;

    #[test]
    fn text_stream() {
        let (events, flow, stream) = run(&[
            r#"{"model":"m","created_at":"2023-11-14T22:13:20Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":"lo."},"done":false}"#,
            DONE,
        ]);
        assert_eq!(flow, Flow::Done);
        eq_json(
            &events[0],
            &json!({"type": "message_start", "message": {"id": "msg_7", "type": "message", "role": "assistant",
                "model": "asked-for", "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 11, "output_tokens": 0, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}}),
        );
        eq_json(
            &events[2],
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        eq_json(
            &events[3],
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        );
        eq_json(
            &events[6],
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"input_tokens": 30, "output_tokens": 7, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}),
        );
        assert_eq!(
            outline(&events),
            [
                "start",
                "ping",
                "block+0:text",
                r#"0 text "Hel""#,
                r#"0 text "lo.""#,
                "stop 0",
                "delta end_turn",
                "message_stop"
            ]
        );
        assert_eq!(stream.usage(), Some(Usage { prompt: 30, completion: 7 }));
    }

    #[test]
    fn thinking_then_text() {
        let (events, _, _) = run(&[
            r#"{"model":"m","message":{"role":"assistant","content":"","thinking":"The user"},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":"Hi","thinking":" greets."},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":"!"},"done":false}"#,
            DONE,
        ]);
        assert_eq!(
            outline(&events),
            [
                "start",
                "ping",
                "block+0:thinking",
                r#"0 thinking "The user""#,
                r#"0 thinking " greets.""#,
                "0 signature",
                "stop 0",
                "block+1:text",
                r#"1 text "Hi""#,
                r#"1 text "!""#,
                "stop 1",
                "delta end_turn",
                "message_stop",
            ]
        );
        eq_json(&events[2]["content_block"], &json!({"type": "thinking", "thinking": "", "signature": ""}));
        eq_json(&events[5]["delta"], &json!({"type": "signature_delta", "signature": THINKING_SIGNATURE}));
        assert_blocks_balanced(&events);
    }

    #[test]
    fn thinking_after_text_opens_a_new_block() {
        let (events, _, _) = run(&[
            r#"{"message":{"content":"First."},"done":false}"#,
            r#"{"message":{"content":"","thinking":"Hmm."},"done":false}"#,
            r#"{"message":{"content":"Then."},"done":true,"done_reason":"stop"}"#,
        ]);
        assert_eq!(
            outline(&events),
            [
                "start",
                "ping",
                "block+0:text",
                r#"0 text "First.""#,
                "stop 0",
                "block+1:thinking",
                r#"1 thinking "Hmm.""#,
                "1 signature",
                "stop 1",
                "block+2:text",
                r#"2 text "Then.""#,
                "stop 2",
                "delta end_turn",
                "message_stop",
            ]
        );
        assert_blocks_balanced(&events);
    }

    #[test]
    fn tool_calls_incl_on_the_done_line() {
        let (events, _, stream) = run(&[
            r#"{"model":"m","message":{"role":"assistant","content":"","thinking":"Need data."},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":"Looking."},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_a1","function":{"index":0,"name":"get_weather","arguments":{"city":"Oslo"}}},{"function":{"index":1,"name":"get_time","arguments":{}}}]},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_c3","function":{"index":0,"name":"last","arguments":{"n":[1,2]}}}]},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":6}"#,
        ]);
        assert_eq!(
            outline(&events),
            [
                "start",
                "ping",
                "block+0:thinking",
                r#"0 thinking "Need data.""#,
                "0 signature",
                "stop 0",
                "block+1:text",
                r#"1 text "Looking.""#,
                "stop 1",
                "block+2:tool_use",
                r#"2 json "{\"city\":\"Oslo\"}""#,
                "stop 2",
                "block+3:tool_use",
                r#"3 json "{}""#,
                "stop 3",
                "block+4:tool_use",
                r#"4 json "{\"n\":[1,2]}""#,
                "stop 4",
                "delta tool_use",
                "message_stop",
            ]
        );
        eq_json(
            &events[9]["content_block"],
            &json!({"type": "tool_use", "id": "call_a1", "name": "get_weather", "input": {}}),
        );
        let synthesized = events[12]["content_block"]["id"].as_str().unwrap();
        assert!(synthesized.starts_with("toolu_") && synthesized.len() == 30, "{synthesized}");
        assert_eq!(events[15]["content_block"]["id"], json!("call_c3"));
        assert_blocks_balanced(&events);
        assert_eq!(stream.usage(), Some(Usage { prompt: 5, completion: 6 }));
    }

    #[test]
    fn length_cut() {
        let (events, _, _) = run(&[
            r#"{"message":{"content":"One, two,"},"done":false}"#,
            r#"{"message":{"content":""},"done":true,"done_reason":"length","prompt_eval_count":3,"eval_count":4}"#,
        ]);
        assert_eq!(events[events.len() - 2]["delta"]["stop_reason"], json!("max_tokens"));
        // Even after a tool call.
        let (events, _, _) = run(&[
            r#"{"message":{"content":"","tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":false}"#,
            r#"{"message":{"content":""},"done":true,"done_reason":"length"}"#,
        ]);
        assert_eq!(events[events.len() - 2]["delta"]["stop_reason"], json!("max_tokens"));
    }

    #[test]
    fn done_on_the_first_line() {
        let (events, flow, _) = run(&[
            r#"{"model":"m","message":{"role":"assistant","content":"All at once."},"done":true,"done_reason":"stop","prompt_eval_count":2,"eval_count":3}"#,
        ]);
        assert_eq!(flow, Flow::Done);
        assert_eq!(
            outline(&events),
            [
                "start",
                "ping",
                "block+0:text",
                r#"0 text "All at once.""#,
                "stop 0",
                "delta end_turn",
                "message_stop"
            ]
        );
        let (events, _, _) = run(&[DONE]);
        assert_eq!(outline(&events), ["start", "ping", "delta end_turn", "message_stop"]);
    }

    #[test]
    fn mid_stream_failures_end_with_an_error_event() {
        for (bad, message) in testkit::bad_lines() {
            let first = r#"{"message":{"content":"","thinking":"Let me"},"done":false}"#;
            let (out, stream) = testkit::after_a_bad_line(MessagesStream::new(ctx(), 0), first, &bad, DONE);
            let events = events(&out);
            assert_eq!(
                outline(&events),
                [
                    "start",
                    "ping",
                    "block+0:thinking",
                    r#"0 thinking "Let me""#,
                    "0 signature",
                    "stop 0",
                    "error"
                ],
                "{bad}"
            );
            assert_eq!(events[6]["error"]["type"], json!("api_error"));
            let got = events[6]["error"]["message"].as_str().unwrap();
            assert!(got.starts_with(message) && got.len() < 300, "{got}");
            assert_blocks_balanced(&events);
            assert_eq!(stream.usage(), None);
        }
    }

    #[test]
    fn upstream_ending_early_is_an_error_event() {
        let par = r#"{"message":{"content":"Par"},"done":false}"#;
        let (out, _) = testkit::ended_early(MessagesStream::new(ctx(), 0), &[par], None);
        let got = events(&out);
        assert_eq!(outline(&got), ["start", "ping", "block+0:text", r#"0 text "Par""#, "stop 0", "error"]);
        let message = got[5]["error"]["message"].as_str().unwrap();
        assert!(message.contains("closed the stream before finishing"), "{message}");

        // Before any line: the error alone.
        let (out, _) =
            testkit::ended_early(MessagesStream::new(ctx(), 0), &[], Some("timed out reading from upstream"));
        eq_json(
            &Value::Array(events(&out)),
            &json!([{"type": "error", "error": {"type": "api_error", "message": "timed out reading from upstream"}}]),
        );

        // After message_stop, EOF adds nothing.
        let (_, _, mut stream) = run(&[DONE]);
        let mut out = Vec::new();
        stream.upstream_ended(None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn blank_and_cr_lines_are_skipped() {
        let mut stream = MessagesStream::new(ctx(), 0);
        testkit::assert_blanks_skipped(&mut stream, &testkit::BLANK_LINES[..3]);
        let mut out = Vec::new();
        assert_eq!(stream.push_line(format!("{DONE}\r").as_bytes(), &mut out), Flow::Done);
        assert_eq!(events(&out).last().unwrap()["type"], json!("message_stop"));
    }
}
