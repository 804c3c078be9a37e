//! ollama-gateway: where a request body ends, from the request's headers (RFC 9112 §6).
//!
//! A request whose body length two parsers could read differently is refused instead of
//! guessed at: a proxy in front of us that picked the other reading would send the rest of
//! the body on as a request of its own (request smuggling). So `Content-Length` and
//! `Transfer-Encoding` together, `Content-Length` values that differ or are not plain
//! decimal numbers, and any `Transfer-Encoding` but a single `chunked` are errors, which the
//! connection answers with `400` before closing. Identical `Content-Length` values are one
//! value (RFC 9110 §8.6). This module only reads headers; decoding a chunked body is
//! `chunked.rs`.

use crate::common::{is_ows, Header};

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Reads the framing of a request from its headers; an error says what is ambiguous.
pub fn body_framing(headers: &[Header]) -> Result<Framing, &'static str> {
    let mut length = None;
    let mut chunked = false;
    for header in headers {
        if header.field.equiv("Content-Length") {
            for element in header.value.as_str().split(',') {
                let value = parse_length(element.trim_matches(is_ows))?;
                if length.is_some_and(|seen| seen != value) {
                    return Err("Content-Length values differ");
                }
                length = Some(value);
            }
        } else if header.field.equiv("Transfer-Encoding") {
            if chunked {
                return Err("more than one Transfer-Encoding header");
            }
            // Only `chunked`, alone: a list ends in `chunked` or it cannot be delimited, and
            // the gateway decodes no other coding (RFC 9112 §6.1).
            if !header.value.as_str().trim_matches(is_ows).eq_ignore_ascii_case("chunked") {
                return Err("a Transfer-Encoding other than chunked");
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err("both Content-Length and Transfer-Encoding"),
        (Some(length), false) => Ok(Framing::Length(length)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Ok(Framing::None),
    }
}

/// `1*DIGIT` (RFC 9110 §8.6) into a `u64`: no sign, no spaces, no hex, not empty, no overflow.
fn parse_length(text: &str) -> Result<u64, &'static str> {
    if text.is_empty() {
        return Err("an empty Content-Length");
    }
    text.bytes().try_fold(0u64, |length, b| {
        if !b.is_ascii_digit() {
            return Err("a Content-Length that is not a decimal number");
        }
        length
            .checked_mul(10)
            .and_then(|l| l.checked_add(u64::from(b - b'0')))
            .ok_or("a Content-Length too large")
    })
}

#[cfg(test)]
mod tests {
    use super::{body_framing, Framing};
    use crate::common::Header;

    fn framing(lines: &[&str]) -> Result<Framing, &'static str> {
        let headers: Vec<Header> = lines.iter().map(|l| l.parse().unwrap()).collect();
        body_framing(&headers)
    }

    #[test]
    fn unambiguous_framings() {
        assert_eq!(framing(&["Host: x"]), Ok(Framing::None));
        assert_eq!(framing(&["Content-Length: 0"]), Ok(Framing::Length(0)));
        assert_eq!(framing(&["content-length: 0042"]), Ok(Framing::Length(42)));
        assert_eq!(framing(&["Content-Length: 18446744073709551615"]), Ok(Framing::Length(u64::MAX)));
        assert_eq!(framing(&["Transfer-Encoding: chunked"]), Ok(Framing::Chunked));
        assert_eq!(framing(&["transfer-encoding:  CHUNKED \t"]), Ok(Framing::Chunked));
    }

    #[test]
    fn identical_content_lengths_are_one() {
        assert_eq!(framing(&["Content-Length: 5", "Content-Length: 5"]), Ok(Framing::Length(5)));
        assert_eq!(framing(&["Content-Length: 5, 5,5"]), Ok(Framing::Length(5)));
        assert_eq!(framing(&["Content-Length: 5", "Content-Length: 05"]), Ok(Framing::Length(5)));
    }

    #[test]
    fn ambiguous_framings_are_refused() {
        let cases: &[&[&str]] = &[
            &["Content-Length: 5", "Transfer-Encoding: chunked"],
            &["Transfer-Encoding: chunked", "Content-Length: 5"],
            &["Transfer-Encoding: chunked", "Content-Length: 0"],
            &["Content-Length: 5", "Content-Length: 6"],
            &["Content-Length: 5, 6"],
            &["Content-Length: 5,"],
            &["Content-Length: ,5"],
            &["Content-Length: +5"],
            &["Content-Length: -5"],
            &["Content-Length: 1 0"],
            &["Content-Length: 0x5"],
            &["Content-Length: a"],
            &["Content-Length: 5.0"],
            &["Content-Length:"],
            &["Content-Length: 18446744073709551616"],
            &["Content-Length: 99999999999999999999999"],
            &["Transfer-Encoding: xchunked"],
            &["Transfer-Encoding: chunkedx"],
            &["Transfer-Encoding: \"chunked\""],
            &["Transfer-Encoding: chunked, identity"],
            &["Transfer-Encoding: gzip, chunked"],
            &["Transfer-Encoding: identity"],
            &["Transfer-Encoding:"],
            &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
            &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
        ];
        for case in cases {
            assert!(framing(case).is_err(), "{:?} was taken as {:?}", case, framing(case));
        }
    }
}
