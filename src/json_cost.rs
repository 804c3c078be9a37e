//! What a JSON body would cost in memory once parsed into a [`serde_json::Value`], estimated
//! from its bytes in one pass, before anything is parsed.
//!
//! A `Value` tree takes 40 to 75 times the bytes of a body made of small values (each value
//! is a 72-byte slot, each object a hash table and a vector of 104-byte entries), so the
//! size cap on bodies alone does not bound memory. [`estimate`] counts what drives the tree
//! (values, string and key bytes, the length of every array and object) and turns the
//! counts into heap bytes with the growth rules of `Vec` and of serde_json's `IndexMap`
//! (`preserve_order`), glibc's chunk rounding, and the largest buffer left behind while a
//! container grows. `tests/json_cost.rs` checks the figure against a counting allocator.
//!
//! In scope: the estimate, the budget a body of a given size may spend ([`tree_budget`]),
//! and two shapes that would escape the estimate: nesting deeper than serde_json accepts,
//! and serde_json's private `RawValue` key (under which a string is parsed again as JSON).
//! A string under the key `arguments` is costed as the JSON it holds as well, because the
//! chat translator parses tool-call arguments. Out of scope: validating JSON (serde_json
//! does that right after; on invalid input the estimate is only a figure), and the answer
//! to send (`Req::json_body`). The scanner neither allocates nor recurses: open
//! containers live in a fixed array of [`MAX_DEPTH`] frames.

use serde_json::Value;

/// The deepest nesting accepted; serde_json refuses more than 127 levels anyway.
pub const MAX_DEPTH: usize = 128;

const MIB: u64 = 1024 * 1024;

/// Bytes of one value slot in an array.
const VALUE: u64 = std::mem::size_of::<Value>() as u64;
/// Bytes of one object entry: its hash, key and value (indexmap's `Bucket`).
const ENTRY: u64 = std::mem::size_of::<(usize, String, Value)>() as u64;
/// Bytes per bucket of an object's index (hashbrown's table of `usize`).
const INDEX: u64 = std::mem::size_of::<usize>() as u64;
/// Control bytes hashbrown adds to every table (`Group::WIDTH` with SSE2).
const GROUP: u64 = 16;

/// The serde_json key under which a string is parsed again as JSON (`raw_value` feature).
const RAW_VALUE_KEY: &[u8] = b"$serde_json::private::RawValue";
/// The key whose string value the chat translator parses as JSON (tool-call arguments).
const ARGUMENTS_KEY: &[u8] = b"arguments";

/// What parsing a body into a `Value` would take, in heap bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// The finished tree: value slots, object tables, strings and keys, with growth slack
    /// and allocator rounding; tool-call arguments' trees included.
    pub tree: u64,
    /// The largest buffer a growing container leaves behind while it moves (freed as soon
    /// as it has moved, so only one counts at a time).
    pub transient: u64,
    /// serde_json's scratch buffer, sized by the longest escaped string or long number; it
    /// is freed when parsing ends and never exceeds twice that token's length.
    pub scratch: u64,
    /// Values in the body (objects, arrays, strings, numbers, literals), keys not counted.
    pub values: u64,
    /// The deepest nesting seen.
    pub depth: usize,
}

impl Cost {
    /// The bytes held at the peak of parsing besides the body and the scratch buffer:
    /// what [`tree_budget`] is compared with.
    pub fn peak_tree(&self) -> u64 {
        self.tree + self.transient
    }
}

/// Why a body is refused before its cost is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A key is serde_json's private `RawValue` marker, which would have serde_json parse a
    /// string again as JSON, unbounded by this estimate and by the nesting limit.
    ReservedKey,
}

/// The tree bytes a body of `body_len` bytes may cost: `max(5/4 × N + 8 MiB, 16 MiB)`.
///
/// The arithmetic behind it. While a `/v1` request is served, at most these are live: the
/// body (N bytes); the tree T parsed from it; the translated tree T', which copies what is
/// forwarded and so is at most T; and, once T is dropped, the serialised upstream body S,
/// which is about N (two of them for a `-cloud` model, sent under two names). serde_json's
/// scratch buffer lives only while parsing, and touches at most the longest string, ≤ N.
/// With T ≤ B(N) the peaks are:
///
/// - parsing: N + T + scratch ≤ 2N + B = 3¼ N + 8 MiB;
/// - translating: N + T + T' ≤ N + 2B = 3½ N + 16 MiB;
/// - serialising: N + T' + 2S ≤ 3N + B = 4¼ N + 8 MiB, within 4N + 16 MiB up to N = 32 MiB
///   (the default `max_body_bytes`).
///
/// So a body of N ≥ 6.4 MiB peaks under 4N + 16 MiB, and a smaller one under N + 32 MiB.
/// (A budget of 2N would allow 5N + 16 MiB, because the translated tree is a second copy.)
/// Legitimate large bodies are mostly strings, whose tree is about their size (1.0 to 1.1
/// × N). The 16 MiB floor is for small bodies dense in values: 8,192 token ids × 16
/// embeddings inputs are 0.8 MB of body and 9.4 MiB of tree, a chat of 10,000 messages
/// (a third with tool calls, as a coding agent's long session) 1 MB and 12.9 MiB.
pub fn tree_budget(body_len: usize) -> u64 {
    let n = body_len as u64;
    (n + n / 4 + 8 * MIB).max(16 * MIB)
}

/// Estimates what parsing `json` into a `serde_json::Value` would cost, without parsing it.
///
/// The figure is an upper bound for valid JSON (checked against a counting allocator in
/// `tests/json_cost.rs`); for invalid JSON it bounds what serde_json builds before it stops.
///
/// ```
/// use ollama_gateway::json_cost::{estimate, Refusal};
///
/// let small = estimate(br#"{"model":"m","input":"hi"}"#).unwrap();
/// let zeros = estimate(format!("[{}0]", "0,".repeat(1000)).as_bytes()).unwrap();
/// assert!(zeros.peak_tree() > 100 * small.peak_tree());
/// assert_eq!(estimate("[".repeat(200).as_bytes()), Err(Refusal::TooDeep));
/// ```
pub fn estimate(json: &[u8]) -> Result<Cost, Refusal> {
    let mut walker = Walker::new(true);
    walker.walk(&mut Body { bytes: json, at: 0 })?;
    Ok(walker.finish())
}

/// Parses JSON from anywhere (an upstream answer or line, say) into a `Value`, once a
/// scan has shown it holds neither serde_json's private `RawValue` key nor nesting past
/// [`MAX_DEPTH`]: either would make serde_json recurse past a thread's stack, which aborts
/// the whole process. Every `Value` the gateway builds from bytes it did not write comes
/// from here or from `Req::json_body`, which also bounds its size.
pub fn parse_tree(json: &[u8]) -> Result<serde_json::Value, String> {
    match estimate(json) {
        Err(Refusal::ReservedKey) => {
            Err("it uses serde_json's reserved key $serde_json::private::RawValue".into())
        }
        Err(Refusal::TooDeep) => Err(format!("it nests deeper than {MAX_DEPTH} levels")),
        Ok(_) => serde_json::from_slice(json).map_err(|err| err.to_string()),
    }
}

/// Where the bytes come from: a body, or the unescaped text of one of its strings.
trait Source<'a> {
    /// The next byte.
    fn next(&mut self) -> Option<u8>;

    /// Skips string bytes up to the next `"` or `\`, and returns how many it skipped.
    fn skip_plain(&mut self) -> u64 {
        0
    }

    /// The raw text of the string being read, up to its closing quote, which is consumed.
    fn rest_of_string(&mut self) -> Option<&'a [u8]> {
        None
    }
}

/// A body's bytes.
struct Body<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Source<'a> for Body<'a> {
    fn next(&mut self) -> Option<u8> {
        let byte = self.bytes.get(self.at).copied();
        self.at += 1;
        byte
    }

    fn skip_plain(&mut self) -> u64 {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let run = rest.iter().position(|&b| b == b'"' || b == b'\\').unwrap_or(rest.len());
        self.at += run;
        run as u64
    }

    fn rest_of_string(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        loop {
            self.skip_plain();
            match self.next() {
                Some(b'\\') => {
                    self.next();
                }
                Some(_) => return self.bytes.get(start..self.at - 1),
                None => return self.bytes.get(start..),
            }
        }
    }
}

/// The text a JSON string's raw bytes stand for, escapes undone. A `\u` escape outside
/// ASCII yields three bytes of 0x80 (no JSON syntax, and at least its UTF-8 length).
struct Unescaped<'a> {
    raw: &'a [u8],
    at: usize,
    pending: u8,
}

impl<'a> Source<'a> for Unescaped<'a> {
    fn next(&mut self) -> Option<u8> {
        if self.pending > 0 {
            self.pending -= 1;
            return Some(0x80);
        }
        let byte = *self.raw.get(self.at)?;
        self.at += 1;
        if byte != b'\\' {
            return Some(byte);
        }
        let escaped = *self.raw.get(self.at)?;
        self.at += 1;
        Some(match escaped {
            b'n' => b'\n',
            b't' => b'\t',
            b'r' => b'\r',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'u' => {
                let hex = self.raw.get(self.at..self.at + 4).unwrap_or_default();
                self.at += hex.len();
                match hex_value(hex) {
                    Some(code) if code < 0x80 => code as u8,
                    _ => {
                        self.pending = 2;
                        0x80
                    }
                }
            }
            other => other,
        })
    }
}

fn hex_value(hex: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(hex).ok().filter(|t| t.len() == 4)?;
    u32::from_str_radix(text, 16).ok()
}

/// One open array or object.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    object: bool,
    /// Elements of an array, entries of an object.
    count: u64,
    /// In an object: the next string is a key.
    expect_key: bool,
    /// In an object: the last key was `arguments`.
    arguments: bool,
}

/// A string as read: its unescaped length, and its first bytes (to recognise keys).
struct Text {
    len: u64,
    escaped: bool,
    head: [u8; 32],
}

impl Text {
    fn is(&self, key: &[u8]) -> bool {
        self.len == key.len() as u64 && self.head.starts_with(key)
    }
}

struct Walker {
    frames: [Frame; MAX_DEPTH],
    depth: usize,
    cost: Cost,
    /// Whether strings under `arguments` are costed as JSON (not inside such a string).
    outer: bool,
    /// The longest escaped string or bare token, which sizes serde_json's scratch buffer.
    longest_scratch: u64,
}

impl Walker {
    fn new(outer: bool) -> Walker {
        Walker {
            frames: [Frame::default(); MAX_DEPTH],
            depth: 0,
            cost: Cost::default(),
            outer,
            longest_scratch: 0,
        }
    }

    fn top(&mut self) -> Option<&mut Frame> {
        self.depth.checked_sub(1).map(|i| &mut self.frames[i])
    }

    fn walk<'a>(&mut self, src: &mut impl Source<'a>) -> Result<(), Refusal> {
        let mut byte = src.next();
        while let Some(b) = byte {
            match b {
                b'{' | b'[' => {
                    self.value();
                    if self.depth == MAX_DEPTH {
                        return Err(Refusal::TooDeep);
                    }
                    let object = b == b'{';
                    self.frames[self.depth] =
                        Frame { object, count: 0, expect_key: object, arguments: false };
                    self.depth += 1;
                    self.cost.depth = self.cost.depth.max(self.depth);
                }
                b'}' | b']' => {
                    if let Some(i) = self.depth.checked_sub(1) {
                        self.depth = i;
                        self.close(self.frames[i]);
                    }
                }
                b',' => {
                    if let Some(frame) = self.top().filter(|f| f.object) {
                        frame.expect_key = true;
                    }
                }
                b':' => {
                    if let Some(frame) = self.top() {
                        frame.expect_key = false;
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => self.string(src)?,
                _ => {
                    // A number, a literal, or garbage serde_json will refuse: one value.
                    self.value();
                    let mut len = 1;
                    byte = src.next();
                    while byte.is_some_and(|c| !b",:[]{}\" \t\n\r".contains(&c)) {
                        len += 1;
                        byte = src.next();
                    }
                    self.longest_scratch = self.longest_scratch.max(len);
                    continue;
                }
            }
            byte = src.next();
        }
        Ok(())
    }

    /// A string, its opening quote read: a key, a value, or tool-call arguments.
    fn string<'a>(&mut self, src: &mut impl Source<'a>) -> Result<(), Refusal> {
        let in_object = self.top().map(|f| (f.expect_key, f.arguments));
        if let Some((true, _)) = in_object {
            let text = read_text(src);
            if text.is(RAW_VALUE_KEY) {
                return Err(Refusal::ReservedKey);
            }
            // The object whose key this is (it was open a line above).
            if let Some(frame) = self.top() {
                frame.count += 1;
                frame.expect_key = false;
                frame.arguments = text.is(ARGUMENTS_KEY);
            }
            self.text(&text);
            return Ok(());
        }
        self.value();
        if let (true, Some((false, true))) = (self.outer, in_object) {
            if let Some(raw) = src.rest_of_string() {
                let mut inner = Walker::new(false);
                let mut unescaped = Unescaped { raw, at: 0, pending: 0 };
                inner.walk(&mut unescaped)?;
                let parsed = inner.finish();
                self.cost.tree += heap(raw.len() as u64) + parsed.tree + parsed.transient + parsed.scratch;
                self.longest_scratch = self.longest_scratch.max(raw.len() as u64);
                return Ok(());
            }
        }
        let text = read_text(src);
        self.text(&text);
        Ok(())
    }

    /// Counts one value: its slot, when it sits in an array.
    fn value(&mut self) {
        self.cost.values += 1;
        if let Some(frame) = self.top() {
            if !frame.object {
                frame.count += 1;
            }
            frame.arguments = false;
        }
    }

    fn text(&mut self, text: &Text) {
        if text.len > 0 {
            self.cost.tree += heap(text.len);
        }
        if text.escaped {
            self.longest_scratch = self.longest_scratch.max(text.len);
        }
    }

    /// Adds a finished container: its buffers at their final capacity, and the buffers
    /// it left behind on its last growth.
    fn close(&mut self, frame: Frame) {
        if frame.count == 0 {
            return;
        }
        let (size, left_behind) = if frame.object {
            let buckets = index_buckets(frame.count);
            let table = |b: u64| heap(b * INDEX + b + GROUP) + heap(table_capacity(b) * ENTRY);
            (table(buckets), if buckets > 4 { table(buckets / 2) } else { 0 })
        } else {
            let capacity = frame.count.next_power_of_two().max(4);
            (heap(capacity * VALUE), if capacity > 4 { heap(capacity / 2 * VALUE) } else { 0 })
        };
        self.cost.tree += size;
        self.cost.transient = self.cost.transient.max(left_behind);
    }

    fn finish(mut self) -> Cost {
        // An unterminated body: count what serde_json would have built before stopping.
        while let Some(i) = self.depth.checked_sub(1) {
            self.depth = i;
            self.close(self.frames[i]);
        }
        if self.longest_scratch > 0 {
            self.cost.scratch = heap(2 * self.longest_scratch.max(4));
        }
        self.cost
    }
}

/// Reads a string up to its closing quote, escapes undone.
fn read_text<'a>(src: &mut impl Source<'a>) -> Text {
    let mut text = Text { len: 0, escaped: false, head: [0; 32] };
    let push = |text: &mut Text, byte: u8| {
        if let Some(slot) = text.head.get_mut(text.len as usize) {
            *slot = byte;
        }
        text.len += 1;
    };
    loop {
        if text.len >= text.head.len() as u64 {
            text.len += src.skip_plain();
        }
        match src.next() {
            None | Some(b'"') => return text,
            Some(b'\\') => {
                text.escaped = true;
                match src.next() {
                    None => return text,
                    Some(b'u') => {
                        let mut hex = [0u8; 4];
                        for slot in &mut hex {
                            *slot = src.next().unwrap_or(b'x');
                        }
                        match hex_value(&hex) {
                            Some(code) if code < 0x80 => push(&mut text, code as u8),
                            _ => (0..3).for_each(|_| push(&mut text, 0x80)),
                        }
                    }
                    Some(b'n') => push(&mut text, b'\n'),
                    Some(other) => push(&mut text, other),
                }
            }
            Some(byte) => push(&mut text, byte),
        }
    }
}

/// Buckets of hashbrown's index for `entries` entries: grown 4, 8, 16, … on demand.
fn index_buckets(entries: u64) -> u64 {
    let mut buckets = 4;
    while table_capacity(buckets) < entries {
        buckets *= 2;
    }
    buckets
}

/// Entries a table of `buckets` holds; indexmap keeps its entry vector the same size.
fn table_capacity(buckets: u64) -> u64 {
    if buckets < 8 {
        buckets - 1
    } else {
        buckets / 8 * 7
    }
}

/// What glibc's malloc reserves for a request of `size` bytes: an 8-byte header, rounded
/// to 16, at least 32; a page-rounded mapping from 128 KiB on.
pub fn heap(size: u64) -> u64 {
    if size >= 128 * 1024 {
        (size + 16).div_ceil(4096) * 4096
    } else {
        ((size + 8).div_ceil(16) * 16).max(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(json: &str) -> u64 {
        estimate(json.as_bytes()).unwrap().peak_tree()
    }

    #[test]
    fn scalars_cost_nothing_and_strings_their_length() {
        for json in ["0", "true", "null", "-1.5e3", "\"\"", "{}", "[]", "  {}  "] {
            assert_eq!(0, tree(json), "{json}");
        }
        assert_eq!(heap(5), tree("\"hello\""));
        assert_eq!(heap(1), tree(r#""\n""#));
        assert_eq!(heap(3), tree(r#""\u00e9""#), "a non-ASCII escape counts three bytes");
        assert_eq!(heap(200 * 1024), tree(&format!("\"{}\"", "a".repeat(200 * 1024))));
    }

    #[test]
    fn arrays_grow_by_doubling_from_four() {
        assert_eq!(heap(4 * VALUE), tree("[1]"));
        assert_eq!(heap(4 * VALUE), tree("[1,2,3,4]"));
        assert_eq!(heap(8 * VALUE) + heap(4 * VALUE), tree("[1,2,3,4,5]"), "a 5th element moves it to 8");
        let nested = tree("[[1],[2]]");
        assert_eq!(heap(4 * VALUE) * 3, nested);
    }

    #[test]
    fn objects_cost_an_index_and_entries() {
        let one = heap(4 * INDEX + 4 + GROUP) + heap(3 * ENTRY) + heap(1);
        assert_eq!(one, tree(r#"{"a":0}"#));
        assert_eq!(one, tree(r#" { "a" : 0 } "#));
        let eight = estimate(br#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8}"#).unwrap();
        let table = |b: u64| heap(b * INDEX + b + GROUP) + heap(table_capacity(b) * ENTRY);
        assert_eq!(table(16) + 8 * heap(1), eight.tree);
        assert_eq!(table(8), eight.transient);
    }

    #[test]
    fn keys_and_values_are_told_apart_inside_nested_objects() {
        let json = r#"{"k":[{"x":"yy"},"zzz"],"w":{}}"#;
        let object = |entries| heap(index_buckets(entries) * (INDEX + 1) + GROUP) + heap(3 * ENTRY);
        let expected = object(2) + heap(1) + heap(1) // "k", "w"
            + heap(4 * VALUE) // the array
            + object(1) + heap(1) + heap(2) // {"x":"yy"}
            + heap(3); // "zzz"
        assert_eq!(expected, tree(json));
        assert_eq!(6, estimate(json.as_bytes()).unwrap().values);
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(MAX_DEPTH, estimate(ok.as_bytes()).unwrap().depth);
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(Err(Refusal::TooDeep), estimate(deep.as_bytes()));
        let deep_objects = r#"{"a":"#.repeat(10_000_000 / 5);
        assert_eq!(Err(Refusal::TooDeep), estimate(deep_objects.as_bytes()));
    }

    #[test]
    fn the_raw_value_key_is_refused_however_it_is_spelt() {
        for json in [
            r#"{"$serde_json::private::RawValue":"[0,0]"}"#,
            r#"{"a":{"\u0024serde_json::private::RawValue":"[0]"}}"#,
            r#"{"messages":[{"tool_calls":[{"function":{"arguments":"{\"$serde_json::private::RawValue\":\"0\"}"}}]}]}"#,
        ] {
            assert_eq!(Err(Refusal::ReservedKey), estimate(json.as_bytes()), "{json}");
        }
        // As a value it is only a string.
        assert!(estimate(br#"{"a":"$serde_json::private::RawValue"}"#).is_ok());
    }

    #[test]
    fn tool_call_arguments_are_costed_as_the_json_they_hold() {
        let zeros = format!("[{}0]", "0,".repeat(9999));
        let plain = tree(&format!(r#"{{"content":"{zeros}"}}"#));
        let arguments = tree(&format!(r#"{{"arguments":"{zeros}"}}"#));
        let parsed = tree(&zeros);
        assert!(arguments >= plain + parsed, "arguments {arguments} vs plain {plain} + parsed {parsed}");
        let escaped = r#"{"arguments":"{\"city\":\"Paris\",\"n\":[1,2]}"}"#;
        let inner = tree(r#"{"city":"Paris","n":[1,2]}"#);
        assert!(tree(escaped) >= inner, "{} < {inner}", tree(escaped));
        // Deep nesting inside the arguments is refused too.
        let deep = format!(r#"{{"arguments":"{}"}}"#, "[".repeat(MAX_DEPTH + 1));
        assert_eq!(Err(Refusal::TooDeep), estimate(deep.as_bytes()));
    }

    #[test]
    fn scratch_follows_the_longest_escaped_string_or_number() {
        assert_eq!(0, estimate(br#"{"a":"plain"}"#).unwrap().scratch);
        assert_eq!(heap(2 * 10), estimate(br#"["with\nescape"]"#).unwrap().scratch);
        assert_eq!(heap(2 * 12), estimate(b"[123456789012]").unwrap().scratch);
    }

    #[test]
    fn invalid_json_still_gets_a_figure() {
        for json in ["]]]}}", "[1,2", "{\"a", "\"\\", "{\"a\":\"\\u12", "[tru", "::,,"] {
            assert!(estimate(json.as_bytes()).is_ok(), "{json}");
        }
        assert_eq!(heap(4 * VALUE), tree("[1,2"));
    }

    /// `[item, item, …]`, `times` items.
    fn list(times: usize, item: impl Fn(usize) -> String) -> String {
        format!("[{}]", (0..times).map(item).collect::<Vec<_>>().join(","))
    }

    #[test]
    fn legitimate_bodies_fit_the_budget() {
        let schema = |i: usize| {
            let property = |p: usize| {
                format!(
                    r#""p{p}":{{"type":"string","description":"Field {p} of tool {i}","enum":["a","b","c"]}}"#
                )
            };
            let properties = (0..30).map(property).collect::<Vec<_>>().join(",");
            format!(
                r#"{{"type":"function","function":{{"name":"tool_{i}","description":"Does thing {i}","parameters":{{"type":"object","properties":{{{properties}}},"required":["p0","p1"]}}}}}}"#
            )
        };
        let turn = |i: usize| match i % 3 {
            0 => format!(r#"{{"role":"user","content":"Question number {i}: what about the next step?"}}"#),
            1 => format!(
                r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_{i}","type":"function","function":{{"name":"tool_1","arguments":"{{\"p0\":\"value {i}\",\"p1\":\"b\"}}"}}}}]}}"#
            ),
            _ => format!(r#"{{"role":"tool","tool_call_id":"call_{}","content":"result {i} ok"}}"#, i - 1),
        };
        let image = |i: usize| {
            let data = "QUJD".repeat(512 * 1024 + i);
            format!(r#"{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{data}"}}}}"#)
        };
        let token = |i: usize| ((i * 7919) % 128_000).to_string();
        let logit_bias = (0..300).map(|i| format!(r#""{}":-100"#, i * 311)).collect::<Vec<_>>().join(",");
        let cases = [
            ("5,000 messages", format!(r#"{{"model":"m","messages":{}}}"#, list(5000, turn))),
            (
                "3,000 messages and 64 tools of 30 properties",
                format!(r#"{{"model":"m","messages":{},"tools":{}}}"#, list(3000, turn), list(64, schema)),
            ),
            (
                "ten 2 MB base64 images",
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":{}}}]}}"#, list(10, image)),
            ),
            (
                "8,192 token ids × 16 inputs",
                format!(r#"{{"model":"m","input":{}}}"#, list(16, |_| list(8192, token))),
            ),
            (
                "2,048 embeddings inputs",
                format!(
                    r#"{{"model":"m","input":{}}}"#,
                    list(2048, |i| format!(r#""passage {i} of a long text""#))
                ),
            ),
            (
                "stop list and logit_bias",
                format!(
                    r#"{{"model":"m","prompt":"Hi","stop":["\n","User:","Assistant:","</s>"],"logit_bias":{{{logit_bias}}}}}"#
                ),
            ),
            (
                "a 24 MiB string",
                format!(r#"{{"model":"m","prompt":"{}"}}"#, "Lorem ipsum\\n".repeat(2 << 20)),
            ),
        ];
        for (name, body) in cases {
            assert!(serde_json::from_str::<Value>(&body).is_ok(), "{name}: not valid JSON");
            let cost = estimate(body.as_bytes()).unwrap();
            let budget = tree_budget(body.len());
            assert!(
                cost.peak_tree() <= budget * 9 / 10,
                "{name}: {} bytes of body, {} of tree, budget {budget}",
                body.len(),
                cost.peak_tree()
            );
        }
    }

    #[test]
    fn hostile_bodies_exceed_the_budget() {
        let n = 4 << 20;
        let keys = (0..n / 10).map(|i| format!(r#""k{i}":0"#)).collect::<Vec<_>>().join(",");
        let cases = [
            ("zeros", format!("[{}0]", "0,".repeat(n / 2))),
            ("empty objects", format!(r#"{{"model":"m","input":[{}{{}}]}}"#, "{},".repeat(n / 3))),
            ("one-key objects", format!(r#"{{"model":"m","stop":[{}0]}}"#, r#"{"a":0},"#.repeat(n / 8))),
            ("keys", format!(r#"{{"model":"m","options":{{{keys}}}}}"#)),
            ("tool-call arguments", format!(r#"{{"arguments":"[{}0]"}}"#, "0,".repeat(n / 2))),
            ("small bodies too", format!("[{}0]", "0,".repeat(200_000))),
        ];
        for (name, body) in cases {
            let cost = estimate(body.as_bytes()).unwrap();
            let budget = tree_budget(body.len());
            assert!(cost.peak_tree() > budget, "{name}: {} of tree, budget {budget}", cost.peak_tree());
        }
    }

    #[test]
    fn the_budget_is_five_quarters_of_the_body_plus_8_mib_at_least_16() {
        assert_eq!(16 * MIB, tree_budget(0));
        assert_eq!(16 * MIB, tree_budget(6 * MIB as usize));
        assert_eq!(5 * MIB / 4 * 24 + 8 * MIB, tree_budget(24 * MIB as usize));
    }
}
