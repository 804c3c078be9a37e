//! `GET /metrics` on the real binary: the series an operator looks for after a few
//! requests (streamed and not, one key refused upstream), the text checked by `promtool
//! check metrics`, no secret in it, and who may scrape.
//!
//! `promtool` comes from Debian's `prometheus` package, which `.ci/run` installs. Without it
//! the promtool step is skipped with a note on the terminal, unless `CI`,
//! `OLLAMA_GATEWAY_REQUIRE_PROMTOOL` or `OLLAMA_GATEWAY_PROMTOOL` is set: then it fails.

use crate::fake::{healthy, Fake, FakeReply};
use crate::util::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// A token with the `admin` scope (named `ops`).
const ADMIN: &str = "sk-test-ops-admin-0123456789";

/// The config of these tests: [`TOKEN`] (`alice`, inference and models) and [`ADMIN`].
fn config(extra: &str) -> String {
    format!(
        "{extra}\n{}\n[[tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
        alice(),
        sha256_hex(ADMIN)
    )
}

/// Every sample of a scrape by its series (name and labels as written), checking each
/// line's shape on the way.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (series, value) =
            line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line without a value: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(samples.insert(series.to_string(), value).is_none(), "{series} appears twice");
    }
    samples
}

/// `GET /metrics` with these headers.
fn scrape(gateway: &Gateway, headers: &[(&str, &str)]) -> JsonReply {
    gateway.raw("GET", "/metrics", headers, b"")
}

/// The value of `series`, or 0 when the scrape has none.
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[test]
fn a_scrape_after_a_few_requests_shows_what_happened() {
    // KEY_A answers like Ollama; KEY_B is refused (401), so it is set aside after one try.
    let fake = Fake::start(|recorded| match recorded.authorization() {
        Some(auth) if auth.ends_with(KEY_B) => FakeReply::error(401, "unauthorized"),
        _ => healthy(recorded),
    });
    let keys = format!("{url}|{KEY_A} name=good-1\n{url}|{KEY_B}\n", url = fake.url);
    let gateway = Gateway::start(&config("[upstream]\nstrategy = \"round-robin\""), &keys);

    for _ in 0..2 {
        eqnice!(200, gateway.chat(&chat_body("llama3.2", false)).status);
    }
    let events = gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("llama3.2", true));
    assert!(events.iter().any(|(_, data)| data == "[DONE]"), "{events:?}");
    let native =
        json!({"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "Hi"}]});
    eqnice!(200, gateway.post_json("/api/chat", Some(TOKEN), &native).status);
    eqnice!(401, gateway.post_json("/v1/chat/completions", None, &chat_body("llama3.2", false)).status);
    eqnice!(404, gateway.get("/nowhere").status);
    let refused =
        fake.requests().iter().filter(|r| r.authorization().is_some_and(|a| a.ends_with(KEY_B))).count();
    eqnice!(1, refused, "KEY_B is tried once, then known invalid");

    // A request is counted just after its answer is written: wait for the last of them.
    let mut text = String::new();
    wait_until(PATIENCE, "the scrape counts every request", || {
        let reply = scrape(&gateway, &[]);
        assert_eq!(reply.status, 200, "{}", reply.text);
        eqnice!(Some("text/plain; version=0.0.4; charset=utf-8"), reply.header("content-type"));
        text = reply.text;
        let samples = samples(&text);
        value(&samples, r#"ollama_gateway_requests_total{family="openai",status="200",token="alice"}"#) == 3.0
            && value(&samples, r#"ollama_gateway_requests_total{family="other",status="404",token="-"}"#)
                == 1.0
            && value(&samples, r#"ollama_gateway_requests_total{family="ollama",status="200",token="alice"}"#)
                == 1.0
    });
    let samples = samples(&text);
    let want = [
        (r#"ollama_gateway_requests_total{family="openai",status="401",token="-"}"#, 1.0),
        (r#"ollama_gateway_upstream_attempts_total{pool="default",key="good-1",outcome="ok"}"#, 4.0),
        (r#"ollama_gateway_upstream_attempts_total{pool="default",key="kb-9…BBBB",outcome="invalid"}"#, 1.0),
        (r#"ollama_gateway_key_state{pool="default",key="kb-9…BBBB",state="invalid"}"#, 1.0),
        (r#"ollama_gateway_key_state{pool="default",key="kb-9…BBBB",state="healthy"}"#, 0.0),
        (r#"ollama_gateway_key_state{pool="default",key="good-1",state="healthy"}"#, 1.0),
        (r#"ollama_gateway_key_state{pool="default",key="good-1",state="exhausted"}"#, 0.0),
        // Three answers of 3 + 5 tokens (chat, chat, native chat) and a stream of 3 + 1.
        (r#"ollama_gateway_tokens_total{token="alice",model="llama3.2",kind="prompt"}"#, 12.0),
        (r#"ollama_gateway_tokens_total{token="alice",model="llama3.2",kind="completion"}"#, 16.0),
        // The three chats and the 401, each with a time to first byte.
        (r#"ollama_gateway_request_duration_seconds_count{family="openai"}"#, 4.0),
        (r#"ollama_gateway_request_duration_seconds_bucket{family="openai",le="+Inf"}"#, 4.0),
        (r#"ollama_gateway_time_to_first_byte_seconds_count{family="openai"}"#, 4.0),
        (r#"ollama_gateway_request_duration_seconds_count{family="ollama"}"#, 1.0),
        (r#"ollama_gateway_request_duration_seconds_count{family="anthropic"}"#, 0.0),
        // The scrape itself holds no place.
        ("ollama_gateway_requests_in_flight", 0.0),
        ("ollama_gateway_requests_queued", 0.0),
        (&format!(r#"ollama_gateway_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")), 1.0),
    ];
    let got: Vec<(&str, Option<f64>)> =
        want.iter().map(|(series, _)| (*series, samples.get(*series).copied())).collect();
    let expected: Vec<(&str, Option<f64>)> =
        want.iter().map(|(series, value)| (*series, Some(*value))).collect();
    eqnice!(expected, got, "scrape:\n{text}");
    assert!(value(&samples, "ollama_gateway_uptime_seconds") > 0.0);
    // Each request's duration and time to first byte fall in some bucket at or under 30 s,
    // and the first byte never comes after the last.
    let under =
        |name: &str| value(&samples, &format!(r#"ollama_gateway_{name}_bucket{{family="openai",le="30"}}"#));
    eqnice!((4.0, 4.0), (under("request_duration_seconds"), under("time_to_first_byte_seconds")));
    let sum = |name: &str| value(&samples, &format!(r#"ollama_gateway_{name}_sum{{family="openai"}}"#));
    assert!(sum("time_to_first_byte_seconds") <= sum("request_duration_seconds"), "{text}");
    // An outcome that never happened has no series.
    assert!(!samples.contains_key(
        r#"ollama_gateway_upstream_attempts_total{pool="default",key="kb-9…BBBB",outcome="ok"}"#
    ));

    for secret in [KEY_A, KEY_B, TOKEN, ADMIN, "0123456789-secret", "9876543210-secret", "sk-test-"] {
        assert!(!text.contains(secret), "{secret:?} appears in the scrape:\n{text}");
    }
    promtool_check(&text);
}

#[test]
fn from_127_0_0_1_a_scrape_is_open_by_default() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(&config(""), &format!("{}|{KEY_A}\n", fake.url));
    let reply = scrape(&gateway, &[]);
    eqnice!(200, reply.status, "{}", reply.text);
    assert!(reply.text.contains("# TYPE ollama_gateway_requests_total counter\n"), "{}", reply.text);
    // A scrape is logged at debug level only, so a scraper does not fill the log.
    assert!(!gateway.logs().contains("GET /metrics"), "{}", gateway.logs());
}

#[test]
fn behind_a_trusted_proxy_on_loopback_a_scrape_goes_by_the_forwarded_address() {
    let fake = Fake::start(healthy);
    let gateway =
        Gateway::start(&config("trusted_proxies = [\"127.0.0.1/32\"]"), &format!("{}|{KEY_A}\n", fake.url));
    let from_outside = scrape(&gateway, &[("X-Forwarded-For", "203.0.113.5")]);
    assert_envelope(&from_outside, 401);
    let from_the_host = scrape(&gateway, &[("X-Forwarded-For", "127.0.0.1")]);
    eqnice!(200, from_the_host.status, "{}", from_the_host.text);
    let admin = format!("Bearer {ADMIN}");
    let with_token = scrape(&gateway, &[("X-Forwarded-For", "203.0.113.5"), ("Authorization", &admin)]);
    eqnice!(200, with_token.status, "{}", with_token.text);
}

#[test]
fn wrong_tokens_on_metrics_count_toward_the_lock_out_and_token_limits_hold_there() {
    let fake = Fake::start(healthy);
    let expired = "sk-test-ops-expired-0123456789";
    let config = format!(
        "{}[[tokens]]\nname = \"old-ops\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\nexpires = \"2020-01-01T00:00:00Z\"\n",
        config("[metrics]\nallow_from = []"),
        sha256_hex(expired)
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let old = format!("Bearer {expired}");
    let error = assert_envelope(&scrape(&gateway, &[("Authorization", &old)]), 403);
    assert!(error.message.contains("expired"), "an expired admin token does not scrape: {error:?}");
    for _ in 0..20 {
        assert_envelope(&scrape(&gateway, &[("Authorization", "Bearer sk-a-guess-0000000000")]), 401);
    }
    let admin = format!("Bearer {ADMIN}");
    assert_envelope(&scrape(&gateway, &[("Authorization", &admin)]), 429);
    let bearer = format!("Bearer {TOKEN}");
    let models = gateway.raw("GET", "/v1/models", &[("Authorization", &bearer)], b"");
    eqnice!(429, models.status, "guesses on /metrics lock the address out of every route: {}", models.text);
}

#[test]
fn a_forwarded_request_is_not_loopback_while_no_proxy_is_trusted() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(&config(""), &format!("{}|{KEY_A}\n", fake.url));
    // A proxy on this host forwarding a client from elsewhere, with trusted_proxies unset.
    assert_envelope(&scrape(&gateway, &[("X-Forwarded-For", "203.0.113.5")]), 401);
    assert_envelope(&scrape(&gateway, &[("Forwarded", "for=203.0.113.5")]), 401);
    eqnice!(200, scrape(&gateway, &[]).status, "loopback itself still scrapes");
}

#[test]
fn outside_allow_from_a_scrape_needs_an_admin_token() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(
        &config("[metrics]\nallow_from = [\"10.0.0.0/8\", \"fd00::/8\"]"),
        &format!("{}|{KEY_A}\n", fake.url),
    );
    let anonymous = scrape(&gateway, &[]);
    let error = assert_envelope(&anonymous, 401);
    assert!(error.message.contains("allow_from") && error.message.contains("'admin' scope"), "{error:?}");
    let wrong = scrape(&gateway, &[("Authorization", "Bearer sk-not-a-token-0123456789")]);
    assert_envelope(&wrong, 401);
    let bearer = format!("Bearer {TOKEN}");
    let error = assert_envelope(&scrape(&gateway, &[("Authorization", &bearer)]), 403);
    assert!(error.message.contains("token 'alice'") && error.message.contains("'admin' scope"), "{error:?}");
    let admin = format!("Bearer {ADMIN}");
    let reply = scrape(&gateway, &[("Authorization", &admin)]);
    eqnice!(200, reply.status, "{}", reply.text);
    assert!(reply.text.contains("ollama_gateway_build_info{"), "{}", reply.text);
    // Refused scrapes are logged (someone tried); the token's name is, never the token.
    gateway.wait_for_log(&["GET /metrics", "status=403", "token=alice"]);
    assert!(!gateway.logs().contains(ADMIN) && !gateway.logs().contains(TOKEN));
    // The scrapes count under family "other", by the token they came with.
    let samples = samples(&scrape(&gateway, &[("Authorization", &admin)]).text);
    eqnice!(
        1.0,
        value(&samples, r#"ollama_gateway_requests_total{family="other",status="403",token="alice"}"#)
    );
    eqnice!(2.0, value(&samples, r#"ollama_gateway_requests_total{family="other",status="401",token="-"}"#));
}

#[test]
fn with_metrics_disabled_there_is_no_route() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(&config("[metrics]\nenabled = false"), &format!("{}|{KEY_A}\n", fake.url));
    eqnice!(404, scrape(&gateway, &[]).status);
}

/// Pipes `text` to `promtool check metrics`, which must find nothing to say.
fn promtool_check(text: &str) {
    let configured = std::env::var_os("OLLAMA_GATEWAY_PROMTOOL");
    let promtool = configured.clone().unwrap_or_else(|| "promtool".into());
    let child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            let why = format!("cannot run {promtool:?}: {err}");
            let required = ["CI", "OLLAMA_GATEWAY_REQUIRE_PROMTOOL", "OLLAMA_GATEWAY_PROMTOOL"]
                .into_iter()
                .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0"));
            if let Some(var) = required {
                panic!(
                    "{why}\n{var} is set, so the scrape must be checked: .ci/run installs promtool \
                     (Debian's `prometheus` package) and sets OLLAMA_GATEWAY_PROMTOOL"
                );
            }
            // Straight to the terminal: the test harness captures `eprintln!` of a test that
            // passes, and a skipped check must not pass unnoticed.
            let _ = writeln!(
                std::io::stderr(),
                "\nSKIPPED the promtool step of metrics::a_scrape_after_a_few_requests_shows_what_happened: {why}\n\
                 (install it with `apt-get install prometheus`, or point OLLAMA_GATEWAY_PROMTOOL at it)\n"
            );
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("write the scrape to promtool");
    }
    let output = child.wait_with_output().expect("wait for promtool");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\nscrape:\n{text}",
        output.status
    );
}
