//! Failover: one request tried on the keys of a pool until one answers.
//!
//! [`send`] walks the pool's attempt order. An attempt that fails before anything was
//! sent to the client (connect error, timeout, 401, 403, 408, 429, 5xx) moves on to the next
//! key, up to `max_attempts`; a 400, 404 or other client error goes straight back, because
//! the request is wrong, not the key. After the last attempt the last error is answered.

use crate::keys::KeyEntry;
use crate::model_policy;
use crate::pool::Pool;
use crate::sse;
use crate::translate::errors::ApiError;
use crate::upstream::{self, UpstreamError, UpstreamResponse};
use std::io::{BufReader, Cursor, Read};

/// What the relay did, for the request log.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Upstream requests made.
    pub attempts: u32,
    /// The masked label of the key that answered last.
    pub key: Option<String>,
}

/// Whether another key might succeed where this one failed.
pub fn should_fail_over(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Status { status, .. } => matches!(status, 401 | 402 | 403 | 408 | 429 | 500..=599),
        UpstreamError::Timeout(_) | UpstreamError::Connect(_) | UpstreamError::Protocol(_) => true,
    }
}

/// The answer a client gets for an upstream failure.
pub fn to_api_error(error: &UpstreamError) -> ApiError {
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
        UpstreamError::Protocol(text) => {
            ApiError::server(502, format!("the upstream sent an answer the gateway could not read ({text})"))
        }
    }
}

/// One request to relay: the same for every key, except that Ollama Cloud upstreams may
/// get their own body (model names without the local `-cloud` suffix).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Upstream path, such as `/api/chat`.
    pub path: &'a str,
    /// JSON body, if any.
    pub body: Option<&'a [u8]>,
    /// The body for Ollama Cloud upstreams, when it differs from `body`.
    pub cloud_body: Option<&'a [u8]>,
    /// The answer is an NDJSON stream: its first line is read before the attempt counts as
    /// a success, so an error there still fails over (nothing has reached the client yet).
    pub stream: bool,
}

impl<'a> Outgoing<'a> {
    /// A request without a body.
    pub fn get(path: &'a str) -> Outgoing<'a> {
        Outgoing { method: "GET", path, body: None, cloud_body: None, stream: false }
    }

    /// A POST of a JSON body.
    pub fn post(path: &'a str, body: &'a [u8]) -> Outgoing<'a> {
        Outgoing { method: "POST", path, body: Some(body), cloud_body: None, stream: false }
    }

    fn body_for(&self, entry: &KeyEntry) -> Option<&'a [u8]> {
        match self.cloud_body {
            Some(cloud) if model_policy::is_ollama_cloud(&entry.base_url) => Some(cloud),
            _ => self.body,
        }
    }
}

/// Sends `request` on the pool's keys in turn until one gives a 2xx answer.
pub fn send(
    agent: &ureq::Agent,
    pool: &Pool,
    max_attempts: u32,
    request: Outgoing<'_>,
    trace: &mut Trace,
) -> Result<UpstreamResponse, ApiError> {
    let mut last_error = None;
    for index in pool.attempt_order(max_attempts as usize) {
        let entry: &KeyEntry = &pool.keys[index];
        trace.attempts += 1;
        trace.key = Some(entry.label());
        let sent = upstream::send(agent, entry, request.method, request.path, request.body_for(entry));
        let sent = match sent {
            Ok(response) if request.stream => first_line_checked(response),
            other => other,
        };
        match sent {
            Ok(response) => return Ok(response),
            Err(error) => {
                let fail_over = should_fail_over(&error);
                log::warn!("pool '{}': {} failed: {error}", pool.name, entry.label());
                if !fail_over {
                    return Err(to_api_error(&error));
                }
                last_error = Some(error);
            }
        }
    }
    Err(match last_error {
        Some(error) if trace.attempts > 1 => {
            let mut answer = to_api_error(&error);
            answer.message = format!(
                "all {} keys tried in pool '{}' failed; the last one: {}",
                trace.attempts, pool.name, answer.message
            );
            answer
        }
        Some(error) => to_api_error(&error),
        None => {
            ApiError::server(503, format!("pool '{}' has no upstream keys: add some to keys.txt", pool.name))
        }
    })
}

/// Reads a stream's first line: an `{"error":…}` there (a model that fails at once) or an
/// upstream that ends or stalls before any line is a failed attempt, not a 200.
fn first_line_checked(response: UpstreamResponse) -> Result<UpstreamResponse, UpstreamError> {
    let UpstreamResponse { status, content_type, body } = response;
    let mut reader = BufReader::new(body);
    let mut line = Vec::new();
    loop {
        match sse::read_line(&mut reader, &mut line, sse::MAX_LINE_BYTES) {
            Ok(true) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(true) => break,
            Ok(false) => {
                return Err(UpstreamError::Protocol("the upstream ended the stream before any line".into()))
            }
            Err(err) if upstream::is_timeout(&err) => return Err(UpstreamError::Timeout(err.to_string())),
            Err(err) => return Err(UpstreamError::Protocol(err.to_string())),
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&line) {
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            // Kept as a body, so it reads like any upstream error.
            let body = serde_json::json!({ "error": error }).to_string().into_bytes();
            return Err(UpstreamError::Status { status: 502, body, retry_after: None });
        }
    }
    line.push(b'\n');
    Ok(UpstreamResponse { status, content_type, body: Box::new(Cursor::new(line).chain(reader)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> UpstreamError {
        UpstreamError::Status { status, body: br#"{"error":"x"}"#.to_vec(), retry_after: None }
    }

    #[test]
    fn key_failures_fail_over_and_request_errors_do_not() {
        for code in [401, 403, 429, 500, 502, 503] {
            assert!(should_fail_over(&status(code)), "{code}");
        }
        for code in [400, 404, 405, 413, 422] {
            assert!(!should_fail_over(&status(code)), "{code}");
        }
        assert!(should_fail_over(&UpstreamError::Connect("refused".into())));
        assert!(should_fail_over(&UpstreamError::Timeout("read".into())));
    }

    #[test]
    fn transport_failures_map_to_502_and_504() {
        assert_eq!(to_api_error(&UpstreamError::Connect("refused".into())).status, 502);
        assert_eq!(to_api_error(&UpstreamError::Timeout("read".into())).status, 504);
        assert_eq!(to_api_error(&status(429)).status, 429);
    }
}
