//! Helpers shared by every test module: the real gateway binary as a child process, HTTP
//! clients for JSON replies and live SSE streams, strict mirror types of what the gateway
//! writes on the wire, and assertions that print both sides.
//!
//! This file runs the gateway and holds the assertion macros; `sse` reads streams off a raw
//! socket, `wire` decodes what the gateway writes for the chat API and `named` what it
//! writes for the Responses and Messages APIs, and `webdriver` drives a headless Chromium.
//! Nothing here knows about Ollama: the fake upstream lives in `fake`.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Asserts `expected == got`, printing both as blocks (and an optional context line).
macro_rules! eqnice {
    ($expected:expr, $got:expr $(,)?) => {
        eqnice!($expected, $got, "")
    };
    ($expected:expr, $got:expr, $($context:tt)+) => {{
        match (&$expected, &$got) {
            (expected, got) => {
                if expected != got {
                    panic!(
                        "\n\n===== expected =====\n{:#?}\n===== got =====\n{:#?}\n===== context =====\n{}\n",
                        expected,
                        got,
                        format!($($context)+)
                    );
                }
            }
        }
    }};
}

/// Asserts two JSON values are equal, printing both pretty when they are not.
macro_rules! eqjson {
    ($expected:expr, $got:expr $(,)?) => {
        eqjson!($expected, $got, "")
    };
    ($expected:expr, $got:expr, $($context:tt)+) => {{
        match (&$expected, &$got) {
            (expected, got) => {
                let (expected, got): (&serde_json::Value, &serde_json::Value) = (expected, got);
                if expected != got {
                    panic!(
                        "\n\n===== expected =====\n{}\n===== got =====\n{}\n===== context =====\n{}\n",
                        serde_json::to_string_pretty(expected).unwrap(),
                        serde_json::to_string_pretty(got).unwrap(),
                        format!($($context)+)
                    );
                }
            }
        }
    }};
}

pub mod named;
pub mod sse;
pub mod webdriver;
pub mod wire;

pub use sse::{Named, SseConn};
pub use wire::{assert_envelope, completion, decode_events, Event};

/// The client token most tests present (named `alice`, pool `default`).
pub const TOKEN: &str = "sk-test-alice-0123456789";
/// A first upstream key; its middle never appears in a mask.
pub const KEY_A: &str = "ka-0123456789-secret-AAAA";
/// A second upstream key.
pub const KEY_B: &str = "kb-9876543210-secret-BBBB";

/// How long a test waits for something that should take milliseconds: generous, since a
/// slow shared 2-core machine can stall a process for seconds, and only a failing test
/// waits it out.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The lowercase hex SHA-256 of `text`, as `config.toml` stores token digests.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A `[[tokens]]` block for `config.toml`.
pub fn token_entry(name: &str, token: &str, pool: &str) -> String {
    format!("\n[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\npool = \"{pool}\"\n", sha256_hex(token))
}

/// The `[[tokens]]` block of [`TOKEN`] (`alice`, pool `default`).
pub fn alice() -> String {
    token_entry("alice", TOKEN, "default")
}

/// Polls `check` every 10 ms until it holds, panicking with `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Temporary folders
// ---------------------------------------------------------------------------------------

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/ollama-gateway-it-<pid>-<n>`.
    pub fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ollama-gateway-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the folder and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    /// Replaces `name` atomically (a temp file renamed over it), as an editor saving it
    /// would, so a process watching it never reads half a file.
    pub fn rewrite(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let temp = self.0.join(format!(".{name}.edit"));
        std::fs::write(&temp, text).expect("write temp file");
        std::fs::rename(&temp, &path).expect("rename temp file");
        path
    }

    /// Writes the files a gateway serves from: `config.toml` (`listen` on port 0, then
    /// `config_extra`) and `keys.txt`; returns the config's path.
    pub fn write_config(&self, config_extra: &str, keys_txt: &str) -> PathBuf {
        self.write("keys.txt", keys_txt);
        self.write("config.toml", &format!("listen = \"127.0.0.1:0\"\n{config_extra}\n"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------

/// The gateway binary built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_ollama-gateway");

/// A command for the gateway binary with a clean, predictable environment.
fn gateway_command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "info").env_remove("OLLAMA_GATEWAY_CONFIG");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(var);
    }
    command
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the gateway binary with `args` in `dir` and waits for it.
pub fn run_cli(args: &[&str], dir: &Path) -> CliOutput {
    run_cli_logging(args, dir, "info")
}

/// [`run_cli`] with `RUST_LOG` set to `rust_log` instead of `info`.
pub fn run_cli_logging(args: &[&str], dir: &Path, rust_log: &str) -> CliOutput {
    let output = gateway_command(args)
        .env("RUST_LOG", rust_log)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running gateway: the real binary, serving on a free port, killed on drop.
pub struct Gateway {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    logs: Arc<Mutex<String>>,
    /// Cleared when the gateway's stderr closes, which is when the process has ended.
    stderr_open: Arc<AtomicBool>,
    agent: ureq::Agent,
    /// The folder it serves from; `None` only once [`Gateway::stop`] has handed it back.
    dir: Option<TempDir>,
}

/// What is left of a gateway stopped by [`Gateway::stop`].
pub struct Stopped {
    /// Its exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// Everything it wrote to stderr.
    pub logs: String,
    /// The folder it served from, for the next gateway to start on.
    pub dir: TempDir,
}

impl Gateway {
    /// Writes `config.toml` (`listen` on port 0, then `config_extra`) and `keys.txt` into a
    /// fresh folder, starts `serve --config` on them and waits until `/health` answers 200.
    pub fn start(config_extra: &str, keys_txt: &str) -> Gateway {
        Gateway::start_in(TempDir::new(), config_extra, keys_txt)
    }

    /// [`Gateway::start`] in a given folder (whatever else it holds, like a state file, stays).
    pub fn start_in(dir: TempDir, config_extra: &str, keys_txt: &str) -> Gateway {
        dir.write_config(config_extra, keys_txt);
        Gateway::resume(dir)
    }

    /// Starts `serve --config` on the `config.toml` already in `dir` (a stopped gateway's
    /// folder, say) and waits until `/health` answers 200.
    pub fn resume(dir: TempDir) -> Gateway {
        Gateway::resume_logging(dir, "info")
    }

    /// [`Gateway::resume`] with `RUST_LOG` set to `rust_log` instead of `info`.
    pub fn resume_logging(dir: TempDir, rust_log: &str) -> Gateway {
        let config = dir.path().join("config.toml");
        let mut child = gateway_command(&["serve", "--config", config.to_str().expect("utf-8 temp path")])
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway");

        let logs = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&logs);
        let stderr_open = Arc::new(AtomicBool::new(true));
        let open = Arc::clone(&stderr_open);
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => {
                        open.store(false, Ordering::SeqCst);
                        return;
                    }
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        sink.lock().unwrap().push_str(&line);
                        let _ = lines_tx.send(line);
                    }
                }
            }
        });

        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, rest)) = line.split_once("listening on http://") {
                        break rest.split_whitespace().next().unwrap_or_default().to_string();
                    }
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the gateway did not say where it listens (exit: {status:?}); stderr:\n{}",
                        logs.lock().unwrap()
                    );
                }
            }
        };
        let agent = test_agent();
        let gateway = Gateway { child, addr, logs, stderr_open, agent, dir: Some(dir) };
        wait_until(PATIENCE, "GET /health answers 200", || gateway.get("/health").status == 200);
        gateway
    }

    /// A gateway whose only token is [`TOKEN`] (`alice`, pool `default`).
    pub fn with_keys(keys_txt: &str) -> Gateway {
        Gateway::start(&alice(), keys_txt)
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The folder holding its `config.toml`, `keys.txt` and `state.json`.
    pub fn dir(&self) -> &TempDir {
        self.dir.as_ref().expect("a running gateway has its folder")
    }

    /// Where its key states are kept (the default `state_file`).
    pub fn state_path(&self) -> PathBuf {
        self.dir().path().join("state.json")
    }

    /// Sends a signal by name (`"HUP"`, `"TERM"`) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// SIGTERM, then waits (bounded) until the process has exited; hands back its folder.
    pub fn stop(mut self) -> Stopped {
        self.signal("TERM");
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway") {
                break status;
            }
            if Instant::now() > deadline {
                panic!("the gateway did not exit within {PATIENCE:?} of SIGTERM; logs:\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The reader thread sees stderr close right after the exit; take its last lines.
        wait_until(PATIENCE, "the gateway's stderr closes", || !self.running());
        Stopped { code: status.code(), logs: self.logs(), dir: self.dir.take().expect("the folder") }
    }

    /// Whether the process still runs (its stderr is still open).
    pub fn running(&self) -> bool {
        self.stderr_open.load(Ordering::SeqCst)
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `needles`, and returns that line.
    #[track_caller]
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!("no log line contains all of {needles:?}; logs:\n{logs}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> JsonReply {
        JsonReply::from(self.agent.get(self.url(path)).call())
    }

    /// `POST path` with a JSON body and, when given, `Authorization: Bearer <token>`.
    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> JsonReply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.post_raw(path, &headers, body.to_string().as_bytes())
    }

    /// `POST /v1/chat/completions` as [`TOKEN`].
    pub fn chat(&self, body: &Value) -> JsonReply {
        self.post_json("/v1/chat/completions", Some(TOKEN), body)
    }

    /// `POST path` with exactly these headers (plus `content-type: application/json`).
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> JsonReply {
        let mut request = self.agent.post(self.url(path)).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        JsonReply::from(request.send(body))
    }

    /// `method path` over a fresh socket, the path sent exactly as written (`//v1/models`
    /// stays so), with these headers and body, and `Connection: close`; the whole reply.
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> JsonReply {
        let mut all = headers.to_vec();
        all.push(("Connection", "close"));
        SseConn::request(&self.addr, method, path, &all, body).into_reply()
    }

    /// Opens a streaming `POST /v1/chat/completions` as [`TOKEN`] over a raw socket.
    pub fn open_stream(&self, body: &Value) -> SseConn {
        SseConn::open(&self.addr, "/v1/chat/completions", Some(TOKEN), body)
    }

    /// A whole stream as [`TOKEN`]: asserts 200 and SSE, returns every `data:` payload with
    /// the instant it arrived.
    pub fn stream(&self, path: &str, token: Option<&str>, body: &Value) -> Vec<(Instant, String)> {
        let mut conn = SseConn::open(&self.addr, path, token, body);
        if conn.status != 200 {
            let status = conn.status;
            panic!("stream status {status}; body: {}", conn.read_body());
        }
        assert_eq!(conn.header("content-type"), Some("text/event-stream"));
        conn.events()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent for test requests: statuses are answers, not errors; no proxy; no hangs.
pub fn test_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A whole (non-streamed) reply.
#[derive(Debug)]
pub struct JsonReply {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl JsonReply {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn from(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> JsonReply {
        let mut response = result.unwrap_or_else(|err| panic!("request to the gateway failed: {err}"));
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let text = response.body_mut().read_to_string().unwrap_or_else(|err| panic!("reading reply: {err}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        JsonReply { status, headers, text, body }
    }
}

/// A minimal chat request body.
pub fn chat_body(model: &str, stream: bool) -> Value {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
}
