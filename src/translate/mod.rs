//! Translation between the OpenAI (and Anthropic) APIs and Ollama's native API.
//!
//! In scope: pure functions from JSON to JSON, and sans-IO stream translators that take one
//! upstream NDJSON line at a time and return the bytes to write to the client.
//! Out of scope: sockets, files, threads, the clock (callers pass the current time in) and
//! anything about keys or tokens. `translate` never does IO; `server` never parses bodies.

pub mod anthropic;
pub mod chat;
pub mod completions;
pub mod embeddings;
mod fields;
pub mod models;
pub mod passthrough;
mod reply;
pub mod responses;
mod stream;
#[cfg(test)]
mod testkit;

pub use reply::ReplyContext;
pub use stream::sse_data;

pub use crate::config::ReasoningField;

/// Whether a stream goes on after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next upstream line.
    Continue,
    /// The reply is complete (or ended with an error event): stop reading upstream.
    Done,
}

/// Token counts of a finished reply, for logs and key accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (`prompt_eval_count`).
    pub prompt: u64,
    /// Generated tokens (`eval_count`).
    pub completion: u64,
}

/// A sans-IO translator of one upstream NDJSON stream into what the client receives.
pub trait LineTranslator: Send {
    /// Translates one upstream line (without its `\n`; may end in `\r`), appending the
    /// bytes to send now to `out`.
    fn push_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Flow;

    /// The upstream ended before a final line: at EOF (`error` is `None`) or on a read
    /// error (its text). Appends the closing error event to `out`.
    fn upstream_ended(&mut self, error: Option<&str>, out: &mut Vec<u8>);

    /// Token counts, once the final line has been seen.
    fn usage(&self) -> Option<Usage>;
}

/// A random id such as `chatcmpl-4f9aK2...`: `prefix` then 24 alphanumeric characters.
pub fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

/// Unix seconds (truncated) of an RFC 3339 timestamp such as
/// `2023-08-04T08:52:19.385406455-07:00`; `None` when it does not parse.
pub fn rfc3339_to_unix(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse::<i64>().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Skip fractional seconds, then read the offset.
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes().first()? {
        b'Z' | b'z' if rest.len() == 1 => 0,
        sign @ (b'+' | b'-') if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let minutes = rest[1..3].parse::<i64>().ok()? * 60 + rest[4..6].parse::<i64>().ok()?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_as_ollama_writes_them() {
        let cases = [
            ("2023-11-14T22:13:20Z", Some(1_700_000_000)),
            ("2023-11-14T22:13:20.123Z", Some(1_700_000_000)),
            ("2023-08-04T08:52:19.385406455-07:00", Some(1_691_164_339)),
            ("2023-08-04T19:22:45.499127Z", Some(1_691_176_965)),
            ("1970-01-01T00:00:00+01:00", Some(-3600)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800)),
            ("yesterday", None),
            ("2023-13-01T00:00:00Z", None),
            ("2023-11-14T22:13:20", None),
        ];
        for (text, want) in cases {
            assert_eq!(rfc3339_to_unix(text), want, "{text}");
        }
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let (a, b) = (random_id("chatcmpl-"), random_id("chatcmpl-"));
        assert!(a.starts_with("chatcmpl-") && a.len() == 33);
        assert_ne!(a, b);
    }
}
