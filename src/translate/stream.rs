//! What every stream translator shares: reading upstream lines, ending, and SSE framing.
//!
//! A translator of native NDJSON into client events (`chat`, `completions`, `anthropic`,
//! `responses`) implements [`Events`]: what one upstream object and one failure write.
//! [`LineTranslator`] then comes with it, the same for all: blank lines are skipped, an
//! `{"error": …}` line or a line that is not a JSON object fails the stream, the `done`
//! object ends it with its usage, nothing is written after the end, and an upstream that
//! stops early fails it with its read error (or "incomplete").
//! In scope: that reading and ending, and the two SSE framings (`data:` only, and named
//! `event:` + `data:`). Out of scope: what the events say (each API's module).

use super::reply::usage_of;
use super::{Flow, LineTranslator, Usage};
use serde_json::Value;

/// What a stream that ends without its final line is told.
pub(crate) const INCOMPLETE: &str = "upstream closed the stream before finishing; the reply is incomplete";

/// The most characters of a bad upstream line quoted in an error event.
const QUOTED_LINE_CHARS: usize = 200;

/// Appends one SSE event `data: <payload>\n\n` to `out`.
pub fn sse_data(payload: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends one SSE event whose payload is `data` as JSON, written straight into `out`.
pub(crate) fn sse_json(data: &impl serde::Serialize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    let start = out.len();
    if serde_json::to_writer(&mut *out, data).is_err() {
        // Only a map with non-string keys fails, which no event of ours has; an event
        // that cannot be written is dropped whole rather than cut.
        out.truncate(start - b"data: ".len());
        return;
    }
    out.extend_from_slice(b"\n\n");
}

/// Appends one named SSE event, `event: NAME\ndata: JSON\n\n`, to `out`.
pub(crate) fn sse_event(name: &str, data: &Value, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    let data_start = out.len();
    sse_json(data, out);
    if out.len() == data_start {
        out.truncate(start);
    }
}

/// What one stream translator writes; [`LineTranslator`] is implemented for every `Events`
/// below, so the reading and ending rules are written once.
pub(crate) trait Events: Send {
    /// Writes what one upstream object gives; `done` when it is the final one, after which
    /// the stream has ended.
    fn object(&mut self, object: &Value, done: bool, out: &mut Vec<u8>);

    /// Writes what ends a broken stream, given the error's text.
    fn fail(&mut self, message: &str, out: &mut Vec<u8>);

    /// The shared state, read ([`ending_field!`] writes this and [`Events::ending_mut`]).
    fn ending(&self) -> &Ending;

    /// The shared state, to update.
    fn ending_mut(&mut self) -> &mut Ending;
}

/// Implements [`Events::ending`] and [`Events::ending_mut`] on the type's `ending` field,
/// the same two lines in every translator.
macro_rules! ending_field {
    () => {
        fn ending(&self) -> &$crate::translate::stream::Ending {
            &self.ending
        }

        fn ending_mut(&mut self) -> &mut $crate::translate::stream::Ending {
            &mut self.ending
        }
    };
}
pub(crate) use ending_field;

/// The state every stream keeps: whether it has ended, and the usage of its final object.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// After the final object or a failure: nothing more is written.
    ended: bool,
    /// The final object's token counts; `None` until then, and after a failure.
    usage: Option<Usage>,
}

impl<T: Events> LineTranslator for T {
    fn push_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Flow {
        if self.ending().ended {
            return Flow::Done;
        }
        let object = match read_line(line) {
            Ok(Some(object)) => object,
            Ok(None) => return Flow::Continue,
            Err(message) => {
                self.fail(&message, out);
                self.ending_mut().ended = true;
                return Flow::Done;
            }
        };
        let done = object.get("done").and_then(Value::as_bool) == Some(true);
        self.object(&object, done, out);
        if !done {
            return Flow::Continue;
        }
        *self.ending_mut() = Ending { ended: true, usage: Some(usage_of(&object)) };
        Flow::Done
    }

    fn upstream_ended(&mut self, error: Option<&str>, out: &mut Vec<u8>) {
        if !self.ending().ended {
            self.fail(ended_message(error), out);
            self.ending_mut().ended = true;
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.ending().usage
    }
}

/// The text of an upstream `{"error": …}` line (a string or an object with `message`).
fn upstream_error_text(error: &Value) -> String {
    let text = match error {
        Value::String(text) => text.clone(),
        Value::Object(obj) => match obj.get("message") {
            Some(Value::String(text)) => text.clone(),
            _ => error.to_string(),
        },
        other => other.to_string(),
    };
    if text.trim().is_empty() {
        "upstream reported an error without a message".to_string()
    } else {
        text
    }
}

/// One upstream NDJSON line of a stream being translated: `Ok(None)` for a blank line (to
/// skip), the object, or the text of the error event that must end the stream (an
/// `{"error": …}` line, or a line that is not a JSON object).
fn read_line(line: &[u8]) -> Result<Option<Value>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = match crate::json_cost::parse_tree(line) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            let quoted: String = String::from_utf8_lossy(line).chars().take(QUOTED_LINE_CHARS).collect();
            return Err(format!("upstream sent an invalid line (expected a JSON object): {quoted}"));
        }
    };
    match value.get("error").filter(|error| !error.is_null()) {
        Some(error) => Err(upstream_error_text(error)),
        None => Ok(Some(value)),
    }
}

/// The error event's text when upstream ends before its final line: its read error, or
/// that the reply is incomplete.
fn ended_message(error: Option<&str>) -> &str {
    match error {
        Some(text) if !text.trim().is_empty() => text,
        _ => INCOMPLETE,
    }
}
