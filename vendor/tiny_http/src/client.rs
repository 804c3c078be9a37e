use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::{SocketAddr, TcpStream};

use crate::common::{HTTPVersion, Method};
use crate::connection::Connection;
use crate::util::{ReadClock, RefinedTcpStream};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Longest request line or header line accepted.
const MAX_HEADER_LINE: usize = 16 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 128;
/// Most bytes of an unread request body discarded before its connection is closed.
const LINGER_LIMIT: usize = 64 * 1024 * 1024;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // ollama-gateway: set when a request is dropped before its body was read to the end;
    // the connection then serves no further request (see `read`)
    body_unread: Arc<AtomicBool>,

    // ollama-gateway: the read timeouts (see `ReadClock`), when the owner gave them
    clock: Option<Arc<ReadClock>>,

    // ollama-gateway: the socket, for an owner that watches it while a request is served
    socket: Option<Arc<Connection>>,

    // ollama-gateway: requests read so far
    requests_read: u64,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            body_unread: Arc::new(AtomicBool::new(false)),
            clock: None,
            socket: None,
            requests_read: 0,
        }
    }

    /// ollama-gateway: a connection whose requests are read on the calling thread (iterate
    /// it, answering each request before asking for the next), with every read bounded by
    /// `clock`. tiny_http's own `Server` hands requests to other threads through a queue;
    /// an owner that accepts connections itself serves each one where it was read.
    pub fn for_stream(stream: TcpStream, clock: Arc<ReadClock>) -> ClientConnection {
        let (read, write) = RefinedTcpStream::with_clock(Connection::from(stream), Some(Arc::clone(&clock)));
        let socket = read.socket();
        let mut connection = ClientConnection::new(write, read);
        connection.clock = Some(clock);
        connection.socket = socket;
        connection
    }

    /// ollama-gateway: the connection's socket (for a `for_stream` connection over TCP).
    pub fn socket(&self) -> Option<Arc<Connection>> {
        self.socket.clone()
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// ollama-gateway: strictly (`util/line.rs`): a bare LF, a CR without LF, a NUL, a
    /// non-ASCII byte or a line over 16 KiB (0.12.0 grew its buffer without end: tiny-http
    /// issue 56) is an `InvalidData` error, for which the head is answered 400 (see
    /// `head_error`). 0.12.0 took a bare LF as part of the line, and closed without an
    /// answer on a non-ASCII or too long line.
    fn read_next_line(&mut self) -> IoResult<AsciiString> {
        let line = crate::util::read_buffered_line(&mut self.next_header_source, MAX_HEADER_LINE)?;
        AsciiString::from_ascii(line)
            .map_err(|_| IoError::new(ErrorKind::InvalidData, "header is not in ASCII"))
    }

    /// ollama-gateway: a lingering close: reads and drops what the client is still sending
    /// (at most `LINGER_LIMIT` bytes, within the head timeout), so that closing with unread
    /// data does not reset the connection (a TCP RST can make the client lose the answer it
    /// was sent, such as a 413 or a 400), then lets the caller close.
    fn linger(&mut self) {
        if let Some(clock) = &self.clock {
            clock.linger();
        }
        // The answer is written: end our side now, so the client sees it end at once
        // rather than when the draining is over.
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(std::net::Shutdown::Write);
        }
        let mut sink = [0u8; 8192];
        let mut discarded = 0;
        while discarded < LINGER_LIMIT {
            match self.next_header_source.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    }

    /// ollama-gateway: answers a head that cannot be served with `status` and
    /// `Connection: close`, then closes lingering (the client may have sent a body).
    fn refuse_head(&mut self, status: u16, version: HTTPVersion) {
        use crate::{Header, Response, StatusCode};
        if let Some(mut writer) = self.sink.next() {
            let mut response = Response::new_empty(StatusCode(status));
            if let Ok(close) = Header::from_bytes(&b"Connection"[..], &b"close"[..]) {
                response.add_header(close);
            }
            response.raw_print(&mut writer, version, &[], false, None).ok();
            writer.flush().ok();
        }
        self.linger();
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // ollama-gateway: wait until the previous request is done with the socket, and
        // close the connection if it left part of its body unread: those bytes are not a
        // request, and must not be parsed as one (request smuggling).
        self.next_header_source.wait_for_turn();
        if let Some(clock) = &self.clock {
            if self.requests_read > 0 {
                clock.await_next_request();
            }
        }
        if self.body_unread.load(Ordering::Acquire) {
            self.linger();
            return Err(ReadError::ReadIoError(IoError::new(
                ErrorKind::ConnectionAborted,
                "the previous request's body was not read; closing",
            )));
        }
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self
                    .read_next_line()
                    .map_err(|err| head_error(err, ReadError::WrongRequestLine))?;

                // ollama-gateway: exactly as sent; 0.12.0 trimmed it first
                parse_request_line(line.as_str())?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self
                        .read_next_line()
                        .map_err(|err| head_error(err, ReadError::WrongHeader(version.clone())))?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() >= MAX_HEADERS {
                        return Err(ReadError::WrongHeader(version));
                    }
                    // ollama-gateway: strictly (`Header::from_str`): a line starting with
                    // whitespace (obs-fold), whitespace before the colon or an empty name is
                    // refused (RFC 9112 §5.1, §5.2); 0.12.0 trimmed the line first
                    headers.push(match line.as_str().parse() {
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                // ollama-gateway: a body whose end two parsers could place differently is
                // refused here, with a 400 and a close (RFC 9112 §6.3; `util/framing.rs`)
                if let Err(what) = crate::util::body_framing(&headers) {
                    log::debug!("refusing a request from {:?}: {}", self.remote_addr.as_ref().ok(), what);
                    return Err(ReadError::WrongHeader(version));
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            self.body_unread.clone(),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // ollama-gateway: the head (and a small body read with it) is in; a larger body is
        // bounded by the deadline its reader sets
        self.requests_read += 1;
        if let Some(clock) = &self.clock {
            clock.head_done();
        }

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                // we don't know where the next request would start, so we have to close
                Err(ReadError::WrongRequestLine) => {
                    self.refuse_head(400, HTTPVersion(1, 1));
                    return None;
                }

                Err(ReadError::WrongHeader(ver)) => {
                    self.refuse_head(400, ver);
                    return None;
                }

                Err(ReadError::ReadIoError(ref err))
                    if matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
                {
                    // ollama-gateway: an idle keep-alive connection timed out. 0.12.0 wrote a
                    // 408 here, which a client reusing the connection reads as the answer to
                    // its next request (and which waits behind a long stream on the same
                    // connection); close quietly instead, as nginx does.
                    return None;
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    self.refuse_head(417, ver);
                    return None;
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            // ollama-gateway: HTTP/1.0 keep-alive needs a Content-Length, and a live stream
            // has none: it ends when the connection closes. Serve one request per HTTP/1.0
            // connection, whatever its Connection header says.
            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                _ if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
///
/// ollama-gateway: strictly `method SP request-target SP HTTP-version` (RFC 9112 §3): a token
/// as the method, a target of visible ASCII, single spaces, nothing before or after; 0.12.0
/// took extra words and any method.
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None) => (method, target, version),
        _ => return Err(ReadError::WrongRequestLine),
    };
    if !crate::common::is_token(method)
        || target.is_empty()
        || !target.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ReadError::WrongRequestLine);
    }
    let version = parse_http_version(version)?;
    let method = method.parse().map_err(|_| ReadError::WrongRequestLine)?;

    Ok((method, target.to_owned(), version))
}

/// ollama-gateway: a malformed line of the head (an `InvalidData` error from
/// `read_next_line`) is refused with `malformed`, a 400; any other error closes quietly.
fn head_error(err: IoError, malformed: ReadError) -> ReadError {
    if err.kind() == ErrorKind::InvalidData {
        log::debug!("refusing a request head: {}", err);
        malformed
    } else {
        ReadError::ReadIoError(err)
    }
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }

    /// ollama-gateway: the request line is exactly `method SP target SP version`.
    #[test]
    fn request_lines_are_parsed_strictly() {
        let (method, path, _) = super::parse_request_line("M-SEARCH * HTTP/1.0").unwrap();
        assert_eq!((method.as_str(), path.as_str()), ("M-SEARCH", "*"));
        assert!(super::parse_request_line("GET /?a=b&c=%20 HTTP/1.1").is_ok());
        for bad in [
            "GET  /hello HTTP/1.1",
            "GET /hello  HTTP/1.1",
            " GET /hello HTTP/1.1",
            "GET /hello HTTP/1.1 ",
            "GET\t/hello HTTP/1.1",
            "GET /hello\tHTTP/1.1",
            "GET /he\x01llo HTTP/1.1",
            "GET /hello HTTP/1.1 extra",
            "GET  HTTP/1.1",
            "G(T /hello HTTP/1.1",
            "GET /hello http/1.1",
            "GET /hello HTTP/1.1.1",
            "GET /hello HTTP/11",
            "",
        ] {
            assert!(super::parse_request_line(bad).is_err(), "{:?}", bad);
        }
    }

    /// ollama-gateway: raw requests through a real server on loopback.
    mod wire {
        use crate::{Response, Server};
        use std::io::{ErrorKind, Read, Write};
        use std::net::{Shutdown, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::thread;
        use std::time::Duration;

        /// What the client read until the server closed, and what the application saw:
        /// `path body` for each request whose body read to its end, `path error` otherwise.
        struct Exchange {
            answer: String,
            served: Vec<String>,
        }

        /// Sends `raw` to a fresh server, half-closes, and reads until the server closes
        /// (bounded by a read timeout). The application reads each body to its end and
        /// answers 200, or 400 and `Connection: close` when the body cannot be read.
        fn exchange(raw: &[u8]) -> Exchange {
            let server = Arc::new(Server::http("127.0.0.1:0").unwrap());
            let addr = server.server_addr().to_ip().unwrap();
            let served = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let app = {
                let (server, served, stop) = (server.clone(), served.clone(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let mut request = match server.recv_timeout(Duration::from_millis(10)) {
                            Ok(Some(request)) => request,
                            _ => continue,
                        };
                        let mut body = Vec::new();
                        let read = request.as_reader().read_to_end(&mut body);
                        let path = request.url().to_owned();
                        let response = match read {
                            Ok(_) => {
                                let body = String::from_utf8_lossy(&body).into_owned();
                                served.lock().unwrap().push(format!("{} {}", path, body));
                                Response::from_string("ok")
                            }
                            Err(err) => {
                                served.lock().unwrap().push(format!("{} error {:?}", path, err.kind()));
                                Response::from_string("bad body").with_status_code(400).with_header(
                                    crate::Header::from_bytes(&b"Connection"[..], &b"close"[..]).unwrap(),
                                )
                            }
                        };
                        request.respond(response).unwrap();
                    }
                })
            };
            let mut socket = TcpStream::connect(addr).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The server may close before it has read everything; what it answered counts.
            let _ = socket.write_all(raw);
            let _ = socket.shutdown(Shutdown::Write);
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match socket.read(&mut buf) {
                    Ok(0) => break,
                    Ok(read) => answer.extend_from_slice(&buf[..read]),
                    // Closed with bytes of ours unread: a reset, after the answer.
                    Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
                    Err(err) => panic!("the server did not close the connection: {}", err),
                }
            }
            stop.store(true, Ordering::Release);
            app.join().unwrap();
            let served = served.lock().unwrap().clone();
            Exchange { answer: String::from_utf8_lossy(&answer).into_owned(), served }
        }

        #[track_caller]
        fn assert_refused(raw: &str) {
            let exchange = exchange(raw.as_bytes());
            assert!(exchange.answer.starts_with("HTTP/1.1 400 "), "{:?}: {:?}", raw, exchange.answer);
            assert_eq!(exchange.answer.matches("HTTP/1.1 ").count(), 1, "{:?}: {:?}", raw, exchange.answer);
            assert_eq!(exchange.served, Vec::<String>::new(), "{:?}", raw);
        }

        #[test]
        fn malformed_heads_are_refused_and_closed() {
            for raw in [
                "GET /a HTTP/1.1\nHost: x\r\n\r\n",
                "GET /a HTTP/1.1\r\nHost: x\n\r\n",
                "GET /a HTTP/1.1\r\nX-A: a\nb\r\n\r\n",
                "GET /a HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
                "GET /a HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
                "GET /a HTTP/1.1\r\nX-A: caf\u{e9}\r\n\r\n",
                "GET /a HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
                "GET /a HTTP/1.1\r\n X-A: a\r\n\r\n",
                "GET /a HTTP/1.1\r\nX-A : a\r\n\r\n",
                "GET /a HTTP/1.1\r\n: a\r\n\r\n",
                "GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /a HTTP/1.1 \r\nHost: x\r\n\r\n",
            ] {
                assert_refused(raw);
            }
        }

        #[test]
        fn ambiguous_bodies_are_refused_and_closed() {
            for headers in [
                "Content-Length: 5\r\nTransfer-Encoding: chunked",
                "Transfer-Encoding: chunked\r\nContent-Length: 5",
                "Content-Length: 5\r\nContent-Length: 6",
                "Content-Length: 5, 6",
                "Content-Length: +5",
                "Content-Length: 0x5",
                "Content-Length: 18446744073709551616",
                "Transfer-Encoding: chunked, identity",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            ] {
                assert_refused(&format!(
                    "POST /a HTTP/1.1\r\n{}\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
                    headers
                ));
            }
        }

        #[test]
        fn a_malformed_chunked_body_is_a_read_error_and_closes() {
            let exchange = exchange(
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n\
                  GET /b HTTP/1.1\r\n\r\n",
            );
            assert!(exchange.answer.starts_with("HTTP/1.1 400 "), "{:?}", exchange.answer);
            assert_eq!(exchange.answer.matches("HTTP/1.1 ").count(), 1, "{:?}", exchange.answer);
            assert_eq!(exchange.served, ["/a error InvalidData"]);
        }

        #[test]
        fn well_framed_bodies_keep_the_connection() {
            let exchange = exchange(
                b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
                  POST /length HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nworld\
                  GET /last HTTP/1.1\r\nConnection: close\r\n\r\n",
            );
            assert_eq!(exchange.answer.matches("HTTP/1.1 200 ").count(), 3, "{:?}", exchange.answer);
            assert_eq!(exchange.served, ["/chunked hello", "/length world", "/last "]);
        }

        #[test]
        fn a_content_length_body_cut_short_is_a_read_error() {
            let mut raw = b"POST /a HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec();
            raw.extend(std::iter::repeat_n(b'x', 2000));
            let exchange = exchange(&raw);
            assert_eq!(exchange.served, ["/a error UnexpectedEof"]);
        }

        /// A body declared with `Connection: upgrade` is still delimited by its framing: 0.12.0
        /// read the rest of the connection as the body.
        #[test]
        fn an_upgrade_request_body_keeps_its_framing() {
            let exchange = exchange(
                b"POST /a HTTP/1.1\r\nConnection: upgrade\r\nContent-Length: 5\r\n\r\nhello\
                  GET /b HTTP/1.1\r\n\r\n",
            );
            assert_eq!(exchange.served, ["/a hello"]);
        }
    }
}
