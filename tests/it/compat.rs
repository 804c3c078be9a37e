//! Clients of other gateways, served as they expect: Ollama's web search API passed through
//! with the pool's key, the Gin Ollama proxy's `/sys/*` routes and its error shape, and a
//! token in the JSON body's `api_key` field (as the FastAPI auth proxy took it).

use crate::fake::{Fake, FakeReply, Recorded};
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
    let failed_over = fake.requests().iter().filter(|r| r.authorization() == Some(&format!("Bearer {KEY_A}"))).count();
    eqnice!(2, failed_over, "one request of each pair started on the failing key");

    // Scope `inference`: a `models`-only token is refused, before upstream; no token is 401.
    let before = fake.count();
    for (path, body, _) in &cases {
        let refused = gateway.post_raw(path, &[("authorization", &format!("Bearer {VIEWER}"))], body.as_bytes());
        eqnice!(403, refused.status, "{path}: {}", refused.text);
        assert!(refused.body["error"].as_str().is_some_and(|e| e.contains("'inference' scope")), "{}", refused.text);
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
