//! The one error type of the HTTP API, how failures below it become one, and its
//! envelopes.
//!
//! Every failure a client can see (validation, auth, limits, upstream trouble, a pool with
//! no usable key) becomes an [`ApiError`], and is turned into bytes here and nowhere else,
//! in the envelope of the request's API [`Family`]: OpenAI's
//! `{"error":{"message","type","param","code"}}`, Ollama's `{"error":"…"}`, Anthropic's
//! `{"type":"error","error":{"type","message"}}` or the Gin Ollama proxy's
//! `{"code":STATUS,"message":"…","data":null}`, with the matching HTTP status. How an
//! upstream failure ([`UpstreamError`]) becomes an answer is decided here too, once (and
//! what a failed relay adds to it, at the foot of `relay`, which this module cannot see).

use crate::upstream::{upstream_message, UpstreamError};
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

/// The API family of a request, which decides the shape of its error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The OpenAI API (`/v1/…`).
    OpenAi,
    /// Ollama's native API (`/api/…`, and `/`).
    Ollama,
    /// The Anthropic Messages API (`/v1/messages`).
    Anthropic,
    /// The Gin Ollama proxy's `/sys/*` aliases of Ollama's native routes, whose clients
    /// read its error shape.
    Gin,
}

impl Family {
    /// Its name in logs: `openai`, `ollama`, `anthropic` or `gin`.
    pub fn label(self) -> &'static str {
        match self {
            Family::OpenAi => "openai",
            Family::Ollama => "ollama",
            Family::Anthropic => "anthropic",
            Family::Gin => "gin",
        }
    }
}

impl ApiError {
    /// The error as `family` writes it, and its `Content-Type`.
    pub fn envelope(&self, family: Family) -> (Vec<u8>, &'static str) {
        match family {
            Family::OpenAi => (self.body(), "application/json"),
            Family::Ollama => {
                (json!({ "error": self.message }).to_string().into_bytes(), "application/json; charset=utf-8")
            }
            Family::Anthropic => (
                anthropic_error(anthropic_type(self.status), &self.message).to_string().into_bytes(),
                "application/json",
            ),
            Family::Gin => (
                json!({"code": self.status, "message": self.message, "data": null}).to_string().into_bytes(),
                "application/json; charset=utf-8",
            ),
        }
    }
}

/// Anthropic's error `type` for a status: 401 `authentication_error`; 402 `billing_error`;
/// 403 `permission_error`; 404 `not_found_error`; 413 `request_too_large` (as Anthropic's
/// error reference names it); 429 `rate_limit_error`; 503 and 529 `overloaded_error`; other
/// 4xx `invalid_request_error`; 500, 502, 504 and any other status `api_error`.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Anthropic's error envelope (also the `data` of a stream's `error` event).
pub fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

impl From<&UpstreamError> for ApiError {
    fn from(error: &UpstreamError) -> ApiError {
        match error {
            UpstreamError::Status { status, body, .. } => ApiError::from_upstream(*status, body),
            UpstreamError::Timeout(text) => ApiError::server(
                504,
                format!(
                    "the upstream did not answer in time ({text}); try again, or raise the upstream timeouts"
                ),
            ),
            UpstreamError::Connect(text) => {
                ApiError::server(502, format!("could not reach the upstream ({text}); is it running?"))
            }
            UpstreamError::Protocol(text) => ApiError::server(
                502,
                format!("the upstream sent an answer the gateway could not read ({text})"),
            ),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

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
    fn transport_failures_map_to_502_and_504() {
        assert_eq!(ApiError::from(&UpstreamError::Connect("refused".into())).status, 502);
        assert_eq!(ApiError::from(&UpstreamError::Timeout("read".into())).status, 504);
        assert_eq!(
            ApiError::from(&UpstreamError::Status {
                status: 429,
                body: br#"{"error":"x"}"#.to_vec(),
                retry_after: None
            })
            .status,
            429
        );
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

    #[test]
    fn error_types_per_status() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (499, "invalid_request_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "api_error"),
            (529, "overloaded_error"),
        ];
        for (status, want) in cases {
            assert_eq!(anthropic_type(status), want, "{status}");
        }
    }

    #[test]
    fn the_gin_envelope_has_the_status_as_its_code() {
        let error =
            ApiError { status: 403, kind: "permission_error", ..ApiError::server(403, "token 'x' may not") };
        let (body, content_type) = error.envelope(Family::Gin);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({"code": 403, "message": "token 'x' may not", "data": null}));
        assert_eq!(content_type, "application/json; charset=utf-8");
    }

    #[test]
    fn error_envelope_for_each_of_our_errors() {
        let mut rate_limited =
            ApiError::from_upstream(429, br#"{"error":"you have reached your session usage limit"}"#);
        rate_limited.retry_after = Some(30);
        let cases = [
            (ApiError::bad_request("max_tokens is required", Some("max_tokens")), "invalid_request_error"),
            (ApiError::invalid_api_key("missing gateway token"), "authentication_error"),
            (
                ApiError { status: 403, kind: "permission_error", ..ApiError::server(403, "no") },
                "permission_error",
            ),
            (ApiError::not_found("no route"), "not_found_error"),
            (ApiError::too_large(1024), "request_too_large"),
            (rate_limited, "rate_limit_error"),
            (ApiError::server(502, "upstream unreachable"), "api_error"),
            (ApiError::server(503, "pool 'x' has no upstream keys"), "overloaded_error"),
            (ApiError::from_upstream(404, br#"{"error":"model 'x' not found"}"#), "not_found_error"),
        ];
        for (error, kind) in cases {
            let body: Value = serde_json::from_slice(&error.envelope(Family::Anthropic).0).unwrap();
            assert_eq!(body, json!({"type": "error", "error": {"type": kind, "message": error.message}}));
        }
    }
}
