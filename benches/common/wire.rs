//! The head of an HTTP/1.1 request or response, read off a socket by the benches' own
//! minimal clients and fakes (`make bench`, `make soak`).

use std::io::{self, BufRead};

/// The parts of a head the benches need.
pub struct Head {
    /// The request or status line.
    pub first_line: String,
    /// `Content-Length`, when sent.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Connection: close`.
    pub close: bool,
}

/// Reads a head; `None` when the connection closed cleanly before it.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let first_line = line.trim_end().to_string();
    let mut head = Head { first_line, content_length: None, chunked: false, close: false };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a head"));
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            return Ok(Some(head)); // the blank line
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}
