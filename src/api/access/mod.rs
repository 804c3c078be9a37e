//! Which models a request reaches, and whether its token may use them: one check for
//! every route.
//!
//! [`rule::permit`] is the rule (aliases resolved, the target decides). This
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
//! Cloud spellings) in place. Out of scope: the rule itself (`rule`), sending
//! (`relay`), and the JSON of `/v1` requests (`translate`, which builds its own bodies).

pub mod body;
pub mod modelfile;
pub mod rule;

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::Client;
use body::{BodyError, Member};
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
    client: Client<'a>,
) -> Result<&'a str, ApiError> {
    Asker::of(gateway, client).check("model", requested)
}

/// Whether `client` sees the model-list entry `listed`: exactly when it may use it.
pub fn visible(listed: &str, gateway: &Gateway, client: Client<'_>) -> bool {
    Asker::of(gateway, client).visible(listed)
}

/// [`Asker::native_body`] for `client`.
pub fn native_body(body: &[u8], gateway: &Gateway, client: Client<'_>) -> Result<NativeBody, ApiError> {
    Asker::of(gateway, client).native_body(body)
}

/// [`Asker::openai_body`] for `client`.
pub fn openai_body(body: &[u8], gateway: &Gateway, client: Client<'_>) -> Result<OpenAiBody, ApiError> {
    Asker::of(gateway, client).openai_body(body)
}

/// What the checks know of who asks: the token's name and allowlist, and the aliases it
/// asks through.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The token's name, for messages.
    pub token: &'a str,
    /// Model globs it may use (`None`: all).
    pub allowed: Option<&'a [String]>,
    /// The gateway's `[aliases]`.
    pub aliases: &'a BTreeMap<String, String>,
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

impl<'a> Asker<'a> {
    /// `client` asking through `gateway`'s aliases.
    pub fn of(gateway: &'a Gateway, client: Client<'a>) -> Asker<'a> {
        Asker { token: client.name, allowed: client.models, aliases: &gateway.config.raw.aliases }
    }

    /// Whether this token sees the model-list entry `listed`: exactly when it may use it.
    pub fn visible(&self, listed: &str) -> bool {
        rule::permit(self.allowed, self.aliases, listed).is_some()
    }

    /// The model `requested` (in the body field `key`, as the client wrote it) stands for,
    /// if this token may use it; else the 403.
    fn check<'r>(&self, key: &str, requested: &'r str) -> Result<&'r str, ApiError>
    where
        'a: 'r,
    {
        if let Some(target) = rule::permit(self.allowed, self.aliases, requested) {
            return Ok(target);
        }
        let target = rule::resolve(self.aliases, requested);
        let alias = match target == requested {
            true => String::new(),
            false => format!("an alias of '{target}'; "),
        };
        let what = format!(
            "may not use model '{requested}' ({alias}{}); ask the gateway operator to add it",
            self.allowed_list()
        );
        Err(self.refused(key, what))
    }

    /// The 403 for something this token may not ask for: "token 'NAME' <what>".
    fn refused(&self, key: &str, what: String) -> ApiError {
        ApiError {
            status: 403,
            kind: "permission_error",
            message: format!("token '{}' {what}", self.token),
            param: Some(key.to_string()),
            code: Some("model_not_allowed"),
            retry_after: None,
        }
    }

    /// "allowed: a, b" for messages.
    fn allowed_list(&self) -> String {
        format!("allowed: {}", self.allowed.unwrap_or_default().join(", "))
    }

    /// Checks every field of a native JSON body that Ollama reads as a model, and resolves
    /// aliases in place. For a token limited to some models, also every `FROM` of a
    /// `modelfile`, and no `path` (a Modelfile on the server's disk) or `files` /
    /// `draft_files` (weights by digest): the gateway cannot tell which model those are.
    pub fn native_body(&self, body: &[u8]) -> Result<NativeBody, ApiError> {
        let members = body::scan(body, NATIVE_FIELDS).map_err(bad_body)?;
        let mut checked = NativeBody {
            stream: member(&members, "stream").and_then(|m| serde_json::from_str(m.value.get()).ok()),
            ..NativeBody::default()
        };
        let (mut plain, mut cloud, mut cloud_differs) = (Vec::new(), Vec::new(), false);
        for field in MODEL_FIELDS {
            let Some(member) = member(&members, field) else { continue };
            let Some(requested) = string_field(member)? else { continue };
            let target = self.check(&member.key, &requested)?;
            let cloud_name = rule::cloud_name(target);
            cloud_differs |= cloud_name != target;
            if target != requested {
                plain.push((member.span.clone(), json_string(target)));
            }
            if cloud_name != requested {
                cloud.push((member.span.clone(), json_string(&cloud_name)));
            }
            checked.model.get_or_insert_with(|| target.to_string());
        }
        if let Some(allowed) = self.allowed {
            self.check_sources(&members, allowed)?;
        }
        checked.rewritten = (!plain.is_empty()).then(|| body::splice(body, &plain));
        checked.cloud = cloud_differs.then(|| body::splice(body, &cloud));
        Ok(checked)
    }

    /// For a token with an allowlist: what `/api/create` may build from besides `from`.
    fn check_sources(&self, members: &[Member<'_>], allowed: &[String]) -> Result<(), ApiError> {
        if let Some(member) = member(members, "modelfile") {
            let text = string_field(member)?.unwrap_or_default();
            let names = modelfile::from_names(&text).map_err(|why| {
                let what = format!(
                    "may not send this '{}': its FROM lines cannot be read for sure ({}); use 'from' with \
                 an allowed model",
                    member.key, why.0
                );
                self.refused(&member.key, what)
            })?;
            for name in names {
                if rule::permit(Some(allowed), NO_ALIASES, &name).is_none() {
                    let what = format!(
                        "may not build from model '{name}' (a FROM line of '{}'; {})",
                        member.key,
                        self.allowed_list()
                    );
                    return Err(self.refused(&member.key, what));
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
                return Err(self.refused(&member.key, what));
            }
        }
        Ok(())
    }

    /// Checks the `model` of a body for an OpenAI-compatible provider, and OpenRouter's
    /// `models` fallback list, resolving aliases in place. A token limited to some models must
    /// name one: without it the provider would pick the account's default.
    pub fn openai_body(&self, body: &[u8]) -> Result<OpenAiBody, ApiError> {
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
                let target = self.check(&member.key, &requested)?.to_string();
                if target != requested {
                    edits.push((member.span.clone(), json_string(&target)));
                }
                checked.model = Some((requested, target));
            }
            _ if self.allowed.is_some() => {
                return Err(ApiError::bad_request(
                    "model is required for this token (it may use only some models)",
                    Some("model"),
                ))
            }
            _ => {}
        }
        if let Some(member) = member(&members, "models") {
            edits.extend(self.fallbacks(member)?);
        }
        checked.rewritten = (!edits.is_empty()).then(|| body::splice(body, &edits));
        Ok(checked)
    }

    /// OpenRouter's `models`: each must be allowed; rewritten when an alias is among them.
    fn fallbacks(&self, member: &Member<'_>) -> Result<Option<(Range<usize>, String)>, ApiError> {
        let names: Option<Vec<String>> = serde_json::from_str(member.value.get()).map_err(|_| {
            let message = format!("'{}' must be a list of model names", member.key);
            ApiError::bad_request(message, Some(&member.key))
        })?;
        let Some(names) = names else { return Ok(None) };
        let mut targets = Vec::with_capacity(names.len());
        for name in &names {
            targets.push(self.check(&member.key, name)?);
        }
        let changed = names.iter().zip(&targets).any(|(name, target)| name != target);
        Ok(changed.then(|| (member.span.clone(), serde_json::Value::from(targets).to_string())))
    }
}

/// Whether a member's value is `null`, `""` or `{}`: what Go reads as unset.
fn is_unset(member: &Member<'_>) -> bool {
    let text = member.value.get();
    text == "null"
        || text == "\"\""
        || text.strip_prefix('{').is_some_and(|rest| rest.trim_start().starts_with('}'))
}

/// The member for `field`, if the body has one.
fn member<'m, 'b>(members: &'m [Member<'b>], field: &str) -> Option<&'m Member<'b>> {
    members.iter().find(|m| m.field == field)
}

/// A member's string value: `None` for `null` and `""`, which name nothing (Ollama falls
/// back from an empty `model` to `name`, and no route serves an empty name); 400 when it
/// is not a string.
fn string_field(member: &Member<'_>) -> Result<Option<String>, ApiError> {
    let text: Option<String> = serde_json::from_str(member.value.get()).map_err(|_| {
        ApiError::bad_request(format!("'{}' must be a string", member.key), Some(&member.key))
    })?;
    Ok(text.filter(|text| !text.is_empty()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(allowed: Option<&[String]>, run: impl FnOnce(Asker<'_>)) {
        let aliases = BTreeMap::from([
            ("mini".to_string(), "llama3.2".to_string()),
            ("big".to_string(), "gpt-oss:120b-cloud".to_string()),
            ("llama-fast".to_string(), "qwen3:8b".to_string()),
        ]);
        run(Asker { token: "t", allowed, aliases: &aliases });
    }

    fn text(bytes: &Option<Vec<u8>>) -> Option<&str> {
        bytes.as_deref().map(|b| std::str::from_utf8(b).unwrap())
    }

    #[test]
    fn native_bodies_get_aliases_and_cloud_names_in_place() {
        let allowed = ["llama*".to_string(), "gpt-oss:*".to_string()];
        with(Some(&allowed), |asker| {
            // (body, rewritten, cloud body, model)
            let cases = [
                (r#"{"model":"llama3.2","x":[1]}"#, None, None, Some("llama3.2")),
                (
                    r#"{"Model" :"mini", "x":[1]}"#,
                    Some(r#"{"Model" :"llama3.2", "x":[1]}"#),
                    None,
                    Some("llama3.2"),
                ),
                (
                    r#"{"model":"gpt-oss:20b-cloud"}"#,
                    None,
                    Some(r#"{"model":"gpt-oss:20b"}"#),
                    Some("gpt-oss:20b-cloud"),
                ),
                (
                    r#"{"ſource":"big","destination":"llama-copy"}"#,
                    Some(r#"{"ſource":"gpt-oss:120b-cloud","destination":"llama-copy"}"#),
                    Some(r#"{"ſource":"gpt-oss:120b","destination":"llama-copy"}"#),
                    Some("gpt-oss:120b-cloud"),
                ),
                (
                    r#"{"name":"llama3.2","model":"mini"}"#,
                    Some(r#"{"name":"llama3.2","model":"llama3.2"}"#),
                    None,
                    Some("llama3.2"),
                ),
                (r#"{"model":null,"messages":[]}"#, None, None, None),
                (
                    r#"{"model":"","name":"mini"}"#,
                    Some(r#"{"model":"","name":"llama3.2"}"#),
                    None,
                    Some("llama3.2"),
                ),
            ];
            for (body, rewritten, cloud, model) in cases {
                let checked = asker.native_body(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
                assert_eq!(
                    (text(&checked.rewritten), text(&checked.cloud), checked.model.as_deref()),
                    (rewritten, cloud, model),
                    "{body}"
                );
            }
        });
    }

    #[test]
    fn native_bodies_are_refused_with_the_field_at_fault() {
        let allowed = ["llama*".to_string()];
        // (body, status, param)
        let cases = [
            (r#"{"model":"llama3.2","MODEL":"qwen3"}"#, 400, "model"),
            (r#"{"Model":"qwen3"}"#, 403, "Model"),
            (r#"{"model":"llama-fast"}"#, 403, "model"),
            (r#"{"model":["llama3.2"]}"#, 400, "model"),
            (r#"{"model":"llama3.2","DESTINATION":"qwen3:copy"}"#, 403, "DESTINATION"),
            (r#"{"model":"llama-x","modelfile":"FROM qwen3\n"}"#, 403, "modelfile"),
            (r#"{"model":"llama-x","modelfile":"\u200bFROM qwen3\n"}"#, 403, "modelfile"),
            (r#"{"model":"llama-x","draft_files":{"a":"sha256:1"}}"#, 403, "draft_files"),
        ];
        with(Some(&allowed), |asker| {
            for (body, status, param) in cases {
                let error = asker.native_body(body.as_bytes()).expect_err(body);
                assert_eq!(
                    (error.status, error.param.as_deref()),
                    (status, Some(param)),
                    "{body}: {error:?}"
                );
            }
            let fine = r#"{"model":"llama-x","modelfile":"FROM llama3.2","files":{},"path":""}"#;
            assert!(asker.native_body(fine.as_bytes()).is_ok());
        });
        with(None, |asker| {
            let body = r#"{"model":"llama-x","modelfile":"FROM qwen3","files":{"a":"sha256:1"}}"#;
            assert!(asker.native_body(body.as_bytes()).is_ok(), "no allowlist: nothing to hold back");
            let twice = r#"{"model":"a","Model":"b"}"#;
            assert_eq!(asker.native_body(twice.as_bytes()).unwrap_err().status, 400, "duplicates: always");
        });
    }

    #[test]
    fn stream_is_read_as_go_reads_it() {
        with(None, |asker| {
            let stream = |body: &str| asker.native_body(body.as_bytes()).unwrap().stream;
            assert_eq!(stream(r#"{"model":"m","Stream":false}"#), Some(false));
            assert_eq!(stream(r#"{"model":"m","ſtream":true}"#), Some(true));
            assert_eq!(stream(r#"{"model":"m","stream":null}"#), None);
            assert_eq!(stream(r#"{"model":"m"}"#), None);
        });
    }

    #[test]
    fn openai_bodies_check_model_and_fallbacks() {
        let allowed = ["llama*".to_string()];
        with(Some(&allowed), |asker| {
            let checked =
                asker.openai_body(br#"{"MODEL":"mini","models":["mini","llama3"],"stream":true}"#).unwrap();
            assert_eq!(
                text(&checked.rewritten),
                Some(r#"{"MODEL":"llama3.2","models":["llama3.2","llama3"],"stream":true}"#)
            );
            assert_eq!(checked.model, Some(("mini".to_string(), "llama3.2".to_string())));
            assert!(checked.stream);
            for (body, status) in [
                (&br#"{"model":"llama3","Model":"qwen3"}"#[..], 400),
                (br#"{"model":"llama3","models":["qwen3"]}"#, 403),
                (br#"{"messages":[]}"#, 400),
                (br#"{"model":"","messages":[]}"#, 400),
                (b"  ", 400),
            ] {
                let error = asker.openai_body(body).expect_err("refused");
                assert_eq!(error.status, status, "{}: {error:?}", String::from_utf8_lossy(body));
            }
        });
    }
}
