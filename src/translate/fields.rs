//! Reading fields of a client's JSON request, with errors that name the field.
//!
//! Shared by the request translators (`chat`, `completions`, `embeddings`): each helper
//! reads one field, treats JSON `null` as absent, and on a wrong type answers a 400 whose
//! `param` is the field's path and whose message says what was expected and what came.

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
