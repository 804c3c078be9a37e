//! Live streaming to the client: the response head and chunked frames written by hand.
//!
//! tiny_http's `respond` with a `Read` body holds small writes back in its chunk buffer
//! (measured: five events 200 ms apart all arrived together after a second), so a stream
//! takes the raw connection with `Request::into_writer()` and writes the status line,
//! headers and one `{len:x}\r\n…\r\n` chunk per upstream line, flushing each at once.

use std::io::{self, Write};

/// The head of a live response.
pub struct Head<'a> {
    /// HTTP status.
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'a str,
    /// Whether the client speaks HTTP/1.0 (no chunked encoding; the body ends at close).
    pub http10: bool,
    /// Whether the connection closes after this response.
    pub close: bool,
    /// The `Content-Type`.
    pub content_type: &'a str,
    /// Extra headers.
    pub headers: &'a [(&'a str, String)],
}

/// A response body written as it is produced.
pub struct LiveWriter {
    inner: Box<dyn Write + Send>,
    chunked: bool,
}

impl LiveWriter {
    /// Writes the response head and returns the writer for the body. HTTP/1.0 clients get a
    /// plain body ended by closing the connection; HTTP/1.1 clients get chunked encoding.
    pub fn start(mut inner: Box<dyn Write + Send>, spec: &Head<'_>) -> io::Result<LiveWriter> {
        let Head { status, reason, http10, close, content_type, headers } = *spec;
        let mut head = String::with_capacity(256);
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        head.push_str(&format!("{version} {status} {reason}\r\n"));
        head.push_str("Content-Type: ");
        head.push_str(content_type);
        head.push_str("\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        if http10 || close {
            head.push_str("Connection: close\r\n");
        }
        if !http10 {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        inner.write_all(head.as_bytes())?;
        inner.flush()?;
        Ok(LiveWriter { inner, chunked: !http10 })
    }

    /// Writes `data` as one chunk and flushes it to the socket.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.chunked {
            write!(self.inner, "{:x}\r\n", data.len())?;
            self.inner.write_all(data)?;
            self.inner.write_all(b"\r\n")?;
        } else {
            self.inner.write_all(data)?;
        }
        self.inner.flush()
    }

    /// Ends the body.
    pub fn finish(mut self) -> io::Result<()> {
        if self.chunked {
            self.inner.write_all(b"0\r\n\r\n")?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn head<'a>(http10: bool, headers: &'a [(&'a str, String)]) -> Head<'a> {
        Head { status: 200, reason: "OK", http10, close: false, content_type: "text/event-stream", headers }
    }

    #[test]
    fn chunked_frames_and_terminator() {
        let sink = Sink::default();
        let mut writer =
            LiveWriter::start(Box::new(sink.clone()), &head(false, &[("X-Request-Id", "7".into())])).unwrap();
        writer.send(b"data: {}\n\n").unwrap();
        writer.finish().unwrap();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"), "{text}");
        assert!(text.contains("X-Accel-Buffering: no\r\n") && text.contains("X-Request-Id: 7\r\n"));
        assert!(text.ends_with("\r\n\r\na\r\ndata: {}\n\n\r\n0\r\n\r\n"), "{text:?}");
    }

    #[test]
    fn http10_gets_a_plain_body_and_close() {
        let sink = Sink::default();
        let mut writer = LiveWriter::start(Box::new(sink.clone()), &head(true, &[])).unwrap();
        writer.send(b"abc").unwrap();
        writer.finish().unwrap();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("Connection: close\r\n") && !text.contains("chunked"));
        assert!(text.ends_with("\r\n\r\nabc"));
    }
}
