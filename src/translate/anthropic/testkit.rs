//! Test helpers shared by the Anthropic reply tests (`response` and `stream`).
//!
//! Built only for tests: the context both write replies with, and mirror types of what
//! clients decode, with no room for stray fields.

use super::MessageContext;

/// The reply context of the tests: id `msg_7`, reporting model `asked-for`.
pub fn ctx() -> MessageContext {
    MessageContext { id: "msg_7".into(), model: "asked-for".into() }
}

/// Mirror types of a `message` and its parts.
pub mod strict {
    #![allow(dead_code)] // Fields exist to be checked by serde, not read.
    use serde::Deserialize;
    use serde_json::{Map, Value};

    /// A `message` with content `C` and `stop_reason` `R` (a stream's `message_start` has
    /// no content and no stop reason yet).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Message<C, R> {
        id: String,
        r#type: String,
        role: String,
        model: String,
        content: Vec<C>,
        stop_reason: R,
        stop_sequence: Option<String>,
        usage: Usage,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
    pub enum Block {
        Text { text: String },
        Thinking { thinking: String, signature: String },
        ToolUse { id: String, name: String, input: Map<String, Value> },
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Usage {
        input_tokens: u64,
        output_tokens: u64,
        cache_creation_input_tokens: u64,
        cache_read_input_tokens: u64,
    }
}
