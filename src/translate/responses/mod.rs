//! Responses: OpenAI `/v1/responses` <-> Ollama `/api/chat`, stateless as Ollama's own.
//!
//! [`to_ollama`] validates a Responses request (`input` items, `instructions`, `tools`,
//! options) and builds the native `/api/chat` body, with what the reply must echo;
//! [`from_ollama`] turns a native non-streaming reply into a `response` object; and
//! [`ResponsesStream`] turns native NDJSON lines, one at a time, into the Responses SSE
//! events (`event: NAME` + `data: JSON`, with a rising `sequence_number`).
//!
//! In scope: request validation with errors that name the field at fault, input items to
//! native messages, `namespace` tools flattened to `namespace__name` and mapped back
//! ([`ToolNames`]), hosted tools dropped, the response object and its output items, usage,
//! and `response.failed` when upstream breaks mid-stream.
//! Out of scope: IO, the clock and ids (callers pass the `resp_…` id and `created_at` in the
//! [`ResponseContext`]; item ids derive from it), stored responses (`previous_response_id`
//! and `conversation` are refused), running hosted tools, model routing and keys.

mod reply;
mod request;

pub use super::reply::usage_of;
pub use reply::{from_ollama, ResponseContext, ResponsesStream};
pub use request::{to_ollama, ResponsesRequest};

use std::collections::BTreeMap;

/// How namespaced tools are named for the model: `namespace__name` (the way Codex itself
/// flattens namespaces, and a valid OpenAI function name).
const NAMESPACE_SEPARATOR: &str = "__";

/// The flat names given to the functions of `namespace` tools, to map calls back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNames {
    /// Flat name -> (namespace, name inside it).
    namespaced: BTreeMap<String, (String, String)>,
}

impl ToolNames {
    /// The name the model sees for function `name` of `namespace`.
    pub fn flat(namespace: &str, name: &str) -> String {
        let prefix = format!("{namespace}{NAMESPACE_SEPARATOR}");
        if name.starts_with(&prefix) {
            name.to_string()
        } else {
            prefix + name
        }
    }

    /// Records a namespaced function (its name as declared); returns its flat name.
    fn insert(&mut self, namespace: &str, name: &str) -> String {
        let flat = ToolNames::flat(namespace, name);
        self.namespaced.insert(flat.clone(), (namespace.to_string(), name.to_string()));
        flat
    }

    /// The namespace and inner name of a flat name the model called, when it is one of
    /// ours; `None` for plain functions.
    pub fn resolve(&self, flat: &str) -> Option<(&str, &str)> {
        self.namespaced.get(flat).map(|(namespace, name)| (namespace.as_str(), name.as_str()))
    }

    /// Whether no namespaced function was declared.
    pub fn is_empty(&self) -> bool {
        self.namespaced.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_names_flatten_once_and_resolve_back() {
        let mut names = ToolNames::default();
        assert!(names.is_empty());
        assert_eq!(names.insert("agents", "spawn"), "agents__spawn");
        assert_eq!(names.insert("agents", "agents__wait"), "agents__wait");
        assert_eq!(names.resolve("agents__spawn"), Some(("agents", "spawn")));
        // A member declared with the prefix already is called back by its declared name.
        assert_eq!(names.resolve("agents__wait"), Some(("agents", "agents__wait")));
        assert_eq!(names.resolve("spawn"), None);
        assert_eq!(ToolNames::flat("ns", "f"), "ns__f");
    }
}
