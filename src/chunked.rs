//! Live streaming to the client: the response head and chunked frames written by hand.
//!
//! tiny_http's `respond` with a `Read` body holds small writes back in its chunk buffer
//! (measured: five events 200 ms apart all arrived together after a second), so a stream
//! takes the raw connection with `Request::into_writer()` and writes the status line and
//! headers (with the first event), then one `{len:x}\r\n…\r\n` chunk per upstream line,
//! each in one write, flushed at once.

use std::io::{self, Write};
use std::time::Instant;

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

/// Capacity of the frame buffer kept between frames.
const MAX_KEPT_FRAME: usize = 16 * 1024;

/// A response body written as it is produced.
///
/// Each call leaves in one write (one TCP segment, one wake-up of the client): the head
/// waits for the first frame, a frame's size line, data and CRLF go together, and the last
/// frame goes with the terminator. Written piece by piece, the head and a stream's first
/// event were two segments, and so were its last event and the end.
pub struct LiveWriter {
    inner: Box<dyn Write + Send>,
    chunked: bool,
    /// What the next write sends: the head until it has gone, then each frame in turn.
    frame: Vec<u8>,
    /// When the head was written (the time to first byte of the reply).
    first_byte: Option<Instant>,
}

impl LiveWriter {
    /// Renders the response head, to go out with the first frame (or [`LiveWriter::flush`]).
    /// HTTP/1.0 clients get a plain body ended by closing the connection; HTTP/1.1 clients
    /// get chunked encoding.
    pub fn start(inner: Box<dyn Write + Send>, spec: &Head<'_>) -> LiveWriter {
        let Head { status, reason, http10, close, content_type, headers } = *spec;
        let mut head = Vec::with_capacity(512);
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let _ = write!(head, "{version} {status} {reason}\r\n");
        head.extend_from_slice(b"Content-Type: ");
        head.extend_from_slice(content_type.as_bytes());
        head.extend_from_slice(b"\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
        for (name, value) in headers {
            for piece in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                head.extend_from_slice(piece);
            }
        }
        if http10 || close {
            head.extend_from_slice(b"Connection: close\r\n");
        }
        if !http10 {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        LiveWriter { inner, chunked: !http10, frame: head, first_byte: None }
    }

    /// Whether anything (the head at least) has reached the client's connection.
    pub fn started(&self) -> bool {
        self.first_byte.is_some()
    }

    /// When the head reached the client's connection, if it has.
    pub fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }

    /// Sends `data` as one chunk now (nothing when empty).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.frame_chunk(data);
        self.write_frame()
    }

    /// Sends the head now if it has not gone yet, so that a client sees the answer begin
    /// even when the first upstream line gave it nothing to show.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.started() {
            true => Ok(()),
            false => self.write_frame(),
        }
    }

    /// Sends `data` (if any) and the end of the body together.
    pub fn finish_with(mut self, data: &[u8]) -> io::Result<()> {
        if !data.is_empty() {
            self.frame_chunk(data);
        }
        if self.chunked {
            self.frame.extend_from_slice(b"0\r\n\r\n");
        }
        self.write_frame()
    }

    /// Ends the body.
    pub fn finish(self) -> io::Result<()> {
        self.finish_with(&[])
    }

    fn frame_chunk(&mut self, data: &[u8]) {
        if self.chunked {
            let _ = write!(self.frame, "{:x}\r\n", data.len());
            self.frame.extend_from_slice(data);
            self.frame.extend_from_slice(b"\r\n");
        } else {
            self.frame.extend_from_slice(data);
        }
    }

    fn write_frame(&mut self) -> io::Result<()> {
        let written = self.inner.write_all(&self.frame).and_then(|()| self.inner.flush());
        if written.is_ok() && self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
        self.frame.clear();
        // A long stream keeps this buffer: not at the size of its largest event (an
        // upstream line may be 16 MiB).
        self.frame.shrink_to(MAX_KEPT_FRAME);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what was written, and how many writes it took.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, Arc<Mutex<usize>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            *self.1.lock().unwrap() += 1;
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
            LiveWriter::start(Box::new(sink.clone()), &head(false, &[("X-Request-Id", "7".into())]));
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
        let mut writer = LiveWriter::start(Box::new(sink.clone()), &head(true, &[]));
        writer.send(b"abc").unwrap();
        writer.finish().unwrap();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("Connection: close\r\n") && !text.contains("chunked"));
        assert!(text.ends_with("\r\n\r\nabc"));
    }

    #[test]
    fn each_frame_is_one_write_the_head_going_with_the_first_and_the_end_with_the_last() {
        let sink = Sink::default();
        let mut writer = LiveWriter::start(Box::new(sink.clone()), &head(false, &[]));
        assert_eq!(*sink.1.lock().unwrap(), 0, "the head waits for the first frame");
        assert!(writer.first_byte().is_none());
        writer.send(b"first").unwrap();
        assert!(writer.started());
        let first_byte = writer.first_byte();
        assert!(first_byte.is_some(), "the time to first byte is when the head went");
        assert_eq!(*sink.1.lock().unwrap(), 1);
        writer.flush().unwrap();
        writer.send(&[b'x'; 5000]).unwrap();
        assert_eq!(*sink.1.lock().unwrap(), 2, "a large frame is still one write");
        assert_eq!(writer.first_byte(), first_byte, "later frames leave it alone");
        writer.finish_with(b"last").unwrap();
        assert_eq!(*sink.1.lock().unwrap(), 3);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("\r\n\r\n5\r\nfirst\r\n1388\r\nxxx"), "{text:?}");
        assert!(text.ends_with("xxx\r\n4\r\nlast\r\n0\r\n\r\n"), "{text:?}");
    }

    #[test]
    fn flush_sends_a_head_still_waiting_once() {
        let sink = Sink::default();
        let mut writer = LiveWriter::start(Box::new(sink.clone()), &head(false, &[]));
        writer.flush().unwrap();
        writer.flush().unwrap();
        assert_eq!(*sink.1.lock().unwrap(), 1);
        assert!(String::from_utf8(sink.0.lock().unwrap().clone()).unwrap().ends_with("chunked\r\n\r\n"));
    }
}
