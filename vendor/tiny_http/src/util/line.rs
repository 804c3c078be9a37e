//! ollama-gateway: reading one CRLF-terminated line, strictly (RFC 9112 §2.2).
//!
//! Shared by the request head (`client.rs`) and the chunk-size and trailer lines of chunked
//! bodies (`chunked.rs`). A line ends at CRLF and nowhere else: a bare LF, a CR not followed
//! by LF and a NUL are errors, not line ends or content, so that a proxy in front of us that
//! ends lines differently cannot make the two of us see different requests. What a line
//! must contain is for the callers to check.

use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};

/// Reads one line up to CRLF and returns it without the CRLF.
///
/// A malformed line (bare LF, CR without LF, NUL, longer than `max` bytes) is an
/// `InvalidData` error; the stream ending before the CRLF is an `UnexpectedEof` error. Any
/// other error is the source's. The bytes read so far are lost in every case, so the
/// source cannot be parsed any further after an error.
pub fn read_line<R: Read>(source: R, max: usize) -> IoResult<Vec<u8>> {
    let mut line = Vec::new();
    let mut after_cr = false;
    for byte in source.bytes() {
        let byte = byte?;
        match (after_cr, byte) {
            (true, b'\n') => return Ok(line),
            (true, _) => return Err(malformed("CR not followed by LF")),
            (false, b'\r') => after_cr = true,
            (false, b'\n') => return Err(malformed("LF not preceded by CR")),
            (false, 0) => return Err(malformed("NUL byte")),
            (false, _) if line.len() >= max => return Err(malformed("line too long")),
            (false, _) => line.push(byte),
        }
    }
    Err(IoError::new(ErrorKind::UnexpectedEof, "the stream ended inside a line"))
}

fn malformed(what: &'static str) -> IoError {
    IoError::new(ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::read_line;
    use std::io::ErrorKind;

    fn first_line(input: &[u8]) -> Result<Vec<u8>, ErrorKind> {
        read_line(input, 8).map_err(|err| err.kind())
    }

    #[test]
    fn a_line_ends_at_crlf_only() {
        assert_eq!(first_line(b"abc\r\ndef"), Ok(b"abc".to_vec()));
        assert_eq!(first_line(b"\r\n"), Ok(Vec::new()));
        assert_eq!(first_line(b"12345678\r\n"), Ok(b"12345678".to_vec()));
    }

    #[test]
    fn bare_lf_bare_cr_and_nul_are_malformed() {
        for input in [&b"ab\ncd\r\n"[..], b"ab\n", b"ab\rcd\r\n", b"ab\r\r\n", b"a\0b\r\n"] {
            assert_eq!(first_line(input), Err(ErrorKind::InvalidData), "{:?}", input);
        }
    }

    #[test]
    fn a_line_is_bounded() {
        assert_eq!(first_line(b"123456789\r\n"), Err(ErrorKind::InvalidData));
        assert_eq!(read_line(&[b'a'; 100_000][..], 16).unwrap_err().kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn the_end_of_the_stream_inside_a_line_is_unexpected() {
        assert_eq!(first_line(b"abc"), Err(ErrorKind::UnexpectedEof));
        assert_eq!(first_line(b"abc\r"), Err(ErrorKind::UnexpectedEof));
        assert_eq!(first_line(b""), Err(ErrorKind::UnexpectedEof));
    }
}
