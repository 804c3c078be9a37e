//! Memory per request: what one large body costs the gateway process, hostile or not.
//!
//! Each body goes to a fresh gateway (a process that already served a big body keeps freed
//! heap that hides the next one's growth), and the growth of its peak resident set
//! (`VmHWM` in `/proc/<pid>/status`) over the baseline after start-up must stay within
//! 4 × N + 16 MB for a body of N bytes. Hostile bodies (values of a few bytes each, deep
//! nesting) must be refused with 413 `request_too_complex` before any upstream call;
//! legitimate large ones (a long string) must reach the upstream. There are no timing
//! assertions: the machine may be slow and shared.

use crate::fake::{ollama, Fake};
use crate::util::*;
use std::time::Duration;

/// A body size close to the default `max_body_bytes` (32 MiB).
const N: usize = 24 << 20;

/// What one body cost a fresh gateway.
pub struct Measured {
    /// The gateway's answer.
    pub reply: JsonReply,
    /// The body's size.
    pub body_len: u64,
    /// Peak resident bytes over the baseline after start-up.
    pub growth: u64,
    /// Requests that reached the upstream.
    pub upstream_requests: usize,
}

impl Measured {
    /// Asserts the peak stayed within 4 × N + 16 MB.
    #[track_caller]
    pub fn assert_within_budget(&self, what: &str) {
        let budget = 4 * self.body_len + 16_000_000;
        assert!(
            self.growth <= budget,
            "{what}: a {} byte body raised the gateway's peak RSS by {} bytes, over 4 × N + 16 MB = {budget}",
            self.body_len,
            self.growth
        );
    }
}

/// A process's peak resident set (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM in kB");
    kib * 1024
}

/// Starts a gateway over a fake Ollama, sends `body` to `path` as [`TOKEN`], and measures
/// how far the gateway's peak RSS rose.
pub fn measure(path: &str, body: &[u8]) -> Measured {
    let fake = Fake::start(ollama);
    let gateway = Gateway::start(&alice(), &format!("{}|{KEY_A}\n", fake.url));
    let before = peak_rss(gateway.pid());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let response = agent
        .post(gateway.url(path))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .send(body);
    let mut response = response.unwrap_or_else(|err| panic!("POST {path} failed: {err}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().expect("read the reply");
    let growth = peak_rss(gateway.pid()).saturating_sub(before);
    eprintln!("memory: POST {path} with {} bytes: {status}, peak RSS +{} MB", body.len(), growth / 1_000_000);
    let reply = JsonReply { status, headers, body: serde_json::from_str(&text).unwrap_or_default(), text };
    Measured { reply, body_len: body.len() as u64, growth, upstream_requests: fake.count() }
}

/// `{"model":…,"<field>":<list>}` where the list repeats `item` until the body is about N.
fn body_with_list(model: &str, field: &str, item: &str) -> Vec<u8> {
    let head = format!(r#"{{"model":"{model}","{field}":["#);
    let mut body = Vec::with_capacity(N + item.len() + 64);
    body.extend_from_slice(head.as_bytes());
    while body.len() < N {
        body.extend_from_slice(item.as_bytes());
        body.push(b',');
    }
    body.extend_from_slice(item.as_bytes());
    body.extend_from_slice(b"]}");
    body
}

/// `{"model":…,"<field>":[[[…0…]]]}`, nested until the body is about N.
fn body_nested(model: &str, field: &str) -> Vec<u8> {
    let depth = N / 2;
    format!(r#"{{"model":"{model}","{field}":{}0{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
}

/// About N bytes of prose, newlines escaped as JSON writes them.
fn long_text() -> String {
    "The quick brown fox jumps over the lazy dog.\\n".repeat(N / 46)
}

/// The hostile bodies for a route whose list field is `field`.
fn hostile(model: &str, field: &str) -> [(&'static str, Vec<u8>); 3] {
    [
        ("an array of zeros", body_with_list(model, field, "0")),
        ("an array of {}", body_with_list(model, field, "{}")),
        ("deeply nested arrays", body_nested(model, field)),
    ]
}

/// Runs the hostile bodies and one legitimate body against `path`.
fn check_route(path: &str, hostile: [(&str, Vec<u8>); 3], legitimate: String) {
    for (what, body) in hostile {
        let what = format!("{path}, {what}");
        let measured = measure(path, &body);
        let error = assert_envelope(&measured.reply, 413);
        eqnice!("invalid_request_error", error.kind, "{what}: {}", error.message);
        eqnice!(Some("request_too_complex"), error.code.as_deref(), "{what}: {}", error.message);
        eqnice!(0, measured.upstream_requests, "{what}: nothing reaches the upstream");
        measured.assert_within_budget(&what);
    }
    let what = format!("{path}, a {} byte string", legitimate.len());
    let measured = measure(path, legitimate.as_bytes());
    eqnice!(200, measured.reply.status, "{what}: {}", measured.reply.text);
    eqnice!(1, measured.upstream_requests, "{what}: reaches the upstream");
    measured.assert_within_budget(&what);
}

#[test]
fn chat_completions_bodies_stay_within_4n_plus_16_mb() {
    let text = long_text();
    let legitimate = format!(r#"{{"model":"llama3.2","messages":[{{"role":"user","content":"{text}"}}]}}"#);
    check_route("/v1/chat/completions", hostile("llama3.2", "messages"), legitimate);
}

#[test]
fn completions_bodies_stay_within_4n_plus_16_mb() {
    let legitimate = format!(r#"{{"model":"llama3.2","prompt":"{}"}}"#, long_text());
    check_route("/v1/completions", hostile("llama3.2", "prompt"), legitimate);
}

#[test]
fn embeddings_bodies_stay_within_4n_plus_16_mb() {
    let legitimate = format!(r#"{{"model":"all-minilm","input":"{}"}}"#, long_text());
    check_route("/v1/embeddings", hostile("all-minilm", "input"), legitimate);
}

/// The densest legitimate embeddings request: 8,192 token ids in each of 16 inputs.
#[test]
fn embeddings_of_8192_token_ids_times_16_pass() {
    let inputs: Vec<Vec<u32>> =
        (0..16).map(|i| (0..8192).map(|t| (t * 7919 + i * 31) % 128_000).collect()).collect();
    let body = serde_json::json!({"model": "all-minilm", "input": inputs}).to_string();
    let measured = measure("/v1/embeddings", body.as_bytes());
    eqnice!(200, measured.reply.status, "{}", measured.reply.text);
    eqnice!(1, measured.upstream_requests);
}

/// glibc builds run `serve` with malloc tuned for many threads (src/main.rs): the process
/// replaces itself once with `GLIBC_TUNABLES` set, and then serves (a start that did not
/// see its own setting would replace itself again and again). glibc rewrites the
/// variable's original bytes, which `/proc` shows, after reading them; on glibc 2.36 only
/// the mmap threshold is left there, so that is what is checked (src/main.rs's unit test
/// covers the full value).
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn a_glibc_gateway_starts_once_more_with_its_malloc_tunables_and_serves() {
    let fake = Fake::start(ollama);
    let gateway = Gateway::start(&alice(), &format!("{}|{KEY_A}\n", fake.url));
    let environ =
        std::fs::read(format!("/proc/{}/environ", gateway.pid())).expect("read the gateway's environment");
    let tunables = environ
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(b"GLIBC_TUNABLES="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .unwrap_or_default();
    assert!(
        tunables.split(':').any(|tunable| tunable == "glibc.malloc.mmap_threshold=131072"),
        "GLIBC_TUNABLES={tunables:?}"
    );
    eqnice!(200, gateway.get("/health").status);
}
