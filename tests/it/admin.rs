//! The admin API (`/admin/api/…`) and usage accounting on the real binary: the `admin`
//! scope, the status of every key, disabling and enabling keys (across reloads, restarts
//! and `check`), a check and a reload on request, usage per token, model and day, and the
//! `usage` command. No answer or log line holds a key or a token.

// Mirror fields exist to be checked by serde; some tests read only a few of them.
#![allow(dead_code)]

use crate::fake::{chat_answer, plan_usage, Fake, FakeReply, Gate, OpenOnDrop, Recorded};
use crate::util::*;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A token with the `admin` scope (and `inference`, so it can chat too).
const ADMIN: &str = "sk-test-admin-5555555555";
/// A second client token without it.
const BOB: &str = "sk-test-bob-9876543210";
/// A third upstream key.
const KEY_C: &str = "kc-5555555555-secret-CCCC";
/// Ollama Cloud's weekly limit message.
const WEEKLY: &str = "you (x) have reached your weekly usage limit, upgrade for higher limits";

/// `alice` (default scopes), `bob` (default scopes) and `ops` (`admin`, `inference`).
fn tokens() -> String {
    format!(
        "{}{}{}scopes = [\"admin\", \"inference\"]\n",
        alice(),
        token_entry("bob", BOB, "default"),
        token_entry("ops", ADMIN, "default")
    )
}

/// The status as the admin API documents it: a field added, dropped or misspelt fails.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Status {
    version: String,
    uptime_secs: u64,
    config: ConfigInfo,
    requests: Requests,
    pools: Vec<PoolStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigInfo {
    generation: u64,
    loaded_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Requests {
    in_flight: u64,
    queued: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolStatus {
    name: String,
    provider: String,
    fallback: Option<String>,
    strategy: String,
    usable: u64,
    keys: Vec<KeyStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyStatus {
    id: String,
    label: String,
    host: String,
    line: u64,
    state: String,
    health: String,
    disabled: bool,
    until: Option<String>,
    until_secs: Option<u64>,
    last_error: Option<String>,
    requests: u64,
    successes: u64,
    failures: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    last_used: Option<String>,
    model_locks: BTreeMap<String, String>,
    slots_in_use: u32,
    slot_limit: u32,
    usage: Option<f64>,
    requests_per_minute: Vec<u32>,
    failures_per_minute: Vec<u32>,
}

/// One row of the usage answer (and of `usage --json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageRow {
    date: String,
    token: String,
    model: String,
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// `method path` with `token` (when given), as the admin API's clients send it.
fn call(gateway: &Gateway, method: &str, path: &str, token: Option<&str>) -> JsonReply {
    let auth = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
    let reply = gateway.raw(method, path, &headers, body);
    for secret in [KEY_A, KEY_B, KEY_C, TOKEN, BOB, ADMIN] {
        assert!(!reply.text.contains(secret), "{method} {path} answered a secret: {}", reply.text);
    }
    reply
}

/// `GET /admin/api/status` as `ops`, decoded.
#[track_caller]
fn status(gateway: &Gateway) -> Status {
    let reply = call(gateway, "GET", "/admin/api/status", Some(ADMIN));
    assert_eq!(reply.status, 200, "{}", reply.text);
    serde_json::from_value(reply.body.clone()).unwrap_or_else(|err| panic!("{err}: {}", reply.text))
}

/// The status of every key of pool `default`, in keys.txt order.
fn keys_of(gateway: &Gateway) -> Vec<KeyStatus> {
    let status = status(gateway);
    status.pools.into_iter().find(|p| p.name == "default").expect("pool default").keys
}

/// A key's id: the first 24 hex digits of SHA-256 of `url\nkey`.
fn key_id(url: &str, key: &str) -> String {
    sha256_hex(&format!("{url}\n{key}"))[..24].to_string()
}

fn key_of(recorded: &Recorded) -> &str {
    recorded.authorization().unwrap_or_default().trim_start_matches("Bearer ")
}

/// How many chats the fake got with `key`.
fn chats_with(fake: &Fake, key: &str) -> usize {
    fake.requests().iter().filter(|r| r.path == "/api/chat" && key_of(r) == key).count()
}

/// A non-streamed chat as `token`.
fn chat_as(gateway: &Gateway, token: &str, model: &str) -> JsonReply {
    gateway.post_json("/v1/chat/completions", Some(token), &chat_body(model, false))
}

/// Asserts no key or token reached the log.
#[track_caller]
fn assert_logs_clean(logs: &str) {
    for secret in [KEY_A, KEY_B, KEY_C, TOKEN, BOB, ADMIN] {
        assert!(!logs.contains(secret), "the log holds a secret:\n{logs}");
    }
}

#[test]
fn admin_routes_need_a_token_with_the_admin_scope() {
    let fake = Fake::always(200, chat_answer("ok"));
    let gateway = Gateway::start(&tokens(), &format!("{}|{KEY_A}\n", fake.url));
    let routes = [
        ("GET", "/admin/api/status"),
        ("GET", "/admin/api/usage"),
        ("POST", "/admin/api/check"),
        ("POST", "/admin/api/reload"),
        ("POST", &format!("/admin/api/keys/{}/disable", key_id(&fake.url, KEY_A))),
        ("POST", &format!("/admin/api/keys/{}/enable", key_id(&fake.url, KEY_A))),
    ];
    for (method, path) in routes {
        let error = assert_envelope(&call(&gateway, method, path, None), 401);
        assert_eq!(error.code.as_deref(), Some("invalid_api_key"), "{method} {path}");
        let error = assert_envelope(&call(&gateway, method, path, Some(TOKEN)), 403);
        assert_eq!(error.code.as_deref(), Some("insufficient_scope"), "{method} {path}");
        assert!(error.message.contains("'admin' scope"), "{method} {path}: {}", error.message);
    }
    assert_eq!(fake.count(), 0, "no refused call reached upstream");
    assert_eq!(call(&gateway, "GET", "/admin/api/status", Some(ADMIN)).status, 200);
    assert_eq!(call(&gateway, "POST", "/admin/api/status", Some(ADMIN)).status, 405);
    assert_eq!(call(&gateway, "GET", "/admin/api/nothing", Some(ADMIN)).status, 404);
    // The admin token may chat too, since it was given `inference`; alice may not administer.
    assert_eq!(chat_as(&gateway, ADMIN, "m").status, 200);
    assert_logs_clean(&gateway.logs());
}

#[test]
fn the_status_lists_every_key_of_keys_txt_with_its_state() {
    let fake = Fake::start(|recorded| match key_of(recorded) {
        KEY_A => FakeReply::error(401, &format!("unauthorized key {KEY_A}")),
        KEY_B => FakeReply::error(429, WEEKLY),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    let url = &fake.url;
    let keys = format!("# the pool\n{url}|{KEY_A} name=paid-1\n{url}|{KEY_B}\n\n[spare]\n{url}|{KEY_C}\n");
    let config = format!("{}\n[pools.default]\nfallback = \"spare\"\nmax_concurrent_per_key = 3\n", tokens());
    let gateway = Gateway::start(&config, &keys);
    let fresh = status(&gateway);
    assert_eq!((fresh.config.generation, fresh.requests.queued), (1, 0));
    assert!(fresh.requests.in_flight >= 1, "the status request itself is in flight");
    assert_eq!(fresh.version, env!("CARGO_PKG_VERSION"));
    // Both keys of `default` fail; `spare` answers. Each chat tries what is usable.
    for _ in 0..2 {
        assert_eq!(chat_as(&gateway, TOKEN, "m").status, 200);
    }
    assert_eq!((chats_with(&fake, KEY_A), chats_with(&fake, KEY_B)), (1, 1));
    let status = status(&gateway);
    let names: Vec<(&str, &str, &str, Option<&str>)> = status
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.provider.as_str(), p.strategy.as_str(), p.fallback.as_deref()))
        .collect();
    assert_eq!(
        names,
        [("default", "ollama", "round-robin", Some("spare")), ("spare", "ollama", "round-robin", None)]
    );
    assert_eq!((status.pools[0].usable, status.pools[1].usable), (0, 1));
    let [a, b] = [&status.pools[0].keys[0], &status.pools[0].keys[1]];
    let c = &status.pools[1].keys[0];
    let host = url.trim_start_matches("http://");
    eqnice!(
        [
            (key_id(url, KEY_A), "paid-1".to_string(), host, 2, "invalid", None, 3),
            (key_id(url, KEY_B), "kb-9…BBBB".to_string(), host, 3, "exhausted", Some(true), 3),
            (key_id(url, KEY_C), "kc-5…CCCC".to_string(), host, 6, "healthy", None, 0),
        ],
        [a, b, c].map(|k| (
            k.id.clone(),
            k.label.clone(),
            k.host.as_str(),
            k.line,
            k.state.as_str(),
            k.until_secs.map(|secs| secs > 0 && secs <= 7 * 86_400),
            k.slot_limit
        )),
    );
    assert!(b.until.as_deref().is_some_and(|until| until.ends_with("T00:00:00Z")), "next Monday: {b:?}");
    assert_eq!(b.last_error, Some(format!("upstream answered 429: {WEEKLY}")));
    assert!(a.last_error.as_deref().is_some_and(|e| e.contains("ka-0…AAAA")), "masked: {a:?}");
    assert_eq!((c.requests, c.successes, c.failures, c.prompt_tokens, c.completion_tokens), (2, 2, 0, 6, 10));
    assert!(c.last_used.is_some() && a.model_locks.is_empty() && c.slots_in_use == 0);
    assert!([a, b, c].iter().all(|k| !k.disabled && k.health == k.state && k.usage.is_none()));
    assert_logs_clean(&gateway.logs());
}

#[test]
fn each_keys_attempts_of_the_last_hour_are_counted_per_minute() {
    let fake = Fake::start(|recorded| match key_of(recorded) {
        KEY_A => FakeReply::error(401, "unauthorized"),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    let url = &fake.url;
    let gateway = Gateway::start(&tokens(), &format!("{url}|{KEY_A}\n{url}|{KEY_B}\n"));
    let fresh = keys_of(&gateway);
    assert!(
        fresh.iter().all(|k| k.requests_per_minute == [0; 60] && k.failures_per_minute == [0; 60]),
        "{fresh:?}"
    );
    for _ in 0..3 {
        assert_eq!(chat_as(&gateway, TOKEN, "m").status, 200);
    }
    let keys = keys_of(&gateway);
    let sum = |minutes: &[u32]| minutes.iter().map(|n| u64::from(*n)).sum::<u64>();
    let seen: Vec<(usize, u64, u64)> = keys
        .iter()
        .map(|k| (k.requests_per_minute.len(), sum(&k.requests_per_minute), sum(&k.failures_per_minute)))
        .collect();
    // KEY_A was tried once and refused (then known invalid); KEY_B served all three.
    eqnice!(vec![(60, 1, 1), (60, 3, 0)], seen);
    for key in &keys {
        assert_eq!(
            (sum(&key.requests_per_minute), sum(&key.failures_per_minute)),
            (key.requests, key.failures)
        );
        // The current minute is last: the attempts are in it, or in the one before when the
        // test crossed a minute.
        assert_eq!(sum(&key.requests_per_minute[58..]), key.requests, "{key:?}");
    }
    assert_logs_clean(&gateway.logs());
}

#[test]
fn a_disabled_key_is_never_offered_across_reloads_restarts_and_checks_until_enabled() {
    let fake = Fake::start(|recorded| match recorded.path.as_str() {
        "/api/usage" => plan_usage(json!({"weekly": {"usage": 0.25}})),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    let (url, keys) = (fake.url.clone(), format!("{}|{KEY_A}\n{}|{KEY_B}\n", fake.url, fake.url));
    let gateway = Gateway::start(&tokens(), &keys);
    let id_a = key_id(&url, KEY_A);
    let reply = call(&gateway, "POST", &format!("/admin/api/keys/{id_a}/disable"), Some(ADMIN));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answered: KeyStatus = serde_json::from_value(reply.body.clone()).expect("the key's status object");
    assert_eq!(
        (answered.id.as_str(), answered.state.as_str(), answered.health.as_str()),
        (id_a.as_str(), "disabled", "healthy")
    );
    gateway.wait_for_log(&["admin: token 'ops' disabled key ka-0…AAAA", &id_a]);

    let only_b = |gateway: &Gateway, what: &str| {
        let before = chats_with(&fake, KEY_A);
        for _ in 0..4 {
            assert_eq!(chat_as(gateway, TOKEN, "m").status, 200, "{what}");
        }
        assert_eq!(chats_with(&fake, KEY_A), before, "{what}: the disabled key was used");
        let keys = keys_of(gateway);
        assert_eq!((keys[0].state.as_str(), keys[1].state.as_str()), ("disabled", "healthy"), "{what}");
    };
    only_b(&gateway, "after disabling");

    // A reload (keys.txt rewritten, and SIGHUP) keeps it.
    gateway.dir().rewrite("keys.txt", &format!("# edited\n{keys}"));
    gateway.wait_for_log(&["reloaded", "(generation 2)"]);
    gateway.signal("HUP");
    gateway.wait_for_log(&["reloaded", "(generation 3)"]);
    only_b(&gateway, "after two reloads");

    // So does a restart, and a `check` run from cron meanwhile.
    let stopped = gateway.stop();
    assert_logs_clean(&stopped.logs);
    let check = run_cli(&["check", "--config", "config.toml"], stopped.dir.path());
    assert_eq!(check.code, 0, "{check:#?}");
    assert!(check.stdout.contains("disabled (probe: ok)"), "{}", check.stdout);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.dir.path().join("state.json")).unwrap())
            .expect("the state file");
    assert_eq!(
        (&file["keys"][&id_a]["disabled"], &file["keys"][&id_a]["usage_permille"]),
        (&json!(true), &json!(250))
    );
    let gateway = Gateway::resume(stopped.dir);
    only_b(&gateway, "after a restart and a check");
    // The admin check probes it and still keeps it out.
    assert_eq!(call(&gateway, "POST", "/admin/api/check", Some(ADMIN)).status, 200);
    only_b(&gateway, "after an admin check");

    // With every key disabled, the pool says so, and that waiting will not help.
    let id_b = key_id(&url, KEY_B);
    assert_eq!(call(&gateway, "POST", &format!("/admin/api/keys/{id_b}/disable"), Some(ADMIN)).status, 200);
    let refused = chat_as(&gateway, TOKEN, "m");
    let error = assert_envelope(&refused, 429);
    assert!(
        error.message.contains("(2 disabled)") && error.message.contains("none frees up"),
        "{}",
        error.message
    );
    assert!(error.message.contains("/admin/api/keys/ID/enable"), "{}", error.message);
    assert_eq!(refused.header("retry-after"), None, "no wait is claimed");

    // Enabled again: used again.
    for id in [&id_a, &id_b] {
        let reply = call(&gateway, "POST", &format!("/admin/api/keys/{id}/enable"), Some(ADMIN));
        assert_eq!((reply.status, &reply.body["state"]), (200, &json!("healthy")), "{}", reply.text);
    }
    let before = chats_with(&fake, KEY_A);
    for _ in 0..4 {
        assert_eq!(chat_as(&gateway, TOKEN, "m").status, 200);
    }
    assert_eq!(chats_with(&fake, KEY_A), before + 2, "round-robin over both again");

    // An id no key has: 404, without echoing what was sent in its place.
    let unknown = call(&gateway, "POST", &format!("/admin/api/keys/{KEY_A}/disable"), Some(ADMIN));
    let error = assert_envelope(&unknown, 404);
    assert_eq!(error.code.as_deref(), Some("key_not_found"));
    assert!(error.message.contains("GET /admin/api/status"), "{}", error.message);
    // (The request log line prints the path the client sent; the key above was sent as one.)
    let logs =
        gateway.logs().replace(&format!("/admin/api/keys/{KEY_A}/disable"), "/admin/api/keys/…/disable");
    assert_logs_clean(&logs);
}

#[test]
fn a_check_on_request_probes_every_key_and_only_one_runs_at_a_time() {
    let gate = Gate::new();
    let _open = OpenOnDrop(Arc::clone(&gate));
    let held = Arc::clone(&gate);
    let fake = Fake::start(move |recorded| match (recorded.path.as_str(), key_of(recorded)) {
        ("/api/usage", KEY_A) => {
            held.wait();
            plan_usage(json!({"session": {"usage": 0.42}, "weekly": {"usage": 0.07}}))
        }
        (_, KEY_B) => FakeReply::error(401, "unauthorized"),
        _ => FakeReply::ok(chat_answer("ok")),
    });
    let url = &fake.url;
    let gateway = Gateway::start(&tokens(), &format!("{url}|{KEY_A} name=paid-1\n{url}|{KEY_B}\n"));
    let first = thread::scope(|scope| {
        let first = scope.spawn(|| call(&gateway, "POST", "/admin/api/check", Some(ADMIN)));
        wait_until(PATIENCE, "the first check probes key A", || {
            fake.requests().iter().any(|r| r.path == "/api/usage" && key_of(r) == KEY_A)
        });
        let second = call(&gateway, "POST", "/admin/api/check", Some(ADMIN));
        let error = assert_envelope(&second, 409);
        assert_eq!(error.code.as_deref(), Some("check_running"), "{}", second.text);
        gate.open();
        first.join().expect("the first check")
    });
    assert_eq!(first.status, 200, "{}", first.text);
    let report = &first.body;
    assert_eq!(
        (&report["ok"], &report["pools"]["default"]),
        (&json!(true), &json!({"usable": 1, "keys": 2}))
    );
    let rows = report["keys"].as_array().expect("keys");
    let row = |i: usize, field: &str| rows[i][field].clone();
    assert_eq!(
        [0, 1].map(|i| (row(i, "label"), row(i, "state"), row(i, "result"), row(i, "usable"))),
        [
            (json!("paid-1"), json!("healthy"), json!("ok"), json!(true)),
            (json!("kb-9…BBBB"), json!("invalid"), json!("invalid"), json!(false)),
        ],
    );
    assert_eq!(row(0, "usage"), json!({"session": 0.42, "weekly": 0.07, "monthly": null}));
    assert_eq!((row(0, "note"), row(1, "usage")), (json!("200 via /api/usage"), Value::Null));
    assert!(row(1, "note").as_str().is_some_and(|note| note.starts_with("401 via /api/usage")), "{rows:?}");
    assert!(row(0, "latency_ms").as_u64().is_some() && row(0, "id") == json!(key_id(url, KEY_A)));
    // The results are the keys' states now, and the plan's fraction shows in the status.
    let keys = keys_of(&gateway);
    assert_eq!((keys[0].usage, keys[1].state.as_str()), (Some(0.42), "invalid"));
    // Free again once the first has answered.
    assert_eq!(call(&gateway, "POST", "/admin/api/check", Some(ADMIN)).status, 200);
    assert_logs_clean(&gateway.logs());
}

/// The 422 of a reload that found a broken file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadRefused {
    reloaded: bool,
    generation: u64,
    error: ConfigFault,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFault {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: String,
    file: String,
    line: Option<u64>,
    key: Option<String>,
}

#[test]
fn a_reload_on_request_applies_good_files_and_names_the_line_of_a_broken_one() {
    let fake = Fake::always(200, chat_answer("ok"));
    let gateway = Gateway::start(&tokens(), &format!("{}|{KEY_A}\n", fake.url));
    // An edit that the housekeeper would notice too: the reload takes it, once.
    gateway.dir().rewrite("keys.txt", &format!("{}|{KEY_A}\n{}|{KEY_B}\n", fake.url, fake.url));
    let reply = call(&gateway, "POST", "/admin/api/reload", Some(ADMIN));
    assert_eq!((reply.status, &reply.body["reloaded"]), (200, &json!(true)), "{}", reply.text);
    // 2, unless the housekeeper happened to notice the edit in the moment before.
    let generation = reply.body["generation"].as_u64().expect("the generation");
    assert!(generation >= 2, "{}", reply.text);
    assert_eq!(status(&gateway).config.generation, generation);
    assert_eq!(keys_of(&gateway).len(), 2, "the new key is served");
    // The housekeeper checks the files every 2 s: it must not load the same edit again.
    thread::sleep(Duration::from_millis(2600));
    assert_eq!(status(&gateway).config.generation, generation, "{}", gateway.logs());

    let config = gateway.dir().path().join("config.toml");
    let good = std::fs::read_to_string(&config).expect("config.toml");
    gateway.dir().rewrite("config.toml", &good.replacen("\n", "\nworkers = \"many\"\n", 1));
    let reply = call(&gateway, "POST", "/admin/api/reload", Some(ADMIN));
    assert_eq!(reply.status, 422, "{}", reply.text);
    let refused: ReloadRefused =
        serde_json::from_value(reply.body.clone()).unwrap_or_else(|e| panic!("{e}: {}", reply.text));
    assert_eq!((refused.reloaded, refused.generation), (false, generation));
    let fault = &refused.error;
    assert_eq!((fault.code.as_str(), fault.kind.as_str()), ("config_invalid", "invalid_request_error"));
    assert_eq!(
        (fault.file.as_str(), fault.line, fault.key.as_deref()),
        (config.to_str().unwrap(), Some(2), Some("workers"))
    );
    assert!(
        fault.message.contains("config.toml:2: workers:")
            && fault.message.contains("previous config keeps serving"),
        "{}",
        fault.message
    );
    // The previous config serves on.
    assert_eq!(chat_as(&gateway, TOKEN, "m").status, 200);
    assert_eq!(status(&gateway).config.generation, generation);
    gateway.wait_for_log(&["admin: reload asked by token 'ops' failed", "config.toml:2"]);
    assert_logs_clean(&gateway.logs());
}

#[test]
fn usage_is_counted_per_token_model_and_day_kept_across_a_restart_and_printed_by_the_cli() {
    let fake = Fake::start(crate::fake::ollama);
    let gateway = Gateway::start(&tokens(), &format!("{}|{KEY_A}\n", fake.url));
    // alice: two answers of 3 + 5 tokens, a stream of 3 + 2; bob: a model upstream lacks.
    for _ in 0..2 {
        assert_eq!(chat_as(&gateway, TOKEN, "llama3.2").status, 200);
    }
    let events = gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("qwen3:8b", true));
    assert!(!events.is_empty());
    assert_eq!(chat_as(&gateway, BOB, "missing-model").status, 404);
    // Listing models names none: not usage.
    assert_eq!(
        gateway.raw("GET", "/v1/models", &[("Authorization", &format!("Bearer {BOB}"))], b"").status,
        200
    );
    let usage = |gateway: &Gateway, query: &str| -> (u16, Value) {
        let reply = call(gateway, "GET", &format!("/admin/api/usage{query}"), Some(ADMIN));
        (reply.status, reply.body)
    };
    // Counted when each request's log line is written, just after its answer went out.
    let mut answer = Value::Null;
    wait_until(PATIENCE, "four requests are counted", || {
        answer = usage(&gateway, "").1;
        answer["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().map(|r| r["requests"].as_u64().unwrap_or(0)).sum::<u64>() == 4)
    });
    assert_eq!(answer["days"], json!(7), "{answer}");
    let rows: Vec<UsageRow> = serde_json::from_value(answer["rows"].clone()).expect("rows");
    let date = rows.first().map(|r| r.date.clone()).unwrap_or_default();
    let row = |token: &str, model: &str, counts: [u64; 4]| UsageRow {
        date: date.clone(),
        token: token.into(),
        model: model.into(),
        requests: counts[0],
        errors: counts[1],
        prompt_tokens: counts[2],
        completion_tokens: counts[3],
    };
    let expected = vec![
        row("alice", "llama3.2", [2, 0, 6, 10]),
        row("alice", "qwen3:8b", [1, 0, 3, 2]),
        // A model no request succeeded for today is counted, but not by its name.
        row("bob", "(other)", [1, 1, 0, 0]),
    ];
    eqnice!(expected, rows);
    assert_eq!(date.len(), 10, "a UTC date");
    for bad in ["?days=abc", "?days=0", "?days=91", "?days=", "?days=-1"] {
        let (code, answer) = usage(&gateway, bad);
        assert_eq!(code, 400, "{bad}: {answer}");
        assert_eq!(answer["error"]["param"], json!("days"), "{bad}");
    }
    assert_eq!(usage(&gateway, "?days=90").0, 200);

    // Kept in the state file across a restart.
    let stopped = gateway.stop();
    assert_logs_clean(&stopped.logs);
    let gateway = Gateway::resume(stopped.dir);
    let (_, answer) = usage(&gateway, "?days=1");
    eqnice!(expected, serde_json::from_value::<Vec<UsageRow>>(answer["rows"].clone()).expect("rows"));

    // The same table from the command line (the file lags a running gateway by seconds).
    let dir = gateway.dir().path().to_path_buf();
    let json_out = run_cli(&["usage", "--config", "config.toml", "--json"], &dir);
    assert_eq!(json_out.code, 0, "{json_out:#?}");
    eqnice!(
        expected,
        serde_json::from_str::<Vec<UsageRow>>(&json_out.stdout).expect("usage --json prints rows")
    );
    let text = run_cli(&["usage", "--config", "config.toml", "--days", "1"], &dir);
    assert_eq!(text.code, 0, "{text:#?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines[0], format!("state.json: usage today ({date}, UTC)"), "{}", text.stdout);
    let words: Vec<Vec<&str>> = lines[1..].iter().map(|line| line.split_whitespace().collect()).collect();
    eqnice!(
        vec![
            vec!["DATE", "TOKEN", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION"],
            vec![&date, "alice", "llama3.2", "2", "0", "6", "10"],
            vec![&date, "alice", "qwen3:8b", "1", "0", "3", "2"],
            vec![&date, "bob", "(other)", "1", "1", "0", "0"],
            vec!["total", "alice", "3", "0", "9", "12"],
            vec!["total", "bob", "1", "1", "0", "0"],
        ],
        words,
        "{}",
        text.stdout
    );
    let header = lines[1];
    let column = header.find("REQUESTS").expect("a REQUESTS column") + "REQUESTS".len();
    assert!(
        lines[2..].iter().all(|line| line.chars().nth(column - 1).is_some_and(|c| c.is_ascii_digit())),
        "numbers end under their heading:\n{}",
        text.stdout
    );
    let bad = run_cli(&["usage", "--config", "config.toml", "--days", "abc"], &dir);
    assert_eq!(bad.code, 2, "{bad:#?}");
    assert!(bad.stderr.contains("--days must be a whole number from 1 to 90"), "{}", bad.stderr);
    assert_logs_clean(&gateway.logs());
}
