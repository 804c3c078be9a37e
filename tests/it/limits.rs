//! Per-token limits (`rpm`, `max_concurrent`, `daily_tokens`, `expires`, `ips`) and the lock-out of an
//! address after wrong tokens, on the real binary: each refusal in its family's envelope,
//! from the request's head, without an upstream call. The windows themselves (a minute,
//! five minutes) are unit-tested with a clock passed in (`limits`, `lockout`); these tests
//! only check what happens within seconds.

use crate::fake::{content_line, done_line};
use crate::fake::{healthy, Fake, FakeReply, Gate, Ndjson, OpenOnDrop};
use crate::util::named::assert_anthropic_error;
use crate::util::*;
use serde_json::{json, Value};
use std::time::Duration;

const BOB: &str = "sk-test-bob-9876543210";
const WRONG: &str = "sk-wrong-guess-000000000";

/// A `[[tokens]]` block for [`TOKEN`] (`alice`) with extra lines such as `rpm = 3`.
fn alice_with(limits: &str) -> String {
    format!("{}{limits}\n", alice())
}

/// A Messages request.
fn messages_body() -> Value {
    json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
}

/// `POST path` as `token` with a JSON body and extra headers.
fn post_as(gateway: &Gateway, path: &str, token: &str, headers: &[(&str, &str)], body: &Value) -> JsonReply {
    let bearer = format!("Bearer {token}");
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    gateway.post_raw(path, &all, body.to_string().as_bytes())
}

/// A chat completion as `token` with extra headers.
fn chat_as(gateway: &Gateway, token: &str, headers: &[(&str, &str)]) -> JsonReply {
    post_as(gateway, "/v1/chat/completions", token, headers, &chat_body("m", false))
}

/// The `Retry-After` of a reply, in seconds.
#[track_caller]
fn retry_after(reply: &JsonReply) -> u64 {
    let value = reply.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {reply:?}"));
    value.parse().unwrap_or_else(|_| panic!("Retry-After is not seconds: {value:?}"))
}

/// Asserts Ollama's error shape, `{"error": "…"}`, with `status`; returns the message.
#[track_caller]
fn assert_ollama_error(reply: &JsonReply, status: u16) -> String {
    assert_eq!(reply.status, status, "status; body: {}", reply.text);
    let keys: Vec<&String> = reply.body.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    eqnice!(vec!["error"], keys, "{}", reply.text);
    reply.body["error"].as_str().expect("a message").to_string()
}

#[test]
fn rpm_refuses_the_fourth_request_in_a_minute_in_every_envelope_without_upstream() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(&alice_with("rpm = 3"), &format!("{}|{KEY_A}\n", fake.url));
    for i in 0..3 {
        completion(&gateway.chat(&chat_body("m", false)));
        eqnice!(i + 1, fake.count());
    }
    let refused = gateway.chat(&chat_body("m", false));
    let error = assert_envelope(&refused, 429);
    eqnice!(("rate_limit_error", Some("rate_limit_exceeded")), (error.kind.as_str(), error.code.as_deref()));
    let wait = retry_after(&refused);
    assert!((50..=60).contains(&wait), "the first request leaves the window within a minute: {wait}");
    eqnice!(format!("token 'alice' is over its rpm = 3 limit; retry in {wait} s"), error.message);

    let refused = post_as(&gateway, "/v1/messages", TOKEN, &[], &messages_body());
    let message = assert_anthropic_error(&refused, 429, "rate_limit_error");
    assert!(message.contains("rpm = 3") && retry_after(&refused) <= 60, "{message}");
    let refused = post_as(&gateway, "/api/chat", TOKEN, &[], &chat_body("m", false));
    assert!(assert_ollama_error(&refused, 429).contains("rpm = 3"));
    assert!(retry_after(&refused) <= 60);
    eqnice!(3, fake.count(), "no refused request reached upstream");
    gateway.wait_for_log(&["/api/chat", "token=alice", "status=429"]);
}

#[test]
fn a_reload_applies_the_new_rpm_to_the_requests_already_counted() {
    let fake = Fake::start(healthy);
    let keys = format!("{}|{KEY_A}\n", fake.url);
    let gateway = Gateway::start(&alice_with("rpm = 3"), &keys);
    for _ in 0..3 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    assert_envelope(&gateway.chat(&chat_body("m", false)), 429);
    gateway.dir().rewrite("config.toml", &format!("listen = \"127.0.0.1:0\"\n{}", alice_with("rpm = 4")));
    gateway.signal("HUP");
    gateway.wait_for_log(&["reloaded"]);
    completion(&gateway.chat(&chat_body("m", false)));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 429);
    assert!(error.message.contains("rpm = 4"), "the new limit, over the 4 made: {}", error.message);
    eqnice!(4, fake.count());
}

/// A fake whose chat streams send one line, then wait at `gate` before their end.
fn held_streams(gate: &std::sync::Arc<Gate>) -> Fake {
    let gate = std::sync::Arc::clone(gate);
    Fake::start(move |recorded| match recorded.wants_stream() {
        true => FakeReply::Ndjson(Ndjson {
            lines: vec![content_line("Hel").to_string(), done_line("stop", 3, 1).to_string()],
            delay: Duration::ZERO,
            gate: Some(std::sync::Arc::clone(&gate)),
        }),
        false => healthy(recorded),
    })
}

/// Sends chats until one is not a 429 (the gateway counts a stream out just after its last
/// byte has left, so a request sent at once may still find it), and returns that reply.
fn chat_once_free(gateway: &Gateway) -> JsonReply {
    let mut reply = None;
    wait_until(PATIENCE, "a request is no longer over max_concurrent", || {
        let next = gateway.chat(&chat_body("m", false));
        let free = next.status != 429;
        reply = Some(next);
        free
    });
    reply.expect("a reply")
}

#[test]
fn max_concurrent_counts_a_stream_until_it_ends() {
    let gate = Gate::new();
    let _opened = OpenOnDrop(std::sync::Arc::clone(&gate));
    let fake = held_streams(&gate);
    let gateway = Gateway::start(&alice_with("max_concurrent = 1"), &format!("{}|{KEY_A}\n", fake.url));
    let mut stream = gateway.open_stream(&chat_body("m", true));
    eqnice!(200, stream.status);
    assert!(stream.next_event().is_some(), "the stream is under way");

    let refused = gateway.chat(&chat_body("m", false));
    let error = assert_envelope(&refused, 429);
    eqnice!(1, retry_after(&refused));
    assert!(error.message.contains("max_concurrent = 1"), "{}", error.message);
    let refused = post_as(&gateway, "/v1/messages", TOKEN, &[], &messages_body());
    assert!(assert_anthropic_error(&refused, 429, "rate_limit_error").contains("max_concurrent = 1"));
    let refused = post_as(&gateway, "/api/chat", TOKEN, &[], &chat_body("m", false));
    assert!(assert_ollama_error(&refused, 429).contains("max_concurrent = 1"));
    eqnice!(1, fake.count(), "only the stream reached upstream");

    gate.open();
    let _rest = stream.events();
    completion(&chat_once_free(&gateway));
    // Plain answers are counted out before they are sent: back to back, none is refused.
    for _ in 0..5 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
}

#[test]
fn max_concurrent_frees_the_place_of_a_stream_whose_client_left() {
    let gate = Gate::new();
    let _opened = OpenOnDrop(std::sync::Arc::clone(&gate));
    let fake = held_streams(&gate);
    let gateway = Gateway::start(&alice_with("max_concurrent = 1"), &format!("{}|{KEY_A}\n", fake.url));
    let mut stream = gateway.open_stream(&chat_body("m", true));
    assert!(stream.next_event().is_some(), "the stream is under way");
    assert_envelope(&gateway.chat(&chat_body("m", false)), 429);
    drop(stream);
    // The gateway finds the client gone at its next write, once upstream sends more.
    gate.open();
    completion(&chat_once_free(&gateway));
}

#[test]
fn daily_tokens_refuse_requests_once_the_days_use_reaches_them() {
    let fake = Fake::start(healthy);
    // Each answer counts 3 prompt and 5 completion tokens: two requests use 16 of 10.
    let gateway = Gateway::start(&alice_with("daily_tokens = 10"), &format!("{}|{KEY_A}\n", fake.url));
    for i in 0..2 {
        eqnice!(200, chat_as(&gateway, TOKEN, &[]).status, "request {i}, under the day's limit");
        // The day's use is counted when a request's log line is written.
        wait_until(PATIENCE, "the request is counted", || {
            gateway.logs().lines().filter(|line| line.contains("tokens=3+5")).count() > i
        });
    }
    let over = chat_as(&gateway, TOKEN, &[]);
    let error = assert_envelope(&over, 429);
    assert!(error.message.contains("daily_tokens = 10") && error.message.contains("16 tokens"), "{error:?}");
    let wait = retry_after(&over);
    assert!((1..=86_400).contains(&wait), "retry when the UTC day ends: {wait}");
    let error = assert_ollama_error(&post_as(&gateway, "/api/chat", TOKEN, &[], &chat_body("m", false)), 429);
    assert!(error.contains("daily_tokens"), "{error}");
    eqnice!(2, fake.requests().len(), "the refused requests never reached upstream");
}

#[test]
fn an_expired_token_gets_403_in_every_envelope() {
    let fake = Fake::start(healthy);
    let config = format!(
        "{}{}",
        alice_with("expires = \"2020-01-01T00:00:00Z\""),
        token_entry("bob", BOB, "default") + "expires = 2999-01-01T00:00:00Z\n"
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 403);
    eqnice!(("permission_error", Some("token_expired")), (error.kind.as_str(), error.code.as_deref()));
    assert!(error.message.contains("token 'alice' expired at 2020-01-01 00:00Z"), "{}", error.message);
    let refused = post_as(&gateway, "/v1/messages", TOKEN, &[], &messages_body());
    assert!(assert_anthropic_error(&refused, 403, "permission_error").contains("expired"));
    let refused = post_as(&gateway, "/api/chat", TOKEN, &[], &chat_body("m", false));
    assert!(assert_ollama_error(&refused, 403).contains("expired"));
    eqnice!(0, fake.count());
    completion(&chat_as(&gateway, BOB, &[]));
}

#[test]
fn ips_allow_only_their_addresses_and_ignore_x_forwarded_for_from_an_untrusted_peer() {
    let fake = Fake::start(healthy);
    let config = format!(
        "{}{}",
        alice_with("ips = [\"10.0.0.0/8\"]"),
        token_entry("bob", BOB, "default") + "ips = [\"127.0.0.1/32\"]\n"
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    for forwarded in [None, Some("10.1.2.3")] {
        let headers: Vec<(&str, &str)> = forwarded.iter().map(|f| ("x-forwarded-for", *f)).collect();
        let error = assert_envelope(&chat_as(&gateway, TOKEN, &headers), 403);
        eqnice!(Some("address_not_allowed"), error.code.as_deref(), "{forwarded:?}");
        assert!(error.message.contains("from 127.0.0.1"), "{}", error.message);
        completion(&chat_as(&gateway, BOB, &headers));
    }
    let refused = post_as(&gateway, "/v1/messages", TOKEN, &[], &messages_body());
    assert!(assert_anthropic_error(&refused, 403, "permission_error").contains("127.0.0.1"));
    let refused = post_as(&gateway, "/api/chat", TOKEN, &[], &chat_body("m", false));
    assert!(assert_ollama_error(&refused, 403).contains("not in its ips"));
    eqnice!(2, fake.count(), "bob's two requests only");
}

#[test]
fn behind_a_trusted_proxy_ips_go_by_the_forwarded_address() {
    let fake = Fake::start(healthy);
    let config = format!("trusted_proxies = [\"127.0.0.1/32\"]\n{}", alice_with("ips = [\"10.0.0.0/8\"]"));
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    completion(&chat_as(&gateway, TOKEN, &[("x-forwarded-for", "10.1.2.3")]));
    // The right-most address that is not a trusted proxy: the client cannot pick its own.
    completion(&chat_as(&gateway, TOKEN, &[("x-forwarded-for", "203.0.113.9, 10.1.2.3")]));
    let error =
        assert_envelope(&chat_as(&gateway, TOKEN, &[("x-forwarded-for", "10.1.2.3, 203.0.113.9")]), 403);
    assert!(error.message.contains("from 203.0.113.9"), "{}", error.message);
    assert_envelope(&chat_as(&gateway, TOKEN, &[]), 403);
}

/// Sends `n` chats with a wrong token (and `headers`), each refused with 401.
#[track_caller]
fn guess(gateway: &Gateway, n: usize, headers: &[(&str, &str)]) {
    for i in 0..n {
        let error = assert_envelope(&chat_as(gateway, WRONG, headers), 401);
        eqnice!(Some("invalid_api_key"), error.code.as_deref(), "wrong token {i}");
    }
}

#[test]
fn twenty_wrong_tokens_lock_the_address_out_of_every_route() {
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(&alice(), &format!("{}|{KEY_A}\n", fake.url));
    // Missing tokens are a client not set up yet, not guessing: they never lock.
    for _ in 0..25 {
        assert_envelope(&gateway.post_json("/v1/chat/completions", None, &chat_body("m", false)), 401);
    }
    guess(&gateway, 19, &[]);
    completion(&gateway.chat(&chat_body("m", false)));
    guess(&gateway, 1, &[]);
    gateway.wait_for_log(&["127.0.0.1", "20 wrong tokens", "refusing every request from it for 300 s"]);

    let locked = gateway.chat(&chat_body("m", false));
    let error = assert_envelope(&locked, 429);
    eqnice!(Some("too_many_wrong_tokens"), error.code.as_deref());
    assert!(error.message.contains("too many wrong tokens from 127.0.0.1"), "{}", error.message);
    let wait = retry_after(&locked);
    assert!((290..=300).contains(&wait), "about 5 minutes: {wait}");
    let refused = post_as(&gateway, "/v1/messages", TOKEN, &[], &messages_body());
    assert!(assert_anthropic_error(&refused, 429, "rate_limit_error").contains("wrong tokens"));
    assert!(retry_after(&refused) <= 300);
    let refused = post_as(&gateway, "/api/chat", TOKEN, &[], &chat_body("m", false));
    assert!(assert_ollama_error(&refused, 429).contains("wrong tokens"));
    for path in ["/health", "/", "/v1/models", "/nowhere"] {
        let reply = gateway.get(path);
        eqnice!(429, reply.status, "{path}: {}", reply.text);
        assert!(retry_after(&reply) <= 300, "{path}");
    }
    eqnice!(1, fake.count(), "only the one right request before the lock went upstream");
    assert!(!gateway.logs().contains(WRONG), "a wrong token was logged");
}

#[test]
fn x_forwarded_for_picks_the_locked_address_only_from_a_trusted_proxy() {
    let fake = Fake::start(healthy);
    let keys = format!("{}|{KEY_A}\n", fake.url);
    let (guesser, neighbour) = ([("x-forwarded-for", "198.51.100.7")], [("x-forwarded-for", "198.51.100.8")]);

    let proxied = Gateway::start(&format!("trusted_proxies = [\"127.0.0.1/32\"]\n{}", alice()), &keys);
    guess(&proxied, 20, &guesser);
    let error = assert_envelope(&chat_as(&proxied, TOKEN, &guesser), 429);
    assert!(error.message.contains("198.51.100.7"), "{}", error.message);
    completion(&chat_as(&proxied, TOKEN, &neighbour));
    completion(&chat_as(&proxied, TOKEN, &[]));

    // Not trusted: the header is the client's own claim, and the peer is what is locked.
    let direct = Gateway::start(&alice(), &keys);
    guess(&direct, 20, &guesser);
    let error = assert_envelope(&chat_as(&direct, TOKEN, &neighbour), 429);
    assert!(error.message.contains("127.0.0.1"), "{}", error.message);
}
