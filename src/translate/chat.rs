//! Chat completions: OpenAI `/v1/chat/completions` <-> Ollama `/api/chat`.
//!
//! [`to_ollama`] validates an OpenAI chat request and builds the native `/api/chat` body;
//! [`from_ollama`] turns a native non-streaming reply into a `chat.completion` object; and
//! [`ChatStream`] turns native NDJSON lines, one at a time, into `chat.completion.chunk`
//! SSE events. The rules are those of Ollama's own `/v1` layer plus the gateway's
//! extensions (spec `openai-ollama.md` §1 to §4, the `[EXT]` items).
//!
//! In scope: request validation with errors that name the field at fault, message and
//! option mapping, tool-call ids and indices, `finish_reason`, usage, the SSE events, and
//! the error event that ends a broken stream. The request pieces the Responses and
//! Anthropic translators build their native bodies with too (messages, tool messages, tool
//! call arguments, images, `stop`, `think`) are here, `pub(super)`.
//! Out of scope: IO, the clock (callers pass `created_fallback`), model routing and keys;
//! the stream head and tail (`reply`) and the reading of upstream lines (`stream`).

use super::fields::{
    expected, field, include_usage, join, message_list, message_object, object_and_model, opt_bool,
    opt_integer, opt_number, opt_str, typed,
};
use super::reply::{error_event, message_text, native_tool_calls, StreamHead, UsageView, FINGERPRINT};
pub use super::reply::{usage_of, ReplyContext};
use super::stream::{ending_field, Ending, Events};
use crate::error::ApiError;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

/// Ollama's text for `http(s)://` image URLs (the gateway never fetches them: SSRF).
pub(super) const IMAGE_URL_UNSUPPORTED: &str =
    "image URLs are not currently supported, please use base64 encoded data instead";

/// Any other image URL that is not a usable base64 data URL.
pub(super) const INVALID_IMAGE: &str =
    "invalid image input: send a base64 data URL such as data:image/png;base64,... (JPEG, PNG or WebP)";

// ---------------------------------------------------------------------------------------
// Request: OpenAI -> native
// ---------------------------------------------------------------------------------------

/// A validated chat request, translated for upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The body for `POST /api/chat`.
    pub native: Value,
    /// The model asked for, as sent by the client.
    pub model: String,
    /// The client's `stream` (default `false`); also sent explicitly upstream.
    pub stream: bool,
    /// `stream_options.include_usage`: whether a stream ends with a usage chunk.
    pub include_usage: bool,
}

/// Validates an OpenAI chat request and translates it into a native `/api/chat` body.
///
/// Wrong types give a 400 whose `param` is the path of the field at fault
/// (`messages[2].content`, `temperature`, ...). Unknown fields are ignored; JSON `null`
/// counts as absent.
pub fn to_ollama(body: &Value) -> Result<ChatRequest, ApiError> {
    let (req, model) = object_and_model(body, "the name of a model, such as \"llama3.2\"")?;
    let stream = opt_bool(req, "", "stream")?.unwrap_or(false);
    let include_usage = include_usage(req)?;
    let messages = message_list(req)?;
    let mut native_messages: Vec<Value> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let translated = to_native_message(message, &format!("messages[{i}]"), &native_messages)?;
        native_messages.push(translated);
    }

    let mut native = Map::new();
    native.insert("model".into(), Value::String(model.clone()));
    native.insert("messages".into(), Value::Array(native_messages));
    native.insert("stream".into(), Value::Bool(stream));
    native.insert("options".into(), Value::Object(options(req)?));
    if let Some(format) = format(req)? {
        native.insert("format".into(), format);
    }
    match field(req, "tools") {
        None => {}
        Some(tools @ Value::Array(_)) => {
            native.insert("tools".into(), tools.clone());
        }
        other => return Err(expected("tools", "an array of tool definitions", other)),
    }
    if let Some(think) = think(req)? {
        native.insert("think".into(), think);
    }
    if opt_bool(req, "", "logprobs")? == Some(true) {
        native.insert("logprobs".into(), Value::Bool(true));
    }
    if let Some(top) = opt_integer(req, "", "top_logprobs")? {
        native.insert("top_logprobs".into(), top);
    }
    if let Some(keep_alive) = field(req, "keep_alive") {
        native.insert("keep_alive".into(), keep_alive.clone());
    }
    Ok(ChatRequest { native: Value::Object(native), model, stream, include_usage })
}

/// One OpenAI message as one native message. `earlier` holds the native messages
/// translated so far, where a tool result looks up the name of its call.
fn to_native_message(message: &Value, path: &str, earlier: &[Value]) -> Result<Value, ApiError> {
    let msg = message_object(message, path)?;
    let role = match field(msg, "role") {
        Some(Value::String(role)) if !role.trim().is_empty() => role.trim().to_lowercase(),
        other => {
            let what = "a role: \"system\", \"developer\", \"user\", \"assistant\" or \"tool\"";
            return Err(expected(&join(path, "role"), what, other));
        }
    };
    // What OpenAI means by `developer`; most Ollama templates know only `system`.
    let role = if role == "developer" { "system".to_string() } else { role };

    let tool_calls: Vec<Value> = match field(msg, "tool_calls") {
        None => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(j, call)| to_native_tool_call(call, &format!("{path}.tool_calls[{j}]")))
            .collect::<Result<_, _>>()?,
        other => return Err(expected(&join(path, "tool_calls"), "an array of tool calls", other)),
    };

    let mut images = Vec::new();
    let content_path = join(path, "content");
    let content = match field(msg, "content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => merge_parts(parts, &content_path, &mut images)?,
        None if !tool_calls.is_empty() || role == "assistant" => String::new(),
        None => {
            return Err(ApiError::bad_request(
                format!(
                "{content_path} is missing: a \"{role}\" message needs a string or an array of content parts"
            ),
                Some(&content_path),
            ))
        }
        other => return Err(expected(&content_path, "a string or an array of content parts", other)),
    };

    let reasoning = opt_str(msg, path, "reasoning")?;
    let reasoning_content = opt_str(msg, path, "reasoning_content")?;
    let thinking = [reasoning, reasoning_content].into_iter().flatten().find(|text| !text.is_empty());
    let tool_call_id = opt_str(msg, path, "tool_call_id")?.filter(|id| !id.is_empty());
    let name = opt_str(msg, path, "name")?.filter(|name| !name.is_empty());
    let tool_name = match (role.as_str(), name) {
        ("tool", Some(name)) => Some(name.to_string()),
        ("tool", None) => tool_call_id.and_then(|id| tool_name_for(id, earlier)),
        _ => None,
    };

    let mut native = native_message(&role, content, thinking.unwrap_or(""), images, tool_calls);
    if let Some(tool_name) = tool_name {
        native.insert("tool_name".into(), Value::String(tool_name));
    }
    if let Some(id) = tool_call_id {
        native.insert("tool_call_id".into(), id.into());
    }
    Ok(Value::Object(native))
}

/// A native message: `role` and `content`, then `thinking`, `images` and `tool_calls`
/// where there are any.
pub(super) fn native_message(
    role: &str,
    content: String,
    thinking: &str,
    images: Vec<Value>,
    tool_calls: Vec<Value>,
) -> Map<String, Value> {
    let mut native = Map::new();
    native.insert("role".into(), role.into());
    native.insert("content".into(), content.into());
    if !thinking.is_empty() {
        native.insert("thinking".into(), thinking.into());
    }
    if !images.is_empty() {
        native.insert("images".into(), Value::Array(images));
    }
    if !tool_calls.is_empty() {
        native.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    native
}

/// The function name of the latest earlier tool call with this id.
fn tool_name_for(id: &str, earlier: &[Value]) -> Option<String> {
    earlier
        .iter()
        .rev()
        .filter_map(|message| message.get("tool_calls")?.as_array())
        .flat_map(|calls| calls.iter().rev())
        .find(|call| call.get("id").and_then(Value::as_str) == Some(id))
        .and_then(|call| call.pointer("/function/name")?.as_str().map(str::to_string))
}

/// An assistant's OpenAI tool call as a native one: `arguments` parsed to an object,
/// `id` kept, `type` and `index` dropped.
fn to_native_tool_call(call: &Value, path: &str) -> Result<Value, ApiError> {
    let Some(call) = call.as_object() else {
        return Err(expected(path, "a tool call object with \"id\" and \"function\"", Some(call)));
    };
    let function_path = join(path, "function");
    let function = match field(call, "function") {
        Some(Value::Object(function)) => function,
        other => return Err(expected(&function_path, "an object with \"name\" and \"arguments\"", other)),
    };
    let name = match field(function, "name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        other => return Err(expected(&join(&function_path, "name"), "the function's name", other)),
    };
    let arguments = arguments(function, &function_path, "tool call")?;
    let mut native = Map::new();
    if let Some(id) = opt_str(call, path, "id")?.filter(|id| !id.is_empty()) {
        native.insert("id".into(), id.into());
    }
    native.insert("function".into(), json!({"name": name, "arguments": arguments}));
    Ok(Value::Object(native))
}

/// The `arguments` of a tool call (in `obj` at `path`) as the object native calls carry:
/// a JSON object encoded as a string (OpenAI's form) or sent as an object; absent or blank
/// is `{}`. Anything else is a 400 about the `kind` ("tool call", "function call").
pub(super) fn arguments(obj: &Map<String, Value>, path: &str, kind: &str) -> Result<Value, ApiError> {
    let param = join(path, "arguments");
    let bad = || {
        ApiError::bad_request(
            format!(
                "invalid {kind} arguments: {param} must be a JSON object encoded as a string, such as \"{{\\\"city\\\":\\\"Paris\\\"}}\""
            ),
            Some(&param),
        )
    };
    match field(obj, "arguments") {
        None => Ok(Value::Object(Map::new())),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(Value::Object(Map::new())),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => Ok(object),
            _ => Err(bad()),
        },
        Some(object @ Value::Object(_)) => Ok(object.clone()),
        Some(_) => Err(bad()),
    }
}

/// A native `tool` message: a result with its images, named after the call it answers
/// (looked up in the `earlier` native messages) when that call is known.
pub(super) fn tool_message(content: String, images: Vec<Value>, call_id: &str, earlier: &[Value]) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), "tool".into());
    message.insert("content".into(), content.into());
    if !images.is_empty() {
        message.insert("images".into(), Value::Array(images));
    }
    if let Some(name) = tool_name_for(call_id, earlier) {
        message.insert("tool_name".into(), name.into());
    }
    message.insert("tool_call_id".into(), call_id.into());
    Value::Object(message)
}

/// The URL of a part's `image_url` (at `param`): a string, or an object whose `url` is
/// one; else a 400 saying `image_url` must be `what`.
pub(super) fn image_url<'a>(
    part: &'a Map<String, Value>,
    param: &str,
    what: &str,
) -> Result<&'a str, ApiError> {
    match field(part, "image_url") {
        Some(Value::String(url)) => Ok(url),
        Some(Value::Object(image)) => match field(image, "url") {
            Some(Value::String(url)) => Ok(url),
            other => Err(expected(&join(param, "url"), "a data URL string", other)),
        },
        other => Err(expected(param, what, other)),
    }
}

/// Merges content parts into one text (joined with `""`), collecting images and audio
/// as base64 strings in `images`.
fn merge_parts(parts: &[Value], path: &str, images: &mut Vec<Value>) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let path = format!("{path}[{j}]");
        let what = "a content part object such as {\"type\":\"text\",\"text\":\"Hi\"}";
        let (kind, part) =
            typed(part, &path, what, "a part type: \"text\", \"image_url\" or \"input_audio\"")?;
        match kind {
            "text" => match field(part, "text") {
                Some(Value::String(part_text)) => text.push_str(part_text),
                other => return Err(expected(&join(&path, "text"), "a string", other)),
            },
            "image_url" => {
                let image_path = join(&path, "image_url");
                let what = "an object such as {\"url\":\"data:image/png;base64,...\"}";
                let url = image_url(part, &image_path, what)?;
                images.push(Value::String(image_data(url, &image_path)?));
            }
            "input_audio" => {
                let data_path = format!("{path}.input_audio.data");
                let data = match part.get("input_audio").and_then(|audio| audio.get("data")) {
                    Some(Value::String(data)) if !data.is_empty() => data,
                    Some(Value::String(_)) | Some(Value::Null) | None => {
                        return Err(ApiError::bad_request(
                            "invalid input_audio format: missing data",
                            Some(&data_path),
                        ))
                    }
                    other => return Err(expected(&data_path, "a base64 string", other)),
                };
                let data = without_line_breaks(data);
                if !is_base64(&data) {
                    return Err(ApiError::bad_request(
                        "invalid input_audio format: data must be standard base64",
                        Some(&data_path),
                    ));
                }
                images.push(Value::String(data));
            }
            other => {
                return Err(ApiError::bad_request(
                    format!("unsupported content part type \"{other}\": use \"text\", \"image_url\" or \"input_audio\""),
                    Some(&join(&path, "type")),
                ))
            }
        }
    }
    Ok(text)
}

/// The base64 payload of an image data URL (JPEG, PNG, WebP or blank MIME type).
pub(super) fn image_data(url: &str, param: &str) -> Result<String, ApiError> {
    if starts_with_ignore_case(url, "http://") || starts_with_ignore_case(url, "https://") {
        return Err(ApiError::bad_request(IMAGE_URL_UNSUPPORTED, Some(param)));
    }
    let invalid = || ApiError::bad_request(INVALID_IMAGE, Some(param));
    if !starts_with_ignore_case(url, "data:") {
        return Err(invalid());
    }
    let (mime, data) = url[5..].split_once(";base64,").ok_or_else(invalid)?;
    let mime = mime.trim().to_ascii_lowercase();
    if !matches!(mime.as_str(), "" | "image/jpeg" | "image/jpg" | "image/png" | "image/webp") {
        return Err(invalid());
    }
    let data = without_line_breaks(data);
    if !is_base64(&data) {
        return Err(invalid());
    }
    Ok(data)
}

pub(super) fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.as_bytes().get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Base64 as Go decodes it: line breaks are skipped.
pub(super) fn without_line_breaks(data: &str) -> String {
    data.chars().filter(|c| !matches!(c, '\r' | '\n')).collect()
}

/// A cheap check of padded standard base64 (alphabet, length, padding), without decoding.
pub(super) fn is_base64(data: &str) -> bool {
    let body = data.trim_end_matches('=');
    let padding = data.len() - body.len();
    !data.is_empty()
        && data.len() % 4 == 0
        && padding <= 2
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Native `options` from the sampling fields. `temperature` and `top_p` default to 1.0,
/// as Ollama does.
fn options(req: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut options = Map::new();
    let max_completion_tokens = opt_integer(req, "", "max_completion_tokens")?;
    let max_tokens = opt_integer(req, "", "max_tokens")?;
    if let Some(limit) = max_completion_tokens.or(max_tokens) {
        options.insert("num_predict".into(), limit);
    }
    options.insert("temperature".into(), opt_number(req, "temperature")?.unwrap_or(json!(1.0)));
    options.insert("top_p".into(), opt_number(req, "top_p")?.unwrap_or(json!(1.0)));
    if let Some(seed) = opt_integer(req, "", "seed")? {
        options.insert("seed".into(), seed);
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if let Some(value) = opt_number(req, key)? {
            options.insert(key.into(), value);
        }
    }
    if let Some(stop) = stop(req)? {
        options.insert("stop".into(), stop);
    }
    Ok(options)
}

/// Native `options.stop` from `stop`: a string as a one-item array, or an array's strings
/// (other items skipped; none left sends nothing).
pub(super) fn stop(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    match field(req, "stop") {
        None => Ok(None),
        Some(Value::String(stop)) => Ok(Some(json!([stop]))),
        Some(Value::Array(stops)) => {
            let stops: Vec<Value> = stops.iter().filter(|stop| stop.is_string()).cloned().collect();
            Ok((!stops.is_empty()).then_some(Value::Array(stops)))
        }
        other => Err(expected("stop", "a string or an array of strings", other)),
    }
}

/// Native `format` from `response_format`.
fn format(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let format = match field(req, "response_format") {
        None => return Ok(None),
        Some(Value::Object(format)) => format,
        other => {
            return Err(expected("response_format", "an object such as {\"type\":\"json_object\"}", other))
        }
    };
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("").trim().to_ascii_lowercase();
    Ok(match kind.as_str() {
        "json_object" => Some(Value::String("json".into())),
        "json_schema" => format
            .get("json_schema")
            .and_then(|schema| schema.get("schema"))
            .filter(|s| !s.is_null())
            .cloned(),
        _ => None,
    })
}

/// Native `think` from `reasoning.effort` (when a `reasoning` object is sent) or else
/// `reasoning_effort`.
pub(super) fn think(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let (effort, param) = match field(req, "reasoning") {
        Some(Value::Object(reasoning)) => (field(reasoning, "effort"), "reasoning.effort"),
        None => (field(req, "reasoning_effort"), "reasoning_effort"),
        other => return Err(expected("reasoning", "an object such as {\"effort\":\"low\"}", other)),
    };
    let effort = match effort {
        None => return Ok(None),
        Some(Value::String(effort)) => effort.as_str(),
        other => return Err(expected(param, "a string such as \"low\"", other)),
    };
    Ok(match effort {
        "" => None,
        "none" => Some(Value::Bool(false)),
        "minimal" => Some("low".into()),
        "low" | "medium" | "high" | "max" => Some(effort.into()),
        "xhigh" | "ultra" => Some("max".into()),
        _ => {
            return Err(ApiError::bad_request(
                format!(
                    "invalid reasoning value: {effort:?} (must be \"minimal\", \"low\", \"medium\", \"high\", \"xhigh\", \"ultra\", \"max\", or \"none\")"
                ),
                Some(param),
            ))
        }
    })
}

// ---------------------------------------------------------------------------------------
// Reply: native -> OpenAI
// ---------------------------------------------------------------------------------------

/// Non-streaming: an upstream `/api/chat` reply (`stream:false`) as a `chat.completion`:
/// a view of `native` that serialises straight into the answer's bytes.
pub fn from_ollama<'a>(native: &'a Value, ctx: &'a ReplyContext) -> Completion<'a> {
    let tool_calls: Vec<Value> = native_tool_calls(native)
        .iter()
        .enumerate()
        .map(|(index, call)| openai_tool_call(call, index))
        .collect();
    let finish_reason = finish_reason(native, !tool_calls.is_empty());
    Completion { native, ctx, tool_calls, finish_reason }
}

/// A `chat.completion` object, as [`from_ollama`] makes it. It is written out field by
/// field rather than built as a tree first: on a small answer the tree was a sixth of
/// the gateway's instructions and forty of its allocations.
pub struct Completion<'a> {
    native: &'a Value,
    ctx: &'a ReplyContext,
    tool_calls: Vec<Value>,
    finish_reason: String,
}

impl Serialize for Completion<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (native, ctx) = (self.native, self.ctx);
        let mut reply = serializer.serialize_map(Some(7))?;
        reply.serialize_entry("id", &ctx.id)?;
        reply.serialize_entry("object", "chat.completion")?;
        reply.serialize_entry("created", &ctx.created(native))?;
        reply.serialize_entry("model", ctx.model_of(native))?;
        reply.serialize_entry("system_fingerprint", FINGERPRINT)?;
        reply.serialize_entry("choices", &[Choice(self)])?;
        reply.serialize_entry("usage", &UsageView(native))?;
        reply.end()
    }
}

/// The one choice of a [`Completion`]: `index`, `message`, `finish_reason`, `logprobs`.
struct Choice<'c, 'a>(&'c Completion<'a>);

impl Serialize for Choice<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let completion = self.0;
        let logprobs = logprobs(completion.native);
        let mut choice = serializer.serialize_map(Some(3 + usize::from(logprobs.is_some())))?;
        choice.serialize_entry("index", &0)?;
        choice.serialize_entry("message", &ReplyMessage(completion))?;
        choice.serialize_entry("finish_reason", &completion.finish_reason)?;
        if let Some(logprobs) = logprobs {
            choice.serialize_entry("logprobs", &json!({"content": logprobs}))?;
        }
        choice.end()
    }
}

/// The `message` of a [`Completion`]: role, content, thinking under the configured
/// field name(s), tool calls.
struct ReplyMessage<'c, 'a>(&'c Completion<'a>);

impl Serialize for ReplyMessage<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Completion { native, ctx, tool_calls, .. } = self.0;
        let text = |key: &str| message_text(native, key);
        let role = match text("role") {
            "" => "assistant",
            role => role,
        };
        let mut message = serializer.serialize_map(None)?;
        message.serialize_entry("role", role)?;
        message.serialize_entry("content", text("content"))?;
        if !text("thinking").is_empty() {
            for name in ctx.reasoning_field.names() {
                message.serialize_entry(name, text("thinking"))?;
            }
        }
        if !tool_calls.is_empty() {
            message.serialize_entry("tool_calls", tool_calls)?;
        }
        message.end()
    }
}

/// `done_reason`, `"stop"` when missing, relabelled `"tool_calls"` when a call was made.
fn finish_reason(native: &Value, made_tool_calls: bool) -> String {
    match native.get("done_reason").and_then(Value::as_str).filter(|reason| !reason.is_empty()) {
        None | Some("stop") if made_tool_calls => "tool_calls".into(),
        None => "stop".into(),
        Some(reason) => reason.into(),
    }
}

/// The native `logprobs` of an object, when it has some.
fn logprobs(native: &Value) -> Option<&Value> {
    native.get("logprobs").filter(|lp| lp.as_array().is_some_and(|list| !list.is_empty()))
}

/// A native tool call as an OpenAI one, with a synthesized id when upstream has none.
pub(super) fn openai_tool_call(call: &Value, index: usize) -> Value {
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => call_id(),
    };
    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
    let arguments = match call.pointer("/function/arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(arguments) => arguments.to_string(),
    };
    json!({
        "id": id,
        "index": index,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    })
}

/// A tool-call id as current Ollama mints them: `call_` and 8 of `[a-z0-9]`.
fn call_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut id = String::from("call_");
    id.extend((0..8).map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())])));
    id
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

/// Streaming translator: native `/api/chat` NDJSON lines in, `chat.completion.chunk`
/// SSE events out (spec §4), with an error event when upstream fails mid-stream.
#[derive(Debug)]
pub struct ChatStream {
    head: StreamHead,
    /// Whether the `role` delta has gone out.
    role_sent: bool,
    /// The index of the next tool call; above 0 once a call has been emitted.
    next_tool_index: usize,
    ending: Ending,
}

impl ChatStream {
    /// A translator for one reply.
    pub fn new(ctx: ReplyContext) -> ChatStream {
        ChatStream {
            head: StreamHead::new(ctx, "chat.completion.chunk"),
            role_sent: false,
            next_tool_index: 0,
            ending: Ending::default(),
        }
    }

    /// Writes one content chunk; the first one of the stream also carries the role.
    fn emit_delta(&mut self, mut delta: Map<String, Value>, logprobs: Option<&Value>, out: &mut Vec<u8>) {
        if !self.role_sent {
            delta.insert("role".into(), "assistant".into());
            self.role_sent = true;
        }
        let mut choice = json!({"index": 0, "delta": delta, "finish_reason": null});
        if let Some(logprobs) = logprobs {
            choice["logprobs"] = json!({"content": logprobs});
        }
        self.head.write(json!([choice]), out);
    }
}

impl Events for ChatStream {
    ending_field!();

    fn object(&mut self, line: &Value, done: bool, out: &mut Vec<u8>) {
        self.head.follow(line);
        let text = |key: &str| message_text(line, key);
        let (content, thinking) = (text("content"), text("thinking"));
        let tool_calls: Vec<Value> = native_tool_calls(line)
            .iter()
            .map(|call| {
                let call = openai_tool_call(call, self.next_tool_index);
                self.next_tool_index += 1;
                call
            })
            .collect();
        let logprobs = logprobs(line);
        let has_answer = !content.is_empty() || !tool_calls.is_empty();

        // Thinking goes out first, in its own event when the line also has an answer.
        if !thinking.is_empty() {
            let mut delta = Map::new();
            if !has_answer {
                delta.insert("content".into(), "".into());
            }
            self.head.ctx.put_reasoning(&mut delta, thinking);
            self.emit_delta(delta, logprobs, out);
        }
        if has_answer || (thinking.is_empty() && logprobs.is_some()) {
            let mut delta = Map::new();
            delta.insert("content".into(), content.into());
            if !tool_calls.is_empty() {
                delta.insert("tool_calls".into(), Value::Array(tool_calls));
            }
            let logprobs = if thinking.is_empty() { logprobs } else { None };
            self.emit_delta(delta, logprobs, out);
        }

        if !done {
            return;
        }
        if !self.role_sent {
            // A wholly empty completion still opens with a role chunk.
            let mut delta = Map::new();
            delta.insert("content".into(), "".into());
            self.emit_delta(delta, None, out);
        }
        let reason = finish_reason(line, self.next_tool_index > 0);
        self.head.write(json!([{"index": 0, "delta": {}, "finish_reason": reason}]), out);
        self.head.finish(line, out);
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        error_event(message, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::{self, eq_json, openai_error};
    use crate::translate::ReasoningField;
    use crate::translate::{Flow, LineTranslator, Usage};

    // -- helpers --------------------------------------------------------------------

    /// The reply [`super::from_ollama`] writes, as JSON.
    fn from_ollama(native: &Value, ctx: &ReplyContext) -> Value {
        serde_json::to_value(super::from_ollama(native, ctx)).unwrap()
    }

    /// A request with one user message of the given content.
    fn user_says(content: Value) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": content}]})
    }

    fn native_of(body: Value) -> Value {
        testkit::translated(to_ollama, &body).native
    }

    fn rejected(body: Value) -> ApiError {
        testkit::refused(to_ollama, &body)
    }

    /// Replaces each tool call's `arguments` string by its parsed JSON.
    fn parse_arguments(value: &mut Value) {
        match value {
            Value::Object(obj) => {
                if let Some(Value::String(args)) = obj.get("arguments") {
                    let parsed = serde_json::from_str(args).unwrap();
                    obj.insert("arguments".into(), parsed);
                }
                obj.values_mut().for_each(parse_arguments);
            }
            Value::Array(list) => list.iter_mut().for_each(parse_arguments),
            _ => {}
        }
    }

    /// Splits SSE output into payloads: parsed JSON (tool call arguments too), or the
    /// string `[DONE]`. Checks the framing and that no chunk has a stray field.
    fn events(out: &[u8]) -> Vec<Value> {
        let mut events = testkit::openai_events::<strict::Chunk>(out);
        events.iter_mut().for_each(parse_arguments);
        events
    }

    /// Runs lines through a fresh stream; returns the events, the last flow and the stream.
    fn run(ctx: ReplyContext, lines: &[&str]) -> (Vec<Value>, Flow, ChatStream) {
        let (out, flow, stream) = testkit::run_lines(ChatStream::new(ctx), lines);
        (events(&out), flow, stream)
    }

    /// The reply context of the tests.
    fn ctx() -> ReplyContext {
        testkit::reply_context("chatcmpl-7")
    }

    /// The `choices[0].delta` of each content chunk.
    fn deltas(events: &[Value]) -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["choices"][0]["finish_reason"].is_null() && e["choices"][0].is_object())
            .map(|e| e["choices"][0]["delta"].clone())
            .collect()
    }

    /// Mirror types of what clients decode, with no room for stray fields.
    mod strict {
        #![allow(dead_code)] // Fields exist to be checked by serde, not read.
        use serde::Deserialize;
        use serde_json::Value;

        pub type Chunk = crate::translate::testkit::strict::Chunk<Choice>;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Choice {
            index: u32,
            delta: Delta,
            finish_reason: Option<String>,
            logprobs: Option<Value>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Delta {
            role: Option<String>,
            content: Option<String>,
            reasoning: Option<String>,
            reasoning_content: Option<String>,
            tool_calls: Option<Vec<ToolCall>>,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ToolCall {
            id: String,
            index: u32,
            r#type: String,
            function: Function,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Function {
            name: String,
            arguments: String,
        }
    }

    // -- request --------------------------------------------------------------------

    #[test]
    fn spec_1_6_full_example() {
        let body = json!({"model":"llama3.2","stream":true,"max_tokens":999,"seed":123,"stop":["\n","stop"],
         "temperature":3.0,"frequency_penalty":4.0,"presence_penalty":5.0,"top_p":6.0,
         "response_format":{"type":"json_object"},
         "messages":[
          {"role":"system","content":"Be terse."},
          {"role":"user","content":"What's the weather in Paris?"},
          {"role":"assistant","content":null,"reasoning":"Need the tool.",
           "tool_calls":[{"id":"id_abc","type":"function","function":{"name":"get_current_weather","arguments":"{\"location\":\"Paris, France\",\"format\":\"celsius\"}"}}]},
          {"role":"tool","tool_call_id":"id_abc","content":"20 degrees Celsius"}]});
        let req = to_ollama(&body).unwrap();
        assert_eq!((req.model.as_str(), req.stream, req.include_usage), ("llama3.2", true, false));
        eq_json(
            &req.native,
            &json!({"model":"llama3.2","stream":true,"format":"json",
             "options":{"num_predict":999,"seed":123,"stop":["\n","stop"],"temperature":3.0,
                        "frequency_penalty":4.0,"presence_penalty":5.0,"top_p":6.0},
             "messages":[
              {"role":"system","content":"Be terse."},
              {"role":"user","content":"What's the weather in Paris?"},
              {"role":"assistant","content":"","thinking":"Need the tool.",
               "tool_calls":[{"id":"id_abc","function":{"name":"get_current_weather","arguments":{"location":"Paris, France","format":"celsius"}}}]},
              {"role":"tool","content":"20 degrees Celsius","tool_name":"get_current_weather","tool_call_id":"id_abc"}]}),
        );
    }

    #[test]
    fn defaults_and_passthrough_fields() {
        let req = to_ollama(&json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": true}, "keep_alive": "10m", "logprobs": true, "top_logprobs": 3,
            "tools": [{"type": "function", "function": {"name": "f", "strict": true, "parameters": {"additionalProperties": false}}}],
            "tool_choice": "auto", "n": 1, "user": "u", "some_future_field": {"x": 1},
        }))
        .unwrap();
        assert!(!req.stream && req.include_usage);
        eq_json(
            &req.native,
            &json!({"model": "m", "stream": false, "messages": [{"role": "user", "content": "hi"}],
                "options": {"temperature": 1.0, "top_p": 1.0}, "keep_alive": "10m", "logprobs": true, "top_logprobs": 3,
                "tools": [{"type": "function", "function": {"name": "f", "strict": true, "parameters": {"additionalProperties": false}}}]}),
        );
        // logprobs:false sends nothing; explicit nulls count as absent.
        let native = native_of(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "logprobs": false, "temperature": null, "stop": null, "tools": null, "stream": null}));
        assert_eq!(native.get("logprobs"), None);
        assert_eq!(native.get("tools"), None);
        assert_eq!(native["stream"], json!(false));
        eq_json(&native["options"], &json!({"temperature": 1.0, "top_p": 1.0}));
    }

    #[test]
    fn content_array_becomes_one_message_with_images() {
        let native = native_of(user_says(json!([
            {"type": "text", "text": "What is in "},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "these pictures?"},
            {"type": "image_url", "image_url": "data:image/jpeg;base64,/9j/4AAQ"},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ])));
        eq_json(
            &native["messages"],
            &json!([{"role": "user", "content": "What is in these pictures?",
                     "images": ["iVBORw0KGgo=", "/9j/4AAQ", "UklGRg=="]}]),
        );
    }

    #[test]
    fn image_url_rules() {
        let ok = [
            ("data:image/jpeg;base64,/9j/4AAQ", "/9j/4AAQ"),
            ("data:image/jpg;base64,/9j/4AAQ", "/9j/4AAQ"),
            ("data:image/png;base64,iVBORw0KGgo=", "iVBORw0KGgo="),
            ("data:image/webp;base64,UklGRg==", "UklGRg=="),
            ("data:;base64,AAAA", "AAAA"),
            ("data:image/png;base64,iVBO\r\nRw0KGgo=", "iVBORw0KGgo="),
        ];
        for (url, want) in ok {
            let native = native_of(user_says(json!([{"type": "image_url", "image_url": {"url": url}}])));
            assert_eq!(native["messages"][0]["images"], json!([want]), "{url}");
        }
        let rejected_urls = [
            ("http://example.com/cat.png", IMAGE_URL_UNSUPPORTED),
            ("https://example.com/cat.png", IMAGE_URL_UNSUPPORTED),
            ("HTTPS://example.com/cat.png", IMAGE_URL_UNSUPPORTED),
            ("data:image/gif;base64,R0lGODlh", INVALID_IMAGE),
            ("data:image/png;base64,not base64!", INVALID_IMAGE),
            ("data:image/png;base64,abc", INVALID_IMAGE),
            ("data:image/png;base64,", INVALID_IMAGE),
            ("data:image/png,iVBORw0KGgo=", INVALID_IMAGE),
            ("file:///etc/passwd", INVALID_IMAGE),
            ("iVBORw0KGgo=", INVALID_IMAGE),
        ];
        for (url, message) in rejected_urls {
            let err = rejected(json!({"model": "m", "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]},
            ]}));
            assert_eq!((err.status, err.message.as_str()), (400, message), "{url}");
            assert_eq!(err.param.as_deref(), Some("messages[1].content[1].image_url"), "{url}");
        }
        assert!(INVALID_IMAGE.starts_with("invalid image input"));
    }

    #[test]
    fn developer_becomes_system_and_roles_are_lowercased() {
        let native = native_of(json!({"model": "m", "messages": [
            {"role": "developer", "content": "Be terse."},
            {"role": "User", "content": "hi", "name": "bob"},
            {"role": "ASSISTANT", "content": null},
        ]}));
        eq_json(
            &native["messages"],
            &json!([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": ""}]),
        );
    }

    #[test]
    fn reasoning_and_reasoning_content_become_thinking() {
        let native = native_of(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "a", "reasoning_content": "deepseek style"},
            {"role": "assistant", "content": "b", "reasoning": "ollama style"},
            {"role": "assistant", "content": "c", "reasoning": ""},
        ]}));
        let thinking: Vec<&Value> =
            native["messages"].as_array().unwrap().iter().map(|m| &m["thinking"]).collect();
        assert_eq!(thinking, [&Value::Null, &json!("deepseek style"), &json!("ollama style"), &Value::Null]);
    }

    #[test]
    fn tool_calls_in_history() {
        let native = native_of(json!({"model": "m", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "type": "function", "index": 0, "function": {"name": "as_object", "arguments": {"x": 1}}},
                {"id": "", "type": "function", "function": {"name": "empty_string", "arguments": ""}},
                {"type": "function", "function": {"name": "no_arguments"}},
            ]},
        ]}));
        eq_json(
            &native["messages"][1]["tool_calls"],
            &json!([{"id": "a", "function": {"name": "as_object", "arguments": {"x": 1}}},
                    {"function": {"name": "empty_string", "arguments": {}}},
                    {"function": {"name": "no_arguments", "arguments": {}}}]),
        );
        for arguments in [json!("{not json"), json!("[1,2]"), json!(7)] {
            let err = rejected(json!({"model": "m", "messages": [{"role": "assistant", "content": null,
                "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}},
                               {"id": "b", "function": {"name": "f", "arguments": arguments}}]}]}));
            assert!(err.message.starts_with("invalid tool call arguments"), "{}", err.message);
            assert_eq!(err.param.as_deref(), Some("messages[0].tool_calls[1].function.arguments"));
        }
    }

    #[test]
    fn tool_name_lookup() {
        let call = |id: &str, name: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": "{}"}});
        let native = native_of(json!({"model": "m", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [call("c1", "old_name"), call("c2", "weather")]},
            {"role": "assistant", "content": null, "tool_calls": [call("c1", "new_name")]},
            {"role": "tool", "tool_call_id": "c1", "content": "r1"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "20"}, {"type": "text", "text": " C"}]},
            {"role": "tool", "tool_call_id": "c2", "name": "explicit", "content": "r3"},
            {"role": "tool", "tool_call_id": "unknown", "content": "r4"},
        ]}));
        let tools: Vec<Value> = native["messages"].as_array().unwrap()[3..].to_vec();
        eq_json(
            &Value::Array(tools),
            &json!([
                {"role": "tool", "content": "r1", "tool_name": "new_name", "tool_call_id": "c1"},
                {"role": "tool", "content": "20 C", "tool_name": "weather", "tool_call_id": "c2"},
                {"role": "tool", "content": "r3", "tool_name": "explicit", "tool_call_id": "c2"},
                {"role": "tool", "content": "r4", "tool_call_id": "unknown"},
            ]),
        );
    }

    #[test]
    fn max_completion_tokens_is_preferred_over_max_tokens() {
        let cases = [
            (json!({"max_tokens": 10}), Some(10)),
            (json!({"max_completion_tokens": 20}), Some(20)),
            (json!({"max_tokens": 10, "max_completion_tokens": 20}), Some(20)),
            (json!({"max_tokens": 10, "max_completion_tokens": null}), Some(10)),
            (json!({}), None),
        ];
        for (fields, want) in cases {
            let mut body = user_says(json!("hi"));
            body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            assert_eq!(
                native_of(body)["options"].get("num_predict").and_then(Value::as_i64),
                want,
                "{fields}"
            );
        }
    }

    #[test]
    fn stop_forms() {
        let cases = [
            (json!("END"), Some(json!(["END"]))),
            (json!(["a", 1, null, "b"]), Some(json!(["a", "b"]))),
            (json!([1, 2]), None),
            (json!([]), None),
        ];
        for (stop, want) in cases {
            let mut body = user_says(json!("hi"));
            body["stop"] = stop.clone();
            assert_eq!(native_of(body)["options"].get("stop").cloned(), want, "{stop}");
        }
    }

    #[test]
    fn response_format_table() {
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}}});
        let cases = [
            (json!({"type": "json_object"}), Some(json!("json"))),
            (json!({"type": " JSON_Object "}), Some(json!("json"))),
            (
                json!({"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": schema}}),
                Some(schema.clone()),
            ),
            (json!({"type": "json_schema"}), None),
            (json!({"type": "text"}), None),
            (json!({"type": "something_new"}), None),
        ];
        for (format, want) in cases {
            let mut body = user_says(json!("hi"));
            body["response_format"] = format.clone();
            assert_eq!(native_of(body).get("format").cloned(), want, "{format}");
        }
    }

    #[test]
    fn reasoning_effort_table() {
        let cases = [
            ("", None),
            ("none", Some(json!(false))),
            ("minimal", Some(json!("low"))),
            ("low", Some(json!("low"))),
            ("medium", Some(json!("medium"))),
            ("high", Some(json!("high"))),
            ("max", Some(json!("max"))),
            ("xhigh", Some(json!("max"))),
            ("ultra", Some(json!("max"))),
        ];
        for (effort, want) in cases {
            let mut body = user_says(json!("hi"));
            body["reasoning_effort"] = json!(effort);
            assert_eq!(native_of(body.clone()).get("think").cloned(), want, "reasoning_effort {effort:?}");
            // `reasoning.effort` wins over `reasoning_effort` when a reasoning object is sent.
            body["reasoning_effort"] = json!("high");
            body["reasoning"] = json!({"effort": effort});
            assert_eq!(native_of(body).get("think").cloned(), want, "reasoning.effort {effort:?}");
        }
        assert_eq!(native_of(user_says(json!("hi"))).get("think"), None);

        let mut body = user_says(json!("hi"));
        body["reasoning_effort"] = json!("extreme");
        let err = rejected(body.clone());
        assert_eq!(err.status, 400);
        assert_eq!(err.param.as_deref(), Some("reasoning_effort"));
        assert_eq!(
            err.message,
            r#"invalid reasoning value: "extreme" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")"#
        );
        body["reasoning"] = json!({"effort": "Huge"});
        assert_eq!(rejected(body).param.as_deref(), Some("reasoning.effort"));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let hi = json!([{"role": "user", "content": "hi"}]);
        let with = |key: &str, value: Value| {
            let mut body = json!({"model": "m", "messages": hi});
            body[key] = value;
            body
        };
        let messages = |list: Value| json!({"model": "m", "messages": list});
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!([1]), None, "must be a JSON object"),
            (json!({"messages": hi}), Some("model"), "model must be the name of a model"),
            (with("model", json!("")), Some("model"), "got an empty string"),
            (with("model", json!(3)), Some("model"), "got a number"),
            (json!({"model": "m"}), Some("messages"), "non-empty array"),
            (messages(json!([])), Some("messages"), "got an empty array"),
            (messages(json!("hi")), Some("messages"), "got a string"),
            (messages(json!([{"role": "user", "content": "a"}, "b"])), Some("messages[1]"), "message object"),
            (messages(json!([{"content": "a"}])), Some("messages[0].role"), "a role"),
            (messages(json!([{"role": "user"}])), Some("messages[0].content"), "is missing"),
            (
                messages(json!([{"role": "system", "content": null}])),
                Some("messages[0].content"),
                "is missing",
            ),
            (
                messages(json!([{"role": "user", "content": 5}])),
                Some("messages[0].content"),
                "a string or an array",
            ),
            (
                messages(json!([{"role": "user", "content": ["x"]}])),
                Some("messages[0].content[0]"),
                "content part",
            ),
            (
                messages(json!([{"role": "user", "content": [{"type": "text", "text": 1}]}])),
                Some("messages[0].content[0].text"),
                "a string",
            ),
            (
                messages(json!([{"role": "user", "content": [{"type": "video", "url": "x"}]}])),
                Some("messages[0].content[0].type"),
                "unsupported content part type \"video\"",
            ),
            (
                messages(json!([{"role": "user", "content": [{"text": "x"}]}])),
                Some("messages[0].content[0].type"),
                "part type",
            ),
            (
                messages(json!([{"role": "user", "content": [{"type": "image_url"}]}])),
                Some("messages[0].content[0].image_url"),
                "got nothing",
            ),
            (
                messages(json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])),
                Some("messages[0].content[0].input_audio.data"),
                "invalid input_audio format: missing data",
            ),
            (
                messages(
                    json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}]),
                ),
                Some("messages[0].content[0].input_audio.data"),
                "base64",
            ),
            (
                messages(json!([{"role": "assistant", "content": "", "tool_calls": {}}])),
                Some("messages[0].tool_calls"),
                "an array",
            ),
            (
                messages(json!([{"role": "assistant", "tool_calls": [{"id": "a"}]}])),
                Some("messages[0].tool_calls[0].function"),
                "object",
            ),
            (
                messages(json!([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])),
                Some("messages[0].tool_calls[0].function.name"),
                "name",
            ),
            (
                messages(json!([{"role": "tool", "content": "r", "tool_call_id": 5}])),
                Some("messages[0].tool_call_id"),
                "a string",
            ),
            (
                messages(json!([{"role": "assistant", "content": "a", "reasoning": {"x": 1}}])),
                Some("messages[0].reasoning"),
                "a string",
            ),
            (with("stream", json!("yes")), Some("stream"), "true or false"),
            (
                with("stream_options", json!({"include_usage": 1})),
                Some("stream_options.include_usage"),
                "true or false",
            ),
            (with("stream_options", json!(true)), Some("stream_options"), "an object"),
            (with("max_tokens", json!(1.5)), Some("max_tokens"), "an integer"),
            (with("max_completion_tokens", json!("100")), Some("max_completion_tokens"), "an integer"),
            (with("temperature", json!("hot")), Some("temperature"), "a number"),
            (with("top_p", json!(true)), Some("top_p"), "a number"),
            (with("seed", json!("1")), Some("seed"), "an integer"),
            (with("frequency_penalty", json!([])), Some("frequency_penalty"), "a number"),
            (with("presence_penalty", json!({})), Some("presence_penalty"), "a number"),
            (with("stop", json!(5)), Some("stop"), "a string or an array of strings"),
            (with("response_format", json!("json")), Some("response_format"), "an object"),
            (with("tools", json!({"type": "function"})), Some("tools"), "an array"),
            (with("reasoning_effort", json!(2)), Some("reasoning_effort"), "a string"),
            (with("reasoning", json!("high")), Some("reasoning"), "an object"),
            (with("logprobs", json!("yes")), Some("logprobs"), "true or false"),
            (with("top_logprobs", json!(2.5)), Some("top_logprobs"), "an integer"),
        ];
        testkit::assert_refusals(cases, rejected);
    }

    // -- non-streaming reply -------------------------------------------------------------

    #[test]
    fn non_stream_plain() {
        let native = json!({"model":"llama3.2","created_at":"2023-11-14T22:13:20.123Z",
            "message":{"role":"assistant","content":"Hello! How are you today?"},
            "done":true,"done_reason":"stop","total_duration":5191566416_u64,"load_duration":2154458,
            "prompt_eval_count":26,"prompt_eval_duration":383809000,"eval_count":298,"eval_duration":4799921000_u64});
        eq_json(
            &from_ollama(&native, &ctx()),
            &json!({"id":"chatcmpl-7","object":"chat.completion","created":1700000000,"model":"llama3.2",
                "system_fingerprint":"fp_ollama",
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How are you today?"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":26,"completion_tokens":298,"total_tokens":324}}),
        );
        assert_eq!(usage_of(&native), Usage { prompt: 26, completion: 298 });
    }

    #[test]
    fn non_stream_thinking_goes_under_the_configured_field() {
        let native = json!({"model": "qwen3", "message": {"role": "assistant", "content": "Hi", "thinking": "greet"}, "done": true});
        let cases = [
            (
                ReasoningField::ReasoningContent,
                json!({"role": "assistant", "content": "Hi", "reasoning_content": "greet"}),
            ),
            (ReasoningField::Reasoning, json!({"role": "assistant", "content": "Hi", "reasoning": "greet"})),
            (
                ReasoningField::Both,
                json!({"role": "assistant", "content": "Hi", "reasoning": "greet", "reasoning_content": "greet"}),
            ),
        ];
        for (reasoning_field, want) in cases {
            let reply = from_ollama(&native, &ReplyContext { reasoning_field, ..ctx() });
            eq_json(&reply["choices"][0]["message"], &want);
        }
        // Empty thinking is omitted; a missing created_at uses the fallback.
        let reply = from_ollama(&json!({"model": "m", "message": {"content": "x", "thinking": ""}}), &ctx());
        eq_json(&reply["choices"][0]["message"], &json!({"role": "assistant", "content": "x"}));
        assert_eq!(reply["created"], json!(42));
    }

    #[test]
    fn non_stream_tool_calls() {
        let native = json!({"model": "llama3.2", "created_at": "2023-11-14T22:13:20Z", "done": true, "done_reason": "stop",
        "message": {"role": "assistant", "content": "", "thinking": "Need weather.", "tool_calls": [
            {"id": "call_k3b9x2q1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}},
            {"function": {"name": "get_time", "arguments": {"tz": "JST"}}},
            {"id": "", "function": {"index": 0, "name": "noop", "arguments": {}}},
        ]}});
        let mut reply = from_ollama(&native, &ctx());
        let calls = reply["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        for call in &calls[1..] {
            let id = call["id"].as_str().unwrap();
            assert!(id.len() == 13 && id.starts_with("call_"), "{id}");
            assert!(id[5..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{id}");
        }
        assert_ne!(calls[1]["id"], calls[2]["id"]);
        parse_arguments(&mut reply);
        reply["choices"][0]["message"]["tool_calls"][1]["id"] = json!("synth1");
        reply["choices"][0]["message"]["tool_calls"][2]["id"] = json!("synth2");
        eq_json(
            &reply["choices"][0],
            &json!({"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "", "reasoning": "Need weather.", "tool_calls": [
              {"id": "call_k3b9x2q1", "index": 0, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
              {"id": "synth1", "index": 1, "type": "function", "function": {"name": "get_time", "arguments": {"tz": "JST"}}},
              {"id": "synth2", "index": 2, "type": "function", "function": {"name": "noop", "arguments": {}}},
            ]}}),
        );
    }

    #[test]
    fn non_stream_finish_reasons() {
        let call = json!([{"id": "c", "function": {"name": "f", "arguments": {}}}]);
        let cases = [
            (json!("length"), json!(null), "length"),
            (json!("length"), call.clone(), "length"),
            (json!("unload"), json!(null), "unload"),
            (json!(null), json!(null), "stop"),
            (json!(""), json!(null), "stop"),
            (json!(null), call.clone(), "tool_calls"),
            (json!("stop"), call, "tool_calls"),
        ];
        for (done_reason, tool_calls, want) in cases {
            let native = json!({"model": "m", "done": true, "done_reason": done_reason,
                "message": {"role": "assistant", "content": "x", "tool_calls": tool_calls}});
            assert_eq!(from_ollama(&native, &ctx())["choices"][0]["finish_reason"], json!(want), "{native}");
        }
    }

    #[test]
    fn non_stream_usage_model_and_logprobs() {
        let native = json!({"model": "gpt-oss:120b", "done": true, "message": {"role": "assistant", "content": "x"},
            "prompt_eval_count": 100, "prompt_eval_cached_count": 64, "eval_count": 5,
            "logprobs": [{"token": "x", "logprob": -0.1}]});
        let reply = from_ollama(&native, &ReplyContext { response_model: Some("big".into()), ..ctx() });
        eq_json(
            &reply["usage"],
            &json!({"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                    "prompt_tokens_details": {"cached_tokens": 64}}),
        );
        assert_eq!(reply["model"], json!("big"));
        eq_json(&reply["choices"][0]["logprobs"], &json!({"content": [{"token": "x", "logprob": -0.1}]}));
        // Counts absent upstream (omitempty) are zeros.
        let reply = from_ollama(&json!({"model": "m", "message": {"content": ""}}), &ctx());
        eq_json(&reply["usage"], &json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}));
        assert_eq!(reply["choices"][0].get("logprobs"), None);
    }

    // -- streaming --------------------------------------------------------------------

    const WORKED_EXAMPLE: [&str; 4] = [
        r#"{"model":"qwen3:8b","created_at":"2023-11-14T22:13:20Z","message":{"role":"assistant","content":"","thinking":"The user"},"done":false}"#,
        r#"{"model":"qwen3:8b","created_at":"2023-11-14T22:13:21Z","message":{"role":"assistant","content":"Hi","thinking":" greets."},"done":false}"#,
        r#"{"model":"qwen3:8b","created_at":"2023-11-14T22:13:22Z","message":{"role":"assistant","content":"!"},"done":false}"#,
        r#"{"model":"qwen3:8b","created_at":"2023-11-14T22:13:23Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":900000000,"load_duration":1000000,"prompt_eval_count":12,"prompt_eval_duration":20000000,"eval_count":30,"eval_duration":800000000}"#,
    ];

    /// A chunk of the stream with id `chatcmpl-7`, pinned `created` and the given model.
    fn chunk(model: &str, choices: Value) -> Value {
        json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
               "system_fingerprint": "fp_ollama", "choices": choices})
    }

    fn content_chunk(model: &str, delta: Value) -> Value {
        chunk(model, json!([{"index": 0, "delta": delta, "finish_reason": null}]))
    }

    #[test]
    fn stream_spec_4_5_worked_example() {
        let (events, flow, stream) = run(ReplyContext { include_usage: true, ..ctx() }, &WORKED_EXAMPLE);
        let m = "qwen3:8b";
        let mut usage = chunk(m, json!([]));
        usage["usage"] = json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42});
        eq_json(
            &Value::Array(events),
            &json!([
                content_chunk(m, json!({"role": "assistant", "content": "", "reasoning": "The user"})),
                content_chunk(m, json!({"reasoning": " greets."})),
                content_chunk(m, json!({"content": "Hi"})),
                content_chunk(m, json!({"content": "!"})),
                chunk(m, json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
                usage,
                "[DONE]",
            ]),
        );
        assert_eq!(flow, Flow::Done);
        assert_eq!(stream.usage(), Some(Usage { prompt: 12, completion: 30 }));
    }

    #[test]
    fn stream_tool_call_example() {
        let (events, flow, _) = run(
            ctx(),
            &[
                r#"{"model":"llama3.2","created_at":"2023-11-14T22:13:20Z","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_k3b9x2q1","function":{"index":0,"name":"get_weather","arguments":{"city":"Tokyo"}}}]},"done":false}"#,
                r#"{"model":"llama3.2","created_at":"2023-11-14T22:13:21Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":169,"eval_count":15}"#,
            ],
        );
        let m = "llama3.2";
        eq_json(
            &Value::Array(events),
            &json!([
                content_chunk(
                    m,
                    json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call_k3b9x2q1", "index": 0,
                    "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]})
                ),
                chunk(m, json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
                "[DONE]",
            ]),
        );
        assert_eq!(flow, Flow::Done);
    }

    #[test]
    fn stream_tool_call_indices_count_up_and_ids_are_synthesized() {
        let (events, _, _) = run(
            ctx(),
            &[
                r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"index":0,"name":"a","arguments":{}}},{"id":"","function":{"index":1,"name":"b","arguments":{"n":1}}}]},"done":false}"#,
                r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_given1","function":{"index":0,"name":"c","arguments":{}}}]},"done":false}"#,
                r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"length"}"#,
            ],
        );
        let calls: Vec<Value> = deltas(&events)
            .iter()
            .flat_map(|d| d["tool_calls"].as_array().cloned().unwrap_or_default())
            .collect();
        let indices: Vec<&Value> = calls.iter().map(|c| &c["index"]).collect();
        assert_eq!(indices, [&json!(0), &json!(1), &json!(2)]);
        let names: Vec<&Value> = calls.iter().map(|c| &c["function"]["name"]).collect();
        assert_eq!(names, [&json!("a"), &json!("b"), &json!("c")]);
        let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert!(ids[0].starts_with("call_") && ids[0].len() == 13 && ids[0] != ids[1], "{ids:?}");
        assert_eq!(ids[2], "call_given1");
        // `length` is never relabelled, even after tool calls.
        assert_eq!(events[events.len() - 2]["choices"][0]["finish_reason"], json!("length"));
    }

    #[test]
    fn stream_tool_calls_on_the_done_line() {
        let (events, _, stream) = run(
            ctx(),
            &[
                r#"{"model":"m","message":{"role":"assistant","content":"","thinking":"call it"},"done":false}"#,
                r#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_x","function":{"name":"f","arguments":{"q":"z"}}}]},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}"#,
            ],
        );
        assert_eq!(events.len(), 4, "{events:?}");
        eq_json(
            &events[1]["choices"][0]["delta"],
            &json!({"content": "", "tool_calls": [{"id": "call_x", "index": 0, "type": "function",
                    "function": {"name": "f", "arguments": {"q": "z"}}}]}),
        );
        assert_eq!(events[2]["choices"][0]["finish_reason"], json!("tool_calls"));
        assert_eq!(events[3], json!("[DONE]"));
        assert_eq!(stream.usage(), Some(Usage { prompt: 3, completion: 4 }));
    }

    #[test]
    fn stream_first_line_done_and_empty_still_opens_with_role() {
        let (events, flow, _) = run(
            ReplyContext { include_usage: true, ..ctx() },
            &[
                r#"{"model":"m","created_at":"2023-11-14T22:13:20Z","message":{"role":"assistant","content":""},"done":true}"#,
            ],
        );
        let mut usage = chunk("m", json!([]));
        usage["usage"] = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
        eq_json(
            &Value::Array(events),
            &json!([
                content_chunk("m", json!({"role": "assistant", "content": ""})),
                chunk("m", json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
                usage,
                "[DONE]",
            ]),
        );
        assert_eq!(flow, Flow::Done);
    }

    #[test]
    fn stream_id_and_created_are_constant_and_role_comes_once() {
        let (events, _, _) = run(ReplyContext { include_usage: true, ..ctx() }, &WORKED_EXAMPLE);
        let chunks = &events[..events.len() - 1];
        assert!(chunks.iter().all(|e| e["id"] == json!("chatcmpl-7")), "{chunks:?}");
        // Pinned to the first line's created_at, though later lines carry later times.
        assert!(chunks.iter().all(|e| e["created"] == json!(1_700_000_000)), "{chunks:?}");
        let roles = deltas(&events).iter().filter(|d| d.get("role").is_some()).count();
        assert_eq!(roles, 1);
        // Without any created_at, the fallback is used for every chunk.
        let (events, _, _) =
            run(ctx(), &[r#"{"message":{"content":"a"}}"#, r#"{"message":{"content":""},"done":true}"#]);
        assert!(events[..2].iter().all(|e| e["created"] == json!(42)), "{events:?}");
    }

    #[test]
    fn stream_without_include_usage_has_no_usage_chunk() {
        let (events, _, stream) = run(ctx(), &WORKED_EXAMPLE);
        assert!(events.iter().all(|e| e.get("usage").is_none()), "{events:?}");
        assert_eq!(events.last(), Some(&json!("[DONE]")));
        assert_eq!(events[events.len() - 2]["choices"][0]["finish_reason"], json!("stop"));
        assert_eq!(stream.usage(), Some(Usage { prompt: 12, completion: 30 }));
    }

    #[test]
    fn stream_reasoning_field_response_model_and_cached_tokens() {
        let context = ReplyContext {
            reasoning_field: ReasoningField::Both,
            response_model: Some("alias".into()),
            include_usage: true,
            ..ctx()
        };
        let (events, _, _) = run(
            context,
            &[
                r#"{"model":"real","message":{"content":"","thinking":"hmm"},"done":false}"#,
                r#"{"model":"real","message":{"content":"ok"},"done":true,"prompt_eval_count":10,"prompt_eval_cached_count":8,"eval_count":2}"#,
            ],
        );
        eq_json(
            &events[0]["choices"][0]["delta"],
            &json!({"role": "assistant", "content": "", "reasoning": "hmm", "reasoning_content": "hmm"}),
        );
        assert!(events[..4].iter().all(|e| e["model"] == json!("alias")), "{events:?}");
        eq_json(
            &events[3]["usage"],
            &json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                    "prompt_tokens_details": {"cached_tokens": 8}}),
        );
    }

    #[test]
    fn stream_logprobs_ride_on_the_first_event_of_a_line() {
        let (events, _, _) = run(
            ctx(),
            &[
                r#"{"model":"m","message":{"content":"Hi","thinking":"t"},"logprobs":[{"token":"Hi","logprob":-0.5}],"done":false}"#,
            ],
        );
        eq_json(
            &events[0]["choices"][0]["logprobs"],
            &json!({"content": [{"token": "Hi", "logprob": -0.5}]}),
        );
        assert_eq!(events[1]["choices"][0].get("logprobs"), None);
    }

    #[test]
    fn stream_mid_stream_error_line_ends_with_an_error_event() {
        for &(line, message) in &testkit::ERROR_LINES[..2] {
            let first = r#"{"model":"m","message":{"content":"Yes"},"done":false}"#;
            let (out, stream) =
                testkit::after_a_bad_line(ChatStream::new(ctx()), first, line, WORKED_EXAMPLE[3]);
            let events = events(&out);
            assert_eq!(events.len(), 2, "{events:?}");
            eq_json(&events[1], &openai_error(message));
            assert_eq!(stream.usage(), None);
        }
    }

    #[test]
    fn stream_garbage_line_is_an_error_event() {
        testkit::garbage_line_events(
            |lines| run(ctx(), lines),
            r#"{"model":"m","message":{"content":"a"},"done":false}"#,
        );
    }

    #[test]
    fn stream_upstream_ending_early_is_an_error_event() {
        let message = testkit::openai_early_ends(|| ChatStream::new(ctx()), events, &WORKED_EXAMPLE);
        assert!(
            message.contains("closed the stream before finishing") && message.contains("incomplete"),
            "{message}"
        );
    }

    #[test]
    fn stream_blank_and_cr_lines_are_skipped() {
        let mut stream = ChatStream::new(ctx());
        testkit::assert_blanks_skipped(&mut stream, &testkit::BLANK_LINES);
        let mut out = Vec::new();
        let with_cr = |line: &str| format!("{line}\r");
        assert_eq!(stream.push_line(with_cr(WORKED_EXAMPLE[2]).as_bytes(), &mut out), Flow::Continue);
        assert_eq!(stream.usage(), None);
        assert_eq!(stream.push_line(with_cr(WORKED_EXAMPLE[3]).as_bytes(), &mut out), Flow::Done);
        let events = events(&out);
        eq_json(&deltas(&events)[0], &json!({"role": "assistant", "content": "!"}));
        assert_eq!(events.last(), Some(&json!("[DONE]")));
    }
}
