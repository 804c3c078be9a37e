//! Responses replies: a native `/api/chat` answer -> the `response` object, whole or as SSE.
//!
//! One builder serves both: it takes thinking, content and tool calls as they come and
//! keeps the output items in order (a `reasoning` item with one `summary_text` part, a
//! `message` item with one `output_text` part, a `function_call` item per call), writing
//! the stream events as it goes. [`from_ollama`] runs it once over a whole answer and keeps
//! only the final object, so a stream's `response.completed` carries exactly what the
//! non-streaming reply would.

use super::ToolNames;
use crate::translate::chat;
use crate::translate::reply::{message_text, native_tool_calls, usage_of};
use crate::translate::stream::{ending_field, sse_event, Ending, Events};
use crate::translate::{rfc3339_to_unix, Usage};
use serde_json::{json, Map, Value};

/// What the reply needs to know that upstream does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseContext {
    /// The response id (`resp_…`); item ids derive from it (`msg_…`, `rs_…`, `fc_…`).
    pub id: String,
    /// Unix seconds of the request: the response's `created_at`.
    pub created_at: i64,
    /// The model name to report (the one the client asked for).
    pub model: String,
    /// The request settings to echo ([`super::ResponsesRequest::echo`]).
    pub echo: Value,
    /// The flat names of namespaced functions, to map calls back.
    pub tool_names: ToolNames,
}

/// Non-streaming: an upstream `/api/chat` reply (`stream:false`) as a `response` object.
pub fn from_ollama(native: &Value, ctx: &ResponseContext) -> Value {
    let mut output = Output::new(ctx.clone(), false);
    let mut unused = Vec::new();
    output.line(native, &mut unused);
    output.finish(native, &mut unused)
}

/// The kinds of output items that take text deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
}

/// The output item receiving deltas.
#[derive(Debug)]
struct Open {
    kind: Kind,
    id: String,
    index: usize,
    text: String,
}

/// The output items of one reply, and the events that build them.
#[derive(Debug)]
struct Output {
    ctx: ResponseContext,
    /// Whether events are written (a stream) or only the final object is wanted.
    events: bool,
    /// Finished items, in output order.
    items: Vec<Value>,
    open: Option<Open>,
    sequence: u64,
}

impl Output {
    fn new(ctx: ResponseContext, events: bool) -> Output {
        Output { ctx, events, items: Vec::new(), open: None, sequence: 0 }
    }

    /// Writes `event: NAME` and `data: {"type": NAME, "sequence_number": N, …fields}`.
    fn emit(&mut self, name: &str, fields: Value, out: &mut Vec<u8>) {
        let sequence = self.sequence;
        self.sequence += 1;
        if !self.events {
            return;
        }
        let mut data = Map::new();
        data.insert("type".into(), name.into());
        data.insert("sequence_number".into(), sequence.into());
        if let Value::Object(fields) = fields {
            data.extend(fields);
        }
        sse_event(name, &Value::Object(data), out);
    }

    /// `{prefix}_{response id suffix}_{output index}`: unique in the reply, and the same in
    /// a stream and in [`from_ollama`].
    fn item_id(&self, prefix: &str, index: usize) -> String {
        let suffix = self.ctx.id.strip_prefix("resp_").unwrap_or(&self.ctx.id);
        format!("{prefix}_{suffix}_{index}")
    }

    /// The `response` object with the items finished so far.
    fn response(&self, status: &str, extra: Value) -> Value {
        let mut response = Map::new();
        response.insert("id".into(), self.ctx.id.clone().into());
        response.insert("object".into(), "response".into());
        response.insert("created_at".into(), self.ctx.created_at.into());
        response.insert("status".into(), status.into());
        for key in ["completed_at", "error", "incomplete_details"] {
            response.insert(key.into(), Value::Null);
        }
        response.insert("model".into(), self.ctx.model.clone().into());
        response.insert("output".into(), Value::Array(self.items.clone()));
        response.insert("usage".into(), Value::Null);
        if let Value::Object(extra) = extra {
            response.extend(extra);
        }
        if let Value::Object(echo) = &self.ctx.echo {
            for (key, value) in echo {
                response.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        Value::Object(response)
    }

    /// `response.created` and `response.in_progress`.
    fn start(&mut self, out: &mut Vec<u8>) {
        let response = self.response("in_progress", Value::Null);
        self.emit("response.created", json!({"response": response.clone()}), out);
        self.emit("response.in_progress", json!({"response": response}), out);
    }

    /// The thinking, content and tool calls of one native object, in that order.
    fn line(&mut self, native: &Value, out: &mut Vec<u8>) {
        self.text(Kind::Reasoning, message_text(native, "thinking"), out);
        self.text(Kind::Message, message_text(native, "content"), out);
        for call in native_tool_calls(native) {
            self.tool_call(call, out);
        }
    }

    /// A text delta for an item of `kind`, opening one (and closing another kind) first.
    fn text(&mut self, kind: Kind, delta: &str, out: &mut Vec<u8>) {
        if delta.is_empty() {
            return;
        }
        if self.open.as_ref().is_some_and(|open| open.kind != kind) {
            self.close("completed", out);
        }
        if self.open.is_none() {
            self.open_item(kind, out);
        }
        let Some(open) = self.open.as_mut() else { return };
        open.text.push_str(delta);
        let (item_id, index) = (open.id.clone(), open.index);
        match kind {
            Kind::Reasoning => self.emit(
                "response.reasoning_summary_text.delta",
                json!({"item_id": item_id, "output_index": index, "summary_index": 0, "delta": delta}),
                out,
            ),
            Kind::Message => self.emit(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta,
                       "logprobs": []}),
                out,
            ),
        }
    }

    fn open_item(&mut self, kind: Kind, out: &mut Vec<u8>) {
        let index = self.items.len();
        let id = match kind {
            Kind::Reasoning => {
                let id = self.item_id("rs", index);
                let item = json!({"id": id, "type": "reasoning", "summary": []});
                self.emit("response.output_item.added", json!({"output_index": index, "item": item}), out);
                self.emit(
                    "response.reasoning_summary_part.added",
                    json!({"item_id": id, "output_index": index, "summary_index": 0,
                           "part": {"type": "summary_text", "text": ""}}),
                    out,
                );
                id
            }
            Kind::Message => {
                let id = self.item_id("msg", index);
                let item = json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant",
                                  "content": []});
                self.emit("response.output_item.added", json!({"output_index": index, "item": item}), out);
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text("")}),
                    out,
                );
                id
            }
        };
        self.open = Some(Open { kind, id, index, text: String::new() });
    }

    /// Finishes the open item (a message gets `status`) with its `.done` events.
    fn close(&mut self, status: &str, out: &mut Vec<u8>) {
        let Some(Open { kind, id, index, text }) = self.open.take() else { return };
        let item = match kind {
            Kind::Reasoning => {
                self.emit(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                    out,
                );
                self.emit(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0,
                           "part": {"type": "summary_text", "text": text}}),
                    out,
                );
                json!({"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]})
            }
            Kind::Message => {
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text,
                           "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text(&text)}),
                    out,
                );
                json!({"id": id, "type": "message", "status": status, "role": "assistant",
                       "content": [output_text(&text)]})
            }
        };
        self.emit("response.output_item.done", json!({"output_index": index, "item": item.clone()}), out);
        self.items.push(item);
    }

    /// One whole native tool call as a `function_call` item, with the upstream id or a
    /// synthesized `call_…`, and its namespace when the name is a flattened one.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<u8>) {
        self.close("completed", out);
        let index = self.items.len();
        let id = self.item_id("fc", index);
        let call = chat::openai_tool_call(call, index);
        let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let (flat, arguments) = (text("/function/name"), text("/function/arguments"));
        let mut item = Map::new();
        item.insert("id".into(), id.clone().into());
        item.insert("type".into(), "function_call".into());
        item.insert("status".into(), "in_progress".into());
        item.insert("arguments".into(), "".into());
        item.insert("call_id".into(), text("/id").into());
        match self.ctx.tool_names.resolve(flat) {
            Some((namespace, name)) => {
                item.insert("name".into(), name.into());
                item.insert("namespace".into(), namespace.into());
            }
            None => {
                item.insert("name".into(), flat.into());
            }
        }
        self.emit("response.output_item.added", json!({"output_index": index, "item": item.clone()}), out);
        self.emit(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": arguments}),
            out,
        );
        self.emit(
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": index, "arguments": arguments}),
            out,
        );
        item.insert("status".into(), "completed".into());
        item.insert("arguments".into(), arguments.into());
        let item = Value::Object(item);
        self.emit("response.output_item.done", json!({"output_index": index, "item": item.clone()}), out);
        self.items.push(item);
    }

    /// After the final native object: closes the open item, ends with
    /// `response.completed` (or `response.incomplete` when cut by `num_predict`), and
    /// returns that final object. A reply with no output at all gets one empty message.
    fn finish(&mut self, native: &Value, out: &mut Vec<u8>) -> Value {
        let cut = native.get("done_reason").and_then(Value::as_str) == Some("length");
        let status = if cut { "incomplete" } else { "completed" };
        self.close(status, out);
        if self.items.is_empty() {
            self.open_item(Kind::Message, out);
            self.close(status, out);
        }
        let mut extra = json!({"usage": usage(native)});
        if cut {
            extra["incomplete_details"] = json!({"reason": "max_output_tokens"});
        } else {
            let completed_at = native.get("created_at").and_then(Value::as_str).and_then(rfc3339_to_unix);
            extra["completed_at"] = completed_at.unwrap_or(self.ctx.created_at).into();
        }
        let response = self.response(status, extra);
        let event = if cut { "response.incomplete" } else { "response.completed" };
        self.emit(event, json!({"response": response.clone()}), out);
        response
    }

    /// `response.failed` with the error, and the items finished so far.
    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        let response =
            self.response("failed", json!({"error": {"code": "server_error", "message": message}}));
        self.emit("response.failed", json!({"response": response}), out);
    }
}

/// An `output_text` content part.
fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The Responses `usage` of a native final object. Ollama does not count reasoning tokens
/// apart, so `reasoning_tokens` is 0.
fn usage(native: &Value) -> Value {
    let Usage { prompt, completion } = usage_of(native);
    let cached = native.get("prompt_eval_cached_count").and_then(Value::as_u64).unwrap_or(0);
    json!({
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt.saturating_add(completion),
    })
}

/// Streaming translator: native `/api/chat` NDJSON lines in, Responses SSE events out,
/// ending with `response.completed`, `response.incomplete` or `response.failed`.
#[derive(Debug)]
pub struct ResponsesStream {
    output: Output,
    started: bool,
    ending: Ending,
}

impl ResponsesStream {
    /// A translator for one reply.
    pub fn new(ctx: ResponseContext) -> ResponsesStream {
        ResponsesStream { output: Output::new(ctx, true), started: false, ending: Ending::default() }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.output.start(out);
            self.started = true;
        }
    }
}

impl Events for ResponsesStream {
    ending_field!();

    fn object(&mut self, line: &Value, done: bool, out: &mut Vec<u8>) {
        self.start(out);
        self.output.line(line, out);
        if done {
            self.output.finish(line, out);
        }
    }

    /// `response.failed`, after opening the response if no line did.
    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.start(out);
        self.output.fail(message, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::responses::to_ollama;
    use crate::translate::testkit::{self, eq_json};
    use crate::translate::{Flow, LineTranslator};

    // -- helpers --------------------------------------------------------------------

    /// A context as the handler builds it: from a request with a plain and a namespaced
    /// function, reporting the name asked for.
    fn ctx() -> ResponseContext {
        let body = json!({"model": "alias", "instructions": "Be brief.", "input": "hi", "temperature": 0.5,
            "tools": [{"type": "function", "name": "get_weather"},
                      {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "spawn"}]},
                      {"type": "web_search"}]});
        to_ollama(&body).unwrap().context("resp_t1".into(), 1_700_000_000)
    }

    /// The payloads of `event: NAME` / `data: JSON` frames, checking the framing, that
    /// `type` repeats the event name, and that nothing has a stray field.
    fn events(out: &[u8]) -> Vec<Value> {
        testkit::sse_events::<strict::Event>(out)
    }

    fn names(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    /// Runs lines through a fresh stream; returns the events, the last flow and the stream.
    fn run(lines: &[&str]) -> (Vec<Value>, Flow, ResponsesStream) {
        let (out, flow, stream) = testkit::run_lines(ResponsesStream::new(ctx()), lines);
        (events(&out), flow, stream)
    }

    /// Checks what a client relies on and returns the final response object:
    /// `sequence_number` counts up from 0; the stream opens with `response.created` and
    /// `response.in_progress` and ends with one final event; every item is added at the
    /// next `output_index` before its deltas, every delta and `.done` names the item's id
    /// and index, each `.done` text is what the deltas built, and the final `output` is
    /// the items of the `response.output_item.done` events, in order.
    #[track_caller]
    fn check_stream(events: &[Value]) -> Value {
        let sequence: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());
        assert_eq!(names(events)[..2], ["response.created", "response.in_progress"]);
        for opening in &events[..2] {
            assert_eq!(opening["response"]["status"], json!("in_progress"));
            assert_eq!(opening["response"]["output"], json!([]));
        }
        let last = events.last().unwrap();
        let finals = ["response.completed", "response.incomplete", "response.failed"];
        assert!(finals.contains(&last["type"].as_str().unwrap()), "{last}");
        assert_eq!(names(events).iter().filter(|name| finals.contains(name)).count(), 1);

        // (id, text built by deltas, the done item)
        let mut items: Vec<(String, String, Option<Value>)> = Vec::new();
        for event in &events[2..events.len() - 1] {
            let kind = event["type"].as_str().unwrap();
            let index = event["output_index"].as_u64().unwrap() as usize;
            if kind == "response.output_item.added" {
                assert_eq!(index, items.len(), "{event}");
                assert!(items.iter().all(|item| item.2.is_some()), "an item is still open: {event}");
                items.push((event["item"]["id"].as_str().unwrap().to_string(), String::new(), None));
                continue;
            }
            let (id, text, done) = items.get_mut(index).unwrap_or_else(|| panic!("no item {index}: {event}"));
            assert!(done.is_none(), "event after its item is done: {event}");
            if kind == "response.output_item.done" {
                assert_eq!(event["item"]["id"], json!(id), "{event}");
                let final_text = match event["item"]["type"].as_str().unwrap() {
                    "message" => &event["item"]["content"][0]["text"],
                    "reasoning" => &event["item"]["summary"][0]["text"],
                    _ => &event["item"]["arguments"],
                };
                assert_eq!(final_text, &json!(text), "{event}");
                *done = Some(event["item"].clone());
                continue;
            }
            assert_eq!(event["item_id"], json!(id), "{event}");
            if let Some(delta) = event["delta"].as_str() {
                text.push_str(delta);
            }
            for key in ["text", "arguments"] {
                if let Some(whole) = event.get(key) {
                    assert_eq!(whole, &json!(text), "{event}");
                }
            }
            if let Some(part) = event.get("part").filter(|_| kind.ends_with(".done")) {
                assert_eq!(part["text"], json!(text), "{event}");
            }
        }
        let response = last["response"].clone();
        let done: Vec<Value> = items.iter().filter_map(|item| item.2.clone()).collect();
        if last["type"] != json!("response.failed") {
            assert_eq!(done.len(), items.len(), "an item was never done");
        }
        eq_json(&response["output"], &Value::Array(done));
        response
    }

    /// Mirror types of what clients decode, with no room for stray fields.
    mod strict {
        #![allow(dead_code)] // Fields exist to be checked by serde, not read.
        use serde::Deserialize;
        use serde_json::Value;

        #[derive(Deserialize)]
        #[serde(tag = "type", deny_unknown_fields)]
        pub enum Event {
            #[serde(rename = "response.created")]
            Created { sequence_number: u64, response: Response },
            #[serde(rename = "response.in_progress")]
            InProgress { sequence_number: u64, response: Response },
            #[serde(rename = "response.completed")]
            Completed { sequence_number: u64, response: Response },
            #[serde(rename = "response.incomplete")]
            Incomplete { sequence_number: u64, response: Response },
            #[serde(rename = "response.failed")]
            Failed { sequence_number: u64, response: Response },
            #[serde(rename = "response.output_item.added")]
            ItemAdded { sequence_number: u64, output_index: u32, item: Item },
            #[serde(rename = "response.output_item.done")]
            ItemDone { sequence_number: u64, output_index: u32, item: Item },
            #[serde(rename = "response.content_part.added")]
            PartAdded {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                content_index: u32,
                part: OutputText,
            },
            #[serde(rename = "response.content_part.done")]
            PartDone {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                content_index: u32,
                part: OutputText,
            },
            #[serde(rename = "response.output_text.delta")]
            TextDelta {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                content_index: u32,
                delta: String,
                logprobs: Vec<Value>,
            },
            #[serde(rename = "response.output_text.done")]
            TextDone {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                content_index: u32,
                text: String,
                logprobs: Vec<Value>,
            },
            #[serde(rename = "response.reasoning_summary_part.added")]
            SummaryPartAdded {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                summary_index: u32,
                part: SummaryText,
            },
            #[serde(rename = "response.reasoning_summary_part.done")]
            SummaryPartDone {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                summary_index: u32,
                part: SummaryText,
            },
            #[serde(rename = "response.reasoning_summary_text.delta")]
            SummaryDelta {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                summary_index: u32,
                delta: String,
            },
            #[serde(rename = "response.reasoning_summary_text.done")]
            SummaryDone {
                sequence_number: u64,
                item_id: String,
                output_index: u32,
                summary_index: u32,
                text: String,
            },
            #[serde(rename = "response.function_call_arguments.delta")]
            ArgumentsDelta { sequence_number: u64, item_id: String, output_index: u32, delta: String },
            #[serde(rename = "response.function_call_arguments.done")]
            ArgumentsDone { sequence_number: u64, item_id: String, output_index: u32, arguments: String },
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Response {
            id: String,
            object: String,
            created_at: i64,
            status: String,
            completed_at: Option<i64>,
            error: Option<Error>,
            incomplete_details: Option<Incomplete>,
            model: String,
            output: Vec<Item>,
            usage: Option<Usage>,
            background: bool,
            instructions: Option<String>,
            max_output_tokens: Option<u64>,
            max_tool_calls: Option<u64>,
            metadata: Value,
            parallel_tool_calls: bool,
            previous_response_id: Option<String>,
            prompt_cache_key: Option<String>,
            reasoning: Reasoning,
            safety_identifier: Option<String>,
            service_tier: String,
            store: bool,
            temperature: f64,
            text: Value,
            tool_choice: Value,
            tools: Vec<Value>,
            top_logprobs: u32,
            top_p: f64,
            truncation: String,
            user: Option<String>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Error {
            code: String,
            message: String,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Incomplete {
            reason: String,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reasoning {
            effort: Option<String>,
            summary: Option<String>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Usage {
            input_tokens: u64,
            input_tokens_details: InputDetails,
            output_tokens: u64,
            output_tokens_details: OutputDetails,
            total_tokens: u64,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct InputDetails {
            cached_tokens: u64,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct OutputDetails {
            reasoning_tokens: u64,
        }

        #[derive(Deserialize)]
        #[serde(tag = "type", deny_unknown_fields)]
        pub enum Item {
            #[serde(rename = "message")]
            Message { id: String, status: String, role: String, content: Vec<OutputText> },
            #[serde(rename = "reasoning")]
            Reasoning { id: String, summary: Vec<SummaryText> },
            #[serde(rename = "function_call")]
            FunctionCall {
                id: String,
                status: String,
                arguments: String,
                call_id: String,
                name: String,
                namespace: Option<String>,
            },
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct OutputText {
            r#type: String,
            text: String,
            annotations: Vec<Value>,
            logprobs: Vec<Value>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct SummaryText {
            r#type: String,
            text: String,
        }
    }

    #[test]
    fn strict_mirror_types_refuse_stray_fields() {
        let delta = json!({"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1",
                           "output_index": 0, "content_index": 0, "delta": "x", "logprobs": []});
        assert!(serde_json::from_value::<strict::Event>(delta.clone()).is_ok());
        let mut stray = delta;
        stray["obfuscation"] = json!("abc");
        assert!(serde_json::from_value::<strict::Event>(stray).is_err());
    }

    /// A message output item.
    fn message(id: &str, status: &str, text: &str) -> Value {
        json!({"id": id, "type": "message", "status": status, "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    }

    fn reasoning(id: &str, text: &str) -> Value {
        json!({"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]})
    }

    // -- non-streaming ----------------------------------------------------------------

    #[test]
    fn reply_with_text_is_the_whole_response_object() {
        let native = json!({"model": "llama3.2", "created_at": "2023-11-14T22:13:25Z",
            "message": {"role": "assistant", "content": "Hello!"}, "done": true, "done_reason": "stop",
            "total_duration": 5, "prompt_eval_count": 26, "eval_count": 3});
        let context = ctx();
        let reply = from_ollama(&native, &context);
        let mut want = json!({
            "id": "resp_t1", "object": "response", "created_at": 1_700_000_000, "status": "completed",
            "completed_at": 1_700_000_005, "error": null, "incomplete_details": null, "model": "alias",
            "output": [message("msg_t1_0", "completed", "Hello!")],
            "usage": {"input_tokens": 26, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 29},
        });
        want.as_object_mut().unwrap().extend(context.echo.as_object().unwrap().clone());
        eq_json(&reply, &want);
        assert_eq!(reply["instructions"], json!("Be brief."));
        assert_eq!(reply["temperature"], json!(0.5));
        assert_eq!(reply["store"], json!(false));
        let _strict: strict::Response = serde_json::from_value(reply).unwrap();
    }

    #[test]
    fn reply_with_thinking_text_and_tool_calls_keeps_their_order_and_ids() {
        let native = json!({"model": "m", "message": {"role": "assistant", "content": "Let me check.",
            "thinking": "Need the tools.", "tool_calls": [
                {"id": "call_up1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
                {"function": {"index": 1, "name": "agents__spawn", "arguments": {"task": "t"}}},
                {"id": "", "function": {"name": "unknown_fn", "arguments": {}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 10, "prompt_eval_cached_count": 8,
            "eval_count": 20});
        let reply = from_ollama(&native, &ctx());
        let output = reply["output"].as_array().unwrap();
        eq_json(&output[0], &reasoning("rs_t1_0", "Need the tools."));
        eq_json(&output[1], &message("msg_t1_1", "completed", "Let me check."));
        eq_json(
            &output[2],
            &json!({"id": "fc_t1_2", "type": "function_call", "status": "completed",
                    "arguments": "{\"city\":\"Oslo\"}", "call_id": "call_up1", "name": "get_weather"}),
        );
        // A namespaced function is reported under its namespace and own name.
        assert_eq!((&output[3]["name"], &output[3]["namespace"]), (&json!("spawn"), &json!("agents")));
        assert_eq!(output[4]["name"], json!("unknown_fn"));
        assert_eq!(output[4].get("namespace"), None);
        for synthesized in [&output[3]["call_id"], &output[4]["call_id"]] {
            let id = synthesized.as_str().unwrap();
            assert!(id.starts_with("call_") && id.len() == 13, "{id}");
        }
        assert_ne!(output[3]["call_id"], output[4]["call_id"]);
        assert_eq!(reply["status"], json!("completed"));
        eq_json(
            &reply["usage"],
            &json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 8}, "output_tokens": 20,
                    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 30}),
        );
        // No created_at upstream: completed_at falls back to the request's time.
        assert_eq!(reply["completed_at"], json!(1_700_000_000));
    }

    #[test]
    fn reply_cut_by_length_is_incomplete() {
        let native = json!({"model": "m", "message": {"content": "Once upon a"}, "done": true,
                            "done_reason": "length", "eval_count": 3});
        let reply = from_ollama(&native, &ctx());
        assert_eq!(reply["status"], json!("incomplete"));
        assert_eq!(reply["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(reply["completed_at"], Value::Null);
        eq_json(&reply["output"], &json!([message("msg_t1_0", "incomplete", "Once upon a")]));
        let _strict: strict::Response = serde_json::from_value(reply).unwrap();
    }

    #[test]
    fn empty_reply_has_one_empty_message_and_zero_usage() {
        for done_reason in [json!("stop"), Value::Null, json!("unload")] {
            let native = json!({"model": "m", "message": {"role": "assistant", "content": ""}, "done": true,
                                "done_reason": done_reason});
            let reply = from_ollama(&native, &ctx());
            assert_eq!(reply["status"], json!("completed"), "{done_reason}");
            eq_json(&reply["output"], &json!([message("msg_t1_0", "completed", "")]));
            assert_eq!(reply["usage"]["total_tokens"], json!(0));
        }
    }

    // -- streaming --------------------------------------------------------------------

    const TEXT: [&str; 3] = [
        r#"{"model":"llama3.2","created_at":"2023-11-14T22:13:21Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
        r#"{"model":"llama3.2","created_at":"2023-11-14T22:13:22Z","message":{"role":"assistant","content":"lo!"},"done":false}"#,
        r#"{"model":"llama3.2","created_at":"2023-11-14T22:13:25Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":3}"#,
    ];

    /// The events of a message item whose text comes in two deltas.
    const MESSAGE_IN_TWO_DELTAS: [&str; 7] = [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ];

    #[test]
    fn stream_text() {
        let (events, flow, stream) = run(&TEXT);
        let opening = ["response.created", "response.in_progress"];
        assert_eq!(names(&events), [&opening[..], &MESSAGE_IN_TWO_DELTAS, &["response.completed"]].concat());
        assert_eq!(flow, Flow::Done);
        assert_eq!(stream.usage(), Some(Usage { prompt: 26, completion: 3 }));
        let response = check_stream(&events);
        // The same object as the non-streaming reply of the same answer.
        let whole = json!({"model": "llama3.2", "created_at": "2023-11-14T22:13:25Z",
            "message": {"role": "assistant", "content": "Hello!"}, "done": true, "done_reason": "stop",
            "prompt_eval_count": 26, "eval_count": 3});
        eq_json(&response, &from_ollama(&whole, &ctx()));
        assert_eq!(events[0]["response"]["usage"], Value::Null);
        assert_eq!(events[0]["response"]["id"], json!("resp_t1"));
    }

    #[test]
    fn stream_thinking_then_text() {
        let (events, _, _) = run(&[
            r#"{"model":"m","message":{"content":"","thinking":"The user"},"done":false}"#,
            r#"{"model":"m","message":{"content":"Hi","thinking":" greets."},"done":false}"#,
            r#"{"model":"m","message":{"content":"!"},"done":false}"#,
            r#"{"model":"m","message":{"content":""},"done":true,"done_reason":"stop","prompt_eval_count":12,"eval_count":30}"#,
        ]);
        let opening_then_reasoning = [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
        ];
        assert_eq!(
            names(&events),
            [&opening_then_reasoning[..], &MESSAGE_IN_TWO_DELTAS, &["response.completed"]].concat()
        );
        let response = check_stream(&events);
        eq_json(
            &response["output"],
            &json!([reasoning("rs_t1_0", "The user greets."), message("msg_t1_1", "completed", "Hi!")]),
        );
        let whole = json!({"model": "m", "message": {"content": "Hi!", "thinking": "The user greets."},
            "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 30});
        eq_json(&response, &from_ollama(&whole, &ctx()));
    }

    #[test]
    fn stream_tool_calls_including_on_the_done_line() {
        let (events, flow, stream) = run(&[
            r#"{"model":"m","message":{"content":"Checking."},"done":false}"#,
            r#"{"model":"m","message":{"content":"","tool_calls":[{"id":"call_a","function":{"index":0,"name":"get_weather","arguments":{"city":"Oslo"}}},{"id":"call_b","function":{"index":1,"name":"get_weather","arguments":{"city":"Rome"}}}]},"done":false}"#,
            r#"{"model":"m","message":{"content":"","tool_calls":[{"id":"call_c","function":{"index":0,"name":"agents__spawn","arguments":{"task":"x"}}}]},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":9}"#,
        ]);
        assert_eq!(flow, Flow::Done);
        assert_eq!(stream.usage(), Some(Usage { prompt: 5, completion: 9 }));
        let one_call = [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ];
        assert_eq!(names(&events)[8..12], one_call);
        assert_eq!(names(&events)[12..16], one_call);
        assert_eq!(names(&events)[16..20], one_call);
        assert_eq!(names(&events)[20..], ["response.completed"]);
        assert_eq!(events[8]["item"]["status"], json!("in_progress"));
        assert_eq!(events[8]["item"]["arguments"], json!(""));
        let response = check_stream(&events);
        let output = response["output"].as_array().unwrap();
        let calls: Vec<(&Value, &Value, &Value)> =
            output[1..].iter().map(|item| (&item["call_id"], &item["name"], &item["arguments"])).collect();
        assert_eq!(
            calls,
            [
                (&json!("call_a"), &json!("get_weather"), &json!("{\"city\":\"Oslo\"}")),
                (&json!("call_b"), &json!("get_weather"), &json!("{\"city\":\"Rome\"}")),
                (&json!("call_c"), &json!("spawn"), &json!("{\"task\":\"x\"}")),
            ]
        );
        assert_eq!(output[3]["namespace"], json!("agents"));
        assert_eq!(response["status"], json!("completed"));
        let whole = json!({"model": "m", "message": {"content": "Checking.", "tool_calls": [
                {"id": "call_a", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                {"id": "call_b", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
                {"id": "call_c", "function": {"name": "agents__spawn", "arguments": {"task": "x"}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 9});
        eq_json(&response, &from_ollama(&whole, &ctx()));
    }

    #[test]
    fn stream_text_after_a_tool_call_opens_a_new_message() {
        let (events, _, _) = run(&[
            r#"{"model":"m","message":{"content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{}}}]},"done":false}"#,
            r#"{"model":"m","message":{"content":"Done."},"done":true,"done_reason":"stop"}"#,
        ]);
        let response = check_stream(&events);
        let kinds: Vec<&Value> =
            response["output"].as_array().unwrap().iter().map(|item| &item["type"]).collect();
        assert_eq!(kinds, [&json!("function_call"), &json!("message")]);
        let call_id = response["output"][0]["call_id"].as_str().unwrap();
        assert!(call_id.starts_with("call_") && call_id.len() == 13, "{call_id}");
        // The synthesized id is the same in every event of the call.
        assert_eq!(events[2]["item"]["call_id"], json!(call_id));
    }

    #[test]
    fn stream_cut_by_length_ends_with_response_incomplete() {
        let (events, flow, _) = run(&[
            r#"{"model":"m","message":{"content":"","thinking":"hm"},"done":false}"#,
            r#"{"model":"m","message":{"content":"Once upon"},"done":false}"#,
            r#"{"model":"m","message":{"content":" a"},"done":true,"done_reason":"length","prompt_eval_count":4,"eval_count":8}"#,
        ]);
        assert_eq!(flow, Flow::Done);
        assert_eq!(names(&events).last(), Some(&"response.incomplete"));
        let response = check_stream(&events);
        assert_eq!(response["status"], json!("incomplete"));
        assert_eq!(response["incomplete_details"], json!({"reason": "max_output_tokens"}));
        eq_json(
            &response["output"],
            &json!([reasoning("rs_t1_0", "hm"), message("msg_t1_1", "incomplete", "Once upon a")]),
        );
        assert_eq!(response["usage"]["output_tokens"], json!(8));
    }

    #[test]
    fn stream_that_fails_mid_way_ends_with_response_failed() {
        let started = r#"{"model":"m","message":{"content":"","thinking":"Let me"},"done":false}"#;
        for (line, message) in testkit::bad_lines() {
            let (out, stream) =
                testkit::after_a_bad_line(ResponsesStream::new(ctx()), started, &line, TEXT[2]);
            let events = events(&out);
            assert_eq!(names(&events).last(), Some(&"response.failed"), "{line}");
            let response = check_stream(&events);
            assert_eq!(response["status"], json!("failed"));
            assert_eq!(response["error"]["code"], json!("server_error"));
            let got = response["error"]["message"].as_str().unwrap();
            assert!(got.starts_with(message) && got.len() < 300, "{got}");
            // The reasoning item was still open: it is not in the output.
            assert_eq!(response["output"], json!([]));
            assert_eq!(stream.usage(), None);
        }
    }

    #[test]
    fn stream_ending_early_ends_with_response_failed() {
        let call = r#"{"model":"m","message":{"content":"","tool_calls":[{"id":"call_k","function":{"name":"get_weather","arguments":{}}}]},"done":false}"#;
        let (out, _) = testkit::ended_early(ResponsesStream::new(ctx()), &[TEXT[0], call], None);
        let response = check_stream(&events(&out));
        let message = response["error"]["message"].as_str().unwrap();
        assert!(message.contains("closed the stream before finishing"), "{message}");
        // Items finished before the break are kept.
        let kinds: Vec<&Value> =
            response["output"].as_array().unwrap().iter().map(|item| &item["type"]).collect();
        assert_eq!(kinds, [&json!("message"), &json!("function_call")]);

        // A read error before any line: the stream still opens, then fails with its text.
        let (out, _) =
            testkit::ended_early(ResponsesStream::new(ctx()), &[], Some("timed out reading from upstream"));
        let got = events(&out);
        assert_eq!(names(&got), ["response.created", "response.in_progress", "response.failed"]);
        assert_eq!(check_stream(&got)["error"]["message"], json!("timed out reading from upstream"));

        // After a finished stream, EOF adds nothing.
        testkit::assert_end_adds_nothing(ResponsesStream::new(ctx()), &TEXT);
    }

    #[test]
    fn stream_error_on_the_first_line_still_opens_the_response() {
        let (events, flow, _) = run(&[r#"{"error":"model 'x' not found"}"#]);
        assert_eq!(flow, Flow::Done);
        assert_eq!(names(&events), ["response.created", "response.in_progress", "response.failed"]);
        assert_eq!(check_stream(&events)["error"]["message"], json!("model 'x' not found"));
    }

    #[test]
    fn stream_blank_lines_are_skipped_and_a_bare_done_line_gives_an_empty_message() {
        let mut stream = ResponsesStream::new(ctx());
        testkit::assert_blanks_skipped(&mut stream, &testkit::BLANK_LINES[..3]);
        let mut out = Vec::new();
        let done =
            format!("{}\r", r#"{"model":"m","message":{"role":"assistant","content":""},"done":true}"#);
        assert_eq!(stream.push_line(done.as_bytes(), &mut out), Flow::Done);
        let events = events(&out);
        let response = check_stream(&events);
        eq_json(&response["output"], &json!([message("msg_t1_0", "completed", "")]));
        assert_eq!(stream.usage(), Some(Usage { prompt: 0, completion: 0 }));
    }

    /// What Codex CLI needs (captures' README): text deltas only after the item's
    /// `response.output_item.added`; the final message and every tool call in
    /// `response.output_item.done`; `response.completed` with `usage`.
    #[test]
    fn stream_gives_codex_what_it_reads() {
        let body = json!({"model": "my-coder", "stream": true, "tool_choice": "auto", "parallel_tool_calls": true,
            "reasoning": {"summary": "auto"}, "store": false, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "cache-2", "client_metadata": {"session_id": "s-2"},
            "tools": [{"type": "function", "name": "exec_command", "strict": false,
                       "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
                      {"type": "namespace", "name": "helpers_v1", "description": "Helpers.",
                       "tools": [{"type": "function", "name": "start_helper", "strict": false,
                                  "parameters": {"type": "object", "properties": {}}}]},
                      {"type": "web_search", "external_web_access": false}],
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List files."}]}]});
        let request = to_ollama(&body).unwrap();
        let mut stream = ResponsesStream::new(request.context("resp_codex1".into(), 1_800_000_000));
        let mut out = Vec::new();
        for line in [
            r#"{"model":"qwen3:8b","created_at":"2026-12-01T10:00:00Z","message":{"role":"assistant","content":"","thinking":"Use the shell."},"done":false}"#,
            r#"{"model":"qwen3:8b","created_at":"2026-12-01T10:00:01Z","message":{"role":"assistant","content":"Listing"},"done":false}"#,
            r#"{"model":"qwen3:8b","created_at":"2026-12-01T10:00:01Z","message":{"role":"assistant","content":" now."},"done":false}"#,
            r#"{"model":"qwen3:8b","created_at":"2026-12-01T10:00:02Z","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_x1y2z3w4","function":{"index":0,"name":"exec_command","arguments":{"cmd":"ls"}}},{"id":"call_q9r8s7t6","function":{"index":1,"name":"helpers_v1__start_helper","arguments":{}}}]},"done":false}"#,
            r#"{"model":"qwen3:8b","created_at":"2026-12-01T10:00:02Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":1200,"eval_count":40}"#,
        ] {
            stream.push_line(line.as_bytes(), &mut out);
        }
        let events = events(&out);
        let response = check_stream(&events);

        let added: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == json!("response.output_item.added"))
            .map(|e| &e["item"]["id"])
            .collect();
        for delta in events.iter().filter(|e| e["type"] == json!("response.output_text.delta")) {
            assert!(added.contains(&&delta["item_id"]), "delta for an item never added: {delta}");
        }
        let done: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == json!("response.output_item.done"))
            .map(|e| &e["item"])
            .collect();
        assert_eq!(done[1]["content"][0]["text"], json!("Listing now."));
        assert_eq!(
            (&done[2]["name"], &done[2]["call_id"], &done[2]["arguments"]),
            (&json!("exec_command"), &json!("call_x1y2z3w4"), &json!("{\"cmd\":\"ls\"}"))
        );
        assert_eq!(
            (&done[3]["namespace"], &done[3]["name"], &done[3]["call_id"]),
            (&json!("helpers_v1"), &json!("start_helper"), &json!("call_q9r8s7t6"))
        );
        let last = events.last().unwrap();
        assert_eq!(last["type"], json!("response.completed"));
        assert_eq!((&response["id"], &response["model"]), (&json!("resp_codex1"), &json!("my-coder")));
        eq_json(
            &response["usage"],
            &json!({"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 40,
                    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1240}),
        );
        assert_eq!(response["completed_at"], json!(1_796_119_202));
        assert_eq!(response["store"], json!(false));
    }
}
