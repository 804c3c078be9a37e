//! Which models a request reaches, and whether its token may use them: one check for
//! every route.
//!
//! [`model_policy::permit`] is the rule (aliases resolved, the target decides). This
//! module applies it to everything a client can name a model with, and turns a refusal
//! into the API's 403: a name ([`check_model`], for `/v1` and `/v1/models/{id}`), an entry
//! of a model list ([`visible`]), the top-level fields of a native body that Ollama reads
//! as models ([`native_body`]: `model`, `name`, `from`, `source`, `destination`, and the
//! `FROM` lines of a `modelfile`), and the `model` and `models` of a body passed through to
//! an OpenAI-compatible provider ([`openai_body`]). Keys are matched the way Ollama's Go
//! decoder matches them, without regard to case, and two keys for one field are refused
//! (`body`), so the field checked is the field read.
//!
//! In scope: finding model names in bodies, checking them, rewriting aliases (and Ollama
//! Cloud spellings) in place. Out of scope: the rule itself (`model_policy`), sending
//! (`relay`), and the JSON of `/v1` requests (`translate`, which builds its own bodies).

use crate::api::Client;
use crate::body::{self, BodyError, Member};
use crate::gateway::Gateway;
use crate::model_policy;
use crate::modelfile;
use crate::translate::errors::ApiError;
use std::collections::BTreeMap;
use std::ops::Range;

/// The top-level fields of native bodies that name a model, in the order Ollama prefers
/// them (`model` over the older `name`).
const MODEL_FIELDS: &[&str] = &["model", "name", "from", "source", "destination"];

/// Every top-level field of a native body the gateway reads.
const NATIVE_FIELDS: &[&str] = &[
    "model",
    "name",
    "from",
    "source",
    "destination",
    "modelfile",
    "path",
    "files",
    "draft_files",
    "stream",
];

/// Every top-level field of an OpenAI-compatible body the gateway reads.
const OPENAI_FIELDS: &[&str] = &["model", "models", "stream"];

/// Names checked as written: no aliases apply inside a Modelfile.
const NO_ALIASES: &BTreeMap<String, String> = &BTreeMap::new();

/// The model `requested` stands for, if `client` may use it; else the 403 to answer.
pub fn check_model<'a>(
    requested: &'a str,
    gateway: &'a Gateway,
    client: Client<'_>,
) -> Result<&'a str, ApiError> {
    check("model", requested, gateway, client)
}

/// Whether `client` sees the model-list entry `listed`: exactly when it may use it.
pub fn visible(listed: &str, gateway: &Gateway, client: Client<'_>) -> bool {
    model_policy::permit(client.models, &gateway.config.raw.aliases, listed).is_some()
}

/// [`check_model`] for a body field (`key`, as the client wrote it).
fn check<'a>(
    key: &str,
    requested: &'a str,
    gateway: &'a Gateway,
    client: Client<'_>,
) -> Result<&'a str, ApiError> {
    let aliases = &gateway.config.raw.aliases;
    if let Some(target) = model_policy::permit(client.models, aliases, requested) {
        return Ok(target);
    }
    let target = model_policy::resolve(aliases, requested);
    let alias = match target == requested {
        true => String::new(),
        false => format!("an alias of '{target}'; "),
    };
    let what = format!(
        "may not use model '{requested}' ({alias}{}); ask the gateway operator to add it",
        allowed(client)
    );
    Err(refused(key, client, what))
}

/// The 403 for something `client` may not ask for: "token 'NAME' <what>".
fn refused(key: &str, client: Client<'_>, what: String) -> ApiError {
    ApiError {
        status: 403,
        kind: "permission_error",
        message: format!("token '{}' {what}", client.name),
        param: Some(key.to_string()),
        code: Some("model_not_allowed"),
        retry_after: None,
    }
}

/// "allowed: a, b" for messages.
fn allowed(client: Client<'_>) -> String {
    format!("allowed: {}", client.models.unwrap_or_default().join(", "))
}

/// A native body, checked and ready to send.
#[derive(Debug, Default)]
pub struct NativeBody {
    /// The body with aliases resolved, when that changed it (else send the client's).
    pub rewritten: Option<Vec<u8>>,
    /// The body for Ollama Cloud upstreams, when their spelling of a model differs.
    pub cloud: Option<Vec<u8>>,
    /// The model asked of upstream (the first model field), for logs and key plans.
    pub model: Option<String>,
    /// `stream`, when the body sets it to `true` or `false`.
    pub stream: Option<bool>,
}

/// Checks every field of a native JSON body that Ollama reads as a model, and resolves
/// aliases in place. For a token limited to some models, also every `FROM` of a
/// `modelfile`, and no `path` (a Modelfile on the server's disk) or `files` /
/// `draft_files` (weights by digest): the gateway cannot tell which model those are.
pub fn native_body(body: &[u8], gateway: &Gateway, client: Client<'_>) -> Result<NativeBody, ApiError> {
    let members = body::scan(body, NATIVE_FIELDS).map_err(bad_body)?;
    let mut checked = NativeBody {
        stream: member(&members, "stream").and_then(|m| serde_json::from_str(m.value.get()).ok()),
        ..NativeBody::default()
    };
    let (mut plain, mut cloud, mut cloud_differs) = (Vec::new(), Vec::new(), false);
    for field in MODEL_FIELDS {
        let Some(member) = member(&members, field) else { continue };
        let Some(requested) = string_field(member)? else { continue };
        let target = check(&member.key, &requested, gateway, client)?;
        let cloud_name = model_policy::cloud_name(target);
        cloud_differs |= cloud_name != target;
        if target != requested {
            plain.push((member.span.clone(), json_string(target)));
        }
        if cloud_name != requested {
            cloud.push((member.span.clone(), json_string(&cloud_name)));
        }
        checked.model.get_or_insert_with(|| target.to_string());
    }
    if let Some(allowed) = client.models {
        check_sources(&members, allowed, client)?;
    }
    checked.rewritten = (!plain.is_empty()).then(|| body::splice(body, &plain));
    checked.cloud = cloud_differs.then(|| body::splice(body, &cloud));
    Ok(checked)
}

/// For a token with an allowlist: what `/api/create` may build from besides `from`.
fn check_sources(
    members: &[Member<'_>],
    allowed_models: &[String],
    client: Client<'_>,
) -> Result<(), ApiError> {
    if let Some(member) = member(members, "modelfile") {
        let text = string_field(member)?.unwrap_or_default();
        let names = modelfile::from_names(&text).map_err(|why| {
            let what = format!(
                "may not send this '{}': its FROM lines cannot be read for sure ({}); use 'from' with \
                 an allowed model",
                member.key, why.0
            );
            refused(&member.key, client, what)
        })?;
        for name in names {
            if model_policy::permit(Some(allowed_models), NO_ALIASES, &name).is_none() {
                let what = format!(
                    "may not build from model '{name}' (a FROM line of '{}'; {})",
                    member.key,
                    allowed(client)
                );
                return Err(refused(&member.key, client, what));
            }
        }
    }
    for (field, what) in [
        ("path", "it names a Modelfile on the upstream's disk"),
        ("files", "model files (blobs) name no model the gateway can check"),
        ("draft_files", "model files (blobs) name no model the gateway can check"),
    ] {
        if let Some(member) = member(members, field).filter(|m| !is_unset(m)) {
            let what = format!(
                "may not create a model from '{}': {what} (this token may use only some models); use \
                 'from' with an allowed model",
                member.key
            );
            return Err(refused(&member.key, client, what));
        }
    }
    Ok(())
}

/// Whether a member's value is `null`, `""` or `{}`: what Go reads as unset.
fn is_unset(member: &Member<'_>) -> bool {
    let text = member.value.get();
    text == "null"
        || text == "\"\""
        || text.strip_prefix('{').is_some_and(|rest| rest.trim_start().starts_with('}'))
}

/// A body for an OpenAI-compatible provider, checked and ready to send.
#[derive(Debug, Default)]
pub struct OpenAiBody {
    /// The body with aliases resolved, when that changed it (else send the client's).
    pub rewritten: Option<Vec<u8>>,
    /// The `model` asked for and the one sent.
    pub model: Option<(String, String)>,
    /// Whether the body asks for a stream.
    pub stream: bool,
}

/// Checks the `model` of a body for an OpenAI-compatible provider, and OpenRouter's
/// `models` fallback list, resolving aliases in place. A token limited to some models must
/// name one: without it the provider would pick the account's default.
pub fn openai_body(body: &[u8], gateway: &Gateway, client: Client<'_>) -> Result<OpenAiBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty: send a JSON object", None));
    }
    let members = body::scan(body, OPENAI_FIELDS).map_err(bad_body)?;
    let mut checked = OpenAiBody {
        stream: member(&members, "stream").is_some_and(|m| m.value.get() == "true"),
        ..OpenAiBody::default()
    };
    let mut edits = Vec::new();
    match member(&members, "model").map(|m| string_field(m).map(|name| (m, name))).transpose()? {
        Some((member, Some(requested))) => {
            let target = check(&member.key, &requested, gateway, client)?.to_string();
            if target != requested {
                edits.push((member.span.clone(), json_string(&target)));
            }
            checked.model = Some((requested, target));
        }
        _ if client.models.is_some() => {
            return Err(ApiError::bad_request(
                "model is required for this token (it may use only some models)",
                Some("model"),
            ))
        }
        _ => {}
    }
    if let Some(member) = member(&members, "models") {
        edits.extend(fallbacks(member, gateway, client)?);
    }
    checked.rewritten = (!edits.is_empty()).then(|| body::splice(body, &edits));
    Ok(checked)
}

/// OpenRouter's `models`: each must be allowed; rewritten when an alias is among them.
fn fallbacks(
    member: &Member<'_>,
    gateway: &Gateway,
    client: Client<'_>,
) -> Result<Option<(Range<usize>, String)>, ApiError> {
    let names: Option<Vec<String>> = serde_json::from_str(member.value.get()).map_err(|_| {
        let message = format!("'{}' must be a list of model names", member.key);
        ApiError::bad_request(message, Some(&member.key))
    })?;
    let Some(names) = names else { return Ok(None) };
    let mut targets = Vec::with_capacity(names.len());
    for name in &names {
        targets.push(check(&member.key, name, gateway, client)?);
    }
    let changed = names.iter().zip(&targets).any(|(name, target)| name != target);
    Ok(changed.then(|| (member.span.clone(), serde_json::Value::from(targets).to_string())))
}

/// The member for `field`, if the body has one.
fn member<'m, 'b>(members: &'m [Member<'b>], field: &str) -> Option<&'m Member<'b>> {
    members.iter().find(|m| m.field == field)
}

/// A member's string value (`None` for `null`, which Go leaves unset); 400 otherwise.
fn string_field(member: &Member<'_>) -> Result<Option<String>, ApiError> {
    serde_json::from_str(member.value.get())
        .map_err(|_| ApiError::bad_request(format!("'{}' must be a string", member.key), Some(&member.key)))
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn bad_body(error: BodyError) -> ApiError {
    let param = match &error {
        BodyError::Duplicate { field, .. } => Some(*field),
        BodyError::Syntax(_) => None,
    };
    ApiError::bad_request(error.to_string(), param)
}
