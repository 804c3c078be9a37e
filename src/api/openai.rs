//! The OpenAI endpoints: validate, route the model, relay, translate back.
//!
//! Each handler takes the request and the authenticated [`Client`], and returns a
//! [`Reply`] or an [`ApiError`]. Validation and the model allowlist are checked before any
//! upstream call. JSON shapes live in `translate`; choosing and retrying keys in `relay`.

use crate::api::access;
use crate::api::access::rule;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{Client, LogFields, Reply, Req, StreamReply};
use crate::relay::{self, Answer, Outgoing};
use crate::translate::chat::{self, ChatStream};
use crate::translate::completions::{self, CompletionStream};
use crate::translate::{embeddings, models, random_id, ReplyContext};
use crate::upstream::{self, UpstreamResponse};
use serde_json::Value;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest non-streamed upstream answer read into memory.
const MAX_UPSTREAM_BODY: u64 = 256 * 1024 * 1024;

/// A native request body with its model routed: alias resolved, allowlist checked, and a
/// second spelling for Ollama Cloud when the name carries a local `-cloud` suffix.
struct Routed {
    /// The model upstream is asked for.
    target: String,
    body: Vec<u8>,
    cloud_body: Option<Vec<u8>>,
    /// The name to report back when it differs from what upstream will say.
    response_model: Option<String>,
}

impl Routed {
    fn outgoing<'a>(&'a self, path: &'a str, stream: bool) -> Outgoing<'a> {
        let answer = if stream { Answer::Stream } else { Answer::Json };
        Outgoing {
            method: "POST",
            path,
            body: Some(&self.body),
            cloud_body: self.cloud_body.as_deref(),
            answer,
            model: Some(&self.target),
            content_type: "application/json",
        }
    }
}

/// Resolves `requested` for `client`, or refuses it with 403, and writes the model into
/// `native` (under `field`).
fn route_model(
    mut native: Value,
    field: &str,
    requested: &str,
    gateway: &Gateway,
    client: Client<'_>,
) -> Result<Routed, ApiError> {
    let target = access::check_model(requested, gateway, client)?;
    native[field] = Value::from(target);
    let body = native.to_string().into_bytes();
    let cloud = rule::cloud_name(target);
    let cloud_body = (cloud != target).then(|| {
        native[field] = Value::from(cloud.as_ref());
        native.to_string().into_bytes()
    });
    let response_model = (requested != target || cloud_body.is_some()).then(|| requested.to_string());
    Ok(Routed { target: target.to_string(), body, cloud_body, response_model })
}

fn relay(
    gateway: &Gateway,
    client: Client<'_>,
    request: Outgoing<'_>,
    log: &mut LogFields,
) -> Result<UpstreamResponse, ApiError> {
    Ok(relay::send(gateway.relay(), gateway.pool(client.pool)?, request, &mut log.trace)?)
}

fn reply_context(gateway: &Gateway, id_prefix: &str, routed: &Routed, include_usage: bool) -> ReplyContext {
    ReplyContext {
        id: random_id(id_prefix),
        created_fallback: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        response_model: routed.response_model.clone(),
        reasoning_field: gateway.config.raw.reasoning_field,
        include_usage,
    }
}

/// `POST /v1/chat/completions` → `POST /api/chat`.
pub fn chat_completions(
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let request = chat::to_ollama(&req.json_body()?)?;
    log.model = Some(request.model.clone());
    let routed = route_model(request.native, "model", &request.model, gateway, client)?;
    let response = relay(gateway, client, routed.outgoing("/api/chat", request.stream), log)?;
    let context = reply_context(gateway, "chatcmpl-", &routed, request.include_usage);
    if request.stream {
        return Ok(Reply::sse(response.body, Box::new(ChatStream::new(context))));
    }
    let native = read_upstream_json(response.body)?;
    log.usage = Some(chat::usage_of(&native));
    Ok(Reply::json(200, &chat::from_ollama(&native, &context)))
}

/// `POST /v1/completions` → `POST /api/generate`.
pub fn completions(
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let request = completions::to_ollama(&req.json_body()?)?;
    log.model = Some(request.model.clone());
    let routed = route_model(request.native, "model", &request.model, gateway, client)?;
    let response = relay(gateway, client, routed.outgoing("/api/generate", request.stream), log)?;
    let context = reply_context(gateway, "cmpl-", &routed, request.include_usage);
    if request.stream {
        return Ok(Reply::sse(response.body, Box::new(CompletionStream::new(context))));
    }
    let native = read_upstream_json(response.body)?;
    log.usage = Some(chat::usage_of(&native));
    Ok(Reply::json(200, &completions::from_ollama(&native, &context)))
}

/// `POST /v1/embeddings` → `POST /api/embed`.
pub fn embeddings(
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let request = embeddings::to_ollama(&req.json_body()?)?;
    log.model = Some(request.model.clone());
    let routed = route_model(request.native, "model", &request.model, gateway, client)?;
    let response = relay(gateway, client, routed.outgoing("/api/embed", false), log)?;
    let native = read_upstream_json(response.body)?;
    log.usage = Some(chat::usage_of(&native));
    Ok(Reply::json(200, &embeddings::from_ollama(&native, &request.model, request.encoding)?))
}

/// `GET /v1/models` ← `GET /api/tags`: the models the token may use, and the aliases whose
/// targets it may use.
pub fn list_models(gateway: &Gateway, client: Client<'_>, log: &mut LogFields) -> Result<Reply, ApiError> {
    let response = relay(gateway, client, Outgoing::get("/api/tags"), log)?;
    let tags = read_upstream_json(response.body)?;
    let mut listed: Vec<(String, i64)> = models::ids_from_tags(&tags)
        .into_iter()
        .filter(|(id, _)| access::visible(id, gateway, client))
        .collect();
    for (alias, target) in &gateway.config.raw.aliases {
        let known = listed.iter().any(|(id, _)| id == alias);
        if !known && access::visible(alias, gateway, client) {
            let created =
                listed.iter().find(|(id, _)| rule::same_model(id, target)).map_or(0, |(_, created)| *created);
            listed.push((alias.clone(), created));
        }
    }
    Ok(Reply::json(200, &models::list(&listed)))
}

/// `GET /v1/models/{id}` ← `POST /api/show`.
pub fn retrieve_model(
    id: &str,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    log.model = Some(id.to_string());
    let routed = route_model(models::show_request(id), "model", id, gateway, client)?;
    let show = read_upstream_json(relay(gateway, client, routed.outgoing("/api/show", false), log)?.body)?;
    Ok(Reply::json(200, &models::from_show(id, &show)))
}

/// Reads a whole non-streamed upstream answer as JSON.
fn read_upstream_json(body: Box<dyn Read + Send>) -> Result<Value, ApiError> {
    let mut bytes = Vec::new();
    body.take(MAX_UPSTREAM_BODY).read_to_end(&mut bytes).map_err(|err| {
        let status = if upstream::is_timeout(&err) { 504 } else { 502 };
        ApiError::server(status, format!("reading the upstream answer failed: {err}"))
    })?;
    let value: Value = crate::json_cost::parse_tree(&bytes).map_err(|err| {
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

/// A `/v1` request for a pool of an OpenAI-compatible upstream: passed through as it is,
/// with the pool's key, the token's model allowlist and the `[aliases]` (checked by
/// `access`, keys matched without regard to case); the answer (a stream or not) comes back
/// line by line, unchanged.
pub fn openai_passthrough(
    req: &Req,
    path: &str,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let mut checked = access::OpenAiBody::default();
    if req.method == "POST" {
        checked = access::openai_body(&req.body, gateway, client)?;
        log.model = checked.model.as_ref().map(|(requested, _)| requested.clone());
    } else if let Some(id) = path.strip_prefix("/models/") {
        access::check_model(id, gateway, client)?;
    }
    let outgoing = Outgoing {
        method: &req.method,
        path,
        body: (req.method == "POST").then(|| checked.rewritten.as_deref().unwrap_or(&req.body)),
        cloud_body: None,
        answer: if checked.stream { Answer::Stream } else { Answer::Json },
        model: checked.model.as_ref().map(|(_, target)| target.as_str()),
        content_type: "application/json",
    };
    let response = relay(gateway, client, outgoing, log)?;
    if path == "/models" && client.models.is_some() {
        let mut list = read_upstream_json(response.body)?;
        if let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) {
            data.retain(|m| {
                m.get("id").and_then(Value::as_str).is_some_and(|id| access::visible(id, gateway, client))
            });
        }
        return Ok(Reply::json(200, &list));
    }
    let content_type = response.content_type.unwrap_or_else(|| "application/json".to_string());
    Ok(Reply::Stream(StreamReply {
        status: response.status,
        content_type,
        headers: Vec::new(),
        upstream: response.body,
        translator: Box::new(crate::translate::passthrough::Passthrough::new(false)),
    }))
}
