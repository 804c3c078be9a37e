//! A raw HTTP/1.1 client for streams: the request is written by hand and the reply read
//! chunk by chunk off the socket, so each SSE event's arrival time is known and the
//! connection can be dropped at any moment.

use super::JsonReply;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A streaming reply read straight off the socket, chunk by chunk, so each event's arrival
/// time is known and the connection can be dropped at any moment.
pub struct SseConn {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    framing: Framing,
    /// Decoded body bytes not yet returned as events.
    pending: Vec<u8>,
    /// When the latest body bytes arrived.
    last_read: Instant,
    ended: bool,
}

/// One event of a named-event stream: `event: NAME` and `data: JSON`.
#[derive(Debug, Clone)]
pub struct Named {
    /// The `event:` name.
    pub name: String,
    /// The `data:` payload.
    pub data: Value,
}

enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
}

impl SseConn {
    /// Sends `POST path` with a JSON body to `addr` and reads the response head.
    pub fn open(addr: &str, path: &str, token: Option<&str>, body: &Value) -> SseConn {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        SseConn::open_raw(addr, path, &headers, body.to_string().as_bytes())
    }

    /// Sends `POST path` with these extra headers and body, and reads the response head.
    pub fn open_raw(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> SseConn {
        SseConn::request(addr, "POST", path, headers, body)
    }

    /// Sends `method path` byte for byte (nothing normalises the path, so `//v1/models`
    /// arrives as written) with these extra headers and body, and reads the response head.
    pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> SseConn {
        let stream = TcpStream::connect(addr).expect("connect to the gateway");
        SseConn::send(stream, method, path, headers, body)
    }

    /// Sends `POST path` as [`super::TOKEN`] on an already connected socket, and reads
    /// the response head.
    pub fn post_on(stream: TcpStream, path: &str, body: &Value) -> SseConn {
        let auth = format!("Bearer {}", super::TOKEN);
        SseConn::send(stream, "POST", path, &[("Authorization", auth.as_str())], body.to_string().as_bytes())
    }

    fn send(
        mut stream: TcpStream,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> SseConn {
        let addr = stream.peer_addr().expect("a connected socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body)).expect("send the request");

        let mut reader = BufReader::new(stream);
        let status_line = read_line(&mut reader);
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut reader);
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let framing = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked
        } else if let Some(length) = find("content-length") {
            Framing::Length(length.parse().expect("numeric content-length"))
        } else {
            Framing::UntilClose
        };
        SseConn {
            status,
            headers,
            reader,
            framing,
            pending: Vec::new(),
            last_read: Instant::now(),
            ended: false,
        }
    }

    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Reads the next piece of the body into `pending`; false at its end.
    fn read_more(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let mut data = Vec::new();
        match self.framing {
            Framing::Chunked => {
                let size_line = read_line(&mut self.reader);
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    while !read_line(&mut self.reader).is_empty() {}
                    self.ended = true;
                    return false;
                }
                data.resize(size, 0);
                self.reader.read_exact(&mut data).expect("read a chunk");
                let crlf = read_line(&mut self.reader);
                assert!(crlf.is_empty(), "chunk not followed by CRLF: {crlf:?}");
            }
            Framing::Length(ref mut left) => {
                if *left == 0 {
                    self.ended = true;
                    return false;
                }
                data.resize((*left).min(64 * 1024), 0);
                let n = self.reader.read(&mut data).expect("read the body");
                assert!(n > 0, "connection closed with {left} body bytes missing");
                data.truncate(n);
                *left -= n;
            }
            Framing::UntilClose => {
                data.resize(64 * 1024, 0);
                let n = self.reader.read(&mut data).expect("read the body");
                if n == 0 {
                    self.ended = true;
                    return false;
                }
                data.truncate(n);
            }
        }
        self.last_read = Instant::now();
        self.pending.extend_from_slice(&data);
        true
    }

    /// The next SSE frame (the text before a blank line) and when it arrived; `None` at
    /// the end of the body.
    fn next_frame(&mut self) -> Option<(Instant, String)> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(event[..end].to_vec()).expect("UTF-8 event");
                return Some((self.last_read, text));
            }
            if !self.read_more() {
                let rest = String::from_utf8_lossy(&self.pending);
                assert!(rest.is_empty(), "the stream ended inside an event: {rest:?}");
                return None;
            }
        }
    }

    /// The next SSE event's `data:` payload and when it arrived; `None` at the end of the
    /// body. Panics on framing that is not exactly `data: <payload>\n\n`.
    pub fn next_event(&mut self) -> Option<(Instant, String)> {
        let (at, text) = self.next_frame()?;
        assert!(!text.contains('\n'), "an event with more than one line: {text:?}");
        let payload = text
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("an event that is not a data line: {text:?}"));
        Some((at, payload.to_string()))
    }

    /// The next named event, as the Responses and Messages APIs write them; `None` at the
    /// end of the body. Panics on framing that is not exactly `event: NAME\ndata: JSON\n\n`,
    /// or on a JSON `type` other than the event's name.
    pub fn next_named(&mut self) -> Option<Named> {
        let (_, text) = self.next_frame()?;
        let (name, data) = text
            .strip_prefix("event: ")
            .and_then(|rest| rest.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an `event:` + `data:` frame: {text:?}"));
        assert!(!data.contains('\n'), "an event with more than one data line: {text:?}");
        let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("event data {data}: {e}"));
        assert_eq!(data["type"].as_str(), Some(name), "the data's type is the event's name: {text}");
        Some(Named { name: name.to_string(), data })
    }

    /// Every remaining named event, until the body ends.
    pub fn named_events(&mut self) -> Vec<Named> {
        std::iter::from_fn(|| self.next_named()).collect()
    }

    /// Every remaining event, until the body ends.
    pub fn events(&mut self) -> Vec<(Instant, String)> {
        std::iter::from_fn(|| self.next_event()).collect()
    }

    /// The whole reply as a [`JsonReply`] (for replies that are not SSE); the connection
    /// stays open.
    pub fn reply(&mut self) -> JsonReply {
        let text = self.read_body();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        JsonReply { status: self.status, headers: self.headers.clone(), text, body }
    }

    /// The whole reply as a [`JsonReply`], closing the connection.
    pub fn into_reply(mut self) -> JsonReply {
        self.reply()
    }

    /// The rest of the body as text (for replies that are not SSE).
    pub fn read_body(&mut self) -> String {
        while self.read_more() {}
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("read a line from the gateway");
    line.trim_end_matches(['\r', '\n']).to_string()
}
