//! The HTTP API as plain functions: a [`Req`] in, a [`Reply`] out.
//!
//! In scope: the route table (canonical `/v1/…` paths, their aliases without `/v1`, repeated
//! slashes), method checks (405 with `Allow`), authentication, CORS headers, and dispatch to
//! the endpoint handlers in `endpoints`. Out of scope: sockets and HTTP framing (`server`
//! turns tiny_http requests into [`Req`] and writes [`Reply`]s, streams included), JSON
//! mapping (`translate`) and key choice (`relay`, `pool`).

use crate::auth::{self, Caller};
use crate::cors;
use crate::endpoints;
use crate::gateway::Gateway;
use crate::keys;
use crate::relay::Trace;
use crate::translate::errors::ApiError;
use crate::translate::LineTranslator;
use serde_json::{json, Value};
use std::io::Read;

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
    /// The `Content-Type` to send (`text/event-stream` for SSE).
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
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

    /// The OpenAI error envelope for `error` (with `Retry-After` when it says when).
    pub fn error(error: &ApiError) -> Reply {
        let headers = error.retry_after.map(|secs| ("Retry-After", secs.to_string())).into_iter().collect();
        Reply::Full { status: error.status, body: error.body(), headers }
    }

    /// A stream of SSE events.
    pub fn sse(upstream: Box<dyn Read + Send>, translator: Box<dyn LineTranslator>) -> Reply {
        Reply::Stream(StreamReply {
            content_type: "text/event-stream",
            headers: Vec::new(),
            upstream,
            translator,
        })
    }

    fn add_headers(&mut self, extra: Vec<(&'static str, String)>) {
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
}

/// Who is asking, once authenticated: the pool to draw from and the models allowed.
#[derive(Debug, Clone, Copy)]
pub struct Client<'g> {
    /// The pool this client's requests use.
    pub pool: &'g str,
    /// Model globs it may use (`None`: all).
    pub models: Option<&'g [String]>,
    /// Its token's name, for messages.
    pub name: &'g str,
}

/// The endpoints, each reachable at `/v1/…` and at the same path without `/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /`: who is here.
    Root,
    /// `GET /health`: liveness, no auth.
    Health,
    /// `GET /v1`: a small answer for GUI clients' connection tests.
    V1Root,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`; the id may hold `/` and `:`.
    Model(String),
}

impl Endpoint {
    /// The endpoint a path names: repeated slashes collapsed, a trailing slash ignored,
    /// `/v1` optional on the API routes.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let mut normal = String::with_capacity(path.len());
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            normal.push('/');
            normal.push_str(segment);
        }
        match normal.as_str() {
            "" => return Some(Endpoint::Root),
            "/health" => return Some(Endpoint::Health),
            "/v1" => return Some(Endpoint::V1Root),
            _ => {}
        }
        let rest = normal.strip_prefix("/v1").filter(|r| r.starts_with('/')).unwrap_or(&normal);
        match rest {
            "/chat/completions" => Some(Endpoint::ChatCompletions),
            "/completions" => Some(Endpoint::Completions),
            "/embeddings" => Some(Endpoint::Embeddings),
            "/models" => Some(Endpoint::Models),
            _ => {
                let id = rest.strip_prefix("/models/")?;
                Some(Endpoint::Model(percent_decode(id)))
            }
        }
    }

    /// The methods it answers.
    pub fn methods(&self) -> &'static [&'static str] {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => &["POST"],
            _ => &["GET", "HEAD"],
        }
    }

    /// Whether it needs a token.
    pub fn needs_token(&self) -> bool {
        !matches!(self, Endpoint::Root | Endpoint::Health)
    }
}

/// Decodes `%XX` escapes (SDKs may escape the `/` and `:` of a model id); bad escapes are
/// kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one request.
pub fn handle(req: &Req, gateway: &Gateway, log: &mut LogFields) -> Reply {
    let reply = match admit(req, gateway, log) {
        Ok(Admitted::Open(endpoint)) => Ok(open_endpoint(&endpoint, gateway)),
        Ok(Admitted::Client(endpoint, client)) => dispatch(endpoint, req, gateway, client, log),
        Err(early) => Ok(early),
    };
    with_cors(req, gateway, reply.unwrap_or_else(|error| Reply::error(&error)))
}

/// The answer to a request that needs none of its body: an unknown route, a wrong method,
/// a preflight, a missing or wrong token. `server` asks this before reading a body, so a
/// client without a token cannot make a worker wait for (or hold) a large upload.
pub fn screen(head: &Req, gateway: &Gateway, log: &mut LogFields) -> Option<Reply> {
    match admit(head, gateway, log) {
        Ok(_) => None,
        Err(early) => Some(with_cors(head, gateway, early)),
    }
}

/// The error answer for `req`, with its CORS headers.
pub fn error_reply(req: &Req, gateway: &Gateway, error: &ApiError) -> Reply {
    with_cors(req, gateway, Reply::error(error))
}

fn with_cors(req: &Req, gateway: &Gateway, mut reply: Reply) -> Reply {
    let preflight =
        (req.method == "OPTIONS").then(|| req.header("access-control-request-headers").unwrap_or(""));
    reply.add_headers(cors::headers(&gateway.config.raw.cors.allow_origins, req.header("origin"), preflight));
    reply
}

/// A request that may go on to its endpoint.
enum Admitted<'g> {
    /// An endpoint open to all.
    Open(Endpoint),
    /// An endpoint for an authenticated client.
    Client(Endpoint, Client<'g>),
}

fn admit<'g>(req: &Req, gateway: &'g Gateway, log: &mut LogFields) -> Result<Admitted<'g>, Reply> {
    let path = req.path();
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Err(Reply::error(&ApiError::not_found(format!(
            "no route for {} {path}; the API is under /v1 (chat/completions, completions, embeddings, models)",
            req.method
        ))));
    };
    let methods = endpoint.methods();
    let allow = || vec![("Allow", format!("{}, OPTIONS", methods.join(", ")))];
    if req.method == "OPTIONS" {
        // A CORS preflight: answered without a token; `with_cors` adds the CORS headers.
        return Err(Reply::Full { status: 204, body: Vec::new(), headers: allow() });
    }
    if !methods.contains(&req.method.as_str()) {
        let error = ApiError {
            status: 405,
            kind: "invalid_request_error",
            message: format!("{} is not allowed on {path}; use {}", req.method, methods.join(" or ")),
            param: None,
            code: Some("method_not_allowed"),
            retry_after: None,
        };
        return Err(Reply::Full { status: 405, body: error.body(), headers: allow() });
    }
    if !endpoint.needs_token() {
        return Ok(Admitted::Open(endpoint));
    }
    match authorize(req, gateway, log) {
        Ok(client) => Ok(Admitted::Client(endpoint, client)),
        Err(error) => Err(Reply::error(&error)),
    }
}

fn open_endpoint(endpoint: &Endpoint, gateway: &Gateway) -> Reply {
    match endpoint {
        Endpoint::Health => health(gateway),
        _ => Reply::json(
            200,
            &json!({"status": "ok", "service": "ollama-gateway", "version": env!("CARGO_PKG_VERSION"), "api": "/v1"}),
        ),
    }
}

fn dispatch(
    endpoint: Endpoint,
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    match endpoint {
        Endpoint::ChatCompletions => endpoints::chat_completions(req, gateway, client, log),
        Endpoint::Completions => endpoints::completions(req, gateway, client, log),
        Endpoint::Embeddings => endpoints::embeddings(req, gateway, client, log),
        Endpoint::Models => endpoints::list_models(gateway, client, log),
        Endpoint::Model(id) => endpoints::retrieve_model(&id, gateway, client, log),
        Endpoint::V1Root | Endpoint::Root | Endpoint::Health => Ok(Reply::json(
            200,
            &json!({
                "status": "ok",
                "service": "ollama-gateway",
                "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"],
            }),
        )),
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

/// Checks the caller's token and says what it may use.
fn authorize<'g>(req: &Req, gateway: &'g Gateway, log: &mut LogFields) -> Result<Client<'g>, ApiError> {
    let presented = auth::presented_token(|name| req.header(name));
    let config = &gateway.config;
    let client = match auth::authenticate(&config.tokens, presented, config.raw.allow_anonymous)? {
        Caller::Token(token) => {
            Client { pool: &token.pool, models: token.models.as_deref(), name: &token.name }
        }
        Caller::Anonymous => Client { pool: keys::DEFAULT_POOL, models: None, name: "anonymous" },
    };
    log.token = Some(client.name.to_string());
    Ok(client)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_aliases_and_slashes() {
        use Endpoint::*;
        let cases = [
            ("/v1/chat/completions", Some(ChatCompletions)),
            ("/chat/completions", Some(ChatCompletions)),
            ("//v1/chat/completions", Some(ChatCompletions)),
            ("/v1//chat//completions/", Some(ChatCompletions)),
            ("/v1/completions", Some(Completions)),
            ("/completions", Some(Completions)),
            ("/embeddings", Some(Embeddings)),
            ("/v1//models", Some(Models)),
            ("/models", Some(Models)),
            ("/v1/models/llama3.2:latest", Some(Model("llama3.2:latest".into()))),
            ("/v1/models/hf.co/org/model:Q4_K_M", Some(Model("hf.co/org/model:Q4_K_M".into()))),
            ("/v1/models/hf.co%2Forg%2Fmodel%3AQ4_K_M", Some(Model("hf.co/org/model:Q4_K_M".into()))),
            ("/models/a%zz", Some(Model("a%zz".into()))),
            ("/v1", Some(V1Root)),
            ("/v1/", Some(V1Root)),
            ("/", Some(Root)),
            ("/health", Some(Health)),
            ("/v1/health", None),
            ("/v2/chat/completions", None),
            ("/v1/responses", None),
            ("/v1/models/", Some(Models)),
        ];
        for (path, want) in cases {
            assert_eq!(Endpoint::from_path(path), want, "{path}");
        }
    }

    #[test]
    fn debug_never_shows_a_token() {
        let req = Req {
            method: "POST".into(),
            url: "/v1/chat/completions".into(),
            headers: vec![
                ("authorization".into(), "Bearer sk-secret-token-0123456789".into()),
                ("x-api-key".into(), "sk-secret-token-0123456789".into()),
            ],
            body: Vec::new(),
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[test]
    fn only_root_and_health_are_open() {
        for path in ["/v1", "/v1/chat/completions", "/completions", "/embeddings", "/models", "/models/x"] {
            assert!(Endpoint::from_path(path).unwrap().needs_token(), "{path}");
        }
        assert!(!Endpoint::Root.needs_token() && !Endpoint::Health.needs_token());
    }
}
