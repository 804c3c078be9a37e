use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the connection is marked to close (see `Drop`).
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    body_unread: Arc<AtomicBool>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(
        reader: R,
        size: usize,
        body_unread: Arc<AtomicBool>,
    ) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            body_unread,
        };

        (r, rx)
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            // ollama-gateway: the stream ending before `Content-Length` bytes is an error, as
            // it is for short bodies read up front; 0.12.0 returned a normal end, so the
            // application took a truncated body for the whole of it.
            Ok(0) if !buf.is_empty() => Err(IoError::new(
                ErrorKind::UnexpectedEof,
                "the connection closed before the end of the body (Content-Length)",
            )),
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        // ollama-gateway fix: 0.12.0 drained the unread rest of the body into
        // `vec![0; remaining]`, sized by the client's Content-Length (one request declaring a
        // huge body aborted the process), and a bounded drain lets the bytes after the limit
        // be parsed as a new request. Instead, nothing is drained: the connection is marked
        // so that it serves no further request and closes.
        if self.size > 0 {
            self.body_unread.store(true, Ordering::Release);
            self.last_read_signal.send(Ok(())).ok();
        } else {
            self.last_read_signal.send(Ok(())).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5, Default::default());

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    /// ollama-gateway: an unread rest is not drained (0.12.0 drained it, which this test
    /// checked); the connection is marked to close instead.
    #[test]
    fn test_not_enough() {
        use std::io::Cursor;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());
        let body_unread = Arc::new(AtomicBool::new(false));

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5, body_unread.clone());

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        assert!(body_unread.load(Ordering::Acquire));
        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, "ello world");
    }

    /// ollama-gateway: a body shorter than its Content-Length is an error, not its end.
    #[test]
    fn a_truncated_body_is_an_unexpected_eof() {
        let (mut equal_reader, _) = EqualReader::new(&b"hello"[..], 8, Default::default());
        let mut body = Vec::new();
        let err = equal_reader.read_to_end(&mut body).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert_eq!(body, b"hello");
    }
}
