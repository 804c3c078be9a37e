//! The one error type of the HTTP API, and its OpenAI error envelope.
//!
//! Every failure a client can see (validation, auth, upstream trouble) becomes an
//! [`ApiError`] somewhere in the gateway, and is turned into bytes here and nowhere else:
//! `{"error":{"message","type","param","code"}}` with the matching HTTP status.
//! This module also reads upstream (native Ollama) error bodies into an [`ApiError`].

use serde_json::{json, Value};
use std::fmt;

/// An error answered to an API client as an OpenAI-style envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: u16,
    /// OpenAI error `type` (`invalid_request_error`, `api_error`, ...).
    pub kind: &'static str,
    /// Human-readable text: what went wrong and, where we know, what to do.
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_api_key`, `model_not_found`, ...).
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 `invalid_request_error`, optionally naming the field at fault.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    /// A 401 for a missing or wrong gateway token. Never echoes the token.
    pub fn invalid_api_key(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 401,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    /// A 404 for a route the gateway does not serve.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            kind: "not_found_error",
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 413 for a request body over `max_body_bytes`.
    pub fn too_large(limit: u64) -> ApiError {
        ApiError {
            status: 413,
            kind: "invalid_request_error",
            message: format!(
                "request body is larger than {limit} bytes; send a smaller one or raise max_body_bytes in the gateway config"
            ),
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }

    /// The answer to a request whose client left while it waited on upstream (nginx's
    /// 499): nobody reads it, but the log line says what happened.
    pub fn client_gone() -> ApiError {
        ApiError::server(499, "the client closed the connection before the answer")
    }

    /// A 413 for a body within `max_body_bytes` whose JSON would take too much memory to
    /// parse (see `json_cost::tree_budget`).
    pub fn too_complex(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 413,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("request_too_complex"),
            retry_after: None,
        }
    }

    /// A 5xx `api_error` with our own message.
    pub fn server(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: "api_error",
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// The error of an upstream answer with a non-success status, its body read as
    /// native Ollama's `{"error":"…"}` (or as raw text when it is not JSON).
    pub fn from_upstream(status: u16, body: &[u8]) -> ApiError {
        let mut message = upstream_message(body);
        if status == 401 {
            // The client's token was fine (it got this far): the upstream refused our key.
            message = format!(
                "the upstream refused the gateway's key ({message}); the gateway operator should \
                 check keys.txt (`ollama-gateway keys`)"
            );
        }
        let (kind, code) = match status {
            400 => ("invalid_request_error", None),
            401 => ("invalid_request_error", Some("invalid_api_key")),
            403 => ("permission_error", None),
            404 => {
                ("not_found_error", if message.contains("model") { Some("model_not_found") } else { None })
            }
            413 => ("invalid_request_error", None),
            429 => ("rate_limit_error", Some("rate_limit_exceeded")),
            _ => ("api_error", None),
        };
        ApiError { status, kind, message, param: None, code, retry_after: None }
    }

    /// The envelope as a JSON value.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// The envelope as bytes, ready to send.
    pub fn body(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The text of an upstream error body: the `error` string of a JSON object (also an
/// OpenAI-style `error.message`), else the trimmed raw text.
pub fn upstream_message(body: &[u8]) -> String {
    const FALLBACK: &str = "upstream returned an error without a message";
    if let Ok(value) = crate::json_cost::parse_tree(body) {
        match value.get("error") {
            Some(Value::String(text)) if !text.is_empty() => return text.clone(),
            Some(Value::Object(obj)) => {
                if let Some(Value::String(text)) = obj.get("message") {
                    return text.clone();
                }
            }
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        FALLBACK.to_string()
    } else {
        // An HTML error page or similar: keep it short enough for a log line.
        text.chars().take(500).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_all_four_fields() {
        let err = ApiError::bad_request("messages must be an array", Some("messages"));
        assert_eq!(
            err.to_json(),
            json!({"error":{"message":"messages must be an array","type":"invalid_request_error","param":"messages","code":null}})
        );
    }

    #[test]
    fn upstream_bodies_are_read_as_json_or_text() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"error":"model 'x' not found"}"#, "model 'x' not found"),
            (br#"{"error":{"message":"nested","type":"x"}}"#, "nested"),
            (b"Server overloaded\n", "Server overloaded"),
            (b"", "upstream returned an error without a message"),
            (br#"{"error":""}"#, r#"{"error":""}"#),
        ];
        for (body, want) in cases {
            assert_eq!(upstream_message(body), *want, "body {:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn upstream_status_is_kept_and_typed() {
        let err = ApiError::from_upstream(404, br#"{"error":"model 'nope' not found"}"#);
        assert_eq!((err.status, err.kind, err.code), (404, "not_found_error", Some("model_not_found")));
        let err = ApiError::from_upstream(429, br#"{"error":"you have reached your session usage limit"}"#);
        assert_eq!((err.status, err.kind, err.code), (429, "rate_limit_error", Some("rate_limit_exceeded")));
        let err = ApiError::from_upstream(503, b"Server overloaded");
        assert_eq!((err.status, err.kind), (503, "api_error"));
    }
}
