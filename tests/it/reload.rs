//! Reloads that meet a file being written in place: a `keys.txt` or `config.toml` read
//! between two of an editor's writes is never applied, so no request ever sees half a
//! file, and no key is set aside because of one.
//!
//! Each test writes the first part of the new file over the old one, waits until the
//! gateway's debug log says it has read the file holding just that part, then writes the
//! rest, while a client sends requests the whole time. The gateway applies a reload only
//! when a second read, [`SETTLE`] later, finds the same bytes, so the first part is never
//! applied as long as the rest comes sooner. The test checks that it did (the one timing
//! it depends on) and, when this machine was too slow to tell, tries again.

use crate::fake::{chat_answer, Fake, FakeReply, Recorded};
use crate::util::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The gateway's settle time (`SETTLE` in src/live.rs).
const SETTLE: Duration = Duration::from_millis(500);
/// A key the edits add.
const KEY_C: &str = "kc-5555555555-secret-CCCC";
/// A second client token (`bob`).
const BOB: &str = "sk-test-bob-9876543210";
/// What the gateway logs at: its own debug lines say what a reload read.
const RUST_LOG: &str = "info,ollama_gateway=debug";
/// Attempts at a test before a slow machine counts as a failure.
const ATTEMPTS: usize = 3;

/// Whether a request carries key A, B or C.
fn known_key(recorded: &Recorded) -> bool {
    let key = recorded.authorization().unwrap_or_default().trim_start_matches("Bearer ");
    [KEY_A, KEY_B, KEY_C].contains(&key)
}

/// An upstream that knows keys A, B and C and refuses any other (a cut-off key) with 401.
fn upstream(recorded: &Recorded) -> FakeReply {
    if known_key(recorded) {
        FakeReply::ok(chat_answer("ok"))
    } else {
        FakeReply::error(401, "unauthorized")
    }
}

/// keys.txt with `keys` on `url`, in that order.
fn keys_on(url: &str, keys: &[&str]) -> String {
    keys.iter().map(|key| format!("{url}|{key}\n")).collect()
}

/// What happened while a file was rewritten in two steps.
struct Edit {
    /// Whether the rest was written within half of [`SETTLE`] of the gateway's read of the
    /// first part: soon enough that its second read came after it.
    quick: bool,
    /// Every status the client got, with when.
    statuses: Vec<(Instant, u16)>,
    /// When the first part was written, and when the rest was.
    window: (Instant, Instant),
}

/// Writes `first` over `name` in place (truncating it, as an editor that does not save
/// atomically does), waits until the gateway has read the file holding just that, writes
/// `rest`, and waits until the gateway logs a reload containing `reloaded`; meanwhile a
/// client sends `request` every 10 ms.
fn edit_in_two_steps(
    gateway: &Gateway,
    name: &str,
    (first, rest): (&str, &str),
    reloaded: &str,
    request: impl Fn() -> u16 + Sync,
) -> Edit {
    let done = AtomicBool::new(false);
    thread::scope(|scope| {
        // Stops the client when this closure ends, by a failed wait too: the scope joins
        // the client before a panic leaves it, and a client that never stopped hung the test.
        let _stop = Stop(&done);
        let client = scope.spawn(|| {
            let mut statuses = Vec::new();
            while !done.load(Ordering::SeqCst) {
                statuses.push((Instant::now(), request()));
                thread::sleep(Duration::from_millis(10));
            }
            statuses
        });
        let path = gateway.dir().path().join(name);
        let mut file =
            std::fs::OpenOptions::new().write(true).truncate(true).open(&path).expect("open in place");
        let started = Instant::now();
        file.write_all(first.as_bytes()).expect("write the first part");
        gateway.wait_for_log(&["reload: read", &format!("{name} ({} bytes)", first.len())]);
        let read = Instant::now();
        file.write_all(rest.as_bytes()).expect("write the rest");
        let finished = Instant::now();
        drop(file);
        gateway.wait_for_log(&["reloaded", reloaded]);
        done.store(true, Ordering::SeqCst);
        let statuses = client.join().expect("the client thread");
        Edit { quick: finished - read < SETTLE / 2, statuses, window: (started, finished) }
    })
}

/// Sets its flag when dropped.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `attempt` until it passes, or fails when it fails although the machine was quick
/// enough to tell (or on the last attempt).
fn with_attempts(attempt: impl Fn() -> (bool, Result<(), String>)) {
    for n in 1..=ATTEMPTS {
        match attempt() {
            (_, Ok(())) => return,
            (false, Err(why)) if n < ATTEMPTS => {
                eprintln!("attempt {n}: the machine was too slow to tell ({why}); trying again");
            }
            (_, Err(why)) => panic!("attempt {n}: {why}"),
        }
    }
}

/// Checks that every request while the file was being written (and after) got 200.
fn served_throughout(edit: &Edit, logs: &str) -> Result<(), String> {
    let (from, to) = edit.window;
    let during = edit.statuses.iter().filter(|(at, _)| *at >= from && *at <= to).count();
    assert!(during > 0, "no request was sent while the file was half-written");
    match edit.statuses.iter().find(|(_, status)| *status != 200) {
        Some((at, status)) => Err(format!(
            "a request got {status} {:?} after the first part was written; the log without \
             its 200s:\n{}",
            at.saturating_duration_since(from),
            logs.lines().filter(|line| !line.contains("status=200")).collect::<Vec<_>>().join("\n")
        )),
        None => Ok(()),
    }
}

// See: review finding "a reload that reads keys.txt between two writes loads a truncated
// key; its 401 marks it invalid and the pool answers 429 until the next reload".
#[test]
fn a_keys_txt_written_in_place_is_applied_only_once_it_is_whole() {
    with_attempts(|| {
        let fake = Fake::start(upstream);
        let dir = TempDir::new();
        dir.write_config(&alice(), &keys_on(&fake.url, &[KEY_A, KEY_B]));
        let gateway = Gateway::resume_logging(dir, RUST_LOG);
        let new = keys_on(&fake.url, &[KEY_C, KEY_A, KEY_B]);
        // Cut inside key C: the first part holds a key of 12 characters, which parses, and
        // neither key A nor key B.
        let cut = fake.url.len() + 1 + 12;
        let edit = edit_in_two_steps(&gateway, "keys.txt", new.split_at(cut), "3 upstreams", || {
            gateway.chat(&chat_body("m", false)).status
        });
        wait_until(PATIENCE, "a request is sent with key C", || {
            completion(&gateway.chat(&chat_body("m", false)));
            fake.requests().iter().any(|r| r.authorization() == Some(&format!("Bearer {KEY_C}")))
        });
        let stopped = gateway.stop();
        let torn = fake.requests().iter().filter(|r| !known_key(r)).count();
        let state = std::fs::read_to_string(stopped.dir.path().join("state.json")).unwrap_or_default();
        let result = served_throughout(&edit, &stopped.logs).and_then(|()| {
            let reloads: Vec<&str> = stopped.logs.lines().filter(|l| l.contains("reloaded")).collect();
            match (torn, reloads.as_slice(), state.contains("invalid")) {
                (0, [reload], false) if reload.contains("3 upstreams") => Ok(()),
                _ => Err(format!(
                    "{torn} requests went upstream with the cut-off key; reloads: {reloads:#?}; \
                     state file: {state}"
                )),
            }
        });
        (edit.quick, result)
    });
}

// See: review finding "a truncated config.toml that still parses drops tokens".
#[test]
fn a_config_toml_written_in_place_is_applied_only_once_it_is_whole() {
    with_attempts(|| {
        let fake = Fake::start(upstream);
        let dir = TempDir::new();
        let bob = token_entry("bob", BOB, "default");
        dir.write_config(&format!("{}{bob}", alice()), &keys_on(&fake.url, &[KEY_A]));
        let gateway = Gateway::resume_logging(dir, RUST_LOG);
        // The first part parses and lacks bob's token.
        let first = format!("listen = \"127.0.0.1:0\"\n[upstream]\nmax_attempts = 2\n{}", alice());
        let edit = edit_in_two_steps(&gateway, "config.toml", (&first, &bob), "2 tokens", || {
            gateway.post_json("/v1/chat/completions", Some(BOB), &chat_body("m", false)).status
        });
        let logs = gateway.logs();
        let result = served_throughout(&edit, &logs).and_then(|()| {
            match logs.lines().filter(|l| l.contains("reloaded")).collect::<Vec<_>>().as_slice() {
                [reload] if reload.contains("2 tokens") => Ok(()),
                reloads => Err(format!("the reloads were {reloads:#?}")),
            }
        });
        (edit.quick, result)
    });
}
