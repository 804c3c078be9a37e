//! Embeddings: OpenAI `/v1/embeddings` <-> Ollama `/api/embed`.
//!
//! [`to_ollama`] validates an OpenAI embeddings request and builds the native `/api/embed`
//! body; [`from_ollama`] turns the native reply into an OpenAI `list` of `embedding`
//! objects, as float arrays or as base64 of little-endian float32s ([`base64_f32_le`]).
//! The rules are those of Ollama's own `/v1` layer (spec `openai-ollama.md` §6), with a 502
//! instead of an empty list when upstream sends no embeddings.
//!
//! In scope: request validation with errors that name the field at fault, `encoding_format`,
//! `dimensions`, the response shape and usage, and the base64 packing.
//! Out of scope: IO, model routing and keys. Token-array inputs are forwarded untouched and
//! left to upstream to accept or reject.

use super::fields::{describe, expected, field, object_and_model};
use crate::error::ApiError;
use serde_json::{json, Map, Value};

/// How embedding vectors are returned (`encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// JSON arrays of numbers (the default).
    Float,
    /// Standard base64 of the vector packed as little-endian float32s.
    Base64,
}

/// A validated embeddings request, translated for upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    /// The body for `POST /api/embed`.
    pub native: Value,
    /// The model asked for, as sent by the client; also the reply's `model`.
    pub model: String,
    /// How to return the vectors.
    pub encoding: EncodingFormat,
}

/// Validates an OpenAI embeddings request and translates it into a native `/api/embed`
/// body.
///
/// Wrong types give a 400 whose `param` names the field at fault. Unknown fields (and
/// `user`) are ignored; JSON `null` counts as absent.
pub fn to_ollama(body: &Value) -> Result<EmbeddingRequest, ApiError> {
    let (req, model) = object_and_model(body, "the name of an embedding model, such as \"all-minilm\"")?;
    let input = match field(req, "input") {
        Some(Value::String(text)) if text.is_empty() => json!([""]),
        Some(text @ Value::String(_)) => text.clone(),
        Some(Value::Array(list)) if !list.is_empty() => Value::Array(list.clone()),
        other => {
            return Err(ApiError::bad_request(
                format!(
                    "invalid input: input must be a string or a non-empty array of strings, got {}",
                    describe(other)
                ),
                Some("input"),
            ))
        }
    };
    let encoding = encoding_format(req)?;

    let mut native = Map::new();
    native.insert("model".into(), Value::String(model.clone()));
    native.insert("input".into(), input);
    match field(req, "dimensions") {
        None => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            if let Some(dimensions) = n.as_u64().filter(|d| *d > 0) {
                native.insert("dimensions".into(), dimensions.into());
            }
        }
        other => return Err(expected("dimensions", "an integer such as 256", other)),
    }
    if let Some(keep_alive) = field(req, "keep_alive") {
        native.insert("keep_alive".into(), keep_alive.clone());
    }
    Ok(EmbeddingRequest { native: Value::Object(native), model, encoding })
}

/// `encoding_format`, case-insensitive; absent or `""` means float, as in Ollama.
fn encoding_format(req: &Map<String, Value>) -> Result<EncodingFormat, ApiError> {
    let invalid = |value: &str| {
        ApiError::bad_request(
            format!("Invalid value for 'encoding_format' = {value}. Supported values: ['float', 'base64']."),
            Some("encoding_format"),
        )
    };
    match field(req, "encoding_format") {
        None => Ok(EncodingFormat::Float),
        Some(Value::String(text)) if text.is_empty() || text.eq_ignore_ascii_case("float") => {
            Ok(EncodingFormat::Float)
        }
        Some(Value::String(text)) if text.eq_ignore_ascii_case("base64") => Ok(EncodingFormat::Base64),
        Some(Value::String(text)) => Err(invalid(text)),
        Some(other) => Err(invalid(&other.to_string())),
    }
}

/// An upstream `/api/embed` reply as an OpenAI embeddings `list`.
///
/// `model` is the request's model string. A reply without embeddings, or with a vector
/// that is not an array of numbers, is a 502 `api_error`.
pub fn from_ollama(native: &Value, model: &str, encoding: EncodingFormat) -> Result<Value, ApiError> {
    let vectors = match native.get("embeddings") {
        Some(Value::Array(vectors)) if !vectors.is_empty() => vectors,
        _ => return Err(ApiError::server(502, "upstream returned no embeddings")),
    };
    let mut data = Vec::with_capacity(vectors.len());
    for (index, vector) in vectors.iter().enumerate() {
        let numbers: Option<Vec<f64>> =
            vector.as_array().and_then(|values| values.iter().map(Value::as_f64).collect());
        let Some(numbers) = numbers else {
            return Err(ApiError::server(
                502,
                format!(
                    "upstream returned an invalid embedding at index {index}: expected an array of numbers"
                ),
            ));
        };
        let embedding = match encoding {
            EncodingFormat::Float => vector.clone(),
            EncodingFormat::Base64 => Value::String(base64_f32_le(&numbers)),
        };
        data.push(json!({"object": "embedding", "embedding": embedding, "index": index}));
    }
    let prompt_tokens = native.get("prompt_eval_count").and_then(Value::as_u64).unwrap_or(0);
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

/// Standard base64 (with padding) of `vector` packed as little-endian float32s; each value
/// is rounded to float32 first.
pub fn base64_f32_le(vector: &[f64]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|&value| (value as f32).to_le_bytes()).collect();
    base64(&bytes)
}

/// Standard base64 (RFC 4648 §4, with `=` padding); the status page's CSP hashes use it too.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let byte = |i: usize| u32::from(group.get(i).copied().unwrap_or(0));
        let bits = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((bits >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testkit::{self, eq_json};

    /// `{"model":"all-minilm","input":"hi"}` plus the given field.
    fn with(key: &str, value: Value) -> Value {
        testkit::with_field(json!({"model": "all-minilm", "input": "hi"}), key, value)
    }

    fn rejected(body: Value) -> ApiError {
        testkit::refused(to_ollama, &body)
    }

    /// Mirror types of what clients decode, with no room for stray fields.
    mod strict {
        #![allow(dead_code)] // Fields exist to be checked by serde, not read.
        use serde::Deserialize;
        use serde_json::Value;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct List {
            object: String,
            data: Vec<Embedding>,
            model: String,
            usage: Usage,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Embedding {
            object: String,
            embedding: Value,
            index: u32,
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Usage {
            prompt_tokens: u64,
            total_tokens: u64,
        }
    }

    fn reply(native: &Value, encoding: EncodingFormat) -> Value {
        let reply = from_ollama(native, "all-minilm", encoding).unwrap();
        let _strict: strict::List = serde_json::from_value(reply.clone()).unwrap();
        reply
    }

    const SPEC_UPSTREAM: &str = r#"{"model":"all-minilm","embeddings":[[0.1,-0.2,0.3]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}"#;

    // -- request --------------------------------------------------------------------

    #[test]
    fn input_forms() {
        let cases = [
            (json!("hello"), json!("hello")),
            (json!(""), json!([""])),
            (json!(["a", "b"]), json!(["a", "b"])),
            (json!([""]), json!([""])),
            (json!([1, 2, 3]), json!([1, 2, 3])),
            (json!([[1, 2], [3]]), json!([[1, 2], [3]])),
        ];
        for (input, want) in cases {
            let req = to_ollama(&with("input", input.clone())).unwrap();
            eq_json(&req.native, &json!({"model": "all-minilm", "input": want}));
            assert_eq!((req.model.as_str(), req.encoding), ("all-minilm", EncodingFormat::Float));
        }
        for input in [json!(null), json!([]), json!(5), json!(true), json!({"text": "x"})] {
            let err = rejected(with("input", input.clone()));
            assert_eq!(
                (err.status, err.kind, err.param.as_deref()),
                (400, "invalid_request_error", Some("input"))
            );
            assert!(err.message.starts_with("invalid input"), "{input}: {}", err.message);
        }
        let err = rejected(json!({"model": "all-minilm"}));
        assert_eq!(err.param.as_deref(), Some("input"));
        assert!(err.message.starts_with("invalid input") && err.message.ends_with("got nothing"));
    }

    #[test]
    fn dimensions_only_when_positive_and_keep_alive_forwarded() {
        let native =
            to_ollama(&json!({"model": "m", "input": "x", "dimensions": 256, "keep_alive": 0, "user": "u"}))
                .unwrap()
                .native;
        eq_json(&native, &json!({"model": "m", "input": "x", "dimensions": 256, "keep_alive": 0}));
        for off in [json!(0), json!(-3), json!(null)] {
            let native = to_ollama(&with("dimensions", off.clone())).unwrap().native;
            assert_eq!(native.get("dimensions"), None, "{off}");
        }
        for bad in [json!("256"), json!(1.5), json!(true), json!([256])] {
            let err = rejected(with("dimensions", bad.clone()));
            assert_eq!((err.status, err.param.as_deref()), (400, Some("dimensions")), "{bad}");
            assert!(err.message.starts_with("dimensions must be an integer"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn encoding_format_is_case_insensitive_and_not_forwarded() {
        let cases = [
            (json!(null), EncodingFormat::Float),
            (json!(""), EncodingFormat::Float),
            (json!("float"), EncodingFormat::Float),
            (json!("FLOAT"), EncodingFormat::Float),
            (json!("base64"), EncodingFormat::Base64),
            (json!("Base64"), EncodingFormat::Base64),
        ];
        for (format, want) in cases {
            let req = to_ollama(&with("encoding_format", format.clone())).unwrap();
            assert_eq!(req.encoding, want, "{format}");
            assert_eq!(req.native.get("encoding_format"), None);
        }
        let cases = [
            (
                json!("json"),
                "Invalid value for 'encoding_format' = json. Supported values: ['float', 'base64'].",
            ),
            (json!(5), "Invalid value for 'encoding_format' = 5. Supported values: ['float', 'base64']."),
        ];
        for (format, message) in cases {
            let err = rejected(with("encoding_format", format));
            assert_eq!((err.status, err.kind), (400, "invalid_request_error"));
            assert_eq!((err.message.as_str(), err.param.as_deref()), (message, Some("encoding_format")));
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!(["hi"]), None, "must be a JSON object"),
            (json!({"input": "hi"}), Some("model"), "model must be the name of an embedding model"),
            (with("model", json!("")), Some("model"), "got an empty string"),
            (with("model", json!(7)), Some("model"), "got a number"),
        ];
        testkit::assert_refusals(cases, rejected);
    }

    // -- reply ----------------------------------------------------------------------

    #[test]
    fn spec_6_2_float_example() {
        let native: Value = serde_json::from_str(SPEC_UPSTREAM).unwrap();
        eq_json(
            &reply(&native, EncodingFormat::Float),
            &json!({"object":"list",
             "data":[{"object":"embedding","embedding":[0.1,-0.2,0.3],"index":0}],
             "model":"all-minilm",
             "usage":{"prompt_tokens":8,"total_tokens":8}}),
        );
    }

    #[test]
    fn spec_6_2_base64_example() {
        let native: Value = serde_json::from_str(SPEC_UPSTREAM).unwrap();
        eq_json(
            &reply(&native, EncodingFormat::Base64)["data"],
            &json!([{"object": "embedding", "embedding": "zczMPc3MTL6amZk+", "index": 0}]),
        );
    }

    #[test]
    fn base64_vectors_from_ollama_tests() {
        let cases: [(&[f64], &str); 5] = [
            (&[0.1, -0.2, 0.3], "zczMPc3MTL6amZk+"),
            (&[0.1, 0.2], "zczMPc3MTD4="),
            (&[0.3, 0.4], "mpmZPs3MzD4="),
            (&[0.5, 0.6], "AAAAP5qZGT8="),
            (&[], ""),
        ];
        for (vector, want) in cases {
            assert_eq!(base64_f32_le(vector), want, "{vector:?}");
        }
        // Values are rounded to float32 before packing.
        assert_eq!(base64_f32_le(&[0.1_f32 as f64]), base64_f32_le(&[0.1]));
    }

    #[test]
    fn base64_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (text, want) in cases {
            assert_eq!(base64(text.as_bytes()), want, "{text:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn several_vectors_keep_their_position_and_the_request_model() {
        let native =
            json!({"model": "all-minilm:latest", "embeddings": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]});
        let got = reply(&native, EncodingFormat::Base64);
        eq_json(
            &got,
            &json!({"object": "list", "model": "all-minilm",
                "data": [{"object": "embedding", "embedding": "zczMPc3MTD4=", "index": 0},
                         {"object": "embedding", "embedding": "mpmZPs3MzD4=", "index": 1},
                         {"object": "embedding", "embedding": "AAAAP5qZGT8=", "index": 2}],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
        );
    }

    #[test]
    fn no_embeddings_upstream_is_a_502() {
        let cases = [
            json!({"model": "m"}),
            json!({"model": "m", "embeddings": null}),
            json!({"model": "m", "embeddings": []}),
            json!({"model": "m", "embeddings": "x"}),
        ];
        for native in cases {
            let err = from_ollama(&native, "m", EncodingFormat::Float).unwrap_err();
            assert_eq!((err.status, err.kind), (502, "api_error"), "{native}");
            assert_eq!(err.message, "upstream returned no embeddings", "{native}");
        }
        for vector in [json!("x"), json!([0.1, "y"]), json!(null)] {
            let native = json!({"embeddings": [[0.1], vector]});
            let err = from_ollama(&native, "m", EncodingFormat::Base64).unwrap_err();
            assert_eq!((err.status, err.kind), (502, "api_error"), "{native}");
            assert!(err.message.contains("invalid embedding at index 1"), "{}", err.message);
        }
    }
}
