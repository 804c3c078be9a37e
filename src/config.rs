//! The configuration: `config.toml` as written ([`RawConfig`]) and as resolved ([`Config`]).
//!
//! [`RawConfig`] is what serde reads: defaults and validation of single values, no IO, so a
//! typo or a wrong type is reported with the file, line and key. [`Config::load`] then
//! resolves paths against the config file's folder, reads `keys.txt` through [`crate::keys`],
//! and checks what spans both files (every token's pool exists, tokens are unique).
//! Building agents, pools and threads from a [`Config`] is the server's business, not this
//! module's.

use crate::auth::{Scope, Token, TokenLimits};
use crate::cidr::Cidr;
use crate::keys::{self, KeyEntry, ParsedKeys};
use crate::secret;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The config path used when neither `--config` nor `OLLAMA_GATEWAY_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

/// `config.toml` exactly as written, with defaults filled in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Requests served at once (worker threads); a stream holds one while it runs.
    #[serde(default = "default_workers", deserialize_with = "workers")]
    pub workers: usize,
    /// Requests that may wait for a free worker before new ones get 503.
    #[serde(default = "default_queue_size", deserialize_with = "queue_size")]
    pub queue_size: usize,
    /// The upstream keys file, relative to the config file's folder.
    #[serde(default = "default_keys_file")]
    pub keys_file: PathBuf,
    /// Where what the gateway learns about keys is kept, relative to the config file's folder.
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// Serve requests without a token (only when no `[[tokens]]` are set).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Accept the token as `?api_key=TOKEN` in the URL, for clients that cannot set headers.
    #[serde(default)]
    pub allow_query_token: bool,
    /// Accept the token as the JSON body's top-level `api_key` field (as the FastAPI auth
    /// proxy did) when the head carries none; the field never goes upstream either way.
    #[serde(default)]
    pub allow_body_token: bool,
    /// How log lines are written: `text` (env_logger's lines) or `json` (one object a line).
    #[serde(default)]
    pub log_format: crate::logline::LogFormat,
    /// Longest wait for a client's next bytes (a request, its body) or for it to take ours.
    #[serde(default = "default_client_timeout", deserialize_with = "seconds")]
    pub client_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes", deserialize_with = "positive_u64")]
    pub max_body_bytes: u64,
    /// Client connections open at once (0: sized from the open-files limit at start);
    /// past it new connections are closed at once.
    #[serde(default, deserialize_with = "max_connections")]
    pub max_connections: usize,
    /// Longest time for a whole request head to arrive, from its first byte (and, on a new
    /// connection, from the connect).
    #[serde(default = "default_header_timeout", deserialize_with = "seconds")]
    pub header_timeout_secs: u64,
    /// Slowest request body accepted, in bytes a second on average, after a grace of
    /// `header_timeout_secs`; a slower client's connection is closed.
    #[serde(default = "default_min_body_rate", deserialize_with = "positive_u64")]
    pub min_body_bytes_per_sec: u64,
    /// Request bodies held in memory at once, in bytes, across all requests; beyond it new
    /// requests get 503 with `Retry-After`.
    #[serde(default = "default_max_inflight_body_bytes", deserialize_with = "positive_u64")]
    pub max_inflight_body_bytes: u64,
    /// Reverse proxies whose `X-Forwarded-For` names the client's address (CIDR blocks);
    /// empty: the socket's peer is the client.
    #[serde(default, deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<Cidr>,
    /// Field name(s) of thinking text in replies.
    #[serde(default)]
    pub reasoning_field: ReasoningField,
    /// How upstreams are reached.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Browser access (CORS).
    #[serde(default)]
    pub cors: RawCors,
    /// How keys are checked.
    #[serde(default)]
    pub health: RawHealth,
    /// Per-pool settings, by keys.txt section name.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    /// `GET /metrics`.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// The public `GET /stats` page.
    #[serde(default)]
    pub status: RawStatus,
    /// Model names clients may use for other models: `"gpt-4o-mini" = "gpt-oss:20b"`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Client tokens.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

/// The `[cors]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins (`https://chat.example.com`) allowed to call the API from a browser; `"*"`
    /// allows any. Empty: no CORS headers at all.
    #[serde(default, deserialize_with = "origins")]
    pub allow_origins: Vec<String>,
}

/// The `[metrics]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `GET /metrics` (false: it is no route, 404).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Client addresses that may scrape without a token; others need one with the `admin`
    /// scope. The default is the loopback addresses; a list replaces it.
    #[serde(default = "default_metrics_allow_from")]
    pub allow_from: Vec<Cidr>,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics { enabled: true, allow_from: default_metrics_allow_from() }
    }
}

/// The `[status]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Serve `GET /stats` without a token: usage per model and day, usable keys per pool
    /// (false: it is no route, 404).
    #[serde(default)]
    pub public: bool,
}

fn default_true() -> bool {
    true
}

fn default_metrics_allow_from() -> Vec<Cidr> {
    [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)].map(Cidr::host).to_vec()
}

/// The `[upstream]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Base URL for key lines that carry none.
    #[serde(default = "default_base_url", deserialize_with = "base_url")]
    pub base_url: String,
    /// Longest wait to connect to an upstream.
    #[serde(default = "default_connect_timeout", deserialize_with = "seconds")]
    pub connect_timeout_secs: u64,
    /// Longest upstream silence, waiting for the answer or in the middle of it.
    #[serde(default = "default_idle_timeout", deserialize_with = "seconds")]
    pub idle_timeout_secs: u64,
    /// Longest whole upstream exchange for one request, from the first connect to the last
    /// byte of the answer (streams included), across failover.
    #[serde(default = "default_request_timeout", deserialize_with = "seconds")]
    pub request_timeout_secs: u64,
    /// A cap on the keys tried for one request (none: every usable key, within
    /// `failover_deadline_secs`).
    #[serde(default, deserialize_with = "max_attempts")]
    pub max_attempts: Option<u32>,
    /// No new attempt on another key starts later than this after the request came in.
    #[serde(default = "default_failover_deadline", deserialize_with = "seconds")]
    pub failover_deadline_secs: u64,
    /// Requests one key may have in flight at once (0: no limit); a pool's table and a key's
    /// line may say otherwise.
    #[serde(default, deserialize_with = "max_concurrent")]
    pub max_concurrent_per_key: u32,
    /// How long a request waits for a free slot when every key is at its limit.
    #[serde(default = "default_slot_wait", deserialize_with = "wait_seconds")]
    pub slot_wait_secs: u64,
    /// How a pool spreads requests over its keys.
    #[serde(default)]
    pub strategy: Strategy,
    /// How long a key whose quota is spent rests when the upstream names no window.
    #[serde(default = "default_cooldown", deserialize_with = "cooldown")]
    pub cooldown_secs: u64,
    /// Upstream failures (5xx, connect, timeout) in a row before a key backs off.
    #[serde(default = "default_failure_threshold", deserialize_with = "failure_threshold")]
    pub failure_threshold: u32,
}

/// The `[health]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// How a key is probed: `usage`, `show` or `generate`.
    #[serde(default)]
    pub probe: ProbeKind,
    /// The model `show` and `generate` probes ask about.
    #[serde(default = "default_health_model")]
    pub model: String,
    /// Seconds between background checks of every key; 0: none.
    #[serde(default)]
    pub interval_secs: u64,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth { probe: ProbeKind::default(), model: default_health_model(), interval_secs: 0 }
    }
}

impl RawHealth {
    /// The probe these settings describe.
    pub fn probe(&self) -> Probe {
        Probe { kind: self.probe, model: self.model.clone() }
    }
}

fn default_health_model() -> String {
    "gpt-oss:20b".to_string()
}

/// One `[pools.NAME]` table: settings of one keys.txt section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// This pool's strategy, instead of `[upstream] strategy`.
    pub strategy: Option<Strategy>,
    /// Requests each of its keys may have in flight, instead of `[upstream]
    /// max_concurrent_per_key`.
    #[serde(default, deserialize_with = "optional_max_concurrent")]
    pub max_concurrent_per_key: Option<u32>,
    /// The pool a request goes on in when no key of this one can serve it (all unusable,
    /// or busy past `slot_wait_secs`).
    pub fallback: Option<String>,
    /// How long a request waits for a free slot of this pool, instead of `[upstream]
    /// slot_wait_secs` (0: it goes on to the fallback at once).
    #[serde(default, deserialize_with = "optional_wait_seconds")]
    pub slot_wait_secs: Option<u64>,
    /// What its upstreams speak: Ollama's API (translated) or OpenAI's (passed through).
    #[serde(default)]
    pub provider: Provider,
    /// For `provider = "openai"`: the API base every key of the pool is sent to, such as
    /// `https://openrouter.ai/api/v1` (kept as written: requests go to `base_url` +
    /// `/chat/completions`).
    #[serde(default, deserialize_with = "api_base")]
    pub base_url: Option<String>,
}

/// What a pool's upstreams speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Ollama's native API: `/v1` requests are translated.
    #[default]
    Ollama,
    /// An OpenAI-compatible API: `/v1` requests are passed through as they are.
    Openai,
}

fn api_base<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    let trimmed = text.trim().trim_end_matches('/');
    let scheme_ok = trimmed.starts_with("http://") || trimmed.starts_with("https://");
    if !scheme_ok || trimmed.split("://").nth(1).is_none_or(|rest| rest.is_empty()) {
        return Err(serde::de::Error::custom(format!(
            "'{text}' is not an http:// or https:// URL with a host"
        )));
    }
    Ok(Some(trimmed.to_string()))
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            base_url: default_base_url(),
            connect_timeout_secs: default_connect_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_attempts: None,
            failover_deadline_secs: default_failover_deadline(),
            max_concurrent_per_key: 0,
            slot_wait_secs: default_slot_wait(),
            strategy: Strategy::default(),
            cooldown_secs: default_cooldown(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

/// One `[[tokens]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    /// Shown in logs instead of the token (with where it is written, for errors).
    pub name: toml::Spanned<String>,
    /// SHA-256 of the token, 64 hex characters (`ollama-gateway token hash TOKEN`).
    #[serde(deserialize_with = "sha256_digest")]
    pub sha256: [u8; 32],
    /// The keys.txt section this token draws keys from.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Several pools: a request picks one with a path prefix (`/NAME/v1/…`), else the first.
    #[serde(default)]
    pub pools: Option<Vec<String>>,
    /// Models this token may use, as globs (`"gpt-oss:*"`); absent: every model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// What this token may do; absent: inference and models.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    /// Requests it may start in any 60 seconds; absent: no limit.
    #[serde(default, deserialize_with = "rpm")]
    pub rpm: Option<u32>,
    /// Requests it may have in flight at once; absent: no limit.
    #[serde(default, deserialize_with = "token_max_concurrent")]
    pub max_concurrent: Option<u32>,
    /// Prompt and completion tokens it may use in a UTC day, as the upstream counts them;
    /// absent: no limit.
    #[serde(default, deserialize_with = "daily_tokens")]
    pub daily_tokens: Option<u64>,
    /// When it stops working (an RFC 3339 date-time), as Unix seconds; absent: never.
    #[serde(default, deserialize_with = "expires")]
    pub expires: Option<u64>,
    /// The address blocks it may be used from; absent: anywhere.
    #[serde(default, deserialize_with = "token_ips")]
    pub ips: Option<Vec<Cidr>>,
}

/// Which call tells whether a key works (`[health] probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `GET /api/usage`: free; falls back to `show` when the answer is neither 200 nor 401.
    #[default]
    Usage,
    /// `POST /api/show` for the probe's model.
    Show,
    /// One token from the probe's model via `POST /api/generate`.
    Generate,
}

/// How to probe: the call, and the model for `show` and `generate` (`[health] model`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The call.
    pub kind: ProbeKind,
    /// The model asked about by `show` and `generate` (and by `usage`'s fallback).
    pub model: String,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Inference, Scope::Models]
}

/// Where thinking text goes in OpenAI-shaped replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningField {
    /// `reasoning_content`, the DeepSeek convention most GUI clients read.
    #[default]
    ReasoningContent,
    /// `reasoning`, what Ollama's own `/v1` layer emits.
    Reasoning,
    /// Both fields, same text.
    Both,
}

impl ReasoningField {
    /// The field names to write thinking text under.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            ReasoningField::ReasoningContent => &["reasoning_content"],
            ReasoningField::Reasoning => &["reasoning"],
            ReasoningField::Both => &["reasoning_content", "reasoning"],
        }
    }
}

/// How a pool picks the first key to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each request starts at the key after the previous request's first key.
    #[default]
    RoundRobin,
    /// Each request starts at a random key.
    Random,
    /// The usable key with the fewest requests in flight, then the lowest known usage of
    /// its plan.
    LeastBusy,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 11435))
}
fn default_workers() -> usize {
    256
}
fn default_queue_size() -> usize {
    1024
}
fn default_keys_file() -> PathBuf {
    PathBuf::from("keys.txt")
}
fn default_state_file() -> PathBuf {
    PathBuf::from("state.json")
}
fn default_max_body_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_header_timeout() -> u64 {
    10
}
fn default_min_body_rate() -> u64 {
    1024
}
fn default_max_inflight_body_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_request_timeout() -> u64 {
    600
}
fn default_base_url() -> String {
    "https://ollama.com".to_string()
}
fn default_client_timeout() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_failover_deadline() -> u64 {
    60
}
fn default_slot_wait() -> u64 {
    30
}
fn default_cooldown() -> u64 {
    3600
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_pool() -> String {
    keys::DEFAULT_POOL.to_string()
}

fn in_range<'de, D: Deserializer<'de>>(d: D, min: u64, max: u64) -> Result<u64, D::Error> {
    let value = u64::deserialize(d)?;
    if value < min || value > max {
        return Err(serde::de::Error::custom(format!("must be between {min} and {max}, got {value}")));
    }
    Ok(value)
}
fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 1, 16_384).map(|v| v as usize)
}
fn queue_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 0, 1_000_000).map(|v| v as usize)
}
fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    in_range(d, 0, 1_000_000).map(|v| v as usize)
}
fn max_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    in_range(d, 1, 1000).map(|v| Some(v as u32))
}
fn max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 0, 100_000).map(|v| v as u32)
}
fn optional_max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    max_concurrent(d).map(Some)
}
/// A wait in seconds: 0 (none) to an hour.
fn wait_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 0, 3600)
}
fn optional_wait_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    wait_seconds(d).map(Some)
}
/// A duration in seconds: at least 1, at most a day.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 1, 86_400)
}
fn cooldown<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 1, 30 * 86_400)
}
fn failure_threshold<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    in_range(d, 1, 1000).map(|v| v as u32)
}
fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    in_range(d, 1, u64::MAX)
}
fn base_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    keys::normalise_base_url(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("'{text}' is not an http:// or https:// URL with a host"))
    })
}
fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let origins = Vec::<String>::deserialize(d)?;
    for origin in &origins {
        let valid = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.contains(char::is_whitespace)
                && origin.matches('/').count() == 2);
        if !valid {
            return Err(serde::de::Error::custom(format!(
                "'{origin}' is not an origin: write it as the browser sends it, scheme://host[:port] \
                 with no path (for example \"https://chat.example.com\"), or \"*\" for any"
            )));
        }
    }
    Ok(origins)
}
/// A token's limit: a count from 1 to `max`; no limit is written by leaving the key out.
fn token_limit<'de, D: Deserializer<'de>>(d: D, max: u64, key: &str) -> Result<Option<u32>, D::Error> {
    let value = u64::deserialize(d)?;
    if !(1..=max).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "must be between 1 and {max}, got {value} (remove {key} for no limit)"
        )));
    }
    Ok(Some(value as u32))
}
/// Up to 10,000 requests a minute: the sliding window keeps each start for a minute (16
/// bytes each, so at most 160 KB a token).
fn rpm<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    token_limit(d, 10_000, "rpm")
}
fn token_max_concurrent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    token_limit(d, 100_000, "max_concurrent")
}
fn daily_tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = u64::deserialize(d)?;
    match value {
        0 => Err(serde::de::Error::custom("must be at least 1, got 0 (remove daily_tokens for no limit)")),
        value => Ok(Some(value)),
    }
}
/// An RFC 3339 date-time with its offset, quoted or as a TOML date-time.
fn expires<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Toml(toml::value::Datetime),
    }
    const FORM: &str = "an RFC 3339 date-time with its offset, such as \"2026-12-31T23:59:59Z\" or \
                        \"2026-12-31T12:00:00+02:00\"";
    let text = match Written::deserialize(d) {
        Ok(Written::Text(text)) => text,
        Ok(Written::Toml(datetime)) => datetime.to_string(),
        Err(_) => return Err(serde::de::Error::custom(format!("must be {FORM}"))),
    };
    match crate::utc::parse_rfc3339(&text) {
        Some(unix) => Ok(Some(unix)),
        None => Err(serde::de::Error::custom(format!("'{text}' is not {FORM}"))),
    }
}
fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts.iter().map(|text| Cidr::parse(text).map_err(serde::de::Error::custom)).collect()
}
fn token_ips<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Cidr>>, D::Error> {
    let blocks = cidrs(d)?;
    if blocks.is_empty() {
        return Err(serde::de::Error::custom(
            "an empty list allows no address at all: list the blocks the token may be used from, \
             or remove ips to allow any",
        ));
    }
    Ok(Some(blocks))
}
fn sha256_digest<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    let mut digest = [0u8; 32];
    match hex::decode_to_slice(text.trim(), &mut digest) {
        Ok(()) => Ok(digest),
        Err(_) => Err(serde::de::Error::custom(
            "must be 64 hex characters, the SHA-256 of the token (run `ollama-gateway token hash TOKEN`)",
        )),
    }
}

/// A config that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault (config.toml or keys.txt).
    pub file: PathBuf,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The key at fault, when known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError { file: file.to_path_buf(), line: None, key: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl RawConfig {
    /// Parses config text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let mut error = ConfigError::new(file, err.message().trim().to_string());
            if let Some(span) = err.span() {
                let start = span.start.min(text.len());
                let line_no = text[..start].matches('\n').count() + 1;
                error.line = Some(line_no);
                error.key = key_on_line(text.lines().nth(line_no - 1).unwrap_or(""));
            }
            error
        })
    }
}

/// The key of a `key = value` line, for naming it in an error.
fn key_on_line(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// `config.toml` and the keys file it names, as bytes read from disk, not yet parsed.
///
/// [`Config::load`] reads them once. A reload reads them twice, a moment apart, and goes
/// on only when both reads are the same (`==`), so it never uses a file that an editor is
/// still writing in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The config file.
    pub path: PathBuf,
    /// Its bytes, or why it could not be read.
    pub config: Result<Vec<u8>, String>,
    /// The keys file it names and its bytes (or why they could not be read); `None` when
    /// the config does not parse, so which keys file it names is unknown.
    pub keys: Option<(PathBuf, Result<Vec<u8>, String>)>,
}

impl Files {
    /// Reads the config file at `path` and, when it parses, the keys file it names.
    pub fn read(path: &Path) -> Files {
        let config = std::fs::read(path).map_err(|err| {
            let hint = match err.kind() {
                std::io::ErrorKind::NotFound => " (copy config.example.toml to start, or pass --config PATH)",
                _ => "",
            };
            format!("cannot read the config file: {err}{hint}")
        });
        let mut files = Files { path: path.to_path_buf(), config, keys: None };
        if let Ok((raw, _)) = files.raw_config() {
            let keys_file = path.parent().unwrap_or(Path::new("")).join(&raw.keys_file);
            let bytes = std::fs::read(&keys_file).map_err(|err| {
                let hint = match err.kind() {
                    std::io::ErrorKind::NotFound => " (copy keys.example.txt to start, or set keys_file)",
                    _ => "",
                };
                format!("cannot read the keys file named by keys_file: {err}{hint}")
            });
            files.keys = Some((keys_file, bytes));
        }
        files
    }

    /// The state file `raw` names, beside the config file (as relative paths are).
    pub fn state_file(&self, raw: &RawConfig) -> PathBuf {
        self.path.parent().unwrap_or(Path::new("")).join(&raw.state_file)
    }

    /// The config as written, and its text.
    pub fn raw_config(&self) -> Result<(RawConfig, &str), ConfigError> {
        let bytes = self.config.as_ref().map_err(|why| ConfigError::new(&self.path, why.clone()))?;
        let text = utf8(bytes, &self.path)?;
        Ok((RawConfig::parse(text, &self.path)?, text))
    }

    /// The keys file's path and what it holds, bare keys going to `default_base_url`.
    pub fn keys(&self, default_base_url: &str) -> Result<(&Path, ParsedKeys), ConfigError> {
        match &self.keys {
            Some((path, Ok(bytes))) => Ok((path, keys::parse(&bytes[..], default_base_url))),
            Some((path, Err(why))) => Err(ConfigError::new(path, why.clone())),
            None => Err(ConfigError::new(&self.path, "the keys file is unknown until the config parses")),
        }
    }
}

/// The bytes as text, or an error naming the line and column of the first byte that is not
/// UTF-8 (toml reads only UTF-8).
fn utf8<'b>(bytes: &'b [u8], file: &Path) -> Result<&'b str, ConfigError> {
    std::str::from_utf8(bytes).map_err(|err| {
        let (good, bad) = bytes.split_at(err.valid_up_to());
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line_end = bad.iter().position(|&b| b == b'\n').map_or(bytes.len(), |i| good.len() + i);
        ConfigError {
            file: file.to_path_buf(),
            line: Some(good.iter().filter(|&&b| b == b'\n').count() + 1),
            key: key_on_line(&String::from_utf8_lossy(&bytes[line_start..line_end])),
            message: format!(
                "not UTF-8 text (byte 0x{:02X} at column {}): save the file as UTF-8",
                bad[0],
                good.len() - line_start + 1
            ),
        }
    })
}

/// Follows `[pools.NAME] fallback` from `start`: each pool on the way must have keys and
/// speak the same API, and the chain must end.
fn fallback_chain(tables: &BTreeMap<String, RawPool>, start: &str, with_keys: &[&str]) -> Result<(), String> {
    let provider = |name: &str| tables.get(name).map_or(Provider::Ollama, |p| p.provider);
    let mut chain = vec![start];
    while let Some(next) = tables.get(chain[chain.len() - 1]).and_then(|p| p.fallback.as_deref()) {
        let from = chain[chain.len() - 1];
        if !with_keys.contains(&next) {
            return Err(format!(
                "pool '{from}' falls back to pool '{next}', which has no keys in keys.txt (pools: {})",
                if with_keys.is_empty() { "none".to_string() } else { with_keys.join(", ") }
            ));
        }
        if provider(next) != provider(from) {
            return Err(format!(
                "pool '{from}' falls back to pool '{next}', which speaks another API (provider); \
                 a fallback must take the same requests"
            ));
        }
        if chain.contains(&next) {
            chain.push(next);
            return Err(format!("the fallbacks {} form a loop; end the chain", chain.join(" → ")));
        }
        chain.push(next);
    }
    Ok(())
}

/// The resolved configuration: paths made absolute, keys read, cross-file checks done.
#[derive(Debug)]
pub struct Config {
    /// The config file it came from.
    pub path: PathBuf,
    /// The values as written.
    pub raw: RawConfig,
    /// The keys file, resolved.
    pub keys_file: PathBuf,
    /// The state file, resolved.
    pub state_file: PathBuf,
    /// Every upstream key, in keys.txt order.
    pub keys: Vec<KeyEntry>,
    /// Duplicate key lines (kept once), for a warning.
    pub duplicate_keys: Vec<keys::Duplicate>,
    /// Client tokens.
    pub tokens: Vec<Token>,
}

impl Config {
    /// Reads the config file and the keys file it names, and checks them together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_files(&Files::read(path))
    }

    /// [`Config::load`] on files already read.
    pub fn from_files(files: &Files) -> Result<Config, ConfigError> {
        let (raw, text) = files.raw_config()?;
        let (keys_file, parsed) = files.keys(&raw.upstream.base_url)?;
        let state_file = files.state_file(&raw);
        Config::resolve(&files.path, raw, keys_file.to_path_buf(), state_file, parsed, text)
    }

    /// The cross-file checks of [`Config::load`], on already-read parts.
    pub fn resolve(
        path: &Path,
        raw: RawConfig,
        keys_file: PathBuf,
        state_file: PathBuf,
        parsed: ParsedKeys,
        config_text: &str,
    ) -> Result<Config, ConfigError> {
        if let Some(first) = parsed.errors.first() {
            let mut error = ConfigError::new(&keys_file, first.message.clone());
            error.line = Some(first.line);
            if parsed.errors.len() > 1 {
                error.message.push_str(&format!(
                    " (and {} more bad lines: run `ollama-gateway keys` to see them all)",
                    parsed.errors.len() - 1
                ));
            }
            return Err(error);
        }
        let line_of =
            |offset: usize| config_text.get(..offset).map(|before| before.matches('\n').count() + 1);
        let pools = parsed.pools();
        let mut tokens: Vec<Token> = Vec::with_capacity(raw.tokens.len());
        for raw_token in &raw.tokens {
            let name = raw_token.name.get_ref();
            let fail = |message: String| ConfigError {
                file: path.to_path_buf(),
                line: line_of(raw_token.name.span().start),
                key: Some("tokens".to_string()),
                message,
            };
            if name.trim().is_empty() {
                return Err(fail("a token has an empty name; names appear in logs instead of tokens".into()));
            }
            if tokens.iter().any(|t| t.name == *name) {
                return Err(fail(format!("two tokens are named '{name}'; give each its own name")));
            }
            if let Some(other) = tokens.iter().find(|t| secret::digest_eq(&t.digest, &raw_token.sha256)) {
                return Err(fail(format!(
                    "tokens '{}' and '{name}' have the same sha256; give each client its own token",
                    other.name
                )));
            }
            if raw_token.pools.is_some() && raw_token.pool != keys::DEFAULT_POOL {
                return Err(fail(format!(
                    "token '{name}' sets both pool and pools; list every pool in pools"
                )));
            }
            let token_pools = raw_token.pools.clone().unwrap_or_else(|| vec![raw_token.pool.clone()]);
            if token_pools.is_empty() {
                return Err(fail(format!("token '{name}' has an empty pools list; name at least one pool")));
            }
            for pool in &token_pools {
                if !pools.contains(&pool.as_str()) {
                    return Err(fail(format!(
                        "token '{name}' draws from pool '{pool}', but {} has no keys in it (pools: {})",
                        keys_file.display(),
                        if pools.is_empty() { "none".to_string() } else { pools.join(", ") }
                    )));
                }
            }
            tokens.push(Token {
                name: name.clone(),
                digest: raw_token.sha256,
                pool: token_pools[0].clone(),
                pools: token_pools,
                models: raw_token.models.clone(),
                scopes: raw_token.scopes.clone(),
                limits: TokenLimits {
                    rpm: raw_token.rpm,
                    max_concurrent: raw_token.max_concurrent,
                    daily_tokens: raw_token.daily_tokens,
                    expires: raw_token.expires,
                    ips: raw_token.ips.clone(),
                },
            });
        }
        for (name, pool) in &raw.pools {
            let problem = match (pool.provider, &pool.base_url) {
                (Provider::Openai, None) => {
                    "provider = \"openai\" needs a base_url, such as \"https://openrouter.ai/api/v1\""
                }
                (Provider::Ollama, Some(_)) => {
                    "base_url is for provider = \"openai\" pools; an Ollama pool's URLs are in keys.txt"
                }
                _ => continue,
            };
            return Err(ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: Some(format!("pools.{name}")),
                message: problem.into(),
            });
        }
        for name in raw.pools.keys() {
            if let Err(problem) = fallback_chain(&raw.pools, name, &pools) {
                return Err(ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: Some(format!("pools.{name}.fallback")),
                    message: problem,
                });
            }
        }
        if tokens.is_empty() && !raw.allow_anonymous {
            return Err(ConfigError::new(
                path,
                "no [[tokens]] are configured, so every request would be refused: add one \
                 (`ollama-gateway token new` prints it) or set allow_anonymous = true",
            ));
        }
        if raw.allow_anonymous && !pools.contains(&keys::DEFAULT_POOL) {
            return Err(ConfigError::new(
                &keys_file,
                "allow_anonymous serves the 'default' pool, but it has no keys: add lines before any [section]",
            ));
        }
        let mut keys = parsed.entries;
        for key in &mut keys {
            // Keys of an OpenAI-compatible pool all go to its API base.
            if let Some(base) = raw.pools.get(&key.pool).filter(|p| p.provider == Provider::Openai) {
                key.base_url = base.base_url.clone().unwrap_or_default();
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            raw,
            keys_file,
            state_file,
            keys,
            duplicate_keys: parsed.duplicates,
            tokens,
        })
    }

    /// Whether a pool's keys are for an OpenAI-compatible API.
    pub fn is_openai_pool(&self, pool: &str) -> bool {
        self.raw.pools.get(pool).is_some_and(|p| p.provider == Provider::Openai)
    }

    /// The keys of one pool, in keys.txt order.
    pub fn pool_keys(&self, pool: &str) -> Vec<KeyEntry> {
        self.keys.iter().filter(|k| k.pool == pool).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        RawConfig::parse(text, Path::new("config.toml"))
    }

    #[test]
    fn empty_config_takes_every_default() {
        let raw = parse("").unwrap();
        assert_eq!(raw.listen.to_string(), "127.0.0.1:11435");
        assert_eq!(raw.workers, 256);
        assert_eq!(raw.keys_file, PathBuf::from("keys.txt"));
        assert_eq!(raw.upstream.base_url, "https://ollama.com");
        assert_eq!(raw.upstream.max_attempts, None);
        assert_eq!((raw.upstream.failover_deadline_secs, raw.upstream.max_concurrent_per_key), (60, 0));
        assert_eq!(raw.upstream.slot_wait_secs, 30);
        assert_eq!(raw.upstream.strategy, Strategy::RoundRobin);
        assert_eq!(raw.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(raw.reasoning_field, ReasoningField::ReasoningContent);
        assert_eq!(raw.max_connections, 0);
        assert_eq!(raw.header_timeout_secs, 10);
        assert_eq!(raw.min_body_bytes_per_sec, 1024);
        assert_eq!(raw.max_inflight_body_bytes, 256 * 1024 * 1024);
        assert_eq!(raw.upstream.request_timeout_secs, 600);
        assert_eq!(raw.log_format, crate::logline::LogFormat::Text);
        assert_eq!(parse("log_format = \"json\"\n").unwrap().log_format, crate::logline::LogFormat::Json);
        assert!(!raw.allow_body_token && parse("allow_body_token = true\n").unwrap().allow_body_token);
    }

    #[test]
    fn the_example_config_parses_and_shows_the_defaults() {
        let example = parse(include_str!("../config.example.toml")).unwrap();
        let empty = parse("").unwrap();
        assert_eq!(format!("{:?}", example.upstream), format!("{:?}", empty.upstream));
        let limits = |raw: &RawConfig| {
            (
                raw.workers,
                raw.queue_size,
                raw.max_connections,
                raw.client_timeout_secs,
                raw.header_timeout_secs,
                raw.min_body_bytes_per_sec,
                raw.max_inflight_body_bytes,
                raw.max_body_bytes,
            )
        };
        assert_eq!(limits(&example), limits(&empty));
        assert_eq!(format!("{:?}", example.metrics), format!("{:?}", empty.metrics));
    }

    #[test]
    fn metrics_are_open_to_loopback_by_default_and_a_list_replaces_it() {
        let default = parse("").unwrap().metrics;
        let shown: Vec<String> = default.allow_from.iter().map(ToString::to_string).collect();
        assert_eq!((default.enabled, shown), (true, vec!["127.0.0.1/32".to_string(), "::1/128".to_string()]));
        let set = parse("[metrics]\nenabled = false\nallow_from = [\"10.0.0.0/8\", \"fd00::/8\"]\n").unwrap();
        let shown: Vec<String> = set.metrics.allow_from.iter().map(ToString::to_string).collect();
        assert_eq!(
            (set.metrics.enabled, shown),
            (false, vec!["10.0.0.0/8".to_string(), "fd00::/8".to_string()])
        );
        assert!(parse("[metrics]\nallow_from = []\n").unwrap().metrics.allow_from.is_empty());
    }

    #[test]
    fn the_public_stats_page_is_off_unless_asked_for() {
        assert!(!parse("").unwrap().status.public);
        assert!(parse("[status]\npublic = true\n").unwrap().status.public);
        let error = parse("[status]\npublc = true\n").unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn full_config_is_read() {
        let raw = parse(&format!(
            "listen = \"0.0.0.0:8080\"\nworkers = 8\nreasoning_field = \"both\"\n\
             [upstream]\nbase_url = \"http://10.0.0.2:11434/api/\"\nstrategy = \"random\"\n\
             [[tokens]]\nname = \"laptop\"\nsha256 = \"{HASH}\"\npool = \"team\"\n"
        ))
        .unwrap();
        assert_eq!(raw.listen.port(), 8080);
        assert_eq!(raw.workers, 8);
        assert_eq!(raw.reasoning_field, ReasoningField::Both);
        assert_eq!(raw.upstream.base_url, "http://10.0.0.2:11434");
        assert_eq!(raw.upstream.strategy, Strategy::Random);
        assert_eq!(raw.tokens[0].pool, "team");
        assert_eq!(hex::encode(raw.tokens[0].sha256), HASH);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            ("workers = 8\nworkerz = 3\n", 2, Some("workerz"), "unknown field"),
            ("workers = \"many\"\n", 1, Some("workers"), "invalid type"),
            ("workers = 0\n", 1, Some("workers"), "between 1 and"),
            ("listen = \"localhost\"\n", 1, Some("listen"), "address"),
            ("\n[upstream]\nstrategy = \"fastest\"\n", 3, Some("strategy"), "unknown variant"),
            ("[upstream]\nbase_url = \"ftp://x\"\n", 2, Some("base_url"), "http://"),
            ("[[tokens]]\nname = \"a\"\nsha256 = \"abc\"\n", 3, Some("sha256"), "64 hex"),
            ("reasoning_field = \"thoughts\"\n", 1, Some("reasoning_field"), "unknown variant"),
            ("[metrics]\nallow_from = [\"10.0.0.0/33\"]\n", 2, Some("allow_from"), "0 to 32"),
            ("[metrics]\nallow_from = [\"10.1.2.3/8\"]\n", 2, Some("allow_from"), "10.0.0.0/8"),
            ("[metrics]\nallow_from = \"10.0.0.0/8\"\n", 2, Some("allow_from"), "invalid type"),
            ("[metrics]\nenable = true\n", 2, Some("enable"), "unknown field"),
            ("workers = 8\nlog_format = \"xml\"\n", 2, Some("log_format"), "expected `text` or `json`"),
            ("allow_body_token = \"yes\"\n", 1, Some("allow_body_token"), "invalid type"),
        ];
        for (text, line, key, needle) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, Some(line), "{text}: {err}");
            assert_eq!(err.key.as_deref(), key, "{text}: {err}");
            assert!(err.to_string().contains(needle), "{text}: {err}");
            assert!(err.to_string().starts_with(&format!("config.toml:{line}: ")), "{err}");
        }
    }

    #[test]
    fn token_limits_and_trusted_proxies_are_read() {
        let raw = parse(&format!(
            "trusted_proxies = [\"127.0.0.1/32\", \"fd00::/8\"]\n\
             [[tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\nrpm = 60\nmax_concurrent = 2\n\
             expires = \"2026-12-31T23:59:59Z\"\nips = [\"10.0.0.0/8\", \"::1\"]\n\
             [[tokens]]\nname = \"b\"\nsha256 = \"{HASH}\"\nexpires = 2026-12-31T23:59:59+01:00\n"
        ))
        .unwrap();
        assert_eq!(format!("{:?}", raw.trusted_proxies), "[127.0.0.1/32, fd00::/8]");
        let a = &raw.tokens[0];
        assert_eq!((a.rpm, a.max_concurrent, a.expires), (Some(60), Some(2), Some(1_798_761_599)));
        assert_eq!(format!("{:?}", a.ips), "Some([10.0.0.0/8, ::1/128])");
        assert_eq!(raw.tokens[1].expires, Some(1_798_761_599 - 3600), "a TOML date-time, unquoted");
        let example = parse(include_str!("../config.example.toml")).unwrap();
        assert!(example.trusted_proxies.is_empty() && parse("").unwrap().trusted_proxies.is_empty());
        assert!(example.tokens.iter().all(|t| (t.rpm, t.max_concurrent, t.expires) == (None, None, None)));
        let none = parse(&format!("[[tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\n")).unwrap();
        let none = &none.tokens[0];
        assert_eq!(
            (none.rpm, none.max_concurrent, none.expires, none.ips.is_none()),
            (None, None, None, true)
        );
    }

    #[test]
    fn bad_token_limits_name_file_line_and_key() {
        let token = format!("[[tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\n");
        let cases = [
            ("rpm = 0", "rpm", "between 1 and"),
            ("rpm = -5", "rpm", "invalid value"),
            ("rpm = \"fast\"", "rpm", "invalid type"),
            ("max_concurrent = 0", "max_concurrent", "remove max_concurrent for no limit"),
            ("expires = \"tomorrow\"", "expires", "'tomorrow' is not an RFC 3339 date-time"),
            ("expires = \"2026-12-31T23:59:59\"", "expires", "with its offset"),
            ("expires = 2026-12-31", "expires", "'2026-12-31' is not an RFC 3339"),
            ("expires = 2026-12-31T23:59:59", "expires", "is not an RFC 3339"),
            ("expires = 5", "expires", "must be an RFC 3339"),
            ("ips = [\"10.0.0.0/33\"]", "ips", "from 0 to 32"),
            ("ips = [\"10.1.0.0/8\"]", "ips", "did you mean \"10.0.0.0/8\""),
            ("ips = [\"my-laptop\"]", "ips", "not an address block"),
            ("ips = []", "ips", "remove ips to allow any"),
        ];
        for (line, key, needle) in cases {
            let text = format!("{token}{line}\n");
            let err = parse(&text).expect_err(line);
            assert_eq!((err.line, err.key.as_deref()), (Some(4), Some(key)), "{line}: {err}");
            assert!(err.to_string().contains(needle), "{line}: {err}");
        }
        let err = parse("workers = 8\ntrusted_proxies = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(2), Some("trusted_proxies")), "{err}");
    }

    #[test]
    fn a_config_that_is_not_utf8_names_the_line_of_the_first_bad_byte() {
        let cases: [(&[u8], &str); 3] = [
            (
                b"workers = 8\n\n[[tokens]]\nname = \"caf\xe9\"\n",
                "config.toml:4: name: not UTF-8 text (byte 0xE9 at column 12)",
            ),
            (b"\xff\xfel\x00i\x00", "config.toml:1: not UTF-8 text (byte 0xFF at column 1)"),
            (b"# \xc3\n", "config.toml:1: not UTF-8 text (byte 0xC3 at column 3)"),
        ];
        for (bytes, want) in cases {
            let files = Files { path: PathBuf::from("config.toml"), config: Ok(bytes.to_vec()), keys: None };
            let err = files.raw_config().expect_err(want).to_string();
            assert!(err.starts_with(want) && err.ends_with("save the file as UTF-8"), "{err}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_allowed() {
        assert_eq!(parse("\u{feff}workers = 8\n").map(|raw| raw.workers), Ok(8));
    }

    fn resolve(config: &str, keys_text: &str) -> Result<Config, ConfigError> {
        let raw = parse(config)?;
        let parsed = keys::parse_str(keys_text, &raw.upstream.base_url);
        Config::resolve(
            Path::new("config.toml"),
            raw,
            PathBuf::from("keys.txt"),
            PathBuf::from("state.json"),
            parsed,
            config,
        )
    }

    #[test]
    fn no_tokens_refuses_to_start_unless_anonymous_is_allowed() {
        let err = resolve("", "http://127.0.0.1:11434\n").unwrap_err();
        assert!(err.message.contains("allow_anonymous"), "{err}");
        assert!(resolve("allow_anonymous = true", "http://127.0.0.1:11434\n").is_ok());
    }

    #[test]
    fn a_token_must_draw_from_an_existing_pool() {
        let config = format!("[[tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\npool = \"team\"\n");
        let err = resolve(&config, "http://127.0.0.1:11434\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("pool 'team'") && err.message.contains("pools: default"), "{err}");
        assert!(resolve(&config, "[team]\nhttp://127.0.0.1:11434\n").is_ok());
    }

    #[test]
    fn duplicate_token_names_and_hashes_are_refused() {
        let one = format!("[[tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\n");
        let same_name = format!("{one}[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\n", "0".repeat(64));
        assert!(resolve(&same_name, "http://h:1\n").unwrap_err().message.contains("two tokens"));
        let same_hash = format!("{one}[[tokens]]\nname = \"b\"\nsha256 = \"{HASH}\"\n");
        assert!(resolve(&same_hash, "http://h:1\n").unwrap_err().message.contains("same sha256"));
    }

    #[test]
    fn a_bad_keys_line_is_reported_with_its_file_and_line() {
        let config = format!("[[tokens]]\nname = \"a\"\nsha256 = \"{HASH}\"\n");
        let err = resolve(&config, "# keys\nhttp://h:1\nnot a key\n").unwrap_err();
        assert_eq!(err.file, PathBuf::from("keys.txt"));
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().starts_with("keys.txt:3: "), "{err}");
    }
}
