//! Model listing: OpenAI `/v1/models` and `/v1/models/{id}` <- Ollama `/api/tags` and
//! `/api/show`.
//!
//! [`ids_from_tags`] reads an `/api/tags` reply, [`list`] builds the `/v1/models` answer,
//! [`show_request`] and [`from_show`] do the same for one model, and [`owned_by`] derives
//! the owner from the namespace of an Ollama model name (spec `openai-ollama.md` §7, with
//! §11 item 8: an empty list is `[]` and a missing `modified_at` is `created: 0`).
//!
//! In scope: the shapes of the model objects and of the list, and the `owned_by` rule.
//! Out of scope: IO, which models a token may see (callers filter the ids), merging lists
//! from several pools, and the 404 for an unknown model (an upstream error, see `errors`).

use super::rfc3339_to_unix;
use serde_json::{json, Value};

/// The namespace of an Ollama model name `[host/][namespace/]model[:tag]`, or `library`
/// when it has none: `hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M` gives `bartowski`.
pub fn owned_by(name: &str) -> String {
    let mut segments = name.rsplit('/');
    segments.next(); // The model and its tag.
    match segments.next() {
        Some(namespace) if !namespace.is_empty() => namespace.to_string(),
        _ => "library".to_string(),
    }
}

/// One OpenAI model object: `{"id","object":"model","created","owned_by"}`.
pub fn model_object(id: &str, created: i64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by(id)})
}

/// The `(id, created)` of each model of an `/api/tags` reply, in upstream order: the id is
/// `model`, else `name`; `created` is the Unix time of `modified_at`, else 0. Entries with
/// neither name are skipped; a reply without a `models` array gives no models.
pub fn ids_from_tags(tags: &Value) -> Vec<(String, i64)> {
    let Some(models) = tags.get("models").and_then(Value::as_array) else {
        return Vec::new();
    };
    models
        .iter()
        .filter_map(|entry| {
            let id = ["model", "name"]
                .iter()
                .filter_map(|key| entry.get(key).and_then(Value::as_str))
                .find(|id| !id.is_empty())?;
            Some((id.to_string(), created(entry)))
        })
        .collect()
}

/// The `/v1/models` answer: `{"object":"list","data":[…]}`, with `data` always an array.
pub fn list(models: &[(String, i64)]) -> Value {
    let data: Vec<Value> = models.iter().map(|(id, created)| model_object(id, *created)).collect();
    json!({"object": "list", "data": data})
}

/// The `/v1/models/{id}` answer from an `/api/show` reply: `id` verbatim, `created` from
/// `modified_at` (0 when absent).
pub fn from_show(id: &str, show: &Value) -> Value {
    model_object(id, created(show))
}

/// The body of `POST /api/show` for one model id.
pub fn show_request(id: &str) -> Value {
    json!({"model": id})
}

/// Unix seconds of an object's `modified_at`, 0 when absent or unreadable.
fn created(object: &Value) -> i64 {
    object.get("modified_at").and_then(Value::as_str).and_then(rfc3339_to_unix).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::eq_json;

    /// Mirror type of a model object, with no room for stray fields.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Fields exist to be checked by serde, not read.
    struct Model {
        id: String,
        object: String,
        created: i64,
        owned_by: String,
    }

    #[test]
    fn owned_by_is_the_namespace() {
        let cases = [
            ("llama3.2:latest", "library"),
            ("namespace/exposed-model:latest", "namespace"),
            ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "bartowski"),
            ("gpt-oss:120b-cloud", "library"),
            ("registry.example.com:5000/team/model:v1", "team"),
            ("llama3.2", "library"),
            ("/model", "library"),
            ("", "library"),
        ];
        for (name, want) in cases {
            assert_eq!(owned_by(name), want, "{name}");
        }
    }

    #[test]
    fn ids_from_tags_in_upstream_order() {
        let tags = json!({"models": [
            {"name": "llama3.2:latest", "model": "llama3.2:latest", "modified_at": "2023-11-14T22:13:20.5-00:00",
             "size": 2019393189_u64, "digest": "a80c4f17", "details": {"family": "llama"}},
            {"name": "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "modified_at": "2023-11-14T23:13:20+01:00"},
            {"name": "only-name", "model": "", "modified_at": "not a date"},
            {"model": "namespace/exposed-model:latest"},
            {"size": 1},
        ]});
        assert_eq!(
            ids_from_tags(&tags),
            [
                ("llama3.2:latest".to_string(), 1_700_000_000),
                ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M".to_string(), 1_700_000_000),
                ("only-name".to_string(), 0),
                ("namespace/exposed-model:latest".to_string(), 0),
            ]
        );
        for empty in [json!({"models": []}), json!({"models": null}), json!({}), json!([])] {
            assert!(ids_from_tags(&empty).is_empty(), "{empty}");
        }
    }

    #[test]
    fn list_is_always_an_array() {
        eq_json(&list(&[]), &json!({"object": "list", "data": []}));
        let got = list(&[("llama3.2:latest".into(), 1_700_000_000), ("hf.co/bartowski/x:Q4".into(), 0)]);
        eq_json(
            &got,
            &json!({"object": "list", "data": [
                {"id": "llama3.2:latest", "object": "model", "created": 1700000000, "owned_by": "library"},
                {"id": "hf.co/bartowski/x:Q4", "object": "model", "created": 0, "owned_by": "bartowski"},
            ]}),
        );
        for model in got["data"].as_array().unwrap() {
            let _strict: Model = serde_json::from_value(model.clone()).unwrap();
        }
    }

    #[test]
    fn one_model_from_show() {
        let show = json!({"modelfile": "FROM x", "details": {"family": "llama"}, "modified_at": "2023-11-14T22:13:20Z"});
        let id = "namespace/exposed-model:latest";
        let got = from_show(id, &show);
        eq_json(&got, &json!({"id": id, "object": "model", "created": 1700000000, "owned_by": "namespace"}));
        let _strict: Model = serde_json::from_value(got).unwrap();
        // Without modified_at: 0, not Go's zero time.
        eq_json(
            &from_show("llama3.2", &json!({"details": {}})),
            &json!({"id": "llama3.2", "object": "model", "created": 0, "owned_by": "library"}),
        );
        eq_json(
            &model_object("m:7b", 5),
            &json!({"id": "m:7b", "object": "model", "created": 5, "owned_by": "library"}),
        );
        eq_json(&show_request("hf.co/bartowski/x:Q4"), &json!({"model": "hf.co/bartowski/x:Q4"}));
    }
}
