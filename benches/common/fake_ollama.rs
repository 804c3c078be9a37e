//! The fake Ollama of `make bench`: one thread, one epoll loop, every connection on it.
//!
//! HTTP/1.1 keep-alive (pipelined requests are answered in order), request bodies sized by
//! `Content-Length` (a chunked request body is answered `400` and the connection closed:
//! the gateway never sends one). A request whose body holds `"stream":true` gets a chunked
//! NDJSON stream shaped by [`Shape`]; any other gets [`NATIVE_REPLY`]. Stream lines are due
//! at start + gap × index, from a timer queue, so a late wake-up delays one line and not
//! the ones after it; each content line's text is the time it was sent, so a client can
//! tell how long the line took to reach it ([`sent_at`]). Bad input, a peer's close and a client that stops reading close that
//! connection; nothing a peer sends makes the loop panic.
//!
//! One thread, so that what the fake costs is small and the same on the direct and the
//! gateway path, and its wake-ups do not crowd the gateway's threads off the machine's
//! cores (a thread per connection did, at 64 clients and more).

use crate::poller::{Poller, Ready};
use crate::wire::read_head;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const NATIVE_REPLY: &str = r#"{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hello!"},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":3}"#;
/// A content line is this, the time it was sent (see [`stamp`]), then [`CONTENT_LINE_END`].
const CONTENT_LINE_START: &str = "{\"model\":\"m\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"";
const CONTENT_LINE_END: &str = "\"},\"done\":false}\n";
const DONE_LINE: &str = "{\"model\":\"m\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":5,\"eval_count\":20}\n";

/// The listener's token; connections are numbered from 1 and numbers are never reused, so
/// a timer entry or an event of a closed connection finds nothing.
const LISTENER: u64 = 0;
/// Largest request head and body; past them the connection is closed.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Largest answer a client may leave unread before it is dropped.
const MAX_UNSENT: usize = 4 * 1024 * 1024;
/// Connections accepted per wake-up, so a burst of them does not hold up due lines.
const ACCEPTS_PER_WAKE: usize = 256;
/// How often the loop looks at the stop flag when nothing happens.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How the fake shapes streamed answers: `lines` content lines then a done line, `gap`
/// apart. Set between phases; a stream reads it when it starts.
#[derive(Default)]
pub struct Shape {
    lines: AtomicUsize,
    gap_us: AtomicU64,
}

impl Shape {
    pub fn set(&self, lines: usize, gap: Duration) {
        self.lines.store(lines, Relaxed);
        self.gap_us.store(gap.as_micros() as u64, Relaxed);
    }
}

/// The running fake; its thread stops when this is dropped.
pub struct FakeOllama {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeOllama {
    /// Binds 127.0.0.1 on a free port and starts the loop. Failing to set up is fatal.
    pub fn start(shape: Arc<Shape>) -> FakeOllama {
        EPOCH.get_or_init(Instant::now);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Ollama");
        // std listens with a backlog of 128; thousands of connections may arrive at once.
        rustix::net::listen(&listener, 4096).expect("raise the fake Ollama's backlog");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the fake Ollama's address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // The epoll set is made on the loop's thread (its event buffer is not `Send`);
        // the thread says when it is ready to serve.
        let (ready, set_up) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("fake-ollama".into())
            .spawn(move || {
                let poller =
                    Poller::new().and_then(|poller| poller.add(&listener, LISTENER, false).map(|()| poller));
                let poller = match poller {
                    Ok(poller) => poller,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                let fake = Fake {
                    poller,
                    listener,
                    shape,
                    conns: HashMap::new(),
                    due: BinaryHeap::new(),
                    next_token: LISTENER + 1,
                    done_chunk: [chunk(DONE_LINE), b"0\r\n\r\n".to_vec()].concat(),
                };
                fake.run(&stopped)
            })
            .expect("start the fake Ollama's thread");
        let set_up = set_up.recv().expect("the fake Ollama's thread to start");
        set_up.expect("the fake Ollama's epoll set");
        FakeOllama { addr, stop, thread: Some(thread) }
    }
}

impl Drop for FakeOllama {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The loop's state, owned by its thread.
struct Fake {
    poller: Poller,
    listener: TcpListener,
    shape: Arc<Shape>,
    conns: HashMap<u64, Conn>,
    /// When each streaming connection's next line is due: (due, token), earliest first.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    next_token: u64,
    /// The done line's chunk and the body's end.
    done_chunk: Vec<u8>,
}

/// One client connection (a gateway's upstream connection, or the bench's own client).
struct Conn {
    socket: TcpStream,
    /// Bytes read and not yet parsed as requests.
    input: Vec<u8>,
    /// Bytes of answers the kernel has not taken yet.
    output: Vec<u8>,
    /// Whether epoll is asked about writability (iff `output` is not empty).
    watching_writes: bool,
    /// The answer being streamed, if one is; requests after it wait until it ends.
    stream: Option<Stream>,
    /// Answer what was asked, then close (`Connection: close`, HTTP/1.0, a bad request).
    close_when_flushed: bool,
}

struct Stream {
    start: Instant,
    gap: Duration,
    lines: usize,
    /// The index of the line to send next; `lines` is the done line.
    next: usize,
}

/// Why a connection is closed: the reasons name the paths in the code; nothing reports
/// them (a closed connection is the bench client's or the gateway's to notice).
type CloseReason = &'static str;

impl Fake {
    fn run(mut self, stop: &AtomicBool) {
        let mut ready = Vec::new();
        while !stop.load(Relaxed) {
            let wake_at = self.due.peek().map(|Reverse((at, _))| *at);
            if let Err(error) = self.poller.wait(wake_at, STOP_CHECK, &mut ready) {
                eprintln!("fake Ollama: epoll_wait failed: {error}");
                thread::sleep(Duration::from_millis(10));
            }
            for event in &ready {
                match event.token {
                    LISTENER => self.accept(),
                    token => self.serve(token, *event),
                }
            }
            self.send_due_lines();
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let socket = match self.listener.accept() {
                Ok((socket, _)) => socket,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(error) => {
                    // Out of descriptors, most likely: the listener stays readable, so
                    // give the process's other threads a moment to close some.
                    eprintln!("fake Ollama: accept failed: {error}");
                    thread::sleep(Duration::from_millis(1));
                    return;
                }
            };
            let token = self.next_token;
            let set_up = socket.set_nonblocking(true).and_then(|()| socket.set_nodelay(true));
            if set_up.and_then(|()| self.poller.add(&socket, token, false)).is_err() {
                continue; // dropped, so closed
            }
            self.next_token += 1;
            let conn = Conn {
                socket,
                input: Vec::new(),
                output: Vec::new(),
                watching_writes: false,
                stream: None,
                close_when_flushed: false,
            };
            self.conns.insert(token, conn);
        }
    }

    /// Handles one connection's readiness: sends what is pending, reads what arrived, and
    /// answers the requests that are complete.
    fn serve(&mut self, token: u64, event: Ready) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return; // closed earlier in this batch
        };
        let mut result = Ok(());
        if event.writable {
            result = conn.flush();
        }
        if result.is_ok() && (event.readable || event.broken) {
            result = conn.read_input();
        }
        if result.is_ok() {
            result = self.answer(token);
        }
        self.settle(token, result);
    }

    /// Answers the complete requests in `token`'s input, up to one that starts a stream.
    fn answer(&mut self, token: u64) -> Result<(), CloseReason> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        while conn.stream.is_none() && !conn.close_when_flushed {
            let Some(request) = take_request(&mut conn.input)? else {
                return Ok(());
            };
            match request {
                Request::Chunked => {
                    let reply = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    conn.queue(reply.as_bytes())?;
                    conn.close_when_flushed = true;
                }
                Request::Whole { streamed: false, close } => {
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8";
                    let length = NATIVE_REPLY.len();
                    conn.queue(
                        format!("{head}\r\nContent-Length: {length}\r\n\r\n{NATIVE_REPLY}").as_bytes(),
                    )?;
                    conn.close_when_flushed = close;
                }
                Request::Whole { streamed: true, close } => {
                    let (start, lines) = (Instant::now(), self.shape.lines.load(Relaxed));
                    let gap = Duration::from_micros(self.shape.gap_us.load(Relaxed));
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
                    // Line 0 is due at once, so it goes with the head.
                    if lines == 0 {
                        conn.queue(&[head.as_bytes(), &self.done_chunk].concat())?;
                    } else {
                        conn.queue(&[head.as_bytes(), &content_chunk(start)].concat())?;
                        conn.stream = Some(Stream { start, gap, lines, next: 1 });
                        self.due.push(Reverse((start + gap, token)));
                    }
                    conn.close_when_flushed = close;
                }
            }
        }
        Ok(())
    }

    /// Sends every line whose time has come, each stream's next one queued at its own
    /// start + gap × index.
    fn send_due_lines(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, token))) = self.due.peek() {
            if at > now {
                return;
            }
            self.due.pop();
            let Some(conn) = self.conns.get_mut(&token) else {
                continue; // closed since
            };
            let Some(stream) = &mut conn.stream else {
                continue;
            };
            let last = stream.next == stream.lines;
            stream.next += 1;
            let next_due = stream.start + stream.gap * stream.next as u32;
            let result = if last {
                conn.stream = None;
                conn.queue(&self.done_chunk).and_then(|()| self.answer(token)) // asked during the stream
            } else {
                self.due.push(Reverse((next_due, token)));
                conn.queue(&content_chunk(Instant::now()))
            };
            self.settle(token, result);
        }
    }

    /// After work on `token`: closes it when it failed or is done, else asks epoll about
    /// writability iff output is pending.
    fn settle(&mut self, token: u64, result: Result<(), CloseReason>) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let wants_writes = !conn.output.is_empty();
        let answered_all = conn.close_when_flushed && conn.stream.is_none() && !wants_writes;
        let mut keep = result.is_ok() && !answered_all;
        if keep && wants_writes != conn.watching_writes {
            keep = self.poller.modify(&conn.socket, token, wants_writes).is_ok();
            conn.watching_writes = wants_writes;
        }
        if !keep {
            // Dropping the socket closes it, which also takes it out of the epoll set.
            self.conns.remove(&token);
        }
    }
}

impl Conn {
    /// Reads everything the kernel has; fails on a close, an error, or too much input.
    fn read_input(&mut self) -> Result<(), CloseReason> {
        let mut buffer = [0; 16 * 1024];
        loop {
            match self.socket.read(&mut buffer) {
                Ok(0) => return Err("closed by the peer"),
                Ok(n) => self.input.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err("read failed"),
            }
            // Only a client that ignores the answers sends this much.
            if self.input.len() > MAX_HEAD + MAX_BODY {
                return Err("too much input");
            }
        }
    }

    /// Sends `bytes` after what is pending; what the kernel does not take now waits for
    /// writability.
    fn queue(&mut self, bytes: &[u8]) -> Result<(), CloseReason> {
        if self.output.is_empty() {
            let sent = write_some(&mut self.socket, bytes)?;
            self.output.extend_from_slice(&bytes[sent..]);
        } else {
            self.output.extend_from_slice(bytes);
        }
        match self.output.len() > MAX_UNSENT {
            true => Err("the client stopped reading"),
            false => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), CloseReason> {
        let sent = write_some(&mut self.socket, &self.output)?;
        self.output.drain(..sent);
        Ok(())
    }
}

/// Writes as much of `bytes` as the kernel takes now; how much that was.
fn write_some(socket: &mut TcpStream, bytes: &[u8]) -> Result<usize, CloseReason> {
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.write(&bytes[sent..]) {
            Ok(0) => return Err("write failed"),
            Ok(n) => sent += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err("write failed"),
        }
    }
    Ok(sent)
}

/// A request taken off the front of a connection's input.
enum Request {
    /// A whole request: whether it asks for a stream, and whether the client closes after.
    Whole { streamed: bool, close: bool },
    /// A request with a chunked body, which the fake does not read.
    Chunked,
}

/// Takes the first request off `input` once it is whole; `None` while it is not.
fn take_request(input: &mut Vec<u8>) -> Result<Option<Request>, CloseReason> {
    let Some(head_len) = find(input, b"\r\n\r\n").map(|at| at + 4) else {
        return match input.len() > MAX_HEAD {
            true => Err("request head too long"),
            false => Ok(None),
        };
    };
    let head =
        read_head(&mut &input[..head_len]).map_err(|_| "bad request head")?.ok_or("bad request head")?;
    if head.chunked {
        input.clear();
        return Ok(Some(Request::Chunked));
    }
    let body_len = head.content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err("request body too large");
    }
    if input.len() < head_len + body_len {
        return Ok(None);
    }
    let body = &input[head_len..head_len + body_len];
    let streamed = find(body, b"\"stream\":true").is_some();
    let close = head.close || head.first_line.ends_with("HTTP/1.0");
    input.drain(..head_len + body_len);
    Ok(Some(Request::Whole { streamed, close }))
}

/// A content line stamped with `sent`, as one chunk.
fn content_chunk(sent: Instant) -> Vec<u8> {
    chunk(&format!("{CONTENT_LINE_START}{}{CONTENT_LINE_END}", stamp(sent)))
}

/// The clock stream lines are stamped on: nanoseconds since the fake first started.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// `at` on the stamps' clock.
fn stamp(at: Instant) -> u128 {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_nanos()
}

/// When the fake sent the content line an event carries: its text is the fake's stamp,
/// and passes through the gateway unchanged (an NDJSON line's `"content":"…"`, or an SSE
/// chunk's delta). `None` for events without one (the done line, a role-only chunk).
pub fn sent_at(event: &[u8]) -> Option<Instant> {
    const KEY: &[u8] = b"\"content\":\"";
    let digits = &event[find(event, KEY)? + KEY.len()..];
    let digits = &digits[..digits.iter().position(|byte| !byte.is_ascii_digit())?];
    let nanos: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(*EPOCH.get()? + Duration::from_nanos(nanos))
}

/// `line` as one chunk of a chunked body.
fn chunk(line: &str) -> Vec<u8> {
    format!("{:x}\r\n{line}\r\n", line.len()).into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
