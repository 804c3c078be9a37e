//! What OpenAI-shaped replies share: the reply context, usage, and the error event.
//!
//! Used by the `chat` and `completions` translators; pure like the rest of `translate`.

use super::{rfc3339_to_unix, sse_data, ReasoningField, Usage};
use crate::error::ApiError;
use serde_json::{json, Map, Value};

/// Ollama's constant `system_fingerprint`.
pub(crate) const FINGERPRINT: &str = "fp_ollama";

/// What a stream that ends without its final line is told.
pub(crate) const INCOMPLETE: &str = "upstream closed the stream before finishing; the reply is incomplete";

/// The most characters of a bad upstream line quoted in an error event.
pub(crate) const QUOTED_LINE_CHARS: usize = 200;

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
        match &self.response_model {
            Some(model) => model.clone(),
            None => native.get("model").and_then(Value::as_str).unwrap_or_default().to_string(),
        }
    }

    /// Writes thinking text under the configured field name(s).
    pub(crate) fn put_reasoning(&self, target: &mut Map<String, Value>, thinking: &str) {
        for name in self.reasoning_field.names() {
            target.insert((*name).into(), thinking.into());
        }
    }
}

/// Token counts of a native final object (`prompt_eval_count` / `eval_count`, 0 when absent).
pub fn usage_of(native: &Value) -> Usage {
    let count = |key: &str| native.get(key).and_then(Value::as_u64).unwrap_or(0);
    Usage { prompt: count("prompt_eval_count"), completion: count("eval_count") }
}

/// The OpenAI `usage` object of a native final object.
pub(crate) fn usage_json(native: &Value) -> Value {
    let usage = usage_of(native);
    let mut json = json!({
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt.saturating_add(usage.completion),
    });
    if let Some(cached) = native.get("prompt_eval_cached_count").and_then(Value::as_u64) {
        json["prompt_tokens_details"] = json!({"cached_tokens": cached});
    }
    json
}

/// Appends the SSE error event that ends a broken stream.
pub(crate) fn error_event(message: &str, out: &mut Vec<u8>) {
    sse_data(&ApiError::server(502, message).to_json().to_string(), out);
}

/// The text of an upstream `{"error": …}` line (a string or an object with `message`).
pub(crate) fn upstream_error_text(error: &Value) -> String {
    let text = match error {
        Value::String(text) => text.clone(),
        Value::Object(obj) => match obj.get("message") {
            Some(Value::String(text)) => text.clone(),
            _ => error.to_string(),
        },
        other => other.to_string(),
    };
    if text.trim().is_empty() {
        "upstream reported an error without a message".to_string()
    } else {
        text
    }
}

/// One upstream NDJSON line of a stream being translated: `Ok(None)` for a blank line (to
/// skip), the object, or the text of the error event that must end the stream (an
/// `{"error": …}` line, or a line that is not a JSON object).
pub(crate) fn read_line(line: &[u8]) -> Result<Option<Value>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = match crate::json_cost::parse_tree(line) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            let quoted: String = String::from_utf8_lossy(line).chars().take(QUOTED_LINE_CHARS).collect();
            return Err(format!("upstream sent an invalid line (expected a JSON object): {quoted}"));
        }
    };
    match value.get("error").filter(|error| !error.is_null()) {
        Some(error) => Err(upstream_error_text(error)),
        None => Ok(Some(value)),
    }
}

/// The error event's text when upstream ends before its final line: its read error, or
/// that the reply is incomplete.
pub(crate) fn ended_message(error: Option<&str>) -> &str {
    match error {
        Some(text) if !text.trim().is_empty() => text,
        _ => INCOMPLETE,
    }
}
