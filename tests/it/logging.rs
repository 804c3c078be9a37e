//! No secret at any log level: `serve`, `check` and `keys` run at `RUST_LOG=trace` (and
//! at directives that name ureq's crates) with distinctive upstream keys and client
//! tokens, and nothing they print holds a key or a token, as text or as the hex dump
//! ureq writes of each request head. With `log_format = "json"`, every line of a run
//! parses as one JSON object, and the request lines carry their fields.

use crate::fake::{chat_answer, healthy, Fake, FakeReply, Recorded};
use crate::util::*;
use serde_json::{json, Value};

/// Upstream keys and client tokens whose every 6-byte piece is unlikely anywhere else.
const KEY_FAILS: &str = "kf-Q7vZ2mW9pL4tR8nB3cH6";
const KEY_SERVES: &str = "ks-X5jN1dF8gY3uE6wK9sT2";
const CLIENT: &str = "sk-cl-M4hV7bC2zA9qP5xL8rJ1";
const STRANGER: &str = "sk-st-G3kW6yT1oI8uN4eZ7dS5";

/// The `RUST_LOG` values a test runs at: everything on, and directives that name ureq's
/// and rustls' crates, which a filter made of directives alone might let through.
const LEVELS: [&str; 4] = ["trace", "info,ureq=trace", "ureq_proto=trace,trace", "debug,rustls=trace"];
/// Only ureq's records: fine for the CLI, while `serve` needs `info` for the line the
/// tests learn its port from.
const ONLY_UREQ: &str = "ureq=trace";

/// The first line of `text` holding a 6-byte piece of `secret`, as text or as hex (lower
/// or upper case, with or without spaces between bytes or byte pairs, as ureq's dumps
/// print it), with the piece.
fn leaked_piece(text: &str, secret: &str) -> Option<String> {
    let squeeze = |line: &str| line.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
    secret.as_bytes().windows(6).find_map(|piece| {
        let plain = String::from_utf8_lossy(piece).into_owned();
        let hex = hex::encode(piece);
        let line = text.lines().find(|line| line.contains(&plain) || squeeze(line).contains(&hex))?;
        Some(format!("{plain:?} (hex {hex}) in the line {line:?}"))
    })
}

#[track_caller]
fn assert_holds_no_secret(what: &str, text: &str) {
    for secret in [KEY_FAILS, KEY_SERVES, CLIENT, STRANGER] {
        if let Some(piece) = leaked_piece(text, secret) {
            panic!("{what} holds {piece} of {secret}");
        }
    }
}

#[test]
fn the_leak_detector_finds_text_and_ureq_hex_dumps() {
    // What ureq-proto wrote at trace before the gate: 2-byte hex groups, then the text.
    let dump = "TRACE ureq_proto::util] 6b66 2d51 3776 5a32 6d57 3970  kf-Q7vZ2mW9p";
    assert!(leaked_piece(dump, KEY_FAILS).is_some());
    let hex_only = "TRACE ureq_proto::util] 6B 66 2D 51 37 76 5A 32  ........";
    assert!(leaked_piece(hex_only, KEY_FAILS).is_some());
    assert!(leaked_piece("key=\"kf-Q…cH6\" token=alice", KEY_FAILS).is_none());
}

/// An upstream that fails [`KEY_FAILS`] with a 500 quoting the key, as some proxies do
/// (so requests starting on it fail over, and its error is logged), and answers
/// [`KEY_SERVES`] like Ollama, probes included.
fn upstream(recorded: &Recorded) -> FakeReply {
    if recorded.authorization() == Some(&format!("Bearer {KEY_FAILS}")) {
        return FakeReply::error(500, &format!("upstream trouble with key {KEY_FAILS}"));
    }
    match recorded.path.as_str() {
        "/api/usage" => FakeReply::ok(json!({})),
        "/api/tags" => FakeReply::ok(json!({"models": []})),
        _ if recorded.wants_stream() => healthy(recorded),
        _ => FakeReply::ok(chat_answer("fine")),
    }
}

#[test]
fn serve_at_trace_logs_no_key_and_no_token() {
    let fake = Fake::start(upstream);
    let config = format!(
        "allow_query_token = true\n[upstream]\nfailure_threshold = 1000\n{}",
        token_entry("alice", CLIENT, "default")
    );
    let keys = format!("{0}|{KEY_FAILS}\n{0}|{KEY_SERVES}\n", fake.url);
    for level in LEVELS {
        let dir = TempDir::new();
        dir.write_config(&config, &keys);
        let gateway = Gateway::resume_logging(dir, level);
        let bearer = format!("Bearer {CLIENT}");
        let chat = chat_body("m", false).to_string();
        let streamed = chat_body("m", true);
        // Round-robin starts every other request on the failing key: each kind below
        // runs once starting there (a failover) and once not.
        for _ in 0..2 {
            completion(&gateway.post_raw(
                "/v1/chat/completions",
                &[("authorization", &bearer)],
                chat.as_bytes(),
            ));
            let events = gateway.stream("/v1/chat/completions", Some(CLIENT), &streamed);
            assert!(matches!(decode_events(&events).last(), Some(Event::Done)), "{level}: {events:?}");
            let native = gateway.post_raw("/api/chat", &[("x-api-key", CLIENT)], chat.as_bytes());
            eqnice!(200, native.status, "{level}: {}", native.text);
            let query = gateway.post_raw(&format!("/api/chat?api_key={CLIENT}"), &[], chat.as_bytes());
            eqnice!(200, query.status, "{level}: {}", query.text);
            let native_stream =
                gateway.post_raw("/api/chat", &[("authorization", &bearer)], streamed.to_string().as_bytes());
            eqnice!(200, native_stream.status, "{level}: {}", native_stream.text);
        }
        let refused = gateway.post_raw("/v1/chat/completions", &[("x-api-key", STRANGER)], chat.as_bytes());
        eqnice!(401, refused.status, "{level}");
        let tried_failing =
            fake.requests().iter().any(|r| r.authorization().is_some_and(|a| a.contains(KEY_FAILS)));
        assert!(tried_failing, "{level}: some request tried the failing key first");
        let stopped = gateway.stop();
        for needle in ["token=alice", "upstream trouble with key"] {
            assert!(stopped.logs.contains(needle), "{level}: no {needle:?} in the log:\n{}", stopped.logs);
        }
        if level == "trace" {
            assert!(
                stopped.logs.contains("DEBUG"),
                "{level}: the gateway's own debug lines (a connection's peer) still pass:\n{}",
                stopped.logs
            );
        }
        assert_holds_no_secret(&format!("serve's log at RUST_LOG={level}"), &stopped.logs);
    }
}

#[test]
fn check_and_keys_at_trace_print_no_key() {
    let fake = Fake::start(upstream);
    let dir = TempDir::new();
    let keys = format!("{0}|{KEY_FAILS}\n{0}|{KEY_SERVES}\n", fake.url);
    dir.write_config(&token_entry("alice", CLIENT, "default"), &keys);
    for level in LEVELS.into_iter().chain([ONLY_UREQ]) {
        let check = run_cli_logging(&["check", "--config", "config.toml"], dir.path(), level);
        eqnice!(0, check.code, "{level}: {check:?}");
        assert!(
            check.stdout.contains("upstream trouble with key"),
            "{level}: the note quotes the error: {check:?}"
        );
        assert_holds_no_secret(&format!("check's stderr at RUST_LOG={level}"), &check.stderr);
        assert_holds_no_secret(&format!("check's stdout at RUST_LOG={level}"), &check.stdout);
        let keys = run_cli_logging(&["keys", "--config", "config.toml"], dir.path(), level);
        eqnice!(0, keys.code, "{level}: {keys:?}");
        assert_holds_no_secret(&format!("keys' output at RUST_LOG={level}"), &format!("{keys:?}"));
    }
    assert!(fake.count() >= 2 * (LEVELS.len() + 1), "check probed both keys each time");
}

/// A password in an upstream URL (`http://user:password@host`) is a secret too: no log line,
/// `check` or `keys` output shows it.
#[test]
fn a_password_in_an_upstream_url_is_never_shown() {
    let fake = Fake::start(healthy);
    let password = "hunter2-url-password";
    let url = fake.url.replacen("http://", &format!("http://gateway:{password}@"), 1);
    let dir = TempDir::new();
    dir.write_config(
        &format!("log_format = \"json\"\n{}", token_entry("alice", CLIENT, "default")),
        &format!("{url}|{KEY_SERVES}\n"),
    );
    let check = run_cli_logging(&["check", "--config", "config.toml"], dir.path(), "debug");
    let keys = run_cli_logging(&["keys", "--config", "config.toml"], dir.path(), "debug");
    for (what, output) in [("check", format!("{check:?}")), ("keys", format!("{keys:?}"))] {
        assert!(!output.contains(password), "{what} shows the URL's password: {output}");
    }
    let gateway = Gateway::resume_logging(dir, "debug");
    let reply = gateway.post_raw(
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {CLIENT}"))],
        chat_body("m", false).to_string().as_bytes(),
    );
    eqnice!(200, reply.status, "{}", reply.text);
    wait_until(PATIENCE, "the request line", || gateway.logs().contains("/v1/chat/completions"));
    assert!(!gateway.logs().contains(password), "a log line shows the URL's password: {}", gateway.logs());
}

/// `log_format = "json"`: every line `serve` writes, from start-up through warnings and
/// request lines to the stop, is one JSON object with time, level, target and message; a
/// request line has its fields, typed; and no key or token is in any of them.
#[test]
fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let fake = Fake::start(upstream);
    let config = format!(
        "log_format = \"json\"\n[upstream]\nfailure_threshold = 1000\n{}",
        token_entry("alice", CLIENT, "default")
    );
    // KEY_SERVES twice: start-up warns of the duplicate.
    let keys = format!("{0}|{KEY_FAILS}\n{0}|{KEY_SERVES}\n{0}|{KEY_SERVES}\n", fake.url);
    let gateway = Gateway::start(&config, &keys);
    let bearer = format!("Bearer {CLIENT}");
    let chat = chat_body("m", false).to_string();
    for _ in 0..2 {
        completion(&gateway.post_raw("/v1/chat/completions", &[("authorization", &bearer)], chat.as_bytes()));
    }
    let events = gateway.stream("/v1/chat/completions", Some(CLIENT), &chat_body("m", true));
    assert!(matches!(decode_events(&events).last(), Some(Event::Done)), "{events:?}");
    let refused = gateway.post_raw("/v1/chat/completions", &[("x-api-key", STRANGER)], chat.as_bytes());
    eqnice!(401, refused.status);
    let stopped = gateway.stop();
    assert_holds_no_secret("serve's JSON log", &stopped.logs);

    let mut lines = Vec::new();
    for line in stopped.logs.lines() {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        let time = parsed["time"].as_str().unwrap_or_else(|| panic!("no time: {line}"));
        assert!(time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&parsed["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(parsed["target"].is_string() && parsed["message"].is_string(), "{line}");
        lines.push(parsed);
    }
    let said = |needle: &str| lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)));
    for needle in ["listening on http://", "same upstream and key", "stopping"] {
        assert!(said(needle), "no line says {needle:?}:\n{}", stopped.logs);
    }
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "the duplicate's warning:\n{}", stopped.logs);

    let requests: Vec<&Value> = lines.iter().filter(|l| l["path"] == "/v1/chat/completions").collect();
    eqnice!(4, requests.len(), "{}", stopped.logs);
    for line in &requests[..3] {
        let want = ["id", "method", "family", "token", "pool", "key", "model", "status", "attempts"];
        let got: Vec<&Value> = want.iter().map(|field| &line[*field]).collect();
        assert!(got[0].as_str().is_some_and(|id| id.len() == 8), "{line}");
        assert_eq!(
            &got[1..5],
            [&json!("POST"), &json!("openai"), &json!("alice"), &json!("default")],
            "{line}"
        );
        assert!(got[5].as_str().is_some_and(|key| key.contains('…')), "a masked label: {line}");
        assert_eq!((got[6], got[7]), (&json!("m"), &json!(200)), "{line}");
        assert!(got[8].as_u64().is_some_and(|n| n >= 1), "{line}");
        assert!(line["duration_ms"].as_f64().is_some() && line["ttfb_ms"].as_f64().is_some(), "{line}");
        assert!(line["ttfb_ms"].as_f64() <= line["duration_ms"].as_f64(), "{line}");
        assert_eq!((&line["prompt_tokens"], &line["note"]), (&json!(3), &Value::Null), "{line}");
        assert!(line["completion_tokens"].as_u64().is_some(), "{line}");
        assert_eq!(line["message"], "POST /v1/chat/completions 200", "{line}");
    }
    let refused = requests[3];
    assert_eq!(
        (&refused["status"], &refused["token"], &refused["key"]),
        (&json!(401), &Value::Null, &Value::Null)
    );
    assert_eq!((&refused["attempts"], &refused["prompt_tokens"]), (&json!(0), &Value::Null), "{refused}");
}

/// The error a `serve` run ends with (its port is taken) is a JSON line too, once the config
/// has said `log_format = "json"`.
#[test]
fn json_logs_end_with_the_error_as_json() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let dir = TempDir::new();
    dir.write("keys.txt", "http://127.0.0.1:9\n");
    let config = format!(
        "listen = \"{}\"\nlog_format = \"json\"\n{}",
        taken.local_addr().expect("its address"),
        token_entry("alice", CLIENT, "default")
    );
    dir.write("config.toml", &config);
    let run = run_cli(&["serve", "--config", "config.toml"], dir.path());
    eqnice!(1, run.code, "{run:?}");
    let lines: Vec<Value> = run
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect();
    let last = lines.last().unwrap_or_else(|| panic!("nothing on stderr: {run:?}"));
    assert_eq!((&last["level"], &last["target"]), (&json!("ERROR"), &json!("ollama_gateway")), "{last}");
    assert!(last["message"].as_str().is_some_and(|m| m.starts_with("cannot listen on")), "{last}");
}
