//! Clients of other gateways, served as they expect: Ollama's web search API passed through
//! with the pool's key, the Gin Ollama proxy's `/sys/*` routes and its error shape, and a
//! token in the JSON body's `api_key` field (as the FastAPI auth proxy took it).

use crate::fake::{ollama, Fake, FakeReply, Recorded};
use crate::util::*;
use serde_json::{json, Value};

/// A token with only the `models` scope.
const VIEWER: &str = "sk-test-viewer-1414213562";
/// A token with every scope but `admin`.
const MANAGER: &str = "sk-test-manager-2718281828";

/// What Ollama Cloud answers `/api/web_search`.
fn search_results() -> Value {
    json!({"results": [{
        "title": "Ollama",
        "url": "https://ollama.com/",
        "content": "Cloud models are now available in Ollama…",
    }]})
}

/// What Ollama Cloud answers `/api/web_fetch`.
fn fetched_page() -> Value {
    json!({"title": "Ollama", "content": "Get up and running with large language models.", "links": ["https://ollama.com/blog"]})
}

/// An Ollama Cloud with the web search API, which fails every request made with [`KEY_A`]
/// with a 500 (so requests that start on it fail over to [`KEY_B`]).
fn cloud(recorded: &Recorded) -> FakeReply {
    if recorded.authorization() == Some(&format!("Bearer {KEY_A}")) {
        return FakeReply::error(500, "internal error");
    }
    match recorded.path.as_str() {
        "/api/web_search" => FakeReply::ok(search_results()),
        "/api/web_fetch" => FakeReply::ok(fetched_page()),
        _ => FakeReply::error(404, "not found"),
    }
}

/// `alice` (the default scopes), `viewer` (`models` only) and `manager` (all three).
fn tokens() -> String {
    format!(
        "[upstream]\nfailure_threshold = 1000\n{}{}scopes = [\"models\"]\n{}scopes = [\"inference\", \"models\", \"manage\"]\n",
        alice(),
        token_entry("viewer", VIEWER, "default"),
        token_entry("manager", MANAGER, "default"),
    )
}

#[test]
fn web_search_and_fetch_reach_upstream_unchanged_with_the_pools_key() {
    let fake = Fake::start(cloud);
    let gateway = Gateway::start(&tokens(), &format!("{0}|{KEY_A}\n{0}|{KEY_B}\n", fake.url));
    let bearer = format!("Bearer {TOKEN}");
    // Spacing and key order the gateway must not touch.
    let cases = [
        ("/api/web_search", r#"{ "max_results" : 3, "query":"what is ollama?" }"#, search_results()),
        ("/api/web_fetch", r#"{"url":"https://ollama.com"}"#, fetched_page()),
    ];
    // Round robin starts one of each two on the failing key: both fail over once.
    for (path, body, answer) in &cases {
        for _ in 0..2 {
            let before = fake.count();
            let reply = gateway.post_raw(path, &[("authorization", &bearer)], body.as_bytes());
            eqnice!(200, reply.status, "{path}: {}", reply.text);
            eqjson!(answer, &reply.body, "{path}");
            let served = fake.requests().pop().expect("an upstream request");
            eqnice!((path.to_string(), body.to_string()), (served.path.clone(), served.raw.clone()));
            eqnice!(Some(format!("Bearer {KEY_B}").as_str()), served.authorization());
            assert!(fake.count() - before <= 2, "{path}: at most one failover");
        }
    }
    let failed_over =
        fake.requests().iter().filter(|r| r.authorization() == Some(&format!("Bearer {KEY_A}"))).count();
    eqnice!(2, failed_over, "one request of each pair started on the failing key");

    // Scope `inference`: a `models`-only token is refused, before upstream; no token is 401.
    let before = fake.count();
    for (path, body, _) in &cases {
        let refused =
            gateway.post_raw(path, &[("authorization", &format!("Bearer {VIEWER}"))], body.as_bytes());
        eqnice!(403, refused.status, "{path}: {}", refused.text);
        assert!(
            refused.body["error"].as_str().is_some_and(|e| e.contains("'inference' scope")),
            "{}",
            refused.text
        );
        let anonymous = gateway.post_raw(path, &[], body.as_bytes());
        eqnice!(401, anonymous.status, "{path}: {}", anonymous.text);
        assert!(anonymous.body["error"].is_string(), "Ollama's error shape: {}", anonymous.text);
        eqnice!(405, gateway.get(path).status, "{path}: POST only");
    }
    eqnice!(before, fake.count(), "refused requests never reach upstream");
}

/// A self-hosted Ollama has no web search: its 404 goes back to the client as it is.
#[test]
fn web_search_on_a_self_hosted_ollama_is_its_404() {
    let fake = Fake::start(|_| FakeReply::Text { status: 404, body: "404 page not found".into() });
    let gateway = Gateway::with_keys(&format!("{}\n", fake.url));
    let reply = gateway.post_json("/api/web_search", Some(TOKEN), &json!({"query": "ollama"}));
    eqnice!(404, reply.status, "{}", reply.text);
    eqjson!(json!({"error": "404 page not found"}), reply.body);
    eqnice!(1, fake.count(), "a 404 says nothing of the key: no failover");
}

/// An Ollama with the model-management routes the `/sys/*` aliases name; `show` knows only
/// `llama3.2`.
fn manageable(recorded: &Recorded) -> FakeReply {
    match (recorded.method.as_str(), recorded.path.as_str()) {
        ("GET", "/api/tags") => {
            FakeReply::ok(json!({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}))
        }
        ("POST", "/api/show") if recorded.model() == "llama3.2" => {
            FakeReply::ok(json!({"modelfile": "FROM llama3.2", "details": {"family": "llama"}}))
        }
        ("POST", "/api/show") => FakeReply::error(404, &format!("model '{}' not found", recorded.model())),
        ("POST", "/api/pull" | "/api/push") => {
            FakeReply::ndjson(&[json!({"status": "pulling manifest"}), json!({"status": "success"})])
        }
        ("POST", "/api/copy") | ("DELETE", "/api/delete") => {
            FakeReply::Text { status: 200, body: String::new() }
        }
        _ => FakeReply::error(404, "404 page not found"),
    }
}

/// Asserts `reply` is the Gin proxy's error shape with `status`, and returns its message.
#[track_caller]
fn gin_error(status: u16, reply: &JsonReply) -> String {
    eqnice!(status, reply.status, "{}", reply.text);
    let message = reply.body["message"].as_str().unwrap_or_else(|| panic!("no message: {}", reply.text));
    eqjson!(json!({"code": status, "message": message, "data": null}), reply.body);
    message.to_string()
}

#[test]
fn sys_routes_are_the_api_routes_with_their_scopes_and_gins_errors() {
    let fake = Fake::start(manageable);
    let gateway = Gateway::start(&tokens(), &format!("{}|{KEY_A}\n", fake.url));
    // The Gin proxy's clients send the bare token as `Authorization`, without `Bearer`.
    let (viewer, manager) = (VIEWER.to_string(), format!("Bearer {MANAGER}"));
    let cases = [
        ("GET", "/sys/tags", "/api/tags", "", &viewer),
        ("POST", "/sys/show", "/api/show", r#"{"model": "llama3.2"}"#, &viewer),
        ("POST", "/sys/pull", "/api/pull", r#"{"model": "llama3.2"}"#, &manager),
        ("POST", "/sys/push", "/api/push", r#"{"model": "llama3.2"}"#, &manager),
        ("POST", "/sys/copy", "/api/copy", r#"{"source": "llama3.2", "destination": "backup"}"#, &manager),
        ("DELETE", "/sys/delete", "/api/delete", r#"{"model": "backup"}"#, &manager),
    ];
    for (method, alias, api, body, auth) in cases {
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let reply = gateway.raw(method, alias, &headers, body.as_bytes());
        eqnice!(200, reply.status, "{method} {alias}: {}", reply.text);
        let served = fake.requests().pop().expect("an upstream request");
        eqnice!(
            (method, api, body),
            (served.method.as_str(), served.path.as_str(), served.raw.as_str()),
            "{alias}"
        );
        eqnice!(Some(format!("Bearer {KEY_A}").as_str()), served.authorization(), "{alias}");
        match alias {
            "/sys/tags" => eqnice!(Some("llama3.2:latest"), reply.body["models"][0]["name"].as_str()),
            "/sys/pull" | "/sys/push" => {
                assert!(reply.text.ends_with("{\"status\":\"success\"}\n"), "{}", reply.text)
            }
            _ => {}
        }
        // Without a token: 401; with the `models` scope alone on a `manage` route: 403.
        let missing = gateway.raw(method, alias, &headers[1..], body.as_bytes());
        assert!(gin_error(401, &missing).contains("missing API key"), "{alias}");
        if *auth == manager {
            let viewing = [("authorization", viewer.as_str()), ("content-type", "application/json")];
            let refused = gateway.raw(method, alias, &viewing, body.as_bytes());
            assert!(gin_error(403, &refused).contains("'manage' scope"), "{alias}");
        }
    }
    eqnice!(cases.len(), fake.count(), "refused requests never reach upstream");
    // An upstream error and a wrong method come in the same shape.
    let unknown = gateway.raw("POST", "/sys/show", &[("authorization", &viewer)], br#"{"model": "nope"}"#);
    eqnice!("model 'nope' not found", gin_error(404, &unknown));
    let wrong_method = gateway.raw("GET", "/sys/delete", &[("authorization", &manager)], b"");
    gin_error(405, &wrong_method);
    eqnice!(Some("DELETE, OPTIONS"), wrong_method.header("allow"));
}

/// A native chat body with the gateway token as its `api_key`, as FastAPI-proxy clients send.
fn with_body_token(token: &str) -> String {
    format!(
        r#"{{"model": "llama3.2", "stream": false, "api_key": "{token}", "messages": [{{"role": "user", "content": "Hi"}}]}}"#
    )
}

/// What upstream must get instead: the same bytes without the `api_key` member.
const WITHOUT_TOKEN: &str =
    r#"{"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "Hi"}]}"#;

/// Asserts no upstream request carried `api_key` or a client token.
#[track_caller]
fn assert_no_token_upstream(fake: &Fake) {
    for served in fake.requests() {
        for token in [TOKEN, VIEWER, MANAGER] {
            assert!(!format!("{served:?}").contains(token), "a token went upstream: {served:#?}");
        }
        assert!(!served.raw.contains("api_key"), "api_key went upstream: {}", served.raw);
    }
}

/// Off (the default), the body's `api_key` is no token: 401 before upstream. With a token in
/// the head the request is served, and the body's `api_key` is kept from upstream all the
/// same, since whoever runs the upstream would see it.
#[test]
fn without_allow_body_token_a_body_token_is_refused_and_never_forwarded() {
    let fake = Fake::start(ollama);
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url));
    let body = with_body_token(TOKEN);
    let refused = gateway.post_raw("/api/chat", &[], body.as_bytes());
    eqnice!(401, refused.status, "{}", refused.text);
    eqnice!(0, fake.count());
    let bearer = format!("Bearer {TOKEN}");
    let served = gateway.post_raw("/api/chat", &[("authorization", &bearer)], body.as_bytes());
    eqnice!(200, served.status, "{}", served.text);
    eqnice!(WITHOUT_TOKEN, fake.only_request().raw.as_str(), "every other byte as sent");
    let openai = gateway.post_raw("/v1/chat/completions", &[("authorization", &bearer)], body.as_bytes());
    eqnice!(200, openai.status, "{}", openai.text);
    assert_no_token_upstream(&fake);
}

#[test]
fn with_allow_body_token_the_body_token_is_checked_and_removed() {
    let fake = Fake::start(ollama);
    let config = format!("allow_body_token = true\n{}", tokens());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let body = with_body_token(TOKEN);
    // The pool prefix is kept while the token waits for the body.
    for path in ["/api/chat", "/v1/chat/completions", "/default/api/chat"] {
        let reply = gateway.post_raw(path, &[], body.as_bytes());
        eqnice!(200, reply.status, "{path}: {}", reply.text);
    }
    eqnice!(WITHOUT_TOKEN, fake.requests()[0].raw.as_str(), "every other byte as sent");
    gateway.wait_for_log(&["/api/chat", "token=alice", "status=200"]);
    // A token in the head wins; the body's goes unchecked, and not upstream either.
    let bearer = format!("Bearer {TOKEN}");
    let served =
        gateway.post_raw("/api/chat", &[("authorization", &bearer)], with_body_token("sk-nobody").as_bytes());
    eqnice!(200, served.status, "{}", served.text);
    // The body token's scope is the token's: `viewer` may not chat.
    let before = fake.count();
    let viewer = gateway.post_raw("/api/chat", &[], with_body_token(VIEWER).as_bytes());
    eqnice!(403, viewer.status, "{}", viewer.text);
    assert!(viewer.body["error"].as_str().is_some_and(|e| e.contains("viewer")), "{}", viewer.text);
    // Not a string: a 400 naming the field; none at all: a 401, as without the setting.
    let bad =
        gateway.post_raw("/v1/chat/completions", &[], br#"{"api_key": 42, "model": "m", "messages": []}"#);
    eqnice!(400, bad.status, "{}", bad.text);
    eqnice!(Some("api_key"), bad.body["error"]["param"].as_str());
    let none = gateway.post_raw("/api/chat", &[], WITHOUT_TOKEN.as_bytes());
    eqnice!(401, none.status, "{}", none.text);
    eqnice!(before, fake.count(), "refused requests never reach upstream");
    assert_no_token_upstream(&fake);
    let logs = gateway.logs();
    for token in [TOKEN, VIEWER] {
        assert!(!logs.contains(token), "a token in the log:\n{logs}");
    }
}

/// A wrong token in the body counts towards the address's lock-out as a wrong token in the
/// head does: after 20, the address is refused with 429 whatever it sends.
#[test]
fn a_wrong_body_token_counts_towards_the_lock_out() {
    let fake = Fake::start(ollama);
    let config = format!("allow_body_token = true\n{}", alice());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let wrong = with_body_token("sk-guess-0000000000");
    for attempt in 0..20 {
        let reply = gateway.post_raw("/api/chat", &[], wrong.as_bytes());
        eqnice!(401, reply.status, "attempt {attempt}: {}", reply.text);
        assert!(
            reply.body["error"].as_str().is_some_and(|e| e.contains("invalid API key")),
            "{}",
            reply.text
        );
    }
    let locked = gateway.post_raw("/api/chat", &[], with_body_token(TOKEN).as_bytes());
    eqnice!(429, locked.status, "{}", locked.text);
    eqnice!(0, fake.count());
}
