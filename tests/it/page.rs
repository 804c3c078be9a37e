//! The gateway's pages on the real binary: the status page (`/admin`) served without a
//! token under its security headers, then driven in headless Chromium (log in, one row per
//! key with its state, a key disabled with its button and then avoided, a broken reload
//! shown with its file and line); and the public `/stats`, off by default and, when on,
//! aggregates only.
//!
//! The browser test saves what it saw as `status-page.png` in cargo's target folder, for a
//! person to look at. It needs Chromium and chromedriver (see `util::webdriver`).

use crate::fake::{Fake, FakeReply, Recorded};
use crate::util::webdriver::Browser;
use crate::util::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A token with the `admin` scope, named `ops-admin`.
const ADMIN: &str = "sk-test-page-admin-4444444444";
/// A second client token, named `bob-the-client`.
const BOB: &str = "sk-test-page-bob-3333333333";
/// A third upstream key, which upstream refuses (401).
const KEY_C: &str = "kc-5555555555-secret-CCCC";
/// What upstream says when it refuses KEY_C: error text, never to be shown publicly.
const REFUSAL: &str = "unauthorized: this key was revoked";

/// `alice`, `bob-the-client` and `ops-admin` (scopes `admin` and `inference`), then `extra`.
fn config(extra: &str) -> String {
    format!(
        "{extra}\n{}{}{}scopes = [\"admin\", \"inference\"]\n",
        alice(),
        token_entry("bob-the-client", BOB, "default"),
        token_entry("ops-admin", ADMIN, "default")
    )
}

/// Three keys: `paid-1` and `paid-2` answer like Ollama, KEY_C (no name) is refused.
fn keys(url: &str) -> String {
    format!("{url}|{KEY_A} name=paid-1\n{url}|{KEY_B} name=paid-2\n{url}|{KEY_C}\n")
}

fn fake() -> Fake {
    Fake::start(|recorded| match key_of(recorded) {
        KEY_C => FakeReply::error(401, REFUSAL),
        _ => crate::fake::ollama(recorded),
    })
}

fn key_of(recorded: &Recorded) -> &str {
    recorded.authorization().unwrap_or_default().trim_start_matches("Bearer ")
}

/// How many chats the fake got with `key`.
fn chats_with(fake: &Fake, key: &str) -> usize {
    fake.requests().iter().filter(|r| r.path == "/api/chat" && key_of(r) == key).count()
}

/// A key's id: the first 24 hex digits of SHA-256 of `url\nkey`.
fn key_id(url: &str, key: &str) -> String {
    sha256_hex(&format!("{url}\n{key}"))[..24].to_string()
}

fn chat_as(gateway: &Gateway, token: &str, model: &str) -> JsonReply {
    gateway.post_json("/v1/chat/completions", Some(token), &chat_body(model, false))
}

/// Chats as alice until the refused key has been tried (round-robin reaches it within
/// three), so that it shows as invalid.
fn until_key_c_is_tried(gateway: &Gateway, fake: &Fake) {
    for _ in 0..3 {
        assert_eq!(chat_as(gateway, TOKEN, "llama3.2").status, 200);
    }
    assert_eq!(chats_with(fake, KEY_C), 1, "round-robin tried the refused key once, then set it aside");
}

/// Asserts no key or token is in `text`.
#[track_caller]
fn assert_no_secret(text: &str, what: &str) {
    for secret in [KEY_A, KEY_B, KEY_C, TOKEN, BOB, ADMIN] {
        assert!(!text.contains(secret), "{what} holds a secret:\n{text}");
    }
}

#[test]
fn the_status_page_is_served_without_a_token_under_a_strict_policy() {
    let fake = fake();
    let gateway = Gateway::start(&config(""), &keys(&fake.url));
    for path in ["/admin", "/admin/"] {
        let page = gateway.raw("GET", path, &[], b"");
        assert_eq!(page.status, 200, "{path}: {}", page.text);
        eqnice!(Some("text/html; charset=utf-8"), page.header("content-type"));
        assert!(page.text.len() < 40 * 1024, "{} bytes", page.text.len());
        assert!(page.text.starts_with("<!doctype html>") && page.text.contains("<script>"), "{path}");
        let csp = page.header("content-security-policy").expect("a Content-Security-Policy");
        for part in [
            "default-src 'none'",
            "connect-src 'self'",
            "script-src 'sha256-",
            "style-src 'sha256-",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{part} missing from {csp}");
        }
        assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
        eqnice!(Some("DENY"), page.header("x-frame-options"));
        eqnice!(Some("no-referrer"), page.header("referrer-policy"));
        eqnice!(Some("nosniff"), page.header("x-content-type-options"));
        assert_no_secret(&page.text, "the page");
    }
    // The page holds no data; what it shows comes from the admin API, which needs the scope.
    assert_eq!(gateway.raw("GET", "/admin/api/status", &[], b"").status, 401);
    assert_eq!(gateway.raw("POST", "/admin", &[], b"").status, 405);
    assert_eq!(fake.count(), 0);
}

#[test]
fn stats_is_no_route_unless_public() {
    let fake = fake();
    let gateway = Gateway::start(&config(""), &keys(&fake.url));
    for accept in ["application/json", "text/html"] {
        let reply = gateway.raw("GET", "/stats", &[("Accept", accept)], b"");
        assert_eq!(reply.status, 404, "{accept}: {}", reply.text);
        let reply = gateway.raw(
            "GET",
            "/stats",
            &[("Accept", accept), ("Authorization", &format!("Bearer {ADMIN}"))],
            b"",
        );
        assert_eq!(reply.status, 404, "not even for an admin: {}", reply.text);
    }
}

#[test]
fn public_stats_show_aggregates_and_never_a_key_a_label_a_token_name_or_an_error() {
    let fake = fake();
    let url = fake.url.clone();
    let gateway = Gateway::start(&config("[status]\npublic = true\n"), &keys(&url));
    until_key_c_is_tried(&gateway, &fake);
    assert_eq!(chat_as(&gateway, BOB, "llama3.2").status, 200);
    // A model name a client chose, with markup in it: the upstream lacks it, so it is
    // counted as "(other)" and its text is nowhere.
    let sly = "<img src=x onerror=alert(1)>";
    assert_eq!(chat_as(&gateway, BOB, sly).status, 404);
    let mut stats = Value::Null;
    wait_until(PATIENCE, "/stats counts all five requests", || {
        let reply = gateway.raw("GET", "/stats", &[("Accept", "application/json")], b"");
        assert_eq!(reply.status, 200, "{}", reply.text);
        stats = reply.body;
        stats["models"]
            .as_array()
            .is_some_and(|rows| rows.iter().filter_map(|r| r["requests"].as_u64()).sum::<u64>() == 5)
    });
    let today = stats["models"][0]["date"].as_str().unwrap_or_default().to_string();
    assert_eq!(today.len(), 10, "{stats}");
    eqjson!(
        json!({
            "generated_at": stats["generated_at"],
            "days": 7,
            "pools": [{"name": "default", "keys": 3, "usable": 2}],
            "models": [
                {"date": today, "model": "(other)", "requests": 1, "prompt_tokens": 0, "completion_tokens": 0},
                // alice's three and bob's one, summed: no token's share is shown.
                {"date": today, "model": "llama3.2", "requests": 4, "prompt_tokens": 12, "completion_tokens": 20},
            ],
        }),
        stats
    );
    let json_text = gateway.raw("GET", "/stats", &[("Accept", "application/json")], b"").text;
    let html = gateway.raw("GET", "/stats", &[("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")], b"");
    assert_eq!(html.status, 200, "{}", html.text);
    eqnice!(Some("text/html; charset=utf-8"), html.header("content-type"));
    let csp = html.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'; script-src 'none'; style-src 'sha256-"), "{csp}");
    eqnice!(Some("DENY"), html.header("x-frame-options"));
    eqnice!(Some("no-referrer"), html.header("referrer-policy"));
    eqnice!(Some("Accept"), html.header("vary"));
    assert!(html.text.len() < 40 * 1024);
    assert!(html.text.contains("(other)") && !html.text.contains("onerror"), "{}", html.text);
    assert!(html.text.contains("llama3.2") && html.text.contains(">default<"), "{}", html.text);
    // Nothing that names a key, a token or an error, in either form.
    let masked_c = format!("{}…{}", &KEY_C[..4], &KEY_C[KEY_C.len() - 4..]);
    let ids = [KEY_A, KEY_B, KEY_C].map(|key| key_id(&url, key));
    let mut forbidden =
        vec!["paid-1", "paid-2", masked_c.as_str(), "alice", "bob-the-client", "ops-admin", REFUSAL];
    forbidden.extend(["unauthorized", "upstream answered", "revoked"]);
    forbidden.extend(ids.iter().map(String::as_str));
    for (what, body) in [("the JSON", json_text.as_str()), ("the HTML", html.text.as_str())] {
        assert_no_secret(body, what);
        for word in &forbidden {
            assert!(!body.contains(word), "{what} holds {word:?}:\n{body}");
        }
    }
    // Open without a token, and answered the same to one.
    assert_eq!(gateway.raw("GET", "/stats", &[("Authorization", "Bearer wrong")], b"").status, 200);
}

/// Where cargo builds: `CARGO_TARGET_DIR` when set, else the folder above the binary's
/// profile folder (`target/debug/ollama-gateway` → `target`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(BIN)
            .parent()
            .and_then(|p| p.parent())
            .map_or_else(|| "target".into(), PathBuf::from),
    }
}

/// A key's row as the page draws it.
#[derive(Debug)]
struct Row {
    id: String,
    state: String,
    label: String,
    /// The requests its last-hour chart counts.
    charted: u64,
    /// What its button does: `disable` or `enable`.
    action: String,
}

/// The key rows of the page now, read in one go (the page redraws every few seconds,
/// which would leave element references stale between reads).
fn rows(browser: &Browser) -> Option<Vec<Row>> {
    let read = browser.script(
        "return [...document.querySelectorAll('tr[data-key-id]')].map(row => [row.dataset.keyId, \
         row.dataset.state, row.querySelector('.label').textContent, \
         Number(row.querySelector('svg.chart').dataset.requests), \
         row.querySelector('button[data-action]').dataset.action]);",
    );
    let rows = read.ok()?;
    rows.as_array()?
        .iter()
        .map(|row| {
            let text = |i: usize| row[i].as_str().map(str::to_string);
            Some(Row {
                id: text(0)?,
                state: text(1)?,
                label: text(2)?,
                charted: row[3].as_u64()?,
                action: text(4)?,
            })
        })
        .collect()
}

/// Every wait in the browser test: the page polls every 5 s, so a redraw comes within it.
const BROWSER_WAIT: Duration = Duration::from_secs(12);

#[test]
fn the_status_page_in_a_browser_shows_each_key_and_disables_one_with_its_button() {
    let started = Instant::now();
    let Some(browser) =
        Browser::start("page::the_status_page_in_a_browser_shows_each_key_and_disables_one_with_its_button")
    else {
        return;
    };
    let fake = fake();
    let url = fake.url.clone();
    let gateway = Gateway::start(&config(""), &keys(&url));
    until_key_c_is_tried(&gateway, &fake);
    browser.goto(&gateway.url("/admin"));
    // The login form, since this tab has no token yet.
    let input = browser.wait(BROWSER_WAIT, "the token field shows", |b| {
        b.find("#token").filter(|field| b.displayed(field).unwrap_or(false))
    });
    browser.type_into(&input, ADMIN).expect("type the token");
    let open = browser.find("#open").expect("the Open button");
    browser.click(&open).expect("click Open");

    // One row per line of keys.txt, in order, with its state.
    let [id_a, id_b, id_c] = [KEY_A, KEY_B, KEY_C].map(|key| key_id(&url, key));
    let masked_c = format!("{}…{}", &KEY_C[..4], &KEY_C[KEY_C.len() - 4..]);
    let seen = browser.wait(BROWSER_WAIT, "three key rows are drawn", |b| rows(b).filter(|r| r.len() == 3));
    let states: Vec<(&str, &str, &str, &str)> = seen
        .iter()
        .map(|row| (row.id.as_str(), row.state.as_str(), row.label.as_str(), row.action.as_str()))
        .collect();
    eqnice!(
        vec![
            (id_a.as_str(), "healthy", "paid-1", "disable"),
            (id_b.as_str(), "healthy", "paid-2", "disable"),
            (id_c.as_str(), "invalid", masked_c.as_str(), "disable"),
        ],
        states
    );
    // Each row's chart counts its key's attempts of the last hour, as the fake saw them.
    let charted: Vec<u64> = seen.iter().map(|row| row.charted).collect();
    let counted: Vec<u64> = [KEY_A, KEY_B, KEY_C].iter().map(|key| chats_with(&fake, key) as u64).collect();
    eqnice!(counted, charted);
    // Today's use of each token.
    // (A request is counted as its log line is written, just after its answer: a first
    // drawing may miss the last one, the next one has it.)
    let words = |text: String| text.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let want = ["alice", "3", "0", "9", "15", "llama3.2", "(3)"].map(str::to_string).to_vec();
    browser.wait(BROWSER_WAIT, "alice's row reads 3 requests, 0 errors, 9 + 15 tokens", |b| {
        let row = b.find("#usage tr[data-token=\"alice\"]")?;
        b.text(&row).ok().map(words).filter(|seen| *seen == want)
    });

    // Disable paid-1 with its button: its row turns disabled, and chats avoid it.
    // Found and clicked in one step, again if a redraw replaced the row in between.
    let disable = format!("tr[data-key-id=\"{id_a}\"] button[data-action=\"disable\"]");
    browser.wait(BROWSER_WAIT, "paid-1's Disable button is clicked", |b| {
        b.find(&disable).and_then(|button| b.click(&button).ok())
    });
    browser.wait(BROWSER_WAIT, "paid-1's row shows disabled", |b| {
        rows(b).filter(|r| r.first().is_some_and(|a| a.state == "disabled" && a.action == "enable"))
    });
    let message = browser.find("#message").and_then(|m| browser.text(&m).ok()).unwrap_or_default();
    eqnice!("Key paid-1 disabled.", message);
    let before = [KEY_A, KEY_B, KEY_C].map(|key| chats_with(&fake, key));
    for _ in 0..4 {
        assert_eq!(chat_as(&gateway, TOKEN, "llama3.2").status, 200);
    }
    let after = [KEY_A, KEY_B, KEY_C].map(|key| chats_with(&fake, key));
    eqnice!(
        [before[0], before[1] + 4, before[2]],
        after,
        "only paid-2 serves: paid-1 is disabled, the third invalid"
    );
    // The next redraw charts them on paid-2's row.
    let total_b = after[1] as u64;
    let redrawn = browser.wait(BROWSER_WAIT, "paid-2's chart counts the new chats", |b| {
        rows(b).filter(|r| r.get(1).is_some_and(|row| row.charted == total_b))
    });
    assert_eq!(redrawn[0].state, "disabled");

    // What a person would see: saved before the reload below puts an error on the page.
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "{} bytes", png.len());
    let path = target_dir().join("status-page.png");
    std::fs::write(&path, &png).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    eprintln!("the status page as the browser drew it: {}", path.display());

    // A reload that meets a broken config.toml shows where it broke.
    let config_path = gateway.dir().path().join("config.toml");
    let good = std::fs::read_to_string(&config_path).expect("config.toml");
    gateway.dir().rewrite("config.toml", &good.replacen('\n', "\nworkers = \"many\"\n", 1));
    let reload = browser.find("#reload").expect("the Reload button");
    browser.click(&reload).expect("click Reload");
    let shown = browser.wait(BROWSER_WAIT, "the reload error shows", |b| {
        b.find("#message .error").and_then(|m| b.text(&m).ok()).filter(|text| text.contains("Reload failed"))
    });
    let where_ = format!("{}:2 (workers)", config_path.display());
    assert!(shown.contains(&where_) && shown.contains("previous config keeps serving"), "{shown}");
    // The place is said once, and then what is wrong there.
    assert!(shown.lines().nth(1).is_some_and(|line| line.starts_with("workers: invalid type")), "{shown}");
    drop(browser);

    let logs = gateway.logs();
    assert_no_secret(&logs, "the log");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}
