//! A key pool that never wastes a request: every row of the failure table end to end,
//! the 429 of a pool with no usable key, `max_attempts` as the only retry loop, key states
//! kept across restarts, reloads without a restart, tenants, `ollama-gateway check`, and
//! even spreading under load.
//!
//! Most tests put two keys on one fake, which tells them apart by the `Authorization`
//! header it records. Round-robin starts the first request of a gateway at the first key
//! of keys.txt and each later one at the next key, so which key a request tries first is
//! known. Waits on the gateway's housekeeping (state saved every ~2 s, config files looked
//! at every ~2 s) are bounded polls; tests that need several such waits run their cases on
//! threads side by side.

use crate::fake::{
    chat_answer, content_line, dead_url, done_line, plan_usage, Fake, FakeReply, Ndjson, Recorded,
};
use crate::util::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A third upstream key.
const KEY_C: &str = "kc-5555555555-secret-CCCC";
/// A fourth upstream key.
const KEY_D: &str = "kd-7777777777-secret-DDDD";
/// A second client token (`bob`).
const BOB: &str = "sk-test-bob-9876543210";
/// What Ollama Cloud answers (429) when a key's session quota is spent.
const SESSION_LIMIT: &str =
    "you (x) have reached your session usage limit, please wait or upgrade to continue";
/// The same for the weekly quota.
const WEEKLY_LIMIT: &str = "you (x) have reached your weekly usage limit, please wait or upgrade to continue";
/// The same for a plan's monthly credits, in the shape of the others (no public report
/// of this one's wording yet).
const MONTHLY_LIMIT: &str =
    "you (x) have reached your monthly usage limit, upgrade for higher limits: https://ollama.com/upgrade";
/// What Ollama Cloud answers when a key has as many requests in flight as its plan allows.
const NO_SLOT: &str = "timed out waiting for a concurrent request slot";
/// How long "within a few seconds" may take: the gateway looks at files every 2 s.
const FEW_SECONDS: Duration = Duration::from_secs(6);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Unix seconds of the first day of the month after `t`'s, 00:00 UTC, counted month by
/// month from 1970.
fn first_of_next_month(t: u64) -> u64 {
    let (mut start, mut year, mut month) = (0, 1970, 1);
    loop {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        start += days * 86_400;
        if start > t {
            return start;
        }
        (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    }
}

/// Unix seconds of the first Monday 00:00 UTC after `t` (1970-01-05 was a Monday).
fn next_monday(t: u64) -> u64 {
    const WEEK: u64 = 7 * 86_400;
    const FIRST_MONDAY: u64 = 4 * 86_400;
    FIRST_MONDAY + ((t - FIRST_MONDAY) / WEEK + 1) * WEEK
}

/// `config.toml` text: `extra` (top-level keys and tables), then [`alice`]'s token.
fn config(extra: &str) -> String {
    format!("{extra}\n{}", alice())
}

/// keys.txt with `keys` on `url`, in that order.
fn keys_on(url: &str, keys: &[&str]) -> String {
    keys.iter().map(|key| format!("{url}|{key}\n")).collect()
}

/// The upstream key of a recorded request (`-` when it had none).
fn key_of(recorded: &Recorded) -> &str {
    recorded.authorization().map_or("-", |a| a.trim_start_matches("Bearer "))
}

/// The keys of the fake's requests, in order.
fn keys_seen(fake: &Fake) -> Vec<String> {
    fake.requests().iter().map(|r| key_of(r).to_string()).collect()
}

/// How many requests (of any path) the fake got with `key`.
fn sent_with(fake: &Fake, key: &str) -> usize {
    fake.requests().iter().filter(|r| key_of(r) == key).count()
}

/// How many chat requests the fake got with `key`.
fn chats_with(fake: &Fake, key: &str) -> usize {
    fake.requests().iter().filter(|r| r.path == "/api/chat" && key_of(r) == key).count()
}

/// A handler answering `reply` to requests with `key` and a chat answer to the others.
fn failing_for(
    key: &'static str,
    reply: impl Fn(&Recorded) -> FakeReply + Send + Sync + 'static,
) -> impl Fn(&Recorded) -> FakeReply + Send + Sync + 'static {
    move |recorded| if key_of(recorded) == key { reply(recorded) } else { FakeReply::ok(chat_answer("ok")) }
}

/// A key's id in the state file: the first 24 hex digits of SHA-256 of `url\nkey`.
fn key_id(url: &str, key: &str) -> String {
    sha256_hex(&format!("{url}\n{key}"))[..24].to_string()
}

/// The `keys` object of the state file at `path`, when it exists and is JSON.
fn read_states(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str::<Value>(&text).ok().map(|file| file["keys"].clone())
}

/// Polls the state file until `check` holds for its `keys`, and returns them.
#[track_caller]
fn wait_for_state(path: &Path, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(keys) = read_states(path).filter(|keys| check(keys)) {
            return keys;
        }
        if Instant::now() > deadline {
            let text = fs::read_to_string(path).unwrap_or_else(|err| format!("({err})"));
            panic!("after {PATIENCE:?} the state file still does not show {what}; it holds:\n{text}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Calls `attempt` every 50 ms until it returns true; how long that took. Panics after
/// [`PATIENCE`].
#[track_caller]
fn poll(what: &str, mut attempt: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !attempt() {
        if start.elapsed() > PATIENCE {
            panic!("timed out after {PATIENCE:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// The `Retry-After` header as seconds.
#[track_caller]
fn retry_after(reply: &JsonReply) -> u64 {
    let value = reply.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {reply:#?}"));
    value.parse().unwrap_or_else(|_| panic!("Retry-After is not seconds: {value:?}"))
}

/// Asserts the 429 of a pool with no usable key, and returns its message.
#[track_caller]
fn assert_pool_unavailable(reply: &JsonReply) -> String {
    let error = assert_envelope(reply, 429);
    eqnice!(
        ("rate_limit_error", Some("rate_limit_exceeded")),
        (error.kind.as_str(), error.code.as_deref()),
        "{}",
        reply.text
    );
    error.message
}

/// A folder holding `config.toml` and `keys.txt`, for `check` runs without a gateway.
fn folder(config_extra: &str, keys_txt: &str) -> TempDir {
    let dir = TempDir::new();
    dir.write_config(config_extra, keys_txt);
    dir
}

/// `ollama-gateway check --config config.toml [--json]` in `dir`.
fn check(dir: &Path, json: bool) -> CliOutput {
    let mut args = vec!["check", "--config", "config.toml"];
    if json {
        args.push("--json");
    }
    run_cli(&args, dir)
}

/// `check --json` in `dir`, parsed.
#[track_caller]
fn check_json(dir: &Path) -> (i32, Value) {
    let out = check(dir, true);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|err| panic!("check --json printed no JSON ({err}): {out:#?}"));
    (out.code, report)
}

// ---------------------------------------------------------------------------------------
// 1. The failure table, row by row
// ---------------------------------------------------------------------------------------

#[test]
fn a_revoked_key_is_set_aside_after_one_401() {
    let fake = Fake::start(failing_for(KEY_A, |_| FakeReply::error(401, "unauthorized")));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    for _ in 0..6 {
        let answer = completion(&gateway.chat(&chat_body("m", false)));
        eqnice!(Some("ok"), answer.choices[0].message.content.as_deref(), "key B answers");
    }
    eqnice!(
        (1, 6),
        (sent_with(&fake, KEY_A), sent_with(&fake, KEY_B)),
        "key A is tried once (the first request starts there) and never again: {:?}",
        keys_seen(&fake)
    );
}

/// One row of the table: key A (first in keys.txt) gets `reply`, key B serves. Four
/// requests all succeed and A is tried by the first only; then the state file shows A in
/// `state` until a time within `expected(t0) - slack ..= expected(t1) + slack`, where `t0`
/// and `t1` bracket the requests.
fn key_a_rests(row: &str, reply: fn() -> FakeReply, state: &str, expected: fn(u64) -> u64, slack: u64) {
    let fake = Fake::start(failing_for(KEY_A, move |_| reply()));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    let t0 = now();
    for _ in 0..4 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    let t1 = now();
    eqnice!(
        (1, 4),
        (sent_with(&fake, KEY_A), sent_with(&fake, KEY_B)),
        "{row}: A once, B for every request: {:?}",
        keys_seen(&fake)
    );
    let id = key_id(&fake.url, KEY_A);
    let keys = wait_for_state(&gateway.state_path(), &format!("{row}: key A {state}"), |keys| {
        keys[id.as_str()]["state"] == state
    });
    let until = keys[id.as_str()]["until"].as_u64().unwrap_or_else(|| panic!("{row}: no until: {keys:#}"));
    let (low, high) = (expected(t0) - slack, expected(t1) + slack);
    assert!(
        (low..=high).contains(&until),
        "{row}: until {until} is not within {low}..={high} (now {})",
        now()
    );
}

#[test]
fn a_spent_quota_rests_until_its_window_resets() {
    type Row = (&'static str, fn() -> FakeReply, fn(u64) -> u64, u64);
    let rows: [Row; 4] = [
        ("session limit", || FakeReply::error(429, SESSION_LIMIT), |t| t + 5 * 3600, 60),
        ("weekly limit", || FakeReply::error(429, WEEKLY_LIMIT), next_monday, 0),
        ("monthly limit", || FakeReply::error(429, MONTHLY_LIMIT), first_of_next_month, 0),
        (
            "session limit with Retry-After: 120",
            || FakeReply::error_with(429, SESSION_LIMIT, &[("Retry-After", "120")]),
            |t| t + 120,
            2,
        ),
    ];
    thread::scope(|scope| {
        for (row, reply, expected, slack) in rows {
            scope.spawn(move || key_a_rests(row, reply, "exhausted", expected, slack));
        }
    });
}

#[test]
fn a_transient_429_or_an_overloaded_503_backs_off_for_thirty_seconds() {
    type Row = (&'static str, fn() -> FakeReply);
    let rows: [Row; 2] = [
        ("429 rate limit exceeded", || FakeReply::error(429, "rate limit exceeded")),
        ("503 Server overloaded", || FakeReply::error(503, "Server overloaded, please retry shortly")),
    ];
    thread::scope(|scope| {
        for (row, reply) in rows {
            scope.spawn(move || key_a_rests(row, reply, "backoff", |t| t + 30, 2));
        }
    });
}

#[test]
fn a_busy_key_rests_two_seconds_then_serves_again_without_a_back_off() {
    // Key A has no free slot for its first request only; as a 429, a 503 or a 200 stream's
    // error line, the same.
    type Busy = fn() -> FakeReply;
    let answers: [(&str, Busy, bool); 3] = [
        ("429", || FakeReply::error(429, NO_SLOT), false),
        ("503", || FakeReply::error(503, NO_SLOT), false),
        ("a stream's error line", || FakeReply::ndjson(&[json!({ "error": NO_SLOT })]), true),
    ];
    thread::scope(|scope| {
        for (how, busy, stream) in answers {
            scope.spawn(move || {
                let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
                let fake = Fake::start(move |recorded| match key_of(recorded) {
                    KEY_A if first.swap(false, Ordering::SeqCst) => busy(),
                    _ if recorded.wants_stream() => {
                        FakeReply::ndjson(&[content_line("ok"), done_line("stop", 1, 1)])
                    }
                    _ => FakeReply::ok(chat_answer("ok")),
                });
                let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
                let ask = || {
                    let reply = gateway.chat(&chat_body("m", stream));
                    eqnice!(
                        200,
                        reply.status,
                        "{how}: the client never sees the busy answer: {}",
                        reply.text
                    );
                };
                let start = Instant::now();
                ask();
                eqnice!((1, 1), (chats_with(&fake, KEY_A), chats_with(&fake, KEY_B)), "{how}: failed over");
                let took = poll(&format!("{how}: key A serves again"), || {
                    ask();
                    chats_with(&fake, KEY_A) > 1
                });
                assert!(start.elapsed() >= Duration::from_secs(1), "{how}: A rested before serving again");
                assert!(took < Duration::from_secs(15), "{how}: took {took:?}; a back-off would be 30 s");
            });
        }
    });
}

#[test]
fn a_model_outside_the_plan_cools_down_for_that_model_only() {
    let fake = Fake::start(|recorded| {
        if key_of(recorded) == KEY_A && recorded.model() == "model-x" {
            FakeReply::error(403, "this model requires a subscription, upgrade for access")
        } else {
            FakeReply::ok(chat_answer("ok"))
        }
    });
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    for model in ["model-x", "model-x", "model-x", "model-x", "model-y", "model-y", "model-y", "model-y"] {
        completion(&gateway.chat(&chat_body(model, false)));
    }
    let sent = |key: &str, model: &str| {
        fake.requests().iter().filter(|r| key_of(r) == key && r.model() == model).count()
    };
    eqnice!(
        [("A", "model-x", 1), ("B", "model-x", 4), ("A", "model-y", 2), ("B", "model-y", 2)],
        [
            ("A", "model-x", sent(KEY_A, "model-x")),
            ("B", "model-x", sent(KEY_B, "model-x")),
            ("A", "model-y", sent(KEY_A, "model-y")),
            ("B", "model-y", sent(KEY_B, "model-y")),
        ],
        "A is asked for model-x once, then only for model-y, every other time as round-robin says"
    );
}

#[test]
fn upstream_trouble_backs_off_after_failure_threshold_in_a_row_and_a_success_resets_the_count() {
    // One key: fail, fail, succeed (the count starts over), fail, fail, succeed, then three
    // failures in a row, and the key backs off.
    const SCRIPT: [u16; 9] = [500, 500, 200, 500, 500, 200, 500, 500, 500];
    let calls = AtomicUsize::new(0);
    let fake = Fake::start(move |_| match SCRIPT.get(calls.fetch_add(1, Ordering::SeqCst)) {
        Some(200) => FakeReply::ok(chat_answer("ok")),
        _ => FakeReply::error(500, "model runner crashed"),
    });
    let gateway = Gateway::start(
        &config("[upstream]\nfailure_threshold = 3\nmax_attempts = 3\n"),
        &keys_on(&fake.url, &[KEY_A]),
    );
    let statuses: Vec<u16> = SCRIPT.iter().map(|_| gateway.chat(&chat_body("m", false)).status).collect();
    eqnice!(SCRIPT.to_vec(), statuses, "each request is one upstream call, answered as upstream did");
    let reply = gateway.chat(&chat_body("m", false));
    let message = assert_pool_unavailable(&reply);
    assert!(message.contains("backing off"), "{message}");
    let wait = retry_after(&reply);
    assert!((28..=30).contains(&wait), "Retry-After {wait}, expected about 30");
    eqnice!(SCRIPT.len(), fake.count(), "the key backing off is not called");
}

#[test]
fn a_dead_upstream_backs_off_after_failure_threshold_attempts() {
    // max_attempts = 1: each request tries one key, A (dead) and B in turn, until A has
    // failed three times in a row; from then on every request goes to B.
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let keys = format!("{}|{KEY_A}\n{}|{KEY_B}\n", dead_url(), fake.url);
    let gateway = Gateway::start(&config("[upstream]\nmax_attempts = 1\n"), &keys);
    let statuses: Vec<u16> = (0..10).map(|_| gateway.chat(&chat_body("m", false)).status).collect();
    eqnice!(vec![502, 200, 502, 200, 502, 200, 200, 200, 200, 200], statuses);
    eqnice!(vec![KEY_B; 7], keys_seen(&fake));
}

#[test]
fn a_bad_request_is_answered_without_failover_and_costs_the_key_nothing() {
    let fake = Fake::start(|recorded| match recorded.model() {
        "bad" => FakeReply::error(400, "invalid options: num_ctx"),
        "missing" => FakeReply::error(404, "model 'missing' not found"),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    // With a threshold of 1, a single counted failure would set a key aside.
    let gateway =
        Gateway::start(&config("[upstream]\nfailure_threshold = 1\n"), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    for (i, (model, status, text)) in [
        ("bad", 400, "invalid options: num_ctx"),
        ("missing", 404, "model 'missing' not found"),
        ("bad", 400, "invalid options: num_ctx"),
        ("missing", 404, "model 'missing' not found"),
    ]
    .into_iter()
    .enumerate()
    {
        let error = assert_envelope(&gateway.chat(&chat_body(model, false)), status);
        assert!(error.message.contains(text), "{model}: {}", error.message);
        eqnice!(i + 1, fake.count(), "{model}: one upstream call, no failover");
    }
    for _ in 0..4 {
        completion(&gateway.chat(&chat_body("good", false)));
    }
    eqnice!(
        vec![KEY_A, KEY_B, KEY_A, KEY_B],
        keys_seen(&fake)[4..].to_vec(),
        "both keys keep serving in turn"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A pool with no usable key
// ---------------------------------------------------------------------------------------

#[test]
fn a_pool_with_no_usable_key_answers_429_with_when_and_why_without_calling_upstream() {
    let fake = Fake::start(|recorded| {
        let wait = if key_of(recorded) == KEY_A { "300" } else { "120" };
        FakeReply::error_with(429, SESSION_LIMIT, &[("Retry-After", wait)])
    });
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    // The first request spends both keys.
    assert_envelope(&gateway.chat(&chat_body("m", false)), 429);
    eqnice!(2, fake.count());

    let reply = gateway.chat(&chat_body("m", false));
    let message = assert_pool_unavailable(&reply);
    assert!(
        message.contains("quota spent") && message.contains("pool 'default'"),
        "the message says which pool and why: {message}"
    );
    let wait = retry_after(&reply);
    assert!((118..=120).contains(&wait), "Retry-After {wait}: the soonest key (B) frees up in 120 s");

    // A stream asked of the spent pool gets the same answer before any event.
    let mut conn = gateway.open_stream(&chat_body("m", true));
    let streamed = conn.reply();
    assert_pool_unavailable(&streamed);
    assert!((118..=120).contains(&retry_after(&streamed)), "{streamed:#?}");
    eqnice!(2, fake.count(), "no upstream call once every key is known spent");
}

// ---------------------------------------------------------------------------------------
// 3. max_attempts counts every upstream request
// ---------------------------------------------------------------------------------------

#[test]
fn max_attempts_counts_every_upstream_request() {
    // (keys, max_attempts, stream, upstream calls expected)
    let cases = [(5, 3, false, 3), (5, 3, true, 3), (2, 5, false, 2), (1, 3, false, 1), (4, 1, true, 1)];
    for (key_count, max_attempts, stream, calls) in cases {
        // Non-streamed: a 500. Streamed: a 200 whose first line is an error.
        let fake = Fake::start(|recorded| {
            if recorded.wants_stream() {
                FakeReply::ndjson(&[json!({"error": "model runner crashed"})])
            } else {
                FakeReply::error(500, "model runner crashed")
            }
        });
        let keys: String = (0..key_count).map(|i| format!("{}|key-{i}-0123456789\n", fake.url)).collect();
        let gateway = Gateway::start(&config(&format!("[upstream]\nmax_attempts = {max_attempts}\n")), &keys);
        let reply = if stream {
            gateway.open_stream(&chat_body("m", true)).reply()
        } else {
            gateway.chat(&chat_body("m", false))
        };
        assert_ne!(200, reply.status, "{reply:#?}");
        let distinct: BTreeSet<String> = keys_seen(&fake).into_iter().collect();
        eqnice!(
            (calls, calls),
            (fake.count(), distinct.len()),
            "{key_count} keys, max_attempts = {max_attempts}, stream = {stream}: upstream calls, distinct keys"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. The state file
// ---------------------------------------------------------------------------------------

#[test]
fn key_states_and_counters_survive_a_restart() {
    let fake = Fake::start(failing_for(KEY_A, |_| FakeReply::error(429, SESSION_LIMIT)));
    let (id_a, id_b) = (key_id(&fake.url, KEY_A), key_id(&fake.url, KEY_B));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    for _ in 0..3 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!((1, 3), (sent_with(&fake, KEY_A), sent_with(&fake, KEY_B)));
    let state_path = gateway.state_path();

    let stopped = gateway.stop();
    eqnice!(Some(0), stopped.code, "SIGTERM: a clean exit; logs:\n{}", stopped.logs);
    let first = read_states(&state_path).unwrap_or_else(|| panic!("no state file after SIGTERM"));
    let counters = |keys: &Value, id: &str| {
        let key = &keys[id];
        ["requests", "successes", "failures", "prompt_tokens", "completion_tokens"].map(|c| key[c].as_u64())
    };
    eqnice!("exhausted", first[id_a.as_str()]["state"], "{first:#}");
    eqnice!([Some(1), Some(0), Some(1), Some(0), Some(0)], counters(&first, &id_a), "{first:#}");
    // chat_answer counts 3 prompt and 5 completion tokens.
    eqnice!([Some(3), Some(3), Some(0), Some(9), Some(15)], counters(&first, &id_b), "{first:#}");

    // A new gateway on the same folder skips the spent key without calling upstream.
    let gateway = Gateway::resume(stopped.dir);
    for _ in 0..3 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!((1, 6), (sent_with(&fake, KEY_A), sent_with(&fake, KEY_B)), "A is still resting");
    let stopped = gateway.stop();
    eqnice!(Some(0), stopped.code, "logs:\n{}", stopped.logs);
    let second = read_states(&state_path).unwrap_or_else(|| panic!("no state file after SIGTERM"));
    eqnice!(first[id_a.as_str()], second[id_a.as_str()], "A's state is as it was");
    eqnice!([Some(6), Some(6), Some(0), Some(18), Some(30)], counters(&second, &id_b), "{second:#}");

    // Restarting on a keys.txt without A drops A from the file.
    stopped.dir.rewrite("keys.txt", &keys_on(&fake.url, &[KEY_B]));
    let gateway = Gateway::resume(stopped.dir);
    let keys = wait_for_state(&gateway.state_path(), "key A gone", |keys| keys.get(&id_a).is_none());
    eqnice!(Some(6), keys[id_b.as_str()]["requests"].as_u64(), "B stays: {keys:#}");
}

#[test]
fn a_corrupt_state_file_is_reported_and_the_gateway_serves_with_fresh_state() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let dir = TempDir::new();
    dir.write("state.json", "\u{0}\u{1} this is not a state file {{{");
    let gateway = Gateway::start_in(dir, &config(""), &keys_on(&fake.url, &[KEY_A]));
    let line = gateway.wait_for_log(&["WARN", "state.json"]);
    assert!(line.contains("fresh"), "the warning says the gateway starts fresh: {line}");
    completion(&gateway.chat(&chat_body("m", false)));
    let id = key_id(&fake.url, KEY_A);
    wait_for_state(&gateway.state_path(), "a good file with key A's request", |keys| {
        keys[id.as_str()]["requests"] == 1
    });
}

#[test]
fn keys_removed_from_keys_txt_drop_out_of_the_state_file_on_reload() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let (id_a, id_b) = (key_id(&fake.url, KEY_A), key_id(&fake.url, KEY_B));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    for _ in 0..2 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    wait_for_state(&gateway.state_path(), "both keys", |keys| {
        keys.get(&id_a).is_some() && keys.get(&id_b).is_some()
    });
    gateway.dir().rewrite("keys.txt", &keys_on(&fake.url, &[KEY_B]));
    gateway.signal("HUP");
    wait_for_state(&gateway.state_path(), "key A gone and key B kept", |keys| {
        keys.get(&id_a).is_none() && keys[id_b.as_str()]["requests"] == 1
    });
}

#[cfg(unix)]
#[test]
fn the_state_file_is_private_and_never_holds_a_key() {
    use std::os::unix::fs::PermissionsExt;
    // Both answers quote the key, as a careless upstream might.
    let fake = Fake::start(|recorded| {
        let key = key_of(recorded).to_string();
        if key == KEY_A {
            FakeReply::error(401, &format!("invalid api key {key}"))
        } else {
            FakeReply::error(429, &format!("key {key} has reached its session usage limit"))
        }
    });
    let (id_a, id_b) = (key_id(&fake.url, KEY_A), key_id(&fake.url, KEY_B));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    assert_envelope(&gateway.chat(&chat_body("m", false)), 429);
    let keys = wait_for_state(&gateway.state_path(), "A invalid and B exhausted", |keys| {
        keys[id_a.as_str()]["state"] == "invalid" && keys[id_b.as_str()]["state"] == "exhausted"
    });
    let error = keys[id_a.as_str()]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("invalid api key"), "the last error is kept, key-free: {error}");

    let text = fs::read_to_string(gateway.state_path()).expect("read the state file");
    for secret in [KEY_A, KEY_B, "0123456789-secret", "9876543210-secret"] {
        assert!(!text.contains(secret), "the state file holds {secret:?}:\n{text}");
    }
    let mode = fs::metadata(gateway.state_path()).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let mut names: Vec<String> = fs::read_dir(gateway.dir().path())
        .expect("list the folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    eqnice!(vec!["config.toml", "keys.txt", "state.json"], names, "no temp file left behind");
}

// ---------------------------------------------------------------------------------------
// 5. Reloads
// ---------------------------------------------------------------------------------------

#[test]
fn a_key_added_to_keys_txt_is_used_within_seconds() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    completion(&gateway.chat(&chat_body("m", false)));
    gateway.dir().rewrite("keys.txt", &keys_on(&fake.url, &[KEY_A, KEY_C]));
    let took = poll("the new key is used", || {
        completion(&gateway.chat(&chat_body("m", false)));
        sent_with(&fake, KEY_C) > 0
    });
    assert!(took < FEW_SECONDS, "took {took:?}");
    gateway.wait_for_log(&["reloaded", "2 upstreams"]);
}

#[test]
fn a_token_removed_from_config_toml_stops_working_within_seconds() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let gateway = Gateway::start(&config(&token_entry("bob", BOB, "default")), &keys_on(&fake.url, &[KEY_A]));
    let bob = || gateway.post_json("/v1/chat/completions", Some(BOB), &chat_body("m", false));
    completion(&bob());
    gateway.dir().rewrite("config.toml", &format!("listen = \"127.0.0.1:0\"\n{}", alice()));
    let took = poll("bob's token is refused", || bob().status == 401);
    assert!(took < FEW_SECONDS, "took {took:?}");
    assert_envelope(&bob(), 401);
    completion(&gateway.chat(&chat_body("m", false)));
}

#[test]
fn a_broken_edit_is_logged_with_its_line_and_the_old_config_keeps_serving() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    // keys.txt, noticed by its modification time.
    gateway.dir().rewrite("keys.txt", &format!("{}this is not a key\n", keys_on(&fake.url, &[KEY_A, KEY_B])));
    let line = gateway.wait_for_log(&["keys.txt:3"]);
    assert!(line.contains("ERROR") && line.contains("previous config"), "{line}");
    // config.toml, on SIGHUP.
    gateway.dir().rewrite("config.toml", &format!("listen = \"127.0.0.1:0\"\nworkerz = 3\n{}", alice()));
    gateway.signal("HUP");
    let line = gateway.wait_for_log(&["config.toml:2"]);
    assert!(line.contains("ERROR") && line.contains("workerz"), "{line}");
    for _ in 0..4 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!(0, sent_with(&fake, KEY_B), "the broken keys.txt's new key is not in use");
    assert!(gateway.running());
}

#[test]
fn sighup_reloads_at_once() {
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    completion(&gateway.chat(&chat_body("m", false)));
    // Swap key A for key C but keep the file's modification time, so only the signal can
    // make the gateway look at it.
    let path = gateway.dir().path().join("keys.txt");
    let mtime = fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    let edit = gateway.dir().path().join(".keys.txt.edit");
    fs::write(&edit, keys_on(&fake.url, &[KEY_C])).expect("write the edit");
    fs::File::options().write(true).open(&edit).and_then(|f| f.set_modified(mtime)).expect("set mtime");
    fs::rename(&edit, &path).expect("rename the edit");
    gateway.signal("HUP");
    let took = poll("key C is used", || {
        completion(&gateway.chat(&chat_body("m", false)));
        sent_with(&fake, KEY_C) > 0
    });
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let before = sent_with(&fake, KEY_A);
    for _ in 0..3 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!(before, sent_with(&fake, KEY_A), "key A left keys.txt: {:?}", keys_seen(&fake));
}

#[test]
fn a_stream_in_flight_finishes_intact_across_a_reload() {
    let fake = Fake::start(|recorded| {
        if recorded.wants_stream() {
            let mut lines: Vec<String> =
                (0..9).map(|i| content_line(&format!("part{i} ")).to_string()).collect();
            lines.push(done_line("stop", 3, 9).to_string());
            FakeReply::Ndjson(Ndjson { lines, delay: Duration::from_millis(200), gate: None })
        } else {
            FakeReply::ok(chat_answer("ok"))
        }
    });
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    let mut conn = gateway.open_stream(&chat_body("m", true));
    eqnice!(200, conn.status);
    let mut events = vec![conn.next_event().expect("a first event")];
    // The reload takes away the very key the stream runs on.
    gateway.dir().rewrite("keys.txt", &keys_on(&fake.url, &[KEY_B]));
    gateway.signal("HUP");
    gateway.wait_for_log(&["reloaded"]);
    let stats = fake.streams()[0].clone();
    assert!(
        !stats.completed.load(Ordering::SeqCst),
        "the reload happened mid-stream ({} lines written)",
        stats.written()
    );
    events.extend(conn.events());
    let events = decode_events(&events);
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk(chunk) => chunk.choices.first().and_then(|c| c.delta.content.clone()),
            _ => None,
        })
        .collect();
    eqnice!("part0 part1 part2 part3 part4 part5 part6 part7 part8 ", text);
    assert!(!events.iter().any(|e| matches!(e, Event::Error(_))), "{events:#?}");
    assert!(matches!(events.last(), Some(Event::Done)), "ends with [DONE]: {events:#?}");
    assert!(stats.completed.load(Ordering::SeqCst) && !stats.failed(), "upstream wrote it all");
    completion(&gateway.chat(&chat_body("m", false)));
    eqnice!(vec![KEY_A, KEY_B], keys_seen(&fake), "new requests use the new keys");
}

// ---------------------------------------------------------------------------------------
// 6. Tenants
// ---------------------------------------------------------------------------------------

#[test]
fn a_tenant_never_touches_another_tenants_keys_even_when_its_own_are_spent() {
    let fake_a = Fake::start(|_| FakeReply::error(429, SESSION_LIMIT));
    let fake_b = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let keys = format!("[a]\n{}|{KEY_A}\n[b]\n{}|{KEY_B}\n{}|{KEY_C}\n", fake_a.url, fake_b.url, fake_b.url);
    let config_text = format!(
        "[pools.b]\nstrategy = \"random\"\n{}{}",
        token_entry("alice", TOKEN, "a"),
        token_entry("bob", BOB, "b")
    );
    let gateway = Gateway::start(&config_text, &keys);
    let alice = || gateway.chat(&chat_body("m", false));
    let bob = || gateway.post_json("/v1/chat/completions", Some(BOB), &chat_body("m", false));

    assert_envelope(&alice(), 429);
    for _ in 0..3 {
        let message = assert_pool_unavailable(&alice());
        assert!(message.contains("pool 'a'"), "{message}");
    }
    eqnice!((1, 0), (fake_a.count(), fake_b.count()), "alice spent her key and never reached pool b");

    for _ in 0..20 {
        completion(&bob());
    }
    assert_pool_unavailable(&alice());
    eqnice!(1, fake_a.count(), "bob never reached pool a");
    let seen: BTreeSet<String> = keys_seen(&fake_b).into_iter().collect();
    eqnice!(
        BTreeSet::from([KEY_B.to_string(), KEY_C.to_string()]),
        seen,
        "pool b's fake saw only pool b's keys, both of them (strategy random)"
    );
}

// ---------------------------------------------------------------------------------------
// 7. ollama-gateway check
// ---------------------------------------------------------------------------------------

/// A fake whose `/api/usage` accepts [`KEY_A`] and [`KEY_B`] and refuses [`KEY_C`] (401),
/// and which answers every chat.
fn usage_fake() -> Fake {
    Fake::start(|recorded| match recorded.path.as_str() {
        "/api/usage" if key_of(recorded) == KEY_C => FakeReply::error(401, "unauthorized"),
        "/api/usage" => FakeReply::ok(json!({"usage": {}})),
        _ => FakeReply::ok(chat_answer("ok")),
    })
}

#[test]
fn check_exits_0_when_every_pool_has_a_usable_key_and_1_when_one_has_none() {
    let fake = usage_fake();
    let url = &fake.url;

    let good = folder(&config(""), &format!("{url}|{KEY_A}\n[team]\n{url}|{KEY_B}\n"));
    let out = check(good.path(), false);
    eqnice!(0, out.code, "{out:#?}");
    for needle in ["pool 'default': 1 of 1 keys usable: ok", "pool 'team': 1 of 1 keys usable: ok"] {
        assert!(out.stdout.contains(needle), "{needle:?} in:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("0123456789-secret"), "keys are masked:\n{}", out.stdout);

    let bad = folder(&config(""), &format!("{url}|{KEY_A}\n[team]\n{url}|{KEY_C}\n"));
    let out = check(bad.path(), false);
    eqnice!(1, out.code, "{out:#?}");
    assert!(out.stdout.contains("pool 'team': 0 of 1 keys usable: NO USABLE KEY"), "{}", out.stdout);

    let (code, report) = check_json(bad.path());
    eqnice!(1, code);
    eqjson!(json!({"default": {"usable": 1, "keys": 1}, "team": {"usable": 0, "keys": 1}}), report["pools"]);
    eqjson!(json!(false), report["ok"]);
    let rows: Vec<(&str, &str, bool)> = report["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["pool"].as_str().unwrap_or_default(),
                k["state"].as_str().unwrap_or_default(),
                k["usable"].as_bool().expect("usable"),
            )
        })
        .collect();
    eqnice!(vec![("default", "healthy", true), ("team", "invalid", false)], rows, "{report:#}");
    // The file records what the check found.
    let states = read_states(&bad.path().join("state.json")).expect("check writes the state file");
    eqnice!("invalid", states[key_id(url, KEY_C).as_str()]["state"], "{states:#}");
}

#[test]
fn check_exits_2_on_a_config_error() {
    let fake = usage_fake();
    let dir = folder("workers = \"many\"\n", &keys_on(&fake.url, &[KEY_A]));
    let out = check(dir.path(), false);
    eqnice!(2, out.code, "{out:#?}");
    assert!(out.stderr.contains("config.toml:2") && out.stderr.contains("workers"), "{}", out.stderr);
    let dir = folder(&config(""), "this is not a key\n");
    let out = check(dir.path(), true);
    eqnice!(2, out.code, "{out:#?}");
    assert!(out.stderr.contains("keys.txt:1"), "{}", out.stderr);
    eqnice!(0, fake.count(), "nothing probed");
}

#[test]
fn check_sets_a_revoked_key_aside_in_a_running_gateway() {
    // Key C chats fine but its usage probe says 401.
    let fake = usage_fake();
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_C, KEY_B]));
    for _ in 0..2 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!((1, 1), (chats_with(&fake, KEY_C), chats_with(&fake, KEY_B)));
    let out = check(gateway.dir().path(), false);
    eqnice!(0, out.code, "key B keeps the pool usable: {out:#?}");
    assert!(out.stdout.contains("invalid"), "{}", out.stdout);
    // Two requests in a row reach C while the gateway still uses it (round-robin).
    let took = poll("the gateway stops using key C", || {
        let before = chats_with(&fake, KEY_C);
        for _ in 0..2 {
            completion(&gateway.chat(&chat_body("m", false)));
        }
        chats_with(&fake, KEY_C) == before
    });
    assert!(took < FEW_SECONDS, "took {took:?}");
    let before = chats_with(&fake, KEY_C);
    for _ in 0..4 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!(before, chats_with(&fake, KEY_C), "key C stays aside");
}

#[test]
fn check_brings_back_a_key_it_finds_good() {
    // Key A's chats get 401 until the fake is told the key works again.
    let revoked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&revoked);
    let fake = Fake::start(move |recorded| match recorded.path.as_str() {
        _ if key_of(recorded) == KEY_A && flag.load(Ordering::SeqCst) => {
            FakeReply::error(401, "unauthorized")
        }
        "/api/usage" => FakeReply::ok(json!({})),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    completion(&gateway.chat(&chat_body("m", false)));
    let revoked_at = now();
    eqnice!(1, chats_with(&fake, KEY_A), "A was tried and refused");
    revoked.store(false, Ordering::SeqCst);
    // The state file dates changes in whole seconds; let the clock move on.
    poll("the next second", || now() > revoked_at);
    let out = check(gateway.dir().path(), false);
    eqnice!(0, out.code, "{out:#?}");
    let took = poll("the gateway uses key A again", || {
        completion(&gateway.chat(&chat_body("m", false)));
        chats_with(&fake, KEY_A) > 1
    });
    assert!(took < FEW_SECONDS, "took {took:?}");
}

#[test]
fn check_probes_with_usage_show_generate_or_version() {
    /// What a check run with `health` settings sends to a fake answering `answer`.
    fn probed(health: &str, keys: &str, answer: fn(&Recorded) -> FakeReply) -> Vec<Recorded> {
        let fake = Fake::start(answer);
        let dir = folder(&config(health), &keys.replace("URL", &fake.url));
        let out = check(dir.path(), false);
        eqnice!(0, out.code, "{health}: {out:#?}");
        fake.requests()
    }
    let paths = |requests: &[Recorded]| requests.iter().map(|r| r.path.clone()).collect::<Vec<_>>();
    let ok: fn(&Recorded) -> FakeReply = |_| FakeReply::ok(json!({}));
    let key_a = format!("URL|{KEY_A}\n");

    let usage = probed("", &key_a, ok);
    eqnice!(vec!["/api/usage"], paths(&usage), "the default probe");
    eqnice!(Some(format!("Bearer {KEY_A}").as_str()), usage[0].authorization(), "with the key");

    let fallback = probed("[health]\nprobe = \"usage\"\nmodel = \"qwen3:8b\"\n", &key_a, |recorded| {
        match recorded.path.as_str() {
            "/api/usage" => FakeReply::Text { status: 404, body: "404 page not found".into() },
            _ => FakeReply::ok(json!({})),
        }
    });
    eqnice!(vec!["/api/usage", "/api/show"], paths(&fallback), "usage falls back to show on a 404");
    eqjson!(json!({"model": "qwen3:8b"}), fallback[1].body().clone());

    let show = probed("[health]\nprobe = \"show\"\nmodel = \"qwen3:8b\"\n", &key_a, ok);
    eqnice!(vec!["/api/show"], paths(&show));
    eqnice!(
        ("POST", Some(format!("Bearer {KEY_A}").as_str())),
        (show[0].method.as_str(), show[0].authorization())
    );
    eqjson!(json!({"model": "qwen3:8b"}), show[0].body().clone());

    let generate = probed("[health]\nprobe = \"generate\"\nmodel = \"qwen3:8b\"\n", &key_a, ok);
    eqnice!(vec!["/api/generate"], paths(&generate));
    eqnice!(json!("qwen3:8b"), generate[0].body()["model"]);

    let keyless = probed("[health]\nprobe = \"show\"\n", "URL\n", ok);
    eqnice!(vec!["/api/version"], paths(&keyless), "a keyless upstream is asked for its version");
    eqnice!(("GET", None), (keyless[0].method.as_str(), keyless[0].authorization()));
}

/// A fake whose `/api/usage` says [`KEY_A`]'s monthly credits are used up and
/// [`KEY_B`]'s session and weekly windows are at 42% and 7%, and which answers every chat.
fn plan_fake() -> Fake {
    Fake::start(|recorded| match recorded.path.as_str() {
        "/api/usage" if key_of(recorded) == KEY_A => {
            plan_usage(json!({"monthly": {"usage": 1.0, "models": []}}))
        }
        "/api/usage" => plan_usage(json!({"session": {"usage": 0.42}, "weekly": {"usage": 0.07}})),
        _ => FakeReply::ok(chat_answer("ok")),
    })
}

// The fake is not on ollama.com and nothing makes a test upstream count as Ollama Cloud:
// an answer in the usage shape (`limits`) is read from any upstream.
#[test]
fn check_reports_a_key_whose_monthly_credits_are_used_up_as_exhausted_with_its_fractions() {
    let fake = plan_fake();
    let url = &fake.url;
    let dir = folder(&config(""), &format!("{url}|{KEY_A}\n[team]\n{url}|{KEY_B}\n"));
    let t0 = now();
    let out = check(dir.path(), false);
    let t1 = now();
    eqnice!(1, out.code, "the default pool has no usable key: {out:#?}");
    let line_of = |mask: &str| {
        out.stdout
            .lines()
            .find(|line| line.contains(mask))
            .unwrap_or_else(|| panic!("no {mask}:\n{}", out.stdout))
    };
    let (a, b) = (line_of("ka-0…AAAA"), line_of("kb-9…BBBB"));
    for needle in ["exhausted until ", "00:00Z", "monthly 100%", "monthly used up"] {
        assert!(a.contains(needle), "key A's row lacks {needle:?}:\n{}", out.stdout);
    }
    for needle in [" ok ", "session 42%, weekly 7%"] {
        assert!(b.contains(needle), "key B's row lacks {needle:?}:\n{}", out.stdout);
    }
    assert!(out.stdout.lines().next().is_some_and(|head| head.contains("USAGE")), "{}", out.stdout);
    assert!(out.stdout.contains("pool 'default': 0 of 1 keys usable: NO USABLE KEY"), "{}", out.stdout);
    assert!(out.stdout.contains("pool 'team': 1 of 1 keys usable: ok"), "{}", out.stdout);
    for key in [KEY_A, KEY_B] {
        assert!(!out.stdout.contains(key) && !out.stderr.contains(key), "a key is printed:\n{out:#?}");
    }

    let (code, report) = check_json(dir.path());
    eqnice!(1, code);
    let keys = report["keys"].as_array().expect("keys");
    eqjson!(json!({"session": null, "weekly": null, "monthly": 1.0}), keys[0]["usage"].clone());
    eqjson!(json!({"session": 0.42, "weekly": 0.07, "monthly": null}), keys[1]["usage"].clone());
    eqnice!(("exhausted", false), (keys[0]["state"].as_str().unwrap_or_default(), keys[0]["usable"] == true));
    let until = keys[0]["until"].as_u64().unwrap_or_else(|| panic!("no until: {report:#}"));
    let months = [first_of_next_month(t0), first_of_next_month(now())];
    assert!(months.contains(&until), "until {until}, not the first of next month {months:?}");
    eqnice!((Value::Null, Value::Null), (keys[0]["warning"].clone(), keys[1]["warning"].clone()));

    let states = read_states(&dir.path().join("state.json")).expect("check writes the state file");
    let (a, b) = (&states[key_id(url, KEY_A).as_str()], &states[key_id(url, KEY_B).as_str()]);
    eqnice!(
        (json!("exhausted"), json!(1000)),
        (a["state"].clone(), a["usage_permille"].clone()),
        "{states:#}"
    );
    eqnice!((json!("healthy"), json!(420)), (b["state"].clone(), b["usage_permille"].clone()), "{states:#}");
    assert!(first_of_next_month(t1) >= until, "{until}");
}

#[test]
fn check_warns_of_an_unreadable_usage_answer_without_failing_the_key() {
    let fake = Fake::start(|recorded| match recorded.path.as_str() {
        "/api/usage" => FakeReply::ok(json!({"limits": {"monthly": {"usage": "most of it"}}})),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    let dir = folder(&config(""), &keys_on(&fake.url, &[KEY_A]));
    let (code, report) = check_json(dir.path());
    eqnice!(0, code, "{report:#}");
    let key = &report["keys"][0];
    eqnice!((true, Value::Null), (key["usable"] == true, key["usage"].clone()), "{report:#}");
    let warning = key["warning"].as_str().unwrap_or_else(|| panic!("no warning: {report:#}"));
    assert!(warning.contains("usage fractions unknown"), "{warning}");
    assert!(key["note"].as_str().is_some_and(|note| note.contains("warning:")), "{report:#}");
}

#[test]
fn the_background_checker_sets_aside_a_key_whose_monthly_credits_are_used_up() {
    let fake = plan_fake();
    let gateway =
        Gateway::start(&config("[health]\ninterval_secs = 1\n"), &keys_on(&fake.url, &[KEY_A, KEY_B]));
    gateway.wait_for_log(&["health check: 2 keys probed"]);
    for _ in 0..4 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!((0, 4), (chats_with(&fake, KEY_A), chats_with(&fake, KEY_B)), "the probe set key A aside");
    let (a, b) = (key_id(&fake.url, KEY_A), key_id(&fake.url, KEY_B));
    let states = wait_for_state(&gateway.state_path(), "both keys' usage fractions", |keys| {
        keys[a.as_str()]["usage_permille"] == 1000 && keys[b.as_str()]["usage_permille"] == 420
    });
    eqnice!(json!("exhausted"), states[a.as_str()]["state"], "{states:#}");
    let until = states[a.as_str()]["until"].as_u64().unwrap_or_default();
    assert!([first_of_next_month(now()), first_of_next_month(now() - 60)].contains(&until), "{states:#}");
}

#[test]
fn the_background_checker_probes_keys_by_itself() {
    // Key C chats fine but its usage probe says 401.
    let fake = usage_fake();
    let gateway =
        Gateway::start(&config("[health]\ninterval_secs = 1\n"), &keys_on(&fake.url, &[KEY_C, KEY_B]));
    gateway.wait_for_log(&["health check: 2 keys probed"]);
    let seen: Vec<(String, String)> =
        fake.requests().iter().map(|r| (r.path.clone(), key_of(r).to_string())).collect();
    let probes = |key: &str| seen.iter().filter(|(path, k)| path == "/api/usage" && k == key).count();
    assert!(probes(KEY_B) >= 1 && probes(KEY_C) >= 1, "each key is probed: {seen:?}");
    eqnice!(seen.len(), probes(KEY_B) + probes(KEY_C), "no client request, only probes: {seen:?}");
    for _ in 0..4 {
        completion(&gateway.chat(&chat_body("m", false)));
    }
    eqnice!((0, 4), (chats_with(&fake, KEY_C), chats_with(&fake, KEY_B)), "the probe set key C aside");
}

// ---------------------------------------------------------------------------------------
// 8. Even spreading
// ---------------------------------------------------------------------------------------

#[test]
fn round_robin_spreads_4000_requests_from_64_clients_evenly_over_4_keys() {
    const REQUESTS: usize = 4000;
    const CLIENTS: usize = 64;
    let fake = Fake::start(|_| FakeReply::ok(chat_answer("ok")));
    let gateway = Gateway::start(
        &config("[upstream]\nstrategy = \"round-robin\"\n"),
        &keys_on(&fake.url, &[KEY_A, KEY_B, KEY_C, KEY_D]),
    );
    // An agent that keeps a connection per client alive, so the clients measure the
    // gateway rather than TCP handshakes.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections(CLIENTS)
        .max_idle_connections_per_host(CLIENTS)
        .build()
        .into();
    let (url, body) = (gateway.url("/v1/chat/completions"), chat_body("m", false).to_string());
    let auth = format!("Bearer {TOKEN}");
    let (next, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    thread::scope(|scope| {
        for _ in 0..CLIENTS {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                    let sent = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", &auth)
                        .send(body.as_bytes());
                    match sent {
                        Ok(mut reply) if reply.status() == 200 => {
                            let _ = reply.body_mut().read_to_string();
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    eqnice!(0, failed.load(Ordering::Relaxed), "every request succeeds");
    let seen = keys_seen(&fake);
    eqnice!(REQUESTS, seen.len(), "one upstream call per request");
    let per_key = [KEY_A, KEY_B, KEY_C, KEY_D].map(|key| seen.iter().filter(|k| *k == key).count());
    assert!(per_key.iter().all(|n| (980..=1020).contains(n)), "per key: {per_key:?}, expected 1000 ± 2%");
}

/// The request whose failure spends the pool's last key already says when to come back,
/// as the requests after it do.
#[test]
fn the_request_that_spends_the_pool_carries_retry_after() {
    let fake = Fake::start(|_| FakeReply::error(429, "you (x) have reached your session usage limit"));
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    let reply = gateway.chat(&chat_body("m", false));
    assert_envelope(&reply, 429);
    let wait = retry_after(&reply);
    assert!((5 * 3600 - 60..=5 * 3600).contains(&wait), "Retry-After {wait}: the session window");
    let next = gateway.chat(&chat_body("m", false));
    assert_pool_unavailable(&next);
    eqnice!(1, fake.count(), "the second request spends no attempt");
}

/// A reload gives a key set aside as invalid its chance: it is probed, and serves again
/// when the probe finds it good (the operator fixed the account).
#[test]
fn a_reload_rechecks_invalid_keys() {
    let revoked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&revoked);
    let fake = Fake::start(move |recorded| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            return FakeReply::error(401, "unauthorized");
        }
        match recorded.path.as_str() {
            "/api/usage" => FakeReply::ok(serde_json::json!({})),
            _ => FakeReply::ok(chat_answer("ok")),
        }
    });
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    assert_envelope(&gateway.chat(&chat_body("m", false)), 401);
    assert_pool_unavailable(&gateway.chat(&chat_body("m", false)));
    revoked.store(false, std::sync::atomic::Ordering::SeqCst);
    gateway.signal("HUP");
    poll("the key serves again after the reload's probe", || {
        gateway.chat(&chat_body("m", false)).status == 200
    });
    assert!(fake.requests().iter().any(|r| r.path == "/api/usage"), "the key was probed");
}

/// SIGTERM lets a stream in flight finish before the gateway saves its key states and
/// exits; new requests meanwhile get a 503.
#[test]
fn sigterm_lets_streams_in_flight_finish() {
    let fake = Fake::start(|recorded| {
        if recorded.wants_stream() {
            let mut lines: Vec<String> =
                (0..5).map(|i| content_line(&format!("part{i} ")).to_string()).collect();
            lines.push(done_line("stop", 3, 5).to_string());
            FakeReply::Ndjson(Ndjson { lines, delay: Duration::from_millis(200), gate: None })
        } else {
            FakeReply::ok(chat_answer("ok"))
        }
    });
    let gateway = Gateway::start(&config(""), &keys_on(&fake.url, &[KEY_A]));
    let mut conn = gateway.open_stream(&chat_body("m", true));
    eqnice!(200, conn.status);
    let mut events = vec![conn.next_event().expect("a first event")];
    gateway.signal("TERM");
    gateway.wait_for_log(&["stopping: waiting"]);
    let refused = gateway.chat(&chat_body("m", false));
    eqnice!(503, refused.status, "new requests are refused while draining: {}", refused.text);
    events.extend(conn.events());
    assert_eq!(events.last().map(|(_, data)| data.as_str()), Some("[DONE]"), "{events:?}");
    let stopped = gateway.stop();
    eqnice!(Some(0), stopped.code, "{}", stopped.logs);
    assert!(stopped.logs.contains("key states saved"), "{}", stopped.logs);
}
