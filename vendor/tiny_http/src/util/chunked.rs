//! ollama-gateway: a strict decoder of chunked request bodies (RFC 9112 §7.1).
//!
//! It replaces the `chunked_transfer` crate's `Decoder`, which took a chunk size with spaces
//! or a sign around it (`usize::from_str_radix` on a trimmed string), did not check that chunk
//! data ends with CRLF, and read no trailer section. Here a chunk-size line is `1*HEXDIG`,
//! then either CRLF or `;` and extensions (which are skipped); chunk data is followed by
//! CRLF; the last chunk is followed by at most [`MAX_TRAILERS`] field lines, each at most
//! [`MAX_LINE`] bytes, and an empty line. Whitespace between the size and `;` (the grammar's
//! "bad whitespace") is refused too: no client we know sends it, and parsers disagree on it.
//!
//! The request head has already been answered by the time a body is read, so a framing error
//! here cannot become a `400` from tiny_http: it is an `InvalidData` read error, returned to
//! the application, which answers it. The error is sticky (every later read returns it), and
//! the body never reaches its end, so the connection is closed rather than parsed further
//! (see `UntilEof` in `request.rs`).

use crate::common::Header;
use crate::util::line::read_line;
use std::convert::TryFrom;
use std::io::{Error as IoError, ErrorKind, Read, Result as IoResult};

/// Longest chunk-size line, extensions included.
pub const MAX_SIZE_LINE: usize = 4096;
/// Longest trailer line.
pub const MAX_LINE: usize = 16 * 1024;
/// Most trailer lines after the last chunk.
pub const MAX_TRAILERS: usize = 128;

/// Reads a chunked body from `source` and returns its data; ends after the trailer section.
pub struct ChunkedDecoder<R> {
    source: R,
    state: State,
}

enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// After chunk data, before its CRLF.
    DataEnd,
    /// After the last chunk, with this many trailer lines read.
    Trailers(usize),
    /// After the empty line that ends the body.
    Done,
    /// A read failed; every later read fails the same way.
    Failed(ErrorKind, String),
}

impl<R: Read> ChunkedDecoder<R> {
    /// A decoder reading from `source`, which starts at the first chunk-size line.
    pub fn new(source: R) -> ChunkedDecoder<R> {
        ChunkedDecoder { source, state: State::Size }
    }

    /// One step: returns `Some(n)` once `n` bytes of data (0: the end) are in `buf`.
    fn step(&mut self, buf: &mut [u8]) -> IoResult<Option<usize>> {
        match self.state {
            State::Size => {
                let line = read_line(&mut self.source, MAX_SIZE_LINE)?;
                let size = parse_chunk_size(&line).map_err(invalid)?;
                self.state = if size == 0 { State::Trailers(0) } else { State::Data(size) };
                Ok(None)
            }
            State::Data(left) => {
                let want = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
                let read = self.source.read(&mut buf[..want])?;
                if read == 0 {
                    return Err(IoError::new(ErrorKind::UnexpectedEof, "the body ended inside a chunk"));
                }
                let left = left - read as u64;
                self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                Ok(Some(read))
            }
            State::DataEnd => {
                let mut crlf = [0u8; 2];
                self.source.read_exact(&mut crlf)?;
                if &crlf != b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                self.state = State::Size;
                Ok(None)
            }
            State::Trailers(count) => {
                let line = read_line(&mut self.source, MAX_LINE)?;
                if line.is_empty() {
                    self.state = State::Done;
                    return Ok(Some(0));
                }
                if count >= MAX_TRAILERS {
                    return Err(invalid("too many trailer lines"));
                }
                // The same rules as header lines, though the fields are dropped.
                let valid = std::str::from_utf8(&line).ok().is_some_and(|l| l.parse::<Header>().is_ok());
                if !valid {
                    return Err(invalid("a malformed trailer line"));
                }
                self.state = State::Trailers(count + 1);
                Ok(None)
            }
            State::Done => Ok(Some(0)),
            State::Failed(kind, ref what) => Err(IoError::new(kind, what.clone())),
        }
    }
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.step(buf) {
                Ok(Some(read)) => return Ok(read),
                Ok(None) => {}
                // Nothing was consumed: the same step can be tried again.
                Err(err) if err.kind() == ErrorKind::Interrupted && matches!(self.state, State::Data(_)) => {
                    return Err(err)
                }
                Err(err) => {
                    if !matches!(self.state, State::Failed(..)) {
                        self.state = State::Failed(err.kind(), err.to_string());
                    }
                    return Err(err);
                }
            }
        }
    }
}

fn invalid(what: &'static str) -> IoError {
    IoError::new(ErrorKind::InvalidData, what)
}

/// A chunk-size line without its CRLF: `1*HEXDIG`, then nothing or `;` and extensions.
fn parse_chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let (digits, extensions) = line.split_at(end);
    if digits.is_empty() {
        return Err("an empty chunk size");
    }
    let size = digits.iter().try_fold(0u64, |size, &b| {
        let digit = char::from(b).to_digit(16).ok_or("a chunk size that is not hexadecimal")?;
        size.checked_mul(16).and_then(|s| s.checked_add(u64::from(digit))).ok_or("a chunk size too large")
    })?;
    if extensions.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        return Err("a control character in a chunk extension");
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::{parse_chunk_size, ChunkedDecoder, MAX_LINE, MAX_TRAILERS};
    use std::io::{ErrorKind, Read};

    /// The decoded body, or the kind of the error and the input left unread.
    fn decode(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ErrorKind> {
        let mut source = input;
        let mut body = Vec::new();
        ChunkedDecoder::new(&mut source).read_to_end(&mut body).map_err(|err| err.kind())?;
        Ok((body, source.to_vec()))
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"0"), Ok(0));
        assert_eq!(parse_chunk_size(b"1a"), Ok(26));
        assert_eq!(parse_chunk_size(b"00000000000000000000F"), Ok(15));
        assert_eq!(parse_chunk_size(b"FfFfFfFfFfFfFfFf"), Ok(u64::MAX));
        assert_eq!(parse_chunk_size(b"5;name=value;other=\"quoted ; value\""), Ok(5));
        assert_eq!(parse_chunk_size(b"5;"), Ok(5));
        for bad in [
            &b""[..],
            b" 5",
            b"5 ",
            b"\t5",
            b"5 ;ext",
            b"+5",
            b"-5",
            b"0x5",
            b"5g",
            b";ext",
            b"10000000000000000",
            b"5;a\x01b",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_chunked_body_ends_exactly_after_its_trailers() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(decode(input), Ok((b"hello world".to_vec(), b"GET / HTTP/1.1\r\n".to_vec())));
        let input = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\nnext";
        assert_eq!(decode(input), Ok((b"abc".to_vec(), b"next".to_vec())));
        assert_eq!(decode(b"0\r\n\r\n"), Ok((Vec::new(), Vec::new())));
    }

    #[test]
    fn malformed_chunked_bodies_are_invalid_data() {
        for bad in [
            &b" 5\r\nhello\r\n0\r\n\r\n"[..],
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX-A: 1\n\r\n",
            b"5\r\nhello\r\n0\r\n folded: 1\r\n\r\n",
            b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(decode(bad), Err(ErrorKind::InvalidData), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn trailers_are_bounded() {
        let mut endless = b"0\r\nX-Long: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        assert_eq!(decode(&endless), Err(ErrorKind::InvalidData));
        let mut many = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILERS {
            many.extend(b"X-A: 1\r\n");
        }
        many.extend(b"\r\n");
        assert_eq!(decode(&many), Err(ErrorKind::InvalidData));
    }

    #[test]
    fn a_truncated_body_is_an_unexpected_eof() {
        for truncated in [&b"5\r\nhel"[..], b"5\r\nhello", b"5\r\nhello\r", b"5\r\nhello\r\n", b"0\r\n"] {
            assert_eq!(decode(truncated), Err(ErrorKind::UnexpectedEof), "{:?}", truncated);
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut decoder = ChunkedDecoder::new(&b"5 \r\nhello\r\n0\r\n\r\n"[..]);
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            assert_eq!(decoder.read(&mut buf).unwrap_err().kind(), ErrorKind::InvalidData);
        }
    }

    #[test]
    fn data_is_returned_as_it_comes() {
        let mut decoder = ChunkedDecoder::new(&b"a\r\n0123456789\r\n0\r\n\r\n"[..]);
        let mut buf = [0u8; 4];
        let mut reads = Vec::new();
        loop {
            let read = decoder.read(&mut buf).unwrap();
            if read == 0 {
                break;
            }
            reads.push(buf[..read].to_vec());
        }
        assert_eq!(reads, [b"0123".to_vec(), b"4567".to_vec(), b"89".to_vec()]);
        assert_eq!(decoder.read(&mut buf).unwrap(), 0);
    }
}
