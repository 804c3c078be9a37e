//! Client tokens (missing, wrong, `Authorization` or `x-api-key`, anonymous), which
//! upstream key a request carries (keys.txt forms, pools), and secrets never reaching
//! responses, upstream headers or logs.

use crate::fake::{chat_answer, healthy, Fake, FakeReply};
use crate::util::*;
use serde_json::json;

const WRONG_TOKEN: &str = "sk-wrong-mallory-31415926535";

#[test]
fn a_request_without_a_token_is_refused_before_upstream() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url));
    let error =
        assert_envelope(&gateway.post_json("/v1/chat/completions", None, &chat_body("m", false)), 401);
    eqnice!(("invalid_request_error", Some("invalid_api_key")), (error.kind.as_str(), error.code.as_deref()));
    eqnice!(0, fake.count(), "no upstream call without a token");
}

#[test]
fn a_wrong_token_is_refused_and_never_echoed() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url));
    for headers in
        [[("authorization", format!("Bearer {WRONG_TOKEN}"))], [("x-api-key", WRONG_TOKEN.to_string())]]
    {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply =
            gateway.post_raw("/v1/chat/completions", &headers, chat_body("m", false).to_string().as_bytes());
        let error = assert_envelope(&reply, 401);
        eqnice!(Some("invalid_api_key"), error.code.as_deref());
        assert!(!reply.text.contains("mallory"), "the reply echoes the token: {}", reply.text);
    }
    eqnice!(0, fake.count());
    gateway.wait_for_log(&["/v1/chat/completions", "401"]);
    assert!(!gateway.logs().contains("mallory"), "the logs hold the presented token:\n{}", gateway.logs());
}

#[test]
fn the_token_may_come_as_x_api_key() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url));
    let reply = gateway.post_raw(
        "/v1/chat/completions",
        &[("x-api-key", TOKEN)],
        chat_body("m", false).to_string().as_bytes(),
    );
    completion(&reply);
    eqnice!(1, fake.count());
}

/// (keys.txt form, its line given the fake's URL, the Authorization upstream must see)
type KeyForm<'a> = (&'a str, fn(&str) -> String, Option<&'a str>);

#[test]
fn upstream_gets_the_pool_key_and_never_the_client_token() {
    let bearer_a = format!("Bearer {KEY_A}");
    let bearer_a = Some(bearer_a.as_str());
    let cases: [KeyForm; 4] = [
        ("KEY with [upstream] base_url", |_| format!("{KEY_A}\n"), bearer_a),
        ("URL|KEY", |url| format!("{url}|{KEY_A}\n"), bearer_a),
        ("KEY|URL", |url| format!("{KEY_A}|{url}\n"), bearer_a),
        ("URL, keyless", |url| format!("{url}\n"), None),
    ];
    for (form, line, want) in cases {
        let fake = Fake::start(healthy);
        let config = format!("[upstream]\nbase_url = \"{}\"\n{}", fake.url, alice());
        let gateway = Gateway::start(&config, &line(&fake.url));
        completion(&gateway.chat(&chat_body("m", false)));
        let upstream = fake.only_request();
        eqnice!(want, upstream.authorization(), "{form}");
        for (name, value) in &upstream.headers {
            assert!(!value.contains(TOKEN), "{form}: the client token went upstream in {name}: {value}");
        }
    }
}

#[test]
fn a_token_draws_only_from_its_own_pool() {
    let (fake_default, fake_b) = (Fake::start(healthy), Fake::start(healthy));
    const BOB: &str = "sk-test-bob-9876543210";
    let config = format!("{}{}", alice(), token_entry("bob", BOB, "b"));
    let keys = format!("{}|{KEY_A}\n[b]\n{}|{KEY_B}\n", fake_default.url, fake_b.url);
    let gateway = Gateway::start(&config, &keys);

    for _ in 0..3 {
        completion(&gateway.post_json("/v1/chat/completions", Some(BOB), &chat_body("m", false)));
    }
    eqnice!((0, 3), (fake_default.count(), fake_b.count()), "bob's requests go to pool [b] only");
    for upstream in fake_b.requests() {
        eqnice!(Some(format!("Bearer {KEY_B}").as_str()), upstream.authorization());
    }
    completion(&gateway.chat(&chat_body("m", false)));
    eqnice!((1, 3), (fake_default.count(), fake_b.count()), "alice's request goes to the default pool");
}

#[test]
fn logs_and_replies_never_hold_a_whole_key_or_token() {
    // The first key's upstream quotes the key back in its error, as some proxies do.
    let fake = Fake::start(|recorded| {
        if recorded.authorization() == Some(&format!("Bearer {KEY_A}")) {
            FakeReply::error(401, &format!("invalid key {KEY_A}"))
        } else if recorded.wants_stream() {
            healthy(recorded)
        } else {
            FakeReply::ok(chat_answer("fine"))
        }
    });
    let config = format!("[upstream]\nmax_attempts = 1\n{}", alice());
    let gateway = Gateway::start(&config, &format!("{0}|{KEY_A}\n{0}|{KEY_B}\n", fake.url));
    let mut bodies = Vec::new();
    for stream in [false, true, false, true] {
        let mut conn = gateway.open_stream(&chat_body("m", stream));
        if conn.status == 200 && stream {
            bodies.extend(conn.events().into_iter().map(|(_, payload)| payload));
        } else {
            bodies.push(conn.read_body());
        }
    }
    bodies.push(gateway.post_json("/v1/chat/completions", Some(WRONG_TOKEN), &chat_body("m", false)).text);
    assert!(
        bodies.iter().any(|b| b.contains("invalid key")),
        "one reply quotes the upstream error: {bodies:#?}"
    );
    gateway.wait_for_log(&["/v1/chat/completions", "401"]);
    let logs = gateway.logs();
    for secret in [KEY_A, KEY_B, TOKEN, WRONG_TOKEN] {
        assert!(!logs.contains(secret), "the logs hold {secret}:\n{logs}");
        for body in &bodies {
            assert!(!body.contains(secret), "a reply holds {secret}: {body}");
        }
    }
}

#[test]
fn anonymous_requests_are_served_when_allowed() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start("allow_anonymous = true", &format!("{}\n", fake.url));
    completion(&gateway.post_json("/v1/chat/completions", None, &chat_body("m", false)));
    let events = gateway.stream(
        "/v1/chat/completions",
        None,
        &json!({
            "model": "m", "stream": true, "messages": [{"role": "user", "content": "Hi"}],
        }),
    );
    assert!(matches!(decode_events(&events).last(), Some(Event::Done)), "{events:?}");
    eqnice!(2, fake.count());
}
