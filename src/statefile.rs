//! The state file: what the gateway knows about its keys, and what its tokens used, kept
//! across restarts.
//!
//! In scope: the file's format (JSON `{"version": 1, "saved_at": <unix secs>, "keys": {<id>:
//! KeyState}, "usage": [Row, …]}`, pretty-printed, ids sorted, one usage row per line),
//! reading it back without ever refusing to start ([`Loaded::Corrupt`] says why and the
//! caller starts fresh), and writing it atomically: a temp file in the same folder,
//! `fsync`, mode 0600, `rename`, then `fsync` of the folder, so a crash at any point leaves
//! either the old file or the new one, never half of one. Files written before usage was
//! counted have no `"usage"`, and read as none; a usage row that does not read is dropped
//! rather than the key states with it. Out of scope: what the states and rows mean
//! (`keystate`, `usage`), when to save (the server and `check`), and which keys still
//! exist (the caller drops removed keys before saving).

use crate::keystate::KeyState;
use crate::usage::Row;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Key states by [`crate::keystate::key_id`] (a hash of URL and key, never the key).
pub type States = BTreeMap<String, KeyState>;

/// What a state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Saved {
    /// Key states by id.
    pub keys: States,
    /// Usage rows (none in a file from before usage was counted).
    pub usage: Vec<Row>,
}

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No state file yet: every key starts healthy.
    Fresh,
    /// What was saved last time.
    Read(Saved),
    /// The file exists but cannot be used; the text says why. Report it and start fresh.
    Corrupt(String),
}

/// Only the version, read first so that a future format is named as such rather than
/// reported as a parse error somewhere inside it.
#[derive(Deserialize)]
struct Header {
    version: Option<u64>,
}

/// The file as read.
#[derive(Deserialize)]
struct FileIn {
    keys: States,
    #[serde(default, deserialize_with = "readable_rows")]
    usage: Vec<Row>,
}

/// The usage rows that read; a row hand-edited into another shape is dropped alone.
fn readable_rows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Row>, D::Error> {
    let values = Option::<Vec<serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    Ok(values.into_iter().filter_map(|value| serde_json::from_value(value).ok()).collect())
}

/// Reads the state file at `path`. A missing file is [`Loaded::Fresh`]; an unreadable,
/// malformed or future-version file is [`Loaded::Corrupt`] with a message naming the path.
pub fn load(path: &Path) -> Loaded {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Loaded::Fresh,
        Err(err) => return Loaded::Corrupt(format!("cannot read state file {}: {err}", path.display())),
    };
    match decode(&bytes) {
        Ok(states) => Loaded::Read(states),
        Err(why) => {
            Loaded::Corrupt(format!("state file {}: {why}; starting with fresh key state", path.display()))
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Saved, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".to_string());
    }
    let header: Header = serde_json::from_slice(bytes).map_err(|err| format!("not valid JSON: {err}"))?;
    match header.version {
        Some(version) if version == u64::from(VERSION) => {}
        Some(version) => {
            return Err(format!(
                "format version {version} is not supported by this build (it reads version {VERSION}); \
                 upgrade the gateway or delete the file"
            ))
        }
        None => {
            return Err("no \"version\" field; this is not a state file written by the gateway".to_string())
        }
    }
    let file: FileIn = serde_json::from_slice(bytes).map_err(|err| format!("unexpected content: {err}"))?;
    Ok(Saved { keys: file.keys, usage: file.usage })
}

/// The file's text: pretty-printed, except that each usage row takes one line (90 days of
/// rows would otherwise take nine lines each, and the file is rewritten every few seconds
/// while requests come in).
fn encode(states: &States, usage: &[Row], saved_at: u64) -> io::Result<Vec<u8>> {
    let keys = serde_json::to_string_pretty(states).map_err(io::Error::other)?;
    // Pretty JSON has line breaks only between values (those in strings are escaped), so
    // indenting every line nests it one level deeper.
    let mut out = format!(
        "{{\n  \"version\": {VERSION},\n  \"saved_at\": {saved_at},\n  \"keys\": {},\n  \"usage\": [",
        keys.replace('\n', "\n  ")
    );
    for (i, row) in usage.iter().enumerate() {
        out.push_str(if i == 0 { "\n    " } else { ",\n    " });
        out.push_str(&serde_json::to_string(row).map_err(io::Error::other)?);
    }
    out.push_str(if usage.is_empty() { "]\n}\n" } else { "\n  ]\n}\n" });
    Ok(out.into_bytes())
}

/// Writes `states` and `usage` to `path` atomically with mode 0600: readers see the old
/// file or the new one, and a failure leaves the old file as it was and no temp file behind.
pub fn save(path: &Path, states: &States, usage: &[Row]) -> io::Result<()> {
    let saved_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let bytes = encode(states, usage, saved_at)?;
    write_atomic(path, |file| file.write_all(&bytes))
}

/// Creates a unique temp file next to `path`, lets `write` fill it, and renames it over
/// `path`. Any error removes the temp file; `path` is touched only by the final rename.
fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let temp = temp_path(path);
    let result = write_temp(&temp, write)
        .and_then(|()| fs::rename(&temp, path).map_err(|err| context(err, "cannot replace", path)));
    if let Err(err) = result {
        // The temp file may not exist (creating it failed); the original error is what counts.
        let _ = fs::remove_file(&temp);
        return Err(err);
    }
    sync_dir(path);
    Ok(())
}

fn write_temp(temp: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(temp).map_err(|err| context(err, "cannot create", temp))?;
    write(&mut file).map_err(|err| context(err, "cannot write", temp))?;
    // The umask can only narrow the mode given at creation; make it exactly 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|err| context(err, "cannot set the mode of", temp))?;
    }
    file.sync_all().map_err(|err| context(err, "cannot sync", temp))
}

/// `.NAME.tmp-PID-N` in the target's folder: the same file system, so the rename is atomic,
/// and unique per process and call, so concurrent saves never share a temp file.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map_or_else(|| "state.json".into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Makes the rename itself durable. Some platforms cannot open or sync a folder; the file
/// is already complete by then, so a failure here is not worth failing the save for.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

fn context(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystate::{Failure, Health, Policy};

    /// A fresh folder under the system temp folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("ollama-gateway-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("list temp dir")
                .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> States {
        let mut exhausted = KeyState::default();
        exhausted.record_attempt(1_700_000_000);
        let failure = Failure::Exhausted { until: 1_700_018_000 };
        exhausted.record_failure(
            &failure,
            Some("m"),
            "session usage limit",
            1_700_000_000,
            &Policy::default(),
        );
        let mut healthy = KeyState::default();
        healthy.record_attempt(1_700_000_100);
        healthy.record_success(1_700_000_100);
        healthy.record_usage(12, 34);
        healthy.model_cooldowns.insert("big-model".into(), 1_700_003_600);
        healthy.usage_permille = Some(910);
        States::from([("b0b0".to_string(), exhausted), ("a1a1".to_string(), healthy)])
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new("state-round-trip");
        let path = dir.0.join("state.json");
        let states = sample();
        let usage = rows();
        save(&path, &states, &usage).expect("save");
        assert_eq!(load(&path), Loaded::Read(Saved { keys: states.clone(), usage: usage.clone() }));
        assert_eq!(dir.entries(), ["state.json"], "no temp file left behind");
        let text = fs::read_to_string(&path).expect("read back");
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["version"], 1);
        assert!(value["saved_at"].as_u64().is_some_and(|t| t > 1_700_000_000), "{text}");
        assert_eq!(value["keys"]["b0b0"]["state"], "exhausted");
        assert_eq!(value["keys"]["a1a1"]["usage_permille"], 910);
        assert!(text.find("\"a1a1\"") < text.find("\"b0b0\""), "ids sorted:\n{text}");
        assert!(text.contains("\n  \"keys\": {\n"), "pretty-printed:\n{text}");
        assert!(text.contains(&format!("\n    {},\n", serde_json::to_string(&usage[0]).unwrap())), "{text}");
        assert_eq!(value["usage"][1]["model"], "gpt-oss:20b");
        // Saving again replaces the file.
        save(&path, &States::new(), &[]).expect("save again");
        assert_eq!(load(&path), Loaded::Read(Saved::default()));
        let text = fs::read_to_string(&path).expect("read back");
        assert!(text.ends_with("\"keys\": {},\n  \"usage\": []\n}\n"), "{text}");
    }

    #[test]
    fn a_missing_file_is_fresh() {
        let dir = TempDir::new("state-missing");
        assert_eq!(load(&dir.0.join("nothing-here.json")), Loaded::Fresh);
    }

    #[test]
    fn unusable_files_are_corrupt_and_say_why() {
        let dir = TempDir::new("state-corrupt");
        let path = dir.0.join("state.json");
        let cases = [
            ("", "empty"),
            ("\n  \n", "empty"),
            ("{\"version\": 1, \"keys\": {", "not valid JSON"),
            ("\u{0}\u{1}garbage", "not valid JSON"),
            ("[1, 2]", "not valid JSON"),
            ("{\"keys\": {}}", "no \"version\" field"),
            ("{\"version\": 2, \"keys\": {}}", "format version 2 is not supported"),
            ("{\"version\": 1}", "unexpected content"),
            ("{\"version\": 1, \"keys\": {\"x\": {\"state\": \"sleepy\"}}}", "unexpected content"),
        ];
        for (text, expected) in cases {
            fs::write(&path, text).expect("write test file");
            match load(&path) {
                Loaded::Corrupt(why) => {
                    assert!(why.contains(expected), "{text:?}: {why}");
                    assert!(why.contains(&path.display().to_string()), "names the file: {why}");
                }
                other => panic!("{text:?} loaded as {other:?}"),
            }
        }
        // A folder where the file should be cannot be read either.
        assert!(matches!(load(&dir.0), Loaded::Corrupt(why) if why.contains("cannot read")));
    }

    #[test]
    fn unknown_fields_and_missing_counters_are_tolerated() {
        let dir = TempDir::new("state-lenient");
        let path = dir.0.join("state.json");
        let text =
            "{\"version\": 1, \"extra\": true, \"keys\": {\"x\": {\"state\": \"invalid\", \"new\": 1}}}";
        fs::write(&path, text).expect("write test file");
        let Loaded::Read(Saved { keys: states, usage }) = load(&path) else { panic!("not read") };
        assert_eq!(states["x"].state, Health::Invalid);
        assert!(usage.is_empty());
        assert_eq!(states["x"].requests, 0);
    }

    #[test]
    fn a_file_from_before_usage_fractions_loads_without_them() {
        let dir = TempDir::new("state-before-usage");
        let path = dir.0.join("state.json");
        // As 0.1.0 wrote it, every field but `usage_permille`.
        let text = r#"{"version": 1, "saved_at": 1700000000, "keys": {"x": {"state": "exhausted",
            "until": 1700018000, "last_error": "429", "consecutive_failures": 0, "backoff_level": 0,
            "model_cooldowns": {}, "requests": 3, "successes": 2, "failures": 1, "prompt_tokens": 5,
            "completion_tokens": 7, "last_used": 1700000000, "changed_at": 1700000000}}}"#;
        fs::write(&path, text).expect("write test file");
        let Loaded::Read(Saved { keys: states, usage }) = load(&path) else { panic!("not read") };
        assert_eq!((states["x"].state, states["x"].requests), (Health::Exhausted, 3));
        assert_eq!(states["x"].usage_permille, None);
        assert!(!states["x"].disabled, "no key was disabled before keys could be");
        assert!(usage.is_empty(), "no usage section: none counted");
    }

    fn rows() -> Vec<Row> {
        let row = |date: &str, model: &str| Row {
            date: date.into(),
            token: "alice".into(),
            model: model.into(),
            requests: 3,
            errors: 1,
            prompt_tokens: 30,
            completion_tokens: 12,
        };
        vec![row("2023-11-14", "m"), row("2023-11-13", "gpt-oss:20b")]
    }

    #[test]
    fn usage_rows_and_disabled_keys_are_kept_and_a_bad_row_costs_only_itself() {
        let dir = TempDir::new("state-usage");
        let path = dir.0.join("state.json");
        let text = r#"{"version": 1, "saved_at": 1700000000,
            "keys": {"x": {"state": "healthy", "disabled": true}},
            "usage": [
              {"date": "2023-11-14", "token": "alice", "model": "m", "requests": 2, "errors": 0,
               "prompt_tokens": 5, "completion_tokens": 7, "later": "a field of a newer build"},
              {"date": "2023-11-14", "token": "bob"},
              "garbage"
            ]}"#;
        fs::write(&path, text).expect("write test file");
        let Loaded::Read(saved) = load(&path) else { panic!("not read") };
        assert!(saved.keys["x"].disabled);
        assert_eq!(saved.usage.len(), 1, "{:?}", saved.usage);
        assert_eq!((saved.usage[0].token.as_str(), saved.usage[0].completion_tokens), ("alice", 7));
        fs::write(&path, text.replace("\"usage\": [", "\"usage\": null, \"was\": [")).expect("write");
        assert!(matches!(load(&path), Loaded::Read(saved) if saved.usage.is_empty()));
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("state-mode");
        let path = dir.0.join("state.json");
        fs::write(&path, "old").expect("write test file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        save(&path, &sample(), &rows()).expect("save");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    #[test]
    fn a_write_failing_midway_leaves_the_old_file_and_no_temp_file() {
        let dir = TempDir::new("state-fail-midway");
        let path = dir.0.join("state.json");
        save(&path, &sample(), &rows()).expect("save");
        let before = fs::read(&path).expect("read");
        let new = encode(&States::new(), &[], 1).expect("encode");
        let err = write_atomic(&path, |file| {
            file.write_all(&new[..new.len() / 2])?;
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full (simulated)"))
        })
        .expect_err("the write fails");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("cannot write") && err.to_string().contains("simulated"), "{err}");
        assert_eq!(fs::read(&path).expect("read"), before, "old file byte-identical");
        assert_eq!(dir.entries(), ["state.json"], "temp file removed");
    }

    #[test]
    fn a_failed_rename_leaves_no_temp_file() {
        let dir = TempDir::new("state-fail-rename");
        // A non-empty folder where the file should go: the rename over it fails.
        let path = dir.0.join("state.json");
        fs::create_dir(&path).expect("mkdir");
        fs::write(path.join("keep"), "x").expect("write");
        let err = save(&path, &sample(), &rows()).expect_err("cannot rename over a folder");
        assert!(err.to_string().contains("cannot replace"), "{err}");
        assert_eq!(dir.entries(), ["state.json"]);
        assert_eq!(fs::read(path.join("keep")).expect("read"), b"x");
    }

    #[test]
    fn saving_into_a_missing_folder_fails_cleanly() {
        let dir = TempDir::new("state-no-dir");
        let path = dir.0.join("missing").join("state.json");
        let err = save(&path, &sample(), &rows()).expect_err("no folder");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("cannot create"), "{err}");
        assert!(dir.entries().is_empty());
    }

    #[test]
    fn temp_names_are_unique_and_hidden_next_to_the_target() {
        let path = Path::new("/var/lib/gw/state.json");
        let (a, b) = (temp_path(path), temp_path(path));
        assert_ne!(a, b);
        assert_eq!(a.parent(), path.parent());
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(name.starts_with(&format!(".state.json.tmp-{}-", std::process::id())), "{name}");
    }
}
