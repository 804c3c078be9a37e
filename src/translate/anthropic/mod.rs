//! Anthropic Messages: `/v1/messages` and `/v1/messages/count_tokens` <-> Ollama `/api/chat`.
//!
//! [`to_ollama`] validates a Messages request and builds the native `/api/chat` body;
//! [`from_ollama`] turns a native non-streaming reply into a `message` object;
//! [`MessagesStream`] turns native NDJSON lines, one at a time, into Anthropic's named SSE
//! events; [`count_tokens`] estimates a request's input tokens locally; and [`crate::error`]
//! writes any [`ApiError`](crate::error::ApiError) in Anthropic's error envelope. The rules follow Ollama's own
//! Anthropic layer (`anthropic/anthropic.go`) where it is right, and what Claude Code needs
//! where it is not (thinking signatures, the billing header, server tools).
//!
//! In scope: request validation with errors that name the field at fault, system, message,
//! block, tool and thinking mapping, `stop_reason`, usage, the SSE events and block indexes,
//! the error event that ends a broken stream, the token estimate, the error envelope.
//! Out of scope: IO, the clock, model routing, keys, HTTP status lines and headers (the
//! handler sends `Retry-After`), ids (the caller passes `msg_…`).

mod content;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod testkit;
mod tokens;

pub use super::reply::usage_of;
pub use request::{retry_without_thinking, to_ollama, MessagesRequest};
pub use response::from_ollama;
pub use stream::MessagesStream;
pub use tokens::count_tokens;

use super::random_id;
use serde_json::{json, Map, Value};

/// What the reply needs to know that upstream does not say.
#[derive(Debug, Clone)]
pub struct MessageContext {
    /// The message id (`msg_…`), constant for the whole reply.
    pub id: String,
    /// The model name to report: the one the client asked for.
    pub model: String,
}

/// The signature given to every thinking block the gateway writes (base64 of
/// `ollama-gateway`). Ollama's thinking is not signed, but Claude Code drops a streamed
/// thinking block (and with it the whole turn) that ends without a `signature_delta`. It is
/// opaque to clients, and ignored when it comes back in a later request.
pub(crate) const THINKING_SIGNATURE: &str = "b2xsYW1hLWdhdGV3YXk=";

/// Anthropic's `stop_reason` for a native final object. `length` is always `max_tokens`
/// (the reply was cut, whatever came before); otherwise `tool_use` when a tool was called,
/// else `end_turn`. Ollama says `stop` both at the end of a turn and on a stop sequence
/// (and trims the sequence), so `stop_sequence` cannot be told apart and is never given.
fn stop_reason(native: &Value, made_tool_calls: bool) -> &'static str {
    match native.get("done_reason").and_then(Value::as_str) {
        Some("length") => "max_tokens",
        _ if made_tool_calls => "tool_use",
        _ => "end_turn",
    }
}

/// The `usage` object of a native final object. Anthropic's `input_tokens` excludes cache
/// hits, so a `prompt_eval_cached_count` (when upstream sends one) moves there.
fn usage_json(native: &Value) -> Value {
    let usage = usage_of(native);
    let cached =
        native.get("prompt_eval_cached_count").and_then(Value::as_u64).unwrap_or(0).min(usage.prompt);
    json!({
        "input_tokens": usage.prompt - cached,
        "output_tokens": usage.completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    })
}

/// The id, name and input of a native tool call: upstream's id, or a new `toolu_…` one.
fn tool_use_parts(call: &Value) -> (String, &str, Value) {
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => random_id("toolu_"),
    };
    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
    let input = match call.pointer("/function/arguments") {
        Some(object @ Value::Object(_)) => object.clone(),
        // Not what Ollama sends, but other upstreams encode arguments as a string.
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => object,
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    };
    (id, name, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::eq_json;

    #[test]
    fn stop_reasons() {
        let cases = [
            (json!("stop"), false, "end_turn"),
            (json!(null), false, "end_turn"),
            (json!("length"), false, "max_tokens"),
            (json!("length"), true, "max_tokens"),
            (json!("stop"), true, "tool_use"),
            (json!(null), true, "tool_use"),
            (json!("unload"), false, "end_turn"),
        ];
        for (done_reason, calls, want) in cases {
            assert_eq!(
                stop_reason(&json!({"done_reason": done_reason}), calls),
                want,
                "{done_reason} {calls}"
            );
        }
    }

    #[test]
    fn usage_moves_cache_hits_out_of_input_tokens() {
        eq_json(
            &usage_json(&json!({"prompt_eval_count": 100, "prompt_eval_cached_count": 64, "eval_count": 5})),
            &json!({"input_tokens": 36, "output_tokens": 5, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 64}),
        );
        eq_json(
            &usage_json(&json!({})),
            &json!({"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0}),
        );
    }
}
