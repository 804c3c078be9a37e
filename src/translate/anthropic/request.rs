//! The request: an Anthropic Messages body as a native `/api/chat` body.
//!
//! Top-level fields, options, tools and `tool_choice`, and thinking; messages and their
//! blocks are `content`'s. `metadata`, `context_management`, `service_tier`, `container`,
//! `mcp_servers` and other unknown fields are accepted and ignored; JSON `null` counts as
//! absent.

use super::content::{one_of, push_message, system_text};
use super::tokens::count_tokens;
use crate::error::ApiError;
use crate::translate::fields::{
    expected, field, join, message_list, object_and_model, opt_bool, opt_integer, opt_number, opt_str,
};
use serde_json::{json, Map, Value};

/// What `model` must be, in errors.
pub(super) const MODEL: &str = "the name of a model, such as \"qwen3-coder\"";

/// A validated Messages request, translated for upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesRequest {
    /// The body for `POST /api/chat`.
    pub native: Value,
    /// The model asked for, as sent by the client.
    pub model: String,
    /// The client's `stream` (default `false`); also sent explicitly upstream.
    pub stream: bool,
    /// [`count_tokens`]'s estimate of the input, which a stream's `message_start` reports
    /// (upstream's real count comes only with the last line, in `message_delta`).
    pub input_estimate: u64,
}

/// Validates an Anthropic Messages request and translates it into a native `/api/chat`
/// body.
///
/// Wrong types give a 400 whose `param` is the path of the field at fault
/// (`messages[2].content[0].source`, `max_tokens`, ...); `max_tokens` is required, as
/// Anthropic requires it. Server tools (typed tools such as `web_search_20250305`) are
/// dropped with a debug line: the gateway runs none.
pub fn to_ollama(body: &Value) -> Result<MessagesRequest, ApiError> {
    let (req, model) = object_and_model(body, MODEL)?;
    let max_tokens = match field(req, "max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.clone(),
        None => {
            return Err(ApiError::bad_request(
                "max_tokens is required: the most tokens the reply may have, such as 1024",
                Some("max_tokens"),
            ))
        }
        other => return Err(expected("max_tokens", "a positive integer such as 1024", other)),
    };
    let stream = opt_bool(req, "", "stream")?.unwrap_or(false);

    let mut messages = Vec::new();
    if let Some(system) = field(req, "system") {
        if let Some(text) = system_text(system, "system")? {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, message) in message_list(req)?.iter().enumerate() {
        push_message(message, &format!("messages[{i}]"), &mut messages)?;
    }

    let mut options = Map::new();
    options.insert("num_predict".into(), Value::Number(max_tokens));
    for key in ["temperature", "top_p"] {
        if let Some(value) = opt_number(req, key)? {
            options.insert(key.into(), value);
        }
    }
    if let Some(top_k) = opt_integer(req, "", "top_k")? {
        options.insert("top_k".into(), top_k);
    }
    if let Some(stop) = stop_sequences(req)? {
        options.insert("stop".into(), stop);
    }

    let mut native = Map::new();
    native.insert("model".into(), Value::String(model.clone()));
    native.insert("messages".into(), Value::Array(messages));
    native.insert("stream".into(), Value::Bool(stream));
    native.insert("options".into(), Value::Object(options));
    let tools = tools(req)?;
    if !tools.is_empty() {
        native.insert("tools".into(), Value::Array(tools));
    }
    if let Some(think) = think(req)? {
        native.insert("think".into(), think);
    }
    let input_estimate = count_tokens(body).unwrap_or(0);
    Ok(MessagesRequest { native: Value::Object(native), model, stream, input_estimate })
}

/// The body to send again, without `think`, when upstream refused it because the model
/// cannot think (`400 "<model>" does not support thinking`); `None` for any other error.
///
/// Ollama's own Anthropic layer relaxes thinking for such models (Claude Code always asks
/// for it); the native API has no such switch, so the handler retries once without it.
pub fn retry_without_thinking(native: &Value, error: &ApiError) -> Option<Value> {
    if error.status != 400 || !error.message.contains("does not support thinking") {
        return None;
    }
    match native.get("think") {
        None | Some(Value::Bool(false)) => None,
        Some(_) => {
            let mut body = native.clone();
            body.as_object_mut()?.remove("think");
            Some(body)
        }
    }
}

/// `stop_sequences` as native `options.stop`.
fn stop_sequences(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let list = match field(req, "stop_sequences") {
        None => return Ok(None),
        Some(Value::Array(list)) => list,
        other => return Err(expected("stop_sequences", "an array of strings", other)),
    };
    for (i, stop) in list.iter().enumerate() {
        if !stop.is_string() {
            return Err(expected(&format!("stop_sequences[{i}]"), "a string", Some(stop)));
        }
    }
    Ok((!list.is_empty()).then(|| Value::Array(list.clone())))
}

/// `tools` as native function tools, narrowed by `tool_choice`.
///
/// `auto` and `any` keep every tool (Ollama cannot force a call), `tool` keeps only the one
/// named, `none` sends none. `disable_parallel_tool_use` is ignored.
fn tools(req: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let mut tools = Vec::new();
    match field(req, "tools") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, tool) in list.iter().enumerate() {
                if let Some(tool) = native_tool(tool, &format!("tools[{i}]"))? {
                    tools.push(tool);
                }
            }
        }
        other => return Err(expected("tools", "an array of tool definitions", other)),
    }
    let choice = match field(req, "tool_choice") {
        None => return Ok(tools),
        Some(Value::Object(choice)) => choice,
        other => return Err(expected("tool_choice", "an object such as {\"type\":\"auto\"}", other)),
    };
    match field(choice, "type").and_then(Value::as_str) {
        Some("auto" | "any") => {}
        Some("none") => tools.clear(),
        Some("tool") => {
            let name = match field(choice, "name") {
                Some(Value::String(name)) if !name.is_empty() => name,
                other => return Err(expected("tool_choice.name", "the name of one of the tools", other)),
            };
            let names: Vec<&str> =
                tools.iter().filter_map(|tool| tool.pointer("/function/name")?.as_str()).collect();
            if !names.contains(&name.as_str()) {
                return Err(ApiError::bad_request(
                    format!("tool_choice.name {name:?} is not one of the tools (have: {})", names.join(", ")),
                    Some("tool_choice.name"),
                ));
            }
            tools.retain(|tool| tool.pointer("/function/name").and_then(Value::as_str) == Some(name));
        }
        _ => {
            return Err(one_of(
                "tool_choice.type",
                "\"auto\", \"any\", \"tool\" or \"none\"",
                field(choice, "type"),
            ))
        }
    }
    Ok(tools)
}

/// One tool definition as a native function tool; `None` for a server tool (any `type`
/// but `custom`), which is dropped. `defer_loading` is ignored: every tool is sent.
fn native_tool(tool: &Value, path: &str) -> Result<Option<Value>, ApiError> {
    let Some(tool) = tool.as_object() else {
        let what = "a tool object such as {\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}";
        return Err(expected(path, what, Some(tool)));
    };
    match opt_str(tool, path, "type")? {
        None | Some("custom") => {}
        Some(kind) => {
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
            log::debug!(
                "anthropic: dropping server tool {name:?} of type {kind:?}: the gateway runs no server tools"
            );
            return Ok(None);
        }
    }
    let name = match field(tool, "name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        other => return Err(expected(&join(path, "name"), "the tool's name", other)),
    };
    let description = opt_str(tool, path, "description")?;
    let schema = match field(tool, "input_schema") {
        None => json!({"type": "object", "properties": {}}),
        Some(schema @ Value::Object(_)) => schema.clone(),
        other => {
            let what = "a JSON Schema object such as {\"type\":\"object\",\"properties\":{}}";
            return Err(expected(&join(path, "input_schema"), what, other));
        }
    };
    let mut function = Map::new();
    function.insert("name".into(), name.clone().into());
    if let Some(description) = description {
        function.insert("description".into(), description.into());
    }
    function.insert("parameters".into(), schema);
    Ok(Some(json!({"type": "function", "function": function})))
}

/// Native `think` from `thinking` and `output_config.effort`.
///
/// `disabled` → `false`; `enabled` → the effort when given, else `true` (`budget_tokens`
/// has no native equivalent); `adaptive` → the effort when given, else nothing (the model
/// decides, which is what a thinking model does without `think`); no `thinking` → the
/// effort when given. Efforts `low`, `medium`, `high`, `max` pass; `xhigh` → `high`.
fn think(req: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    let efforts = "\"low\", \"medium\", \"high\", \"xhigh\" or \"max\"";
    let effort = match field(req, "output_config") {
        None => None,
        Some(Value::Object(config)) => match field(config, "effort") {
            None => None,
            Some(Value::String(effort)) => match effort.trim().to_ascii_lowercase().as_str() {
                level @ ("low" | "medium" | "high" | "max") => Some(Value::from(level)),
                "xhigh" => Some(Value::from("high")),
                _ => return Err(one_of("output_config.effort", efforts, config.get("effort"))),
            },
            other => return Err(one_of("output_config.effort", efforts, other)),
        },
        other => return Err(expected("output_config", "an object such as {\"effort\":\"high\"}", other)),
    };
    let thinking = match field(req, "thinking") {
        None => return Ok(effort),
        Some(Value::Object(thinking)) => thinking,
        other => {
            let what = "an object such as {\"type\":\"enabled\",\"budget_tokens\":2048}";
            return Err(expected("thinking", what, other));
        }
    };
    match field(thinking, "type").and_then(Value::as_str) {
        Some("disabled") => Ok(Some(Value::Bool(false))),
        Some("enabled") => {
            opt_integer(thinking, "thinking", "budget_tokens")?;
            Ok(Some(effort.unwrap_or(Value::Bool(true))))
        }
        Some("adaptive") => Ok(effort),
        _ => {
            Err(one_of("thinking.type", "\"enabled\", \"adaptive\" or \"disabled\"", field(thinking, "type")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::{self, eq_json};

    /// A minimal valid request with `extra` fields merged in.
    fn with(extra: Value) -> Value {
        let mut body =
            json!({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    }

    fn native_of(body: Value) -> Value {
        testkit::translated(to_ollama, &body).native
    }

    fn rejected(body: Value) -> ApiError {
        testkit::refused(to_ollama, &body)
    }

    #[test]
    fn minimal_request() {
        let req = to_ollama(&with(json!({}))).unwrap();
        assert_eq!((req.model.as_str(), req.stream), ("m", false));
        assert!(req.input_estimate > 0);
        eq_json(
            &req.native,
            &json!({"model": "m", "stream": false, "options": {"num_predict": 100},
                    "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert!(to_ollama(&with(json!({"stream": true}))).unwrap().stream);
    }

    #[test]
    fn max_tokens_is_required() {
        let mut body = with(json!({}));
        body.as_object_mut().unwrap().remove("max_tokens");
        let err = rejected(body);
        assert_eq!((err.status, err.param.as_deref()), (400, Some("max_tokens")));
        assert!(err.message.starts_with("max_tokens is required"), "{}", err.message);
        for bad in [json!(0), json!(-5), json!(1.5), json!("100"), json!(null)] {
            let err = rejected(with(json!({"max_tokens": bad})));
            assert_eq!(err.param.as_deref(), Some("max_tokens"), "{bad}");
        }
    }

    #[test]
    fn system_string_and_blocks() {
        let native = native_of(with(json!({"system": "Be terse."})));
        eq_json(&native["messages"][0], &json!({"role": "system", "content": "Be terse."}));
        let native = native_of(with(json!({"system": [
            {"type": "text", "text": "You help with code."},
            {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
        ]})));
        eq_json(
            &native["messages"][0],
            &json!({"role": "system", "content": "You help with code.\nAnswer in English."}),
        );
        // Empty systems send no system message.
        for empty in [json!(""), json!([]), json!(null)] {
            let native = native_of(with(json!({"system": empty})));
            assert_eq!(native["messages"][0]["role"], json!("user"), "{empty}");
        }
    }

    #[test]
    fn claude_codes_billing_header_is_dropped() {
        let native = native_of(with(json!({"system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=9.9.9.abc; cch=12345;"},
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
        ]})));
        eq_json(&native["messages"][0], &json!({"role": "system", "content": "You are a coding agent."}));
        let native =
            native_of(with(json!({"system": "x-anthropic-billing-header: cc_version=1; cch=2;\nBe brief."})));
        eq_json(&native["messages"][0], &json!({"role": "system", "content": "Be brief."}));
        // Only a leading header line goes.
        let native = native_of(with(json!({"system": "Quote: x-anthropic-billing-header: a"})));
        assert_eq!(native["messages"][0]["content"], json!("Quote: x-anthropic-billing-header: a"));
    }

    #[test]
    fn options() {
        let native =
            native_of(with(json!({"max_tokens": 32000, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
            "stop_sequences": ["\n\nHuman:", "END"]})));
        eq_json(
            &native["options"],
            &json!({"num_predict": 32000, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
                    "stop": ["\n\nHuman:", "END"]}),
        );
        // No defaults are added: the Modelfile's stand.
        let native = native_of(with(json!({"stop_sequences": [], "temperature": null})));
        eq_json(&native["options"], &json!({"num_predict": 100}));
    }

    #[test]
    fn ignored_fields_are_accepted() {
        let native = native_of(with(json!({
            "metadata": {"user_id": "someone"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "service_tier": "auto", "container": null, "mcp_servers": [], "a_future_field": {"x": 1},
        })));
        eq_json(&native, &native_of(with(json!({}))));
    }

    #[test]
    fn tools_with_input_schema() {
        let schema = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false});
        let native = native_of(with(json!({"tools": [
            {"name": "get_weather", "description": "Weather for a city", "input_schema": schema},
            {"type": "custom", "name": "noop", "input_schema": {"type": "object", "properties": {}},
             "cache_control": {"type": "ephemeral"}},
            {"name": "later", "description": "Deferred", "defer_loading": true},
        ]})));
        eq_json(
            &native["tools"],
            &json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": schema}},
                {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
                {"type": "function", "function": {"name": "later", "description": "Deferred",
                    "parameters": {"type": "object", "properties": {}}}},
            ]),
        );
    }

    #[test]
    fn server_tools_are_dropped() {
        let native = native_of(with(json!({"tools": [
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            {"type": "bash_20250124", "name": "bash"},
            {"name": "read_file", "input_schema": {"type": "object"}},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        ]})));
        let names: Vec<&Value> =
            native["tools"].as_array().unwrap().iter().map(|t| &t["function"]["name"]).collect();
        assert_eq!(names, [&json!("read_file")]);
        // Only server tools: no `tools` at all.
        let native =
            native_of(with(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})));
        assert_eq!(native.get("tools"), None);
    }

    #[test]
    fn tool_choice_table() {
        let tools = json!([{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "input_schema": {"type": "object"}}]);
        let cases = [
            (json!({"type": "auto"}), Some(vec!["a", "b"])),
            (json!({"type": "any", "disable_parallel_tool_use": true}), Some(vec!["a", "b"])),
            (json!({"type": "tool", "name": "b"}), Some(vec!["b"])),
            (json!({"type": "none"}), None),
        ];
        for (choice, want) in cases {
            let native = native_of(with(json!({"tools": tools, "tool_choice": choice})));
            let names: Option<Vec<&str>> = native.get("tools").map(|tools| {
                tools.as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect()
            });
            assert_eq!(names, want, "{choice}");
        }
        let err = rejected(with(json!({"tools": tools, "tool_choice": {"type": "tool", "name": "c"}})));
        assert_eq!(err.param.as_deref(), Some("tool_choice.name"));
        assert!(err.message.contains("(have: a, b)"), "{}", err.message);
        let err = rejected(with(json!({"tools": tools, "tool_choice": {"type": "required"}})));
        assert_eq!(err.param.as_deref(), Some("tool_choice.type"));
        assert!(err.message.contains(r#"got "required""#), "{}", err.message);
        let err = rejected(with(json!({"tool_choice": "auto"})));
        assert_eq!(err.param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn thinking_and_effort_table() {
        let cases = [
            (json!({}), None),
            (json!({"thinking": {"type": "enabled", "budget_tokens": 4096}}), Some(json!(true))),
            (
                json!({"thinking": {"type": "enabled", "budget_tokens": 4096}, "output_config": {"effort": "low"}}),
                Some(json!("low")),
            ),
            (json!({"thinking": {"type": "adaptive"}}), None),
            (
                json!({"thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "high"}}),
                Some(json!("high")),
            ),
            (
                json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}}),
                Some(json!("high")),
            ),
            (
                json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}),
                Some(json!("max")),
            ),
            (json!({"thinking": {"type": "disabled"}}), Some(json!(false))),
            (
                json!({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}),
                Some(json!(false)),
            ),
            (json!({"output_config": {"effort": "Medium"}}), Some(json!("medium"))),
            (json!({"output_config": {}}), None),
        ];
        for (fields, want) in cases {
            assert_eq!(native_of(with(fields.clone())).get("think").cloned(), want, "{fields}");
        }
        let bad = [
            (json!({"thinking": {"type": "on"}}), "thinking.type"),
            (json!({"thinking": {}}), "thinking.type"),
            (json!({"thinking": true}), "thinking"),
            (json!({"thinking": {"type": "enabled", "budget_tokens": "lots"}}), "thinking.budget_tokens"),
            (json!({"output_config": {"effort": "extreme"}}), "output_config.effort"),
            (json!({"output_config": {"effort": 3}}), "output_config.effort"),
            (json!({"output_config": "high"}), "output_config"),
        ];
        for (fields, param) in bad {
            assert_eq!(rejected(with(fields.clone())).param.as_deref(), Some(param), "{fields}");
        }
    }

    #[test]
    fn a_model_that_cannot_think_is_asked_again_without_think() {
        let native =
            native_of(with(json!({"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}})));
        let refused = ApiError::from_upstream(400, br#"{"error":"\"llama3.2\" does not support thinking"}"#);
        let again = retry_without_thinking(&native, &refused).unwrap();
        assert_eq!(again.get("think"), None);
        assert_eq!(again["messages"], native["messages"]);
        // Other errors, or nothing to drop: no retry.
        let other = ApiError::from_upstream(400, br#"{"error":"model is required"}"#);
        assert_eq!(retry_without_thinking(&native, &other), None);
        let not_found = ApiError::from_upstream(404, br#"{"error":"does not support thinking"}"#);
        assert_eq!(retry_without_thinking(&native, &not_found), None);
        assert_eq!(retry_without_thinking(&native_of(with(json!({}))), &refused), None);
        let disabled = native_of(with(json!({"thinking": {"type": "disabled"}})));
        assert_eq!(retry_without_thinking(&disabled, &refused), None);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!([1]), None, "must be a JSON object"),
            (
                json!({"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
                Some("model"),
                "name of a model",
            ),
            (with(json!({"model": ""})), Some("model"), "empty string"),
            (with(json!({"messages": []})), Some("messages"), "non-empty array"),
            (with(json!({"messages": "hi"})), Some("messages"), "got a string"),
            (with(json!({"stream": "yes"})), Some("stream"), "true or false"),
            (with(json!({"temperature": "hot"})), Some("temperature"), "a number"),
            (with(json!({"top_p": []})), Some("top_p"), "a number"),
            (with(json!({"top_k": 1.5})), Some("top_k"), "an integer"),
            (with(json!({"stop_sequences": "END"})), Some("stop_sequences"), "an array of strings"),
            (with(json!({"stop_sequences": ["a", 1]})), Some("stop_sequences[1]"), "a string"),
            (with(json!({"system": 5})), Some("system"), "a string or an array of text blocks"),
            (with(json!({"system": ["x"]})), Some("system[0]"), "a text block"),
            (with(json!({"system": [{"type": "image"}]})), Some("system[0].type"), "got \"image\""),
            (with(json!({"system": [{"type": "text", "text": 1}]})), Some("system[0].text"), "a string"),
            (with(json!({"tools": {}})), Some("tools"), "an array"),
            (with(json!({"tools": ["x"]})), Some("tools[0]"), "a tool object"),
            (with(json!({"tools": [{"input_schema": {}}]})), Some("tools[0].name"), "the tool's name"),
            (
                with(json!({"tools": [{"name": "f", "input_schema": "{}"}]})),
                Some("tools[0].input_schema"),
                "JSON Schema",
            ),
            (
                with(json!({"tools": [{"name": "f", "description": 1}]})),
                Some("tools[0].description"),
                "a string",
            ),
            (with(json!({"tools": [{"name": "f", "type": 1}]})), Some("tools[0].type"), "a string"),
        ];
        testkit::assert_refusals(cases, rejected);
    }

    /// Claude Code's request shape (from `claude-messages-request.json` and its tool
    /// follow-up), with texts of our own.
    #[test]
    fn claude_code_request_shape() {
        let body = json!({
            "model": "qwen3-coder",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>\nProject notes.\n</system-reminder>"},
                    {"type": "text", "text": "List the files."},
                ]},
                {"role": "system", "content": [
                    {"type": "text", "text": "# Environment\nWorking directory: /tmp/x", "cache_control": {"type": "ephemeral"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Use the shell.", "signature": "b2xsYW1hLWdhdGV3YXk="},
                    {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls", "description": "List files"}},
                ]},
                {"role": "user", "content": [
                    {"tool_use_id": "toolu_01", "type": "tool_result", "content": "a.txt\nb.txt", "is_error": false,
                     "cache_control": {"type": "ephemeral"}},
                ]},
            ],
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.0.0.abc; cc_entrypoint=sdk-cli;"},
                {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "\nBe careful.", "cache_control": {"type": "ephemeral"}},
            ],
            "tools": [
                {"name": "Bash", "description": "Runs a command.", "input_schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                    "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
                    "required": ["command"], "additionalProperties": false}},
                {"name": "Placeholder", "description": "Never call this.", "input_schema": {"type": "object", "properties": {}},
                 "defer_loading": true},
            ],
            "metadata": {"user_id": "opaque"},
            "max_tokens": 32000,
            "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "output_config": {"effort": "high"},
            "stream": true,
        });
        let req = to_ollama(&body).unwrap();
        assert_eq!((req.model.as_str(), req.stream), ("qwen3-coder", true));
        let native = &req.native;
        assert_eq!(native["think"], json!("high"));
        eq_json(&native["options"], &json!({"num_predict": 32000}));
        assert_eq!(native["tools"].as_array().unwrap().len(), 2);
        eq_json(
            &native["messages"],
            &json!([
                {"role": "system", "content": "You are a coding agent.\n\nBe careful."},
                {"role": "user", "content": "<system-reminder>\nProject notes.\n</system-reminder>\nList the files."},
                {"role": "system", "content": "# Environment\nWorking directory: /tmp/x"},
                {"role": "assistant", "content": "", "thinking": "Use the shell.",
                 "tool_calls": [{"id": "toolu_01", "function": {"name": "Bash", "arguments": {"command": "ls", "description": "List files"}}}]},
                {"role": "tool", "content": "a.txt\nb.txt", "tool_name": "Bash", "tool_call_id": "toolu_01"},
            ]),
        );
    }
}
