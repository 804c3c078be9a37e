//! The OpenAI endpoints: validate, route the model, relay, translate back.
//!
//! Each handler takes the request and the authenticated [`Client`], and returns a
//! [`Reply`] or an [`ApiError`]. Validation and the model allowlist are checked before any
//! upstream call. JSON shapes live in `translate`; choosing and retrying keys in `relay`.

use crate::api::access;
use crate::api::access::rule;
use crate::api::route::{read_upstream_json, relay, route_model, Routed};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{Client, LogFields, Reply, Req, StreamReply};
use crate::relay::{Answer, Outgoing};
use crate::translate::chat::{self, ChatStream};
use crate::translate::completions::{self, CompletionStream};
use crate::translate::{embeddings, models, random_id, ReplyContext};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

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
    // A glob alias (`claude-*`) names no one model to list.
    for (alias, target) in gateway.config.raw.aliases.iter().filter(|(alias, _)| !rule::is_glob(alias)) {
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
        takes_slot: req.method == "POST",
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
