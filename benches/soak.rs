//! Mixed traffic with faults for ten minutes (`make soak`): the gateway must stay flat.
//!
//! The soak starts, in this process, a fake Ollama that injects a fault chosen at random in
//! about one upstream request in six (quota and overload 429/503, 500, a connection closed
//! mid-answer, an answer stalled past the gateway's idle timeout, garbage instead of JSON,
//! a rare 401), then the real release gateway binary as a child with a temp config: ten keys
//! on the fake, small timeouts, `max_connections` 200, `workers` 64. [`CLIENTS`] client
//! threads then run mixed traffic for `SOAK_SECS` seconds (600 by default): chats streamed
//! and not, native `/api/chat`, `/v1/models`, `/health`, wrong tokens, malformed JSON,
//! oversized bodies, clients that hang up mid-stream or before the first token, slow heads
//! and bodies, keep-alive connections left idle. A chaos thread rewrites keys.txt and
//! config.toml (sometimes with a broken edit) and sends SIGHUP every [`RELOAD_EVERY`], and
//! opens bursts of connections past `max_connections`. Every client pauses together for
//! [`IDLE_GAP`], longer than every gateway timeout, several times during the run.
//!
//! The gateway's VmRSS, VmHWM, threads and open descriptors are read from /proc at the start
//! (after a warm-up and an idle gap), every minute, and at the end (after a final idle gap).
//! Each request's outcome is judged against what its kind allows; the process exits
//! non-zero if the gateway died, an end figure is past its limit, an outcome was unexpected,
//! or the gateway does not exit 0 soon after SIGTERM. Results go to stdout, progress to
//! stderr. Loopback only; every loop ends by the deadline.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TOKEN: &str = "sk-soak-only-not-a-secret";
const SECOND_TOKEN: &str = "sk-soak-second-not-a-secret";
const DEFAULT_SECS: u64 = 600;

/// Client threads, each running one action at a time.
const CLIENTS: usize = 16;
/// Traffic before the start sample (then an idle gap).
const WARM_UP: Duration = Duration::from_secs(10);
/// A pause of every client, longer than every gateway timeout below plus a stalled answer.
const IDLE_GAP: Duration = Duration::from_secs(10);
/// The pause after the traffic, before the end sample.
const FINAL_IDLE: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_secs(20);
const BURST_EVERY: Duration = Duration::from_secs(30);
const FIRST_BURST: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// How long the gateway may take to exit after SIGTERM once idle.
const STOP_WITHIN: Duration = Duration::from_secs(10);

// The gateway's settings: small, so the traffic runs into them.
const CLIENT_TIMEOUT: u64 = 2;
const HEADER_TIMEOUT: u64 = 2;
const IDLE_TIMEOUT: u64 = 2;
const REQUEST_TIMEOUT: u64 = 5;
const COOLDOWN: u64 = 5;
const MAX_CONNECTIONS: usize = 200;
const WORKERS: usize = 64;
const MAX_BODY: usize = 64 * 1024;
/// keys.txt holds [`KEYS`] of `KEYS + 1` key strings; a reload swaps the first for the last.
const KEYS: usize = 10;
/// Connections a burst opens beyond `max_connections`.
const BURST_EXTRA: usize = 50;

/// A client reuses its keep-alive connection only within this, well under client_timeout.
const REUSE_WITHIN: Duration = Duration::from_millis(1000);
/// A client's longest wait for the gateway's next bytes on an ordinary request.
const READ_TIMEOUT: Duration = Duration::from_secs(12);
/// The longest a streamed answer may go on (request_timeout_secs caps it at 5 s).
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// How long the fake stays silent in a stalled answer: past the gateway's idle timeout.
const STALL: Duration = Duration::from_secs(IDLE_TIMEOUT + 1);

// The verdict's limits, end against start.
const THREADS_MARGIN: u64 = 4;
const FDS_MARGIN: u64 = 8;
const RSS_FACTOR: f64 = 1.5;
const RSS_SLACK_MB: f64 = 8.0;

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: ten minutes of
    // traffic have no place in the test run.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("soak: skipped (run it with `make soak`)");
        return ExitCode::SUCCESS;
    }
    let secs = match std::env::var("SOAK_SECS") {
        Err(_) => DEFAULT_SECS,
        Ok(text) => match text.parse::<u64>() {
            Ok(secs) if secs >= 30 => secs,
            _ => {
                eprintln!("soak: SOAK_SECS must be a number of seconds, at least 30 (got {text:?})");
                return ExitCode::from(2);
            }
        },
    };
    match run(secs) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("soak failed: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the soak and prints its report; `Ok(false)` when a verdict failed.
fn run(secs: u64) -> Result<bool, String> {
    let fake = Fake::start();
    let mut gateway = Gateway::start(fake.addr)?;
    let schedule = Schedule::new(Instant::now(), secs);
    print_settings(secs, &schedule, &gateway);
    let shared = Arc::new(Shared {
        addr: gateway.addr,
        schedule,
        stats: Stats::default(),
        bursts: Bursts::default(),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || client_loop(&shared))
        })
        .collect();

    eprintln!("warm-up {} s, then an idle gap of {} s", WARM_UP.as_secs(), IDLE_GAP.as_secs());
    sleep_until(shared.schedule.measured - Duration::from_millis(500));
    let start = gateway.sample().ok_or("the gateway died during the warm-up")?;
    println!("{:>6}  {}  (start, after warm-up and an idle gap)", "start", start);

    let chaos = {
        let (shared, pid, files) = (Arc::clone(&shared), gateway.child.id(), gateway.files());
        thread::spawn(move || chaos_loop(&shared, pid, &files))
    };
    let mut next_sample = shared.schedule.measured + SAMPLE_EVERY;
    while Instant::now() < shared.schedule.end {
        thread::sleep(Duration::from_millis(250));
        if !gateway.alive() {
            eprintln!("the gateway died; stopping the traffic");
            shared.stop.store(true, Relaxed);
            break;
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let at = shared.schedule.measured.elapsed().as_secs();
            if let Some(sample) = gateway.sample() {
                let stats = &shared.stats;
                println!("{at:>5}s  {sample}  requests {}, unexpected {}", stats.total(), stats.unexpected());
            }
        }
    }
    eprintln!("traffic over; waiting for the clients' last actions");
    for client in clients {
        client.join().map_err(|_| "a client thread panicked")?;
    }
    let reloads = chaos.join().map_err(|_| "the chaos thread panicked")?;
    eprintln!("final idle gap of {} s", FINAL_IDLE.as_secs());
    thread::sleep(FINAL_IDLE);
    let alive = gateway.alive();
    let end = gateway.sample();
    if let Some(end) = end {
        println!("{:>6}  {end}  (end, after a final idle gap)", "end");
    }
    let stopped = if alive { gateway.terminate() } else { Err("it had died already".to_string()) };
    let log = gateway.log();

    println!();
    shared.stats.print();
    fake.print();
    print_log_summary(&log, &reloads);
    let verdicts = Verdicts::new(&start, end.as_ref(), alive, &stopped, &shared.stats, &log, &reloads);
    let ok = verdicts.print();
    gateway.keep_dir = !ok || std::env::var_os("SOAK_KEEP").is_some();
    Ok(ok)
}

// ---- Time: the traffic, its idle gaps ---------------------------------------------------

/// When the traffic runs and when every client pauses together.
struct Schedule {
    /// The end of the warm-up's idle gap: the measured traffic starts.
    measured: Instant,
    /// The traffic stops.
    end: Instant,
    /// (from, to) of every idle gap, the warm-up's first.
    gaps: Vec<(Instant, Instant)>,
}

impl Schedule {
    /// Warm-up, its gap, then `secs` of traffic with a gap every sixth of it (20 to 100 s).
    fn new(begin: Instant, secs: u64) -> Schedule {
        let measured = begin + WARM_UP + IDLE_GAP;
        let end = measured + Duration::from_secs(secs);
        let period = Duration::from_secs((secs / 6).clamp(20, 100));
        let mut gaps = vec![(begin + WARM_UP, measured)];
        let mut from = measured + period;
        while from + IDLE_GAP + Duration::from_secs(5) <= end {
            gaps.push((from, from + IDLE_GAP));
            from += period;
        }
        Schedule { measured, end, gaps }
    }

    /// The end of the gap `at` falls in.
    fn gap_at(&self, at: Instant) -> Option<Instant> {
        self.gaps.iter().find(|(from, to)| (*from..*to).contains(&at)).map(|(_, to)| *to)
    }

    /// Whether a gap starts within `margin` of now (or is on).
    fn gap_near(&self, margin: Duration) -> bool {
        let now = Instant::now();
        self.gaps.iter().any(|(from, to)| now < *to && *from < now + margin)
    }

    /// Waits out an idle gap; false once the traffic is over.
    fn wait_turn(&self, stop: &AtomicBool) -> bool {
        loop {
            let now = Instant::now();
            if now >= self.end || stop.load(Relaxed) {
                return false;
            }
            match self.gap_at(now) {
                Some(to) => thread::sleep(to.min(self.end) - now),
                None => return true,
            }
        }
    }
}

fn sleep_until(at: Instant) {
    thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Counts burst starts and ends (odd while one is on), so a client can tell whether a
/// refused connection met one.
#[derive(Default)]
struct Bursts(AtomicU64);

impl Bursts {
    fn epoch(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// Whether a burst was on at `since` or began or ended after it.
    fn met_since(&self, since: u64) -> bool {
        since % 2 == 1 || self.epoch() != since
    }
}

// ---- The traffic ------------------------------------------------------------------------

/// What the client threads and the chaos thread share.
struct Shared {
    addr: SocketAddr,
    schedule: Schedule,
    stats: Stats,
    bursts: Bursts,
    stop: AtomicBool,
}

/// What a client does, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Stream,
    Chat,
    Native,
    NativeStream,
    Models,
    Health,
    BadToken,
    BadJson,
    Oversized,
    OversizedChunked,
    HangMidStream,
    HangBeforeFirst,
    SlowHead,
    SlowBody,
    IdleKeepAlive,
    Burst,
}

/// How often each kind is picked, out of their sum. Bursts are the chaos thread's.
const WEIGHTS: [(Kind, u32); 15] = [
    (Kind::Stream, 20),
    (Kind::Chat, 20),
    (Kind::Native, 6),
    (Kind::NativeStream, 6),
    (Kind::Models, 6),
    (Kind::Health, 5),
    (Kind::BadToken, 4),
    (Kind::BadJson, 4),
    (Kind::Oversized, 2),
    (Kind::OversizedChunked, 2),
    (Kind::HangMidStream, 4),
    (Kind::HangBeforeFirst, 4),
    (Kind::SlowHead, 2),
    (Kind::SlowBody, 2),
    (Kind::IdleKeepAlive, 2),
];

impl Kind {
    fn pick() -> Kind {
        let mut roll = fastrand::u32(0..WEIGHTS.iter().map(|(_, weight)| weight).sum());
        for (kind, weight) in WEIGHTS {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        Kind::Health
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "v1 chat, stream",
            Kind::Chat => "v1 chat",
            Kind::Native => "api/chat",
            Kind::NativeStream => "api/chat, stream",
            Kind::Models => "v1/models",
            Kind::Health => "health",
            Kind::BadToken => "wrong token",
            Kind::BadJson => "malformed JSON",
            Kind::Oversized => "oversized, declared",
            Kind::OversizedChunked => "oversized, chunked",
            Kind::HangMidStream => "hang up mid-stream",
            Kind::HangBeforeFirst => "hang up before 1st token",
            Kind::SlowHead => "slow head",
            Kind::SlowBody => "slow body",
            Kind::IdleKeepAlive => "idle keep-alive",
            Kind::Burst => "burst connection",
        }
    }
}

/// What came of one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A whole answer with this status (for a 200 of a stream, see the stream outcomes).
    Status(u16),
    /// A 200 stream (or native answer) that ended with its done event.
    StreamDone,
    /// A 200 stream that ended with an error event: an upstream fault after the first byte.
    StreamError,
    /// A 200 stream that ended with neither: the gateway promises this never happens.
    StreamCut,
    /// A 200 answer whose body is not what the route answers.
    BadBody,
    /// The gateway's own 500 (a handler panicked).
    Panic,
    /// We hung up on purpose.
    HungUp,
    /// The gateway closed the connection, as it must for a slow or idle client.
    Closed,
    /// The gateway left a slow or idle client's connection open past its timeout.
    NotClosed,
    /// A burst connection the gateway closed at once (past max_connections).
    Refused,
    /// A burst connection the gateway took.
    Accepted,
    /// A burst that met fewer refusals than it went past max_connections.
    NotLimited,
    /// A client-side error: connect refused, reset, closed before answering, timeout.
    Error(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(status) => write!(f, "{status}"),
            Outcome::StreamDone => f.write_str("200, done"),
            Outcome::StreamError => f.write_str("200, ended by an error event"),
            Outcome::StreamCut => f.write_str("200, cut short (no done, no error)"),
            Outcome::BadBody => f.write_str("200, body not the route's JSON"),
            Outcome::Panic => f.write_str("500 from a gateway panic"),
            Outcome::HungUp => f.write_str("hung up (on purpose)"),
            Outcome::Closed => f.write_str("closed by the gateway in time"),
            Outcome::NotClosed => f.write_str("NOT closed by the gateway in time"),
            Outcome::Refused => f.write_str("refused at once"),
            Outcome::Accepted => f.write_str("accepted"),
            Outcome::NotLimited => f.write_str("burst NOT limited"),
            Outcome::Error(what) => f.write_str(what),
        }
    }
}

/// An outcome, whether the action's kind allows it, and what to show when it does not.
struct Judged {
    outcome: Outcome,
    expected: bool,
    detail: String,
}

impl Judged {
    fn ok(outcome: Outcome) -> Judged {
        Judged { outcome, expected: true, detail: String::new() }
    }

    fn new(outcome: Outcome, expected: bool, detail: impl Into<String>) -> Judged {
        Judged { outcome, expected, detail: detail.into() }
    }
}

/// Statuses an inference request may get when upstream faults are injected: success, a
/// refused key passed on, an empty pool or spent quota, the upstream's 500/503, 502 when
/// nothing answered, 504 on a timeout.
const UPSTREAM_STATUSES: [u16; 7] = [200, 401, 429, 500, 502, 503, 504];

fn client_loop(shared: &Shared) {
    let mut client = Client::new(shared.addr);
    while shared.schedule.wait_turn(&shared.stop) {
        let kind = Kind::pick();
        let judged = act(kind, &mut client, shared);
        shared.stats.record(kind, &judged);
        thread::sleep(Duration::from_millis(fastrand::u64(0..40)));
    }
}

fn act(kind: Kind, client: &mut Client, shared: &Shared) -> Judged {
    let bursts = &shared.bursts;
    let faulty = || Marker::random(true);
    let exchange = |client: &mut Client, request: Vec<u8>, hang_after: Option<usize>| match client
        .exchange(&request, hang_after, bursts)
    {
        Ok(answer) => judge_answer(kind, &answer),
        Err(failed) => judge_failure(&failed),
    };
    match kind {
        Kind::Stream => exchange(client, post_v1(TOKEN, &chat_body(true, faulty())), None),
        Kind::Chat => exchange(client, post_v1(TOKEN, &chat_body(false, faulty())), None),
        Kind::Native => exchange(client, post("/api/chat", Some(TOKEN), &native_body(false, faulty())), None),
        Kind::NativeStream => {
            exchange(client, post("/api/chat", Some(TOKEN), &native_body(true, faulty())), None)
        }
        Kind::Models => exchange(client, get("/v1/models", Some(TOKEN)), None),
        Kind::Health => exchange(client, get("/health", None), None),
        Kind::BadToken => {
            let token = ["sk-wrong-token", ""][fastrand::usize(0..2)];
            let token = (!token.is_empty()).then_some(token);
            exchange(client, post("/v1/chat/completions", token, &chat_body(false, faulty())), None)
        }
        Kind::BadJson => {
            let body = [r#"{"model":"m","messages":[{"role":"user""#, r#"{"model":7,"messages":"no"}"#]
                [fastrand::usize(0..2)];
            exchange(client, post_v1(TOKEN, body), None)
        }
        Kind::Oversized => {
            // Only the head: the gateway answers from the declared length.
            let head = request_head("POST", "/v1/chat/completions", Some(TOKEN), "Content-Length: 100000");
            exchange(client, head.into_bytes(), None)
        }
        Kind::OversizedChunked => oversized_chunked(shared),
        Kind::HangMidStream => {
            let marker = Marker { lines: 30, gap_ms: 40, delay_ms: 0, faults: false };
            exchange(client, post_v1(TOKEN, &chat_body(true, marker)), Some(3))
        }
        Kind::HangBeforeFirst => hang_before_first(shared),
        Kind::SlowHead => slow_head(shared),
        Kind::SlowBody => slow_body(shared),
        Kind::IdleKeepAlive => idle_keep_alive(shared),
        Kind::Burst => Judged::ok(Outcome::Accepted),
    }
}

/// Judges a whole answer against what `kind` allows.
fn judge_answer(kind: Kind, answer: &Answer) -> Judged {
    let (status, body) = (answer.status, &answer.body);
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if status == 500 && contains(body, b"the gateway hit an internal error") {
        return Judged::new(Outcome::Panic, false, text());
    }
    let allowed: &[u16] = match kind {
        Kind::Health => &[200],
        Kind::BadToken => &[401],
        Kind::BadJson => &[400],
        Kind::Oversized | Kind::OversizedChunked => &[413],
        _ => &UPSTREAM_STATUSES,
    };
    if !allowed.contains(&status) {
        return Judged::new(Outcome::Status(status), false, text());
    }
    if status != 200 {
        return Judged::ok(Outcome::Status(status));
    }
    if answer.hung_up {
        return Judged::ok(Outcome::HungUp);
    }
    let has_line = |prefix: &[u8]| body.split(|b| *b == b'\n').any(|line| line.starts_with(prefix));
    match kind {
        Kind::Stream | Kind::HangMidStream => {
            if has_line(b"data: {\"error\"") {
                Judged::ok(Outcome::StreamError)
            } else if has_line(b"data: [DONE]") {
                Judged::ok(Outcome::StreamDone)
            } else {
                Judged::new(Outcome::StreamCut, false, text())
            }
        }
        // Native answers pass through unchanged, garbage included; the gateway adds an
        // error line when the upstream breaks off.
        Kind::Native | Kind::NativeStream => {
            if has_line(b"{\"error\"") {
                Judged::ok(Outcome::StreamError)
            } else if contains(body, b"\"done\":true") {
                Judged::ok(Outcome::StreamDone)
            } else if contains(body, b"<html>") {
                Judged::ok(Outcome::BadBody)
            } else {
                Judged::new(Outcome::StreamCut, false, text())
            }
        }
        _ => {
            let wanted: &[u8] = match kind {
                Kind::Chat => b"\"choices\"",
                Kind::Models => b"\"data\"",
                _ => b"\"status\"",
            };
            match contains(body, wanted) {
                true => Judged::ok(Outcome::Status(200)),
                false => Judged::new(Outcome::BadBody, false, text()),
            }
        }
    }
}

/// Judges a request that got no whole answer. A fresh connection closed at once during a
/// burst was refused for max_connections, as it should be; anything else is a failure.
fn judge_failure(failed: &Failed) -> Judged {
    let detail = format!("{} ({})", failed.error, if failed.fresh { "new connection" } else { "kept-alive" });
    if failed.answered {
        return Judged::new(Outcome::Error("broken off mid-answer"), false, detail);
    }
    if failed.fresh && failed.met_burst && !matches!(failed.error.kind(), io::ErrorKind::TimedOut) {
        return Judged::ok(Outcome::Error("refused during a burst"));
    }
    let what = match failed.error.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused",
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            "connection reset"
        }
        io::ErrorKind::UnexpectedEof => "closed before answering",
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "client timed out",
        _ => "other client error",
    };
    Judged::new(Outcome::Error(what), false, detail)
}

/// A body past max_body_bytes in chunks, with no declared length: 413 once the gateway has
/// read past the limit. It closes the connection with the rest unread, so the client may
/// see a reset instead of the 413 (TCP's rule for unread data), which is also fine.
fn oversized_chunked(shared: &Shared) -> Judged {
    let mut request = request_head("POST", "/v1/chat/completions", Some(TOKEN), "Transfer-Encoding: chunked");
    let chunk = vec![b'a'; 8192];
    for _ in 0..(MAX_BODY / chunk.len() + 2) {
        request.push_str(&format!("{:x}\r\n{}\r\n", chunk.len(), String::from_utf8_lossy(&chunk)));
    }
    request.push_str("0\r\n\r\n");
    match Client::new(shared.addr).exchange(request.as_bytes(), None, &shared.bursts) {
        Ok(answer) => judge_answer(Kind::OversizedChunked, &answer),
        Err(failed) if !failed.answered && failed.error.kind() == io::ErrorKind::ConnectionReset => {
            Judged::ok(Outcome::Error("reset after the body (413 lost)"))
        }
        Err(failed) => judge_failure(&failed),
    }
}

/// A streamed chat whose first token comes after 1.5 s; the client hangs up at 0.4 s.
fn hang_before_first(shared: &Shared) -> Judged {
    let marker = Marker { lines: 5, gap_ms: 20, delay_ms: 1500, faults: false };
    let request = post_v1(TOKEN, &chat_body(fastrand::bool(), marker));
    let (mut stream, epoch) = match connect(shared) {
        Ok(connected) => connected,
        Err(judged) => return judged,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(400)));
    let mut first = [0; 64];
    let result = stream.write_all(&request).and_then(|()| stream.read(&mut first));
    match result {
        Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Judged::ok(Outcome::HungUp)
        }
        // Something answered early: an empty pool's 429, say.
        Ok(n) if n > 0 => match parse_status(&first[..n]) {
            Some(status) if UPSTREAM_STATUSES.contains(&status) && status != 200 => {
                Judged::ok(Outcome::Status(status))
            }
            _ => Judged::new(Outcome::BadBody, false, String::from_utf8_lossy(&first[..n])),
        },
        Ok(_) => judge_failure(&Failed::early(io::ErrorKind::UnexpectedEof.into(), epoch, &shared.bursts)),
        Err(err) => judge_failure(&Failed::early(err, epoch, &shared.bursts)),
    }
}

/// A request head trickled a byte every 250 ms: the gateway must close the connection (or
/// answer 408) once `header_timeout_secs` have passed since the connect.
fn slow_head(shared: &Shared) -> Judged {
    let (stream, _) = match connect(shared) {
        Ok(connected) => connected,
        Err(judged) => return judged,
    };
    let mut head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nX-Padding: ".iter().cycle();
    trickle(stream, Duration::from_secs(HEADER_TIMEOUT + 2), || vec![*head.next().unwrap_or(&b'a')])
}

/// A whole head, then a body at 256 bytes a second, under `min_body_bytes_per_sec` (1024):
/// 408 or a close once the grace (`header_timeout_secs`) and the rate are used up, ~2.7 s.
fn slow_body(shared: &Shared) -> Judged {
    let (mut stream, _) = match connect(shared) {
        Ok(connected) => connected,
        Err(judged) => return judged,
    };
    let head = request_head("POST", "/v1/chat/completions", Some(TOKEN), "Content-Length: 20000");
    if let Err(err) = stream.write_all(head.as_bytes()) {
        return Judged::new(Outcome::Error("connection reset"), false, err.to_string());
    }
    trickle(stream, Duration::from_secs(HEADER_TIMEOUT + 4), || vec![b' '; 64])
}

/// Writes `next()` every 250 ms until the gateway closes the connection or answers; judges
/// the time against `limit`.
fn trickle(mut stream: TcpStream, limit: Duration, mut next: impl FnMut() -> Vec<u8>) -> Judged {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let mut answer = [0; 256];
    loop {
        let elapsed = started.elapsed();
        if elapsed > limit + Duration::from_secs(3) {
            return Judged::new(Outcome::NotClosed, false, format!("still open after {elapsed:.1?}"));
        }
        let read = match stream.write_all(&next()) {
            Ok(()) => stream.read(&mut answer),
            Err(err) => Err(err),
        };
        let in_time = |outcome| match started.elapsed() <= limit {
            true => Judged::ok(outcome),
            false => Judged::new(Outcome::NotClosed, false, format!("closed late, after {elapsed:.1?}")),
        };
        match read {
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Ok(0) | Err(_) => return in_time(Outcome::Closed),
            Ok(n) => {
                return match parse_status(&answer[..n]) {
                    Some(408) => in_time(Outcome::Status(408)),
                    _ => Judged::new(Outcome::BadBody, false, String::from_utf8_lossy(&answer[..n])),
                }
            }
        }
    }
}

/// One `GET /health`, then the connection left idle: the gateway must close it after
/// `client_timeout_secs`.
fn idle_keep_alive(shared: &Shared) -> Judged {
    let mut client = Client::new(shared.addr);
    let request = get("/health", None);
    let answer = match client.exchange(&request, None, &shared.bursts) {
        Ok(answer) => answer,
        Err(failed) => return judge_failure(&failed),
    };
    let Some(conn) = client.conn.take().filter(|_| answer.status == 200) else {
        return judge_answer(Kind::Health, &answer);
    };
    let started = Instant::now();
    let limit = Duration::from_secs(CLIENT_TIMEOUT) + Duration::from_millis(1500);
    let _ = conn.reader.get_ref().set_read_timeout(Some(limit + Duration::from_secs(2)));
    let mut reader = conn.reader;
    let read = reader.read(&mut [0; 64]);
    let elapsed = started.elapsed();
    match read {
        Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Judged::new(Outcome::NotClosed, false, format!("still open after {elapsed:.1?}"))
        }
        Ok(0) | Err(_) if elapsed <= limit => Judged::ok(Outcome::Closed),
        Ok(0) | Err(_) => Judged::new(Outcome::NotClosed, false, format!("closed late, after {elapsed:.1?}")),
        Ok(n) => Judged::new(Outcome::BadBody, false, format!("{n} unasked-for bytes on an idle connection")),
    }
}

/// A fresh connection with a write timeout, and the burst epoch at the connect.
fn connect(shared: &Shared) -> Result<(TcpStream, u64), Judged> {
    let epoch = shared.bursts.epoch();
    let stream = TcpStream::connect_timeout(&shared.addr, Duration::from_secs(5))
        .map_err(|err| judge_failure(&Failed::early(err, epoch, &shared.bursts)))?;
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    Ok((stream, epoch))
}

// ---- Chaos: reloads and connection bursts -----------------------------------------------

/// The files the chaos thread rewrites, and what goes in them.
struct Files {
    dir: PathBuf,
    port: u16,
    upstream: SocketAddr,
}

/// What config.toml holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ConfigText {
    Base,
    /// Other settings and a second token.
    Changed,
    /// A syntax error: the gateway must log it and keep the previous config.
    Broken,
}

/// What keys.txt holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeysText {
    /// Keys 0..KEYS.
    First,
    /// Keys 1..=KEYS: one key gone, one new.
    Rotated,
    /// A bad section header: the gateway must log it and keep the previous keys.
    Broken,
}

/// The reload cycle; each step rewrites the files that changed, then sends SIGHUP.
const EDITS: [(ConfigText, KeysText); 6] = [
    (ConfigText::Base, KeysText::Rotated),
    (ConfigText::Changed, KeysText::Rotated),
    (ConfigText::Broken, KeysText::Rotated),
    (ConfigText::Base, KeysText::First),
    (ConfigText::Base, KeysText::Broken),
    (ConfigText::Base, KeysText::First),
];

impl Files {
    fn config(&self, text: ConfigText) -> String {
        let digest = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\nworkers = {WORKERS}\nmax_connections = {MAX_CONNECTIONS}\n\
             client_timeout_secs = {CLIENT_TIMEOUT}\nheader_timeout_secs = {HEADER_TIMEOUT}\n\
             max_body_bytes = {MAX_BODY}\n",
            port = self.port
        );
        let max_attempts = if text == ConfigText::Changed { 4 } else { 3 };
        if text == ConfigText::Changed {
            config.push_str("reasoning_field = \"both\"\n");
        }
        config.push_str(&format!(
            "\n[upstream]\nconnect_timeout_secs = 2\nidle_timeout_secs = {IDLE_TIMEOUT}\n\
             request_timeout_secs = {REQUEST_TIMEOUT}\ncooldown_secs = {COOLDOWN}\nmax_attempts = {max_attempts}\n"
        ));
        if text == ConfigText::Broken {
            config.push_str("[tokens\n");
        }
        config.push_str(&format!("\n[[tokens]]\nname = \"soak\"\nsha256 = \"{}\"\n", digest(TOKEN)));
        if text == ConfigText::Changed {
            config.push_str(&format!(
                "\n[[tokens]]\nname = \"second\"\nsha256 = \"{}\"\n",
                digest(SECOND_TOKEN)
            ));
        }
        config
    }

    fn keys(&self, text: KeysText) -> String {
        let first = usize::from(text != KeysText::First);
        let mut keys: String = (first..first + KEYS)
            .map(|index| format!("http://{}|soak-key-{index:02}-0123456789abcdef\n", self.upstream))
            .collect();
        if text == KeysText::Broken {
            keys.push_str("[broken\n");
        }
        keys
    }

    /// Writes `name` atomically: a temp file renamed over it.
    fn write(&self, name: &str, text: &str) -> Result<(), String> {
        let temp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&temp, text).map_err(|err| format!("write {}: {err}", temp.display()))?;
        std::fs::rename(&temp, self.dir.join(name)).map_err(|err| format!("rename to {name}: {err}"))
    }
}

/// What the chaos thread did, for the report.
#[derive(Default)]
struct Reloads {
    sent: u64,
    broken: u64,
    errors: Vec<String>,
}

fn chaos_loop(shared: &Shared, pid: u32, files: &Files) -> Reloads {
    let mut reloads = Reloads::default();
    let (mut next_reload, mut next_burst) = (Instant::now() + RELOAD_EVERY, Instant::now() + FIRST_BURST);
    let mut current = (ConfigText::Base, KeysText::First);
    let mut step = 0;
    while Instant::now() < shared.schedule.end && !shared.stop.load(Relaxed) {
        thread::sleep(Duration::from_millis(250));
        if Instant::now() >= next_reload {
            next_reload += RELOAD_EVERY;
            let (config, keys) = EDITS[step % EDITS.len()];
            step += 1;
            let mut written = Ok(());
            if config != current.0 {
                written = written.and_then(|()| files.write("config.toml", &files.config(config)));
            }
            if keys != current.1 {
                written = written.and_then(|()| files.write("keys.txt", &files.keys(keys)));
            }
            current = (config, keys);
            let hup = Command::new("kill").args(["-HUP", &pid.to_string()]).status();
            match (written, hup) {
                (Ok(()), Ok(status)) if status.success() => reloads.sent += 1,
                (written, hup) => reloads.errors.push(format!("reload: {written:?}, kill -HUP: {hup:?}")),
            }
            reloads.broken += u64::from(config == ConfigText::Broken || keys == KeysText::Broken);
        }
        // A burst waits for the end of an idle gap rather than break it.
        if Instant::now() >= next_burst && !shared.schedule.gap_near(Duration::from_secs(4)) {
            next_burst = Instant::now() + BURST_EVERY;
            burst(shared);
        }
    }
    reloads
}

/// Opens `max_connections + BURST_EXTRA` connections at once; at least `BURST_EXTRA` must
/// be closed at once by the gateway. The others are held half a second, then closed.
fn burst(shared: &Shared) {
    shared.bursts.0.fetch_add(1, Relaxed);
    let mut conns = Vec::new();
    for _ in 0..MAX_CONNECTIONS + BURST_EXTRA {
        match TcpStream::connect_timeout(&shared.addr, Duration::from_secs(3)) {
            Ok(stream) => conns.push(stream),
            Err(err) => {
                let judged = Judged::new(Outcome::Error("burst connect failed"), false, err.to_string());
                shared.stats.record(Kind::Burst, &judged);
            }
        }
    }
    thread::sleep(Duration::from_millis(500));
    let mut refused = 0;
    for stream in &conns {
        let _ = stream.set_nonblocking(true);
        let outcome = match (&*stream).read(&mut [0; 16]) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Outcome::Accepted,
            Ok(0) | Err(_) => Outcome::Refused,
            Ok(_) => Outcome::BadBody,
        };
        refused += usize::from(outcome == Outcome::Refused);
        shared.stats.record(Kind::Burst, &Judged::new(outcome, outcome != Outcome::BadBody, "bytes unasked"));
    }
    drop(conns);
    if refused < BURST_EXTRA {
        let detail = format!("{refused} of {} refused", MAX_CONNECTIONS + BURST_EXTRA);
        shared.stats.record(Kind::Burst, &Judged::new(Outcome::NotLimited, false, detail));
    }
    // The gateway's threads for the accepted ones see the close at once.
    thread::sleep(Duration::from_millis(500));
    shared.bursts.0.fetch_add(1, Relaxed);
}

// ---- Results ---------------------------------------------------------------------------

/// Outcomes by kind, and the first unexpected ones in full.
#[derive(Default)]
struct Stats {
    counts: Mutex<BTreeMap<(Kind, Outcome, bool), u64>>,
    examples: Mutex<Vec<String>>,
}

impl Stats {
    fn record(&self, kind: Kind, judged: &Judged) {
        *lock(&self.counts).entry((kind, judged.outcome, judged.expected)).or_default() += 1;
        let mut examples = lock(&self.examples);
        if !judged.expected && examples.len() < 20 {
            examples.push(format!("{}: {}: {}", kind.name(), judged.outcome, judged.detail.trim()));
        }
    }

    fn total(&self) -> u64 {
        lock(&self.counts).iter().filter(|((kind, ..), _)| *kind != Kind::Burst).map(|(_, n)| n).sum()
    }

    fn unexpected(&self) -> u64 {
        lock(&self.counts).iter().filter(|((_, _, expected), _)| !expected).map(|(_, n)| n).sum()
    }

    fn print(&self) {
        let counts = lock(&self.counts);
        println!("requests by kind and outcome (! = not allowed for that kind)");
        println!("{:<26}{:<40}{:>8}", "kind", "outcome", "count");
        for ((kind, outcome, expected), count) in counts.iter() {
            let mark = if *expected { ' ' } else { '!' };
            println!("{:<26}{:<40}{count:>8} {mark}", kind.name(), outcome.to_string());
        }
        let sum = |pick: &dyn Fn(&Outcome, bool) -> bool| -> u64 {
            counts
                .iter()
                .filter(|((kind, outcome, expected), _)| *kind != Kind::Burst && pick(outcome, *expected))
                .map(|(_, n)| n)
                .sum()
        };
        let class = |outcome: &Outcome| match outcome {
            Outcome::Status(status) => Some(status / 100),
            Outcome::StreamDone | Outcome::StreamError | Outcome::StreamCut | Outcome::BadBody => Some(2),
            Outcome::Panic => Some(5),
            _ => None,
        };
        println!();
        println!("totals (client requests, bursts apart)");
        for (name, count) in [
            ("all", sum(&|_, _| true)),
            ("answered 2xx", sum(&|o, _| class(o) == Some(2))),
            ("  of which streams ended by an error event", sum(&|o, _| *o == Outcome::StreamError)),
            ("answered 4xx", sum(&|o, _| class(o) == Some(4))),
            ("answered 5xx", sum(&|o, _| class(o) == Some(5))),
            ("hung up on purpose", sum(&|o, _| *o == Outcome::HungUp)),
            ("slow/idle clients closed by the gateway", sum(&|o, _| *o == Outcome::Closed)),
            (
                "client errors, expected (refused in bursts, 413 lost)",
                sum(&|o, e| matches!(o, Outcome::Error(_)) && e),
            ),
            (
                "client errors, unexpected (refused, reset, timeout…)",
                sum(&|o, e| matches!(o, Outcome::Error(_)) && !e),
            ),
            ("unexpected outcomes of any kind", sum(&|_, e| !e)),
        ] {
            println!("{name:<56}{count:>8}");
        }
        let bursts: u64 = counts
            .iter()
            .filter(|((kind, outcome, _), _)| *kind == Kind::Burst && *outcome == Outcome::Refused)
            .map(|(_, n)| n)
            .sum();
        println!("{:<56}{bursts:>8}", "burst connections refused at once (max_connections)");
        let examples = lock(&self.examples);
        if !examples.is_empty() {
            println!("\nfirst unexpected outcomes:");
            for example in examples.iter() {
                println!("  {example}");
            }
        }
        println!();
    }
}

/// The gateway process's figures from /proc.
#[derive(Clone, Copy)]
struct Sample {
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
    fds: u64,
    sockets: u64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VmRSS {:>6.1} MB  VmHWM {:>6.1} MB  threads {:>4}  fds {:>4} ({:>3} sockets)",
            mb(self.rss_kb),
            mb(self.hwm_kb),
            self.threads,
            self.fds,
            self.sockets
        )
    }
}

/// The pass/fail lines of the report.
struct Verdicts(Vec<(String, String, bool)>);

impl Verdicts {
    fn new(
        start: &Sample,
        end: Option<&Sample>,
        alive: bool,
        stopped: &Result<String, String>,
        stats: &Stats,
        log: &str,
        reloads: &Reloads,
    ) -> Verdicts {
        let mut lines = vec![("gateway alive at the end".to_string(), yes(alive), alive)];
        if let Some(end) = end {
            let rss_limit = mb(start.rss_kb) * RSS_FACTOR + RSS_SLACK_MB;
            lines.push((
                format!("VmRSS: end <= start x {RSS_FACTOR} + {RSS_SLACK_MB} MB = {rss_limit:.1} MB"),
                format!("{:.1} -> {:.1} MB", mb(start.rss_kb), mb(end.rss_kb)),
                mb(end.rss_kb) <= rss_limit,
            ));
            lines.push((
                format!("threads: end <= start + {THREADS_MARGIN} = {}", start.threads + THREADS_MARGIN),
                format!("{} -> {}", start.threads, end.threads),
                end.threads <= start.threads + THREADS_MARGIN,
            ));
            lines.push((
                format!("open fds: end <= start + {FDS_MARGIN} = {}", start.fds + FDS_MARGIN),
                format!("{} -> {}", start.fds, end.fds),
                end.fds <= start.fds + FDS_MARGIN,
            ));
        }
        let unexpected = stats.unexpected();
        lines.push(("unexpected outcomes: 0".to_string(), unexpected.to_string(), unexpected == 0));
        let (good, broken) = (reloads.sent - reloads.broken, reloads.broken);
        let (reloaded, refused) =
            (log_count(log, "reloaded ") as u64, log_count(log, "reload failed") as u64);
        lines.push((
            format!("reloads: >= {good} done, >= {broken} refused"),
            format!("{reloaded} done, {refused} refused"),
            reloaded >= good && refused >= broken && reloads.errors.is_empty(),
        ));
        let panics = log.matches("panicked").count();
        lines.push(("gateway log: no panics".to_string(), panics.to_string(), panics == 0));
        lines.push((
            format!("SIGTERM: exit 0 within {} s", STOP_WITHIN.as_secs()),
            match stopped {
                Ok(how) | Err(how) => how.clone(),
            },
            stopped.is_ok(),
        ));
        Verdicts(lines)
    }

    /// Prints the lines; whether all passed.
    fn print(&self) -> bool {
        println!("verdict");
        for (check, got, ok) in &self.0 {
            println!("{check:<48}{got:<40}{}", ["FAIL", "ok"][usize::from(*ok)]);
        }
        let ok = self.0.iter().all(|(_, _, ok)| *ok);
        println!("\nsoak: {}", if ok { "FLAT, all checks passed" } else { "FAILED" });
        ok
    }
}

fn print_settings(secs: u64, schedule: &Schedule, gateway: &Gateway) {
    println!("ollama-gateway soak: {secs} s of mixed traffic after a {} s warm-up", WARM_UP.as_secs());
    println!(
        "{CLIENTS} clients; gateway pid {} on {}: workers {WORKERS}, max_connections {MAX_CONNECTIONS}, \
         client/header/upstream idle timeouts {CLIENT_TIMEOUT}/{HEADER_TIMEOUT}/{IDLE_TIMEOUT} s, \
         request_timeout {REQUEST_TIMEOUT} s, cooldown {COOLDOWN} s, {KEYS} keys",
        gateway.child.id(),
        gateway.addr
    );
    println!(
        "idle gaps of {} s: {} (the first after the warm-up); a reload every {} s, a burst of {} \
         connections every {} s",
        IDLE_GAP.as_secs(),
        schedule.gaps.len(),
        RELOAD_EVERY.as_secs(),
        MAX_CONNECTIONS + BURST_EXTRA,
        BURST_EVERY.as_secs()
    );
    println!();
}

fn print_log_summary(log: &str, reloads: &Reloads) {
    let count = |needle: &str| log_count(log, needle);
    println!(
        "reloads: {} sent (SIGHUP after an atomic rewrite), {} of them broken edits; gateway log: \
         {} reloaded, {} refused as broken",
        reloads.sent,
        reloads.broken,
        count("reloaded "),
        count("reload failed")
    );
    for error in &reloads.errors {
        println!("  {error}");
    }
    println!(
        "gateway log: {} lines, {} warnings, {} errors; {} requests left by their client while \
         waiting on upstream (499), {} streams left mid-way; {} lines on refusals at \
         max_connections (at most one a second)",
        log.lines().count(),
        count(" WARN "),
        count(" ERROR "),
        count("status=499"),
        count("client disconnected mid-stream"),
        count("(max_connections)")
    );
    println!();
}

fn log_count(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}

fn yes(value: bool) -> String {
    ["no", "yes"][usize::from(value)].to_string()
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---- The fake Ollama -------------------------------------------------------------------

const NATIVE_REPLY: &str = r#"{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hello!"},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":3}"#;
const CONTENT_LINE: &str = "{\"model\":\"m\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"tok\"},\"done\":false}\n";
const DONE_LINE: &str = "{\"model\":\"m\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":5,\"eval_count\":20}\n";
const TAGS: &str = r#"{"models":[{"name":"m","model":"m","modified_at":"2024-01-01T00:00:00Z","size":1,"digest":"0","details":{}}]}"#;
const GARBAGE: &str = "<html><body>502 Bad Gateway</body></html>\n";

/// A fault the fake injects into one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// 429 naming the session limit, with `Retry-After: 2` (the key rests 2 s, not 5 h).
    Quota,
    /// 429 naming a usage limit, no window: the key rests `cooldown_secs`.
    QuotaNoWindow,
    /// 503 "Server overloaded" with `Retry-After: 1`.
    Overloaded,
    /// 503 "Server overloaded" without: the key backs off 30 s.
    OverloadedNoRetry,
    /// 500.
    ServerError,
    /// The connection closed in the middle of the answer.
    CloseMidway,
    /// No bytes for longer than the gateway's idle timeout.
    Stall,
    /// Garbage instead of JSON.
    Garbage,
    /// 401: the key is set aside until a reload's recheck finds it good.
    Unauthorized,
}

/// Each fault's chance, per 10,000 answers: about one in six in all. Faults that rest a key
/// for long are rare, or every key would rest at once.
const FAULTS: [(Fault, u32, &str); 9] = [
    (Fault::Quota, 100, "429 session quota (Retry-After 2)"),
    (Fault::QuotaNoWindow, 50, "429 usage limit (cooldown)"),
    (Fault::Overloaded, 100, "503 overloaded (Retry-After 1)"),
    (Fault::OverloadedNoRetry, 5, "503 overloaded (30 s back-off)"),
    (Fault::ServerError, 250, "500"),
    (Fault::CloseMidway, 250, "closed mid-answer"),
    (Fault::Stall, 150, "stalled past idle_timeout"),
    (Fault::Garbage, 150, "garbage instead of JSON"),
    (Fault::Unauthorized, 5, "401"),
];

impl Fault {
    fn pick() -> Fault {
        let mut roll = fastrand::u32(0..10_000);
        for (fault, chance, _) in FAULTS {
            if roll < chance {
                return fault;
            }
            roll -= chance;
        }
        Fault::None
    }
}

/// How the fake answers a chat, written into the user message by the client.
#[derive(Debug, Clone, Copy)]
struct Marker {
    lines: u32,
    gap_ms: u64,
    delay_ms: u64,
    faults: bool,
}

impl Marker {
    /// An ordinary chat: 3–12 lines 5–30 ms apart; one in 30 too long for request_timeout.
    fn random(faults: bool) -> Marker {
        match fastrand::u32(0..30) {
            0 => Marker { lines: 70, gap_ms: 90, delay_ms: 0, faults },
            _ => Marker { lines: fastrand::u32(3..13), gap_ms: fastrand::u64(5..31), delay_ms: 0, faults },
        }
    }

    /// The marker inside a request body, or the default one.
    fn find(body: &[u8]) -> Marker {
        let mut marker = Marker { lines: 5, gap_ms: 10, delay_ms: 0, faults: true };
        let Some(at) = body.windows(5).position(|window| window == b"soak:") else {
            return marker;
        };
        let rest = &body[at + 5..];
        let end =
            rest.iter().position(|b| !(b.is_ascii_alphanumeric() || b"=;".contains(b))).unwrap_or(rest.len());
        for field in String::from_utf8_lossy(&rest[..end]).split(';') {
            let Some((name, value)) = field.split_once('=') else { continue };
            let value: u64 = value.parse().unwrap_or(0);
            match name {
                "lines" => marker.lines = value as u32,
                "gap" => marker.gap_ms = value,
                "delay" => marker.delay_ms = value,
                "faults" => marker.faults = value == 1,
                _ => {}
            }
        }
        marker
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Marker { lines, gap_ms, delay_ms, faults } = self;
        write!(f, "soak:lines={lines};gap={gap_ms};delay={delay_ms};faults={}", u8::from(*faults))
    }
}

/// What the fake did, for the report.
#[derive(Default)]
struct FakeCounts {
    requests: AtomicU64,
    faults: [AtomicU64; FAULTS.len()],
    /// Writes that failed: the gateway hung up on an answer (client gone, timeout, garbage).
    aborted: AtomicU64,
}

/// The fake Ollama's address and counts.
struct Fake {
    addr: SocketAddr,
    counts: Arc<FakeCounts>,
}

impl Fake {
    /// Starts the fake on 127.0.0.1, a thread per connection.
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Ollama");
        let addr = listener.local_addr().expect("the fake Ollama's address");
        let counts = Arc::new(FakeCounts::default());
        let serving = Arc::clone(&counts);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = Arc::clone(&serving);
                spawn_small(move || serve_fake_connection(stream, &counts));
            }
        });
        Fake { addr, counts }
    }

    fn print(&self) {
        let counts = &self.counts;
        println!("fake upstream: {} requests, faults injected:", counts.requests.load(Relaxed));
        for ((_, _, name), count) in FAULTS.iter().zip(&counts.faults) {
            println!("  {name:<40}{:>8}", count.load(Relaxed));
        }
        println!("  {:<40}{:>8}", "answers the gateway hung up on", counts.aborted.load(Relaxed));
        println!();
    }
}

fn serve_fake_connection(stream: TcpStream, counts: &FakeCounts) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // ureq keeps idle connections up to 15 s; the fake lets go later than that.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let mut body = vec![0; head.content_length.unwrap_or(0).min(1 << 20)];
        reader.read_exact(&mut body)?;
        counts.requests.fetch_add(1, Relaxed);
        let path = head.first_line.split(' ').nth(1).unwrap_or("").to_string();
        let out = &mut reader.get_ref();
        let keep = match path.as_str() {
            "/api/chat" => {
                let marker = Marker::find(&body);
                thread::sleep(Duration::from_millis(marker.delay_ms));
                let fault = if marker.faults { Fault::pick() } else { Fault::None };
                if let Some(index) = FAULTS.iter().position(|(f, ..)| *f == fault) {
                    counts.faults[index].fetch_add(1, Relaxed);
                }
                match contains(&body, b"\"stream\":true") {
                    true => fake_stream(out, fault, marker),
                    false => fake_plain(out, fault, NATIVE_REPLY),
                }
            }
            "/api/tags" => fake_plain(out, Fault::pick(), TAGS),
            "/api/version" => fake_plain(out, Fault::None, r#"{"version":"0.12.0"}"#),
            "/api/usage" | "/api/show" => fake_plain(out, Fault::None, "{}"),
            _ => respond(out, 404, r#"{"error":"not found"}"#, None).map(|()| true),
        };
        match keep {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                counts.aborted.fetch_add(1, Relaxed);
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The error answer of a status fault: status, message, `Retry-After`.
fn fault_status(fault: Fault) -> Option<(u16, &'static str, Option<u64>)> {
    Some(match fault {
        Fault::Quota => (429, "you (soak) have reached your session usage limit, please wait", Some(2)),
        Fault::QuotaNoWindow => (429, "you (soak) have reached your usage limit", None),
        Fault::Overloaded => (503, "Server overloaded, please retry shortly", Some(1)),
        Fault::OverloadedNoRetry => (503, "Server overloaded, please retry shortly", None),
        Fault::ServerError => (500, "internal server error", None),
        Fault::Unauthorized => (401, "unauthorized", None),
        Fault::None | Fault::CloseMidway | Fault::Stall | Fault::Garbage => return None,
    })
}

/// A whole answer with Content-Length, or `fault`; whether the connection can go on.
fn fake_plain(out: &mut &TcpStream, fault: Fault, ok: &str) -> io::Result<bool> {
    if let Some((status, text, retry_after)) = fault_status(fault) {
        return respond(out, status, &format!("{{\"error\":\"{text}\"}}"), retry_after).map(|()| true);
    }
    match fault {
        Fault::CloseMidway => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                ok.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(&ok.as_bytes()[..ok.len() / 2])?;
            Ok(false)
        }
        Fault::Stall => {
            thread::sleep(STALL);
            respond(out, 200, ok, None).map(|()| false)
        }
        Fault::Garbage => respond(out, 200, GARBAGE, None).map(|()| true),
        _ => respond(out, 200, ok, None).map(|()| true),
    }
}

/// A chunked NDJSON answer of `marker.lines` lines and a done line, `marker.gap_ms` apart,
/// with `fault` before the head (status faults, half the stalls) or after the first line.
fn fake_stream(out: &mut &TcpStream, fault: Fault, marker: Marker) -> io::Result<bool> {
    let midway = match fault {
        Fault::None | Fault::CloseMidway | Fault::Garbage => true,
        Fault::Stall => fastrand::bool(),
        _ => false,
    };
    if !midway {
        return fake_plain(out, fault, NATIVE_REPLY);
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    out.write_all(head.as_bytes())?;
    let (start, gap) = (Instant::now(), Duration::from_millis(marker.gap_ms));
    for index in 0..=marker.lines {
        thread::sleep((start + gap * index).saturating_duration_since(Instant::now()));
        if index == 1 {
            match fault {
                Fault::CloseMidway => return Ok(false),
                Fault::Stall => thread::sleep(STALL),
                Fault::Garbage => chunk(out, GARBAGE)?,
                _ => {}
            }
        }
        chunk(out, if index < marker.lines { CONTENT_LINE } else { DONE_LINE })?;
    }
    out.write_all(b"0\r\n\r\n")?;
    Ok(fault == Fault::None)
}

fn chunk(out: &mut &TcpStream, line: &str) -> io::Result<()> {
    out.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
}

fn respond(out: &mut &TcpStream, status: u16, body: &str, retry_after: Option<u64>) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let retry = retry_after.map_or(String::new(), |secs| format!("Retry-After: {secs}\r\n"));
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n{retry}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())
}

// ---- A minimal HTTP/1.1 client (and the head parser the fake shares) -------------------

/// The parts of a request or response head the soak needs.
struct Head {
    first_line: String,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// Reads a head; `None` when the connection closed cleanly before it.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let first_line = line.trim_end().to_string();
    let mut head = Head { first_line, content_length: None, chunked: false, close: false };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a head"));
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            return Ok(Some(head)); // the blank line
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

fn parse_status(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.")?.split(' ').nth(1)?.parse().ok()
}

/// `{verb} {path}` with the token (when given) and one more header line, ending the head.
fn request_head(verb: &str, path: &str, token: Option<&str>, header: &str) -> String {
    let auth = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    format!(
        "{verb} {path} HTTP/1.1\r\nHost: soak\r\n{auth}Content-Type: application/json\r\n{header}\r\n\r\n"
    )
}

fn post(path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let mut request = request_head("POST", path, token, &format!("Content-Length: {}", body.len()));
    request.push_str(body);
    request.into_bytes()
}

fn post_v1(token: &str, body: &str) -> Vec<u8> {
    post("/v1/chat/completions", Some(token), body)
}

fn get(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: soak\r\n{auth}\r\n").into_bytes()
}

fn chat_body(stream: bool, marker: Marker) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{marker}"}}],"stream":{stream}}}"#)
}

fn native_body(stream: bool, marker: Marker) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{marker}"}}],"stream":{stream}}}"#)
}

/// A whole answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The client stopped reading on purpose (and dropped the connection).
    hung_up: bool,
}

/// A request that got no whole answer.
struct Failed {
    error: io::Error,
    /// On a new connection (not a kept-alive one).
    fresh: bool,
    /// A burst was on at some point since the connect.
    met_burst: bool,
    /// The head had arrived: the body broke off.
    answered: bool,
}

impl Failed {
    /// A failure on a new connection before any answer.
    fn early(error: io::Error, epoch: u64, bursts: &Bursts) -> Failed {
        Failed { error, fresh: true, met_burst: bursts.met_since(epoch), answered: false }
    }
}

/// A kept-alive connection and when it was last used.
struct Conn {
    reader: BufReader<TcpStream>,
    last_used: Instant,
    epoch: u64,
}

/// One keep-alive connection, reused while fresh, opened again after an error or a close.
struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    /// Sends `request` and reads the whole answer; with `hang_after`, hangs up after that
    /// many body chunks.
    fn exchange(
        &mut self,
        request: &[u8],
        hang_after: Option<usize>,
        bursts: &Bursts,
    ) -> Result<Answer, Failed> {
        let fresh = self.conn.as_ref().is_none_or(|conn| conn.last_used.elapsed() >= REUSE_WITHIN);
        let mut conn = match self.conn.take() {
            Some(conn) if !fresh => conn,
            _ => {
                let epoch = bursts.epoch();
                let connected =
                    TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).and_then(|stream| {
                        stream.set_nodelay(true)?;
                        stream.set_read_timeout(Some(READ_TIMEOUT))?;
                        stream.set_write_timeout(Some(READ_TIMEOUT))?;
                        Ok(stream)
                    });
                let stream = connected.map_err(|error| Failed::early(error, epoch, bursts))?;
                Conn { reader: BufReader::new(stream), last_used: Instant::now(), epoch }
            }
        };
        let mut answered = false;
        let result = send(&mut conn.reader, request, hang_after, &mut answered);
        match result {
            Ok((answer, close)) => {
                if !close && !answer.hung_up {
                    conn.last_used = Instant::now();
                    self.conn = Some(conn);
                }
                Ok(answer)
            }
            Err(error) => Err(Failed { error, fresh, met_burst: bursts.met_since(conn.epoch), answered }),
        }
    }
}

/// One request and its answer on an open connection, and whether the connection closes.
fn send(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
    hang_after: Option<usize>,
    answered: &mut bool,
) -> io::Result<(Answer, bool)> {
    conn.get_ref().write_all(request)?;
    let head = read_head(conn)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering"))?;
    *answered = true;
    let status = parse_status(head.first_line.as_bytes())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.first_line.clone()))?;
    let mut answer = Answer { status, body: Vec::new(), hung_up: false };
    if head.chunked {
        let (mut chunks, started) = (0, Instant::now());
        let completed = read_chunks(conn, &mut |piece| {
            answer.body.extend_from_slice(piece);
            chunks += 1;
            hang_after.is_none_or(|after| chunks < after) && started.elapsed() < ANSWER_LIMIT
        })?;
        if !completed && hang_after.is_none_or(|after| chunks < after) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the answer went on past ANSWER_LIMIT"));
        }
        answer.hung_up = !completed;
    } else {
        answer.body = vec![0; head.content_length.unwrap_or(0)];
        conn.read_exact(&mut answer.body)?;
    }
    Ok((answer, head.close))
}

/// Reads a chunked body, passing each chunk to `sink`; stops early (returning false) when
/// `sink` says so.
fn read_chunks(reader: &mut impl BufRead, sink: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed inside a chunked body"));
        }
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
        if size == 0 {
            line.clear();
            while reader.read_line(&mut line)? > 0 && !line.trim_end().is_empty() {
                line.clear(); // trailers
            }
            return Ok(true);
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if !sink(&chunk[..size]) {
            return Ok(false);
        }
    }
}

// ---- The gateway child process ---------------------------------------------------------

/// The gateway binary running on a temp config; killed on drop, its folder removed unless
/// the soak failed.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    upstream: SocketAddr,
    keep_dir: bool,
}

impl Gateway {
    /// Writes the config and keys, starts the binary with `RUST_LOG=info`, waits for
    /// `GET /health`.
    fn start(upstream: SocketAddr) -> Result<Gateway, String> {
        let dir = std::env::temp_dir().join(format!("ollama-gateway-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|err| format!("create {}: {err}", dir.display()))?;
        // A free port, released just before the gateway binds it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|err| format!("find a free port: {err}"))?
            .port();
        let files = Files { dir: dir.clone(), port, upstream };
        files.write("config.toml", &files.config(ConfigText::Base))?;
        files.write("keys.txt", &files.keys(KeysText::First))?;
        let log =
            std::fs::File::create(dir.join("gateway.log")).map_err(|err| format!("gateway.log: {err}"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_ollama-gateway"))
            .args(["serve", "--config"])
            .arg(dir.join("config.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("start the gateway binary: {err}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut gateway = Gateway { child, addr, dir, upstream, keep_dir: true };
        gateway.wait_healthy()?;
        Ok(gateway)
    }

    fn files(&self) -> Files {
        Files { dir: self.dir.clone(), port: self.addr.port(), upstream: self.upstream }
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the gateway exited ({status}); its log:\n{}", self.log()));
            }
            if let Ok(answer) =
                Client::new(self.addr).exchange(&get("/health", None), None, &Bursts::default())
            {
                if answer.status == 200 {
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the gateway did not answer GET /health within 15 s; its log:\n{}", self.log()))
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// VmRSS, VmHWM and Threads from /proc/PID/status, and the entries of /proc/PID/fd.
    fn sample(&self) -> Option<Sample> {
        let proc = PathBuf::from(format!("/proc/{}", self.child.id()));
        let status = std::fs::read_to_string(proc.join("status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.split(':').next() == Some(name))?;
            line[name.len() + 1..].split_whitespace().next()?.parse().ok()
        };
        let (mut fds, mut sockets) = (0, 0);
        for entry in std::fs::read_dir(proc.join("fd")).ok()?.flatten() {
            fds += 1;
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            sockets += u64::from(target.to_string_lossy().starts_with("socket:"));
        }
        Some(Sample {
            rss_kb: field("VmRSS")?,
            hwm_kb: field("VmHWM")?,
            threads: field("Threads")?,
            fds,
            sockets,
        })
    }

    /// Sends SIGTERM and waits for the exit; `Ok` when it exits 0 within [`STOP_WITHIN`].
    fn terminate(&mut self) -> Result<String, String> {
        let (sent, sent_at) = (Instant::now(), std::time::SystemTime::now());
        let kill = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if !kill.as_ref().is_ok_and(|status| status.success()) {
            return Err(format!("kill -TERM failed: {kill:?}"));
        }
        while sent.elapsed() < STOP_WITHIN {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    let took = sent.elapsed().as_secs_f64();
                    let state = std::fs::metadata(self.dir.join("state.json")).and_then(|m| m.modified());
                    return match state {
                        Ok(saved) if saved >= sent_at => Ok(format!("exit 0 after {took:.2} s, state saved")),
                        _ => Err(format!("exit 0 after {took:.2} s, but state.json was not saved")),
                    };
                }
                Ok(Some(status)) => return Err(format!("{status}")),
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(err) => return Err(format!("wait: {err}")),
            }
        }
        Err(format!("still running {} s after SIGTERM", STOP_WITHIN.as_secs()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.keep_dir {
            eprintln!("the gateway's folder (config, keys, state, log) is kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---- Small helpers ---------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Spawns a thread with a small stack (the fake runs one per connection).
fn spawn_small<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(256 * 1024).spawn(work).expect("spawn a soak thread")
}
