//! The rest of the OpenAI surface against a fake Ollama that knows every endpoint
//! (`fake::ollama`): `/v1/completions`, `/v1/embeddings`, `/v1/models` and
//! `/v1/models/{id}`, the probes (`/`, `/health`, `/v1`), the paths clients really send
//! (no `/v1`, doubled slashes), 404 and 405, CORS, model aliases, per-token allowlists,
//! 413, and how upstream errors reach the client.

use crate::fake::{dead_url, embedding_of, ollama, tags, Fake, FakeReply, EMBED_TOKENS_PER_INPUT, MODELS};
use crate::util::*;
use serde_json::{json, Value};
use wire::{decode, EmbeddingList, EmbeddingUsage, Model, ModelList, TextChoice, TextCompletion, Usage};

/// `created` of everything the fake dates ([`crate::fake::MODIFIED_AT`]).
const CREATED: i64 = 1_700_000_000;

/// The browser origin the CORS tests allow.
const ORIGIN: &str = "https://app.example";

/// A gateway over `fake` (one key) whose token is [`TOKEN`]: `top` is written before any
/// table, `token_extra` inside alice's `[[tokens]]` entry, and `tables` after it.
fn gateway_with(fake: &Fake, top: &str, token_extra: &str, tables: &str) -> Gateway {
    Gateway::start(
        &format!("{top}\n{}{token_extra}\n{tables}\n", alice()),
        &format!("{}|{KEY_A}\n", fake.url),
    )
}

fn gateway_over(fake: &Fake) -> Gateway {
    gateway_with(fake, "", "", "")
}

/// `Authorization: Bearer <token>`, when there is a token.
fn bearer(token: Option<&str>) -> Vec<(&'static str, String)> {
    token.map(|t| ("Authorization", format!("Bearer {t}"))).into_iter().collect()
}

/// `method path` sent exactly as written, as `token`, with `body` (none for `GET`).
fn send(gateway: &Gateway, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> JsonReply {
    let headers = bearer(token);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = body.map(Value::to_string).unwrap_or_default();
    gateway.raw(method, path, &headers, body.as_bytes())
}

/// The `(upstream path, upstream body)` of every request the fake received.
fn upstream_calls(fake: &Fake) -> Vec<(String, Value)> {
    fake.requests().into_iter().map(|r| (r.path.clone(), r.json.clone().unwrap_or(Value::Null))).collect()
}

/// The model of every upstream request, in order.
fn upstream_models(fake: &Fake) -> Vec<String> {
    fake.requests().iter().map(|r| r.model().to_string()).collect()
}

/// Standard base64 (with padding), decoded.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert_eq!(text.len() % 4, 0, "base64 with padding has a length that is a multiple of 4: {text:?}");
    let (mut bits, mut held, mut out) = (0u32, 0u32, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|&a| a == c).unwrap_or_else(|| panic!("not base64: {text:?}"));
        bits = (bits << 6) | value as u32;
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    out
}

/// A base64 embedding read back as little-endian float32s.
fn f32s_of_base64(text: &str) -> Vec<f32> {
    let bytes = base64_decode(text);
    assert_eq!(bytes.len() % 4, 0, "{} bytes are not whole float32s: {text:?}", bytes.len());
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The start of a reply body, for a one-line failure message.
fn short(text: &str) -> String {
    text.chars().take(120).collect()
}

/// The header names of a reply that start with `access-control-`.
fn cors_headers(reply: &JsonReply) -> Vec<&str> {
    reply.headers.iter().map(|(n, _)| n.as_str()).filter(|n| n.starts_with("access-control-")).collect()
}

// ---------------------------------------------------------------------------------------
// /v1/completions
// ---------------------------------------------------------------------------------------

#[test]
fn completions_become_api_generate_and_a_text_completion() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let body = json!({
        "model": "llama3.2", "prompt": "Once upon", "suffix": "The end.", "max_tokens": 7,
        "stop": "\n", "logprobs": 2, "echo": false, "n": 1,
    });
    let reply: TextCompletion = decode(&gateway.post_json("/v1/completions", Some(TOKEN), &body));
    // The one-element array form of `prompt` is accepted too.
    let array_prompt =
        json!({"model": "llama3.2", "prompt": ["Once upon"], "temperature": 0.5, "top_p": 0.9});
    let second: TextCompletion = decode(&gateway.post_json("/v1/completions", Some(TOKEN), &array_prompt));

    eqnice!(
        vec![
            (
                "/api/generate".to_string(),
                json!({
                    "model": "llama3.2", "prompt": "Once upon", "suffix": "The end.", "stream": false,
                    "logprobs": true, "top_logprobs": 2,
                    "options": {"num_predict": 7, "temperature": 1.0, "top_p": 1.0,
                        "frequency_penalty": 0.0, "presence_penalty": 0.0, "stop": ["\n"]},
                })
            ),
            (
                "/api/generate".to_string(),
                json!({
                    "model": "llama3.2", "prompt": "Once upon", "stream": false,
                    "options": {"temperature": 0.5, "top_p": 0.9, "frequency_penalty": 0.0, "presence_penalty": 0.0},
                })
            ),
        ],
        upstream_calls(&fake),
        "upstream bodies: defaults filled in, stream explicit"
    );
    for completion in [&reply, &second] {
        assert!(completion.id.starts_with("cmpl-"), "id {}", completion.id);
        eqnice!(
            ("text_completion", CREATED, "llama3.2", "fp_ollama"),
            (
                completion.object.as_str(),
                completion.created,
                completion.model.as_str(),
                completion.system_fingerprint.as_str()
            )
        );
        eqnice!(
            vec![TextChoice { text: "Hi there".into(), index: 0, finish_reason: Some("stop".into()) }],
            completion.choices
        );
        eqnice!(
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                total_tokens: 7,
                prompt_tokens_details: None
            }),
            completion.usage
        );
    }
}

#[test]
fn a_completions_stream_is_text_completion_chunks_then_usage_then_done() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    for include_usage in [false, true] {
        let body = json!({
            "model": "llama3.2", "prompt": "Once upon", "stream": true,
            "stream_options": {"include_usage": include_usage},
        });
        let mut conn = SseConn::open(&gateway.addr, "/v1/completions", Some(TOKEN), &body);
        eqnice!(200, conn.status);
        eqnice!(
            (Some("text/event-stream"), Some("no-cache"), Some("no")),
            (conn.header("content-type"), conn.header("cache-control"), conn.header("x-accel-buffering"))
        );
        let mut payloads: Vec<String> = conn.events().into_iter().map(|(_, payload)| payload).collect();
        eqnice!(Some("[DONE]".to_string()), payloads.pop(), "the stream ends with [DONE]: {payloads:#?}");
        let values: Vec<Value> = payloads
            .iter()
            .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("event {p}: {e}")))
            .collect();
        let chunks: Vec<TextCompletion> = values
            .iter()
            .map(|v| {
                serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("not a text_completion ({e}): {v}"))
            })
            .collect();

        let (text, usage): (Vec<_>, Vec<_>) =
            chunks.iter().zip(&values).partition(|(c, _)| !c.choices.is_empty());
        for (chunk, value) in &text {
            assert!(value.get("usage").is_none(), "a text chunk carries usage: {value}");
            eqnice!(
                (chunks[0].id.as_str(), "text_completion", "llama3.2", "fp_ollama"),
                (
                    chunk.id.as_str(),
                    chunk.object.as_str(),
                    chunk.model.as_str(),
                    chunk.system_fingerprint.as_str()
                ),
                "every chunk has the same id"
            );
        }
        assert!(chunks[0].id.starts_with("cmpl-"), "id {}", chunks[0].id);
        let choices: Vec<&TextChoice> = text.iter().flat_map(|(c, _)| &c.choices).collect();
        eqnice!(
            vec![
                &TextChoice { text: "Hi".into(), index: 0, finish_reason: None },
                &TextChoice { text: " there".into(), index: 0, finish_reason: None },
                &TextChoice { text: "".into(), index: 0, finish_reason: Some("stop".into()) },
            ],
            choices,
            "one chunk per upstream line, the finish reason on the last; include_usage {include_usage}"
        );
        if include_usage {
            eqnice!(text.len(), chunks.len() - 1, "the usage chunk comes last, after every text chunk");
            eqnice!(1, usage.len());
            let (chunk, _) = usage[0];
            eqnice!(chunks[0].id, chunk.id);
            eqnice!(
                Some(&Usage {
                    prompt_tokens: 5,
                    completion_tokens: 2,
                    total_tokens: 7,
                    prompt_tokens_details: None
                }),
                chunk.usage.as_ref()
            );
        } else {
            eqnice!(0, usage.len(), "no usage chunk without include_usage: {values:#?}");
        }
    }
    for (path, body) in upstream_calls(&fake) {
        eqnice!(("/api/generate", Some(true)), (path.as_str(), body["stream"].as_bool()));
    }
}

// ---------------------------------------------------------------------------------------
// /v1/embeddings
// ---------------------------------------------------------------------------------------

#[test]
fn embeddings_of_a_string_or_an_array_come_back_as_floats_with_usage() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    // (request, upstream body, inputs)
    let cases = [
        (
            json!({"model": "all-minilm", "input": "hello"}),
            json!({"model": "all-minilm", "input": "hello"}),
            1,
        ),
        (
            json!({"model": "all-minilm", "input": ["a", "b", "c"], "dimensions": 3, "encoding_format": "float", "user": "u"}),
            json!({"model": "all-minilm", "input": ["a", "b", "c"], "dimensions": 3}),
            3,
        ),
    ];
    for (request, upstream, inputs) in cases {
        let reply: EmbeddingList = decode(&gateway.post_json("/v1/embeddings", Some(TOKEN), &request));
        let sent = fake.requests().pop().expect("an upstream request");
        eqnice!(("/api/embed", &upstream), (sent.path.as_str(), sent.body()), "{request}");
        eqnice!(("list", "all-minilm"), (reply.object.as_str(), reply.model.as_str()));
        let got: Vec<(&str, u32, Value)> =
            reply.data.iter().map(|d| (d.object.as_str(), d.index, d.embedding.clone())).collect();
        let want: Vec<(&str, u32, Value)> =
            (0..inputs).map(|i| ("embedding", i as u32, json!(embedding_of(i)))).collect();
        eqnice!(want, got, "{request}");
        let tokens = EMBED_TOKENS_PER_INPUT * inputs as u64;
        eqnice!(EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens }, reply.usage);
    }
}

#[test]
fn base64_embeddings_are_little_endian_float32s() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    for format in ["base64", "BASE64"] {
        let request = json!({"model": "all-minilm", "input": ["a", "b"], "encoding_format": format});
        let reply: EmbeddingList = decode(&gateway.post_json("/v1/embeddings", Some(TOKEN), &request));
        eqnice!(2, reply.data.len());
        for (i, item) in reply.data.iter().enumerate() {
            let text =
                item.embedding.as_str().unwrap_or_else(|| panic!("not a base64 string: {}", item.embedding));
            let want: Vec<f32> = embedding_of(i).iter().map(|&v| v as f32).collect();
            eqnice!(
                want,
                f32s_of_base64(text),
                "{format}: vector {i} ({text}) is the fake's, rounded to f32"
            );
            eqnice!(i as u32, item.index);
        }
        let first = reply.data[0].embedding.as_str();
        eqnice!(Some("zczMPc3MTL6amZk+"), first, "spec §6.2: [0.1, -0.2, 0.3]");
    }
    for sent in fake.requests() {
        assert!(sent.body().get("encoding_format").is_none(), "encoding_format went upstream: {}", sent.raw);
    }
}

#[test]
fn invalid_embeddings_requests_are_400_before_any_upstream_call() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    // (what is wrong, body, param)
    let cases = [
        ("input is empty", json!({"model": "all-minilm", "input": []}), "input"),
        ("input is missing", json!({"model": "all-minilm"}), "input"),
        ("input is null", json!({"model": "all-minilm", "input": null}), "input"),
        (
            "format is json",
            json!({"model": "all-minilm", "input": "x", "encoding_format": "json"}),
            "encoding_format",
        ),
        ("model is missing", json!({"input": "x"}), "model"),
    ];
    for (what, body, param) in cases {
        let error = assert_envelope(&gateway.post_json("/v1/embeddings", Some(TOKEN), &body), 400);
        eqnice!(
            ("invalid_request_error", Some(param)),
            (error.kind.as_str(), error.param.as_deref()),
            "{what}: {}",
            error.message
        );
        if what == "format is json" {
            eqnice!(
                "Invalid value for 'encoding_format' = json. Supported values: ['float', 'base64'].",
                error.message
            );
        }
    }
    eqnice!(0, fake.count(), "no upstream call for an invalid request");
}

// ---------------------------------------------------------------------------------------
// /v1/models
// ---------------------------------------------------------------------------------------

#[test]
fn the_model_list_maps_api_tags_and_an_empty_one_is_an_empty_array() {
    let fake = Fake::start(|recorded| match recorded.path.as_str() {
        "/api/tags" => FakeReply::ok(tags(&[
            "llama3.2:latest",
            "namespace/exposed-model:latest",
            "hf.co/org/model:Q4_K_M",
        ])),
        _ => FakeReply::error(404, "404 page not found"),
    });
    let gateway = gateway_over(&fake);
    let list: ModelList = decode(&send(&gateway, "GET", "/v1/models", Some(TOKEN), None));
    let model = |id: &str, owned_by: &str| Model {
        id: id.into(),
        object: "model".into(),
        created: CREATED,
        owned_by: owned_by.into(),
    };
    eqnice!("list", list.object);
    eqnice!(
        vec![
            model("llama3.2:latest", "library"),
            model("namespace/exposed-model:latest", "namespace"),
            model("hf.co/org/model:Q4_K_M", "org"),
        ],
        list.data
    );
    let sent = fake.only_request();
    eqnice!(("GET", "/api/tags"), (sent.method.as_str(), sent.path.as_str()));

    let empty = Fake::start(|_| FakeReply::ok(json!({"models": []})));
    let gateway = gateway_over(&empty);
    let reply = send(&gateway, "GET", "/v1/models", Some(TOKEN), None);
    eqjson!(json!({"object": "list", "data": []}), reply.body, "an empty list is [], never null");
}

#[test]
fn a_model_id_with_slash_and_colon_is_retrieved_raw_or_percent_escaped() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let id = "hf.co/org/model:Q4_K_M";
    for path in [
        "/v1/models/hf.co/org/model:Q4_K_M",
        "/v1/models/hf.co%2Forg%2Fmodel%3AQ4_K_M",
        "/v1/models/hf.co%2Forg%2Fmodel:Q4_K_M",
        "/models/hf.co/org/model:Q4_K_M",
    ] {
        let model: Model = decode(&send(&gateway, "GET", path, Some(TOKEN), None));
        eqnice!(
            Model { id: id.into(), object: "model".into(), created: CREATED, owned_by: "org".into() },
            model,
            "{path}"
        );
        let sent = fake.requests().pop().expect("an upstream request");
        eqnice!(
            ("POST", "/api/show", &json!({ "model": id })),
            (sent.method.as_str(), sent.path.as_str(), sent.body()),
            "{path}: upstream gets the unescaped name"
        );
    }
    let error = assert_envelope(&send(&gateway, "GET", "/v1/models/no-such:model", Some(TOKEN), None), 404);
    eqnice!(
        ("not_found_error", Some("model_not_found"), "model 'no-such:model' not found"),
        (error.kind.as_str(), error.code.as_deref(), error.message.as_str())
    );
}

// ---------------------------------------------------------------------------------------
// Probes, paths, methods
// ---------------------------------------------------------------------------------------

#[test]
fn root_and_health_answer_anyone_and_v1_answers_a_token() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let reply = send(&gateway, "GET", "/health", None, None);
    eqnice!((200, json!("ok")), (reply.status, reply.body["status"].clone()), "{}", reply.text);
    // What Ollama itself answers at `/`, so native clients' probes pass too.
    let reply = send(&gateway, "GET", "/", None, None);
    eqnice!((200, "Ollama is running"), (reply.status, reply.text.as_str()));
    let reply = send(&gateway, "GET", "/v1", Some(TOKEN), None);
    eqnice!(200, reply.status, "{}", reply.text);
    assert!(reply.body.is_object(), "GET /v1 answers JSON: {}", reply.text);
    let error = assert_envelope(&send(&gateway, "GET", "/v1", None, None), 401);
    eqnice!(Some("invalid_api_key"), error.code.as_deref());
    eqnice!(0, fake.count());
}

/// Every path that reaches an API handler, the aliases included: a method it answers, and
/// the `object` of its reply (`""` for none).
const API_PATHS: [(&str, &str, &str); 14] = [
    ("POST", "/v1/chat/completions", "chat.completion"),
    ("POST", "/chat/completions", "chat.completion"),
    ("POST", "//v1/chat/completions", "chat.completion"),
    ("POST", "/v1//chat//completions", "chat.completion"),
    ("POST", "/v1/completions", "text_completion"),
    ("POST", "/completions", "text_completion"),
    ("POST", "/v1/embeddings", "list"),
    ("POST", "/embeddings", "list"),
    ("GET", "/v1/models", "list"),
    ("GET", "/models", "list"),
    ("GET", "/v1//models", "list"),
    ("GET", "/v1/models/llama3.2:latest", "model"),
    ("GET", "/models/llama3.2:latest", "model"),
    ("GET", "/v1", ""),
];

/// A body each API path accepts (none for `GET`s).
fn body_for(path: &str) -> Option<Value> {
    if path.contains("chat") {
        Some(chat_body("llama3.2", false))
    } else if path.ends_with("completions") {
        Some(json!({"model": "llama3.2", "prompt": "Hi"}))
    } else if path.ends_with("embeddings") {
        Some(json!({"model": "all-minilm", "input": "Hi"}))
    } else {
        None
    }
}

#[test]
fn every_api_path_and_alias_refuses_a_request_without_a_token() {
    // A peer gateway shipped with its aliases open: each path is checked, and all the
    // open ones are named at once.
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let paths = API_PATHS.iter().map(|(method, path, _)| (*method, *path));
    let paths = paths.chain([("GET", "/models/x"), ("GET", "//v1/models/x"), ("GET", "/v1/")]);
    let mut open = Vec::new();
    for (method, path) in paths {
        let before = fake.count();
        for token in [None, Some("sk-not-a-token-0000000000")] {
            let reply = send(&gateway, method, path, token, body_for(path).as_ref());
            let error = serde_json::from_value::<wire::Envelope>(reply.body.clone()).map(|e| e.error);
            let refused = reply.status == 401
                && error.as_ref().is_ok_and(|e| e.code.as_deref() == Some("invalid_api_key"));
            if !refused || fake.count() != before {
                let token = if token.is_some() { "a wrong token" } else { "no token" };
                open.push(format!("{method} {path} with {token}: {} {}", reply.status, short(&reply.text)));
            }
        }
    }
    assert!(
        open.is_empty(),
        "paths that did not answer 401 invalid_api_key (or called upstream):\n{}",
        open.join("\n")
    );
}

#[test]
fn every_api_path_and_alias_works_with_a_token() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let mut failed = Vec::new();
    for (method, path, object) in API_PATHS {
        let reply = send(&gateway, method, path, Some(TOKEN), body_for(path).as_ref());
        if reply.status != 200 || reply.body["object"].as_str().unwrap_or("") != object {
            failed.push(format!("{method} {path}: {} {}", reply.status, short(&reply.text)));
        }
    }
    assert!(failed.is_empty(), "paths that did not answer their endpoint's reply:\n{}", failed.join("\n"));
    // The doubled slashes reached the gateway as written.
    gateway.wait_for_log(&["POST //v1/chat/completions ", "status=200"]);
    gateway.wait_for_log(&["GET /v1//models ", "status=200"]);
}

#[test]
fn an_unknown_route_is_a_404_not_found_error() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    // (`/v1/responses` was here until the gateway served it.)
    for (method, path) in [
        ("POST", "/v1/assistants"),
        ("GET", "/v1/health"),
        ("GET", "/api/nope"),
        ("POST", "/v1/chat"),
        ("GET", "/v2/models"),
    ] {
        let body = (method == "POST").then(|| chat_body("llama3.2", false));
        let error = assert_envelope(&send(&gateway, method, path, Some(TOKEN), body.as_ref()), 404);
        eqnice!("not_found_error", error.kind, "{method} {path}: {}", error.message);
    }
    eqnice!(0, fake.count());
}

#[test]
fn a_wrong_method_is_a_405_with_allow() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    // (method, path, the method Allow must name)
    let cases = [
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/llama3.2:latest", "GET"),
    ];
    for (method, path, allowed) in cases {
        let body = (method == "POST").then(|| json!({}));
        let reply = send(&gateway, method, path, Some(TOKEN), body.as_ref());
        let error = assert_envelope(&reply, 405);
        let allow = reply.header("allow").unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{method} {path}: Allow {allow:?} should name {allowed}"
        );
        assert!(
            !allow.split(',').any(|m| m.trim() == method),
            "{method} {path}: Allow {allow:?} names the refused method"
        );
        assert!(error.message.contains(allowed), "{method} {path}: {}", error.message);
    }
    eqnice!(0, fake.count());
}

#[test]
fn a_url_too_long_to_relay_is_a_414_and_reaches_no_key() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    // ureq writes the upstream request line in one piece into a 4 KiB buffer: a longer
    // line used to fail there and count against every key it was tried on.
    let long = "m".repeat(5000);
    let reply = send(&gateway, "GET", &format!("/v1/models/{long}"), Some(TOKEN), None);
    let error = assert_envelope(&reply, 414);
    assert!(error.message.contains("2048"), "{}", error.message);
    let native =
        send(&gateway, "POST", &format!("/api/show?{long}"), Some(TOKEN), Some(&json!({"model": "m"})));
    eqnice!(414, native.status);
    assert!(native.body["error"].as_str().is_some_and(|e| e.contains("URL")), "{}", native.text);
    eqnice!(0, fake.count());
    // A URL within the bound is served as ever.
    let reply = send(&gateway, "GET", &format!("/v1/models/{}", "m".repeat(100)), Some(TOKEN), None);
    assert_ne!(reply.status, 414);
}

// ---------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------

/// An `OPTIONS` preflight from `origin`, without a token.
fn preflight(gateway: &Gateway, path: &str, origin: &str) -> JsonReply {
    gateway.raw(
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type, x-stainless-os"),
        ],
        b"",
    )
}

/// A chat `POST` from `origin`, as `token`.
fn post_from(gateway: &Gateway, origin: &str, token: Option<&str>) -> JsonReply {
    let mut headers = bearer(token);
    headers.push(("Origin", origin.to_string()));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    gateway.raw("POST", "/v1/chat/completions", &headers, chat_body("llama3.2", false).to_string().as_bytes())
}

#[test]
fn a_cors_preflight_from_an_allowed_origin_is_a_204_without_a_token() {
    let fake = Fake::start(ollama);
    let gateway = gateway_with(&fake, "", "", &format!("[cors]\nallow_origins = [\"{ORIGIN}\"]"));
    for path in ["/v1/chat/completions", "/chat/completions", "/v1/models"] {
        let reply = preflight(&gateway, path, ORIGIN);
        eqnice!(204, reply.status, "{path}: {}", reply.text);
        eqnice!(Some(ORIGIN), reply.header("access-control-allow-origin"), "{path}");
        let allowed: Vec<String> = reply
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        for header in ["authorization", "content-type", "x-stainless-os"] {
            assert!(allowed.iter().any(|h| h == header), "{path}: {header} not in {allowed:?}");
        }
        let methods = reply.header("access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("POST") && methods.contains("GET"), "{path}: allow-methods {methods:?}");
    }
    eqnice!(0, fake.count());
}

#[test]
fn replies_and_errors_to_an_allowed_origin_carry_cors_headers_and_others_get_none() {
    let fake = Fake::start(ollama);
    let gateway = gateway_with(&fake, "", "", &format!("[cors]\nallow_origins = [\"{ORIGIN}\"]"));

    let ok = post_from(&gateway, ORIGIN, Some(TOKEN));
    eqnice!((200, Some(ORIGIN)), (ok.status, ok.header("access-control-allow-origin")), "{}", ok.text);
    let refused = post_from(&gateway, ORIGIN, None);
    assert_envelope(&refused, 401);
    eqnice!(Some(ORIGIN), refused.header("access-control-allow-origin"), "a 401 carries it too");
    let not_found = gateway.raw("GET", "/v1/nope", &[("Origin", ORIGIN)], b"");
    assert_envelope(&not_found, 404);
    eqnice!(Some(ORIGIN), not_found.header("access-control-allow-origin"), "a 404 carries it too");

    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Origin", ORIGIN)];
    let body = chat_body("llama3.2", true).to_string();
    let mut stream = SseConn::open_raw(&gateway.addr, "/v1/chat/completions", &headers, body.as_bytes());
    eqnice!(200, stream.status);
    eqnice!(Some(ORIGIN), stream.header("access-control-allow-origin"), "a stream carries it too");
    assert!(stream.events().last().is_some_and(|(_, p)| p == "[DONE]"));

    let evil = "https://evil.example";
    for reply in [preflight(&gateway, "/v1/chat/completions", evil), post_from(&gateway, evil, Some(TOKEN))] {
        eqnice!(
            Vec::<&str>::new(),
            cors_headers(&reply),
            "origin {evil} is not allowed: {:?}",
            reply.headers
        );
    }

    // `"*"` allows any origin.
    let any = gateway_with(&fake, "", "", "[cors]\nallow_origins = [\"*\"]");
    let reply = post_from(&any, evil, Some(TOKEN));
    eqnice!((200, Some("*")), (reply.status, reply.header("access-control-allow-origin")));
    let reply = preflight(&any, "/v1/embeddings", evil);
    eqnice!((204, Some("*")), (reply.status, reply.header("access-control-allow-origin")));
}

#[test]
fn without_a_cors_section_there_are_no_cors_headers() {
    let fake = Fake::start(ollama);
    let gateway = gateway_over(&fake);
    let replies = [
        preflight(&gateway, "/v1/chat/completions", ORIGIN),
        post_from(&gateway, ORIGIN, Some(TOKEN)),
        post_from(&gateway, ORIGIN, None),
    ];
    for reply in replies {
        eqnice!(Vec::<&str>::new(), cors_headers(&reply), "status {}: {:?}", reply.status, reply.headers);
    }
}

// ---------------------------------------------------------------------------------------
// Aliases, allowlists, limits
// ---------------------------------------------------------------------------------------

const ALIASES: &str =
    "[aliases]\n\"gpt-4o-mini\" = \"gpt-oss:20b\"\n\"text-embedding-3-small\" = \"all-minilm\"\n";

#[test]
fn an_alias_sends_its_target_upstream_and_reports_the_name_asked_for() {
    let fake = Fake::start(ollama);
    let gateway = gateway_with(&fake, "", "", ALIASES);

    let reply = completion(&gateway.chat(&chat_body("gpt-4o-mini", false)));
    eqnice!("gpt-4o-mini", reply.model);
    let events =
        decode_events(&gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("gpt-4o-mini", true)));
    let models: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk(chunk) => Some(chunk.model.as_str()),
            _ => None,
        })
        .collect();
    assert!(!models.is_empty() && models.iter().all(|m| *m == "gpt-4o-mini"), "chat chunk models {models:?}");
    let body = json!({"model": "gpt-4o-mini", "prompt": "Hi", "stream": true, "stream_options": {"include_usage": true}});
    let events = gateway.stream("/v1/completions", Some(TOKEN), &body);
    let models: Vec<String> = events
        .iter()
        .filter(|(_, payload)| payload != "[DONE]")
        .map(|(_, payload)| {
            serde_json::from_str::<TextCompletion>(payload).map(|c| c.model).unwrap_or_default()
        })
        .collect();
    assert!(models.len() > 1 && models.iter().all(|m| m == "gpt-4o-mini"), "text chunk models {models:?}");
    let text: TextCompletion = decode(&gateway.post_json(
        "/v1/completions",
        Some(TOKEN),
        &json!({"model": "gpt-4o-mini", "prompt": "Hi"}),
    ));
    eqnice!("gpt-4o-mini", text.model);
    let embeddings: EmbeddingList = decode(&gateway.post_json(
        "/v1/embeddings",
        Some(TOKEN),
        &json!({"model": "text-embedding-3-small", "input": "Hi"}),
    ));
    eqnice!("text-embedding-3-small", embeddings.model);
    let model: Model = decode(&send(&gateway, "GET", "/v1/models/gpt-4o-mini", Some(TOKEN), None));
    eqnice!("gpt-4o-mini", model.id);
    eqnice!(
        vec!["gpt-oss:20b", "gpt-oss:20b", "gpt-oss:20b", "gpt-oss:20b", "all-minilm", "gpt-oss:20b"],
        upstream_models(&fake),
        "upstream gets each alias's target"
    );

    let list: ModelList = decode(&send(&gateway, "GET", "/v1/models", Some(TOKEN), None));
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    let mut want: Vec<&str> = MODELS.to_vec();
    want.extend(["gpt-4o-mini", "text-embedding-3-small"]);
    eqnice!(want, ids, "the list has the upstream models, then the aliases");
}

#[test]
fn a_token_allowlist_refuses_other_models_before_upstream_and_filters_the_list() {
    let fake = Fake::start(ollama);
    let aliases = format!("{ALIASES}\"mini-llama\" = \"llama3.2:latest\"\n");
    let gateway = gateway_with(&fake, "", "models = [\"gpt-oss:*\", \"qwen3*\"]", &aliases);

    // (method, path, body) for a model outside the list.
    let refused = [
        ("POST", "/v1/chat/completions", Some(chat_body("llama3.2", false))),
        ("POST", "/v1/chat/completions", Some(chat_body("mini-llama", true))),
        ("POST", "/v1/completions", Some(json!({"model": "llama3.2", "prompt": "Hi", "stream": true}))),
        ("POST", "/v1/embeddings", Some(json!({"model": "text-embedding-3-small", "input": "Hi"}))),
        ("GET", "/v1/models/llama3.2:latest", None),
        ("GET", "/models/hf.co%2Forg%2Fmodel%3AQ4_K_M", None),
    ];
    for (method, path, body) in &refused {
        let error = assert_envelope(&send(&gateway, method, path, Some(TOKEN), body.as_ref()), 403);
        eqnice!("permission_error", error.kind, "{method} {path} {body:?}: {}", error.message);
    }
    eqnice!(0, fake.count(), "no upstream call for a model the token may not use");

    for model in ["gpt-oss:20b", "qwen3:8b", "gpt-4o-mini"] {
        let reply = completion(&gateway.chat(&chat_body(model, false)));
        eqnice!(model, reply.model);
    }
    eqnice!(vec!["gpt-oss:20b", "qwen3:8b", "gpt-oss:20b"], upstream_models(&fake));

    let list: ModelList = decode(&send(&gateway, "GET", "/v1/models", Some(TOKEN), None));
    let mut ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    eqnice!(vec!["gpt-4o-mini", "gpt-oss:20b", "qwen3:8b"], ids, "only the allowed models and aliases");
}

#[test]
fn an_embeddings_body_over_max_body_bytes_is_a_413() {
    let fake = Fake::start(ollama);
    let gateway = gateway_with(&fake, "max_body_bytes = 4096", "", "");
    let big = json!({"model": "all-minilm", "input": ["x".repeat(3000), "y".repeat(3000)]});
    let error = assert_envelope(&gateway.post_json("/v1/embeddings", Some(TOKEN), &big), 413);
    eqnice!(Some("request_too_large"), error.code.as_deref(), "{}", error.message);
    eqnice!(0, fake.count());
    let small = json!({"model": "all-minilm", "input": "x"});
    let _: EmbeddingList = decode(&gateway.post_json("/v1/embeddings", Some(TOKEN), &small));
}

// ---------------------------------------------------------------------------------------
// Upstream errors
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_errors_keep_their_status_and_get_openai_types_on_every_endpoint() {
    let requests: [(&str, &str, Option<Value>); 4] = [
        ("POST", "/v1/completions", Some(json!({"model": "llama3.2", "prompt": "Hi"}))),
        ("POST", "/v1/embeddings", Some(json!({"model": "all-minilm", "input": "Hi"}))),
        ("GET", "/v1/models/llama3.2", None),
        ("GET", "/v1/models", None),
    ];
    // (upstream answer, status, type, code, how many of `requests` to send, upstream calls)
    type Case = (fn() -> FakeReply, u16, &'static str, Option<&'static str>, usize, usize);
    let cases: [Case; 2] = [
        (
            || FakeReply::error(429, "you have reached your session usage limit"),
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            4,
            // The first answer spends the key's quota: later requests are refused by the
            // gateway itself, without spending an attempt on a key known to be exhausted.
            1,
        ),
        (
            || FakeReply::error(404, "model 'llama3.2' not found"),
            404,
            "not_found_error",
            Some("model_not_found"),
            3,
            3,
        ),
    ];
    for (answer, status, kind, code, count, calls) in cases {
        // The pool has one key: there is nothing to fail over to.
        let fake = Fake::start(move |_| answer());
        let gateway = gateway_over(&fake);
        for (method, path, body) in &requests[..count] {
            let error = assert_envelope(&send(&gateway, method, path, Some(TOKEN), body.as_ref()), status);
            eqnice!(
                (kind, code),
                (error.kind.as_str(), error.code.as_deref()),
                "{method} {path}: {}",
                error.message
            );
        }
        eqnice!(calls, fake.count(), "upstream calls on the only key");
    }

    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", dead_url()));
    let (last, first) = requests.split_last().expect("requests");
    for (method, path, body) in first {
        let error = assert_envelope(&send(&gateway, method, path, Some(TOKEN), body.as_ref()), 502);
        eqnice!("api_error", error.kind, "{method} {path}: {}", error.message);
    }
    // Three failures in a row (failure_threshold) and the only key backs off: the pool is
    // then unavailable, which is a 429 saying when to come back.
    let (method, path, body) = last;
    let reply = send(&gateway, method, path, Some(TOKEN), body.as_ref());
    assert!(reply.header("retry-after").is_some(), "{:?}", reply.headers);
    let error = assert_envelope(&reply, 429);
    assert!(error.message.contains("backing off"), "{}", error.message);
}
