//! Upstream HTTP: one shared ureq agent, one request per call, errors classified.
//!
//! In scope: building the agent (keep-alive pool, connect and idle timeouts), sending one
//! request to one key's upstream, and turning every way it can fail into an
//! [`UpstreamError`] whose text never holds the key. Out of scope: choosing keys and
//! retrying (`relay`), and what the bodies mean (`translate`).

mod resolve;
mod transport;

use crate::keys::KeyEntry;
use serde_json::Value;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::time::{Duration, Instant};

/// Longest upstream error body read, to quote in the answer.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// ureq's buffers per upstream connection (input, output) and the largest response head it
/// accepts, and our one buffer over each body. A held stream keeps all of them, so they
/// are what 2,000 open streams cost: ureq's default 128 KiB pair is zero-filled per
/// connection (256 streams held 64 MiB in them). Ollama's lines and heads are small; a
/// larger request body is written a buffer at a time. ureq writes the request line in one
/// piece, so it must fit the output buffer: `api` refuses longer URLs (`MAX_URL_BYTES`).
/// The head limit sits below the input buffer, so that an upstream head too large gets
/// ureq's own error for it.
const INPUT_BUFFER: usize = 8 * 1024;
const OUTPUT_BUFFER: usize = 4 * 1024;
const MAX_RESPONSE_HEAD: usize = 6 * 1024;
const BODY_BUFFER: usize = 4 * 1024;

/// Builds the one agent all upstream calls share.
pub fn agent(connect_timeout: Duration, idle_timeout: Duration, max_idle_connections: usize) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        // Statuses are ours to judge: a 429 is a fact about a key, not an exception.
        .http_status_as_error(false)
        // A POST must not silently turn into a GET on someone else's host.
        .max_redirects(0)
        .timeout_connect(Some(connect_timeout))
        // Applies to every read: waiting for the answer, and each gap inside a stream.
        .timeout_per_read(Some(idle_timeout))
        .timeout_per_write(Some(idle_timeout))
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .max_response_header_size(MAX_RESPONSE_HEAD)
        .max_idle_connections(max_idle_connections.max(8))
        .max_idle_connections_per_host(max_idle_connections.max(8))
        .user_agent(concat!("ollama-gateway/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(
        config,
        transport::CancellableConnector::default(),
        resolve::CachingResolver::default(),
    )
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The upstream answered with a non-success status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of its body (at most 64 KiB), key removed.
        body: Vec<u8>,
        /// `Retry-After` in seconds, when sent.
        retry_after: Option<u64>,
    },
    /// Connecting, or waiting for a byte, took longer than configured.
    Timeout(String),
    /// The upstream could not be reached (refused, DNS, TLS, reset).
    Connect(String),
    /// The upstream answered something that is not HTTP as expected.
    Protocol(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Status { status, body, .. } => {
                write!(f, "upstream answered {status}: {}", upstream_message(body))
            }
            UpstreamError::Timeout(text) => write!(f, "upstream timed out: {text}"),
            UpstreamError::Connect(text) => write!(f, "upstream unreachable: {text}"),
            UpstreamError::Protocol(text) => write!(f, "upstream protocol error: {text}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A successful (2xx) upstream answer whose body has not been read yet.
pub struct UpstreamResponse {
    /// The HTTP status.
    pub status: u16,
    /// The upstream `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body, read as it arrives, through the one buffer it has on our side.
    pub body: Box<dyn BufRead + Send>,
}

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

/// Reads `body` to its end, or to one byte past `limit` (so that the caller can tell an
/// answer too large), a buffer at a time. std's `read_to_end` would zero-fill its spare
/// capacity before each read of ureq's reader (which only implements `read`): a tenth of
/// the gateway's instructions on a small answer.
pub fn read_whole(body: &mut dyn BufRead, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        let buffer = match body.fill_buf() {
            Ok(buffer) => buffer,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buffer.is_empty() {
            return Ok(bytes);
        }
        let room = usize::try_from((limit + 1).saturating_sub(bytes.len() as u64)).unwrap_or(usize::MAX);
        let taken = buffer.len().min(room);
        bytes.extend_from_slice(&buffer[..taken]);
        body.consume(taken);
        if bytes.len() as u64 > limit {
            return Ok(bytes);
        }
    }
}

/// Longest upstream line accepted, so a broken upstream cannot grow a buffer without end.
pub const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads one line into `line` (without its `\n`). Returns `Ok(false)` at end of input.
/// A line longer than `limit` is an `InvalidData` error.
pub fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>, limit: u64) -> io::Result<bool> {
    line.clear();
    let read = reader.take(limit).read_until(b'\n', line)?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if read as u64 >= limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("upstream sent a line over {limit} bytes"),
        ));
    }
    Ok(true)
}

/// Sends one request to `path` (e.g. `/api/chat`) on `entry`'s upstream with its key:
/// `body`, when given, with its media type.
/// With `deadline`, the whole exchange (connect, answer and body, a stream's included)
/// must end by then.
pub fn send(
    agent: &ureq::Agent,
    entry: &KeyEntry,
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
    deadline: Option<Instant>,
) -> Result<UpstreamResponse, UpstreamError> {
    let budget = match deadline.map(|at| at.saturating_duration_since(Instant::now())) {
        Some(left) if left.is_zero() => {
            return Err(UpstreamError::Timeout("request_timeout_secs ran out before this attempt".into()))
        }
        budget => budget,
    };
    let url = format!("{}{}", entry.base_url, path);
    let mut request = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(key) = &entry.key {
        request = request.header("authorization", format!("Bearer {}", key.expose()));
    }
    let sent = match body {
        Some((body, content_type)) => request
            .header("content-type", content_type)
            .body(body)
            .map_err(|err| UpstreamError::Protocol(scrub(&err.to_string(), entry)))
            .and_then(|request| run(agent, request, budget).map_err(|err| classify(err, entry))),
        None => request
            .body(())
            .map_err(|err| UpstreamError::Protocol(scrub(&err.to_string(), entry)))
            .and_then(|request| run(agent, request, budget).map_err(|err| classify(err, entry))),
    };
    let response = sent?;
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type");
    let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
    let mut reader = response.into_body().into_reader();
    if !(200..300).contains(&status) {
        let mut body = Vec::new();
        // A broken error body still leaves us the status, which is what matters.
        let _ = (&mut reader).take(MAX_ERROR_BODY).read_to_end(&mut body);
        return Err(UpstreamError::Status { status, body: redact(body, entry), retry_after });
    }
    Ok(UpstreamResponse {
        status,
        content_type,
        body: Box::new(BufReader::with_capacity(BODY_BUFFER, reader)),
    })
}

/// Runs one request, within `budget` when given.
fn run<S: ureq::AsSendBody>(
    agent: &ureq::Agent,
    request: ureq::http::Request<S>,
    budget: Option<Duration>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    match budget {
        Some(left) => agent.run(agent.configure_request(request).timeout_global(Some(left)).build()),
        None => agent.run(request),
    }
}

/// Sorts a ureq error into our classes, with a text that never holds the key.
fn classify(err: ureq::Error, entry: &KeyEntry) -> UpstreamError {
    use std::io::ErrorKind;
    let text = scrub(&err.to_string(), entry);
    match err {
        ureq::Error::Timeout(_) => UpstreamError::Timeout(text),
        ureq::Error::Io(io) if matches!(io.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            UpstreamError::Timeout(text)
        }
        ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_) => UpstreamError::Connect(text),
        _ => UpstreamError::Protocol(text),
    }
}

/// Whether an error from reading an upstream body is a timeout. ureq reports its own
/// timeouts inside an `io::Error` of kind `Other`, so the kind alone does not tell.
pub fn is_timeout(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::TimedOut
        || error.get_ref().and_then(|inner| inner.downcast_ref::<ureq::Error>()).is_some_and(|inner| {
            matches!(inner, ureq::Error::Timeout(_))
                || matches!(inner, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
        })
}

/// Removes the key from text an upstream or a library produced, in case it echoes it.
pub fn scrub(text: &str, entry: &KeyEntry) -> String {
    match &entry.key {
        Some(key) if !key.expose().is_empty() && text.contains(key.expose()) => {
            text.replace(key.expose(), &key.mask())
        }
        _ => text.to_string(),
    }
}

fn redact(body: Vec<u8>, entry: &KeyEntry) -> Vec<u8> {
    match (&entry.key, std::str::from_utf8(&body)) {
        (Some(key), Ok(text)) if text.contains(key.expose()) => scrub(text, entry).into_bytes(),
        _ => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_capped_and_the_last_may_lack_a_newline() {
        let mut input = io::Cursor::new(b"one\r\ntwo\nthree".to_vec());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_line(&mut input, &mut line, 100).unwrap() {
            lines.push(String::from_utf8(line.clone()).unwrap());
        }
        assert_eq!(lines, ["one\r", "two", "three"]);
        let mut long = io::Cursor::new(vec![b'x'; 50]);
        assert!(read_line(&mut long, &mut line, 10).is_err());
    }

    #[test]
    fn whole_bodies_are_read_up_to_one_byte_past_the_limit() {
        let body = b"0123456789";
        let read = |limit| read_whole(&mut io::BufReader::with_capacity(3, &body[..]), limit).unwrap();
        assert_eq!(read(100), body, "all of it, across buffer refills");
        assert_eq!(read(10), body, "exactly at the limit");
        assert_eq!(read(4), b"01234", "one byte past the limit tells the caller it is too large");
        assert_eq!(read(0), b"0");
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
}
