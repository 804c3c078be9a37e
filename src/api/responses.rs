//! `POST /v1/responses`, the OpenAI Responses API (what Codex speaks), over Ollama's
//! `/api/chat`: stateless, as Ollama's own. The shapes live in `translate::responses`; a
//! `reasoning.effort` the model cannot think with is dropped by `route::relay_chat`.

use crate::api::route::{read_upstream_json, relay_chat};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{Client, LogFields, Reply, Req};
use crate::translate::random_id;
use crate::translate::responses::{self, ResponsesStream};
use std::time::{SystemTime, UNIX_EPOCH};

/// `POST /v1/responses` → `POST /api/chat`.
pub fn responses(
    req: &Req,
    gateway: &Gateway,
    client: Client<'_>,
    log: &mut LogFields,
) -> Result<Reply, ApiError> {
    let request = responses::to_ollama(&req.json_body()?)?;
    if !request.dropped_tools.is_empty() {
        log::debug!(
            "responses: hosted tools the gateway cannot run were dropped: {}",
            request.dropped_tools.join(", ")
        );
    }
    log.model = Some(request.model.clone());
    let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let context = request.context(random_id("resp_"), created_at);
    let response = relay_chat(request.native, &request.model, request.stream, gateway, client, log)?;
    if request.stream {
        return Ok(Reply::sse(response.body, Box::new(ResponsesStream::new(context))));
    }
    let native = read_upstream_json(response.body)?;
    log.usage = Some(responses::usage_of(&native));
    Ok(Reply::json(200, &responses::from_ollama(&native, &context)))
}
