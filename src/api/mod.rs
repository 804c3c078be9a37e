//! The HTTP API as plain functions: a [`Req`] in, a [`Reply`] out.
//!
//! In scope: the route table (canonical `/v1/…` paths, their aliases without `/v1`, the Gin
//! Ollama proxy's `/sys/…` aliases of native routes, repeated slashes), method checks (405 with `Allow`), authentication, CORS headers, and dispatch to
//! the endpoint handlers in `openai` and `native`. Out of scope: sockets and HTTP framing (`server`
//! turns tiny_http requests into [`Req`] and writes [`Reply`]s, streams included), JSON
//! mapping (`translate`) and key choice (`relay`, `pool`).
//!
//! The gateway's own pages are routes here too, open without a token: `page` (the status
//! page, `GET /admin`) and `stats` (the public `GET /stats`).

pub mod access;
pub mod admin;
pub mod anthropic;
pub mod body_token;
pub mod cors;
pub mod metrics;
pub mod native;
pub mod openai;
pub mod page;
pub mod responses;
pub mod route;
pub mod stats;

use crate::auth::Scope;
use crate::auth::{self, Caller};
use crate::cidr;
use crate::config::Provider;
use crate::limits::{self, Permit};
use std::net::IpAddr;
use std::time::Instant;

use crate::error::{ApiError, Family};
use crate::gateway::Gateway;
use crate::http::{Client, LogFields, Reply, Req};
use crate::keys;
use serde_json::json;

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
    /// `POST /v1/responses`: the OpenAI Responses API (Codex).
    Responses,
    /// `POST /v1/messages`: the Anthropic Messages API (Claude Code).
    Messages,
    /// `POST /v1/messages/count_tokens`, answered locally.
    CountTokens,
    /// Ollama's native API, `/api/…`, forwarded.
    Native(String, native::Route),
    /// The admin API, `/admin/api/…` (scope `admin`).
    Admin(admin::Route),
    /// The Gin Ollama proxy's `/sys/…` routes, forwarded as the `/api/…` route each names
    /// (the path held), with its scopes, and errors in that proxy's shape.
    Gin(String, native::Route),
    /// `GET /admin`: the status page, no auth (it asks for a token and holds no data).
    AdminPage,
    /// `GET /stats`: the public page, no auth; a route only with `[status] public = true`.
    Stats,
}

impl Endpoint {
    /// The endpoint a path names: repeated slashes collapsed, a trailing slash ignored,
    /// `/v1` optional on the API routes.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let mut normal = String::with_capacity(path.len());
        // `.` and `..` segments name no route, and must not reach an upstream that would
        // resolve them (`/api/blobs/../chat`).
        if path.split('/').any(|s| s == "." || s == "..") {
            return None;
        }
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            normal.push('/');
            normal.push_str(segment);
        }
        if let Some(route) = native::route_of(&normal) {
            return Some(Endpoint::Native(normal, route));
        }
        if let Some(route) = admin::Route::of(&normal) {
            return Some(Endpoint::Admin(route));
        }
        if let Some((path, route)) = native::gin_alias(&normal).and_then(|p| Some((p, native::route_of(p)?)))
        {
            return Some(Endpoint::Gin(path.to_string(), route));
        }
        match normal.as_str() {
            "" => return Some(Endpoint::Root),
            "/health" => return Some(Endpoint::Health),
            "/admin" => return Some(Endpoint::AdminPage),
            "/stats" => return Some(Endpoint::Stats),
            "/v1" => return Some(Endpoint::V1Root),
            _ => {}
        }
        let rest = normal.strip_prefix("/v1").filter(|r| r.starts_with('/')).unwrap_or(&normal);
        match rest {
            "/chat/completions" => Some(Endpoint::ChatCompletions),
            "/completions" => Some(Endpoint::Completions),
            "/embeddings" => Some(Endpoint::Embeddings),
            "/models" => Some(Endpoint::Models),
            "/responses" => Some(Endpoint::Responses),
            "/messages" => Some(Endpoint::Messages),
            "/messages/count_tokens" => Some(Endpoint::CountTokens),
            _ => {
                let id = rest.strip_prefix("/models/")?;
                Some(Endpoint::Model(percent_decode(id)))
            }
        }
    }

    /// The methods it answers.
    pub fn methods(&self) -> &'static [&'static str] {
        match self {
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::Messages
            | Endpoint::CountTokens => &["POST"],
            Endpoint::Native(_, route) | Endpoint::Gin(_, route) => route.methods,
            Endpoint::Admin(route) => route.methods(),
            _ => &["GET", "HEAD"],
        }
    }

    /// Whether it needs a token.
    pub fn needs_token(&self) -> bool {
        !matches!(self, Endpoint::Root | Endpoint::Health | Endpoint::AdminPage | Endpoint::Stats)
    }

    /// The scope a token needs for it.
    pub fn scope(&self) -> Scope {
        match self {
            Endpoint::Native(_, route) | Endpoint::Gin(_, route) => route.scope,
            Endpoint::Admin(_) => Scope::Admin,
            _ => Scope::Inference,
        }
    }

    /// The path under an OpenAI-compatible API base (`/chat/completions`), for the `/v1`
    /// endpoints.
    pub fn openai_path(&self) -> Option<String> {
        Some(match self {
            Endpoint::ChatCompletions => "/chat/completions".to_string(),
            Endpoint::Completions => "/completions".to_string(),
            Endpoint::Embeddings => "/embeddings".to_string(),
            Endpoint::Models => "/models".to_string(),
            Endpoint::Model(id) => format!("/models/{id}"),
            Endpoint::Responses => "/responses".to_string(),
            _ => return None,
        })
    }

    /// The API family this endpoint counts under in metrics: `None` for the gateway's own
    /// routes (`/`, `/health`), which no client API calls.
    pub fn metrics_family(&self) -> Option<Family> {
        match self {
            Endpoint::Root | Endpoint::Health | Endpoint::AdminPage | Endpoint::Stats => None,
            endpoint => Some(endpoint.family()),
        }
    }

    /// The API family whose error envelope this endpoint answers with.
    pub fn family(&self) -> Family {
        match self {
            Endpoint::Native(..) | Endpoint::Root => Family::Ollama,
            Endpoint::Gin(..) => Family::Gin,
            Endpoint::Messages | Endpoint::CountTokens => Family::Anthropic,
            _ => Family::OpenAi,
        }
    }
}

/// The value of a query parameter, decoded.
fn query_param(url: &str, name: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then(|| percent_decode(&value.replace('+', " ")))
    })
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
/// Answers a request that [`screen`] admitted, now that its body is read.
pub fn handle(req: &Req, gateway: &Gateway, admission: Admission<'_>, log: &mut LogFields) -> Reply {
    let reply = match admission.0 {
        Admitted::Open(endpoint) => Ok(open_endpoint(&endpoint, req, gateway)),
        Admitted::Client(endpoint, client, _) => {
            let family = endpoint.family();
            dispatch(endpoint, req, gateway, client, log).map_err(|error| Reply::error_in(family, &error))
        }
        // Only a caller that skipped `screen_body` gets here: refused, never served unchecked.
        Admitted::BodyToken(endpoint, ..) => Err(Reply::error_in(
            endpoint.family(),
            &ApiError::server(500, "the gateway did not check the body's token; see its log"),
        )),
    };
    with_cors(req, gateway, reply.unwrap_or_else(|error_reply| error_reply))
}

/// A request checked from its head alone: its route, method, token, scope and limits.
pub struct Admission<'g>(Admitted<'g>);

impl Admission<'_> {
    /// The request's place in its token's count of requests in flight, to be dropped when
    /// its answer has been written (a stream's too), not when its handler returns.
    pub fn take_permit(&mut self) -> Permit {
        match &mut self.0 {
            Admitted::Client(_, _, permit) => std::mem::take(permit),
            Admitted::Open(_) | Admitted::BodyToken(..) => Permit::default(),
        }
    }
}

/// Checks a request from its head, or answers it at once when it needs none of its body:
/// an address locked out after wrong tokens, an unknown route, a wrong method, a preflight,
/// a missing, wrong or expired token, an address or a scope it lacks, a token over its
/// `rpm` or `max_concurrent`. `server` asks this before reading a body, so a client without
/// a token cannot make a worker wait for (or hold) a large upload. The one exception, with
/// `allow_body_token`: a request with no token in its head goes on to have its body read
/// (no worker is held meanwhile), and [`screen_body`] checks the token found there.
pub fn screen<'g>(head: &Req, gateway: &'g Gateway, log: &mut LogFields) -> Result<Admission<'g>, Reply> {
    admit(head, gateway, log).map(Admission).map_err(|early| with_cors(head, gateway, early))
}

/// Finishes checking a request [`screen`] admitted, once `server` has read its body: with
/// `allow_body_token` and no token in the head, the body's `api_key` is the token, checked
/// (scope, limits and lock-out too) as one from the head would be. The field is taken out
/// of the body of every request for a client, so it never goes upstream (see [`body_token`]).
pub fn screen_body<'g>(
    req: &mut Req,
    gateway: &'g Gateway,
    admission: Admission<'g>,
    log: &mut LogFields,
) -> Result<Admission<'g>, Reply> {
    let (endpoint, prefix, from) = match admission.0 {
        Admitted::BodyToken(endpoint, prefix, from) => (endpoint, prefix, from),
        Admitted::Client(..) => {
            // The head's token is the one checked; a body's is only kept from upstream.
            let _ = body_token::take(&mut req.body);
            return Ok(admission);
        }
        Admitted::Open(_) => return Ok(admission),
    };
    let token = match body_token::take(&mut req.body) {
        Some(Err(error)) => return Err(with_cors(req, gateway, Reply::error_in(endpoint.family(), &error))),
        Some(Ok(token)) => Some(token).filter(|token| !token.is_empty()),
        None => None,
    };
    admit_client(req, gateway, endpoint, prefix.as_deref(), from, token.as_deref(), log)
        .map(Admission)
        .map_err(|early| with_cors(req, gateway, early))
}

/// The error answer for `req` (a body too large, too slow or over the memory budget), in
/// the envelope of its endpoint's family, with its CORS headers.
pub fn error_reply(req: &Req, gateway: &Gateway, error: &ApiError) -> Reply {
    with_cors(req, gateway, Reply::error_in(family_of(req), error))
}

/// The API family `req` counts under in metrics (see [`Endpoint::metrics_family`]), for
/// requests answered before [`screen`] (which finds it without parsing the path again).
pub fn metrics_family(req: &Req) -> Option<Family> {
    let (_, path) = split_pool_prefix(req.path());
    Endpoint::from_path(path).and_then(|endpoint| endpoint.metrics_family())
}

/// The API family of the endpoint `req` names (OpenAI's when it names none).
fn family_of(req: &Req) -> Family {
    let (_, path) = split_pool_prefix(req.path());
    Endpoint::from_path(path).map_or(Family::OpenAi, |endpoint| endpoint.family())
}

fn with_cors(req: &Req, gateway: &Gateway, mut reply: Reply) -> Reply {
    let preflight =
        (req.method == "OPTIONS").then(|| req.header("access-control-request-headers").unwrap_or(""));
    reply.add_headers(cors::headers(&gateway.config.raw.cors.allow_origins, req.header("origin"), preflight));
    reply
}

/// Longest URL taken. The upstream request line carries it, and ureq writes that line in
/// one piece into its output buffer (4 KiB, see `upstream`): a longer one would fail
/// there, and count against the key. Model names and blob digests are far shorter.
pub const MAX_URL_BYTES: usize = 2048;

/// A request that may go on to its endpoint.
enum Admitted<'g> {
    /// An endpoint open to all.
    Open(Endpoint),
    /// An endpoint for an authenticated client, counted in its token's limits.
    Client(Endpoint, Client<'g>, Permit),
    /// An endpoint whose token may be in the body (`allow_body_token`, none in the head),
    /// with the pool prefix and address it came with: [`screen_body`] checks it.
    BodyToken(Endpoint, Option<String>, Option<IpAddr>),
}

/// A leading pool name, as in `/openrouter/v1/chat/completions`, and the path after it.
pub fn split_pool_prefix(path: &str) -> (Option<&str>, &str) {
    let trimmed = path.trim_start_matches('/');
    if let Some((first, rest)) = trimmed.split_once('/') {
        let rest_trimmed = rest.trim_start_matches('/');
        let api_follows =
            ["v1", "api"].iter().any(|p| rest_trimmed == *p || rest_trimmed.starts_with(&format!("{p}/")));
        // `/admin/api/…` is the admin API, never a pool named `admin`.
        if !first.is_empty() && !matches!(first, "v1" | "api" | "admin") && api_follows {
            return (Some(first), &path[path.len() - rest.len() - 1..]);
        }
    }
    (None, path)
}

/// The address the request comes from, through `trusted_proxies` (`None` without a socket).
pub fn client_addr(req: &Req, gateway: &Gateway) -> Option<IpAddr> {
    let forwarded = req.headers.iter().filter(|(name, _)| name == "x-forwarded-for").map(|(_, v)| v.as_str());
    req.peer.map(|peer| cidr::client_addr(peer, forwarded, &gateway.config.raw.trusted_proxies))
}

fn admit<'g>(req: &Req, gateway: &'g Gateway, log: &mut LogFields) -> Result<Admitted<'g>, Reply> {
    let from = client_addr(req, gateway);
    if let Some(refusal) = locked_out(gateway, from) {
        return Err(Reply::error_in(family_of(req), &refusal));
    }
    if req.url.len() > MAX_URL_BYTES {
        let error = ApiError {
            status: 414,
            kind: "invalid_request_error",
            message: format!("the URL is longer than {MAX_URL_BYTES} bytes; no endpoint takes one so long"),
            param: None,
            code: Some("uri_too_long"),
            retry_after: None,
        };
        return Err(Reply::error_in(family_of(req), &error));
    }
    let (pool_prefix, path) = split_pool_prefix(req.path());
    // The public page is no route at all while it is off, as an unknown path.
    let public = gateway.config.raw.status.public;
    let Some(endpoint) = Endpoint::from_path(path).filter(|e| public || *e != Endpoint::Stats) else {
        return Err(Reply::error(&ApiError::not_found(format!(
            "no route for {} {path}; the API is under /v1 (chat/completions, completions, embeddings, models, responses, messages)",
            req.method
        ))));
    };
    log.family = endpoint.metrics_family();
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
        let mut reply = Reply::error_in(endpoint.family(), &error);
        reply.add_headers(allow());
        return Err(reply);
    }
    if !endpoint.needs_token() {
        return Ok(Admitted::Open(endpoint));
    }
    let from_query = match gateway.config.raw.allow_query_token {
        true => query_param(&req.url, "api_key"),
        false => None,
    };
    let presented = auth::presented_token(|name| req.header(name)).or(from_query.as_deref());
    if presented.is_none() && body_token::may_carry(req, gateway) {
        // The body is read first: a client without a token in its head is held to
        // max_body_bytes and the body rate, like any other.
        return Ok(Admitted::BodyToken(endpoint, pool_prefix.map(str::to_string), from));
    }
    admit_client(req, gateway, endpoint, pool_prefix, from, presented, log)
}

/// Admits a client with the token it `presented`: authenticated, its pool chosen, its scope
/// checked, and counted in its limits.
fn admit_client<'g>(
    req: &Req,
    gateway: &'g Gateway,
    endpoint: Endpoint,
    pool_prefix: Option<&str>,
    from: Option<IpAddr>,
    presented: Option<&str>,
    log: &mut LogFields,
) -> Result<Admitted<'g>, Reply> {
    let path = split_pool_prefix(req.path()).1;
    let client = authorize(gateway, presented, from, log).and_then(|client| choose_pool(client, pool_prefix));
    let client = client.and_then(|client| match client.scopes.contains(&endpoint.scope()) {
        true => Ok(client),
        false => Err(ApiError {
            status: 403,
            kind: "permission_error",
            message: format!(
                "token '{}' may not call {} {path} (it needs the '{}' scope; ask the gateway operator)",
                client.name,
                req.method,
                scope_name(endpoint.scope())
            ),
            param: None,
            code: Some("insufficient_scope"),
            retry_after: None,
        }),
    });
    // Counted last, so that only a request that may go on takes a place in its limits. A
    // day's tokens spent bar the API, not the operator's own routes.
    let permit = client.and_then(|client| match client.limits {
        Some(limits) => {
            if !matches!(endpoint, Endpoint::Admin(_)) {
                let used = || gateway.usage.tokens_today(client.name);
                limits::check_daily(client.name, limits, used, crate::keystate::now())?;
            }
            gateway.limits.admit(client.name, limits, Instant::now()).map(|p| (client, p))
        }
        None => Ok((client, Permit::default())),
    });
    match permit {
        Ok((client, permit)) => Ok(Admitted::Client(endpoint, client, permit)),
        Err(error) => Err(Reply::error_in(endpoint.family(), &error)),
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Inference => "inference",
        Scope::Models => "models",
        Scope::Manage => "manage",
        Scope::Admin => "admin",
    }
}

fn open_endpoint(endpoint: &Endpoint, req: &Req, gateway: &Gateway) -> Reply {
    match endpoint {
        Endpoint::Health => health(gateway),
        Endpoint::AdminPage => page::admin(),
        Endpoint::Stats => stats::handle(req, gateway),
        // What Ollama itself answers, so native clients' connection probes pass.
        _ => Reply::Full {
            status: 200,
            body: b"Ollama is running".to_vec(),
            headers: vec![("Content-Type", "text/plain; charset=utf-8".to_string())],
        },
    }
}

fn dispatch(
    endpoint: Endpoint,
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    // The admin API is the gateway's own, whatever the token's pool speaks.
    if let Endpoint::Admin(route) = &endpoint {
        return admin::handle(route, req, gateway, client);
    }
    let openai = gateway.pools.get(client.pool).is_some_and(|pool| pool.provider == Provider::Openai);
    if openai {
        return match endpoint.openai_path() {
            Some(path) => openai::openai_passthrough(req, &path, gateway, client, log),
            None if matches!(endpoint, Endpoint::V1Root) => Ok(v1_root()),
            None if endpoint.family() == Family::Anthropic => Err(ApiError::bad_request(
                format!(
                    "pool '{}' is an OpenAI-compatible upstream: it speaks the OpenAI API, not Anthropic's \
                     Messages API; use /v1/chat/completions or /v1/responses with it",
                    client.pool
                ),
                None,
            )),
            None => Err(ApiError::bad_request(
                format!(
                    "pool '{}' is an OpenAI-compatible upstream: it serves the /v1 API only, not Ollama's native /api",
                    client.pool
                ),
                None,
            )),
        };
    }
    match endpoint {
        Endpoint::ChatCompletions => openai::chat_completions(req, gateway, client, log),
        Endpoint::Completions => openai::completions(req, gateway, client, log),
        Endpoint::Embeddings => openai::embeddings(req, gateway, client, log),
        Endpoint::Models => openai::list_models(gateway, client, log),
        Endpoint::Model(id) => openai::retrieve_model(&id, gateway, client, log),
        Endpoint::Responses => responses::responses(req, gateway, client, log),
        Endpoint::Messages => anthropic::messages(req, gateway, client, log),
        Endpoint::CountTokens => anthropic::count_tokens(req, gateway, client, log),
        Endpoint::Native(path, route) | Endpoint::Gin(path, route) => {
            native::handle(req, &path, route, gateway, client, log)
        }
        Endpoint::V1Root
        | Endpoint::Root
        | Endpoint::Health
        | Endpoint::Admin(_)
        | Endpoint::AdminPage
        | Endpoint::Stats => Ok(v1_root()),
    }
}

fn v1_root() -> Reply {
    Reply::json(
        200,
        &json!({
            "status": "ok",
            "service": "ollama-gateway",
            "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/responses", "/v1/messages"],
        }),
    )
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

/// The pool of requests without a token.
const ANONYMOUS_POOLS: &[String] = &[];

/// The pool a request uses: the one its path names, if the token has it, else its first.
fn choose_pool<'g>(mut client: Client<'g>, prefix: Option<&str>) -> Result<Client<'g>, ApiError> {
    let Some(name) = prefix else {
        return Ok(client);
    };
    match client.pools.iter().find(|pool| *pool == name) {
        Some(pool) => {
            client.pool = pool;
            Ok(client)
        }
        None => Err(ApiError::not_found(format!(
            "no route for /{name}/…: '{name}' is not one of this token's pools ({})",
            if client.pools.is_empty() { "default".to_string() } else { client.pools.join(", ") }
        ))),
    }
}

/// What requests without a token may do when `allow_anonymous` is on.
const ANONYMOUS_SCOPES: &[Scope] = &[Scope::Inference, Scope::Models];

/// Checks the token presented (and that it may be used now, from `from`) and says what it
/// may use. A wrong token counts towards `from`'s lock-out; a missing one does not: that
/// is a client not yet given its token, not one guessing.
fn authorize<'g>(
    gateway: &'g Gateway,
    presented: Option<&str>,
    from: Option<IpAddr>,
    log: &mut LogFields,
) -> Result<Client<'g>, ApiError> {
    let client = match door(gateway, presented, from, gateway.config.raw.allow_anonymous)? {
        Caller::Token(token) => Client {
            pool: &token.pool,
            pools: &token.pools,
            models: token.models.as_deref(),
            name: &token.name,
            scopes: &token.scopes,
            limits: Some(&token.limits),
        },
        Caller::Anonymous => Client {
            pool: keys::DEFAULT_POOL,
            pools: ANONYMOUS_POOLS,
            models: None,
            name: "anonymous",
            scopes: ANONYMOUS_SCOPES,
            limits: None,
        },
    };
    log.token = Some(client.name.to_string());
    Ok(client)
}

/// The checks a token meets whatever it calls (the API, the admin API, `/metrics`): it is
/// one of the config's (a wrong one counts against the address it came from, toward the
/// lock-out), it has not expired, and it comes from an address its `ips` allow. Without a
/// token, anonymous when `anonymous` allows.
pub(crate) fn door<'g>(
    gateway: &'g Gateway,
    presented: Option<&str>,
    from: Option<IpAddr>,
    anonymous: bool,
) -> Result<Caller<'g>, ApiError> {
    let caller = auth::authenticate(&gateway.config.tokens, presented, anonymous);
    if let (Err(_), Some(_), Some(addr)) = (&caller, presented, from) {
        gateway.limits.lockout.wrong_token(addr, Instant::now());
    }
    if let Ok(Caller::Token(token)) = &caller {
        limits::check_access(&token.name, &token.limits, from, crate::keystate::now())?;
    }
    caller
}

/// The 429 of an address locked out after wrong tokens, checked before anything else on
/// every route: a locked-out address learns nothing more.
pub(crate) fn locked_out(gateway: &Gateway, from: Option<IpAddr>) -> Option<ApiError> {
    from.and_then(|addr| gateway.limits.lockout.refusal(addr, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Files};
    use serde_json::Value;

    const TOKEN: &str = "sk-router-test-0123456789";

    /// A gateway built from config text alone, whose only upstream nothing listens on: a
    /// route that reached it would answer 502, so every answer below is the router's own.
    fn gateway(extra: &str) -> Gateway {
        let config = format!(
            "{extra}\n[[tokens]]\nname = \"alice\"\nsha256 = \"{}\"\n",
            crate::secret::sha256_hex(TOKEN)
        );
        let files = Files {
            path: "config.toml".into(),
            config: Ok(config.into_bytes()),
            keys: Some(("keys.txt".into(), Ok(b"http://127.0.0.1:9\n".to_vec()))),
        };
        let config = Config::from_files(&files).expect("the test config");
        Gateway::new(config, &Default::default(), 0)
    }

    /// A request through the router, as `server` sends it: screened from its head, then
    /// handled with its body.
    fn route(gateway: &Gateway, method: &str, url: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(token) = token {
            headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        let mut req = Req {
            method: method.into(),
            url: url.into(),
            headers,
            body: body.as_bytes().to_vec(),
            ..Req::default()
        };
        let mut log = LogFields::default();
        let admitted = screen(&req, gateway, &mut log)
            .and_then(|admission| screen_body(&mut req, gateway, admission, &mut log));
        let reply = match admitted {
            Ok(admission) => handle(&req, gateway, admission, &mut log),
            Err(early) => early,
        };
        match reply {
            Reply::Full { status, body, .. } => {
                (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
            }
            Reply::Stream(_) => panic!("{method} {url}: a stream"),
        }
    }

    #[test]
    fn the_router_answers_without_a_socket() {
        let gateway = gateway("");
        let (status, health) = route(&gateway, "GET", "/health", None, "");
        assert_eq!((status, &health["status"]), (200, &json!("ok")));
        // No token: 401 in each family's envelope, before any upstream call.
        let (status, openai) = route(&gateway, "POST", "/v1/chat/completions", None, "{}");
        assert_eq!((status, &openai["error"]["code"]), (401, &json!("invalid_api_key")));
        let (status, native) = route(&gateway, "POST", "/api/chat", None, "{}");
        assert!(status == 401 && native["error"].is_string(), "{native}");
        // Unknown routes and wrong methods.
        assert_eq!(route(&gateway, "GET", "/v2/nothing", Some(TOKEN), "").0, 404);
        assert_eq!(route(&gateway, "GET", "/v1/chat/completions", Some(TOKEN), "").0, 405);
        // A bad body is refused before upstream, with the field named.
        let (status, bad) = route(&gateway, "POST", "/v1/chat/completions", Some(TOKEN), r#"{"model":"m"}"#);
        assert_eq!((status, &bad["error"]["param"]), (400, &json!("messages")));
        // A good one goes upstream, where nothing listens.
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(route(&gateway, "POST", "/v1/chat/completions", Some(TOKEN), body).0, 502);
    }

    #[test]
    fn the_admin_api_needs_its_scope_and_answers_without_a_process() {
        const ADMIN: &str = "sk-router-admin-0123456789";
        let gateway = gateway(&format!(
            "[[tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
            crate::secret::sha256_hex(ADMIN)
        ));
        let (status, refused) = route(&gateway, "GET", "/admin/api/status", Some(TOKEN), "");
        assert_eq!((status, &refused["error"]["code"]), (403, &json!("insufficient_scope")));
        assert_eq!(route(&gateway, "GET", "/admin/api/status", None, "").0, 401);
        let (status, answer) = route(&gateway, "GET", "/admin/api/status", Some(ADMIN), "");
        assert_eq!(
            (status, &answer["pools"][0]["keys"][0]["host"]),
            (200, &json!("127.0.0.1:9")),
            "{answer}"
        );
        assert_eq!(answer["requests"], json!({"in_flight": null, "queued": null}), "no server counts them");
        // No process around this gateway: nothing to reload, and it says so.
        assert_eq!(route(&gateway, "POST", "/admin/api/reload", Some(ADMIN), "").0, 503);
        // An admin token with no other scope still may not chat.
        assert_eq!(route(&gateway, "POST", "/v1/chat/completions", Some(ADMIN), "{}").0, 403);
    }

    #[test]
    fn the_pages_need_no_token_and_stats_is_a_route_only_when_public() {
        let off = gateway("");
        assert_eq!(route(&off, "GET", "/admin", None, "").0, 200);
        assert_eq!(route(&off, "POST", "/admin", None, "").0, 405);
        let (status, answer) = route(&off, "GET", "/stats", None, "");
        assert_eq!((status, &answer["error"]["type"]), (404, &json!("not_found_error")), "{answer}");
        let on = gateway("[status]\npublic = true\n");
        assert_eq!(route(&on, "GET", "/stats", None, "").0, 200);
        assert_eq!(route(&on, "GET", "/stats/", None, "").0, 200);
    }

    /// A body refused before it reaches its handler (413, 408, 503) is answered in the
    /// envelope of the endpoint it was sent to, as every other error of that endpoint.
    #[test]
    fn body_errors_come_in_the_endpoints_family() {
        let gateway = gateway("");
        let cases = [
            (
                "/v1/messages?beta=true",
                json!({"type": "error", "error": {"type": "request_too_large", "message": "m"}}),
            ),
            (
                "/team/v1/messages/count_tokens",
                json!({"type": "error", "error": {"type": "request_too_large", "message": "m"}}),
            ),
            ("/api/chat", json!({"error": "m"})),
            (
                "/v1/chat/completions",
                json!({"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": "request_too_large"}}),
            ),
            (
                "/v1/responses",
                json!({"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": "request_too_large"}}),
            ),
            (
                "/nowhere",
                json!({"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": "request_too_large"}}),
            ),
        ];
        for (url, want) in cases {
            let req = Req { method: "POST".into(), url: url.into(), ..Req::default() };
            let error = ApiError { message: "m".into(), ..ApiError::too_large(1) };
            match error_reply(&req, &gateway, &error) {
                Reply::Full { status, body, .. } => {
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!((status, body), (413, want), "{url}");
                }
                Reply::Stream(_) => panic!("{url}: a stream"),
            }
        }
    }

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
            ("/v1/responses", Some(Responses)),
            ("/responses", Some(Responses)),
            ("//v1//messages", Some(Messages)),
            ("/v1/messages/count_tokens", Some(CountTokens)),
            ("/v1/models/", Some(Models)),
            ("/api/blobs/../chat", None),
            ("/v1/./chat/completions", None),
            ("//admin/api//status/", Some(Admin(admin::Route::Status))),
            ("/admin/api/keys/0a1b/enable", Some(Admin(admin::Route::Disable("0a1b".into(), false)))),
            ("/admin/api/keys/0a1b", None),
            ("/admin", Some(AdminPage)),
            ("//admin/", Some(AdminPage)),
            ("/v1/admin", None),
            ("/stats", Some(Stats)),
            ("/v1/stats", None),
        ];
        for (path, want) in cases {
            assert_eq!(Endpoint::from_path(path), want, "{path}");
        }
    }

    #[test]
    fn a_pool_prefix_is_split_off_before_the_api_path() {
        let cases = [
            ("/openrouter/v1/chat/completions", (Some("openrouter"), "/v1/chat/completions")),
            ("/team-b/api/chat", (Some("team-b"), "/api/chat")),
            ("/team-b/v1", (Some("team-b"), "/v1")),
            ("/v1/chat/completions", (None, "/v1/chat/completions")),
            ("/api/chat", (None, "/api/chat")),
            ("/chat/completions", (None, "/chat/completions")),
            ("/v1/models/hf.co/org/model", (None, "/v1/models/hf.co/org/model")),
            ("/models/x/v1", (None, "/models/x/v1")),
            ("/admin/api/status", (None, "/admin/api/status")),
        ];
        for (path, want) in cases {
            assert_eq!(split_pool_prefix(path), want, "{path}");
        }
    }

    #[test]
    fn native_routes_and_their_scopes() {
        let scope_of = |path: &str| match Endpoint::from_path(path) {
            Some(endpoint @ Endpoint::Native(..)) => Some(endpoint.scope()),
            _ => None,
        };
        assert_eq!(scope_of("/api/chat"), Some(Scope::Inference));
        assert_eq!(scope_of("/api/embeddings"), Some(Scope::Inference));
        assert_eq!(scope_of("/api/web_search"), Some(Scope::Inference));
        assert_eq!(scope_of("/api/web_fetch"), Some(Scope::Inference));
        assert_eq!(scope_of("/api/tags"), Some(Scope::Models));
        assert_eq!(scope_of("//api//show"), Some(Scope::Models));
        assert_eq!(scope_of("/api/pull"), Some(Scope::Manage));
        assert_eq!(scope_of("/api/blobs/sha256:abc"), Some(Scope::Manage));
        assert_eq!(scope_of("/api/blobs/"), None);
        assert_eq!(scope_of("/api/nope"), None);
        assert_eq!(Endpoint::from_path("/v1/chat/completions").map(|e| e.scope()), Some(Scope::Inference));
    }

    #[test]
    fn a_body_token_is_checked_only_when_allowed() {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"api_key":"{TOKEN}"}}"#);
        // Off: no token, whatever the body says.
        let (status, _) = route(&gateway(""), "POST", "/v1/chat/completions", None, &body);
        assert_eq!(status, 401);
        // On: the body's token lets the request through to upstream, where nothing listens.
        let allowed = gateway("allow_body_token = true");
        assert_eq!(route(&allowed, "POST", "/v1/chat/completions", None, &body).0, 502);
        let wrong = body.replace(TOKEN, "sk-wrong");
        let (status, error) = route(&allowed, "POST", "/v1/chat/completions", None, &wrong);
        assert_eq!((status, &error["error"]["code"]), (401, &json!("invalid_api_key")), "{error}");
        let (status, _) = route(&allowed, "POST", "/v1/chat/completions", None, &body.replace(TOKEN, ""));
        assert_eq!(status, 401, "an empty api_key is no token");
    }

    #[test]
    fn gin_aliases_are_their_api_routes_with_gins_errors() {
        for name in ["tags", "show", "pull", "push", "copy", "delete"] {
            let api = format!("/api/{name}");
            let route = native::route_of(&api).expect("an /api route");
            let endpoint = Endpoint::from_path(&format!("/sys/{name}"));
            assert_eq!(endpoint, Some(Endpoint::Gin(api.clone(), route)), "{name}");
            let endpoint = endpoint.expect("checked");
            assert_eq!((endpoint.family(), endpoint.scope()), (Family::Gin, route.scope), "{name}");
            assert_eq!(endpoint.metrics_family(), Some(Family::Gin), "{name}");
        }
        for path in ["/sys/create", "/sys/chat", "/sys", "/sys/blobs/sha256:abc"] {
            assert_eq!(Endpoint::from_path(path), None, "{path}");
        }
        let gateway = gateway("");
        let (status, body) = route(&gateway, "GET", "/sys/tags", None, "");
        assert_eq!((status, &body["code"], &body["data"]), (401, &json!(401), &Value::Null), "{body}");
        assert!(body["message"].as_str().is_some_and(|m| m.contains("missing API key")), "{body}");
        let (status, body) = route(&gateway, "POST", "/sys/pull", Some(TOKEN), "{}");
        assert_eq!((status, &body["code"]), (403, &json!(403)), "default scopes lack manage: {body}");
        let (status, body) = route(&gateway, "POST", "/sys/tags", Some(TOKEN), "");
        assert_eq!((status, &body["code"]), (405, &json!(405)), "{body}");
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
            peer: None,
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
        assert!(!Endpoint::AdminPage.needs_token() && !Endpoint::Stats.needs_token());
    }
}
