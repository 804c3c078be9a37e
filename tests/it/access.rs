//! The model allowlist on every form in which a native body can name a model, and plain
//! native answers that are not JSON.
//!
//! Ollama's Go decoder reads keys without regard to case and keeps the last of two keys
//! for one field, so `{"Model": …}` and `{"model": …, "MODEL": …}` name the model it
//! serves: the gateway checks keys the same way and refuses two keys for one field (400).
//! Each refused form is sent to a real gateway over a fake Ollama that must receive nothing;
//! allowed forms reach it byte for byte (an alias resolved in place). `/api/create`'s
//! `from` and a `modelfile`'s `FROM` lines are checked too, aliases are judged by the model
//! they reach, and the same rule decides what `/api/tags` and `/v1/models` list. Plain
//! answers (`stream: false`, tags, show, embed, version) that are HTML, cut off or empty
//! become a 502 in Ollama's `{"error": "…"}` shape.

use crate::fake::{chat_answer, ollama, Fake, FakeReply, Recorded};
use crate::util::*;
use serde_json::{json, Value};

/// A token limited to `llama*` models, with every scope; `llama-fast` is an alias whose
/// name the allowlist matches but whose target (`qwen3:8b`) it does not, `gpt-4o-mini` one
/// of an allowed model.
fn limited_config() -> String {
    format!(
        "{}scopes = [\"inference\", \"models\", \"manage\"]\nmodels = [\"llama*\"]\n\
         [aliases]\n\"llama-fast\" = \"qwen3:8b\"\n\"gpt-4o-mini\" = \"llama3.2\"\n",
        alice()
    )
}

/// [`ollama`], plus `pull` and `create` (one success line), `copy` and `delete` (200,
/// empty), and a chat answer for bodies whose model key is not spelt `model`.
fn upstream(recorded: &Recorded) -> FakeReply {
    match (recorded.method.as_str(), recorded.path.as_str()) {
        ("POST", "/api/chat") if recorded.model().is_empty() => FakeReply::ok(chat_answer("Hello")),
        ("POST", "/api/pull" | "/api/create") => FakeReply::ok(json!({"status": "success"})),
        ("POST", "/api/copy") | ("DELETE", "/api/delete") => {
            FakeReply::Text { status: 200, body: String::new() }
        }
        _ => ollama(recorded),
    }
}

fn limited() -> (Fake, Gateway) {
    let fake = Fake::start(upstream);
    let gateway = Gateway::start(&limited_config(), &format!("{}|{KEY_A}\n", fake.url));
    (fake, gateway)
}

/// `method path` with `body` as [`TOKEN`], the body sent exactly as written.
fn send(gateway: &Gateway, method: &str, path: &str, body: &str) -> JsonReply {
    let auth = format!("Bearer {TOKEN}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    gateway.raw(method, path, &headers, body.as_bytes())
}

/// Asserts an Ollama-style error, `{"error": "<text>"}` and nothing else, with `status`;
/// returns the text.
#[track_caller]
fn ollama_error(reply: &JsonReply, status: u16) -> String {
    eqnice!(status, reply.status, "body: {}", reply.text);
    let fields: Vec<&String> = reply.body.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    eqnice!(vec!["error"], fields, "an Ollama error is {{\"error\": \"…\"}}; got {}", reply.text);
    reply.body["error"].as_str().unwrap_or_default().to_string()
}

const HI: &str = r#""messages":[{"role":"user","content":"Hi"}]"#;

#[test]
fn every_form_of_a_refused_model_is_refused_before_upstream() {
    let (fake, gateway) = limited();
    let modelfile = |text: &str| format!(r#"{{"model":"llama-mine","modelfile":{}}}"#, Value::from(text));
    // (method, path, body, status, a word the message must hold)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/api/chat", format!(r#"{{"model":"llama3.2","MODEL":"qwen3:8b",{HI}}}"#), 400, "MODEL"),
        ("POST", "/api/chat", format!(r#"{{"model":"llama3.2","model":"llama3.2",{HI}}}"#), 400, "model"),
        ("POST", "/api/chat", format!(r#"{{"Model":"qwen3:8b",{HI}}}"#), 403, "qwen3:8b"),
        ("POST", "/api/chat", format!(r#"{{"mODEL":"qwen3:8b","stream":false,{HI}}}"#), 403, "qwen3:8b"),
        ("POST", "/api/chat", format!(r#"{{"\u004dodel":"qwen3:8b",{HI}}}"#), 403, "qwen3:8b"),
        ("POST", "/api/chat", format!(r#"{{"model":"llama3.2","name":"qwen3:8b",{HI}}}"#), 403, "qwen3:8b"),
        ("POST", "/api/chat", format!(r#"{{"model":"llama-fast",{HI}}}"#), 403, "an alias of 'qwen3:8b'"),
        ("POST", "/api/chat", format!(r#"{{"model":7,{HI}}}"#), 400, "string"),
        ("POST", "/api/chat", r#"["model","llama3.2"]"#.to_string(), 400, "JSON object"),
        (
            "POST",
            "/api/generate",
            r#"{"model":"llama3.2","Model":"qwen3:8b","prompt":"x"}"#.into(),
            400,
            "twice",
        ),
        ("POST", "/api/embed", r#"{"MoDeL":"qwen3:8b","input":"x"}"#.into(), 403, "qwen3:8b"),
        ("POST", "/api/show", r#"{"Name":"qwen3:8b"}"#.into(), 403, "qwen3:8b"),
        ("POST", "/api/pull", r#"{"Model":"qwen3:8b"}"#.into(), 403, "qwen3:8b"),
        ("POST", "/api/push", r#"{"NAME":"qwen3:8b"}"#.into(), 403, "qwen3:8b"),
        ("DELETE", "/api/delete", r#"{"Name":"qwen3:8b"}"#.into(), 403, "qwen3:8b"),
        ("POST", "/api/copy", r#"{"Source":"qwen3:8b","destination":"llama-copy"}"#.into(), 403, "qwen3:8b"),
        // `ſ` (U+017F) folds to `s` in Go: Ollama reads this key as `source`.
        ("POST", "/api/copy", r#"{"ſource":"qwen3:8b","destination":"llama-copy"}"#.into(), 403, "qwen3:8b"),
        (
            "POST",
            "/api/copy",
            r#"{"source":"llama3.2","Destination":"qwen3:mine"}"#.into(),
            403,
            "qwen3:mine",
        ),
        ("POST", "/api/copy", r#"{"source":"llama3.2","ſource":"llama3.2"}"#.into(), 400, "source"),
        ("POST", "/api/create", r#"{"model":"llama-mine","from":"qwen3:8b"}"#.into(), 403, "qwen3:8b"),
        ("POST", "/api/create", r#"{"model":"llama-mine","FROM":"llama-fast"}"#.into(), 403, "qwen3:8b"),
        ("POST", "/api/create", r#"{"model":"qwen3:mine","from":"llama3.2"}"#.into(), 403, "qwen3:mine"),
        ("POST", "/api/create", modelfile("FROM qwen3:8b\n"), 403, "qwen3:8b"),
        ("POST", "/api/create", modelfile("# base\nfrom \"qwen3:8b\"\nSYSTEM hi"), 403, "qwen3:8b"),
        ("POST", "/api/create", modelfile("FROM llama3.2\nFROM qwen3:8b\n"), 403, "qwen3:8b"),
        ("POST", "/api/create", modelfile("FROM ./model.gguf\n"), 403, "./model.gguf"),
        ("POST", "/api/create", modelfile("FROM @sha256:abc\n"), 403, "@sha256:abc"),
        (
            "POST",
            "/api/create",
            r#"{"model":"llama-mine","ModelFile":"FROM qwen3:8b"}"#.into(),
            403,
            "qwen3:8b",
        ),
        (
            "POST",
            "/api/create",
            r#"{"model":"llama-mine","files":{"model.gguf":"sha256:0123"}}"#.into(),
            403,
            "files",
        ),
        ("POST", "/api/create", r#"{"model":"llama-mine","path":"/srv/Modelfile"}"#.into(), 403, "path"),
    ];
    for (method, path, body, status, word) in &cases {
        let reply = send(&gateway, method, path, body);
        let message = ollama_error(&reply, *status);
        assert!(message.contains(word), "{method} {path} {body}: {message:?} should name {word:?}");
    }
    eqnice!(0, fake.count(), "no refused form reaches upstream: {:#?}", fake.requests());
}

#[test]
fn allowed_forms_reach_upstream_byte_for_byte_with_aliases_resolved_in_place() {
    let (fake, gateway) = limited();
    // (path, body as sent, body upstream must receive)
    let cases = [
        (
            "/api/chat",
            format!(r#"{{"Model" : "llama3.2", "stream":false, {HI}, "options":{{"seed":1}} }}"#),
            None,
        ),
        (
            "/api/chat",
            format!(r#"{{"MODEL":"gpt-4o-mini","Stream":false,{HI}}}"#),
            Some(format!(r#"{{"MODEL":"llama3.2","Stream":false,{HI}}}"#)),
        ),
        (
            "/api/copy",
            r#"{"ſource":"gpt-4o-mini","destination":"llama-copy"}"#.to_string(),
            Some(r#"{"ſource":"llama3.2","destination":"llama-copy"}"#.to_string()),
        ),
        ("/api/create", r#"{"model":"llama-mine","from":"llama3.2","stream":false}"#.to_string(), None),
        (
            "/api/create",
            format!(
                r#"{{"model":"llama-mine","stream":false,"modelfile":{}}}"#,
                Value::from("FROM llama3.2:latest\nSYSTEM \"\"\"be brief; FROM now on, no qwen3\"\"\"\n")
            ),
            None,
        ),
    ];
    for (path, body, _) in &cases {
        let reply = send(&gateway, "POST", path, body);
        eqnice!(200, reply.status, "{path} {body}: {}", reply.text);
    }
    let received: Vec<String> = fake.requests().into_iter().map(|r| r.raw).collect();
    let want: Vec<String> =
        cases.iter().map(|(_, body, upstream_body)| upstream_body.clone().unwrap_or(body.clone())).collect();
    eqnice!(want, received, "what upstream received");
}

#[test]
fn one_allowlist_decides_what_a_token_may_use_and_what_it_is_shown() {
    let fake = Fake::start(upstream);
    let config = format!(
        "{}models = [\"llama3.2\", \"gpt-oss:*\"]\n[aliases]\n\"fast\" = \"qwen3:8b\"\n\"big\" = \
         \"gpt-oss:20b\"\n\"llama-x\" = \"qwen3:8b\"\n\"mine\" = \"llama3.2:latest\"\n",
        alice()
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));

    let tags = send(&gateway, "GET", "/api/tags", "");
    eqnice!(200, tags.status, "{}", tags.text);
    let mut shown: Vec<String> = tags.body["models"]
        .as_array()
        .expect("a models list")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    shown.sort();
    // `llama3.2` allows `llama3.2:latest`; aliases show when their target is allowed.
    eqnice!(vec!["big", "gpt-oss:20b", "llama3.2:latest", "mine"], shown, "/api/tags");
    let list = send(&gateway, "GET", "/v1/models", "");
    let mut ids: Vec<String> = list.body["data"]
        .as_array()
        .expect("a model list")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    eqnice!(shown, ids, "/v1/models lists what /api/tags shows");

    for name in &shown {
        let body = format!(r#"{{"model":"{name}","stream":false,{HI}}}"#);
        eqnice!(200, send(&gateway, "POST", "/api/chat", &body).status, "{name} is listed, so usable");
        eqnice!(200, gateway.chat(&chat_body(name, false)).status, "{name} on /v1");
        let show = format!(r#"{{"model":"{name}"}}"#);
        eqnice!(200, send(&gateway, "POST", "/api/show", &show).status, "{name} on /api/show");
        eqnice!(
            200,
            send(&gateway, "GET", &format!("/v1/models/{name}"), "").status,
            "{name} on /v1/models/{{id}}"
        );
    }
    for name in ["qwen3:8b", "fast", "llama-x", "all-minilm", "hf.co/org/model:Q4_K_M"] {
        let body = format!(r#"{{"model":"{name}","stream":false,{HI}}}"#);
        ollama_error(&send(&gateway, "POST", "/api/chat", &body), 403);
        eqnice!(403, gateway.chat(&chat_body(name, false)).status, "{name} is hidden, so refused");
        ollama_error(&send(&gateway, "POST", "/api/show", &format!(r#"{{"model":"{name}"}}"#)), 403);
        eqnice!(
            403,
            send(&gateway, "GET", &format!("/v1/models/{name}"), "").status,
            "{name} on /v1/models/{{id}}"
        );
    }
}

/// A fake whose plain answers are broken: an HTML page, JSON cut off, or nothing, by route
/// and by the model asked for.
fn broken(recorded: &Recorded) -> FakeReply {
    let text = |body: &str| FakeReply::Text { status: 200, body: body.to_string() };
    match (recorded.path.as_str(), recorded.model()) {
        ("/api/chat" | "/api/generate", "html") => text("<html><body>Bad gateway</body></html>"),
        ("/api/chat" | "/api/generate", "cut") => text(r#"{"model":"cut","message":{"role":"assistant","#),
        ("/api/chat", "empty") => text(""),
        ("/api/tags", _) => text(r#"{"models":[{"name":"llama3.2:latest""#),
        ("/api/show", _) => text(""),
        ("/api/embed", _) => text("garbage"),
        ("/api/version", _) => text("<!doctype html>"),
        ("/api/ps", _) => text("[1, 2"),
        _ => ollama(recorded),
    }
}

#[test]
fn plain_native_answers_that_are_not_json_become_502_in_ollamas_shape() {
    let fake = Fake::start(broken);
    let keys = format!("{}|{KEY_A}\n", fake.url);
    // Each bad answer is a failure of the only key: let it take them all without resting.
    let patient = "[upstream]\nfailure_threshold = 1000\n";
    let open = Gateway::start(&format!("{}\n{patient}", alice()), &keys);
    let filtered = Gateway::start(&format!("{}models = [\"*\"]\n{patient}", alice()), &keys);
    let cases = [
        ("POST", "/api/chat", r#"{"model":"html","stream":false}"#),
        ("POST", "/api/chat", r#"{"model":"cut","stream":false}"#),
        ("POST", "/api/chat", r#"{"model":"empty","stream":false}"#),
        // Read as Go reads it: this asks for a plain answer too.
        ("POST", "/api/chat", r#"{"model":"cut","Stream":false}"#),
        ("POST", "/api/generate", r#"{"model":"html","stream":false,"prompt":"x"}"#),
        ("POST", "/api/embed", r#"{"model":"all-minilm","input":"x"}"#),
        ("POST", "/api/show", r#"{"model":"llama3.2"}"#),
        ("GET", "/api/tags", ""),
        ("GET", "/api/ps", ""),
        ("GET", "/api/version", ""),
    ];
    for gateway in [&open, &filtered] {
        for (method, path, body) in cases {
            let message = ollama_error(&send(gateway, method, path, body), 502);
            assert!(message.contains("not valid JSON"), "{method} {path} {body}: {message}");
        }
    }
    let reply = send(&open, "POST", "/api/chat", r#"{"model":"llama3.2","stream":false}"#);
    eqnice!(200, reply.status, "a JSON answer passes: {}", reply.text);
}
