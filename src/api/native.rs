//! Ollama's native API (`/api/*`) behind the gateway's tokens, scopes and key pools.
//!
//! Each known route has a scope (inference, models, manage), its methods, and the shape of
//! its answer; Ollama's web search API (`web_search`, `web_fetch`) is one more inference
//! route, answered by Ollama Cloud with the key's account. JSON bodies are checked by `access` (every field Ollama reads as a model,
//! matched as Go matches keys) and go upstream with the pool's key and the same failover,
//! byte for byte except where an alias is resolved. Streams come back line by line,
//! unchanged ([`Passthrough`]); a plain answer that should be one JSON object is read whole
//! and passed on only if it is one, so an upstream's HTML, garbage or cut-off body becomes
//! a 502 rather than a 200. Errors are answered the way Ollama answers them:
//! `{"error": "…"}` with the status.

use crate::api::access;
use crate::api::access::rule;
use crate::auth::Scope;
use crate::error::{ApiError, Family};
use crate::gateway::Gateway;
use crate::http::{Client, LogFields, Reply, Req, StreamReply};
use crate::relay::{self, Answer, Outgoing};
use crate::translate::passthrough::{self as passthrough, Passthrough};
use crate::upstream::UpstreamResponse;
use serde_json::{json, Value};
use std::io::Read;

/// What the gateway knows about one native route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The scope a token needs.
    pub scope: Scope,
    /// The methods it answers.
    pub methods: &'static [&'static str],
    /// Whether its plain (not streamed) answer is one JSON object; `copy`, `delete` and
    /// blobs answer with an empty body.
    pub json_answer: bool,
    /// Whether it streams unless the body says `"stream": false`.
    pub streams: bool,
    /// Whether its stream ends with a `"done": true` line.
    pub has_done_line: bool,
}

const fn route(scope: Scope, methods: &'static [&'static str], json_answer: bool) -> Route {
    Route { scope, methods, json_answer, streams: false, has_done_line: false }
}

/// The route of a native path (`/api/chat`, `/api/blobs/sha256:…`), if it is one.
pub fn route_of(path: &str) -> Option<Route> {
    use Scope::{Inference, Manage, Models};
    const POST: &[&str] = &["POST"];
    const GET: &[&str] = &["GET", "HEAD"];
    let generating = Route { streams: true, has_done_line: true, ..route(Inference, POST, true) };
    let progress = Route { streams: true, ..route(Manage, POST, true) };
    Some(match path {
        "/api/chat" | "/api/generate" => generating,
        "/api/embed" | "/api/embeddings" => route(Inference, POST, true),
        // Ollama's web search API: Ollama Cloud answers it with the key's account; a
        // self-hosted Ollama has no such route, and its 404 goes back as it is.
        "/api/web_search" | "/api/web_fetch" => route(Inference, POST, true),
        "/api/tags" | "/api/ps" | "/api/version" => route(Models, GET, true),
        "/api/show" => route(Models, POST, true),
        "/api/pull" | "/api/push" | "/api/create" => progress,
        "/api/copy" => route(Manage, POST, false),
        "/api/delete" => route(Manage, &["DELETE"], false),
        _ if path.starts_with("/api/blobs/") && path.len() > "/api/blobs/".len() => {
            route(Manage, &["HEAD", "POST"], false)
        }
        _ => return None,
    })
}

/// The `/api/…` route a path of the Gin Ollama proxy (`/sys/tags`) stands for.
pub fn gin_alias(path: &str) -> Option<&'static str> {
    Some(match path {
        "/sys/tags" => "/api/tags",
        "/sys/show" => "/api/show",
        "/sys/pull" => "/api/pull",
        "/sys/push" => "/api/push",
        "/sys/copy" => "/api/copy",
        "/sys/delete" => "/api/delete",
        _ => return None,
    })
}

/// Ollama's error shape for an error of ours.
pub fn error_reply(error: &ApiError) -> Reply {
    Reply::error_in(Family::Ollama, error)
}

/// Forwards one native call.
pub fn handle(
    req: &Req,
    path: &str,
    route: Route,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let is_json = !path.starts_with("/api/blobs/");
    let has_body = req.method == "POST" || req.method == "DELETE";
    // Every field Ollama would read as a model, in every JSON body: a field a route does
    // not use today is still checked, since an Ollama may read it tomorrow.
    let checked = match has_body && is_json && !req.body.iter().all(u8::is_ascii_whitespace) {
        true => access::native_body(&req.body, gateway, client)?,
        false => access::NativeBody::default(),
    };
    let stream = route.streams && checked.stream != Some(false);
    log.model.clone_from(&checked.model);
    let outgoing = Outgoing {
        method: &req.method,
        path,
        body: has_body.then(|| checked.rewritten.as_deref().unwrap_or(&req.body)),
        cloud_body: checked.cloud.as_deref(),
        answer: match (stream, route.json_answer && req.method != "HEAD") {
            (true, _) => Answer::Stream,
            (false, true) => Answer::Json,
            (false, false) => Answer::Raw,
        },
        model: checked.model.as_deref(),
        content_type: if is_json { "application/json" } else { "application/octet-stream" },
        takes_slot: route.scope == Scope::Inference,
    };
    let pool = gateway.pool(client.pool)?;
    let response = relay::send(gateway.relay(), pool, outgoing, &mut log.trace)?;
    if req.method == "HEAD" {
        return Ok(Reply::Full { status: response.status, body: Vec::new(), headers: Vec::new() });
    }
    if stream || !route.json_answer {
        let content_type =
            response.content_type.unwrap_or_else(|| "application/json; charset=utf-8".to_string());
        return Ok(Reply::Stream(StreamReply {
            status: response.status,
            content_type,
            headers: Vec::new(),
            upstream: response.body,
            translator: Box::new(Passthrough::new(stream && route.has_done_line)),
        }));
    }
    let listing = path == "/api/tags" || path == "/api/ps";
    if listing && (client.models.is_some() || !gateway.config.raw.aliases.is_empty()) {
        let answer = read_plain(response.body)?;
        return models_for(client, gateway, &answer, path == "/api/tags");
    }
    plain_json(response, log)
}

/// A plain answer that should be one JSON object: passed on unchanged if it is one, a 502
/// if it is not (an HTML page, garbage, a body cut off, nothing).
fn plain_json(response: UpstreamResponse, log: &mut LogFields) -> Result<Reply, ApiError> {
    let UpstreamResponse { status, content_type, body } = response;
    let answer = read_plain(body)?;
    log.usage = Some(passthrough::usage_of(&answer));
    let content_type = content_type.unwrap_or_else(|| "application/json; charset=utf-8".to_string());
    Ok(Reply::Full { status, body: answer, headers: vec![("Content-Type", content_type)] })
}

/// Reads a whole plain answer (the relay has read it already, and checked it is JSON).
fn read_plain(mut body: impl Read) -> Result<Vec<u8>, ApiError> {
    let mut answer = Vec::new();
    body.read_to_end(&mut answer)
        .map_err(|err| ApiError::server(502, format!("reading the upstream answer failed: {err}")))?;
    Ok(answer)
}

/// `/api/tags` or `/api/ps` as this token may see it: the models it may use, and (for
/// tags) the aliases whose targets it may use.
fn models_for(
    client: Client<'_>,
    gateway: &Gateway,
    answer: &[u8],
    with_aliases: bool,
) -> Result<Reply, ApiError> {
    let mut tags: Value = crate::json_cost::parse_tree(answer)
        .map_err(|err| ApiError::server(502, format!("the upstream model list is not JSON: {err}")))?;
    let Some(list) = tags.get_mut("models").and_then(Value::as_array_mut) else {
        return Ok(Reply::json(200, &tags));
    };
    let name_of =
        |m: &Value| m.get("model").or_else(|| m.get("name")).and_then(Value::as_str).map(str::to_string);
    list.retain(|m| name_of(m).is_some_and(|name| access::visible(&name, gateway, client)));
    let aliases = if with_aliases { &gateway.config.raw.aliases } else { &Default::default() };
    for (alias, target) in aliases.iter().filter(|(alias, _)| !rule::is_glob(alias)) {
        if !access::visible(alias, gateway, client)
            || list.iter().any(|m| name_of(m).as_deref() == Some(alias))
        {
            continue;
        }
        let mut entry = list
            .iter()
            .find(|m| name_of(m).is_some_and(|listed| rule::same_model(&listed, target)))
            .cloned()
            .unwrap_or_else(|| json!({"details": {}, "size": 0}));
        entry["name"] = Value::from(alias.as_str());
        entry["model"] = Value::from(alias.as_str());
        list.push(entry);
    }
    Ok(Reply::json(200, &tags))
}
