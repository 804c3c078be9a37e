//! `ollama-gateway keys import`: adding a list of keys to keys.txt, checked first.
//!
//! In scope: reading the list (any keys.txt form, options included, from a file or stdin)
//! with [`keys::parse`]; dropping the lines that repeat one before them or a key already in
//! the pool; with `--validate`, probing each new key as `[health]` says (8 at a time) and,
//! for Ollama Cloud keys, asking which of the configured models their plan includes;
//! and the table of what became of each line. Out of scope: the syntax (`keys`), where in
//! keys.txt the lines go and how it is replaced (`keyfile`), what a probe's answer means
//! (`health`, `keystate`), and the state file, which import leaves alone: a running
//! gateway learns a new key's state from its first answer, or from `ollama-gateway check`.
//!
//! Which keys are added: without `--validate`, every new key. With it, the keys that
//! answer, and the exhausted ones too: a spent quota comes back by itself at the end of
//! its window, and the gateway rests such a key until then. Keys refused as invalid,
//! unreachable upstreams and answers that prove nothing are reported and left out, and
//! make the exit code 1.
//!
//! A running gateway notices the new keys.txt by itself: its housekeeper compares the
//! file's modification time every 2 s, and the renamed file is a new file with a new
//! time; the reload then reads it twice, which a renamed file always passes.

use crate::api::access::rule::cloud_name;
use crate::config::{ConfigError, Files, ProbeKind, Provider, RawConfig};
use crate::health::{self, Outcome as Probed};
use crate::keyfile;
use crate::keys::{self, KeyEntry};
use crate::keystate::{self, classify, Failure, Policy};
use crate::upstream::{self, UpstreamError};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where the list of keys comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file.
    File(PathBuf),
    /// Standard input (`-`).
    Stdin,
}

/// What `keys import` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The config file, which names keys.txt.
    pub config: PathBuf,
    /// The list to read.
    pub source: Source,
    /// The keys.txt section to add the keys to.
    pub pool: String,
    /// Probe each new key first, and add only those that work or are exhausted.
    pub validate: bool,
}

/// What became of one line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Added; the note says what the probe found, if there was one.
    Added,
    /// Added although its quota is spent: it recovers by itself.
    Exhausted,
    /// Repeats an earlier line of the list.
    DuplicateInList(usize),
    /// Repeats a line of keys.txt in the same pool.
    DuplicateInFile(usize),
    /// Refused by the upstream (401): not added.
    Invalid,
    /// The upstream could not be reached or failed: not added.
    Unreachable,
    /// The answer proved nothing either way: not added.
    Unverified,
    /// Not a keys.txt line.
    BadLine,
}

impl Outcome {
    fn added(&self) -> bool {
        matches!(self, Outcome::Added | Outcome::Exhausted)
    }

    /// Whether this line makes the exit code 1.
    fn failed(&self) -> bool {
        matches!(self, Outcome::Invalid | Outcome::Unreachable | Outcome::Unverified | Outcome::BadLine)
    }

    fn words(&self, keys_name: &str) -> String {
        match self {
            Outcome::Added => "added".into(),
            Outcome::Exhausted => "exhausted, added".into(),
            Outcome::DuplicateInList(line) => format!("duplicate of line {line}"),
            Outcome::DuplicateInFile(line) => format!("duplicate of {keys_name} line {line}"),
            Outcome::Invalid => "invalid, not added".into(),
            Outcome::Unreachable => "unreachable, not added".into(),
            Outcome::Unverified => "unverified, not added".into(),
            Outcome::BadLine => "bad line".into(),
        }
    }
}

/// One row of the report: a line of the list.
#[derive(Debug)]
struct Row {
    line: usize,
    /// The masked label; `None` for a line that holds no readable key.
    label: Option<String>,
    outcome: Outcome,
    /// Why, in words without the key.
    note: String,
}

/// Runs `keys import`: the exit code, or why nothing could be done (exit 2).
pub fn run(request: &Request) -> Result<ExitCode, ConfigError> {
    let files = Files::read(&request.config);
    let (raw, _) = files.raw_config()?;
    let (keys_path, before) = existing_keys(&files)?;
    let in_file = keys::parse(&before[..], &raw.upstream.base_url);
    if let Some(first) = in_file.errors.first() {
        // Adding to a file the gateway cannot load would only hide why it does not.
        return Err(ConfigError {
            file: keys_path,
            line: Some(first.line),
            key: None,
            message: format!(
                "{}; fix keys.txt before importing into it (`ollama-gateway keys` shows every bad line)",
                first.message
            ),
        });
    }
    let (list_name, list) = read_list(&request.source)?;
    let (mut rows, candidates) = sort_out(&list, &in_file, &raw.upstream.base_url, &request.pool);
    let openai = raw.pools.get(&request.pool).is_some_and(|p| p.provider == Provider::Openai);
    let verdicts = match request.validate {
        // Their APIs have no probe in common (as for `check`).
        true if openai => {
            candidates.iter().map(|_| (Outcome::Added, "not probed: OpenAI-compatible pool".into())).collect()
        }
        true => validate(&raw, &request.pool, &candidates),
        false => candidates.iter().map(|_| (Outcome::Added, String::new())).collect(),
    };
    let list_lines: Vec<&[u8]> = list.split_inclusive(|&b| b == b'\n').collect();
    let mut added: Vec<(KeyEntry, String)> = Vec::new();
    for (entry, (mut outcome, mut note)) in candidates.into_iter().zip(verdicts) {
        if outcome.added() {
            let text = list_lines.get(entry.line - 1).and_then(|l| std::str::from_utf8(l).ok());
            // Only a line that parsed as an entry gets here, so it always has a form to write.
            match text.and_then(keys::import_form) {
                Some(text) => added.push((entry.clone(), text)),
                None => (outcome, note) = (Outcome::BadLine, "cannot be copied; add it by hand".into()),
            }
        }
        rows.push(Row { line: entry.line, label: Some(entry.label()), outcome, note });
    }
    rows.sort_by_key(|row| row.line);

    let summary = match added.is_empty() {
        true => format!("{}: nothing added; the file is unchanged\n", keys_path.display()),
        false => add_lines(&keys_path, &before, &raw, &in_file, &added, &request.pool)?,
    };
    let keys_name = keys_path.file_name().map_or("keys.txt".into(), |n| n.to_string_lossy().into_owned());
    let report = table(&rows, &list_name, &keys_name) + &summary;
    let _ = io::stdout().lock().write_all(report.as_bytes());
    Ok(match rows.iter().any(|row| row.outcome.failed()) {
        true => ExitCode::from(1),
        false => ExitCode::SUCCESS,
    })
}

/// Reads the list into rows for the lines that cannot be added (bad lines, section
/// headers, duplicates of earlier lines or of keys.txt's `pool`) and the entries that may
/// be, moved to `pool`.
fn sort_out(
    list: &[u8],
    in_file: &keys::ParsedKeys,
    default_base_url: &str,
    pool: &str,
) -> (Vec<Row>, Vec<KeyEntry>) {
    let mut rows = Vec::new();
    let (masked, headers) = blank_headers(list);
    for line in headers {
        let note = format!(
            "a [section] header; import puts every line under one pool (--pool, here '{pool}'): import \
             each section with its own --pool"
        );
        rows.push(Row { line, label: None, outcome: Outcome::BadLine, note });
    }
    let parsed = keys::parse(&masked[..], default_base_url);
    for error in &parsed.errors {
        let note = error.message.clone();
        rows.push(Row { line: error.line, label: None, outcome: Outcome::BadLine, note });
    }
    for duplicate in &parsed.duplicates {
        // The key and URL are the first line's; its name may not be this line's.
        let first = parsed.entries.iter().find(|e| e.line == duplicate.first_line);
        let label = first.map(|e| KeyEntry { options: Default::default(), ..e.clone() }.label());
        let outcome = Outcome::DuplicateInList(duplicate.first_line);
        rows.push(Row { line: duplicate.line, label, outcome, note: String::new() });
    }
    let id = |e: &KeyEntry| (e.base_url.clone(), e.key.as_ref().map(|k| k.expose().to_string()));
    let known: HashMap<_, usize> =
        in_file.entries.iter().filter(|e| e.pool == pool).map(|e| (id(e), e.line)).collect();
    let mut candidates = Vec::new();
    for mut entry in parsed.entries {
        entry.pool = pool.to_string();
        match known.get(&id(&entry)) {
            Some(&line) => {
                let (label, outcome) = (Some(entry.label()), Outcome::DuplicateInFile(line));
                rows.push(Row { line: entry.line, label, outcome, note: String::new() });
            }
            None => candidates.push(entry),
        }
    }
    (rows, candidates)
}

/// Writes `added` into the keys file at `path` (which held `before`) and says where.
fn add_lines(
    path: &Path,
    before: &[u8],
    raw: &RawConfig,
    in_file: &keys::ParsedKeys,
    added: &[(KeyEntry, String)],
    pool: &str,
) -> Result<String, ConfigError> {
    // keys::parse found no line that is not UTF-8, so the whole file is UTF-8.
    let text = std::str::from_utf8(before).map_err(|_| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: "not UTF-8 text: save the file as UTF-8".into(),
    })?;
    let lines: Vec<String> = added.iter().map(|(_, line)| line.clone()).collect();
    let placed = keyfile::place(text, pool, &lines);
    check_round_trip(&placed.text, raw, in_file, added, path)?;
    keyfile::replace(path, before, placed.text.as_bytes()).map_err(|message| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message,
    })?;
    let at = match lines.len() {
        1 => format!("line {}", placed.first_line),
        n => format!("lines {}-{}", placed.first_line, placed.first_line + n - 1),
    };
    Ok(format!(
        "{}: added {} {} to [{pool}] at {at}{}\n",
        path.display(),
        lines.len(),
        if lines.len() == 1 { "key" } else { "keys" },
        if placed.new_section { ", a new section" } else { "" }
    ))
}

/// The keys file's path and bytes; a keys file that does not exist yet is empty (import
/// creates it).
fn existing_keys(files: &Files) -> Result<(PathBuf, Vec<u8>), ConfigError> {
    match &files.keys {
        Some((path, Ok(bytes))) => Ok((path.clone(), bytes.clone())),
        Some((path, Err(_))) if !path.exists() => Ok((path.clone(), Vec::new())),
        Some((path, Err(why))) => {
            Err(ConfigError { file: path.clone(), line: None, key: None, message: why.clone() })
        }
        None => Err(ConfigError {
            file: files.path.clone(),
            line: None,
            key: None,
            message: "the keys file is unknown until the config parses".into(),
        }),
    }
}

/// Reads the whole list: its name for messages, and its bytes.
fn read_list(source: &Source) -> Result<(String, Vec<u8>), ConfigError> {
    let mut bytes = Vec::new();
    let (name, read) = match source {
        Source::Stdin => ("(stdin)".to_string(), io::stdin().lock().read_to_end(&mut bytes)),
        Source::File(path) => {
            let name = crate::keys::mask_if_key(&path.display().to_string());
            (name, fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)))
        }
    };
    read.map_err(|err| ConfigError {
        file: PathBuf::from(&name),
        line: None,
        key: None,
        message: format!("cannot read the list of keys to import: {err}"),
    })?;
    Ok((name, bytes))
}

/// The list with every `[section]` header line emptied (its line ending kept, so line
/// numbers stay), and the numbers of those lines. Every line of the list goes to one
/// pool; a header would otherwise move the lines below it to another.
fn blank_headers(list: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::with_capacity(list.len());
    let mut headers = Vec::new();
    for (i, line) in list.split_inclusive(|&b| b == b'\n').enumerate() {
        let text = if i == 0 { line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line) } else { line };
        if text.trim_ascii_start().starts_with(b"[") {
            headers.push(i + 1);
            out.extend_from_slice(if line.ends_with(b"\n") { b"\n" } else { b"" });
        } else {
            out.extend_from_slice(line);
        }
    }
    (out, headers)
}

// ---------------------------------------------------------------------------------------
// --validate
// ---------------------------------------------------------------------------------------

/// Whether a key's plan includes a model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Included,
    NotInPlan,
    /// The answer did not say (a 404, an error); the words say what it was.
    Unknown(String),
}

/// Probes every candidate (8 at a time) and reads each result into an outcome and a note.
fn validate(raw: &RawConfig, pool: &str, candidates: &[KeyEntry]) -> Vec<(Outcome, String)> {
    let agent = upstream::agent(
        Duration::from_secs(raw.upstream.connect_timeout_secs),
        Duration::from_secs(raw.upstream.idle_timeout_secs.min(60)),
        health::PARALLEL,
    );
    let policy = Policy {
        cooldown_secs: raw.upstream.cooldown_secs,
        failure_threshold: raw.upstream.failure_threshold,
    };
    let probe = raw.health.probe();
    let models = plan_models(raw, pool);
    let now = keystate::now();
    parallel(candidates, health::PARALLEL, |entry| {
        let result = health::probe(&agent, entry, &probe, now, &policy);
        let (outcome, mut note) = match &result.outcome {
            Probed::Good | Probed::Failed(Failure::Busy | Failure::ModelLocked) => {
                (Outcome::Added, result.note)
            }
            Probed::Failed(Failure::Exhausted { .. }) => (Outcome::Exhausted, result.note),
            Probed::Failed(Failure::Invalid) => (Outcome::Invalid, result.note),
            Probed::Failed(Failure::Trouble) => (Outcome::Unreachable, result.note),
            Probed::Failed(Failure::Transient { .. }) => {
                (Outcome::Unverified, format!("{}; the upstream is busy, import it again later", result.note))
            }
            Probed::Failed(Failure::Request | Failure::Refused) | Probed::Unknown => (
                Outcome::Unverified,
                format!("{}; this answer does not tell whether the key works", result.note),
            ),
        };
        // Only Ollama Cloud has plans; another upstream serves whatever it has pulled.
        if outcome == Outcome::Added && entry.key.is_some() && keys::is_ollama_cloud(&entry.base_url) {
            note.push_str("; ");
            note.push_str(&plan_note(&agent, entry, &models, probe.kind, now, &policy));
        }
        (outcome, note)
    })
}

/// `models: gpt-oss:20b ok, kimi-k2:1t not in plan`, for a key that works.
fn plan_note(
    agent: &ureq::Agent,
    entry: &KeyEntry,
    models: &[String],
    kind: ProbeKind,
    now: u64,
    policy: &Policy,
) -> String {
    let access: Vec<String> = models
        .iter()
        .map(|model| match model_access(agent, entry, model, kind, now, policy) {
            Access::Included => format!("{model} ok"),
            Access::NotInPlan => format!("{model} not in plan"),
            Access::Unknown(why) => format!("{model} {why}"),
        })
        .collect();
    format!("models: {}", access.join(", "))
}

/// The models a key of `pool` should serve: `[health] model`, then the names (not globs)
/// in the allowlists of the tokens that draw from the pool, as Ollama Cloud spells them.
fn plan_models(raw: &RawConfig, pool: &str) -> Vec<String> {
    let mut models = vec![cloud_name(&raw.health.model).into_owned()];
    for token in &raw.tokens {
        let pools = token.pools.clone().unwrap_or_else(|| vec![token.pool.clone()]);
        if !pools.iter().any(|p| p == pool) {
            continue;
        }
        for model in token.models.iter().flatten().filter(|m| !m.contains(['*', '?'])) {
            let model = cloud_name(model).into_owned();
            if !models.contains(&model) {
                models.push(model);
            }
        }
    }
    models
}

/// Asks whether `entry`'s plan includes `model`: `POST /api/show` (free), or one generated
/// token when `[health] probe = "generate"` (the operator chose proof over cost).
fn model_access(
    agent: &ureq::Agent,
    entry: &KeyEntry,
    model: &str,
    kind: ProbeKind,
    now: u64,
    policy: &Policy,
) -> Access {
    let (path, body) = match kind {
        ProbeKind::Generate => (
            "/api/generate",
            serde_json::json!({"model": model, "prompt": "hi", "stream": false, "options": {"num_predict": 1}}),
        ),
        ProbeKind::Usage | ProbeKind::Show => ("/api/show", serde_json::json!({ "model": model })),
    };
    let body = body.to_string();
    match upstream::send(agent, entry, "POST", path, Some((body.as_bytes(), "application/json")), None) {
        Ok(mut response) => {
            // Read (a little of) the answer so the connection can serve the next model.
            let _ = io::copy(&mut (&mut response.body).take(64 * 1024), &mut io::sink());
            Access::Included
        }
        Err(UpstreamError::Status { status, body, retry_after }) => {
            let message = upstream::upstream_message(&body);
            match classify(Some(status), &message, retry_after, now, policy.cooldown_secs) {
                Failure::ModelLocked => Access::NotInPlan,
                _ if status == 404 => Access::Unknown("not found".into()),
                _ => Access::Unknown(format!("unknown ({status})")),
            }
        }
        Err(_) => Access::Unknown("unknown (no answer)".into()),
    }
}

/// `work` over every item, at most `parallelism` at a time; results in item order.
fn parallel<T: Sync, R: Send>(items: &[T], parallelism: usize, work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parallelism.clamp(1, items.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break done };
                        done.push((i, work(item)));
                    }
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(done) => done.into_iter().for_each(|(i, result)| slots[i] = Some(result)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    // Every index was taken by exactly one worker, and a worker's panic was passed on.
    slots.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------
// Writing keys.txt
// ---------------------------------------------------------------------------------------

/// Reads the new keys.txt back before it is written: it must hold the old entries and
/// exactly the added ones, in the pool, with their options, and no error.
fn check_round_trip(
    text: &str,
    raw: &RawConfig,
    before: &keys::ParsedKeys,
    added: &[(KeyEntry, String)],
    path: &Path,
) -> Result<(), ConfigError> {
    let after = keys::parse_str(text, &raw.upstream.base_url);
    let same = |a: &KeyEntry, b: &KeyEntry| {
        (&a.pool, &a.base_url, &a.key, &a.options) == (&b.pool, &b.base_url, &b.key, &b.options)
    };
    let whole = after.errors.is_empty()
        && after.duplicates.len() == before.duplicates.len()
        && after.entries.len() == before.entries.len() + added.len()
        && before.entries.iter().all(|old| after.entries.iter().any(|e| same(e, old)))
        && added.iter().all(|(new, _)| after.entries.iter().any(|e| same(e, new)));
    match whole {
        true => Ok(()),
        false => Err(ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: "the file with the new lines would not read back as the old keys plus the new ones; \
                      nothing was written (please report this, with the list's line forms but not its keys)"
                .into(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

/// The table of every line of the list that held something, in line order.
fn table(rows: &[Row], list_name: &str, keys_name: &str) -> String {
    let label_width =
        rows.iter().filter_map(|r| r.label.as_ref()).map(|l| l.chars().count()).max().unwrap_or(3).max(3);
    let results: Vec<String> = rows.iter().map(|r| r.outcome.words(keys_name)).collect();
    let result_width = results.iter().map(String::len).max().unwrap_or(6).max(6);
    let mut out = format!("{list_name}: {} lines read, blank lines and comments aside\n", rows.len());
    out.push_str(&format!("{:<5} {:<label_width$}  {:<result_width$}  NOTE\n", "LINE", "KEY", "RESULT"));
    for (row, result) in rows.iter().zip(&results) {
        let label = row.label.as_deref().unwrap_or("-");
        let line = format!("{:<5} {label:<label_width$}  {result:<result_width$}  {}", row.line, row.note);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::sync::Arc;

    #[test]
    fn headers_in_the_list_are_blanked_and_numbered() {
        let (masked, headers) = blank_headers(b"\xef\xbb\xbf[a]\nK1\n  [b] # x\r\nK2\n[c]");
        assert_eq!(headers, [1, 3, 5]);
        assert_eq!(masked, b"\nK1\n\nK2\n");
    }

    #[test]
    fn the_models_asked_about_are_the_health_model_and_the_pools_literal_allowlists() {
        let raw = RawConfig::parse(
            r#"
            [health]
            model = "gpt-oss:20b-cloud"
            [[tokens]]
            name = "a"
            sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            pool = "cloud"
            models = ["gpt-oss:20b", "kimi-k2:1t-cloud", "qwen3*", "glm-4.?"]
            [[tokens]]
            name = "b"
            sha256 = "ca7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            pools = ["other", "cloud"]
            models = ["deepseek-v3.1:671b"]
            [[tokens]]
            name = "c"
            sha256 = "da7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            pool = "other"
            models = ["not-this-one"]
            "#,
            Path::new("config.toml"),
        )
        .expect("config parses");
        assert_eq!(plan_models(&raw, "cloud"), ["gpt-oss:20b", "kimi-k2:1t", "deepseek-v3.1:671b"]);
        assert_eq!(plan_models(&raw, "nobody"), ["gpt-oss:20b"]);
    }

    /// A fake Ollama Cloud answering `/api/show` and `/api/generate` by model, one
    /// request at a time (model checks of one key are made one after another).
    fn fake_plan() -> (String, Arc<tiny_http::Server>) {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake"));
        let url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
        let accept = Arc::clone(&server);
        std::thread::spawn(move || {
            for mut request in accept.incoming_requests() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                let model = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["model"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let (status, text) = match model.as_str() {
                    "gpt-oss:20b" => (200, "{}"),
                    "kimi-k2:1t" => {
                        (403, r#"{"error":"this model requires a subscription, upgrade for access"}"#)
                    }
                    "gone" => (404, r#"{"error":"model 'gone' not found"}"#),
                    _ => (500, r#"{"error":"internal"}"#),
                };
                let _ = request.respond(tiny_http::Response::from_string(text).with_status_code(status));
            }
        });
        (url, server)
    }

    #[test]
    fn a_403_subscription_answer_means_the_model_is_not_in_the_plan() {
        let (url, server) = fake_plan();
        let entry = KeyEntry {
            pool: "cloud".into(),
            base_url: url,
            key: Some(Secret::new("0123456789abcdef.TESTKEY")),
            line: 1,
            options: Default::default(),
        };
        let agent = upstream::agent(Duration::from_secs(2), Duration::from_secs(2), 1);
        let policy = Policy::default();
        for kind in [ProbeKind::Show, ProbeKind::Generate] {
            let access = |model| model_access(&agent, &entry, model, kind, 1_700_000_000, &policy);
            assert_eq!(access("gpt-oss:20b"), Access::Included, "{kind:?}");
            assert_eq!(access("kimi-k2:1t"), Access::NotInPlan, "{kind:?}");
            assert_eq!(access("gone"), Access::Unknown("not found".into()), "{kind:?}");
            assert_eq!(access("broken"), Access::Unknown("unknown (500)".into()), "{kind:?}");
        }
        let models = ["gpt-oss:20b".to_string(), "kimi-k2:1t".to_string(), "gone".to_string()];
        assert_eq!(
            plan_note(&agent, &entry, &models, ProbeKind::Usage, 1_700_000_000, &policy),
            "models: gpt-oss:20b ok, kimi-k2:1t not in plan, gone not found"
        );
        server.unblock();
    }

    #[test]
    fn parallel_keeps_the_order_of_the_items() {
        let items: Vec<u64> = (0..20).collect();
        let doubled = parallel(&items, 8, |&i| {
            std::thread::sleep(Duration::from_millis(20 - i));
            i * 2
        });
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(parallel(&[] as &[u64], 8, |&i| i).is_empty());
    }

    #[test]
    fn the_table_shows_labels_and_outcomes_never_keys() {
        let entry = KeyEntry {
            pool: "default".into(),
            base_url: "https://ollama.com".into(),
            key: Some(Secret::new("sk-0123456789abcdefSECRETPART")),
            line: 1,
            options: Default::default(),
        };
        let row =
            |line, outcome, note: &str| Row { line, label: Some(entry.label()), outcome, note: note.into() };
        let rows = [
            row(1, Outcome::Added, "200 via /api/usage; models: gpt-oss:20b ok"),
            row(2, Outcome::DuplicateInList(1), ""),
            row(3, Outcome::DuplicateInFile(7), ""),
            row(4, Outcome::Exhausted, "429 via /api/generate: weekly usage limit"),
            row(5, Outcome::Invalid, "401 via /api/usage: unauthorized"),
            Row {
                line: 6,
                label: None,
                outcome: Outcome::BadLine,
                note: "whitespace inside the entry".into(),
            },
        ];
        let shown = table(&rows, "list.txt", "keys.txt");
        let want = "\
list.txt: 6 lines read, blank lines and comments aside
LINE  KEY                             RESULT                        NOTE
1     sk-0…PART @ https://ollama.com  added                         200 via /api/usage; models: gpt-oss:20b ok
2     sk-0…PART @ https://ollama.com  duplicate of line 1
3     sk-0…PART @ https://ollama.com  duplicate of keys.txt line 7
4     sk-0…PART @ https://ollama.com  exhausted, added              429 via /api/generate: weekly usage limit
5     sk-0…PART @ https://ollama.com  invalid, not added            401 via /api/usage: unauthorized
6     -                               bad line                      whitespace inside the entry
";
        assert_eq!(shown, want);
        assert!(!shown.contains("SECRETPART") && !shown.contains("0123456789"));
    }
}
