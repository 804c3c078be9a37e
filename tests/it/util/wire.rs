//! What the gateway writes on the wire, as strict mirror types (a stray or misspelt field
//! fails to decode), and assertions over error envelopes and completions.

// Fields exist to be checked by serde, and read by some tests only.
#![allow(dead_code)]

use super::JsonReply;
use serde::Deserialize;
use serde_json::Value;
use std::time::Instant;

/// `{"error": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub error: ErrorBody,
}

/// The four fields of an OpenAI error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// A `chat.completion`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

/// `choices[i]` of a completion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub index: u32,
    pub message: Message,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

/// A completion's message, or a chunk's delta.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Option<String>,
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One tool call.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    pub index: Option<u32>,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Function,
}

/// A tool call's function; `arguments` is a JSON string.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    pub arguments: String,
}

/// Token counts.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: Option<Value>,
}

/// A `chat.completion.chunk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    pub usage: Option<Usage>,
}

/// `choices[i]` of a chunk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Message,
    pub finish_reason: Option<String>,
    pub logprobs: Option<Value>,
}

/// One SSE payload, decoded.
#[derive(Debug)]
pub enum Event {
    /// A `chat.completion.chunk`.
    Chunk(Chunk),
    /// `{"error": {...}}`.
    Error(ErrorBody),
    /// `[DONE]`.
    Done,
}

/// Decodes SSE payloads strictly.
pub fn decode_events(events: &[(Instant, String)]) -> Vec<Event> {
    events.iter().map(|(_, payload)| decode_event(payload)).collect()
}

/// Decodes one SSE payload strictly.
pub fn decode_event(payload: &str) -> Event {
    if payload == "[DONE]" {
        return Event::Done;
    }
    let value: Value = serde_json::from_str(payload).unwrap_or_else(|e| panic!("event {payload}: {e}"));
    if value.get("error").is_some() {
        assert_envelope_fields(&value);
        let envelope: Envelope = serde_json::from_value(value).unwrap();
        return Event::Error(envelope.error);
    }
    let chunk: Chunk = serde_json::from_value(value).unwrap_or_else(|e| panic!("chunk {payload}: {e}"));
    assert_eq!(chunk.object, "chat.completion.chunk", "{payload}");
    Event::Chunk(chunk)
}

/// Checks that an error envelope carries exactly `message`, `type`, `param` and `code`.
#[track_caller]
fn assert_envelope_fields(value: &Value) {
    let mut keys: Vec<&str> =
        value["error"].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    keys.sort_unstable();
    eqnice!(vec!["code", "message", "param", "type"], keys, "error envelope {value}");
}

/// Asserts `reply` is an OpenAI error envelope with `status`, and returns its body.
#[track_caller]
pub fn assert_envelope(reply: &JsonReply, status: u16) -> ErrorBody {
    assert_eq!(reply.status, status, "status; body: {}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"), "body: {}", reply.text);
    assert_envelope_fields(&reply.body);
    let envelope: Envelope = serde_json::from_value(reply.body.clone())
        .unwrap_or_else(|e| panic!("not an error envelope ({e}): {}", reply.text));
    assert!(!envelope.error.message.trim().is_empty(), "empty message: {}", reply.text);
    envelope.error
}

/// Decodes a `chat.completion` strictly.
#[track_caller]
pub fn completion(reply: &JsonReply) -> Completion {
    assert_eq!(reply.status, 200, "status; body: {}", reply.text);
    let completion: Completion = serde_json::from_value(reply.body.clone())
        .unwrap_or_else(|e| panic!("not a chat.completion ({e}): {}", reply.text));
    assert_eq!(completion.object, "chat.completion");
    completion
}

/// A `text_completion`: the reply of `/v1/completions`, and each chunk of its stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextCompletion {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<TextChoice>,
    pub usage: Option<Usage>,
}

/// `choices[i]` of a `text_completion`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextChoice {
    pub text: String,
    pub index: u32,
    pub finish_reason: Option<String>,
}

/// The `/v1/embeddings` reply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingList {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// One vector of an [`EmbeddingList`]: numbers, or a base64 string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    pub object: String,
    pub embedding: Value,
    pub index: u32,
}

/// Token counts of an embeddings reply.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

/// The `/v1/models` reply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}

/// A model object, in the list or alone (`/v1/models/{id}`).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
}

/// Decodes a 200 reply strictly as `T`.
#[track_caller]
pub fn decode<T: serde::de::DeserializeOwned>(reply: &JsonReply) -> T {
    assert_eq!(reply.status, 200, "status; body: {}", reply.text);
    serde_json::from_value(reply.body.clone())
        .unwrap_or_else(|e| panic!("not a {} ({e}): {}", std::any::type_name::<T>(), reply.text))
}
