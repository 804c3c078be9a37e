//! Responses requests: a `/v1/responses` body -> the native `/api/chat` body.
//!
//! `instructions` become the first system message and `input` items become messages: a
//! run of assistant items (`reasoning`, assistant `message`, `function_call`) is one
//! native assistant message with `thinking`, `content` and `tool_calls`, and each
//! `function_call_output` a `tool` message named after its call. Function tools pass,
//! `namespace` tools are flattened ([`ToolNames`]), hosted tools are dropped. Also here:
//! the settings the reply echoes, and the refusals of what a stateless gateway cannot do.

use super::reply::ResponseContext;
use super::ToolNames;
use crate::error::ApiError;
use crate::translate::chat;
use crate::translate::fields::{
    expected, field, join, object_and_model, opt_bool, opt_integer, opt_number, opt_str, typed,
};
use serde_json::{json, Map, Value};

/// Why stored state is refused.
const STATELESS: &str = "the gateway is stateless and keeps no responses or conversations; send the whole \
                         conversation in input each time (with store: false)";

/// A validated Responses request, translated for upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    /// The body for `POST /api/chat`: model, messages, stream, options, and format, tools
    /// and think when asked for.
    pub native: Value,
    /// The model asked for, as sent by the client (and reported back).
    pub model: String,
    /// The client's `stream` (default `false`); also sent explicitly upstream.
    pub stream: bool,
    /// The request settings the `response` object echoes (`instructions`, `tools`,
    /// `tool_choice`, `temperature`, `text`, `reasoning`, ...), as one JSON object.
    pub echo: Value,
    /// The flat names given to namespaced functions, to map calls back.
    pub tool_names: ToolNames,
    /// The `type` of each hosted tool dropped (`web_search`, `file_search`, ...), for the
    /// caller's one debug line; never an error.
    pub dropped_tools: Vec<String>,
}

impl ResponsesRequest {
    /// The reply context for this request: its echo and tool names, reporting the model
    /// asked for, with the caller's `resp_…` id and Unix-seconds `created_at`.
    pub fn context(&self, id: String, created_at: i64) -> ResponseContext {
        ResponseContext {
            id,
            created_at,
            model: self.model.clone(),
            echo: self.echo.clone(),
            tool_names: self.tool_names.clone(),
        }
    }
}

/// Validates a Responses request and translates it into a native `/api/chat` body.
///
/// Wrong types give a 400 whose `param` is the path of the field at fault (`input[3].role`,
/// `tools[1].name`, ...). Unknown fields and `store`, `include`, `prompt_cache_key`,
/// `client_metadata`, `metadata`, `user`, `service_tier`, `stream_options` are accepted
/// and ignored; JSON `null` counts as absent.
pub fn to_ollama(body: &Value) -> Result<ResponsesRequest, ApiError> {
    let (req, model) = object_and_model(body, "the name of a model, such as \"llama3.2\"")?;
    refuse_state(req)?;
    let stream = opt_bool(req, "", "stream")?.unwrap_or(false);
    let messages = messages(req)?;

    let mut tool_names = ToolNames::default();
    let mut dropped_tools = Vec::new();
    let tools = tools(req, &mut tool_names, &mut dropped_tools)?;
    let tool_choice = match field(req, "tool_choice") {
        None => None,
        Some(choice @ (Value::String(_) | Value::Object(_))) => Some(choice),
        other => {
            let what = "\"auto\", \"none\", \"required\" or an object such as {\"type\":\"function\",\"name\":\"f\"}";
            return Err(expected("tool_choice", what, other));
        }
    };
    let parallel_tool_calls = opt_bool(req, "", "parallel_tool_calls")?;

    let mut native = Map::new();
    native.insert("model".into(), Value::String(model.clone()));
    native.insert("messages".into(), Value::Array(messages));
    native.insert("stream".into(), Value::Bool(stream));
    native.insert("options".into(), Value::Object(options(req)?));
    if let Some(format) = format(req)? {
        native.insert("format".into(), format);
    }
    if !tools.is_empty() && tool_choice.and_then(Value::as_str) != Some("none") {
        native.insert("tools".into(), Value::Array(tools));
    }
    if let Some(think) = chat::think(req)? {
        native.insert("think".into(), think);
    }
    if let Some(keep_alive) = field(req, "keep_alive") {
        native.insert("keep_alive".into(), keep_alive.clone());
    }
    Ok(ResponsesRequest {
        native: Value::Object(native),
        model,
        stream,
        echo: echo(req, parallel_tool_calls),
        tool_names,
        dropped_tools,
    })
}

/// Refuses what needs stored state: `previous_response_id`, `conversation`, background
/// responses, and truncation other than `"disabled"`.
fn refuse_state(req: &Map<String, Value>) -> Result<(), ApiError> {
    for key in ["previous_response_id", "conversation"] {
        match field(req, key) {
            None => {}
            Some(Value::String(text)) if text.is_empty() => {}
            Some(_) => {
                return Err(ApiError::bad_request(format!("{key} is not supported: {STATELESS}"), Some(key)))
            }
        }
    }
    if opt_bool(req, "", "background")? == Some(true) {
        return Err(ApiError::bad_request(
            format!("background responses are not supported (there is nothing to poll later): {STATELESS}"),
            Some("background"),
        ));
    }
    match opt_str(req, "", "truncation")? {
        None | Some("disabled") => Ok(()),
        Some(other) => Err(ApiError::bad_request(
            format!("truncation \"{other}\" is not supported: the gateway never drops input items; send \"disabled\""),
            Some("truncation"),
        )),
    }
}

/// The native messages of `instructions` and `input`.
fn messages(req: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let mut history = History::default();
    if let Some(instructions) = opt_str(req, "", "instructions")?.filter(|text| !text.is_empty()) {
        history.push(json!({"role": "system", "content": instructions}));
    }
    match field(req, "input") {
        Some(Value::String(text)) => {
            if !text.is_empty() {
                history.push(json!({"role": "user", "content": text}));
            }
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                history.item(item, &format!("input[{i}]"))?;
            }
        }
        other => {
            let what = "a string or an array of input items such as [{\"role\":\"user\",\"content\":\"Hi\"}]";
            return Err(expected("input", what, other));
        }
    }
    let messages = history.finish();
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "input is empty: send a string or at least one input item (or instructions)",
            Some("input"),
        ));
    }
    Ok(messages)
}

/// Native messages being built from input items.
#[derive(Debug, Default)]
struct History {
    messages: Vec<Value>,
    /// The assistant turn being gathered from consecutive assistant items.
    turn: Option<Turn>,
}

/// One assistant turn: what becomes a single native assistant message.
#[derive(Debug, Default)]
struct Turn {
    thinking: String,
    content: String,
    images: Vec<Value>,
    tool_calls: Vec<Value>,
}

impl Turn {
    fn into_message(self) -> Value {
        Value::Object(chat::native_message(
            "assistant",
            self.content,
            &self.thinking,
            self.images,
            self.tool_calls,
        ))
    }
}

/// Appends `text` to `target`, a line break between two non-empty texts.
fn append_line(target: &mut String, text: &str) {
    if !target.is_empty() && !text.is_empty() {
        target.push('\n');
    }
    target.push_str(text);
}

impl History {
    /// Ends the assistant turn (if any) and adds a message of another role.
    fn push(&mut self, message: Value) {
        self.close_turn();
        self.messages.push(message);
    }

    fn turn(&mut self) -> &mut Turn {
        self.turn.get_or_insert_with(Turn::default)
    }

    fn close_turn(&mut self) {
        if let Some(turn) = self.turn.take() {
            self.messages.push(turn.into_message());
        }
    }

    fn finish(mut self) -> Vec<Value> {
        self.close_turn();
        self.messages
    }

    /// Adds one input item.
    fn item(&mut self, item: &Value, path: &str) -> Result<(), ApiError> {
        let Some(obj) = item.as_object() else {
            let what = "an input item object such as {\"role\":\"user\",\"content\":\"Hi\"}";
            return Err(expected(path, what, Some(item)));
        };
        let kind = match field(obj, "type") {
            // The short form {"role": …, "content": …} is a message.
            None if field(obj, "role").is_some() => "message",
            Some(Value::String(kind)) => kind.as_str(),
            other => {
                let what =
                    "an item type: \"message\", \"function_call\", \"function_call_output\" or \"reasoning\"";
                return Err(expected(&join(path, "type"), what, other));
            }
        };
        match kind {
            "message" => self.message(obj, path),
            "function_call" => self.function_call(obj, path),
            "function_call_output" => self.function_call_output(obj, path),
            "reasoning" => self.reasoning(obj, path),
            // A hosted search's record: its result is in the assistant message after it.
            "web_search_call" => Ok(()),
            "item_reference" => Err(ApiError::bad_request(
                format!("item_reference items are not supported: {STATELESS}"),
                Some(&join(path, "type")),
            )),
            other => Err(ApiError::bad_request(
                format!(
                    "unsupported input item type \"{other}\": use \"message\", \"function_call\", \
                     \"function_call_output\" or \"reasoning\""
                ),
                Some(&join(path, "type")),
            )),
        }
    }

    fn message(&mut self, obj: &Map<String, Value>, path: &str) -> Result<(), ApiError> {
        let role_path = join(path, "role");
        let role = match field(obj, "role") {
            Some(Value::String(role)) => role.trim().to_lowercase(),
            other => {
                let what = "a role: \"system\", \"developer\", \"user\" or \"assistant\"";
                return Err(expected(&role_path, what, other));
            }
        };
        // What OpenAI means by `developer`; most Ollama templates know only `system`.
        let role = match role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(
                    format!(
                    "unsupported role \"{other}\": use \"system\", \"developer\", \"user\" or \"assistant\" \
                         (tool results are function_call_output items)"
                ),
                    Some(&role_path),
                ))
            }
        };
        let content_path = join(path, "content");
        let mut images = Vec::new();
        let content = match field(obj, "content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => merge_parts(parts, &content_path, &mut images)?,
            None if role == "assistant" => String::new(),
            other => return Err(expected(&content_path, "a string or an array of content parts", other)),
        };
        if role == "assistant" {
            let turn = self.turn();
            append_line(&mut turn.content, &content);
            turn.images.extend(images);
            return Ok(());
        }
        self.push(Value::Object(chat::native_message(role, content, "", images, Vec::new())));
        Ok(())
    }

    fn function_call(&mut self, obj: &Map<String, Value>, path: &str) -> Result<(), ApiError> {
        let call_id = call_id(obj, path)?;
        let name = match field(obj, "name") {
            Some(Value::String(name)) if !name.is_empty() => name,
            other => return Err(expected(&join(path, "name"), "the function's name", other)),
        };
        // The model saw a namespaced function under its flat name; its history must agree.
        let name = match opt_str(obj, path, "namespace")?.filter(|namespace| !namespace.is_empty()) {
            Some(namespace) => ToolNames::flat(namespace, name),
            None => name.clone(),
        };
        let arguments = chat::arguments(obj, path, "function call")?;
        let call = json!({"id": call_id, "function": {"name": name, "arguments": arguments}});
        self.turn().tool_calls.push(call);
        Ok(())
    }

    fn function_call_output(&mut self, obj: &Map<String, Value>, path: &str) -> Result<(), ApiError> {
        let call_id = call_id(obj, path)?;
        let output_path = join(path, "output");
        let mut images = Vec::new();
        let content = match field(obj, "output") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => merge_parts(parts, &output_path, &mut images)?,
            other => return Err(expected(&output_path, "a string or an array of content parts", other)),
        };
        self.close_turn();
        self.messages.push(chat::tool_message(content, images, call_id, &self.messages));
        Ok(())
    }

    /// A reasoning item's text becomes the turn's thinking: its `content` (the raw
    /// reasoning) when it has some, else its `summary`. `encrypted_content` is opaque and
    /// never read.
    fn reasoning(&mut self, obj: &Map<String, Value>, path: &str) -> Result<(), ApiError> {
        let mut text = String::new();
        for key in ["content", "summary"] {
            let parts = match field(obj, key) {
                None => continue,
                Some(Value::Array(parts)) => parts,
                other => {
                    let what =
                        "an array of text parts such as [{\"type\":\"summary_text\",\"text\":\"...\"}]";
                    return Err(expected(&join(path, key), what, other));
                }
            };
            for (j, part) in parts.iter().enumerate() {
                match part.get("text") {
                    Some(Value::String(part_text)) => append_line(&mut text, part_text),
                    other => return Err(expected(&format!("{path}.{key}[{j}].text"), "a string", other)),
                }
            }
            if !text.is_empty() {
                break;
            }
        }
        if !text.is_empty() {
            append_line(&mut self.turn().thinking, &text);
        }
        Ok(())
    }
}

/// The `call_id` of a function call or its output.
fn call_id<'a>(obj: &'a Map<String, Value>, path: &str) -> Result<&'a str, ApiError> {
    match field(obj, "call_id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id),
        other => Err(expected(&join(path, "call_id"), "the call's id, such as \"call_abc123\"", other)),
    }
}

/// Merges content parts into one text (joined with `""`, as chat does), collecting
/// images as base64 strings in `images`.
fn merge_parts(parts: &[Value], path: &str, images: &mut Vec<Value>) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let path = format!("{path}[{j}]");
        let what = "a content part object such as {\"type\":\"input_text\",\"text\":\"Hi\"}";
        let kind_what = "a part type: \"input_text\", \"output_text\" or \"input_image\"";
        let (kind, part) = typed(part, &path, what, kind_what)?;
        let key = match kind {
            "input_text" | "output_text" | "text" => "text",
            "refusal" => "refusal",
            "input_image" => {
                images.push(Value::String(image(part, &path)?));
                continue;
            }
            "input_file" => {
                return Err(ApiError::bad_request(
                    "file inputs are not supported: send the file's text as an input_text part",
                    Some(&join(&path, "type")),
                ))
            }
            other => {
                return Err(ApiError::bad_request(
                    format!(
                        "unsupported content part type \"{other}\": use \"input_text\", \"output_text\" or \"input_image\""
                    ),
                    Some(&join(&path, "type")),
                ))
            }
        };
        match field(part, key) {
            Some(Value::String(part_text)) => text.push_str(part_text),
            other => return Err(expected(&join(&path, key), "a string", other)),
        }
    }
    Ok(text)
}

/// The base64 payload of an `input_image` part: its `image_url` as a data URL or as bare
/// base64. `http(s)` URLs are refused as in chat (the gateway never fetches them), and so
/// are `file_id`s (it stores no files).
fn image(part: &Map<String, Value>, path: &str) -> Result<String, ApiError> {
    if field(part, "image_url").is_none() && field(part, "file_id").is_some() {
        return Err(ApiError::bad_request(
            "input_image file_id is not supported (the gateway stores no files): send image_url as a \
             data URL such as data:image/png;base64,...",
            Some(&join(path, "file_id")),
        ));
    }
    let param = join(path, "image_url");
    let url = chat::image_url(part, &param, "a data URL such as \"data:image/png;base64,...\"")?;
    let has_scheme =
        ["data:", "http://", "https://"].iter().any(|scheme| chat::starts_with_ignore_case(url, scheme));
    if has_scheme {
        return chat::image_data(url, &param);
    }
    let data = chat::without_line_breaks(url);
    if chat::is_base64(&data) {
        Ok(data)
    } else {
        Err(ApiError::bad_request(chat::INVALID_IMAGE, Some(&param)))
    }
}

/// Native tools from `tools`: function tools as they are, namespace tools expanded into
/// their functions under flat names, hosted tools dropped (their types in `dropped`).
fn tools(
    req: &Map<String, Value>,
    names: &mut ToolNames,
    dropped: &mut Vec<String>,
) -> Result<Vec<Value>, ApiError> {
    let list = match field(req, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        other => return Err(expected("tools", "an array of tool definitions", other)),
    };
    let mut tools = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        add_tool(tool, &format!("tools[{i}]"), None, &mut tools, names, dropped)?;
    }
    Ok(tools)
}

fn add_tool(
    tool: &Value,
    path: &str,
    namespace: Option<&str>,
    tools: &mut Vec<Value>,
    names: &mut ToolNames,
    dropped: &mut Vec<String>,
) -> Result<(), ApiError> {
    let Some(tool) = tool.as_object() else {
        let what = "a tool object such as {\"type\":\"function\",\"name\":\"f\",\"parameters\":{...}}";
        return Err(expected(path, what, Some(tool)));
    };
    let kind = match field(tool, "type") {
        Some(Value::String(kind)) => kind.as_str(),
        other => return Err(expected(&join(path, "type"), "a tool type such as \"function\"", other)),
    };
    let name = || match field(tool, "name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(name),
        other => Err(expected(&join(path, "name"), "the tool's name", other)),
    };
    match kind {
        "function" => {
            let name = match namespace {
                Some(namespace) => names.insert(namespace, name()?),
                None => name()?.clone(),
            };
            if tools
                .iter()
                .any(|known| known.pointer("/function/name").and_then(Value::as_str) == Some(&name))
            {
                return Ok(()); // The first declaration of a name wins.
            }
            let mut function = Map::new();
            function.insert("name".into(), name.into());
            if let Some(description) = opt_str(tool, path, "description")? {
                function.insert("description".into(), description.into());
            }
            match field(tool, "parameters") {
                None => {}
                Some(parameters @ Value::Object(_)) => {
                    function.insert("parameters".into(), parameters.clone());
                }
                other => return Err(expected(&join(path, "parameters"), "a JSON schema object", other)),
            }
            tools.push(json!({"type": "function", "function": function}));
        }
        "namespace" if namespace.is_none() => {
            let namespace = name()?;
            let members = match field(tool, "tools") {
                Some(Value::Array(members)) => members,
                other => return Err(expected(&join(path, "tools"), "an array of function tools", other)),
            };
            for (j, member) in members.iter().enumerate() {
                add_tool(member, &format!("{path}.tools[{j}]"), Some(namespace), tools, names, dropped)?;
            }
        }
        // Hosted tools (web_search, file_search, computer_use, …) run at OpenAI, not here.
        other => dropped.push(other.to_string()),
    }
    Ok(())
}

/// Native `options`: `temperature` (1.0 when absent, as Ollama), `top_p`, `num_predict`
/// from `max_output_tokens`, and `stop` where given.
fn options(req: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut options = Map::new();
    if let Some(limit) = opt_integer(req, "", "max_output_tokens")? {
        options.insert("num_predict".into(), limit);
    }
    options.insert("temperature".into(), opt_number(req, "temperature")?.unwrap_or(json!(1.0)));
    if let Some(top_p) = opt_number(req, "top_p")? {
        options.insert("top_p".into(), top_p);
    }
    if let Some(stop) = chat::stop(req)? {
        options.insert("stop".into(), stop);
    }
    Ok(options)
}

/// Native `format` from `text.format`: `json_object` -> `"json"`, `json_schema` -> its
/// schema, `text` -> none.
fn format(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let text = match field(req, "text") {
        None => return Ok(None),
        Some(Value::Object(text)) => text,
        other => {
            return Err(expected("text", "an object such as {\"format\":{\"type\":\"json_object\"}}", other))
        }
    };
    let format = match field(text, "format") {
        None => return Ok(None),
        Some(Value::Object(format)) => format,
        other => {
            let what = "an object such as {\"type\":\"json_schema\",\"name\":\"answer\",\"schema\":{...}}";
            return Err(expected("text.format", what, other));
        }
    };
    match opt_str(format, "text.format", "type")? {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Value::String("json".into()))),
        Some("json_schema") => match field(format, "schema") {
            Some(schema @ Value::Object(_)) => Ok(Some(schema.clone())),
            other => Err(expected("text.format.schema", "a JSON schema object", other)),
        },
        Some(other) => Err(ApiError::bad_request(
            format!(
                "unsupported text.format.type \"{other}\": use \"text\", \"json_object\" or \"json_schema\""
            ),
            Some("text.format.type"),
        )),
    }
}

/// The settings a `response` object reports, as OpenAI fills them: what was sent, else
/// OpenAI's defaults; `store` is always `false` and there is never a previous response.
fn echo(req: &Map<String, Value>, parallel_tool_calls: Option<bool>) -> Value {
    let sent = |key: &str, default: Value| field(req, key).cloned().unwrap_or(default);
    let reasoning = match field(req, "reasoning") {
        Some(Value::Object(reasoning)) => json!({
            "effort": field(reasoning, "effort").cloned().unwrap_or(Value::Null),
            "summary": field(reasoning, "summary").cloned().unwrap_or(Value::Null),
        }),
        _ => json!({"effort": null, "summary": null}),
    };
    let mut text = match field(req, "text") {
        Some(Value::Object(text)) => text.clone(),
        _ => Map::new(),
    };
    if field(&text, "format").is_none() {
        text.insert("format".into(), json!({"type": "text"}));
    }
    json!({
        "background": false,
        "instructions": sent("instructions", Value::Null),
        "max_output_tokens": sent("max_output_tokens", Value::Null),
        "max_tool_calls": sent("max_tool_calls", Value::Null),
        "metadata": sent("metadata", json!({})),
        "parallel_tool_calls": parallel_tool_calls.unwrap_or(true),
        "previous_response_id": null,
        "prompt_cache_key": sent("prompt_cache_key", Value::Null),
        "reasoning": reasoning,
        "safety_identifier": sent("safety_identifier", Value::Null),
        "service_tier": "default",
        "store": false,
        "temperature": sent("temperature", json!(1.0)),
        "text": text,
        "tool_choice": sent("tool_choice", json!("auto")),
        "tools": sent("tools", json!([])),
        "top_logprobs": 0,
        "top_p": sent("top_p", json!(1.0)),
        "truncation": "disabled",
        "user": sent("user", Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::{self, eq_json};

    /// A request with the given input.
    fn with_input(input: Value) -> Value {
        json!({"model": "m", "input": input})
    }

    /// A one-line request with `key` set.
    fn with(key: &str, value: Value) -> Value {
        testkit::with_field(json!({"model": "m", "input": "hi"}), key, value)
    }

    fn translated(body: Value) -> ResponsesRequest {
        testkit::translated(to_ollama, &body)
    }

    fn native_of(body: Value) -> Value {
        translated(body).native
    }

    fn rejected(body: Value) -> ApiError {
        testkit::refused(to_ollama, &body)
    }

    #[test]
    fn string_input_with_instructions() {
        let req = translated(json!({"model": "llama3.2", "instructions": "Be terse.", "input": "Hi there"}));
        assert_eq!((req.model.as_str(), req.stream), ("llama3.2", false));
        eq_json(
            &req.native,
            &json!({"model": "llama3.2", "stream": false, "options": {"temperature": 1.0},
                    "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi there"}]}),
        );
        assert_eq!(req.echo["instructions"], json!("Be terse."));
        assert!(req.tool_names.is_empty() && req.dropped_tools.is_empty());
        // An empty string input with instructions is still a conversation.
        let native =
            native_of(json!({"model": "m", "instructions": "Only this.", "input": "", "stream": true}));
        eq_json(&native["messages"], &json!([{"role": "system", "content": "Only this."}]));
        assert_eq!(native["stream"], json!(true));
    }

    #[test]
    fn message_items_with_each_role_and_part_type() {
        let native = native_of(with_input(json!([
            {"type": "message", "role": "system", "content": "Rules."},
            {"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "More "}, {"type": "input_text", "text": "rules."}]},
            {"type": "message", "id": "msg_in1", "role": "user", "content": [
                {"type": "input_text", "text": "What is in "},
                {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                {"type": "input_image", "image_url": "/9j/4AAQ"},
                {"type": "input_text", "text": "these?"}]},
            {"type": "message", "role": "assistant", "status": "completed", "content": [
                {"type": "output_text", "text": "A cat.", "annotations": []}]},
            {"role": "user", "content": "Short form."},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ])));
        eq_json(
            &native["messages"],
            &json!([
                {"role": "system", "content": "Rules."},
                {"role": "system", "content": "More rules."},
                {"role": "user", "content": "What is in these?", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "Short form."},
                {"role": "assistant", "content": "No."},
            ]),
        );
    }

    #[test]
    fn image_rules() {
        let ok = [
            (json!("data:image/jpeg;base64,/9j/4AAQ"), "/9j/4AAQ"),
            (json!("iVBORw0KGgo="), "iVBORw0KGgo="),
            (json!("iVBO\nRw0KGgo="), "iVBORw0KGgo="),
            (json!({"url": "data:image/webp;base64,UklGRg=="}), "UklGRg=="),
        ];
        for (url, want) in ok {
            let part = json!({"type": "input_image", "image_url": url});
            let native = native_of(with_input(json!([{"role": "user", "content": [part]}])));
            assert_eq!(native["messages"][0]["images"], json!([want]), "{url}");
        }
        let refused = [
            (json!({"image_url": "https://example.com/cat.png"}), chat::IMAGE_URL_UNSUPPORTED, "image_url"),
            (json!({"image_url": "HTTP://example.com/cat.png"}), chat::IMAGE_URL_UNSUPPORTED, "image_url"),
            (json!({"image_url": "data:image/gif;base64,R0lGODlh"}), chat::INVALID_IMAGE, "image_url"),
            (json!({"image_url": "not base64!"}), chat::INVALID_IMAGE, "image_url"),
            (json!({"file_id": "file-123"}), "input_image file_id is not supported", "file_id"),
            (json!({}), "image_url must be a data URL", "image_url"),
        ];
        for (fields, message, key) in refused {
            let mut part = json!({"type": "input_image"});
            part.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
            let content = json!([{"type": "input_text", "text": "look"}, part]);
            let err = rejected(with_input(
                json!([{"role": "user", "content": "hi"}, {"role": "user", "content": content}]),
            ));
            assert_eq!(err.status, 400, "{fields}");
            assert!(err.message.contains(message), "{fields}: {}", err.message);
            assert_eq!(err.param, Some(format!("input[1].content[1].{key}")), "{fields}");
        }
        let err = rejected(with_input(
            json!([{"role": "user", "content": [{"type": "input_file", "file_data": "x"}]}]),
        ));
        assert!(err.message.starts_with("file inputs are not supported"), "{}", err.message);
        assert_eq!(err.param.as_deref(), Some("input[0].content[0].type"));
    }

    #[test]
    fn function_calls_and_outputs_become_tool_calls_and_tool_messages() {
        let native = native_of(with_input(json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Two cities."}],
             "encrypted_content": "gAAAAopaque=="},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "call_p",
             "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_r", "name": "get_time", "arguments": ""},
            {"type": "function_call_output", "call_id": "call_r", "output": "12:00"},
            {"type": "function_call_output", "id": "fco_1", "call_id": "call_p",
             "output": [{"type": "input_text", "text": "20 "}, {"type": "output_text", "text": "C"}]},
            {"type": "function_call_output", "call_id": "call_unknown", "output": "?"},
            {"type": "message", "role": "assistant", "content": "Paris 20 C, Rome noon."},
        ])));
        eq_json(
            &native["messages"],
            &json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "thinking": "Two cities.", "tool_calls": [
                    {"id": "call_p", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"id": "call_r", "function": {"name": "get_time", "arguments": {}}}]},
                {"role": "tool", "content": "12:00", "tool_name": "get_time", "tool_call_id": "call_r"},
                {"role": "tool", "content": "20 C", "tool_name": "get_weather", "tool_call_id": "call_p"},
                {"role": "tool", "content": "?", "tool_call_id": "call_unknown"},
                {"role": "assistant", "content": "Paris 20 C, Rome noon."},
            ]),
        );
        // A tool result with an image; a call alone makes an assistant message of its own.
        let native = native_of(with_input(json!([
            {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": {"x": 1}},
            {"type": "function_call_output", "call_id": "c1",
             "output": [{"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]},
        ])));
        eq_json(
            &native["messages"],
            &json!([
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "function": {"name": "shot", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "", "images": ["iVBORw0KGgo="], "tool_name": "shot", "tool_call_id": "c1"},
            ]),
        );
    }

    #[test]
    fn reasoning_items_become_thinking_and_encrypted_content_is_never_read() {
        let native = native_of(with_input(json!([
            {"role": "user", "content": "q1"},
            // Only encrypted content (as OpenAI returns it): nothing to show the model.
            {"type": "reasoning", "summary": [], "encrypted_content": {"not": "a string"}},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "short"}],
             "content": [{"type": "reasoning_text", "text": "the full reasoning"}], "encrypted_content": 7},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "part one"},
                                              {"type": "summary_text", "text": "part two"}]},
            {"role": "assistant", "content": "a2"},
            {"role": "user", "content": "q3"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "trailing"}]},
        ])));
        eq_json(
            &native["messages"],
            &json!([
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2", "thinking": "the full reasoning\npart one\npart two"},
                {"role": "user", "content": "q3"},
                {"role": "assistant", "content": "", "thinking": "trailing"},
            ]),
        );
        let err = rejected(with_input(json!([{"type": "reasoning", "summary": "text"}])));
        assert_eq!(err.param.as_deref(), Some("input[0].summary"));
        let err = rejected(with_input(json!([{"type": "reasoning", "summary": [{"type": "summary_text"}]}])));
        assert_eq!(err.param.as_deref(), Some("input[0].summary[0].text"));
    }

    #[test]
    fn namespace_tools_expand_and_hosted_tools_are_dropped() {
        let tools = json!([
            {"type": "function", "name": "run", "description": "Runs it.", "strict": false,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
            {"type": "namespace", "name": "agents", "description": "Sub-agents.", "tools": [
                {"type": "function", "name": "spawn", "description": "Starts one.",
                 "parameters": {"type": "object", "properties": {}}},
                {"type": "function", "name": "wait"},
                {"type": "web_search"}]},
            {"type": "web_search", "external_web_access": false},
            {"type": "file_search", "vector_store_ids": ["vs_1"]},
            {"type": "computer_use_preview", "display_width": 1024},
            {"type": "function", "name": "run", "description": "A second declaration."},
        ]);
        let req = translated(json!({"model": "m", "input": "go", "tools": tools}));
        eq_json(
            &req.native["tools"],
            &json!([
                {"type": "function", "function": {"name": "run", "description": "Runs it.",
                 "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "agents__spawn", "description": "Starts one.",
                 "parameters": {"type": "object", "properties": {}}}},
                {"type": "function", "function": {"name": "agents__wait"}},
            ]),
        );
        assert_eq!(req.tool_names.resolve("agents__spawn"), Some(("agents", "spawn")));
        assert_eq!(req.tool_names.resolve("agents__wait"), Some(("agents", "wait")));
        assert_eq!(req.tool_names.resolve("run"), None);
        assert_eq!(req.dropped_tools, ["web_search", "web_search", "file_search", "computer_use_preview"]);
        // The echo reports the tools as the client declared them.
        eq_json(&req.echo["tools"], &tools);

        // A namespaced call in the history carries the flat name the model knows.
        let native = native_of(with_input(json!([
            {"type": "function_call", "call_id": "c1", "namespace": "agents", "name": "spawn", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "started"},
        ])));
        assert_eq!(native["messages"][0]["tool_calls"][0]["function"]["name"], json!("agents__spawn"));
        assert_eq!(native["messages"][1]["tool_name"], json!("agents__spawn"));
        // Only hosted tools: no tools at all upstream.
        let req = translated(with("tools", json!([{"type": "web_search"}])));
        assert_eq!(req.native.get("tools"), None);
        assert_eq!(req.dropped_tools, ["web_search"]);
    }

    #[test]
    fn tool_choice_none_drops_tools_and_other_choices_keep_them() {
        let tools = json!([{"type": "function", "name": "f"}]);
        for (choice, sent) in [
            (json!("none"), false),
            (json!("auto"), true),
            (json!("required"), true),
            (json!({"type": "function", "name": "f"}), true),
            (Value::Null, true),
        ] {
            let mut body = with("tools", tools.clone());
            body["tool_choice"] = choice.clone();
            body["parallel_tool_calls"] = json!(false);
            let req = translated(body);
            assert_eq!(req.native.get("tools").is_some(), sent, "{choice}");
            let echoed = if choice.is_null() { json!("auto") } else { choice.clone() };
            assert_eq!(req.echo["tool_choice"], echoed);
            assert_eq!(req.echo["parallel_tool_calls"], json!(false));
        }
    }

    #[test]
    fn options_map_to_native() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let native = native_of(json!({"model": "m", "input": "hi", "temperature": 0.2, "top_p": 0.9,
            "max_output_tokens": 64, "stop": ["END", 3], "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "n", "strict": true, "schema": schema}},
            "keep_alive": "5m"}));
        eq_json(
            &native["options"],
            &json!({"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "stop": ["END"]}),
        );
        assert_eq!(native["think"], json!("high"));
        assert_eq!(native["format"], schema);
        assert_eq!(native["keep_alive"], json!("5m"));

        let cases = [
            ("reasoning", json!({"effort": "none"}), "/think", Some(json!(false))),
            ("reasoning", json!({"effort": "minimal"}), "/think", Some(json!("low"))),
            ("reasoning", json!({"summary": "auto"}), "/think", None),
            ("text", json!({"format": {"type": "json_object"}}), "/format", Some(json!("json"))),
            ("text", json!({"format": {"type": "text"}, "verbosity": "low"}), "/format", None),
            ("stop", json!("STOP"), "/options/stop", Some(json!(["STOP"]))),
            ("top_p", Value::Null, "/options/top_p", None),
        ];
        for (key, value, pointer, want) in cases {
            let native = native_of(with(key, value.clone()));
            assert_eq!(native.pointer(pointer).cloned(), want, "{key}: {value}");
        }
    }

    #[test]
    fn ignored_fields_are_accepted_and_store_is_answered_false() {
        let plain = translated(json!({"model": "m", "input": "hi"}));
        let busy = translated(json!({"model": "m", "input": "hi", "store": true,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k1", "client_metadata": {"s": "1"},
            "metadata": {"team": "a"}, "user": "u1", "service_tier": "flex", "truncation": "disabled",
            "stream_options": {"include_obfuscation": false}, "safety_identifier": "h1", "something_new": 1}));
        eq_json(&busy.native, &plain.native);
        eq_json(
            &plain.echo,
            &json!({"background": false, "instructions": null, "max_output_tokens": null, "max_tool_calls": null,
                    "metadata": {}, "parallel_tool_calls": true, "previous_response_id": null,
                    "prompt_cache_key": null, "reasoning": {"effort": null, "summary": null},
                    "safety_identifier": null, "service_tier": "default", "store": false, "temperature": 1.0,
                    "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_logprobs": 0,
                    "top_p": 1.0, "truncation": "disabled", "user": null}),
        );
        assert_eq!(busy.echo["store"], json!(false));
        assert_eq!(busy.echo["metadata"], json!({"team": "a"}));
        assert_eq!(busy.echo["prompt_cache_key"], json!("k1"));
        assert_eq!(busy.echo["service_tier"], json!("default"));
    }

    #[test]
    fn stored_state_is_refused_naming_the_field() {
        let cases = [
            (with("previous_response_id", json!("resp_123")), "previous_response_id"),
            (with("conversation", json!("conv_1")), "conversation"),
            (with("conversation", json!({"id": "conv_1"})), "conversation"),
            (with("background", json!(true)), "background"),
        ];
        for (body, param) in cases {
            let err = rejected(body.clone());
            assert_eq!((err.status, err.kind), (400, "invalid_request_error"), "{body}");
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
            assert!(err.message.contains("the gateway is stateless"), "{body}: {}", err.message);
        }
        let err = rejected(with_input(json!([{"type": "item_reference", "id": "msg_1"}])));
        assert_eq!(err.param.as_deref(), Some("input[0].type"));
        assert!(err.message.contains("stateless"), "{}", err.message);
        let err = rejected(with("truncation", json!("auto")));
        assert_eq!(err.param.as_deref(), Some("truncation"));
        // Empty or null ids ask for nothing stored.
        for value in [json!(""), Value::Null] {
            translated(with("previous_response_id", value.clone()));
            translated(with("background", json!(false)));
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let function_call = |arguments: Value| {
            with_input(
                json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": arguments}]),
            )
        };
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!([]), None, "must be a JSON object"),
            (json!({"input": "hi"}), Some("model"), "model must be the name of a model"),
            (json!({"model": "m"}), Some("input"), "input must be a string or an array"),
            (with_input(json!(3)), Some("input"), "got a number"),
            (with_input(json!([])), Some("input"), "input is empty"),
            (with_input(json!("")), Some("input"), "input is empty"),
            (with_input(json!(["hi"])), Some("input[0]"), "an input item object"),
            (with_input(json!([{"content": "hi"}])), Some("input[0].type"), "an item type"),
            (
                with_input(json!([{"type": "compaction"}])),
                Some("input[0].type"),
                "unsupported input item type",
            ),
            (
                with_input(json!([{"role": "tool", "content": "x"}])),
                Some("input[0].role"),
                "unsupported role",
            ),
            (with_input(json!([{"role": 1, "content": "x"}])), Some("input[0].role"), "got a number"),
            (with_input(json!([{"role": "user"}])), Some("input[0].content"), "a string or an array"),
            (
                with_input(json!([{"role": "user", "content": [{"type": "input_text", "text": 5}]}])),
                Some("input[0].content[0].text"),
                "a string",
            ),
            (
                with_input(json!([{"role": "user", "content": [{"type": "audio"}]}])),
                Some("input[0].content[0].type"),
                "unsupported content part type",
            ),
            (
                with_input(json!([{"type": "function_call", "name": "f"}])),
                Some("input[0].call_id"),
                "the call's id",
            ),
            (with_input(json!([{"type": "function_call", "call_id": "c"}])), Some("input[0].name"), "name"),
            (
                function_call(json!("{not json")),
                Some("input[0].arguments"),
                "invalid function call arguments",
            ),
            (function_call(json!("[1]")), Some("input[0].arguments"), "invalid function call arguments"),
            (
                with_input(json!([{"type": "function_call_output", "call_id": "c", "output": 1}])),
                Some("input[0].output"),
                "a string or an array",
            ),
            (with("instructions", json!(["x"])), Some("instructions"), "a string"),
            (with("stream", json!("yes")), Some("stream"), "true or false"),
            (with("tools", json!({})), Some("tools"), "an array of tool definitions"),
            (with("tools", json!([{"name": "f"}])), Some("tools[0].type"), "a tool type"),
            (with("tools", json!([{"type": "function"}])), Some("tools[0].name"), "the tool's name"),
            (
                with("tools", json!([{"type": "function", "name": "f", "parameters": "{}"}])),
                Some("tools[0].parameters"),
                "a JSON schema object",
            ),
            (
                with("tools", json!([{"type": "namespace", "name": "n", "tools": [{"type": "function"}]}])),
                Some("tools[0].tools[0].name"),
                "the tool's name",
            ),
            (with("tools", json!([{"type": "namespace", "name": "n"}])), Some("tools[0].tools"), "an array"),
            (with("tool_choice", json!(1)), Some("tool_choice"), "\"auto\", \"none\""),
            (with("parallel_tool_calls", json!("yes")), Some("parallel_tool_calls"), "true or false"),
            (with("temperature", json!("hot")), Some("temperature"), "a number"),
            (with("top_p", json!(true)), Some("top_p"), "a number"),
            (with("max_output_tokens", json!(1.5)), Some("max_output_tokens"), "an integer"),
            (with("stop", json!(5)), Some("stop"), "a string or an array of strings"),
            (
                with("reasoning", json!({"effort": "huge"})),
                Some("reasoning.effort"),
                "invalid reasoning value",
            ),
            (with("text", json!("json")), Some("text"), "an object"),
            (with("text", json!({"format": {"type": "xml"}})), Some("text.format.type"), "unsupported"),
            (
                with("text", json!({"format": {"type": "json_schema", "name": "x"}})),
                Some("text.format.schema"),
                "a JSON schema object",
            ),
        ];
        testkit::assert_refusals(cases, rejected);
    }

    /// Shaped like what Codex CLI sends (see the captures' README), with our own texts.
    #[test]
    fn codex_shaped_requests_translate() {
        let tools = json!([
            {"type": "function", "name": "exec_command", "description": "Runs a command.", "strict": false,
             "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"],
                            "additionalProperties": false}},
            {"type": "namespace", "name": "helpers_v1", "description": "Helper agents.", "tools": [
                {"type": "function", "name": "start_helper", "description": "Starts a helper.", "strict": false,
                 "parameters": {"type": "object", "properties": {"task": {"type": "string"}},
                                "required": ["task"], "additionalProperties": false}}]},
            {"type": "function", "name": "get_plan", "description": "Shows the plan.", "strict": false,
             "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": false}},
            {"type": "web_search", "external_web_access": false},
        ]);
        let first = json!({
            "model": "qwen3:8b", "stream": true, "tool_choice": "auto", "parallel_tool_calls": true,
            "reasoning": {"summary": "auto"}, "store": false, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "cache-1", "client_metadata": {"session_id": "s-1"}, "tools": tools,
            "input": [
                {"type": "message", "id": "msg_a", "role": "developer",
                 "content": [{"type": "input_text", "text": "You are a test agent.\n"}]},
                {"type": "message", "id": "msg_b", "role": "developer", "content": [
                    {"type": "input_text", "text": "<rules>\nBe brief.\n</rules>\n"},
                    {"type": "input_text", "text": "<sandbox>\nread-only\n</sandbox>\n"}]},
                {"type": "message", "id": "msg_c", "role": "user",
                 "content": [{"type": "input_text", "text": "<env>\n  <cwd>/tmp/x</cwd>\n</env>"}]},
                {"type": "message", "id": "msg_d", "role": "user",
                 "content": [{"type": "input_text", "text": "List the files."}]},
            ],
        });
        let req = translated(first.clone());
        assert!(req.stream);
        assert_eq!(req.dropped_tools, ["web_search"]);
        assert_eq!(req.tool_names.resolve("helpers_v1__start_helper"), Some(("helpers_v1", "start_helper")));
        let names: Vec<&Value> =
            req.native["tools"].as_array().unwrap().iter().map(|t| &t["function"]["name"]).collect();
        assert_eq!(names, [&json!("exec_command"), &json!("helpers_v1__start_helper"), &json!("get_plan")]);
        assert_eq!(req.native.get("think"), None);
        eq_json(
            &req.native["messages"],
            &json!([
                {"role": "system", "content": "You are a test agent.\n"},
                {"role": "system", "content": "<rules>\nBe brief.\n</rules>\n<sandbox>\nread-only\n</sandbox>\n"},
                {"role": "user", "content": "<env>\n  <cwd>/tmp/x</cwd>\n</env>"},
                {"role": "user", "content": "List the files."},
            ]),
        );
        assert_eq!(req.echo["reasoning"], json!({"effort": null, "summary": "auto"}));

        // The follow-up resends everything, plus the call and its output.
        let mut followup = first;
        let input = followup["input"].as_array_mut().unwrap();
        input.push(
            json!({"type": "function_call", "status": "completed", "id": "fc_1", "name": "exec_command",
                          "arguments": "{\"cmd\": \"ls\"}", "call_id": "call_t1"}),
        );
        input.push(json!({"type": "function_call_output", "id": "fco_1", "call_id": "call_t1",
                          "output": "Exit code: 0\nOutput:\na.txt\n"}));
        let messages = translated(followup).native["messages"].as_array().unwrap().clone();
        eq_json(
            &Value::Array(messages[4..].to_vec()),
            &json!([
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_t1", "function": {"name": "exec_command", "arguments": {"cmd": "ls"}}}]},
                {"role": "tool", "content": "Exit code: 0\nOutput:\na.txt\n", "tool_name": "exec_command",
                 "tool_call_id": "call_t1"},
            ]),
        );
    }
}
