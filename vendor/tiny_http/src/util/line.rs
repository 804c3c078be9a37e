//! ollama-gateway: reading one CRLF-terminated line, strictly (RFC 9112 §2.2).
//!
//! Shared by the request head (`client.rs`) and the chunk-size and trailer lines of chunked
//! bodies (`chunked.rs`). A line ends at CRLF and nowhere else: a bare LF, a CR not followed
//! by LF and a NUL are errors, not line ends or content, so that a proxy in front of us that
//! ends lines differently cannot make the two of us see different requests. What a line
//! must contain is for the callers to check.

use std::io::{BufRead, Error as IoError, ErrorKind, Read, Result as IoResult};

/// Reads one line up to CRLF and returns it without the CRLF.
///
/// A malformed line (bare LF, CR without LF, NUL, longer than `max` bytes) is an
/// `InvalidData` error; the stream ending before the CRLF is an `UnexpectedEof` error. Any
/// other error is the source's. The bytes read so far are lost in every case, so the
/// source cannot be parsed any further after an error.
pub fn read_line<R: Read>(source: R, max: usize) -> IoResult<Vec<u8>> {
    let mut line = Line::new(max);
    for byte in source.bytes() {
        if line.take(byte?)? {
            return Ok(line.bytes);
        }
    }
    Err(unexpected_eof())
}

/// [`read_line`] over a buffered source, a buffer at a time rather than a call per byte
/// (the request head is most of the bytes a small request has). Consumes the line and
/// its CRLF, nothing after.
pub fn read_buffered_line<R: BufRead>(mut source: R, max: usize) -> IoResult<Vec<u8>> {
    let mut line = Line::new(max);
    loop {
        let buffer = source.fill_buf()?;
        if buffer.is_empty() {
            return Err(unexpected_eof());
        }
        let mut used = 0;
        let mut ended = Ok(false);
        while used < buffer.len() {
            if !line.after_cr {
                // A run of ordinary bytes is copied at once; the byte after it is judged
                // below, one at a time, by the same rules as `read_line`.
                let rest = &buffer[used..];
                let run = rest.iter().position(|&byte| matches!(byte, b'\r' | b'\n' | 0)).unwrap_or(rest.len());
                if line.bytes.len() + run > line.max {
                    ended = Err(malformed("line too long"));
                    break;
                }
                line.bytes.extend_from_slice(&rest[..run]);
                used += run;
                if used == buffer.len() {
                    break;
                }
            }
            ended = line.take(buffer[used]);
            used += 1;
            if !matches!(ended, Ok(false)) {
                break;
            }
        }
        source.consume(used);
        if ended? {
            return Ok(line.bytes);
        }
    }
}

/// A line being read, one byte at a time: the one place the rules above are written.
struct Line {
    bytes: Vec<u8>,
    after_cr: bool,
    max: usize,
}

impl Line {
    fn new(max: usize) -> Line {
        Line { bytes: Vec::new(), after_cr: false, max }
    }

    /// Takes the next byte: `Ok(true)` when it ended the line.
    fn take(&mut self, byte: u8) -> IoResult<bool> {
        match (self.after_cr, byte) {
            (true, b'\n') => Ok(true),
            (true, _) => Err(malformed("CR not followed by LF")),
            (false, b'\r') => {
                self.after_cr = true;
                Ok(false)
            }
            (false, b'\n') => Err(malformed("LF not preceded by CR")),
            (false, 0) => Err(malformed("NUL byte")),
            (false, _) if self.bytes.len() >= self.max => Err(malformed("line too long")),
            (false, _) => {
                self.bytes.push(byte);
                Ok(false)
            }
        }
    }
}

fn unexpected_eof() -> IoError {
    IoError::new(ErrorKind::UnexpectedEof, "the stream ended inside a line")
}

fn malformed(what: &'static str) -> IoError {
    IoError::new(ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::{read_buffered_line, read_line};
    use std::io::{BufReader, ErrorKind, Read};

    /// The first line of `input` by both readers, which must agree; the buffered one reads
    /// through a 3-byte buffer so that lines and CRLFs straddle refills.
    fn first_line(input: &[u8]) -> Result<Vec<u8>, ErrorKind> {
        let plain = read_line(input, 8).map_err(|err| err.kind());
        let buffered = read_buffered_line(BufReader::with_capacity(3, input), 8).map_err(|err| err.kind());
        assert_eq!(plain, buffered, "{:?}", input);
        plain
    }

    #[test]
    fn the_buffered_reader_consumes_its_line_and_nothing_more() {
        let mut source = BufReader::with_capacity(4, &b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"[..]);
        assert_eq!(read_buffered_line(&mut source, 64).unwrap(), b"GET / HTTP/1.1");
        assert_eq!(read_buffered_line(&mut source, 64).unwrap(), b"Host: x");
        assert_eq!(read_buffered_line(&mut source, 64).unwrap(), b"");
        let mut rest = String::new();
        source.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "body");
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
