//! Test helpers shared by the translators' unit tests.
//!
//! Built only for tests (`#[cfg(test)]` on its `mod` line), where a panic is the report.

use serde_json::Value;

/// Asserts two JSON values are equal, printing both as blocks when not.
#[track_caller]
pub fn eq_json(got: &Value, want: &Value) {
    if got != want {
        panic!(
            "\n--- want ---\n{}\n--- got ---\n{}\n",
            serde_json::to_string_pretty(want).unwrap(),
            serde_json::to_string_pretty(got).unwrap()
        );
    }
}

/// The payloads of SSE `data:` events, each parsed (`[DONE]` as the string `"[DONE]"`);
/// fails on any framing other than `data: …\n\n`.
#[track_caller]
pub fn sse_payloads(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "unterminated event in {text:?}");
    text.split_terminator("\n\n")
        .map(|event| {
            let payload =
                event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data line: {event:?}"));
            match payload {
                "[DONE]" => Value::String("[DONE]".into()),
                _ => serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad payload {payload}: {e}")),
            }
        })
        .collect()
}
