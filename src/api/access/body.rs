//! The top level of a JSON request body, read the way Ollama (Go's `encoding/json`) reads
//! it, without building a value tree.
//!
//! Go matches an object's keys to a struct's fields without regard to case, by Unicode
//! simple folding (so `ſ`, U+017F, is an `s` and the Kelvin sign `K`, U+212A, a `k`), and
//! when two keys land on one field the last one wins. A check of the exact key `model`
//! would check one field while Ollama reads another. [`scan`] finds every top-level key
//! that folds to one of the fields asked for, refuses two keys for one field, and keeps
//! each such value as raw text borrowed from the body with its byte range; every other
//! member is checked for syntax and skipped, so a body of N bytes costs about N. [`splice`]
//! puts new values in those ranges, so everything else goes upstream byte for byte, and
//! [`remove`] takes whole members out the same way (the gateway's own `api_key`).
//!
//! In scope: JSON syntax, key folding, duplicate keys, raw values and where they are.
//! Out of scope: what the fields mean and who may send them (`access`).

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// One top-level member whose key folds to a field that was asked for.
#[derive(Debug)]
pub struct Member<'b> {
    /// The field, as asked for (`model`).
    pub field: &'static str,
    /// The key as the client wrote it, unescaped (`MODEL`).
    pub key: Cow<'b, str>,
    /// The value, as raw JSON text.
    pub value: &'b RawValue,
    /// Where the value is in the body.
    pub span: Range<usize>,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON, or not an object.
    Syntax(String),
    /// Two keys that name one field.
    Duplicate {
        /// The field.
        field: &'static str,
        /// The first key, as written.
        first: String,
        /// The second key, as written.
        second: String,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Syntax(text) => write!(f, "the request body is not a JSON object: {text}"),
            BodyError::Duplicate { field, first, second } => write!(
                f,
                "the request body names '{field}' twice, as \"{first}\" and \"{second}\": keys are \
                 matched without regard to case (as Ollama does), so send '{field}' once"
            ),
        }
    }
}

impl std::error::Error for BodyError {}

/// Whether `key` names `field` for Go's `encoding/json`. `field` is lower-case ASCII (the
/// JSON names of Ollama's fields are); Go folds each key rune to the smallest rune of its
/// case orbit, and the only non-ASCII runes whose orbit holds an ASCII letter are `ſ`
/// (with `s`) and `K` (with `k`).
pub fn folds_to(key: &str, field: &str) -> bool {
    let mut field = field.bytes();
    for c in key.chars() {
        let folded = match c {
            'ſ' => b's',
            '\u{212A}' => b'k',
            c if c.is_ascii() => c.to_ascii_lowercase() as u8,
            _ => return false,
        };
        if field.next() != Some(folded) {
            return false;
        }
    }
    field.next().is_none()
}

/// The members of the JSON object `body` whose keys fold to one of `fields`, in body order.
/// Fails when `body` is not one JSON object, or when two keys name the same field.
pub fn scan<'b>(body: &'b [u8], fields: &[&'static str]) -> Result<Vec<Member<'b>>, BodyError> {
    let mut duplicate = None;
    let visitor = TopLevel { fields, base: body.as_ptr() as usize, duplicate: &mut duplicate };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let read = deserializer.deserialize_map(visitor).and_then(|members| deserializer.end().map(|()| members));
    match (read, duplicate) {
        (_, Some(error)) => Err(error),
        (Ok(members), None) => Ok(members),
        (Err(err), None) => Err(BodyError::Syntax(err.to_string())),
    }
}

/// `body` with the value at each span replaced by its new JSON text. Spans must not
/// overlap; they may come in any order.
pub fn splice(body: &[u8], edits: &[(Range<usize>, String)]) -> Vec<u8> {
    let mut edits: Vec<&(Range<usize>, String)> = edits.iter().collect();
    edits.sort_by_key(|(span, _)| span.start);
    let grown: usize = edits.iter().map(|(_, text)| text.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grown);
    let mut at = 0;
    for (span, text) in edits {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(text.as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// What [`remove`] took out of a body.
#[derive(Debug)]
pub struct Removed<'b> {
    /// The value of each member removed, as raw JSON text, in body order.
    pub values: Vec<&'b RawValue>,
    /// The body without them.
    pub body: Vec<u8>,
}

/// The JSON object `body` without its top-level members whose key is exactly `key` (after
/// unescaping; no folding), every other byte as it was: the commas and spaces around a
/// removed member go with it, so the rest stays valid JSON. `None` when no member has that
/// key; an error when `body` is not one JSON object.
pub fn remove<'b>(body: &'b [u8], key: &str) -> Result<Option<Removed<'b>>, BodyError> {
    let base = body.as_ptr() as usize;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let read = deserializer.deserialize_map(AllMembers { key });
    let members = read
        .and_then(|members| deserializer.end().map(|()| members))
        .map_err(|err| BodyError::Syntax(err.to_string()))?;
    if !members.iter().any(|member| member.0) {
        return Ok(None);
    }
    // It parsed as an object, so its first byte that is not white space is its `{`.
    let open = body.iter().position(|b| !b.is_ascii_whitespace()).map_or(0, |at| at + 1);
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..open]);
    let (mut values, mut kept, mut end) = (Vec::new(), 0, open);
    for (matches, value) in &members {
        let start = end;
        // The value borrows from the body: its address says where it ends.
        end = value.get().as_ptr() as usize - base + value.get().len();
        if *matches {
            values.push(*value);
            continue;
        }
        // A member after the first starts with the comma after the one before it: the
        // first one kept must not.
        let mut segment = &body[start..end];
        if kept == 0 && start != open {
            let comma = segment.iter().position(|b| *b == b',').map_or(0, |at| at + 1);
            segment = &segment[comma..];
        }
        out.extend_from_slice(segment);
        kept += 1;
    }
    out.extend_from_slice(&body[end..]);
    Ok(Some(Removed { values, body: out }))
}

/// Reads every top-level member: whether its key is the one asked for, and its raw value.
struct AllMembers<'k> {
    key: &'k str,
}

impl<'de> Visitor<'de> for AllMembers<'_> {
    type Value = Vec<(bool, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(matches) = map.next_key_seed(ExactKey(self.key))? {
            let value: &'de RawValue = map.next_value()?;
            members.push((matches, value));
        }
        Ok(members)
    }
}

/// Reads one key: whether it is exactly the one asked for.
struct ExactKey<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for ExactKey<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ExactKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Reads the top-level map, keeping the members asked for.
struct TopLevel<'f> {
    fields: &'f [&'static str],
    /// The body's address, to turn borrowed raw values into byte ranges.
    base: usize,
    duplicate: &'f mut Option<BodyError>,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Vec<Member<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<Member<'de>> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed { fields: self.fields })? {
            let Some((field, key)) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if let Some(first) = members.iter().find(|m| m.field == field) {
                let first = first.key.to_string();
                *self.duplicate = Some(BodyError::Duplicate { field, first, second: key.into_owned() });
                return Err(de::Error::custom("duplicate field"));
            }
            let value: &'de RawValue = map.next_value()?;
            // The value borrows from the body: its address says where it is.
            let start = value.get().as_ptr() as usize - self.base;
            members.push(Member { field, key, value, span: start..start + value.get().len() });
        }
        Ok(members)
    }
}

/// Reads one key: the field it folds to (and the key, kept only then), or `None`.
struct KeySeed<'f> {
    fields: &'f [&'static str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<(&'static str, Cow<'de, str>)>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<(&'static str, Cow<'de, str>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(self.field_of(key).map(|field| (field, Cow::Borrowed(key))))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.field_of(key).map(|field| (field, Cow::Owned(key.to_string()))))
    }
}

impl KeySeed<'_> {
    fn field_of(&self, key: &str) -> Option<&'static str> {
        self.fields.iter().copied().find(|field| folds_to(key, field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_as_go_folds_them() {
        let cases = [
            ("model", "model", true),
            ("MODEL", "model", true),
            ("Model", "model", true),
            ("mOdEl", "model", true),
            ("ſource", "source", true),
            ("SOURCE", "source", true),
            ("\u{212A}eep_alive", "keep_alive", true),
            ("model ", "model", false),
            ("models", "model", false),
            ("mode", "model", false),
            ("módel", "model", false),
            ("ſtream", "stream", true),
            ("draft_FILES", "draft_files", true),
            ("", "model", false),
        ];
        for (key, field, want) in cases {
            assert_eq!(folds_to(key, field), want, "{key:?} as {field}");
        }
    }

    fn fields_of<'b>(members: &[Member<'b>]) -> Vec<(&'static str, String, &'b str)> {
        members.iter().map(|m| (m.field, m.key.to_string(), m.value.get())).collect()
    }

    #[test]
    fn scan_keeps_the_fields_asked_for_as_raw_text() {
        let body = br#"{"Model": "llama3.2", "messages": [{"role":"user","content":"model"}],
            "options": {"model": 1}, "\u006eame": null, "stream" : false }"#;
        let members = scan(body, &["model", "name", "stream"]).unwrap();
        assert_eq!(
            fields_of(&members),
            vec![
                ("model", "Model".into(), "\"llama3.2\""),
                ("name", "name".into(), "null"),
                ("stream", "stream".into(), "false")
            ],
            "nested keys are not top-level fields"
        );
        for member in &members {
            assert_eq!(&body[member.span.clone()], member.value.get().as_bytes());
        }
    }

    #[test]
    fn two_keys_for_one_field_are_refused() {
        let cases: [(&[u8], &str, &str); 4] = [
            (br#"{"model":"a","MODEL":"b"}"#, "model", "MODEL"),
            (br#"{"source":"a","x":1,"\u017fource":"b"}"#, "source", "ſource"),
            (br#"{"Stream":true,"stream":false}"#, "Stream", "stream"),
            (br#"{"model":"a","model":"a"}"#, "model", "model"),
        ];
        for (body, first_key, second_key) in cases {
            match scan(body, &["model", "source", "stream"]) {
                Err(BodyError::Duplicate { first, second, .. }) => {
                    assert_eq!((first.as_str(), second.as_str()), (first_key, second_key))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        assert!(scan(br#"{"a":1,"A":2}"#, &["model"]).is_ok(), "other fields may repeat");
    }

    #[test]
    fn scan_refuses_what_is_not_one_object() {
        for body in [&b""[..], b"[]", b"\"model\"", b"{\"model\":", b"{} {}", b"<html>", b"{\"a\":1,}"] {
            assert!(
                matches!(scan(body, &["model"]), Err(BodyError::Syntax(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(scan(b" {\"a\": [1, {\"b\": null}]}\n", &[]).unwrap().is_empty());
    }

    #[test]
    fn remove_takes_whole_members_out_and_keeps_every_other_byte() {
        let cases: [(&[u8], &[u8], &[&str]); 9] = [
            (br#"{"api_key":"sk-1"}"#, br#"{}"#, &[r#""sk-1""#]),
            (br#" { "api_key" : "sk-1" } "#, br#" { } "#, &[r#""sk-1""#]),
            (br#"{"api_key":"sk-1", "model":"m"}"#, br#"{ "model":"m"}"#, &[r#""sk-1""#]),
            (br#"{"model":"m" , "api_key":"sk-1"}"#, br#"{"model":"m"}"#, &[r#""sk-1""#]),
            (
                b"{\"model\":\"m\",  \"api_key\":\"sk-1\",\t\"x\":[1,{\"api_key\":2}] }",
                b"{\"model\":\"m\",\t\"x\":[1,{\"api_key\":2}] }",
                &[r#""sk-1""#],
            ),
            (br#"{"api\u005fkey":null,"a":"b,c"}"#, br#"{"a":"b,c"}"#, &["null"]),
            (br#"{"api_key":"a","k,ey":1,"api_key":"b"}"#, br#"{"k,ey":1}"#, &[r#""a""#, r#""b""#]),
            (b"{\n  \"api_key\": \"t\",\n  \"m\": 1\n}\n", b"{\n  \"m\": 1\n}\n", &["\"t\""]),
            (br#"{"a":{},"api_key":{"nested":true},"b":[]}"#, br#"{"a":{},"b":[]}"#, &[r#"{"nested":true}"#]),
        ];
        for (body, want, values) in cases {
            let removed = remove(body, "api_key").unwrap().expect("an api_key");
            let shown = String::from_utf8_lossy(body);
            assert_eq!(String::from_utf8_lossy(&removed.body), String::from_utf8_lossy(want), "{shown}");
            let got: Vec<&str> = removed.values.iter().map(|v| v.get()).collect();
            assert_eq!(got, values, "{shown}");
            serde_json::from_slice::<serde_json::Value>(&removed.body).expect("still JSON");
        }
        for body in
            [&br#"{"API_KEY":"x","apikey":1,"x":{"api_key":1}}"#[..], b"{}", b" {\"a\": \"api_key\"} "]
        {
            assert!(remove(body, "api_key").unwrap().is_none(), "{}", String::from_utf8_lossy(body));
        }
        for body in [&b""[..], b"[]", b"\"api_key\"", b"{\"api_key\":", b"{} {}", b"\x00\x01"] {
            assert!(matches!(remove(body, "api_key"), Err(BodyError::Syntax(_))), "{body:?}");
        }
    }

    #[test]
    fn splice_replaces_values_and_keeps_every_other_byte() {
        let body = br#"{ "model" : "mini",  "x":[1,2], "SOURCE":"a\u0062" }"#;
        let members = scan(body, &["model", "source"]).unwrap();
        let edits: Vec<(Range<usize>, String)> =
            members.iter().rev().map(|m| (m.span.clone(), format!("\"{}-new\"", m.field))).collect();
        let out = splice(body, &edits);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{ "model" : "model-new",  "x":[1,2], "SOURCE":"source-new" }"#
        );
        assert_eq!(splice(body, &[]), body.to_vec());
    }
}
