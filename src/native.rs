//! Ollama's native API (`/api/*`) behind the gateway's tokens, scopes and key pools.
//!
//! Each known route has a scope (inference, models, manage), its methods, and the body
//! fields that name models, so the token's model allowlist and the `[aliases]` apply as on
//! `/v1`. Bodies go upstream with the pool's key and the same failover; answers come back
//! line by line, unchanged ([`Passthrough`]), streams and plain bodies alike. Errors are
//! answered the way Ollama answers them: `{"error": "…"}` with the status.

use crate::api::{Client, LogFields, Reply, Req, StreamReply};
use crate::config::Scope;
use crate::gateway::Gateway;
use crate::model_policy;
use crate::relay::{self, Outgoing};
use crate::translate::errors::ApiError;
use crate::translate::native::Passthrough;
use serde_json::{json, Value};
use std::io::Read;

/// What the gateway knows about one native route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The scope a token needs.
    pub scope: Scope,
    /// The methods it answers.
    pub methods: &'static [&'static str],
    /// Body fields that name a model.
    pub model_fields: &'static [&'static str],
    /// Whether it streams unless the body says `"stream": false`.
    pub streams: bool,
    /// Whether its stream ends with a `"done": true` line.
    pub has_done_line: bool,
}

const fn route(
    scope: Scope,
    methods: &'static [&'static str],
    model_fields: &'static [&'static str],
) -> Route {
    Route { scope, methods, model_fields, streams: false, has_done_line: false }
}

/// The route of a native path (`/api/chat`, `/api/blobs/sha256:…`), if it is one.
pub fn route_of(path: &str) -> Option<Route> {
    use Scope::{Inference, Manage, Models};
    const POST: &[&str] = &["POST"];
    const GET: &[&str] = &["GET", "HEAD"];
    const MODEL: &[&str] = &["model", "name"];
    let generating = Route { streams: true, has_done_line: true, ..route(Inference, POST, MODEL) };
    let progress = Route { streams: true, ..route(Manage, POST, MODEL) };
    Some(match path {
        "/api/chat" | "/api/generate" => generating,
        "/api/embed" | "/api/embeddings" => route(Inference, POST, MODEL),
        "/api/tags" | "/api/ps" | "/api/version" => route(Models, GET, &[]),
        "/api/show" => route(Models, POST, MODEL),
        "/api/pull" | "/api/push" | "/api/create" => progress,
        "/api/copy" => route(Manage, POST, &["source", "destination"]),
        "/api/delete" => route(Manage, &["DELETE"], MODEL),
        _ if path.starts_with("/api/blobs/") && path.len() > "/api/blobs/".len() => {
            route(Manage, &["HEAD", "POST"], &[])
        }
        _ => return None,
    })
}

/// Ollama's error shape for an error of ours.
pub fn error_reply(error: &ApiError) -> Reply {
    let mut headers: Vec<(&'static str, String)> =
        error.retry_after.map(|secs| ("Retry-After", secs.to_string())).into_iter().collect();
    headers.push(("Content-Type", "application/json; charset=utf-8".to_string()));
    Reply::Full {
        status: error.status,
        body: json!({ "error": error.message }).to_string().into_bytes(),
        headers,
    }
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
    let mut body = None;
    let mut stream = false;
    let mut cloud_body = None;
    let mut model = None;
    if req.method == "POST" || req.method == "DELETE" {
        if !is_json {
            body = Some(req.body.clone());
        } else if !req.body.iter().all(u8::is_ascii_whitespace) {
            let mut value: Value = serde_json::from_slice(&req.body).map_err(|err| {
                ApiError::bad_request(format!("the request body is not valid JSON: {err}"), None)
            })?;
            stream = route.streams && value.get("stream").and_then(Value::as_bool) != Some(false);
            let (plain, cloud, target) = rewrite_models(&mut value, route, gateway, client)?;
            log.model = target.clone();
            model = target;
            body = Some(plain);
            cloud_body = cloud;
        } else {
            body = Some(Vec::new());
        }
    }
    let outgoing = Outgoing {
        method: &req.method,
        path,
        body: body.as_deref(),
        cloud_body: cloud_body.as_deref(),
        stream,
        model: model.as_deref(),
        content_type: if is_json { "application/json" } else { "application/octet-stream" },
    };
    let pool = crate::endpoints::pool(gateway, client)?;
    let response = relay::send(gateway.relay(), pool, outgoing, &mut log.trace)?;
    if req.method == "HEAD" {
        return Ok(Reply::Full { status: response.status, body: Vec::new(), headers: Vec::new() });
    }
    let listing = path == "/api/tags" || path == "/api/ps";
    if listing && (client.models.is_some() || !gateway.config.raw.aliases.is_empty()) {
        return models_for(client, gateway, response.body, path == "/api/tags");
    }
    let content_type = response.content_type.unwrap_or_else(|| "application/json; charset=utf-8".to_string());
    Ok(Reply::Stream(StreamReply {
        status: response.status,
        content_type,
        headers: Vec::new(),
        upstream: response.body,
        translator: Box::new(Passthrough::new(stream && route.has_done_line)),
    }))
}

/// Applies aliases and the allowlist to the model fields of a native body; returns the
/// body, its Ollama Cloud spelling when different, and the (first) model asked for.
#[allow(clippy::type_complexity)] // (body, cloud body, model): named at the one call site
fn rewrite_models(
    value: &mut Value,
    route: Route,
    gateway: &Gateway,
    client: Client<'_>,
) -> Result<(Vec<u8>, Option<Vec<u8>>, Option<String>), ApiError> {
    let mut first = None;
    let mut cloud = value.clone();
    let mut differs = false;
    for field in route.model_fields {
        let Some(requested) = value.get(*field).and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let target = crate::endpoints::check_model(&requested, gateway, client)?.to_string();
        let cloud_name = model_policy::cloud_name(&target).into_owned();
        differs |= cloud_name != target;
        value[*field] = Value::from(target.clone());
        cloud[*field] = Value::from(cloud_name);
        first.get_or_insert(target);
    }
    let plain = value.to_string().into_bytes();
    Ok((plain, differs.then(|| cloud.to_string().into_bytes()), first))
}

/// `/api/tags` or `/api/ps` as this token may see it: models outside its list hidden, and
/// (for tags) the aliases added.
fn models_for(
    client: Client<'_>,
    gateway: &Gateway,
    body: Box<dyn Read + Send>,
    with_aliases: bool,
) -> Result<Reply, ApiError> {
    let mut bytes = Vec::new();
    body.take(64 * 1024 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|err| ApiError::server(502, format!("reading the upstream model list failed: {err}")))?;
    let mut tags: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::server(502, format!("the upstream model list is not JSON: {err}")))?;
    let Some(list) = tags.get_mut("models").and_then(Value::as_array_mut) else {
        return Ok(Reply::json(200, &tags));
    };
    let name_of =
        |m: &Value| m.get("model").or_else(|| m.get("name")).and_then(Value::as_str).map(str::to_string);
    list.retain(|m| name_of(m).is_some_and(|name| model_policy::is_allowed(client.models, &name, &name)));
    let aliases = if with_aliases { &gateway.config.raw.aliases } else { &Default::default() };
    // `llama3.2` names the model listed as `llama3.2:latest`.
    let same = |listed: &str, name: &str| listed == name || listed.strip_suffix(":latest") == Some(name);
    for (alias, target) in aliases {
        if !model_policy::is_allowed(client.models, alias, target)
            || list.iter().any(|m| name_of(m).as_deref() == Some(alias))
        {
            continue;
        }
        let mut entry = list
            .iter()
            .find(|m| name_of(m).is_some_and(|listed| same(&listed, target)))
            .cloned()
            .unwrap_or_else(|| json!({"details": {}, "size": 0}));
        entry["name"] = Value::from(alias.as_str());
        entry["model"] = Value::from(alias.as_str());
        list.push(entry);
    }
    Ok(Reply::json(200, &tags))
}
