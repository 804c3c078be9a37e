//! The values handlers take and give: a [`Req`] (no socket, body already read), a [`Reply`]
//! (a whole answer, or a live stream of upstream lines through a translator), who the
//! [`Client`] is, and the [`LogFields`] a request's log line is built from.
//!
//! `server` turns tiny_http requests into these and writes them back; `api` and its
//! handlers work only with these, so a route can be tested without a socket.

use crate::auth::Scope;
use crate::error::{ApiError, Family};
use crate::relay::Trace;
use crate::translate::LineTranslator;
use serde_json::Value;
use std::io::BufRead;

/// A request as the handlers see it: no sockets, body already read.
#[derive(Clone, Default)]
pub struct Req {
    /// HTTP method, upper case.
    pub method: String,
    /// The URL path and query, as sent.
    pub url: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The address of the socket's peer (`None` when there is no socket, as in tests).
    pub peer: Option<std::net::IpAddr>,
}

/// Headers whose values are secrets: `Debug` shows them masked.
const SECRET_HEADERS: &[&str] = &["authorization", "x-api-key", "cookie"];

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| match SECRET_HEADERS.contains(&name.as_str()) {
                true => (name.as_str(), crate::secret::mask(value)),
                false => (name.as_str(), value.clone()),
            })
            .collect();
        f.debug_struct("Req")
            .field("method", &self.method)
            .field("url", &self.path())
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .field("peer", &self.peer)
            .finish()
    }
}

impl Req {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or("")
    }

    /// Parses a request body as a JSON object, once [`json_cost::estimate`](crate::json_cost::estimate) has shown that its
    /// `Value` tree fits [`json_cost::tree_budget`](crate::json_cost::tree_budget): a body of N bytes may build at most
    /// `max(5/4 N + 8 MiB, 16 MiB)` of tree, which keeps a `/v1` request's peak (body, tree,
    /// translated tree, upstream body) under 4N + 16 MiB; the arithmetic is on `tree_budget`.
    ///
    /// A body over the budget, or nested deeper than 128 levels, is a 413 `request_too_complex`
    /// before any tree is built; serde_json's private `RawValue` key is a 400.
    pub fn json_body(&self) -> Result<Value, ApiError> {
        let body = &self.body;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("the request body is empty: send a JSON object", None));
        }
        let cost = crate::json_cost::estimate(body).map_err(|refusal| match refusal {
            crate::json_cost::Refusal::TooDeep => ApiError::too_complex(format!(
                "the JSON nests arrays and objects deeper than {} levels; send a flatter body",
                crate::json_cost::MAX_DEPTH
            )),
            crate::json_cost::Refusal::ReservedKey => ApiError::bad_request(
                "the JSON uses the reserved key \"$serde_json::private::RawValue\"; rename it",
                None,
            ),
        })?;
        let budget = crate::json_cost::tree_budget(body.len());
        if cost.peak_tree() > budget {
            let mib = |bytes: u64| bytes.div_ceil(1024 * 1024);
            return Err(ApiError::too_complex(format!(
                "the JSON has too many values for its size: {} values in {} bytes would take about {} MiB \
                 of memory to parse, over the {} MiB allowed for a body this size; send the data as \
                 fewer, larger values (one long string rather than an array of numbers or objects), or \
                 split it over several requests",
                cost.values,
                body.len(),
                mib(cost.peak_tree()),
                mib(budget)
            )));
        }
        let value: Value = serde_json::from_slice(body).map_err(|err| {
            ApiError::bad_request(format!("the request body is not valid JSON: {err}"), None)
        })?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object", None));
        }
        Ok(value)
    }
}

/// What to answer.
pub enum Reply {
    /// A whole response.
    Full {
        /// HTTP status.
        status: u16,
        /// Its body, JSON (empty for 204).
        body: Vec<u8>,
        /// Extra headers beyond `Content-Type: application/json`.
        headers: Vec<(&'static str, String)>,
    },
    /// A response streamed line by line from upstream.
    Stream(StreamReply),
}

/// A live stream: upstream lines go through `translator` to the client as they arrive.
pub struct StreamReply {
    /// HTTP status (200, or the upstream's own 2xx on native routes).
    pub status: u16,
    /// The `Content-Type` to send (`text/event-stream` for SSE).
    pub content_type: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The upstream body.
    pub upstream: Box<dyn BufRead + Send>,
    /// Turns each upstream line into what the client receives.
    pub translator: Box<dyn LineTranslator>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::Full { status, body, headers: Vec::new() },
            // Only a map with non-string keys fails, which no reply of ours has.
            Err(err) => {
                Reply::error(&ApiError::server(500, format!("the gateway could not write its answer: {err}")))
            }
        }
    }

    /// The OpenAI error envelope for `error` (with `Retry-After` when it says when).
    pub fn error(error: &ApiError) -> Reply {
        Reply::error_in(Family::OpenAi, error)
    }

    /// `error` in the envelope of `family` (with `Retry-After` when it says when).
    pub fn error_in(family: Family, error: &ApiError) -> Reply {
        let (body, content_type) = error.envelope(family);
        let mut headers: Vec<(&'static str, String)> =
            error.retry_after.map(|secs| ("Retry-After", secs.to_string())).into_iter().collect();
        headers.push(("Content-Type", content_type.to_string()));
        Reply::Full { status: error.status, body, headers }
    }

    /// A stream of SSE events.
    pub fn sse(upstream: Box<dyn BufRead + Send>, translator: Box<dyn LineTranslator>) -> Reply {
        Reply::Stream(StreamReply {
            status: 200,
            content_type: "text/event-stream".to_string(),
            headers: Vec::new(),
            upstream,
            translator,
        })
    }

    pub(crate) fn add_headers(&mut self, extra: Vec<(&'static str, String)>) {
        match self {
            Reply::Full { headers, .. } | Reply::Stream(StreamReply { headers, .. }) => headers.extend(extra),
        }
    }
}

/// What a request log line says beyond method, path and status.
#[derive(Debug, Default, Clone)]
pub struct LogFields {
    /// The token's name (`-` when none).
    pub token: Option<String>,
    /// The model asked for.
    pub model: Option<String>,
    /// What the relay did.
    pub trace: Trace,
    /// Tokens of the reply, once known.
    pub usage: Option<crate::translate::Usage>,
    /// The API family the request counts under in metrics (`None`: the gateway's own
    /// routes and paths that name no endpoint).
    pub family: Option<Family>,
}

/// Who is asking, once authenticated: the pool to draw from and the models allowed.
#[derive(Debug, Clone, Copy)]
pub struct Client<'g> {
    /// The pool this request uses.
    pub pool: &'g str,
    /// Every pool its token may use.
    pub pools: &'g [String],
    /// Model globs it may use (`None`: all).
    pub models: Option<&'g [String]>,
    /// Its token's name, for messages.
    pub name: &'g str,
    /// What it may do.
    pub scopes: &'g [Scope],
    /// Its token's limits (`None`: no token, no limits).
    pub limits: Option<&'g crate::auth::TokenLimits>,
}
