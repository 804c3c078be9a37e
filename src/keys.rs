//! The keys file (`keys.txt`): which upstreams exist, grouped into named pools.
//!
//! This module owns the file's syntax: it turns text into [`KeyEntry`] values and reports
//! every bad line as a [`LineError`] and every repeated upstream as a [`Duplicate`], never
//! stopping at the first problem. It does not decide what to do about errors (the CLI and
//! `serve` do), does not talk to any upstream, and never puts a raw key into an error, a
//! label or `Debug` output: keys are held as [`Secret`] from the moment they are found.
//!
//! One upstream per line; `#` starts a comment (at the start of a line, or after
//! whitespace); `[name]` starts a pool, and lines before any header go to [`DEFAULT_POOL`].
//! Accepted forms: `KEY`, `URL`, `URL|KEY`, `KEY|URL`, `URL#KEY`, `KEY#URL`, `URL/KEY` (when
//! the last path segment looks like a key) and the account export
//! `EMAIL----PASSWORD----SESSION----KEY`. A bare key or an account export uses the default
//! base URL; a bare URL is a keyless upstream such as a self-hosted Ollama. Options follow
//! the entry after whitespace, as `NAME=VALUE` words ([`KeyOptions`]): `weight=2`,
//! `max_concurrent=3`, `name=paid-1`. An entry never holds whitespace, so the first word
//! of a line is always the entry and every later word an option.

use crate::secret::Secret;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead};
use std::path::Path;

/// The pool that lines before any `[name]` header belong to.
pub const DEFAULT_POOL: &str = "default";

/// Keys shorter than this are rejected as typos rather than sent upstream.
const MIN_KEY_LEN: usize = 8;

/// A last URL path segment at least this long (of key characters) is taken as a key.
const MIN_PATH_KEY_LEN: usize = 20;

/// The accepted forms, quoted in errors for lines that fit none of them.
const FORMS: &str = "accepted forms: KEY, URL, URL|KEY, KEY|URL, URL#KEY, KEY#URL, URL/KEY, \
                     EMAIL----PASSWORD----SESSION----KEY, or a [pool] header";

/// The options a line may carry after its entry, quoted in errors about options.
const OPTIONS: &str = "accepted options, each at most once, after the key and a space: weight=N (a whole \
                       number, 1 or more), max_concurrent=N (a whole number; 0 for no limit), \
                       name=LABEL (1 to 64 letters, digits, `-`, `_`, `.`, `:` or `@`)";

/// The longest `name=` label.
const MAX_NAME_LEN: usize = 64;

/// A `name=` label may not share a run this long with its key: it is printed in logs.
const NAME_KEY_OVERLAP: usize = MIN_KEY_LEN;

/// One upstream from the keys file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The pool the line belongs to (the last `[name]` above it, or [`DEFAULT_POOL`]).
    pub pool: String,
    /// The normalised base URL (see [`normalise_base_url`]).
    pub base_url: String,
    /// The bearer key, or `None` for a keyless upstream such as a local Ollama.
    pub key: Option<Secret>,
    /// The 1-based line number in the file.
    pub line: usize,
    /// The options written after the key on its line.
    pub options: KeyOptions,
}

/// Options written on a key's line after the key and a space (`weight=2 max_concurrent=3
/// name=free-1`); a line without any gets the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOptions {
    /// Share of the pool's traffic, relative to the other keys' weights (at least 1).
    pub weight: u32,
    /// Requests this key may have in flight at once, instead of the pool's setting
    /// (`Some(0)`: no limit).
    pub max_concurrent: Option<u32>,
    /// A label shown in logs, `check` and metrics instead of the masked key.
    pub name: Option<String>,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions { weight: 1, max_concurrent: None, name: None }
    }
}

impl KeyEntry {
    /// A masked description for logs and the CLI, like `abcd…wxyz @ https://ollama.com`
    /// or `(no key) @ http://127.0.0.1:11434`; the line's `name=` instead of the key when
    /// it has one, like `paid-1 @ https://ollama.com`.
    /// The URL is shown without a `user:password@` part, which is a credential too.
    pub fn label(&self) -> String {
        let who = self.name_or_mask().unwrap_or_else(|| "(no key)".to_string());
        format!("{who} @ {}", self.shown_url())
    }

    /// The line's `name=`, else the masked key; `None` for a keyless upstream.
    pub fn name_or_mask(&self) -> Option<String> {
        match (&self.options.name, &self.key) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(key)) => Some(key.mask()),
            (None, None) => None,
        }
    }

    /// The base URL without any `user:password@` in it.
    pub fn shown_url(&self) -> String {
        match self.base_url.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                format!("{scheme}://{}{path}", host_of(authority))
            }
            None => self.base_url.clone(),
        }
    }

    /// The host (and port) of the base URL, without scheme, path or user part.
    pub fn host(&self) -> &str {
        let rest = self.base_url.split_once("://").map_or(self.base_url.as_str(), |(_, rest)| rest);
        host_of(rest.split(['/', '?', '#']).next().unwrap_or(rest))
    }
}

/// An authority without its `user:password@`.
fn host_of(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// A line that could not be used, with what is wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The 1-based line number, counting blank and comment lines.
    pub line: usize,
    /// What is wrong and what form was expected; never contains a raw key.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// A line repeating an earlier (base URL, key) pair in the same pool; only the first is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The line that was dropped.
    pub line: usize,
    /// The earlier line that was kept.
    pub first_line: usize,
    /// The pool both lines belong to.
    pub pool: String,
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: same upstream and key as line {} in pool '{}'; ignored, delete one of them",
            self.line, self.first_line, self.pool
        )
    }
}

/// Everything read from a keys file: the usable entries and every problem found.
#[derive(Debug, Default)]
pub struct ParsedKeys {
    /// Usable upstreams in file order, duplicates removed.
    pub entries: Vec<KeyEntry>,
    /// Lines that could not be used, in file order.
    pub errors: Vec<LineError>,
    /// Lines dropped because an earlier line in the same pool had the same URL and key.
    pub duplicates: Vec<Duplicate>,
}

impl ParsedKeys {
    /// Pool names in first-seen order, only those with at least one entry.
    pub fn pools(&self) -> Vec<&str> {
        let mut pools: Vec<&str> = Vec::new();
        for entry in &self.entries {
            if !pools.contains(&entry.pool.as_str()) {
                pools.push(&entry.pool);
            }
        }
        pools
    }
}

/// Which form a line was written in; the tests use it to check the example file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Form {
    Key,
    Url,
    UrlPipeKey,
    KeyPipeUrl,
    UrlHashKey,
    KeyHashUrl,
    UrlSlashKey,
    AccountExport,
}

/// What one line holds once comments are stripped.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Blank,
    Header(String),
    Entry { base_url: String, key: Option<Secret>, form: Form, options: KeyOptions },
}

impl Line {
    /// An entry without options; [`parse_line`] reads them afterwards.
    fn entry(base_url: String, key: Option<Secret>, form: Form) -> Line {
        Line::Entry { base_url, key, form, options: KeyOptions::default() }
    }
}

/// Reads a keys file from `reader`, reporting every bad line instead of stopping at one.
///
/// Bare keys and account exports use `default_base_url`, normalised first. A line that is
/// not valid UTF-8 is a [`LineError`]; a read error ends the file with one more error.
pub fn parse(mut reader: impl BufRead, default_base_url: &str) -> ParsedKeys {
    let default = normalise_base_url(default_base_url).ok_or_else(|| {
        format!(
            "a bare key or account export uses the default base URL, but `{}` is not an \
             http:// or https:// URL; fix the default base URL or write this line as URL|KEY",
            default_base_url.trim()
        )
    });
    let mut parsed = ParsedKeys::default();
    let mut pool = Some(DEFAULT_POOL.to_string());
    let mut seen: HashMap<(String, String, Option<Secret>), usize> = HashMap::new();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let message = format!("could not read the rest of the file: {e}");
                parsed.errors.push(LineError { line: number + 1, message });
                break;
            }
        }
        number += 1;
        let text = match std::str::from_utf8(&buf) {
            Ok(text) => text,
            Err(err) => {
                // The column, not the byte: the byte may be part of a key.
                let column = err.valid_up_to() + 1;
                let message = format!("not UTF-8 text (at column {column}): save the file as UTF-8");
                parsed.errors.push(LineError { line: number, message });
                continue;
            }
        };
        let text = if number == 1 { text.trim_start_matches('\u{feff}') } else { text };
        match parse_line(text, &default) {
            Ok(Line::Blank) => {}
            Ok(Line::Header(name)) => pool = Some(name),
            Ok(Line::Entry { base_url, key, options, .. }) => {
                // Entries under a bad header are dropped: guessing their pool could hand one
                // user's keys to another. The header's own error says so.
                let Some(pool) = &pool else { continue };
                let id = (pool.clone(), base_url.clone(), key.clone());
                if let Some(&first_line) = seen.get(&id) {
                    parsed.duplicates.push(Duplicate { line: number, first_line, pool: pool.clone() });
                    continue;
                }
                seen.insert(id, number);
                parsed.entries.push(KeyEntry { pool: pool.clone(), base_url, key, line: number, options });
            }
            Err(message) => {
                if text.trim_start().starts_with('[') {
                    pool = None;
                }
                parsed.errors.push(LineError { line: number, message });
            }
        }
    }
    parsed
}

/// Parses keys-file text held in memory; see [`parse`].
pub fn parse_str(text: &str, default_base_url: &str) -> ParsedKeys {
    parse(text.as_bytes(), default_base_url)
}

/// Opens and parses the keys file at `path`. The error is the bare open or read error:
/// callers name the file (and the setting that chose it) in their own message.
pub fn load(path: &Path, default_base_url: &str) -> io::Result<ParsedKeys> {
    let file = std::fs::File::open(path)?;
    Ok(parse(io::BufReader::new(file), default_base_url))
}

/// Normalises a base URL: lowercases the scheme, then removes a trailing `/`, then a
/// trailing `/v1`, then a trailing `/api`, so `http://h:11434/api/` becomes `http://h:11434`
/// and `https://ollama.com/v1` becomes `https://ollama.com`.
///
/// Returns `None` unless the URL is `http://` or `https://` (any case) with a non-empty
/// host and no whitespace, `#`, `|` or `?`.
pub fn normalise_base_url(url: &str) -> Option<String> {
    let (scheme, rest) = split_scheme(url.trim())?;
    if rest.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '#' | '|' | '?')) {
        return None;
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = match host_port.strip_prefix('[') {
        Some(ipv6) => ipv6.split(']').next().filter(|_| ipv6.contains(']'))?,
        None => host_port.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return None;
    }
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix("/v1").unwrap_or(path);
    let path = path.strip_suffix("/api").unwrap_or(path);
    Some(format!("{scheme}://{authority}{}", path.trim_end_matches('/')))
}

/// Splits `http://rest` or `https://rest` (scheme in any case) into the lowercase scheme
/// and the rest.
fn split_scheme(text: &str) -> Option<(&'static str, &str)> {
    for scheme in ["http", "https"] {
        let prefix_len = scheme.len() + 3;
        if let Some(prefix) = text.get(..prefix_len) {
            if prefix.eq_ignore_ascii_case(&format!("{scheme}://")) {
                return Some((scheme, &text[prefix_len..]));
            }
        }
    }
    None
}

fn is_url(text: &str) -> bool {
    split_scheme(text).is_some()
}

/// Removes a comment: a whole line starting with `#`, or a `#` that follows whitespace.
/// A `#` inside a token is the URL#KEY separator and stays.
fn strip_comment(text: &str) -> &str {
    let text = text.trim();
    if text.starts_with('#') {
        return "";
    }
    let mut after_space = false;
    for (i, c) in text.char_indices() {
        if c == '#' && after_space {
            return text[..i].trim_end();
        }
        after_space = c.is_whitespace();
    }
    text
}

/// Parses one line (without its number); the error is the message for a [`LineError`].
fn parse_line(text: &str, default: &Result<String, String>) -> Result<Line, String> {
    let text = strip_comment(text);
    if text.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return parse_header(rest).map(Line::Header);
    }
    let mut words = text.split_whitespace();
    let entry = words.next().unwrap_or_default();
    let options: Vec<&str> = words.collect();
    // A later word without `=` is not an option: most likely a key or URL split by a space.
    if let Some(word) = options.iter().find(|word| !word.contains('=')) {
        if let Some(option) = option_named(word) {
            return Err(format!("option {option} needs a value, like {option}=2; {OPTIONS}"));
        }
        // Next to options, the word is more likely a broken option than a broken key.
        let accepted = match options.iter().any(|word| word.contains('=')) {
            true => OPTIONS,
            false => FORMS,
        };
        return Err(format!(
            "whitespace inside the entry; a key or URL never contains spaces (to add a comment, \
             put it after a space and `#`; options are NAME=VALUE words after the key); {accepted}"
        ));
    }
    let mut line = parse_entry(entry, default)?;
    if let Line::Entry { key, options: slot, .. } = &mut line {
        *slot = parse_options(&options, key.as_ref())?;
    }
    Ok(line)
}

/// Parses the entry word of a line: a key, a URL, or both.
fn parse_entry(text: &str, default: &Result<String, String>) -> Result<Line, String> {
    if text.contains("----") && !is_url(text) {
        return parse_account_export(text, default);
    }
    for separator in ['|', '#'] {
        if text.contains(separator) {
            return parse_pair(text, separator);
        }
    }
    if is_url(text) {
        return parse_url(text);
    }
    let key = check_key(text).map_err(|why| format!("{why}; {FORMS}"))?;
    Ok(Line::entry(default.clone()?, Some(key), Form::Key))
}

/// The option a word names, when it is one of ours (`weight`, `max_concurrent`, `name`).
fn option_named(word: &str) -> Option<&'static str> {
    ["weight", "max_concurrent", "name"].into_iter().find(|name| *name == word)
}

/// Reads the `NAME=VALUE` words after an entry. Values are never quoted in errors: a word
/// that is not an option may well be a second key.
fn parse_options(words: &[&str], key: Option<&Secret>) -> Result<KeyOptions, String> {
    let mut options = KeyOptions::default();
    let mut seen: Vec<&str> = Vec::new();
    for word in words {
        let (name, value) = word.split_once('=').unwrap_or((word, ""));
        let Some(option) = option_named(name) else {
            // An option-like name is shown, to point at the typo; anything else may be a key.
            let shown = match name.len() <= 20 && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                true if !name.is_empty() => format!(" `{name}`"),
                _ => String::new(),
            };
            return Err(format!("unknown option{shown}; {OPTIONS}"));
        };
        if seen.contains(&option) {
            return Err(format!("option {option} is given twice; give each option once; {OPTIONS}"));
        }
        seen.push(option);
        match option {
            "weight" => options.weight = whole_number(option, value, 1)?,
            "max_concurrent" => options.max_concurrent = Some(whole_number(option, value, 0)?),
            _ => options.name = Some(check_name(value, key)?),
        }
    }
    Ok(options)
}

/// A `weight=` or `max_concurrent=` value: ASCII digits, at least `min`.
fn whole_number(option: &str, value: &str, min: u32) -> Result<u32, String> {
    let expected = match min {
        0 => format!("{option} must be a whole number, 0 for no limit, like {option}=4"),
        _ => format!("{option} must be a whole number of at least {min}, like {option}=2"),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{expected}; {OPTIONS}"));
    }
    match value.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("{expected}; {OPTIONS}")),
        Err(_) => Err(format!("{option} is too large (at most {}); {OPTIONS}", u32::MAX)),
    }
}

/// A `name=` label: short, plain, and not a copy of (part of) the key it stands for,
/// since logs print it in place of the masked key.
fn check_name(value: &str, key: Option<&Secret>) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("name is empty; write a label such as name=paid-1; {OPTIONS}"));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')) {
        return Err(format!(
            "name holds a character other than letters, digits, `-`, `_`, `.`, `:` or `@`; {OPTIONS}"
        ));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("name is {} characters long, more than {MAX_NAME_LEN}; {OPTIONS}", value.len()));
    }
    if let Some(key) = key {
        let key = key.expose();
        // Only ASCII reaches here, so byte windows are character windows.
        let repeats = value.len() >= NAME_KEY_OVERLAP
            && (0..=value.len() - NAME_KEY_OVERLAP).any(|i| key.contains(&value[i..i + NAME_KEY_OVERLAP]));
        if repeats {
            return Err(format!(
                "name repeats {NAME_KEY_OVERLAP} or more characters of the key, and names are printed in \
                 logs in place of the masked key; pick a label such as name=paid-1; {OPTIONS}"
            ));
        }
    }
    Ok(value.to_string())
}

/// Parses what follows the `[` of a section header.
fn parse_header(rest: &str) -> Result<String, String> {
    const IGNORED: &str = "the lines below it are ignored until the next valid header";
    let Some((name, after)) = rest.split_once(']') else {
        return Err(format!("section header is missing its closing `]`; write it as [name]; {IGNORED}"));
    };
    if !after.is_empty() {
        return Err(format!(
            "unexpected text after the `]` of a section header; put the header on a line of its \
             own; {IGNORED}"
        ));
    }
    if !is_pool_name(name) {
        return Err(format!(
            "invalid pool name in section header; names are one or more letters, digits, `.`, \
             `_` or `-`, like [team-b]; {IGNORED}"
        ));
    }
    Ok(name.to_string())
}

/// Whether `name` may name a pool: one or more ASCII letters, digits, `.`, `_` or `-`.
pub fn is_pool_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The pool a line starts, when it is a valid `[name]` header (a comment may follow it).
pub fn header_name(text: &str) -> Option<String> {
    parse_header(strip_comment(text).strip_prefix('[')?).ok()
}

/// A line holding an entry as `ollama-gateway keys import` writes it into keys.txt: the
/// entry as written, its options, its comment, single-spaced; an account export is
/// reduced to its key, since the gateway never uses the email, password or session and
/// keys.txt need not hold them (both forms use the default base URL). `None` for a line
/// without an entry.
pub fn import_form(text: &str) -> Option<String> {
    let text = text.trim_start_matches('\u{feff}').trim();
    let body = strip_comment(text);
    let comment = text[body.len()..].trim();
    let mut words = body.split_whitespace();
    let entry = words.next().filter(|word| !word.starts_with('['))?;
    // A key starting with `[` would read as a header on a line of its own: keep the export.
    let key = entry.rsplit("----").next().filter(|key| !key.starts_with('['));
    let entry = match key {
        Some(key) if entry.contains("----") && !is_url(entry) => key,
        _ => entry,
    };
    let mut line: Vec<&str> = std::iter::once(entry).chain(words).collect();
    if !comment.is_empty() {
        line.push(comment);
    }
    Some(line.join(" "))
}

/// `EMAIL----PASSWORD----SESSION----KEY` with any number of fields: the key is the last.
fn parse_account_export(text: &str, default: &Result<String, String>) -> Result<Line, String> {
    let last = text.rsplit("----").next().unwrap_or("");
    let key = check_key(last).map_err(|why| {
        format!("account export (EMAIL----PASSWORD----SESSION----KEY): the last field is the key, but {why}")
    })?;
    Ok(Line::entry(default.clone()?, Some(key), Form::AccountExport))
}

/// `URL|KEY`, `KEY|URL`, `URL#KEY` or `KEY#URL`.
fn parse_pair(text: &str, separator: char) -> Result<Line, String> {
    let expected = format!("expected URL{separator}KEY or KEY{separator}URL");
    let parts: Vec<&str> = text.split(separator).collect();
    let [left, right] = parts[..] else {
        return Err(format!("more than one `{separator}`; {expected} with exactly two parts"));
    };
    if left.is_empty() || right.is_empty() {
        return Err(format!("one side of `{separator}` is empty; {expected}"));
    }
    let (url, key, form) = match (is_url(left), is_url(right), separator) {
        (true, true, _) => {
            return Err(format!("both sides of `{separator}` are URLs; {expected} with one of each"))
        }
        (false, false, _) => {
            return Err(format!("neither side of `{separator}` is an http:// or https:// URL; {expected}"))
        }
        (true, false, '|') => (left, right, Form::UrlPipeKey),
        (false, true, '|') => (right, left, Form::KeyPipeUrl),
        (true, false, _) => (left, right, Form::UrlHashKey),
        (false, true, _) => (right, left, Form::KeyHashUrl),
    };
    let base_url = normalise_base_url(url).ok_or_else(|| {
        format!("the URL side of `{separator}` is not a valid http(s) URL with a host; {expected}")
    })?;
    let key = check_key(key).map_err(|why| format!("{why}; {expected}"))?;
    Ok(Line::entry(base_url, Some(key), form))
}

/// A bare URL: `URL/KEY` when the last path segment looks like a key, otherwise keyless.
fn parse_url(text: &str) -> Result<Line, String> {
    let invalid = || format!("not a valid http:// or https:// URL with a host; {FORMS}");
    let trimmed = text.trim_end_matches('/');
    if let Some((base, segment)) = trimmed.rsplit_once('/') {
        // `base` must still be a URL: in `https://KEY` the long part is the host, not a key.
        if looks_like_path_key(segment) && is_url(base) {
            let base_url = normalise_base_url(base).ok_or_else(invalid)?;
            let key = check_key(segment)?;
            return Ok(Line::entry(base_url, Some(key), Form::UrlSlashKey));
        }
    }
    let base_url = normalise_base_url(text).ok_or_else(invalid)?;
    Ok(Line::entry(base_url, None, Form::Url))
}

/// `text` as it may be shown: masked when it looks like a key (a command-line argument
/// that was a key pasted in the wrong place: 32 or more key characters; Ollama's keys are
/// longer, file names rarely are), else as it is.
pub fn mask_if_key(text: &str) -> String {
    match text.len() >= 32 && looks_like_path_key(text) {
        true => Secret::new(text).mask(),
        false => text.to_string(),
    }
}

/// Whether a last URL path segment is a key rather than part of the base URL.
fn looks_like_path_key(segment: &str) -> bool {
    segment.len() >= MIN_PATH_KEY_LEN
        && segment.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !matches!(segment, "api" | "v1")
}

/// Checks a key's characters and length; the error describes the problem without the key.
fn check_key(key: &str) -> Result<Secret, String> {
    if key.is_empty() {
        return Err("the key is empty".to_string());
    }
    if key.contains("://") {
        return Err("the key looks like a URL; only http:// and https:// URLs are accepted".to_string());
    }
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err("the key contains a character that is not printable ASCII".to_string());
    }
    if key.contains(['|', '#']) {
        return Err("the key contains `|` or `#`, which only separate a URL from a key".to_string());
    }
    let len = key.len();
    if len < MIN_KEY_LEN {
        return Err(format!(
            "{len} characters is too short to be a key (keys have at least {MIN_KEY_LEN}); a URL \
             must start with http:// or https://"
        ));
    }
    Ok(Secret::new(key))
}

/// Whether an upstream base URL is Ollama Cloud, which names models without the `:cloud`
/// / `-cloud` suffixes a local Ollama uses for them.
pub fn is_ollama_cloud(base_url: &str) -> bool {
    let host = base_url.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    host.eq_ignore_ascii_case("ollama.com") || host.to_ascii_lowercase().ends_with(".ollama.com")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOUD: &str = "https://ollama.com";
    const KEY: &str = "0123456789abcdef0123456789abcdef.FAKEfakeFAKEfakeFAKEfake";

    /// Parses one line against the default base URL `https://ollama.com`.
    fn line(text: &str) -> Result<Line, String> {
        parse_line(text, &Ok(CLOUD.to_string()))
    }

    fn entry(url: &str, key: Option<&str>, form: Form) -> Result<Line, String> {
        Ok(Line::entry(url.to_string(), key.map(Secret::new), form))
    }

    #[test]
    fn every_form_parses() {
        let k = KEY;
        let cases: Vec<(String, Result<Line, String>)> = vec![
            (k.to_string(), entry(CLOUD, Some(k), Form::Key)),
            ("http://127.0.0.1:11434".into(), entry("http://127.0.0.1:11434", None, Form::Url)),
            (format!("https://ollama.com|{k}"), entry(CLOUD, Some(k), Form::UrlPipeKey)),
            (format!("{k}|https://ollama.com/v1"), entry(CLOUD, Some(k), Form::KeyPipeUrl)),
            (format!("https://ollama.com/api#{k}"), entry(CLOUD, Some(k), Form::UrlHashKey)),
            (format!("{k}#http://h:11434/api/"), entry("http://h:11434", Some(k), Form::KeyHashUrl)),
            (format!("https://ollama.com/{k}"), entry(CLOUD, Some(k), Form::UrlSlashKey)),
            (format!("https://ollama.com/api/{k}/"), entry(CLOUD, Some(k), Form::UrlSlashKey)),
            (format!("me@x.com----pw----sess----{k}"), entry(CLOUD, Some(k), Form::AccountExport)),
            (format!("me@x.com----pw----sess----a----b----{k}"), entry(CLOUD, Some(k), Form::AccountExport)),
            // A password may hold `#` or `|`: only the last field is read.
            (format!("me@x.com----p#w|x----s----{k}"), entry(CLOUD, Some(k), Form::AccountExport)),
            // The scheme is case-insensitive and comes out lowercase.
            (format!("HTTPS://ollama.com|{k}"), entry(CLOUD, Some(k), Form::UrlPipeKey)),
            (format!("  {k}\t"), entry(CLOUD, Some(k), Form::Key)),
        ];
        for (text, expected) in cases {
            assert_eq!(line(&text), expected, "line: {text:?}");
        }
    }

    #[test]
    fn url_with_path_is_a_key_only_when_the_last_segment_looks_like_one() {
        let cases = [
            ("http://host/api", "http://host"),
            ("https://host/v1", "https://host"),
            ("https://host/api/v1/", "https://host"),
            ("http://host/ollama", "http://host/ollama"),
            ("http://host/short-segment/", "http://host/short-segment"),
            // 19 characters: one short of a key.
            ("http://host/abcdefghij012345678", "http://host/abcdefghij012345678"),
            // A long host is a host, not a key.
            ("https://abcdefghij0123456789abcdefghij.io", "https://abcdefghij0123456789abcdefghij.io"),
            ("http://[::1]:11434", "http://[::1]:11434"),
        ];
        for (text, url) in cases {
            assert_eq!(line(text), entry(url, None, Form::Url), "line: {text:?}");
        }
        let twenty = "abcdefghij0123456789";
        assert_eq!(
            line(&format!("http://host/{twenty}")),
            entry("http://host", Some(twenty), Form::UrlSlashKey)
        );
    }

    #[test]
    fn comments_and_separators() {
        let cases: Vec<(String, Result<Line, String>)> = vec![
            ("# a comment".into(), Ok(Line::Blank)),
            ("   #indented comment".into(), Ok(Line::Blank)),
            (format!("#{KEY}"), Ok(Line::Blank)),
            ("".into(), Ok(Line::Blank)),
            ("   \t ".into(), Ok(Line::Blank)),
            (format!("{KEY} # main account"), entry(CLOUD, Some(KEY), Form::Key)),
            (format!("{KEY}\t#tab then comment"), entry(CLOUD, Some(KEY), Form::Key)),
            ("http://h:11434 # local".into(), entry("http://h:11434", None, Form::Url)),
            (format!("https://ollama.com#{KEY} # both"), entry(CLOUD, Some(KEY), Form::UrlHashKey)),
            ("[cloud] # the paid pool".into(), Ok(Line::Header("cloud".into()))),
            ("[a.b_c-9]".into(), Ok(Line::Header("a.b_c-9".into()))),
        ];
        for (text, expected) in cases {
            assert_eq!(line(&text), expected, "line: {text:?}");
        }
    }

    #[test]
    fn lines_that_fit_no_form_say_what_is_wrong() {
        let cases = [
            ("https://a.example|https://b.example", "both sides of `|` are URLs"),
            ("https://a.example#https://b.example", "both sides of `#` are URLs"),
            ("0123456789abcdef|fedcba9876543210", "neither side of `|` is an http"),
            ("0123456789abcdef#fedcba9876543210", "neither side of `#`"),
            ("0123456789abcdef 0123456789abcdef", "whitespace inside the entry"),
            ("https://ollama.com |0123456789abcdef", "whitespace inside the entry"),
            ("[a b]", "invalid pool name"),
            ("[a/b]", "invalid pool name"),
            ("[]", "invalid pool name"),
            ("[x", "missing its closing `]`"),
            ("[x]y", "after the `]`"),
            ("short", "too short to be a key"),
            ("https://ollama.com|short", "too short to be a key"),
            ("a|b|c", "more than one `|`"),
            ("|0123456789abcdef", "one side of `|` is empty"),
            ("https://ollama.com#", "one side of `#` is empty"),
            ("http://", "not a valid http:// or https:// URL"),
            ("http://:11434", "not a valid http:// or https:// URL"),
            ("http://|0123456789abcdef", "URL side of `|` is not a valid"),
            ("ftp://files.example/x", "looks like a URL"),
            ("0123456789abcdefé", "not printable ASCII"),
            ("me@x.com----pw----", "the last field is the key, but the key is empty"),
            ("me@x.com----pw----s----ab|cdefghijkl", "`|` or `#`"),
        ];
        for (text, expected) in cases {
            match line(text) {
                Err(message) => assert!(message.contains(expected), "line {text:?}: got {message:?}"),
                Ok(got) => panic!("line {text:?} parsed as {got:?}, expected an error"),
            }
        }
        let message = line("x").err().unwrap_or_default();
        assert!(message.contains("accepted forms: KEY, URL, URL|KEY"), "{message}");
    }

    #[test]
    fn errors_never_contain_the_raw_key() {
        let k = "sk0123456789abcdefSECRETPART";
        let lines = [
            format!("{k}|{k}"),
            format!("{k} {k}"),
            format!("[{k} x]"),
            format!("[{k}"),
            format!("{k}|https://ollama.com|x"),
            format!("https://a.example|{k}é"),
            format!("me----{k}----{k}|"),
            format!("{k}é"),
        ];
        let text = lines.join("\n");
        let parsed = parse_str(&text, CLOUD);
        assert_eq!(parsed.errors.len(), lines.len(), "{:?}", parsed.errors);
        for error in &parsed.errors {
            let shown = error.to_string();
            assert!(!shown.contains("SECRETPART") && !shown.contains("0123456789"), "{shown}");
        }
    }

    #[test]
    fn normalises_base_urls() {
        let cases = [
            ("http://h:11434/api/", Some("http://h:11434")),
            ("https://ollama.com/v1", Some(CLOUD)),
            ("https://ollama.com/", Some(CLOUD)),
            ("https://ollama.com/api/v1", Some(CLOUD)),
            ("https://ollama.com/api/v1/", Some(CLOUD)),
            ("HTTP://Host:1/", Some("http://Host:1")),
            ("https://proxy.example/ollama/api", Some("https://proxy.example/ollama")),
            ("http://v1", Some("http://v1")),
            ("http://api/v1", Some("http://api")),
            ("http://user:pw@h:1/", Some("http://user:pw@h:1")),
            ("  https://ollama.com  ", Some(CLOUD)),
            ("http://", None),
            ("https:///path", None),
            ("http://:80", None),
            ("http://[::1", None),
            ("ftp://host", None),
            ("ollama.com", None),
            ("http://a b", None),
            ("http://h/#x", None),
            ("http://h/?q=1", None),
        ];
        for (url, expected) in cases {
            assert_eq!(normalise_base_url(url).as_deref(), expected, "url: {url:?}");
        }
    }

    #[test]
    fn sections_and_lines_before_any_header() {
        let text = format!("{KEY}\n[cloud]\nhttps://ollama.com|{KEY}\n[local]\nhttp://h:11434\n");
        let parsed = parse_str(&text, CLOUD);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let pools: Vec<(&str, usize)> = parsed.entries.iter().map(|e| (e.pool.as_str(), e.line)).collect();
        assert_eq!(pools, [("default", 1), ("cloud", 3), ("local", 5)]);
        assert_eq!(parsed.pools(), ["default", "cloud", "local"]);
        // A header with nothing under it is not a pool.
        assert_eq!(parse_str("[empty]\n[full]\nhttp://h", CLOUD).pools(), ["full"]);
    }

    #[test]
    fn lines_under_a_bad_header_are_not_loaded_into_another_pool() {
        let text = format!("[alice]\n{KEY}\n[bob smith]\nhttp://h:1\n[carol]\nhttp://h:2\n");
        let parsed = parse_str(&text, CLOUD);
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].line, 3);
        assert!(parsed.errors[0].message.contains("ignored until the next valid header"));
        let lines: Vec<(&str, usize)> = parsed.entries.iter().map(|e| (e.pool.as_str(), e.line)).collect();
        assert_eq!(lines, [("alice", 2), ("carol", 6)]);
    }

    #[test]
    fn duplicates_are_reported_and_kept_once() {
        let text = format!(
            "{KEY}\nhttps://ollama.com/v1|{KEY}\nhttp://h:1\nhttp://h:1/api\n[other]\n{KEY}\nhttp://h:1\n"
        );
        let parsed = parse_str(&text, CLOUD);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(
            parsed.duplicates,
            [
                Duplicate { line: 2, first_line: 1, pool: "default".into() },
                Duplicate { line: 4, first_line: 3, pool: "default".into() },
            ]
        );
        let lines: Vec<usize> = parsed.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 3, 6, 7], "same key in another pool is not a duplicate");
        assert_eq!(
            parsed.duplicates[0].to_string(),
            "line 2: same upstream and key as line 1 in pool 'default'; ignored, delete one of them"
        );
    }

    #[test]
    fn error_line_numbers_count_blank_and_comment_lines_and_parsing_goes_on() {
        let text = format!("# header comment\n\n{KEY}\n\n   # indented\nbad line\n{KEY}|x|y\nhttp://h:1\n");
        let parsed = parse_str(&text, CLOUD);
        let lines: Vec<usize> = parsed.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 7]);
        assert!(parsed.errors[0].to_string().starts_with("line 6: whitespace inside the entry"));
        assert_eq!(parsed.entries.len(), 2);
        assert_eq!(parsed.entries[1].line, 8);
    }

    #[test]
    fn crlf_line_endings_and_a_byte_order_mark() {
        let text = format!("\u{feff}[cloud]\r\n{KEY} # c\r\n\r\nhttps://ollama.com#{KEY}x\r\n");
        let parsed = parse_str(&text, CLOUD);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let keys: Vec<&str> =
            parsed.entries.iter().filter_map(|e| e.key.as_ref()).map(Secret::expose).collect();
        assert_eq!(keys, [KEY.to_string(), format!("{KEY}x")]);
        assert_eq!(parsed.entries[1].line, 4);
        assert_eq!(parsed.pools(), ["cloud"]);
    }

    #[test]
    fn a_non_utf8_line_is_an_error_and_the_rest_still_loads() {
        let mut bytes = b"http://h:1\n".to_vec();
        bytes.extend_from_slice(b"abc\xff\xfedefghij\n");
        bytes.extend_from_slice(KEY.as_bytes());
        let parsed = parse(&bytes[..], CLOUD);
        assert_eq!(parsed.errors.len(), 1);
        assert_eq!(parsed.errors[0].line, 2);
        assert_eq!(parsed.errors[0].message, "not UTF-8 text (at column 4): save the file as UTF-8");
        assert_eq!(parsed.entries.len(), 2);
    }

    #[test]
    fn the_default_base_url_is_normalised_and_a_bad_one_is_reported_per_line() {
        let parsed = parse_str(KEY, "https://ollama.com/api/");
        assert_eq!(parsed.entries[0].base_url, CLOUD);
        let parsed = parse_str(&format!("{KEY}\nhttp://h:1"), "ollama.com");
        assert_eq!(parsed.entries.len(), 1);
        assert_eq!(parsed.errors.len(), 1);
        assert!(parsed.errors[0].message.contains("`ollama.com` is not an http:// or https:// URL"));
    }

    #[test]
    fn labels_are_masked() {
        let parsed = parse_str(&format!("{KEY}\nhttp://127.0.0.1:11434"), CLOUD);
        let labels: Vec<String> = parsed.entries.iter().map(KeyEntry::label).collect();
        assert_eq!(labels, ["0123…fake @ https://ollama.com", "(no key) @ http://127.0.0.1:11434"]);
    }

    /// An entry with options.
    fn with(url: &str, key: Option<&str>, form: Form, options: KeyOptions) -> Result<Line, String> {
        Ok(Line::Entry { base_url: url.to_string(), key: key.map(Secret::new), form, options })
    }

    fn opts(weight: u32, max_concurrent: Option<u32>, name: Option<&str>) -> KeyOptions {
        KeyOptions { weight, max_concurrent, name: name.map(str::to_string) }
    }

    #[test]
    fn options_follow_the_entry_in_every_form() {
        let k = KEY;
        let cases: Vec<(String, Result<Line, String>)> = vec![
            (format!("{k} weight=2"), with(CLOUD, Some(k), Form::Key, opts(2, None, None))),
            (
                format!("https://ollama.com|{k} max_concurrent=3 name=paid-1"),
                with(CLOUD, Some(k), Form::UrlPipeKey, opts(1, Some(3), Some("paid-1"))),
            ),
            (
                "http://10.0.0.5:11434 name=nas".into(),
                with("http://10.0.0.5:11434", None, Form::Url, opts(1, None, Some("nas"))),
            ),
            (
                format!("me@x.com----pw----sess----{k} name=x"),
                with(CLOUD, Some(k), Form::AccountExport, opts(1, None, Some("x"))),
            ),
            (format!("{k} max_concurrent=0"), with(CLOUD, Some(k), Form::Key, opts(1, Some(0), None))),
            // Any whitespace separates; the order of options is free; a comment still ends the line.
            (
                format!("  {k}\tname=a.b:c@d_E-9   weight=10 # paid, shared"),
                with(CLOUD, Some(k), Form::Key, opts(10, None, Some("a.b:c@d_E-9"))),
            ),
            (
                format!("{k}#https://ollama.com weight=1"),
                with(CLOUD, Some(k), Form::KeyHashUrl, opts(1, None, None)),
            ),
            (format!("{k} weight=4294967295"), with(CLOUD, Some(k), Form::Key, opts(u32::MAX, None, None))),
        ];
        for (text, expected) in cases {
            assert_eq!(line(&text), expected, "line: {text:?}");
        }
    }

    #[test]
    fn parse_hands_the_options_to_the_entries() {
        let text = format!("{KEY} weight=2 name=main\n[local]\nhttp://h:1 max_concurrent=0\n");
        let parsed = parse_str(&text, CLOUD);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let options: Vec<&KeyOptions> = parsed.entries.iter().map(|e| &e.options).collect();
        assert_eq!(options, [&opts(2, None, Some("main")), &opts(1, Some(0), None)]);
    }

    #[test]
    fn bad_options_say_what_is_wrong_and_list_the_accepted_ones() {
        let k = KEY;
        let long = "n".repeat(65);
        let cases = [
            (format!("{k} weight=0"), "weight must be a whole number of at least 1"),
            (format!("{k} weight=-1"), "weight must be a whole number of at least 1"),
            (format!("{k} weight=+2"), "weight must be a whole number"),
            (format!("{k} weight=1.5"), "weight must be a whole number"),
            (format!("{k} weight="), "weight must be a whole number"),
            (format!("{k} weight=4294967296"), "weight is too large"),
            (format!("{k} max_concurrent=-1"), "max_concurrent must be a whole number, 0 for no limit"),
            (format!("{k} max_concurrent=lots"), "max_concurrent must be a whole number"),
            (format!("{k} name="), "name is empty"),
            (format!("{k} name=paid/1"), "name holds a character other than"),
            (format!("{k} name=é"), "name holds a character other than"),
            (format!("{k} name={long}"), "name is 65 characters long, more than 64"),
            (format!("{k} name=x-0123456789abcdef"), "name repeats 8 or more characters of the key"),
            (format!("{k} name={k}"), "name repeats 8 or more characters of the key"),
            (format!("{k} weigth=2"), "unknown option `weigth`"),
            (format!("{k} label=paid"), "unknown option `label`"),
            (format!("{k} =2"), "unknown option;"),
            (format!("{k} weight=1 weight=2"), "option weight is given twice"),
            (format!("{k} name=a max_concurrent=1 name=b"), "option name is given twice"),
            (format!("{k} weight"), "option weight needs a value, like weight=2"),
            (format!("{k} max_concurrent"), "option max_concurrent needs a value"),
            (format!("{k} weight=2 extra"), "whitespace inside the entry"),
            // A `#` inside a word is no comment: it is part of the value.
            (format!("https://ollama.com#{k} weight=3#x"), "weight must be a whole number"),
        ];
        for (text, expected) in cases {
            match line(&text) {
                Err(message) => {
                    assert!(message.contains(expected), "line {text:?}: got {message:?}");
                    assert!(message.contains("accepted options"), "line {text:?}: got {message:?}");
                }
                Ok(got) => panic!("line {text:?} parsed as {got:?}, expected an error"),
            }
        }
        // A keyless upstream has no key for its name to repeat.
        assert!(line("http://h:1 name=0123456789abcdef").is_ok());
    }

    #[test]
    fn option_errors_never_contain_the_raw_key() {
        let k = "sk0123456789abcdefSECRETPART";
        let lines = [
            format!("{k} name={k}"),
            format!("{k} {k}=x"),
            format!("{k} x={k}"),
            format!("{k} weight={k}"),
            format!("{k} max_concurrent={k}"),
            format!("https://ollama.com|{k} name=SECRETPART-0123456789"),
            format!("{k} {k}"),
        ];
        let parsed = parse_str(&lines.join("\n"), CLOUD);
        assert_eq!(parsed.errors.len(), lines.len(), "{:?}", parsed.errors);
        for error in &parsed.errors {
            let shown = error.to_string();
            assert!(!shown.contains("SECRETPART") && !shown.contains("0123456789"), "{shown}");
        }
    }

    #[test]
    fn duplicates_ignore_options() {
        let text = format!("{KEY} weight=2\n{KEY} name=again\nhttp://h:1 name=a\nhttp://h:1/api name=b\n");
        let parsed = parse_str(&text, CLOUD);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let dropped: Vec<(usize, usize)> = parsed.duplicates.iter().map(|d| (d.line, d.first_line)).collect();
        assert_eq!(dropped, [(2, 1), (4, 3)]);
        assert_eq!(parsed.entries[0].options, opts(2, None, None), "the first line's options win");
    }

    #[test]
    fn arguments_that_look_like_keys_are_masked() {
        let key = "0123456789abcdef0123456789abcdef.SECRETsecretSECRET";
        assert!(!mask_if_key(key).contains("SECRET"), "{}", mask_if_key(key));
        for shown in ["keys.txt", "exported-keys.txt", "/tmp/0123456789abcdef0123456789abcdef.txt"] {
            assert_eq!(mask_if_key(shown), shown);
        }
    }

    #[test]
    fn labels_and_hosts_never_show_a_url_credential() {
        let entry = |url: &str| KeyEntry {
            pool: "default".into(),
            base_url: url.into(),
            key: None,
            line: 1,
            options: KeyOptions::default(),
        };
        let secret = entry("http://user:hunter2pass@10.0.0.5:11434/ollama");
        assert_eq!(secret.label(), "(no key) @ http://10.0.0.5:11434/ollama");
        assert_eq!(secret.shown_url(), "http://10.0.0.5:11434/ollama");
        assert_eq!(secret.host(), "10.0.0.5:11434");
        for (url, host) in
            [("https://ollama.com", "ollama.com"), ("https://openrouter.ai/api/v1", "openrouter.ai")]
        {
            assert_eq!((entry(url).shown_url().as_str(), entry(url).host()), (url, host));
        }
    }

    #[test]
    fn a_name_replaces_the_masked_key_in_labels() {
        let text = format!(
            "https://ollama.com|{KEY} max_concurrent=3 name=paid-1\nhttp://10.0.0.5:11434 name=nas\n{KEY}x"
        );
        let parsed = parse_str(&text, CLOUD);
        let labels: Vec<String> = parsed.entries.iter().map(KeyEntry::label).collect();
        assert_eq!(
            labels,
            ["paid-1 @ https://ollama.com", "nas @ http://10.0.0.5:11434", "0123…akex @ https://ollama.com"]
        );
    }

    #[test]
    fn import_form_keeps_the_entry_options_and_comment_and_drops_account_fields() {
        let k = KEY;
        let cases = [
            (format!("  {k}  "), Some(k.to_string())),
            (
                format!("\u{feff}{k}\tweight=2   name=a # main  account\r\n"),
                Some(format!("{k} weight=2 name=a # main  account")),
            ),
            (
                format!("https://ollama.com|{k} max_concurrent=3"),
                Some(format!("https://ollama.com|{k} max_concurrent=3")),
            ),
            (format!("https://ollama.com#{k} # c"), Some(format!("https://ollama.com#{k} # c"))),
            (format!("me@x.com----p#w|x----sess----{k} name=x"), Some(format!("{k} name=x"))),
            (
                "me@x.com----pw----s----[abcdefghij".to_string(),
                Some("me@x.com----pw----s----[abcdefghij".into()),
            ),
            ("http://h:11434/api/ name=nas".to_string(), Some("http://h:11434/api/ name=nas".into())),
            ("# comment".to_string(), None),
            ("   ".to_string(), None),
            ("[cloud]".to_string(), None),
        ];
        for (text, expected) in cases {
            let got = import_form(&text);
            assert_eq!(got, expected, "{text:?}");
            // What import writes means what was read: same URL, key and options.
            if let Some(written) = got {
                let read = line(text.trim_start_matches('\u{feff}')).map(strip_form);
                assert_eq!(line(&written).map(strip_form), read, "{text:?}");
            }
        }
    }

    /// A parsed line without its form, to compare lines written in different forms.
    fn strip_form(line: Line) -> Line {
        match line {
            Line::Entry { base_url, key, options, .. } => {
                Line::Entry { base_url, key, form: Form::Key, options }
            }
            other => other,
        }
    }

    #[test]
    fn headers_and_pool_names() {
        assert_eq!(header_name("[cloud]").as_deref(), Some("cloud"));
        assert_eq!(header_name("  [team-b.1] # the second team").as_deref(), Some("team-b.1"));
        for text in ["[a b]", "[]", "[x", "cloud", "# [cloud]", "[x]y"] {
            assert_eq!(header_name(text), None, "{text:?}");
        }
        for (name, ok) in [("default", true), ("a.b_c-9", true), ("", false), ("a b", false), ("ü", false)] {
            assert_eq!(is_pool_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn load_reads_a_file_and_passes_open_errors_through() {
        let path = std::env::temp_dir().join(format!("ollama-gateway-keys-{}.txt", std::process::id()));
        std::fs::write(&path, format!("[cloud]\n{KEY}\n")).expect("write temp keys file");
        let parsed = load(&path, CLOUD).expect("load temp keys file");
        std::fs::remove_file(&path).expect("remove temp keys file");
        assert_eq!(parsed.pools(), ["cloud"]);
        let missing = load(&path, CLOUD).err().map(|e| e.kind());
        assert_eq!(missing, Some(io::ErrorKind::NotFound));
    }

    #[test]
    fn the_example_file_parses_cleanly_and_shows_every_form() {
        let example = include_str!("../keys.example.txt");
        let parsed = parse_str(example, CLOUD);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert!(parsed.duplicates.is_empty(), "{:?}", parsed.duplicates);
        let default: Vec<&KeyEntry> = parsed.entries.iter().filter(|e| e.pool == DEFAULT_POOL).collect();
        assert_eq!(default.len(), 1);
        assert_eq!((default[0].base_url.as_str(), &default[0].key), ("http://127.0.0.1:11434", &None));
        let mut forms = Vec::new();
        for text in example.lines() {
            if let Ok(Line::Entry { form, .. }) = line(text) {
                if !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
        use Form::*;
        for form in [Key, Url, UrlPipeKey, KeyPipeUrl, UrlHashKey, KeyHashUrl, UrlSlashKey, AccountExport] {
            assert!(forms.contains(&form), "keys.example.txt has no {form:?} line");
        }
        let options = |e: &&KeyEntry| e.options.weight > 1 && e.options.max_concurrent.is_some();
        let shown = parsed.entries.iter().find(options).and_then(|e| e.options.name.as_deref());
        assert_eq!(shown, Some("paid-1"), "keys.example.txt shows every option on one line");
    }

    #[test]
    fn ollama_cloud_hosts() {
        assert!(is_ollama_cloud("https://ollama.com"));
        assert!(is_ollama_cloud("https://OLLAMA.com:443"));
        assert!(is_ollama_cloud("https://api.ollama.com"));
        assert!(!is_ollama_cloud("http://127.0.0.1:11434"));
        assert!(!is_ollama_cloud("https://notollama.com"));
    }
}
