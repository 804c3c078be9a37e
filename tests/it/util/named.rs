//! The Responses and Messages APIs on the wire: strict mirror types of their objects and
//! stream events (a stray or misspelt field fails to decode), the checks every stream of
//! each must pass, and the assertion for Anthropic's error envelope.
//!
//! The tests compare `serde_json::Value`s, which print well; these types only decode them,
//! so a field the gateway adds, drops or misspells fails the test that saw it.

// Fields exist to be checked by serde, not read.
#![allow(dead_code)]

use super::sse::Named;
use super::JsonReply;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Decodes `value` as `T` strictly, or panics naming `what`.
#[track_caller]
fn strict<T: DeserializeOwned>(value: &Value, what: &str) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("not a strict {what} ({e}): {value}"))
}

// ---------------------------------------------------------------------------------------
// OpenAI Responses
// ---------------------------------------------------------------------------------------

/// A `response` object, with every setting it echoes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub id: String,
    pub object: String,
    pub created_at: i64,
    pub status: String,
    pub completed_at: Option<i64>,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<Value>,
    pub model: String,
    pub output: Vec<Item>,
    pub usage: Option<ResponseUsage>,
    pub background: bool,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub max_tool_calls: Option<u64>,
    pub metadata: Value,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub reasoning: Value,
    pub safety_identifier: Option<String>,
    pub service_tier: String,
    pub store: bool,
    pub temperature: f64,
    pub text: Value,
    pub tool_choice: Value,
    pub tools: Vec<Value>,
    pub top_logprobs: u32,
    pub top_p: f64,
    pub truncation: String,
    pub user: Option<String>,
}

/// A failed response's `error`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// A response's token counts.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub input_tokens_details: Value,
    pub output_tokens: u64,
    pub output_tokens_details: Value,
    pub total_tokens: u64,
}

/// An output item.
#[derive(Debug, Deserialize)]
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

/// An `output_text` part.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    pub annotations: Vec<Value>,
    pub logprobs: Vec<Value>,
}

/// A `summary_text` part.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryText {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

/// One Responses stream event.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ResponsesEvent {
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
    SummaryDone { sequence_number: u64, item_id: String, output_index: u32, summary_index: u32, text: String },
    #[serde(rename = "response.function_call_arguments.delta")]
    ArgumentsDelta { sequence_number: u64, item_id: String, output_index: u32, delta: String },
    #[serde(rename = "response.function_call_arguments.done")]
    ArgumentsDone { sequence_number: u64, item_id: String, output_index: u32, arguments: String },
}

/// Decodes a whole `response` object strictly.
#[track_caller]
pub fn check_response(value: &Value) -> Response {
    let response: Response = strict(value, "response");
    assert_eq!(response.object, "response", "{value}");
    response
}

/// Checks what every Responses stream must be: each event strict, `sequence_number`
/// 0, 1, 2, … with no gap, `response.created` and `response.in_progress` first, exactly one
/// final event (`response.completed`, `.incomplete` or `.failed`) and it last, and one
/// response id throughout. Returns the final event's `response`.
#[track_caller]
pub fn check_responses_stream(events: &[Named]) -> Value {
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    for (i, event) in events.iter().enumerate() {
        let _: ResponsesEvent = strict(&event.data, "Responses event");
        assert_eq!(event.data["sequence_number"], Value::from(i), "sequence numbers rise by one: {names:?}");
    }
    assert!(names.len() >= 3, "too short a stream: {names:?}");
    assert_eq!(names[..2], ["response.created", "response.in_progress"], "{names:?}");
    let finals = ["response.completed", "response.incomplete", "response.failed"];
    let final_at: Vec<usize> = (0..names.len()).filter(|&i| finals.contains(&names[i])).collect();
    assert_eq!(final_at, [names.len() - 1], "one final event, last: {names:?}");
    let id = &events[0].data["response"]["id"];
    assert!(id.as_str().is_some_and(|id| id.starts_with("resp_")), "{id}");
    for event in events.iter().filter(|e| e.data.get("response").is_some()) {
        assert_eq!(&event.data["response"]["id"], id, "one response id: {}", event.data);
    }
    events.last().unwrap().data["response"].clone()
}

// ---------------------------------------------------------------------------------------
// Anthropic Messages
// ---------------------------------------------------------------------------------------

/// A `message` object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub role: String,
    pub model: String,
    pub content: Vec<Block>,
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    pub usage: MessageUsage,
}

/// A content block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text { text: String },
    Thinking { thinking: String, signature: String },
    ToolUse { id: String, name: String, input: serde_json::Map<String, Value> },
}

/// A message's token counts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// A `content_block_delta`'s delta.
#[derive(Debug, Deserialize)]
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

/// A `message_delta`'s delta.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageDelta {
    pub stop_reason: String,
    pub stop_sequence: Option<String>,
}

/// One Messages stream event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum MessagesEvent {
    MessageStart { message: Message },
    Ping,
    ContentBlockStart { index: usize, content_block: Block },
    ContentBlockDelta { index: usize, delta: Delta },
    ContentBlockStop { index: usize },
    MessageDelta { delta: MessageDelta, usage: MessageUsage },
    MessageStop,
    Error { error: AnthropicErrorBody },
}

/// Anthropic's error envelope, `{"type":"error","error":{"type","message"}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicError {
    #[serde(rename = "type")]
    pub kind: String,
    pub error: AnthropicErrorBody,
}

/// The `error` of Anthropic's envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// Decodes a whole `message` object strictly.
#[track_caller]
pub fn check_message(value: &Value) -> Message {
    let message: Message = strict(value, "message");
    assert_eq!((message.kind.as_str(), message.role.as_str()), ("message", "assistant"), "{value}");
    message
}

/// Checks what every Messages stream must be: each event strict, `message_start` first,
/// blocks indexed 0, 1, 2, … each started, given deltas and stopped before the next
/// starts, and either `message_delta` then `message_stop` or one `error` event at the end.
/// Returns the events in short form: `start`, `ping`, `block 0 text`, `delta 0`,
/// `stop 0`, `message_delta end_turn`, `message_stop`, `error`.
#[track_caller]
pub fn check_messages_stream(events: &[Named]) -> Vec<String> {
    let mut outline = Vec::new();
    let mut open: Option<usize> = None;
    let mut next = 0;
    for event in events {
        let _: MessagesEvent = strict(&event.data, "Messages event");
        let index = event.data["index"].as_u64().map(|i| i as usize);
        let short = match event.name.as_str() {
            "message_start" => "start".to_string(),
            "ping" => "ping".to_string(),
            "content_block_start" => {
                assert_eq!(
                    (open, index),
                    (None, Some(next)),
                    "blocks open one at a time, in order: {outline:?}"
                );
                open = index;
                next += 1;
                format!("block {} {}", next - 1, event.data["content_block"]["type"].as_str().unwrap())
            }
            "content_block_delta" => {
                assert_eq!(index, open, "a delta for the open block: {outline:?}");
                format!("delta {}", index.unwrap())
            }
            "content_block_stop" => {
                assert_eq!(index, open, "the open block stops: {outline:?}");
                open = None;
                format!("stop {}", index.unwrap())
            }
            "message_delta" => {
                format!("message_delta {}", event.data["delta"]["stop_reason"].as_str().unwrap())
            }
            other => other.to_string(),
        };
        outline.push(short);
    }
    assert_eq!(outline.first().map(String::as_str), Some("start"), "{outline:?}");
    assert_eq!(open, None, "every block stopped: {outline:?}");
    let ends_well = outline.len() >= 2
        && outline[outline.len() - 2].starts_with("message_delta ")
        && outline[outline.len() - 1] == "message_stop";
    let ends_in_error = outline.last().map(String::as_str) == Some("error");
    assert!(ends_well || ends_in_error, "message_delta + message_stop, or an error, at the end: {outline:?}");
    let ends = outline.iter().filter(|e| *e == "message_stop" || *e == "error").count();
    assert_eq!(ends, 1, "one end: {outline:?}");
    outline
}

/// Asserts `reply` is Anthropic's error envelope with `status` and error `type`, and
/// returns its message.
#[track_caller]
pub fn assert_anthropic_error(reply: &JsonReply, status: u16, kind: &str) -> String {
    assert_eq!(reply.status, status, "status; body: {}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"), "body: {}", reply.text);
    let error: AnthropicError = serde_json::from_value(reply.body.clone())
        .unwrap_or_else(|e| panic!("not Anthropic's error envelope ({e}): {}", reply.text));
    assert_eq!((error.kind.as_str(), error.error.kind.as_str()), ("error", kind), "{}", reply.text);
    assert!(!error.error.message.trim().is_empty(), "empty message: {}", reply.text);
    error.error.message
}
