//! Reading fields of a client's JSON request, with errors that name the field.
//!
//! Shared by the request translators (`chat`, `completions`, `embeddings`, `responses`,
//! `anthropic`): each helper reads one field, treats JSON `null` as absent, and on a wrong
//! type answers a 400 whose `param` is the field's path and whose message says what was
//! expected and what came. Also here: the fields most requests share (`model`,
//! `stream_options`, `messages`) and the shape of the objects inside them.

use crate::error::ApiError;
use serde_json::{Map, Value};

/// The value of `key`, with JSON `null` read as absent.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|value| !value.is_null())
}

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// What a client sent, in words, for error messages.
pub(crate) fn describe(value: Option<&Value>) -> &'static str {
    match value {
        None | Some(Value::Null) => "nothing",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number",
        Some(Value::String(text)) if text.trim().is_empty() => "an empty string",
        Some(Value::String(_)) => "a string",
        Some(Value::Array(list)) if list.is_empty() => "an empty array",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

/// A 400 saying what `param` must be and what was sent instead.
pub(crate) fn expected(param: &str, what: &str, got: Option<&Value>) -> ApiError {
    ApiError::bad_request(format!("{param} must be {what}, got {}", describe(got)), Some(param))
}

/// An optional boolean field.
pub(crate) fn opt_bool(obj: &Map<String, Value>, prefix: &str, key: &str) -> Result<Option<bool>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        other => Err(expected(&join(prefix, key), "true or false", other)),
    }
}

/// An optional string field.
pub(crate) fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<&'a str>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        other => Err(expected(&join(prefix, key), "a string", other)),
    }
}

/// An integer field, as the JSON number sent.
pub(crate) fn opt_integer(
    obj: &Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<Value>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(number @ Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(number.clone())),
        other => Err(expected(&join(prefix, key), "an integer", other)),
    }
}

/// A top-level number field, as the JSON number sent.
pub(crate) fn opt_number(obj: &Map<String, Value>, key: &str) -> Result<Option<Value>, ApiError> {
    match field(obj, key) {
        None => Ok(None),
        Some(number @ Value::Number(_)) => Ok(Some(number.clone())),
        other => Err(expected(key, "a number", other)),
    }
}

/// The request body as a JSON object.
pub(crate) fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::bad_request(
            format!("the request body must be a JSON object, got {}", describe(Some(body))),
            None,
        )
    })
}

/// The request body as a JSON object, and its `model`: a non-empty string, else a 400
/// saying it must be `what` (such as "the name of a model, such as \"llama3.2\"").
pub(crate) fn object_and_model<'a>(
    body: &'a Value,
    what: &str,
) -> Result<(&'a Map<String, Value>, String), ApiError> {
    let req = object(body)?;
    match field(req, "model") {
        Some(Value::String(model)) if !model.trim().is_empty() => Ok((req, model.clone())),
        other => Err(expected("model", what, other)),
    }
}

/// `stream_options.include_usage` (OpenAI's switch for a final usage chunk), `false` when
/// absent.
pub(crate) fn include_usage(req: &Map<String, Value>) -> Result<bool, ApiError> {
    match field(req, "stream_options") {
        None => Ok(false),
        Some(Value::Object(options)) => {
            Ok(opt_bool(options, "stream_options", "include_usage")?.unwrap_or(false))
        }
        other => Err(expected("stream_options", "an object such as {\"include_usage\":true}", other)),
    }
}

/// The `messages` of a chat-shaped request: a non-empty array.
pub(crate) fn message_list(req: &Map<String, Value>) -> Result<&[Value], ApiError> {
    match field(req, "messages") {
        Some(Value::Array(list)) if !list.is_empty() => Ok(list),
        other => Err(expected(
            "messages",
            "a non-empty array of messages such as [{\"role\":\"user\",\"content\":\"Hi\"}]",
            other,
        )),
    }
}

/// One of those messages (at `path`) as an object.
pub(crate) fn message_object<'a>(message: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ApiError> {
    message.as_object().ok_or_else(|| {
        expected(path, "a message object such as {\"role\":\"user\",\"content\":\"Hi\"}", Some(message))
    })
}

/// An object with a string `type` (a content part, a block, an item) at `path`, and that
/// type: else a 400 saying it must be `what`, or that its `type` must be `kind_what`.
pub(crate) fn typed<'a>(
    value: &'a Value,
    path: &str,
    what: &str,
    kind_what: &str,
) -> Result<(&'a str, &'a Map<String, Value>), ApiError> {
    let Some(obj) = value.as_object() else {
        return Err(expected(path, what, Some(value)));
    };
    match field(obj, "type") {
        Some(Value::String(kind)) => Ok((kind, obj)),
        other => Err(expected(&join(path, "type"), kind_what, other)),
    }
}
