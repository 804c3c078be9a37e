//! What every translating handler does between its translator and upstream: the model
//! checked and written into the native body (with its Ollama Cloud spelling), the request
//! relayed on the client's pool (a chat asked again without thinking when the model cannot
//! think), and a plain answer read as JSON.

use crate::api::access;
use crate::api::access::rule;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{Client, LogFields};
use crate::relay::{self, Answer, Outgoing};
use crate::translate::anthropic::retry_without_thinking;
use crate::upstream::{self, UpstreamResponse};
use serde_json::Value;
use std::io::Read;

/// Longest non-streamed upstream answer read into memory.
const MAX_UPSTREAM_BODY: u64 = 256 * 1024 * 1024;

/// A native request body with its model routed: alias resolved, allowlist checked, and a
/// second spelling for Ollama Cloud when the name carries a local `-cloud` suffix.
pub struct Routed {
    /// The model upstream is asked for.
    pub target: String,
    /// The body for upstream.
    pub body: Vec<u8>,
    /// The body for Ollama Cloud upstreams, when it differs.
    pub cloud_body: Option<Vec<u8>>,
    /// The name to report back when it differs from what upstream will say.
    pub response_model: Option<String>,
}

impl Routed {
    /// The request for `path`, a stream or one JSON answer.
    pub fn outgoing<'a>(&'a self, path: &'a str, stream: bool) -> Outgoing<'a> {
        let answer = if stream { Answer::Stream } else { Answer::Json };
        Outgoing {
            method: "POST",
            path,
            body: Some(&self.body),
            cloud_body: self.cloud_body.as_deref(),
            answer,
            model: Some(&self.target),
            content_type: "application/json",
            takes_slot: true,
        }
    }
}

/// Resolves `requested` for `client`, or refuses it with 403, and writes the model into
/// `native` (under `field`).
pub fn route_model(
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

/// Relays `request` on the client's pool.
pub fn relay(
    gateway: &Gateway,
    client: Client<'_>,
    request: Outgoing<'_>,
    log: &mut LogFields,
) -> Result<UpstreamResponse, ApiError> {
    Ok(relay::send(gateway.relay(), gateway.pool(client.pool)?, request, &mut log.trace)?)
}

/// Routes `native` (an `/api/chat` body) to the model `requested` and relays it. The agents
/// ask for thinking whatever the model (Claude Code always, Codex when `reasoning.effort` is
/// set); a model that cannot think refuses `think` with 400, and the request goes again
/// without it, as Ollama's own Anthropic layer does. Only a body that asks for thinking is
/// kept for that.
pub fn relay_chat(
    native: Value,
    requested: &str,
    stream: bool,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<UpstreamResponse, ApiError> {
    let thinks = native.get("think").is_some_and(|think| think != &Value::Bool(false));
    let kept = thinks.then(|| native.clone());
    let routed = route_model(native, "model", requested, gateway, client)?;
    match relay(gateway, client, routed.outgoing("/api/chat", stream), log) {
        Err(error) => match kept.as_ref().and_then(|native| retry_without_thinking(native, &error)) {
            Some(without) => {
                let routed = route_model(without, "model", requested, gateway, client)?;
                relay(gateway, client, routed.outgoing("/api/chat", stream), log)
            }
            None => Err(error),
        },
        ok => ok,
    }
}

/// Reads a whole non-streamed upstream answer as JSON.
pub fn read_upstream_json(body: impl Read) -> Result<Value, ApiError> {
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
