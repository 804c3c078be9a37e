//! Native pass-through: Ollama's own NDJSON (or JSON) answer, line by line, unchanged.
//!
//! In scope: copying each upstream line to the client as it arrives, noting the token
//! counts of the line that has them (the `done` line), and ending a broken stream the way
//! Ollama itself does, with an `{"error": "…"}` line. Out of scope: routing, scopes and
//! model rewriting (`native` at the crate root).

use super::{Flow, LineTranslator, Usage};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

/// Copies upstream lines through.
#[derive(Debug)]
pub struct Passthrough {
    /// Whether the answer ends with a `"done": true` line (chat, generate); other answers
    /// (tags, pull progress) just end.
    expects_done: bool,
    usage: Option<Usage>,
    finished: bool,
}

impl Passthrough {
    /// A pass-through for an answer that does (chat, generate) or does not end with a
    /// `done` line.
    pub fn new(expects_done: bool) -> Passthrough {
        Passthrough { expects_done, usage: None, finished: false }
    }
}

/// The fields of an answer line that the gateway reads; the rest is skipped unbuilt, so a
/// long `/api/embed` answer costs no tree.
#[derive(Deserialize)]
struct Counts<'a> {
    #[serde(borrow)]
    prompt_eval_count: Option<&'a RawValue>,
    #[serde(borrow)]
    eval_count: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    done: Option<&'a RawValue>,
}

/// OpenAI's `usage` object.
#[derive(Deserialize)]
struct OpenAiUsage<'a> {
    #[serde(borrow)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    completion_tokens: Option<&'a RawValue>,
}

/// A count as `as_u64` reads it: 0 unless a whole non-negative number.
fn count(raw: Option<&RawValue>) -> u64 {
    raw.and_then(|raw| raw.get().parse::<u64>().ok()).unwrap_or(0)
}

/// Token counts in a line, when it has any: a native object's `prompt_eval_count` and
/// `eval_count`, or an OpenAI object's (or SSE event's) `usage`.
fn usage_in(line: &[u8]) -> Option<Usage> {
    let text = std::str::from_utf8(line).ok()?;
    if !text.contains("eval_count") && !text.contains("\"usage\"") {
        return None;
    }
    let counts: Counts<'_> = serde_json::from_str(text.strip_prefix("data: ").unwrap_or(text)).ok()?;
    match counts.usage.and_then(|usage| serde_json::from_str::<OpenAiUsage<'_>>(usage.get()).ok()) {
        Some(usage) => {
            Some(Usage { prompt: count(usage.prompt_tokens), completion: count(usage.completion_tokens) })
        }
        None => Some(Usage { prompt: count(counts.prompt_eval_count), completion: count(counts.eval_count) }),
    }
}

/// The token counts of a whole plain answer (zero when it has none).
pub fn usage_of(answer: &[u8]) -> Usage {
    usage_in(answer).unwrap_or_default()
}

/// Whether a line is the `done: true` line, without parsing lines that cannot be.
fn is_done(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    (text.contains("\"done\":true") || text.contains("\"done\": true"))
        && serde_json::from_str::<Counts<'_>>(&text).is_ok_and(|c| c.done.is_some_and(|d| d.get() == "true"))
}

impl LineTranslator for Passthrough {
    fn push_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Flow {
        if self.finished {
            return Flow::Done;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
        if let Some(usage) = usage_in(line) {
            self.usage = Some(usage);
        }
        if self.expects_done && is_done(line) {
            self.finished = true;
            self.usage.get_or_insert_with(Usage::default);
            return Flow::Done;
        }
        Flow::Continue
    }

    fn upstream_ended(&mut self, error: Option<&str>, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let message = match error {
            Some(text) => text,
            None if !self.expects_done => {
                // A plain answer ends when its body does: that is a normal end.
                self.usage.get_or_insert_with(Usage::default);
                return;
            }
            None => super::stream::INCOMPLETE,
        };
        out.extend_from_slice(json!({ "error": message }).to_string().as_bytes());
        out.push(b'\n');
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn run(expects_done: bool, lines: &[&str], ended: Option<Option<&str>>) -> (String, Flow, Passthrough) {
        let mut pass = Passthrough::new(expects_done);
        let (mut out, mut flow) = (Vec::new(), Flow::Continue);
        for line in lines {
            flow = pass.push_line(line.as_bytes(), &mut out);
        }
        if let Some(error) = ended {
            pass.upstream_ended(error, &mut out);
        }
        (String::from_utf8(out).unwrap(), flow, pass)
    }

    #[test]
    fn lines_pass_unchanged_and_the_done_line_ends_with_usage() {
        let lines = [
            r#"{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"prompt_eval_count":7,"eval_count":3}"#,
        ];
        let (out, flow, pass) = run(true, &lines, None);
        assert_eq!(out, format!("{}\n{}\n", lines[0], lines[1]));
        assert_eq!(flow, Flow::Done);
        assert_eq!(pass.usage(), Some(Usage { prompt: 7, completion: 3 }));
    }

    #[test]
    fn an_early_end_gets_an_ollama_style_error_line() {
        let (out, _, pass) = run(true, &[r#"{"response":"a","done":false}"#], Some(None));
        let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert!(last["error"].as_str().unwrap().contains("before finishing"));
        assert_eq!(pass.usage(), None, "not finished");
        let (out, _, _) = run(true, &[], Some(Some("the upstream went silent")));
        assert_eq!(out, "{\"error\":\"the upstream went silent\"}\n");
    }

    #[test]
    fn answers_without_a_done_line_end_with_their_body() {
        let (out, _, pass) = run(false, &[r#"{"models":[]}"#], Some(None));
        assert_eq!(out, "{\"models\":[]}\n");
        assert!(pass.usage().is_some(), "finished normally");
        let (out, _, _) =
            run(false, &[r#"{"status":"pulling manifest"}"#, r#"{"status":"success"}"#], Some(None));
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn openai_usage_is_counted_in_passed_through_streams() {
        let lines = [
            r#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#,
            "",
            r#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
            "",
            "data: [DONE]",
        ];
        let (out, _, pass) = run(false, &lines, Some(None));
        assert_eq!(out, lines.join("\n") + "\n", "SSE framing untouched");
        assert_eq!(pass.usage(), Some(Usage { prompt: 9, completion: 4 }));
    }

    #[test]
    fn done_inside_text_is_not_the_done_line() {
        let (_, flow, _) = run(true, &[r#"{"response":"\"done\":true","done":false}"#], None);
        assert_eq!(flow, Flow::Continue);
    }
}
