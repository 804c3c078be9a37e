//! Messages and content blocks: Anthropic's `system` and `messages` as native messages.
//!
//! A user message's `tool_result` blocks become native `tool` messages (before the user's
//! own text, since they answer the assistant's calls); its text, document and image blocks
//! one native `user` message. An assistant message becomes one native `assistant` message
//! with its text, its thinking and its `tool_use` blocks as `tool_calls`. A `system` message
//! (Claude Code sends one inside `messages`) stays a native system message where it is.
//! Text blocks are joined with `\n`.

use crate::error::ApiError;
use crate::translate::chat::{is_base64, native_message, tool_message, without_line_breaks};
use crate::translate::fields::{describe, expected, field, join, message_object, opt_bool, opt_str, typed};
use serde_json::{json, Map, Value};

/// The first line of one of Claude Code's system blocks: a per-request hash that would
/// change the prompt's first tokens on every turn and so defeat Ollama's prompt cache. It is
/// billing metadata for Anthropic, not text for the model.
const BILLING_HEADER: &str = "x-anthropic-billing-header:";

/// What an `image` block with a URL source is told (the gateway never fetches URLs: SSRF).
pub(super) const IMAGE_URL_UNSUPPORTED: &str = "image URLs are not supported (the gateway never fetches \
    them): send the image inline as {\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"...\"}";

/// A 400 saying `param` must be one of `allowed` (in words), quoting a string sent.
pub(super) fn one_of(param: &str, allowed: &str, got: Option<&Value>) -> ApiError {
    match got {
        Some(Value::String(text)) if !text.trim().is_empty() => {
            ApiError::bad_request(format!("{param} must be {allowed}, got {text:?}"), Some(param))
        }
        other => expected(param, allowed, other),
    }
}

/// A required, non-empty string field.
fn required_str<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    key: &str,
    what: &str,
) -> Result<&'a str, ApiError> {
    match field(obj, key) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text),
        other => Err(expected(&join(path, key), what, other)),
    }
}

/// The text of a `system` value (a string or text blocks, `cache_control` ignored) at
/// `path`, without Claude Code's billing header; `None` when nothing is left.
pub(super) fn system_text(system: &Value, path: &str) -> Result<Option<String>, ApiError> {
    let mut parts = Vec::new();
    match system {
        Value::String(text) => parts.push(without_billing_header(text)),
        Value::Array(blocks) => {
            for (i, block) in blocks.iter().enumerate() {
                let path = format!("{path}[{i}]");
                let Some(block) = block.as_object() else {
                    return Err(expected(
                        &path,
                        "a text block such as {\"type\":\"text\",\"text\":\"...\"}",
                        Some(block),
                    ));
                };
                match field(block, "type") {
                    Some(Value::String(kind)) if kind == "text" => {}
                    other => {
                        return Err(one_of(&join(&path, "type"), "\"text\" (system blocks are text)", other))
                    }
                }
                match field(block, "text") {
                    Some(Value::String(text)) => parts.push(without_billing_header(text)),
                    other => return Err(expected(&join(&path, "text"), "a string", other)),
                }
            }
        }
        other => return Err(expected(path, "a string or an array of text blocks", Some(other))),
    }
    let text = parts.into_iter().filter(|part| !part.is_empty()).collect::<Vec<_>>().join("\n");
    Ok((!text.is_empty()).then_some(text))
}

/// `text` without a leading billing-header line.
fn without_billing_header(text: &str) -> &str {
    if !text.starts_with(BILLING_HEADER) {
        return text;
    }
    text.split_once('\n').map_or("", |(_, rest)| rest)
}

/// Translates the message at `path` and appends the native messages it gives to `out`
/// (which holds the messages translated so far, where tool results look up their calls).
pub(super) fn push_message(message: &Value, path: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let msg = message_object(message, path)?;
    let roles = "\"user\", \"assistant\" or \"system\"";
    let role = match field(msg, "role") {
        Some(Value::String(role)) => role.trim().to_ascii_lowercase(),
        other => return Err(one_of(&join(path, "role"), roles, other)),
    };
    if !matches!(role.as_str(), "user" | "assistant" | "system") {
        return Err(one_of(&join(path, "role"), roles, field(msg, "role")));
    }
    let content_path = join(path, "content");
    let content = match field(msg, "content") {
        Some(content) => content,
        None => return Err(expected(&content_path, "a string or an array of content blocks", None)),
    };
    if role == "system" {
        if let Some(text) = system_text(content, &content_path)? {
            out.push(json!({"role": "system", "content": text}));
        }
        return Ok(());
    }
    let blocks = match content {
        Value::String(text) => {
            if !text.is_empty() {
                out.push(json!({"role": role, "content": text}));
            }
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        other => return Err(expected(&content_path, "a string or an array of content blocks", Some(other))),
    };

    let assistant = role == "assistant";
    let mut texts: Vec<String> = Vec::new();
    let mut thinking: Vec<&str> = Vec::new();
    let mut images = Vec::new();
    let mut tool_calls = Vec::new();
    let mut tool_results: Vec<Value> = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = format!("{content_path}[{j}]");
        let (kind, block) = block_kind(block, &path)?;
        match kind {
            "text" | "document" | "image" => match media(kind, block, &path)? {
                Media::Text(text) => texts.push(text),
                Media::Image(data) => images.push(data),
            },
            "tool_use" if assistant => tool_calls.push(tool_call(block, &path)?),
            "thinking" if assistant => {
                // The signature is opaque: it cannot be checked here, and is not forwarded.
                if let Some(text) = opt_str(block, &path, "thinking")?.filter(|text| !text.is_empty()) {
                    thinking.push(text);
                }
            }
            // Encrypted thinking from Anthropic's models: nothing another model can read.
            "redacted_thinking" if assistant => {}
            "tool_result" if !assistant => {
                let result = tool_result(block, &path, out)?;
                tool_results.push(result);
            }
            "tool_use" | "thinking" | "redacted_thinking" => {
                return Err(ApiError::bad_request(
                    format!("a {kind} block belongs in an assistant message, not in a user message"),
                    Some(&join(&path, "type")),
                ))
            }
            "tool_result" => {
                return Err(ApiError::bad_request(
                    "a tool_result block belongs in a user message, after the assistant's tool_use",
                    Some(&join(&path, "type")),
                ))
            }
            other => return Err(unsupported_block(other, &path)),
        }
    }

    out.extend(tool_results);
    if texts.is_empty() && thinking.is_empty() && images.is_empty() && tool_calls.is_empty() {
        return Ok(());
    }
    let native = native_message(&role, texts.join("\n"), &thinking.join("\n"), images, tool_calls);
    out.push(Value::Object(native));
    Ok(())
}

/// What a block's `type` must be, in errors.
const BLOCK_TYPE: &str = "a block type such as \"text\"";

/// A block's `type` (any string) and fields, or the 400 for something that is not a block.
pub(super) fn typed_block<'a>(
    block: &'a Value,
    path: &str,
) -> Result<(&'a str, &'a Map<String, Value>), ApiError> {
    typed(block, path, "a content block such as {\"type\":\"text\",\"text\":\"Hi\"}", BLOCK_TYPE)
}

/// A block's `type` (not empty) and fields, or the 400 for something that is not a block.
fn block_kind<'a>(block: &'a Value, path: &str) -> Result<(&'a str, &'a Map<String, Value>), ApiError> {
    match typed_block(block, path)? {
        ("", obj) => Err(expected(&join(path, "type"), BLOCK_TYPE, field(obj, "type"))),
        other => Ok(other),
    }
}

fn unsupported_block(kind: &str, path: &str) -> ApiError {
    ApiError::bad_request(
        format!(
            "unsupported content block type {kind:?}: use \"text\", \"image\", \"document\" (text), \
             \"tool_use\", \"tool_result\", \"thinking\" or \"redacted_thinking\""
        ),
        Some(&join(path, "type")),
    )
}

/// What a text, document or image block carries.
enum Media {
    Text(String),
    /// Standard base64, as native `images` takes it.
    Image(Value),
}

/// The text of a `text` or `document` block, or the data of an `image` block.
fn media(kind: &str, block: &Map<String, Value>, path: &str) -> Result<Media, ApiError> {
    match kind {
        "text" => match field(block, "text") {
            Some(Value::String(text)) => Ok(Media::Text(text.clone())),
            other => Err(expected(&join(path, "text"), "a string", other)),
        },
        "image" => image_data(block, path).map(Media::Image),
        _ => document_text(block, path).map(Media::Text),
    }
}

/// The base64 data of an `image` block; URL and file sources are refused.
fn image_data(block: &Map<String, Value>, path: &str) -> Result<Value, ApiError> {
    let source_path = join(path, "source");
    let source = match field(block, "source") {
        Some(Value::Object(source)) => source,
        other => {
            let what =
                "an object such as {\"type\":\"base64\",\"media_type\":\"image/png\",\"data\":\"...\"}";
            return Err(expected(&source_path, what, other));
        }
    };
    match field(source, "type") {
        Some(Value::String(kind)) if kind == "base64" => {}
        Some(Value::String(kind)) if kind == "url" => {
            return Err(ApiError::bad_request(IMAGE_URL_UNSUPPORTED, Some(&source_path)))
        }
        Some(Value::String(kind)) if kind == "file" => {
            return Err(ApiError::bad_request(
                "file sources (Anthropic's Files API) are not supported: send the image inline as base64",
                Some(&source_path),
            ))
        }
        other => return Err(one_of(&join(&source_path, "type"), "\"base64\"", other)),
    }
    let data_path = join(&source_path, "data");
    let data = match field(source, "data") {
        Some(Value::String(data)) => without_line_breaks(data),
        other => return Err(expected(&data_path, "a base64 string", other)),
    };
    if !is_base64(&data) {
        return Err(ApiError::bad_request(
            format!("invalid image: {data_path} must be standard base64 (A-Z, a-z, 0-9, +, /, = padding)"),
            Some(&data_path),
        ));
    }
    Ok(Value::String(data))
}

/// The text of a `document` block whose source is plain text or text blocks.
fn document_text(block: &Map<String, Value>, path: &str) -> Result<String, ApiError> {
    let source_path = join(path, "source");
    let refused = || {
        ApiError::bad_request(
            "only text documents are supported (source type \"text\" or \"content\"): extract the text \
             of a PDF before sending it",
            Some(&source_path),
        )
    };
    let Some(Value::Object(source)) = field(block, "source") else {
        return Err(refused());
    };
    match field(source, "type").and_then(Value::as_str) {
        Some("text") => match field(source, "data") {
            Some(Value::String(text)) => Ok(text.clone()),
            other => Err(expected(&join(&source_path, "data"), "a string", other)),
        },
        Some("content") => match field(source, "content") {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(Value::Array(blocks)) => {
                let mut texts = Vec::new();
                for (k, inner) in blocks.iter().enumerate() {
                    let inner_path = format!("{source_path}.content[{k}]");
                    match block_kind(inner, &inner_path)? {
                        ("text", inner) => match field(inner, "text") {
                            Some(Value::String(text)) => texts.push(text.as_str()),
                            other => return Err(expected(&join(&inner_path, "text"), "a string", other)),
                        },
                        (other, _) => {
                            return Err(one_of(&join(&inner_path, "type"), "\"text\"", Some(&other.into())))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
            other => {
                Err(expected(&join(&source_path, "content"), "a string or an array of text blocks", other))
            }
        },
        _ => Err(refused()),
    }
}

/// An assistant's `tool_use` block as a native tool call.
fn tool_call(block: &Map<String, Value>, path: &str) -> Result<Value, ApiError> {
    let id = required_str(block, path, "id", "the tool use id, such as \"toolu_01A\"")?;
    let name = required_str(block, path, "name", "the tool's name")?;
    let input = match field(block, "input") {
        None => Value::Object(Map::new()),
        Some(input @ Value::Object(_)) => input.clone(),
        other => return Err(expected(&join(path, "input"), "an object of the tool's arguments", other)),
    };
    Ok(json!({"id": id, "function": {"name": name, "arguments": input}}))
}

/// A user's `tool_result` block as a native `tool` message, named after its call in
/// `earlier`. Native messages have no error flag, so `is_error` becomes an `Error: ` prefix.
fn tool_result(block: &Map<String, Value>, path: &str, earlier: &[Value]) -> Result<Value, ApiError> {
    let id = required_str(block, path, "tool_use_id", "the id of the tool_use it answers")?;
    let is_error = opt_bool(block, path, "is_error")?.unwrap_or(false);
    let content_path = join(path, "content");
    let mut texts = Vec::new();
    let mut images = Vec::new();
    match field(block, "content") {
        None => {}
        Some(Value::String(text)) => texts.push(text.clone()),
        Some(Value::Array(blocks)) => {
            for (k, inner) in blocks.iter().enumerate() {
                let inner_path = format!("{content_path}[{k}]");
                match block_kind(inner, &inner_path)? {
                    (kind @ ("text" | "image" | "document"), inner) => match media(kind, inner, &inner_path)?
                    {
                        Media::Text(text) => texts.push(text),
                        Media::Image(data) => images.push(data),
                    },
                    // Claude Code's ToolSearch answers with references to deferred tools; the
                    // gateway sends every tool to the model, so the tool is already there.
                    ("tool_reference", inner) => {
                        let name = required_str(inner, &inner_path, "tool_name", "the tool's name")?;
                        texts.push(format!("Tool loaded: {name}"));
                    }
                    (other, _) => {
                        return Err(ApiError::bad_request(
                            format!(
                            "unsupported tool_result content block type {other:?}: use \"text\", \"image\" \
                                 or \"document\" (text)"
                        ),
                            Some(&join(&inner_path, "type")),
                        ))
                    }
                }
            }
        }
        other => {
            return Err(ApiError::bad_request(
                format!(
                    "{content_path} must be a string or an array of content blocks, got {}",
                    describe(other)
                ),
                Some(&content_path),
            ))
        }
    }
    let mut text = texts.join("\n");
    if is_error {
        text = if text.is_empty() { "Error".to_string() } else { format!("Error: {text}") };
    }
    Ok(tool_message(text, images, id, earlier))
}

#[cfg(test)]
mod tests {
    use super::super::to_ollama;
    use super::*;
    use crate::translate::testkit::{self, eq_json};

    /// A request with these messages.
    fn body(messages: Value) -> Value {
        json!({"model": "m", "max_tokens": 10, "messages": messages})
    }

    /// The native messages of a request with these messages.
    fn natives(messages: Value) -> Value {
        testkit::translated(to_ollama, &body(messages)).native["messages"].clone()
    }

    fn rejected(messages: Value) -> ApiError {
        testkit::refused(to_ollama, &body(messages))
    }

    fn user_says(content: Value) -> Value {
        json!([{"role": "user", "content": content}])
    }

    #[test]
    fn string_and_text_blocks() {
        eq_json(&natives(user_says(json!("Hi"))), &json!([{"role": "user", "content": "Hi"}]));
        eq_json(
            &natives(user_says(json!([
                {"type": "text", "text": "First part."},
                {"type": "text", "text": "Second part.", "cache_control": {"type": "ephemeral"}, "citations": null},
            ]))),
            &json!([{"role": "user", "content": "First part.\nSecond part."}]),
        );
        // Roles are case-insensitive; messages that carry nothing are left out.
        eq_json(
            &natives(json!([{"role": "User", "content": "a"}, {"role": "assistant", "content": ""},
                            {"role": "user", "content": []}])),
            &json!([{"role": "user", "content": "a"}]),
        );
    }

    #[test]
    fn system_role_message_stays_in_place() {
        eq_json(
            &natives(json!([
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": [{"type": "text", "text": "Context.", "cache_control": {"type": "ephemeral"}}]},
                {"role": "system", "content": "More context."},
                {"role": "assistant", "content": "Hello."},
            ])),
            &json!([
                {"role": "user", "content": "Hi"},
                {"role": "system", "content": "Context."},
                {"role": "system", "content": "More context."},
                {"role": "assistant", "content": "Hello."},
            ]),
        );
        let err = rejected(json!([{"role": "system", "content": [{"type": "image", "source": {}}]}]));
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].type"));
    }

    #[test]
    fn base64_images_are_forwarded() {
        eq_json(
            &natives(user_says(json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/\r\n4AAQ"}},
            ]))),
            &json!([{"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]}]),
        );
    }

    #[test]
    fn image_sources_other_than_base64_are_refused() {
        let image = |source: Value| {
            user_says(json!([{"type": "text", "text": "look"}, {"type": "image", "source": source}]))
        };
        let err = rejected(image(json!({"type": "url", "url": "https://example.com/cat.png"})));
        assert_eq!((err.status, err.message.as_str()), (400, IMAGE_URL_UNSUPPORTED));
        assert_eq!(err.param.as_deref(), Some("messages[0].content[1].source"));
        let cases = [
            (json!({"type": "file", "file_id": "file_1"}), "messages[0].content[1].source", "Files API"),
            (
                json!({"type": "base64", "data": "not base64!"}),
                "messages[0].content[1].source.data",
                "standard base64",
            ),
            (
                json!({"type": "base64", "data": "abc"}),
                "messages[0].content[1].source.data",
                "standard base64",
            ),
            (json!({"type": "base64"}), "messages[0].content[1].source.data", "a base64 string"),
            (json!({"type": "magic"}), "messages[0].content[1].source.type", "got \"magic\""),
            (json!("data:image/png;base64,AAAA"), "messages[0].content[1].source", "an object"),
        ];
        for (source, param, fragment) in cases {
            let err = rejected(image(source.clone()));
            assert_eq!(err.param.as_deref(), Some(param), "{source}");
            assert!(err.message.contains(fragment), "{source}: {}", err.message);
        }
    }

    #[test]
    fn text_documents_become_text() {
        eq_json(
            &natives(user_says(json!([
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Doc body."}},
                {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "Part A."}]}},
                {"type": "text", "text": "Summarize."},
            ]))),
            &json!([{"role": "user", "content": "Doc body.\nPart A.\nSummarize."}]),
        );
        let err = rejected(user_says(json!([{"type": "document", "source": {"type": "base64",
            "media_type": "application/pdf", "data": "JVBERi0="}}])));
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].source"));
        assert!(err.message.contains("PDF"), "{}", err.message);
    }

    #[test]
    fn tool_use_and_tool_result_round_trip() {
        eq_json(
            &natives(json!([
                {"role": "user", "content": "Weather in Oslo and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}},
                    {"type": "tool_use", "id": "toolu_c", "name": "get_time"},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12 C"},
                    {"type": "tool_result", "tool_use_id": "toolu_b", "is_error": true,
                     "content": [{"type": "text", "text": "service down"}, {"type": "text", "text": "try later"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_c", "is_error": true},
                    {"type": "tool_result", "tool_use_id": "toolu_unknown", "is_error": false, "content": []},
                    {"type": "text", "text": "Thanks."},
                ]},
            ])),
            &json!([
                {"role": "user", "content": "Weather in Oslo and Rome?"},
                {"role": "assistant", "content": "Checking both.", "tool_calls": [
                    {"id": "toolu_a", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
                    {"id": "toolu_b", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
                    {"id": "toolu_c", "function": {"name": "get_time", "arguments": {}}},
                ]},
                {"role": "tool", "content": "12 C", "tool_name": "get_weather", "tool_call_id": "toolu_a"},
                {"role": "tool", "content": "Error: service down\ntry later", "tool_name": "get_weather", "tool_call_id": "toolu_b"},
                {"role": "tool", "content": "Error", "tool_name": "get_time", "tool_call_id": "toolu_c"},
                {"role": "tool", "content": "", "tool_call_id": "toolu_unknown"},
                {"role": "user", "content": "Thanks."},
            ]),
        );
    }

    #[test]
    fn tool_result_with_images_and_tool_references() {
        eq_json(
            &natives(json!([
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Screenshot", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "Captured."},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "tool_reference", "tool_name": "WebFetch"},
                ]}]},
            ]))[1],
            &json!({"role": "tool", "content": "Captured.\nTool loaded: WebFetch", "images": ["iVBORw0KGgo="],
                    "tool_name": "Screenshot", "tool_call_id": "t1"}),
        );
    }

    #[test]
    fn thinking_and_redacted_thinking() {
        eq_json(
            &natives(json!([
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Simple sum.", "signature": "EqQBCgIYAhIM"},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                    {"type": "thinking", "thinking": "It is 4.", "signature": ""},
                    {"type": "text", "text": "4"},
                ]},
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"}]},
            ])),
            &json!([
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "thinking": "Simple sum.\nIt is 4."},
            ]),
        );
    }

    #[test]
    fn block_errors_name_the_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!(["hi"]), "messages[0]", "a message object"),
            (json!([{"content": "hi"}]), "messages[0].role", "\"user\", \"assistant\" or \"system\""),
            (json!([{"role": "tool", "content": "hi"}]), "messages[0].role", "got \"tool\""),
            (json!([{"role": "user"}]), "messages[0].content", "got nothing"),
            (json!([{"role": "user", "content": 5}]), "messages[0].content", "a string or an array"),
            (user_says(json!(["x"])), "messages[0].content[0]", "a content block"),
            (user_says(json!([{"text": "x"}])), "messages[0].content[0].type", "a block type"),
            (user_says(json!([{"type": "text"}])), "messages[0].content[0].text", "a string"),
            (
                user_says(json!([{"type": "video"}])),
                "messages[0].content[0].type",
                "unsupported content block type \"video\"",
            ),
            (user_says(json!([{"type": "server_tool_use"}])), "messages[0].content[0].type", "unsupported"),
            (
                user_says(json!([{"type": "tool_use", "id": "a", "name": "f"}])),
                "messages[0].content[0].type",
                "assistant message",
            ),
            (
                user_says(json!([{"type": "thinking", "thinking": "x"}])),
                "messages[0].content[0].type",
                "assistant message",
            ),
            (
                json!([{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]}]),
                "messages[0].content[0].type",
                "user message",
            ),
            (
                json!([{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]),
                "messages[0].content[0].id",
                "tool use id",
            ),
            (
                json!([{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": ""}]}]),
                "messages[0].content[0].name",
                "the tool's name",
            ),
            (
                json!([{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": "{}"}]}]),
                "messages[0].content[0].input",
                "an object",
            ),
            (
                json!([{"role": "assistant", "content": [{"type": "thinking", "thinking": 1}]}]),
                "messages[0].content[0].thinking",
                "a string",
            ),
            (
                user_says(json!([{"type": "tool_result"}])),
                "messages[0].content[0].tool_use_id",
                "the id of the tool_use",
            ),
            (
                user_says(json!([{"type": "tool_result", "tool_use_id": "a", "is_error": "yes"}])),
                "messages[0].content[0].is_error",
                "true or false",
            ),
            (
                user_says(json!([{"type": "tool_result", "tool_use_id": "a", "content": 3}])),
                "messages[0].content[0].content",
                "a string or an array",
            ),
            (
                user_says(
                    json!([{"type": "tool_result", "tool_use_id": "a", "content": [{"type": "audio"}]}]),
                ),
                "messages[0].content[0].content[0].type",
                "unsupported tool_result content block type \"audio\"",
            ),
            (
                user_says(
                    json!([{"type": "tool_result", "tool_use_id": "a", "content": [{"type": "tool_reference"}]}]),
                ),
                "messages[0].content[0].content[0].tool_name",
                "the tool's name",
            ),
        ];
        testkit::assert_refusals(cases, rejected);
    }
}
