//! Failover between the keys of a pool: a key that is rate-limited, unreachable or failing
//! is followed by the next one; a request error (400) is not retried; when every key fails
//! the client gets the last failure; `max_attempts` caps the keys tried.
//!
//! Two keyed lines point at one fake, which tells them apart by the `Authorization` header.
//! Round-robin starts each request at a different key, so tests do not depend on which key
//! comes first.

use crate::fake::{chat_answer, dead_url, healthy, Fake, FakeReply};
use crate::util::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// keys.txt with [`KEY_A`] and [`KEY_B`] on `url`.
fn two_keys(url: &str) -> String {
    format!("{url}|{KEY_A}\n{url}|{KEY_B}\n")
}

/// The upstream keys the fake saw, in order.
fn keys_seen(fake: &Fake) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| r.authorization().unwrap_or("-").trim_start_matches("Bearer ").to_string())
        .collect()
}

#[test]
fn a_rate_limited_key_is_followed_by_the_next() {
    // Whichever key is tried first hits its session limit; the other one answers.
    let limited = AtomicBool::new(false);
    let fake = Fake::start(move |_| {
        if !limited.swap(true, Ordering::SeqCst) {
            FakeReply::error(429, "you (x) have reached your session usage limit")
        } else {
            FakeReply::ok(chat_answer("from the second key"))
        }
    });
    let config = format!("[upstream]\nstrategy = \"round-robin\"\n{}", alice());
    let gateway = Gateway::start(&config, &two_keys(&fake.url));
    let completion = completion(&gateway.chat(&chat_body("m", false)));
    eqnice!(Some("from the second key"), completion.choices[0].message.content.as_deref());
    let seen = keys_seen(&fake);
    eqnice!(2, seen.len(), "{seen:?}");
    eqnice!(
        BTreeSet::from([KEY_A.to_string(), KEY_B.to_string()]),
        seen.into_iter().collect::<BTreeSet<_>>(),
        "both keys were tried"
    );
}

#[test]
fn an_unreachable_upstream_is_followed_by_the_next() {
    let fake = Fake::start(healthy);
    let keys = format!("{}|{KEY_A}\n{}|{KEY_B}\n", dead_url(), fake.url);
    let gateway = Gateway::start(&format!("[upstream]\nstrategy = \"round-robin\"\n{}", alice()), &keys);
    // Round-robin starts the two requests at different keys, so one of them meets the
    // dead upstream first.
    for _ in 0..2 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!(vec![KEY_B, KEY_B], keys_seen(&fake));
}

#[test]
fn a_bad_request_is_answered_at_once_without_failover() {
    let fake = Fake::start(|_| FakeReply::error(400, "invalid options: num_ctx"));
    let gateway = Gateway::with_keys(&two_keys(&fake.url));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 400);
    eqnice!(
        ("invalid options: num_ctx", "invalid_request_error"),
        (error.message.as_str(), error.kind.as_str())
    );
    eqnice!(1, fake.count(), "a 400 is the request's fault, not the key's: one attempt only");
}

#[test]
fn when_every_key_fails_the_client_gets_the_last_failure() {
    let fake = Fake::start(|recorded| {
        let key = recorded.authorization().unwrap_or("").trim_start_matches("Bearer ");
        // A proxy in front of Ollama answers in plain text, not JSON.
        FakeReply::Text { status: 503, body: format!("overloaded behind key {}\n", &key[..2]) }
    });
    let gateway = Gateway::with_keys(&two_keys(&fake.url));
    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 503);
    let seen = keys_seen(&fake);
    eqnice!(2, seen.len(), "each key tried once: {seen:?}");
    let last = format!("overloaded behind key {}", &seen[1][..2]);
    assert!(
        error.message.starts_with("all 2 keys tried in pool 'default' failed")
            && error.message.ends_with(&last),
        "the message says the pool is spent and quotes the last attempt's error: {}",
        error.message
    );
    eqnice!("api_error", error.kind);
}

#[test]
fn max_attempts_caps_the_keys_tried() {
    // (keys in the pool, max_attempts, upstream calls expected)
    let cases = [(2, 1, 1), (3, 2, 2), (3, 5, 3)];
    for (key_count, max_attempts, calls) in cases {
        let fake = Fake::start(|_| FakeReply::error(429, "you have reached your session usage limit"));
        let keys: String = (0..key_count).map(|i| format!("{}|key-{i}-0123456789\n", fake.url)).collect();
        let config = format!("[upstream]\nmax_attempts = {max_attempts}\n{}", alice());
        let gateway = Gateway::start(&config, &keys);
        let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 429);
        eqnice!(
            (calls, calls),
            (fake.count(), keys_seen(&fake).into_iter().collect::<BTreeSet<_>>().len()),
            "{key_count} keys, max_attempts = {max_attempts}: calls, distinct keys"
        );
        eqnice!(
            ("rate_limit_error", Some("rate_limit_exceeded")),
            (error.kind.as_str(), error.code.as_deref())
        );
    }
}

#[test]
fn a_stream_fails_over_before_its_first_byte() {
    let limited = AtomicBool::new(false);
    let fake = Fake::start(move |recorded| {
        if !limited.swap(true, Ordering::SeqCst) {
            FakeReply::error(429, "you (x) have reached your session usage limit")
        } else {
            healthy(recorded)
        }
    });
    let gateway = Gateway::with_keys(&two_keys(&fake.url));
    let events = decode_events(&gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("m", true)));
    assert!(
        matches!(events.last(), Some(Event::Done)),
        "the stream from the second key completes: {events:#?}"
    );
    eqnice!(2, keys_seen(&fake).into_iter().collect::<BTreeSet<_>>().len(), "both keys were tried");
}

/// A 200 whose body is not the JSON it should be (an HTML page, a body cut off) is a
/// failed attempt like a 5xx: nothing has reached the client, so the next key serves it.
/// Before, the attempt counted as a success and the client got a 502 after one key.
#[test]
fn a_200_that_is_not_json_is_followed_by_the_next_key() {
    for bad in ["<!doctype html><p>maintenance</p>", r#"{"model":"m","message":{"role":"assist"#] {
        let fake =
            Fake::start(move |recorded| match recorded.authorization() == Some(&format!("Bearer {KEY_A}")) {
                true => FakeReply::Text { status: 200, body: bad.to_string() },
                false => FakeReply::ok(chat_answer("from the good key")),
            });
        let gateway = Gateway::start(&alice(), &two_keys(&fake.url));
        for _ in 0..2 {
            let completion = completion(&gateway.chat(&chat_body("m", false)));
            eqnice!(
                "from the good key",
                completion.choices[0].message.content.as_deref().unwrap_or(""),
                "{bad}"
            );
        }
        assert!(
            keys_seen(&fake).contains(&KEY_A.to_string()),
            "the bad key was tried: {:?}",
            keys_seen(&fake)
        );
        gateway.wait_for_log(&["attempts=2", "status=200"]);
        gateway.wait_for_log(&["failed (Trouble)", "not valid JSON"]);
    }
}
