//! What OpenAI-shaped replies share: the reply context, the stream head, usage, errors.
//!
//! Used by the `chat` and `completions` translators, whose streams differ only in their
//! choices: both chunks carry the same head (id, pinned `created`, model, fingerprint) and
//! both streams end with the same tail (a usage chunk when asked for, then `[DONE]`).
//! Also here, for every API's replies: reading a native reply ([`usage_of`],
//! [`message_text`], [`native_tool_calls`]).

use super::stream::{sse_data, sse_json};
use super::{rfc3339_to_unix, ReasoningField, Usage};
use crate::error::ApiError;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

/// Ollama's constant `system_fingerprint`.
pub(crate) const FINGERPRINT: &str = "fp_ollama";

/// What the reply needs to know that upstream does not say.
#[derive(Debug, Clone)]
pub struct ReplyContext {
    /// The completion id (`chatcmpl-…`), constant for the whole reply.
    pub id: String,
    /// Unix seconds used as `created` when upstream has no `created_at`.
    pub created_fallback: i64,
    /// When set, the model name to report instead of upstream's.
    pub response_model: Option<String>,
    /// Where thinking text goes.
    pub reasoning_field: ReasoningField,
    /// Whether a stream ends with a usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl ReplyContext {
    /// The `created` of a native object: its `created_at`, else the fallback.
    pub(crate) fn created(&self, native: &Value) -> i64 {
        native
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(rfc3339_to_unix)
            .unwrap_or(self.created_fallback)
    }

    /// The `model` to report for a native object.
    pub(crate) fn model(&self, native: &Value) -> String {
        self.model_of(native).to_string()
    }

    /// [`ReplyContext::model`], borrowed.
    pub(crate) fn model_of<'a>(&'a self, native: &'a Value) -> &'a str {
        match &self.response_model {
            Some(model) => model,
            None => native.get("model").and_then(Value::as_str).unwrap_or_default(),
        }
    }

    /// Writes thinking text under the configured field name(s).
    pub(crate) fn put_reasoning(&self, target: &mut Map<String, Value>, thinking: &str) {
        for name in self.reasoning_field.names() {
            target.insert((*name).into(), thinking.into());
        }
    }
}

/// The head and tail of a `chat.completion.chunk` or `text_completion` stream.
#[derive(Debug)]
pub(crate) struct StreamHead {
    /// The reply's context (chat also reads where thinking goes).
    pub(crate) ctx: ReplyContext,
    /// The chunks' `object`.
    object: &'static str,
    /// `created` of the first line, pinned for every chunk.
    created: Option<i64>,
    /// The model of the latest line (or `ctx.response_model`).
    model: String,
}

impl StreamHead {
    /// The head of a stream whose chunks are `object`s.
    pub(crate) fn new(ctx: ReplyContext, object: &'static str) -> StreamHead {
        let model = ctx.response_model.clone().unwrap_or_default();
        StreamHead { ctx, object, created: None, model }
    }

    /// Takes in a native line: the first one pins `created`, each one's model is reported.
    pub(crate) fn follow(&mut self, native: &Value) {
        if self.created.is_none() {
            self.created = Some(self.ctx.created(native));
        }
        if self.ctx.response_model.is_none() {
            if let Some(model) = native.get("model").and_then(Value::as_str) {
                self.model = model.to_string();
            }
        }
    }

    /// Writes one chunk around `choices`.
    pub(crate) fn write(&self, choices: Value, out: &mut Vec<u8>) {
        sse_json(&Chunk { head: self, choices: &choices, usage: None }, out);
    }

    /// Ends a stream after its last chunk: the usage chunk when asked for, then `[DONE]`.
    pub(crate) fn finish(&self, native: &Value, out: &mut Vec<u8>) {
        if self.ctx.include_usage {
            sse_json(&Chunk { head: self, choices: &json!([]), usage: Some(UsageView(native)) }, out);
        }
        sse_data("[DONE]", out);
    }
}

/// One chunk of a stream: the head's fields around `choices` (and `usage`, in the usage
/// chunk), written without building the chunk as a tree.
struct Chunk<'a> {
    head: &'a StreamHead,
    choices: &'a Value,
    usage: Option<UsageView<'a>>,
}

impl Serialize for Chunk<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let head = self.head;
        let mut chunk = serializer.serialize_map(Some(6 + usize::from(self.usage.is_some())))?;
        chunk.serialize_entry("id", &head.ctx.id)?;
        chunk.serialize_entry("object", head.object)?;
        chunk.serialize_entry("created", &head.created.unwrap_or(head.ctx.created_fallback))?;
        chunk.serialize_entry("model", &head.model)?;
        chunk.serialize_entry("system_fingerprint", FINGERPRINT)?;
        chunk.serialize_entry("choices", self.choices)?;
        if let Some(usage) = &self.usage {
            chunk.serialize_entry("usage", usage)?;
        }
        chunk.end()
    }
}

/// A text field (`content`, `thinking`, `role`) of a native object's `message`; `""` when
/// absent.
pub(crate) fn message_text<'a>(native: &'a Value, key: &str) -> &'a str {
    native.get("message").and_then(|message| message.get(key)).and_then(Value::as_str).unwrap_or("")
}

/// The native `message.tool_calls` of an object (empty when absent).
pub(crate) fn native_tool_calls(native: &Value) -> &[Value] {
    native.pointer("/message/tool_calls").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Token counts of a native final object (`prompt_eval_count` / `eval_count`, 0 when absent).
pub fn usage_of(native: &Value) -> Usage {
    let count = |key: &str| native.get(key).and_then(Value::as_u64).unwrap_or(0);
    Usage { prompt: count("prompt_eval_count"), completion: count("eval_count") }
}

/// The OpenAI `usage` object of a native final object.
pub(crate) fn usage_json(native: &Value) -> Value {
    serde_json::to_value(UsageView(native)).unwrap_or_default()
}

/// The OpenAI `usage` object of a native final object, written without a tree:
/// `prompt_tokens`, `completion_tokens`, `total_tokens`, and `prompt_tokens_details` when
/// upstream says how many prompt tokens came from its cache.
pub(crate) struct UsageView<'a>(pub(crate) &'a Value);

impl Serialize for UsageView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let usage = usage_of(self.0);
        let cached = self.0.get("prompt_eval_cached_count").and_then(Value::as_u64);
        let mut json = serializer.serialize_map(Some(3 + usize::from(cached.is_some())))?;
        json.serialize_entry("prompt_tokens", &usage.prompt)?;
        json.serialize_entry("completion_tokens", &usage.completion)?;
        json.serialize_entry("total_tokens", &usage.prompt.saturating_add(usage.completion))?;
        if let Some(cached) = cached {
            json.serialize_entry("prompt_tokens_details", &json!({"cached_tokens": cached}))?;
        }
        json.end()
    }
}

/// Appends the SSE error event that ends a broken stream.
pub(crate) fn error_event(message: &str, out: &mut Vec<u8>) {
    sse_data(&ApiError::server(502, message).to_json().to_string(), out);
}
