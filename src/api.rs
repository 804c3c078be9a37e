//! The HTTP API as plain functions: a [`Req`] in, a [`Reply`] out.
//!
//! In scope: routing, authentication, and each endpoint's glue (validate, translate, relay,
//! translate back). Out of scope: sockets and HTTP framing (`server` turns tiny_http requests
//! into [`Req`] and writes [`Reply`]s, streams included), JSON mapping (`translate`), and key
//! choice (`relay`, `pool`).

use crate::auth::{self, Caller};
use crate::gateway::Gateway;
use crate::keys;
use crate::relay::{self, Trace};
use crate::translate::chat::{self, ChatStream, ReplyContext};
use crate::translate::errors::ApiError;
use crate::translate::{random_id, LineTranslator};
use serde_json::{json, Value};
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest non-streamed upstream answer read into memory.
const MAX_UPSTREAM_BODY: u64 = 256 * 1024 * 1024;

/// A request as the handlers see it: no sockets, body already read.
#[derive(Debug, Clone, Default)]
pub struct Req {
    /// HTTP method, upper case.
    pub method: String,
    /// The URL path and query, as sent.
    pub url: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
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
}

/// What to answer.
pub enum Reply {
    /// A whole response.
    Full {
        /// HTTP status.
        status: u16,
        /// Its body, JSON.
        body: Vec<u8>,
        /// Extra headers beyond `Content-Type: application/json`.
        headers: Vec<(&'static str, String)>,
    },
    /// A response streamed line by line from upstream.
    Stream(StreamReply),
}

/// A live stream: upstream lines go through `translator` to the client as they arrive.
pub struct StreamReply {
    /// The `Content-Type` to send (`text/event-stream` for SSE).
    pub content_type: &'static str,
    /// The upstream body.
    pub upstream: Box<dyn Read + Send>,
    /// Turns each upstream line into what the client receives.
    pub translator: Box<dyn LineTranslator>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply::Full { status, body: value.to_string().into_bytes(), headers: Vec::new() }
    }

    /// The OpenAI error envelope for `error`.
    pub fn error(error: &ApiError) -> Reply {
        Reply::Full { status: error.status, body: error.body(), headers: Vec::new() }
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
}

/// Answers one request.
pub fn handle(req: &Req, gateway: &Gateway, log: &mut LogFields) -> Reply {
    match route(req, gateway, log) {
        Ok(reply) => reply,
        Err(error) => Reply::error(&error),
    }
}

fn route(req: &Req, gateway: &Gateway, log: &mut LogFields) -> Result<Reply, ApiError> {
    let path = req.path();
    match (req.method.as_str(), path) {
        ("GET" | "HEAD", "/health") => Ok(health(gateway)),
        ("POST", "/v1/chat/completions") => {
            let pool = authorize(req, gateway, log)?;
            chat_completions(req, gateway, pool, log)
        }
        (_, "/v1/chat/completions") => Err(ApiError {
            status: 405,
            kind: "invalid_request_error",
            message: format!("{} is not allowed on {path}; use POST", req.method),
            param: None,
            code: Some("method_not_allowed"),
        }),
        _ => Err(ApiError::not_found(format!("no route for {} {path}", req.method))),
    }
}

fn health(gateway: &Gateway) -> Reply {
    Reply::json(
        200,
        &json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": gateway.started.elapsed().as_secs(),
        }),
    )
}

/// Checks the caller's token and names the pool it draws from.
fn authorize<'g>(req: &Req, gateway: &'g Gateway, log: &mut LogFields) -> Result<&'g str, ApiError> {
    let presented = auth::presented_token(|name| req.header(name));
    let config = &gateway.config;
    match auth::authenticate(&config.tokens, presented, config.raw.allow_anonymous)? {
        Caller::Token(token) => {
            log.token = Some(token.name.clone());
            Ok(&token.pool)
        }
        Caller::Anonymous => {
            log.token = Some("anonymous".to_string());
            Ok(keys::DEFAULT_POOL)
        }
    }
}

/// Parses a request body as a JSON object.
pub fn parse_json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty: send a JSON object", None));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("the request body is not valid JSON: {err}"), None))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object", None));
    }
    Ok(value)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn chat_completions(
    req: &Req,
    gateway: &Gateway,
    pool_name: &str,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let body = parse_json_body(&req.body)?;
    let request = chat::to_ollama(&body)?;
    log.model = Some(request.model.clone());
    let pool = gateway
        .pools
        .get(pool_name)
        .ok_or_else(|| ApiError::server(503, format!("pool '{pool_name}' has no upstream keys")))?;
    let native = request.native.to_string();
    let config = &gateway.config.raw;
    let response = relay::post_json(
        &gateway.agent,
        pool,
        config.upstream.max_attempts,
        "/api/chat",
        native.as_bytes(),
        &mut log.trace,
    )?;
    let context = ReplyContext {
        id: random_id("chatcmpl-"),
        created_fallback: unix_now(),
        response_model: None,
        reasoning_field: config.reasoning_field,
        include_usage: request.include_usage,
    };
    if request.stream {
        return Ok(Reply::Stream(StreamReply {
            content_type: "text/event-stream",
            upstream: response.body,
            translator: Box::new(ChatStream::new(context)),
        }));
    }
    let native = read_upstream_json(response.body)?;
    Ok(Reply::json(200, &chat::from_ollama(&native, &context)))
}

/// Reads a whole non-streamed upstream answer as JSON.
fn read_upstream_json(body: Box<dyn Read + Send>) -> Result<Value, ApiError> {
    let mut bytes = Vec::new();
    body.take(MAX_UPSTREAM_BODY).read_to_end(&mut bytes).map_err(|err| {
        let status = if crate::upstream::is_timeout(&err) { 504 } else { 502 };
        ApiError::server(status, format!("reading the upstream answer failed: {err}"))
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::server(
            502,
            format!("the upstream answer is not valid JSON ({err}); is base_url an Ollama server?"),
        )
    })?;
    if let Some(error) = value.get("error") {
        let text = error.as_str().map(str::to_string).unwrap_or_else(|| error.to_string());
        return Err(ApiError::server(502, text));
    }
    Ok(value)
}
