//! The load generator of `make bench`, wrk-style: one thread drives every connection of a
//! run on one epoll loop. Two kinds of run: [`run_load`] (each connection sends a request,
//! reads the answer, records its latency, sends the next) and [`hold_streams`] (many
//! streamed requests open at once, each timed event by event).
//!
//! One thread, so that the client costs little and the same whatever it talks to: with a
//! blocking thread per connection, 64 client threads waking and sleeping took most of the
//! machine's two cores from the gateway they were measuring.

use crate::poller::{Poller, Ready};
use crate::wire::read_head;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// How long requests started inside the window may take to finish after it.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the loops look at their deadlines when nothing happens.
const TICK: Duration = Duration::from_millis(100);

// ---- Responses, read as their bytes arrive ---------------------------------------------

/// An HTTP/1.1 response read incrementally: the head, then a body sized by
/// `Content-Length` or chunked (the fake and the gateway send one or the other).
pub struct ResponseReader {
    buffer: Vec<u8>,
    /// Where unparsed bytes start in `buffer`.
    at: usize,
    state: State,
    status: u16,
    close: bool,
    keep_body: bool,
    body: Vec<u8>,
}

enum State {
    Head,
    Sized { left: usize },
    ChunkSize,
    ChunkData { size: usize },
    Trailers,
}

/// A whole response.
pub struct Response {
    pub status: u16,
    /// The server closes the connection after it.
    pub close: bool,
    /// The body, when the reader keeps it.
    pub body: Vec<u8>,
}

impl ResponseReader {
    /// `keep_body`: collect the body for [`Response::body`] (else only `on_piece` sees it).
    pub fn new(keep_body: bool) -> ResponseReader {
        ResponseReader {
            buffer: Vec::new(),
            at: 0,
            state: State::Head,
            status: 0,
            close: false,
            keep_body,
            body: Vec::new(),
        }
    }

    /// Whether a response has begun arriving (so a close now cuts it short).
    pub fn started(&self) -> bool {
        self.buffer.len() > self.at || !matches!(self.state, State::Head)
    }

    /// Takes `data`, passes each body piece to `on_piece` as soon as it is whole (a chunk,
    /// or the whole of a sized body), and returns the response once it ended. Bytes past
    /// its end are an error: requests are never pipelined here.
    pub fn feed(&mut self, data: &[u8], on_piece: &mut dyn FnMut(&[u8])) -> Result<Option<Response>, String> {
        if self.at > 0 && self.at * 2 >= self.buffer.len() {
            self.buffer.drain(..self.at);
            self.at = 0;
        }
        self.buffer.extend_from_slice(data);
        loop {
            let rest = &self.buffer[self.at..];
            match self.state {
                State::Head => {
                    let Some(end) = find(rest, b"\r\n\r\n").map(|at| at + 4) else {
                        return match rest.len() > MAX_HEAD {
                            true => Err("response head too long".into()),
                            false => Ok(None),
                        };
                    };
                    let head =
                        read_head(&mut &rest[..end]).map_err(|err| format!("bad response head: {err}"))?;
                    let head = head.ok_or("empty response head")?;
                    let status = head.first_line.split(' ').nth(1).and_then(|code| code.parse().ok());
                    self.status = status.ok_or_else(|| format!("bad status line {:?}", head.first_line))?;
                    self.close = head.close;
                    self.state = match head.chunked {
                        true => State::ChunkSize,
                        false => State::Sized { left: head.content_length.unwrap_or(0) },
                    };
                    self.at += end;
                }
                State::Sized { left } => {
                    let take = left.min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    self.at += take;
                    if take < left {
                        self.state = State::Sized { left: left - take };
                        return Ok(None);
                    }
                    on_piece(&self.body);
                    return self.finish();
                }
                State::ChunkSize => {
                    let Some(end) = find(rest, b"\r\n") else {
                        return Ok(None);
                    };
                    let line = std::str::from_utf8(&rest[..end]).map_err(|_| "bad chunk size line")?;
                    let size = line.split(';').next().unwrap_or("");
                    let size =
                        usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
                    self.at += end + 2;
                    self.state = match size {
                        0 => State::Trailers,
                        size => State::ChunkData { size },
                    };
                }
                State::ChunkData { size } => {
                    if rest.len() < size + 2 {
                        return Ok(None);
                    }
                    if &rest[size..size + 2] != b"\r\n" {
                        return Err("a chunk without its CRLF".into());
                    }
                    on_piece(&rest[..size]);
                    if self.keep_body {
                        self.body.extend_from_slice(&rest[..size]);
                    }
                    self.at += size + 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(end) = find(rest, b"\r\n") else {
                        return Ok(None);
                    };
                    self.at += end + 2;
                    if end == 0 {
                        return self.finish();
                    }
                }
            }
        }
    }

    /// Hands out the response just ended and gets ready for the next.
    fn finish(&mut self) -> Result<Option<Response>, String> {
        if self.at < self.buffer.len() {
            return Err("bytes after the response".into());
        }
        self.state = State::Head;
        let body = std::mem::take(&mut self.body);
        Ok(Some(Response { status: self.status, close: self.close, body }))
    }
}

// ---- Client connections on the loop ----------------------------------------------------

/// One client connection: a request going out, its response coming in.
struct Conn {
    socket: TcpStream,
    reader: ResponseReader,
    /// Bytes of the request not yet written.
    unsent: usize,
    watching_writes: bool,
    /// When the request in flight was started; `None` between requests.
    sent_at: Option<Instant>,
}

/// What reading a connection came to.
enum Received {
    /// Nothing whole yet.
    More,
    Response(Response),
    /// The server closed between requests.
    Closed,
}

impl Conn {
    fn open(addr: SocketAddr, poller: &Poller, token: u64, keep_body: bool) -> io::Result<Conn> {
        // A loopback connect completes at once, so it can block.
        let socket = TcpStream::connect(addr)?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        poller.add(&socket, token, false)?;
        let reader = ResponseReader::new(keep_body);
        Ok(Conn { socket, reader, unsent: 0, watching_writes: false, sent_at: None })
    }

    /// Starts `request`; what the kernel does not take now goes out on writability.
    fn send(&mut self, request: &[u8], poller: &Poller, token: u64) -> Result<(), String> {
        self.sent_at = Some(Instant::now());
        self.unsent = request.len();
        self.write_rest(request, poller, token)
    }

    fn write_rest(&mut self, request: &[u8], poller: &Poller, token: u64) -> Result<(), String> {
        while self.unsent > 0 {
            match self.socket.write(&request[request.len() - self.unsent..]) {
                Ok(0) => return Err("the connection took no bytes".into()),
                Ok(n) => self.unsent -= n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("send: {error}")),
            }
        }
        let wants_writes = self.unsent > 0;
        if wants_writes != self.watching_writes {
            poller.modify(&self.socket, token, wants_writes).map_err(|err| format!("epoll: {err}"))?;
            self.watching_writes = wants_writes;
        }
        Ok(())
    }

    /// Reads what arrived, passing body pieces to `on_piece`, until the kernel has no more
    /// or a response is whole.
    fn read(&mut self, on_piece: &mut dyn FnMut(&[u8])) -> Result<Received, String> {
        let mut buffer = [0; 16 * 1024];
        loop {
            match self.socket.read(&mut buffer) {
                Ok(0) if self.sent_at.is_none() && !self.reader.started() => return Ok(Received::Closed),
                Ok(0) => return Err("closed before the response ended".into()),
                Ok(n) => {
                    if let Some(response) = self.reader.feed(&buffer[..n], on_piece)? {
                        return Ok(Received::Response(response));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Received::More),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("receive: {error}")),
            }
        }
    }
}

// ---- Load: requests back to back on every connection -----------------------------------

/// A load run: `connections` keep-alive connections to `addr`, each sending `request`
/// again as soon as its answer arrived, which must be a 200 holding `expect`.
pub struct LoadRun<'a> {
    pub addr: SocketAddr,
    pub request: &'a [u8],
    pub expect: &'a [u8],
    pub connections: usize,
    /// Requests started before the window are not timed.
    pub warmup: Duration,
    pub window: Duration,
}

/// What a load run measured: latencies (ms) of the requests started inside the window,
/// and failures over the whole run.
#[derive(Default)]
pub struct Load {
    pub latencies: Vec<f64>,
    pub errors: usize,
    /// Connections that completed nothing in the window, and had no error.
    pub stalled: usize,
    pub first_error: Option<String>,
}

/// The window's two ends, when [`run_load`] calls its `at_window` with them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Open,
    Close,
}

/// Runs `run`; `at_window` is called as the window opens and as it closes (to sample CPU
/// counters). Requests started in the window are waited for, at most [`DRAIN`] past it.
pub fn run_load(run: &LoadRun, at_window: &mut dyn FnMut(Edge)) -> Load {
    let mut load = Load::default();
    let fail = |load: &mut Load, error: String| {
        load.errors += 1;
        load.first_error.get_or_insert(error);
    };
    let mut poller = match Poller::new() {
        Ok(poller) => poller,
        Err(error) => {
            fail(&mut load, format!("epoll: {error}"));
            return load;
        }
    };
    let opens = Instant::now() + run.warmup;
    let closes = opens + run.window;
    // Per connection: the connection (`None` once it failed to reconnect), and how many
    // requests it completed in the window.
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(run.connections);
    let mut done_in_window = vec![0usize; run.connections];
    let mut errors_of = vec![0usize; run.connections];
    for token in 0..run.connections as u64 {
        let conn = Conn::open(run.addr, &poller, token, true).map_err(|err| format!("connect: {err}"));
        let conn = conn.and_then(|mut conn| conn.send(run.request, &poller, token).map(|()| conn));
        match conn {
            Ok(conn) => conns.push(Some(conn)),
            Err(error) => {
                fail(&mut load, error);
                errors_of[token as usize] += 1;
                conns.push(None);
            }
        }
    }
    let (mut opened, mut closed) = (false, false);
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if !opened && now >= opens {
            opened = true;
            at_window(Edge::Open);
        }
        if !closed && now >= closes {
            closed = true;
            at_window(Edge::Close);
        }
        let in_flight = conns.iter().flatten().filter(|conn| conn.sent_at.is_some()).count();
        if closed && in_flight == 0 {
            break;
        }
        if now >= closes + DRAIN {
            for _ in 0..in_flight {
                fail(&mut load, format!("no answer within {} s after the window", DRAIN.as_secs()));
            }
            break;
        }
        let edge = if opened { closes } else { opens };
        if let Err(error) = poller.wait(Some(edge), TICK, &mut ready) {
            fail(&mut load, format!("epoll_wait: {error}"));
            break;
        }
        for &Ready { token, writable, readable, broken } in &ready {
            let index = token as usize;
            let Some(conn) = &mut conns[index] else {
                continue;
            };
            let mut outcome = Ok(Received::More);
            if writable && conn.unsent > 0 {
                outcome = conn.write_rest(run.request, &poller, token).map(|()| Received::More);
            }
            if outcome.is_ok() && (readable || broken) {
                outcome = conn.read(&mut |_| {});
            }
            let sent_at = conn.sent_at;
            let reconnect = match outcome {
                Ok(Received::More) => continue,
                Ok(Received::Response(response)) => {
                    let at = Instant::now();
                    conn.sent_at = None;
                    match (response.status, find(&response.body, run.expect)) {
                        (200, Some(_)) => {
                            if let Some(sent_at) = sent_at.filter(|sent| (opens..closes).contains(sent)) {
                                load.latencies.push((at - sent_at).as_secs_f64() * 1000.0);
                                done_in_window[index] += 1;
                            }
                        }
                        (status, _) => {
                            let body = String::from_utf8_lossy(&response.body);
                            fail(&mut load, format!("status {status}: {body}"));
                            errors_of[index] += 1;
                        }
                    }
                    response.close
                }
                Ok(Received::Closed) => true,
                Err(error) => {
                    fail(&mut load, error);
                    errors_of[index] += 1;
                    true
                }
            };
            if reconnect {
                // Dropping the old socket closes it and takes it out of the epoll set.
                conns[index] = None;
                if Instant::now() >= closes {
                    continue; // nothing more to send
                }
                match Conn::open(run.addr, &poller, token, true) {
                    Ok(conn) => conns[index] = Some(conn),
                    Err(error) => {
                        fail(&mut load, format!("reconnect: {error}"));
                        errors_of[index] += 1;
                        continue;
                    }
                }
            }
            if Instant::now() < closes {
                let Some(conn) = &mut conns[index] else {
                    continue;
                };
                if let Err(error) = conn.send(run.request, &poller, token) {
                    fail(&mut load, error);
                    errors_of[index] += 1;
                    conns[index] = None;
                }
            }
        }
    }
    load.stalled = (0..run.connections).filter(|&i| done_in_window[i] == 0 && errors_of[i] == 0).count();
    load
}

// ---- Streams held open together --------------------------------------------------------

/// `streams` streamed requests to `addr`, a connection each, opened evenly over `ramp`.
pub struct StreamsRun<'a> {
    pub addr: SocketAddr,
    pub request: &'a [u8],
    pub streams: usize,
    pub ramp: Duration,
    /// When to give up on streams still open.
    pub deadline: Duration,
}

/// What became of each stream.
#[derive(Default)]
pub struct Streams {
    /// Streams that ended with a 200, and how many events each had.
    pub events: Vec<usize>,
    /// Streams that had their first event.
    pub first_events: usize,
    /// The longest time between two consecutive events of one stream, over all streams.
    pub longest_gap: Duration,
    /// The longest time from a request to its first event.
    pub slowest_first: Duration,
    /// Streams that failed (connect, status, a cut), or were still open at the deadline.
    pub failed: usize,
    pub first_failure: Option<String>,
}

/// One stream's progress.
struct Progress {
    conn: Option<Conn>,
    events: usize,
    last_event: Option<Instant>,
}

/// Runs `run`; `every_tick` is called about every 100 ms with the number of streams open,
/// and once more at the end (to sample the server's memory). Each event (an NDJSON line, or
/// an SSE `data:` line other than `[DONE]`) is timed as it arrives and passed to
/// `on_event` with that time.
pub fn hold_streams(
    run: &StreamsRun,
    every_tick: &mut dyn FnMut(usize),
    on_event: &mut dyn FnMut(&[u8], Instant),
) -> Streams {
    let mut streams = Streams::default();
    let fail = |streams: &mut Streams, error: String| {
        streams.failed += 1;
        streams.first_failure.get_or_insert(error);
    };
    let mut poller = match Poller::new() {
        Ok(poller) => poller,
        Err(error) => {
            fail(&mut streams, format!("epoll: {error}"));
            return streams;
        }
    };
    let start = Instant::now();
    let (deadline, every) = (start + run.deadline, run.ramp / run.streams.max(1) as u32);
    let mut progress: Vec<Progress> = Vec::with_capacity(run.streams);
    let (mut open, mut next_tick) = (0, start + TICK);
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        // Open the streams whose time has come.
        while progress.len() < run.streams && start + every * progress.len() as u32 <= now {
            let token = progress.len() as u64;
            let conn = Conn::open(run.addr, &poller, token, false).map_err(|err| format!("connect: {err}"));
            let conn = conn.and_then(|mut conn| conn.send(run.request, &poller, token).map(|()| conn));
            let conn = conn.map_err(|error| fail(&mut streams, error)).ok();
            open += usize::from(conn.is_some());
            progress.push(Progress { conn, events: 0, last_event: None });
        }
        if now >= next_tick {
            every_tick(open);
            next_tick = now + TICK;
        }
        if progress.len() == run.streams && open == 0 {
            break;
        }
        if now >= deadline {
            for _ in 0..open {
                fail(&mut streams, format!("still open after {} s", run.deadline.as_secs()));
            }
            break;
        }
        let next_open = (progress.len() < run.streams).then(|| start + every * progress.len() as u32);
        let wake_at = next_open.map_or(next_tick, |at| at.min(next_tick));
        if let Err(error) = poller.wait(Some(wake_at), TICK, &mut ready) {
            fail(&mut streams, format!("epoll_wait: {error}"));
            break;
        }
        for &Ready { token, writable, readable, broken } in &ready {
            let stream = &mut progress[token as usize];
            let Some(conn) = &mut stream.conn else {
                continue;
            };
            let mut outcome = Ok(Received::More);
            if writable && conn.unsent > 0 {
                outcome = conn.write_rest(run.request, &poller, token).map(|()| Received::More);
            }
            let sent_at = conn.sent_at.unwrap_or(start);
            if outcome.is_ok() && (readable || broken) {
                let (events, last_event) = (&mut stream.events, &mut stream.last_event);
                outcome = conn.read(&mut |piece| {
                    let at = Instant::now();
                    for line in piece.split(|byte| *byte == b'\n').filter(|line| is_event(line)) {
                        on_event(line, at);
                        match *last_event {
                            None => streams.slowest_first = streams.slowest_first.max(at - sent_at),
                            Some(last) => streams.longest_gap = streams.longest_gap.max(at - last),
                        }
                        *events += 1;
                        *last_event = Some(at);
                    }
                });
            }
            let ended = match outcome {
                Ok(Received::More) => continue,
                Ok(Received::Response(response)) if response.status == 200 => {
                    streams.events.push(stream.events);
                    Ok(())
                }
                Ok(Received::Response(response)) => Err(format!("stream answered {}", response.status)),
                Ok(Received::Closed) => Err("closed before answering".to_string()),
                Err(error) => Err(error),
            };
            if let Err(error) = ended {
                fail(&mut streams, error);
            }
            streams.first_events += usize::from(stream.events > 0);
            stream.conn = None;
            open -= 1;
        }
    }
    // Streams cut off at the deadline count their first events too.
    streams.first_events +=
        progress.iter().filter(|stream| stream.conn.is_some() && stream.events > 0).count();
    every_tick(open);
    streams
}

/// Whether a line of a streamed body is an event: an NDJSON object, or an SSE `data:`
/// line other than `[DONE]`.
pub fn is_event(line: &[u8]) -> bool {
    line.starts_with(b"{") || (line.starts_with(b"data:") && !line.starts_with(b"data: [DONE]"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
