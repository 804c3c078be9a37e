//! `count_tokens`: a local, quick estimate of a request's input tokens.
//!
//! No model is asked (that would load it and spend an upstream key's quota), so the count
//! is an estimate of what the model will see, not a tokenizer's exact answer.

use super::content::{one_of, typed_block};
use super::request::MODEL;
use crate::error::ApiError;
use crate::translate::fields::{expected, field, join, message_list, message_object, object_and_model};
use serde_json::{Map, Value};

/// Bytes of UTF-8 text per token: about four characters of English or code.
const BYTES_PER_TOKEN: u64 = 4;

/// Tokens per image: about what Anthropic charges for a large image (1.15 megapixels),
/// and more than most Ollama vision models spend, so context budgets stay safe.
const IMAGE_TOKENS: u64 = 1_600;

/// Tokens per message, and for the system prompt: the chat template's role markers.
const MESSAGE_TOKENS: u64 = 4;

/// Estimates the input tokens of a Messages (or `count_tokens`) request.
///
/// The method: the UTF-8 bytes of every text the model is given are added up — the system
/// prompt, each message's text, thinking and documents, each `tool_use` name and input (as
/// compact JSON), each `tool_result`'s content, and each custom tool's name, description and
/// `input_schema` (compact JSON) — and divided by 4, rounded up (about four characters a
/// token for English and code). Each message (and the system prompt) adds 4 tokens for its
/// role markers and each image a fixed 1,600. Blocks of other types count the bytes of their
/// JSON. Server tools and redacted thinking count nothing (they are not sent upstream).
/// The estimate is at least 1 and grows with the input.
///
/// Only the shape is checked (the types of `model`, `messages`, their `role` and `content`,
/// each block's `type`, `system` and `tools`); `max_tokens` is not needed, and a well-formed
/// request never fails, even one `/v1/messages` would refuse (an image URL, say).
pub fn count_tokens(body: &Value) -> Result<u64, ApiError> {
    let (req, _) = object_and_model(body, MODEL)?;
    let mut tally = Tally::default();
    if let Some(system) = field(req, "system") {
        tally.messages += 1;
        match system {
            Value::String(text) => tally.text(text),
            Value::Array(blocks) => tally.blocks(blocks, "system")?,
            other => return Err(expected("system", "a string or an array of text blocks", Some(other))),
        }
    }
    for (i, message) in message_list(req)?.iter().enumerate() {
        let path = format!("messages[{i}]");
        let message = message_object(message, &path)?;
        match field(message, "role") {
            Some(Value::String(_)) => {}
            other => {
                return Err(one_of(&join(&path, "role"), "\"user\", \"assistant\" or \"system\"", other))
            }
        }
        tally.messages += 1;
        match field(message, "content") {
            Some(Value::String(text)) => tally.text(text),
            Some(Value::Array(blocks)) => tally.blocks(blocks, &join(&path, "content"))?,
            other => {
                return Err(expected(
                    &join(&path, "content"),
                    "a string or an array of content blocks",
                    other,
                ))
            }
        }
    }
    match field(req, "tools") {
        None => {}
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                match tool.as_object() {
                    Some(tool) => tally.tool(tool),
                    None => return Err(expected(&format!("tools[{i}]"), "a tool object", Some(tool))),
                }
            }
        }
        other => return Err(expected("tools", "an array of tool definitions", other)),
    }
    Ok(tally.tokens())
}

/// What the estimate adds up.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    images: u64,
    messages: u64,
}

impl Tally {
    fn tokens(&self) -> u64 {
        let tokens = self.bytes.div_ceil(BYTES_PER_TOKEN)
            + self.messages * MESSAGE_TOKENS
            + self.images * IMAGE_TOKENS;
        tokens.max(1)
    }

    fn text(&mut self, text: &str) {
        self.bytes += text.len() as u64;
    }

    /// The compact JSON of a value.
    fn json(&mut self, value: &Value) {
        self.bytes += value.to_string().len() as u64;
    }

    /// A string field's text, if it is a string.
    fn text_of(&mut self, obj: &Map<String, Value>, key: &str) {
        if let Some(Value::String(text)) = obj.get(key) {
            self.text(text);
        }
    }

    fn blocks(&mut self, blocks: &[Value], path: &str) -> Result<(), ApiError> {
        for (j, block) in blocks.iter().enumerate() {
            let path = format!("{path}[{j}]");
            let (kind, obj) = typed_block(block, &path)?;
            match kind {
                "text" => self.text_of(obj, "text"),
                "thinking" => self.text_of(obj, "thinking"),
                "redacted_thinking" => {}
                "image" => self.images += 1,
                "tool_use" => {
                    self.text_of(obj, "name");
                    if let Some(input) = obj.get("input") {
                        self.json(input);
                    }
                }
                "tool_result" => match obj.get("content") {
                    Some(Value::String(text)) => self.text(text),
                    Some(Value::Array(inner)) => self.blocks(inner, &join(&path, "content"))?,
                    Some(other) => self.json(other),
                    None => {}
                },
                "document" => match obj.get("source").and_then(|source| source.get("data")) {
                    Some(Value::String(text)) => self.text(text),
                    _ => self.json(block),
                },
                _ => self.json(block),
            }
        }
        Ok(())
    }

    /// A custom tool's name, description and schema; server tools are not sent upstream.
    fn tool(&mut self, tool: &Map<String, Value>) {
        match tool.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "custom" => {}
            Some(_) => return,
        }
        self.text_of(tool, "name");
        self.text_of(tool, "description");
        if let Some(schema) = tool.get("input_schema") {
            self.json(schema);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count(body: Value) -> u64 {
        count_tokens(&body).unwrap_or_else(|e| panic!("count failed: {e}\nbody: {body}"))
    }

    fn says(content: Value) -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": content}]})
    }

    #[test]
    fn four_bytes_a_token_plus_role_markers() {
        // 12 bytes → 3 tokens, plus 4 for the message.
        assert_eq!(count(says(json!("Hello world!"))), 7);
        assert_eq!(count(says(json!("Hello world!!"))), 8);
        // A system prompt counts like a message.
        let mut body = says(json!("Hello world!"));
        body["system"] = json!("Be terse.");
        assert_eq!(count(body), 7 + 4 + 3);
        // Never 0.
        assert_eq!(count(json!({"model": "m", "messages": [{"role": "user", "content": []}]})), 4);
    }

    #[test]
    fn grows_with_the_input() {
        let mut last = 0;
        for n in [1, 10, 100, 1000] {
            let tokens = count(says(json!("word ".repeat(n))));
            assert!(tokens > last, "{n} words: {tokens} <= {last}");
            last = tokens;
        }
        let one = count(says(json!("abc")));
        let two = count(json!({"model": "m", "messages": [
            {"role": "user", "content": "abc"}, {"role": "assistant", "content": "abc"}]}));
        assert!(two > one);
    }

    #[test]
    fn images_add_a_fixed_cost() {
        let text = count(says(json!([{"type": "text", "text": "What is this?"}])));
        let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}});
        let one = count(says(json!([{"type": "text", "text": "What is this?"}, image])));
        let two = count(says(json!([{"type": "text", "text": "What is this?"}, image, image])));
        assert_eq!((one - text, two - one), (IMAGE_TOKENS, IMAGE_TOKENS));
        // A big image costs the same as a small one; a URL image counts too.
        let big = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(40_000)}});
        assert_eq!(count(says(json!([{"type": "text", "text": "What is this?"}, big]))), one);
        let url = json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}});
        assert_eq!(count(says(json!([{"type": "text", "text": "What is this?"}, url]))), one);
    }

    #[test]
    fn tools_count() {
        let bare = count(says(json!("hi")));
        let mut body = says(json!("hi"));
        body["tools"] = json!([{"name": "get_weather", "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
        let with_tool = count(body.clone());
        assert!(with_tool > bare + 10, "{with_tool} vs {bare}");
        body["tools"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "web_search_20250305", "name": "web_search"}));
        assert_eq!(count(body), with_tool, "server tools are not sent upstream");
    }

    #[test]
    fn every_block_type_counts() {
        let bare = count(says(json!([])));
        let blocks = [
            json!({"type": "text", "text": "some words here"}),
            json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a document"}}),
            json!({"type": "tool_result", "tool_use_id": "t", "content": "output of the tool"}),
            json!({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "nested output"}]}),
            json!({"type": "search_result", "source": "s", "title": "t", "content": []}),
        ];
        for block in blocks {
            assert!(count(says(json!([block]))) > bare, "{block}");
        }
        let assistant =
            |block: Value| json!({"model": "m", "messages": [{"role": "assistant", "content": [block]}]});
        for block in [
            json!({"type": "thinking", "thinking": "a long thought", "signature": "sig"}),
            json!({"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": "ls -la"}}),
        ] {
            assert!(count(assistant(block.clone())) > bare, "{block}");
        }
        assert_eq!(
            count(assistant(json!({"type": "redacted_thinking", "data": "opaque".repeat(100)}))),
            bare
        );
    }

    #[test]
    fn never_fails_on_well_formed_requests() {
        // What /v1/messages would refuse, or needs, is fine here.
        let bodies = [
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
                   "messages": [{"role": "system", "content": "inline"}, {"role": "user", "content": [
                       {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                       {"type": "some_future_block", "x": 1}]}],
                   "tools": [{"name": "f"}], "tool_choice": {"type": "tool", "name": "nope"},
                   "thinking": {"type": "adaptive"}, "output_config": {"effort": "unheard-of"}}),
        ];
        for body in bodies {
            assert!(count(body) >= 1);
        }
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let cases = [
            (json!("x"), None),
            (json!({"messages": [{"role": "user", "content": "hi"}]}), Some("model")),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (json!({"model": "m", "messages": [7]}), Some("messages[0]")),
            (json!({"model": "m", "messages": [{"content": "hi"}]}), Some("messages[0].role")),
            (json!({"model": "m", "messages": [{"role": "user"}]}), Some("messages[0].content")),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [1]}]}),
                Some("messages[0].content[0]"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                Some("messages[0].content[0].type"),
            ),
            (
                json!({"model": "m", "system": 1, "messages": [{"role": "user", "content": "hi"}]}),
                Some("system"),
            ),
            (
                json!({"model": "m", "tools": {}, "messages": [{"role": "user", "content": "hi"}]}),
                Some("tools"),
            ),
            (
                json!({"model": "m", "tools": [1], "messages": [{"role": "user", "content": "hi"}]}),
                Some("tools[0]"),
            ),
        ];
        for (body, param) in cases {
            let err = count_tokens(&body).expect_err(&body.to_string());
            assert_eq!((err.status, err.param.as_deref()), (400, param), "{body}: {}", err.message);
        }
    }
}
