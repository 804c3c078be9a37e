//! `POST /v1/messages` and `POST /v1/messages/count_tokens`, the Anthropic Messages API
//! (what Claude Code speaks), over Ollama's `/api/chat`. The shapes live in
//! `translate::anthropic`; errors of this family are answered in Anthropic's envelope by
//! the router.

use crate::api::access;
use crate::api::route::{read_upstream_json, relay_chat};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{Client, LogFields, Reply, Req};
use crate::translate::anthropic::{self, MessageContext, MessagesStream};
use crate::translate::random_id;
use serde_json::{json, Value};

/// `POST /v1/messages` → `POST /api/chat`.
pub fn messages(
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let request = anthropic::to_ollama(&req.json_body()?)?;
    log.model = Some(request.model.clone());
    let context = MessageContext { id: random_id("msg_"), model: request.model.clone() };
    let response = relay_chat(request.native, &request.model, request.stream, gateway, client, log)?;
    if request.stream {
        return Ok(Reply::sse(response.body, Box::new(MessagesStream::new(context, request.input_estimate))));
    }
    let native = read_upstream_json(response.body)?;
    log.usage = Some(anthropic::usage_of(&native));
    Ok(Reply::json(200, &anthropic::from_ollama(&native, &context)))
}

/// `POST /v1/messages/count_tokens`: an estimate made here, without an upstream call (and
/// so without spending quota); a model the token may not use is refused as on `messages`.
pub fn count_tokens(
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let body = req.json_body()?;
    if let Some(model) = body.get("model").and_then(Value::as_str) {
        log.model = Some(model.to_string());
        access::check_model(model, gateway, client)?;
    }
    let input_tokens = anthropic::count_tokens(&body)?;
    Ok(Reply::json(200, &json!({ "input_tokens": input_tokens })))
}
