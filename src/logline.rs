//! The log's two formats: env_logger's text lines (the default) and, with
//! `log_format = "json"`, one JSON object per line for log shippers; and the request line
//! `server` writes for each finished request, in either.
//!
//! In JSON every line is `{"time", "level", "target", "message"}` followed by the record's
//! key-values, so a shipper can parse each line of stderr, start-up, warnings and panics
//! included. The request line carries its fields as key-values (`id`, `method`, `path`,
//! `token`, `key`, `status`, `duration_ms`, `ttfb_ms`, …) instead of packing them into the
//! message. In the text format it is exactly the line it has always been.
//!
//! In scope: which format is in force (a process-wide switch, since the logger is
//! process-wide: set from the config at start and on each reload), a record as a JSON line,
//! and the request line's fields in both formats. Out of scope: writing to stderr and
//! `RUST_LOG` filtering (`main.rs`), and what callers put in a line: they keep keys and
//! tokens out (a key appears only as its masked label, a token only by its name), and
//! JSON escaping changes none of that.

use crate::error::Family;
use log::kv::{self, Key, Value, VisitSource, VisitValue};
use log::{Level, Record};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How log lines are written (`log_format` in config.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// env_logger's `[time LEVEL target] message`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether lines are written as JSON: read by the logger for every record.
static JSON: AtomicBool = AtomicBool::new(false);

/// Puts `format` in force for every line written from now on.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// The format in force.
pub fn format() -> LogFormat {
    match JSON.load(Ordering::Relaxed) {
        true => LogFormat::Json,
        false => LogFormat::Text,
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// A log record as one JSON line (without its newline): time, level, target and message,
/// then its key-values in the order given.
pub fn json_record(record: &Record<'_>, unix_millis: u64) -> String {
    let mut object = head(unix_millis, record.level(), record.target(), &record.args().to_string());
    // A key-value that cannot be visited is left out; the rest of the line still stands.
    let _ = record.key_values().visit(&mut Fields(&mut object));
    Json::Object(object).to_string()
}

/// A line that is not a log record (the error a command ends with) as a JSON line.
pub fn json_message(unix_millis: u64, level: Level, target: &str, message: &str) -> String {
    Json::Object(head(unix_millis, level, target, message)).to_string()
}

fn head(unix_millis: u64, level: Level, target: &str, message: &str) -> Map<String, Json> {
    let mut object = Map::new();
    object.insert("time".into(), crate::utc::rfc3339_millis(unix_millis).into());
    object.insert("level".into(), level.as_str().into());
    object.insert("target".into(), target.into());
    object.insert("message".into(), message.into());
    object
}

/// Adds each key-value of a record to the JSON object.
struct Fields<'o>(&'o mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let mut json = Json::Null;
        value.visit(ToJson(&mut json))?;
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

/// A key-value's value as JSON: numbers, booleans and strings as themselves, `None` as
/// null, anything else as its `Display` text.
struct ToJson<'j>(&'j mut Json);

impl<'v> VisitValue<'v> for ToJson<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), kv::Error> {
        *self.0 = Json::String(value.to_string());
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        *self.0 = Json::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        *self.0 = value.into();
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        *self.0 = value.into();
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        // Not finite (which no duration is): null, as JSON has no such number.
        *self.0 = value.into();
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        *self.0 = value.into();
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        *self.0 = value.into();
        Ok(())
    }
}

/// What the log says of one finished request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The request id (also sent as `X-Request-Id`).
    pub id: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path as sent, without its query (which may hold `?api_key=`).
    pub path: &'a str,
    /// The API family it was served as (`None`: the gateway's own routes, unknown paths).
    pub family: Option<Family>,
    /// The token's name.
    pub token: Option<&'a str>,
    /// The pool of the key that answered last.
    pub pool: Option<&'a str>,
    /// The masked label of that key.
    pub key: Option<&'a str>,
    /// The model asked for.
    pub model: Option<&'a str>,
    /// The status answered.
    pub status: u16,
    /// Upstream requests made.
    pub attempts: u32,
    /// From the request's head to the end of its answer.
    pub duration: Duration,
    /// From the request's head to the first byte of its answer, when it got one.
    pub first_byte: Option<Duration>,
    /// Prompt and completion tokens of the reply, when known.
    pub tokens: Option<(u64, u64)>,
    /// What else happened (` client disconnected mid-stream`), with a leading space.
    pub note: &'a str,
}

impl RequestLine<'_> {
    /// Writes the line at `level` under `target` (the module the text format has always
    /// named, so `RUST_LOG` directives keep matching it), in the format in force.
    pub fn log(&self, level: Level, target: &str) {
        match format() {
            LogFormat::Text => log::log!(target: target, level, "{self}"),
            LogFormat::Json => log::log!(
                target: target,
                level,
                id = self.id,
                method = self.method,
                path = self.path,
                family = self.family.map(Family::label),
                token = self.token,
                pool = self.pool,
                key = self.key,
                model = self.model,
                status = self.status,
                attempts = self.attempts,
                duration_ms = millis(self.duration),
                ttfb_ms = self.first_byte.map(millis),
                prompt_tokens = self.tokens.map(|(prompt, _)| prompt),
                completion_tokens = self.tokens.map(|(_, completion)| completion),
                note = Some(self.note.trim()).filter(|note| !note.is_empty());
                "{} {} {}", self.method, self.path, self.status
            ),
        }
    }
}

/// A duration in milliseconds, to a tenth (as the text line shows it).
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The text format's line.
impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} token={} pool={} key=\"{}\" model={} status={} attempts={} {:.1}ms",
            self.id,
            self.method,
            self.path,
            self.token.unwrap_or("-"),
            self.pool.unwrap_or("-"),
            self.key.unwrap_or("-"),
            self.model.unwrap_or("-"),
            self.status,
            self.attempts,
            self.duration.as_secs_f64() * 1000.0,
        )?;
        if let Some((prompt, completion)) = self.tokens {
            write!(f, " tokens={prompt}+{completion}")?;
        }
        f.write_str(self.note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line() -> RequestLine<'static> {
        RequestLine {
            id: "0000002a",
            method: "POST",
            path: "/v1/chat/completions",
            family: Some(Family::OpenAi),
            token: Some("alice"),
            pool: Some("default"),
            key: Some("ka-0…AAAA"),
            model: Some("llama3.2"),
            status: 200,
            attempts: 2,
            duration: Duration::from_micros(12_345),
            first_byte: Some(Duration::from_micros(4_051)),
            tokens: Some((11, 7)),
            note: " client disconnected at the end",
        }
    }

    #[test]
    fn the_text_line_is_the_one_it_always_was() {
        assert_eq!(
            line().to_string(),
            "0000002a POST /v1/chat/completions token=alice pool=default key=\"ka-0…AAAA\" \
             model=llama3.2 status=200 attempts=2 12.3ms tokens=11+7 client disconnected at the end"
        );
        let bare = RequestLine {
            token: None,
            pool: None,
            key: None,
            model: None,
            tokens: None,
            note: "",
            status: 404,
            attempts: 0,
            ..line()
        };
        assert_eq!(
            bare.to_string(),
            "0000002a POST /v1/chat/completions token=- pool=- key=\"-\" model=- status=404 attempts=0 12.3ms"
        );
    }

    /// Keeps the lines each thread logs, in the format in force, so a test reads its own.
    struct Capture;

    thread_local! {
        static CAPTURED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &Record<'_>) {
            let line = match format() {
                LogFormat::Json => json_record(record, 1_700_000_000_042),
                LogFormat::Text => format!("{} {}] {}", record.level(), record.target(), record.args()),
            };
            CAPTURED.with(|lines| lines.borrow_mut().push(line));
        }

        fn flush(&self) {}
    }

    /// What `line.log` writes, as text and as JSON. The only test that sets the format.
    fn logged(line: &RequestLine<'_>) -> (String, Json) {
        static CAPTURE: Capture = Capture;
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
        CAPTURED.with(|lines| lines.borrow_mut().clear());
        line.log(Level::Info, "ollama_gateway::server");
        set_format(LogFormat::Json);
        line.log(Level::Info, "ollama_gateway::server");
        set_format(LogFormat::Text);
        let lines = CAPTURED.with(|lines| lines.take());
        assert_eq!(lines.len(), 2, "{lines:?}");
        (lines[0].clone(), serde_json::from_str(&lines[1]).expect("one JSON object"))
    }

    #[test]
    fn a_request_line_is_one_json_object_with_typed_fields() {
        let (text, json) = logged(&line());
        assert_eq!(text, format!("INFO ollama_gateway::server] {}", line()));
        assert_eq!(
            json,
            json!({
                "time": "2023-11-14T22:13:20.042Z",
                "level": "INFO",
                "target": "ollama_gateway::server",
                "message": "POST /v1/chat/completions 200",
                "id": "0000002a",
                "method": "POST",
                "path": "/v1/chat/completions",
                "family": "openai",
                "token": "alice",
                "pool": "default",
                "key": "ka-0…AAAA",
                "model": "llama3.2",
                "status": 200,
                "attempts": 2,
                "duration_ms": 12.3,
                "ttfb_ms": 4.1,
                "prompt_tokens": 11,
                "completion_tokens": 7,
                "note": "client disconnected at the end",
            })
        );
        let bare =
            RequestLine { token: None, model: None, first_byte: None, tokens: None, note: "", ..line() };
        let (_, json) = logged(&bare);
        for field in ["token", "model", "ttfb_ms", "prompt_tokens", "completion_tokens", "note"] {
            assert_eq!(json[field], Json::Null, "{field}: {json}");
        }
        assert_eq!(format(), LogFormat::Text, "text again, as by default");
    }

    #[test]
    fn messages_are_escaped_into_one_line() {
        let nasty = "say \"hi\"\\ then\nnew line\r\ttab \u{1} bell\u{7f} é 🦙 </script>";
        let text = json_record(
            &Record::builder()
                .level(Level::Warn)
                .target("ollama_gateway::live")
                .args(format_args!("{nasty}"))
                .build(),
            0,
        );
        assert!(!text.contains('\n') && !text.contains('\r') && !text.contains('\u{1}'), "{text}");
        assert!(text.contains(r#"say \"hi\"\\ then\nnew line\r\ttab \u0001"#), "{text}");
        let parsed: Json = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            parsed,
            json!({"time": "1970-01-01T00:00:00.000Z", "level": "WARN", "target": "ollama_gateway::live", "message": nasty})
        );
        let error: Json =
            serde_json::from_str(&json_message(0, Level::Error, "ollama_gateway", "a\nb")).unwrap();
        assert_eq!(error["message"], "a\nb");
        assert_eq!(error["level"], "ERROR");
    }
}
