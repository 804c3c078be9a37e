//! The non-streaming reply: a native `/api/chat` object as an Anthropic `message`.
//!
//! Content blocks come in the order the model produced them in Ollama: thinking, text,
//! then one `tool_use` block per tool call.

use super::{stop_reason, tool_use_parts, usage_json, MessageContext, THINKING_SIGNATURE};
use crate::translate::reply::{message_text, native_tool_calls};
use serde_json::{json, Value};

/// Non-streaming: an upstream `/api/chat` reply (`stream:false`) as a `message` object.
pub fn from_ollama(native: &Value, ctx: &MessageContext) -> Value {
    let text = |key: &str| message_text(native, key);
    let mut content = Vec::new();
    if !text("thinking").is_empty() {
        content
            .push(json!({"type": "thinking", "thinking": text("thinking"), "signature": THINKING_SIGNATURE}));
    }
    if !text("content").is_empty() {
        content.push(json!({"type": "text", "text": text("content")}));
    }
    let calls = native_tool_calls(native);
    for call in calls {
        let (id, name, input) = tool_use_parts(call);
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    json!({
        "id": ctx.id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason(native, !calls.is_empty()),
        "stop_sequence": null,
        "usage": usage_json(native),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{ctx, strict};
    use super::*;
    use crate::translate::testkit::eq_json;

    fn reply(native: Value) -> Value {
        let reply = from_ollama(&native, &ctx());
        let _strict: strict::Message<strict::Block, String> =
            serde_json::from_value(reply.clone()).unwrap_or_else(|e| panic!("bad reply {reply}: {e}"));
        reply
    }

    #[test]
    fn text_reply() {
        let native = json!({"model": "qwen3:8b", "created_at": "2023-11-14T22:13:20Z",
            "message": {"role": "assistant", "content": "Hello there."},
            "done": true, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 4});
        eq_json(
            &reply(native),
            &json!({"id": "msg_7", "type": "message", "role": "assistant", "model": "asked-for",
                "content": [{"type": "text", "text": "Hello there."}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 26, "output_tokens": 4, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}}),
        );
    }

    #[test]
    fn thinking_then_text() {
        let native = json!({"model": "m", "done": true, "done_reason": "stop",
            "message": {"role": "assistant", "content": "Four.", "thinking": "2+2 is 4."}});
        eq_json(
            &reply(native)["content"],
            &json!([{"type": "thinking", "thinking": "2+2 is 4.", "signature": THINKING_SIGNATURE},
                    {"type": "text", "text": "Four."}]),
        );
    }

    #[test]
    fn tool_use_with_synthesized_ids() {
        let native = json!({"model": "m", "done": true, "done_reason": "stop", "prompt_eval_count": 50, "eval_count": 9,
        "message": {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_abc12345", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"function": {"index": 1, "name": "get_time", "arguments": {}}},
            {"id": "", "function": {"name": "stringly", "arguments": "{\"n\":1}"}},
        ]}});
        let mut reply = reply(native);
        assert_eq!(reply["stop_reason"], json!("tool_use"));
        let blocks = reply["content"].as_array_mut().unwrap();
        let (first, second) = (blocks[2]["id"].as_str().unwrap(), blocks[3]["id"].as_str().unwrap());
        assert!(first.starts_with("toolu_") && first.len() == 30, "{first}");
        assert!(second.starts_with("toolu_") && second != first, "{second}");
        blocks[2]["id"] = json!("synth1");
        blocks[3]["id"] = json!("synth2");
        eq_json(
            &reply["content"],
            &json!([
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_abc12345", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "synth1", "name": "get_time", "input": {}},
                {"type": "tool_use", "id": "synth2", "name": "stringly", "input": {"n": 1}},
            ]),
        );
    }

    #[test]
    fn max_tokens_cut_and_usage() {
        let native = json!({"model": "m", "done": true, "done_reason": "length",
            "message": {"role": "assistant", "content": "The list: one, two,"},
            "prompt_eval_count": 120, "prompt_eval_cached_count": 100, "eval_count": 8});
        let reply = reply(native);
        assert_eq!(reply["stop_reason"], json!("max_tokens"));
        eq_json(
            &reply["usage"],
            &json!({"input_tokens": 20, "output_tokens": 8, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 100}),
        );
        // A call cut short is still a cut: `length` is never relabelled.
        let native = json!({"done": true, "done_reason": "length",
            "message": {"content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}});
        assert_eq!(from_ollama(&native, &ctx())["stop_reason"], json!("max_tokens"));
    }

    #[test]
    fn empty_reply_has_no_blocks() {
        let reply =
            reply(json!({"model": "m", "done": true, "message": {"role": "assistant", "content": ""}}));
        assert_eq!(reply["content"], json!([]));
        assert_eq!(reply["stop_reason"], json!("end_turn"));
    }
}
