//! Direct-to-Ollama vs through-the-gateway, side by side (`make bench`).
//!
//! The bench starts, in this process, a fake Ollama (benches/common/fake_ollama.rs: one
//! thread, one epoll loop, HTTP/1.1 keep-alive, canned `/api/chat` answers and NDJSON
//! streams whose lines are due at fixed times), then the real gateway binary as a child
//! process with a temp config whose only upstream is the fake. Every measurement
//! does the same work on the fake two ways: "direct" is client → fake `/api/chat`, "gateway"
//! is client → gateway `/v1/chat/completions` → fake, so the difference is what the gateway
//! adds (an HTTP hop, auth, JSON translation both ways, logging).
//!
//! 1. Sequential overhead: one client, one keep-alive connection per target, rounds of
//!    [`PER_ROUND`] non-stream chats per target (which goes first alternates); the median and
//!    IQR of the per-round medians, and of the per-round difference. Repeated briefly with
//!    `RUST_LOG=info` to show the cost of the per-request log line.
//! 2. Throughput: 64 and 256 keep-alive connections, driven by the one-thread load
//!    generator (benches/common/loadgen.rs), for a fixed time. A connection that completes
//!    nothing in the measured window is counted as stalled. The gateway's CPU per request
//!    in the window (`/proc/PID/stat`, which counts exited threads too), and this process's
//!    own CPU (the fake and the load generator).
//! 3. Streams, one at a time, alternating: time to the first event from the request's
//!    start, and the delay the gateway adds to each event of a [`STREAM_LINES`]-line
//!    stream. The fake writes the time it sends each line into the line's text, which the
//!    gateway passes through, so each event's relay delay (fake sent → client read) is
//!    measured on one clock; added = gateway relay − direct relay of the same line index.
//!    (Timed from the request's start instead, every line would also carry the gateway's
//!    time to send the request upstream, which the first-event row measures already.)
//! 4. Memory: a fresh gateway's VmRSS idle, sampled while 256 streams are held open, and its
//!    VmHWM (peak) at the end.
//!
//! The sequential rounds and the streams use a minimal blocking HTTP/1.1 client over
//! `TcpStream` (Content-Length and chunked bodies), so each line is timestamped as it
//! arrives and the client costs the same on both paths.
//! Client, fake and gateway share the machine's cores; the fake and the load generator are
//! one thread each so that they cost little, and the same on both paths (with a thread per
//! connection on both, 64 client threads and 64 fake threads woke and slept so much that
//! they took most of the cores from the gateway they measured). Results go to stdout, progress to
//! stderr. Missed targets are reported, not failed on; the process exits non-zero only if
//! the gateway does not start or requests fail.

use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "common/fake_ollama.rs"]
mod fake_ollama;
#[path = "common/loadgen.rs"]
mod loadgen;
#[path = "common/poller.rs"]
mod poller;
// The head parser the soak's client and fake use too.
#[path = "common/wire.rs"]
mod wire;

use fake_ollama::{FakeOllama, Shape};
use loadgen::{Edge, LoadRun};
use wire::read_head;

const TOKEN: &str = "sk-bench-only-not-a-secret";
/// The fake's answer text, which every non-stream reply must hold.
const REPLY_TEXT: &[u8] = b"Hello!";
const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":false}"#;
const CHAT_STREAM: &str = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
const PER_ROUND: usize = 200;
const ROUNDS: usize = 15;
const INFO_ROUNDS: usize = 5;
const CONCURRENCY: [usize; 2] = [64, 256];
const LOAD_WARMUP: Duration = Duration::from_secs(1);
const LOAD_WINDOW: Duration = Duration::from_secs(5);
const STREAM_LINES: usize = 20;
const STREAM_GAP: Duration = Duration::from_millis(10);
const STREAMS: usize = 40;
const MEM_STREAMS: usize = 256;
const MEM_LINES: usize = 25;
const MEM_GAP: Duration = Duration::from_millis(200);
const OVERHEAD_TARGET_MS: f64 = 0.3;
const RSS_TARGET_MB: f64 = 64.0;

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a measurement
    // that takes a minute has no place in the test run.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("gateway bench: skipped (run it with `make bench`)");
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let result = run();
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench failed: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the phases in order; each prints its table and returns its summary line.
fn run() -> Result<(), String> {
    print_environment();
    let shape = Arc::new(Shape::default());
    let fake = FakeOllama::start(Arc::clone(&shape));
    let direct = Target { addr: fake.addr, path: "/api/chat", token: false };
    let mut errors = 0;
    let gateway = Gateway::start(direct.addr, "warn")?;
    if let Ok(rounds) = std::env::var("BENCH_PROFILE_ROUNDS") {
        let rounds = rounds.parse().map_err(|_| "BENCH_PROFILE_ROUNDS: not a number")?;
        eprintln!("gateway pid {}", gateway.child.id());
        println!("{}", phase_sequential(direct, &gateway, rounds, "warn")?);
        if std::env::var("BENCH_PROFILE_LOAD").is_ok() {
            println!("{}", phase_load(direct, &gateway, &mut errors));
        }
        return Ok(());
    }
    let mut summary = vec![phase_sequential(direct, &gateway, ROUNDS, "warn")?];
    summary.push(phase_load(direct, &gateway, &mut errors));
    eprintln!("letting the gateway's idle connection threads exit (tiny_http: after 5 s)");
    thread::sleep(Duration::from_secs(6));
    shape.set(STREAM_LINES, STREAM_GAP);
    summary.push(phase_streams(direct, gateway.target())?);
    println!("gateway after (1)-(3): VmRSS {} MB, VmHWM {} MB\n", gateway.mb("VmRSS"), gateway.mb("VmHWM"));
    drop(gateway);

    let gateway = Gateway::start(direct.addr, "info")?;
    summary.push(phase_sequential(direct, &gateway, INFO_ROUNDS, "info")?);
    drop(gateway);

    let gateway = Gateway::start(direct.addr, "warn")?;
    shape.set(MEM_LINES, MEM_GAP);
    summary.push(phase_memory(&gateway, &mut errors));
    drop(gateway);

    println!("summary\n-------\n{}", summary.join("\n"));
    match errors {
        0 => Ok(()),
        n => Err(format!("{n} requests failed (see the tables above)")),
    }
}

// ---- The phases ------------------------------------------------------------------------

/// (1): interleaved rounds of sequential non-stream chats on one connection per target.
fn phase_sequential(direct: Target, gw: &Gateway, rounds: usize, log: &str) -> Result<String, String> {
    eprintln!("(1) sequential overhead, RUST_LOG={log}");
    let gateway = gw.target();
    let (mut cpu_ns, mut switches) = (0, 0);
    let mut clients = [Client::new(direct.addr), Client::new(gateway.addr)];
    let requests = [direct.request(CHAT), gateway.request(CHAT)];
    for (client, request) in clients.iter_mut().zip(&requests) {
        for _ in 0..PER_ROUND {
            chat_once(client, request)?; // warm-up
        }
    }
    let mut medians = [Vec::new(), Vec::new(), Vec::new()]; // direct, gateway, difference
    for round in 0..rounds {
        let mut round_medians = [0.0; 2];
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let mut times = Vec::with_capacity(PER_ROUND);
            let before = gw.counters();
            for _ in 0..PER_ROUND {
                let start = Instant::now();
                chat_once(&mut clients[side], &requests[side])?;
                times.push(ms(start.elapsed()));
            }
            if side == 1 {
                let after = gw.counters();
                cpu_ns += after.cpu_ns - before.cpu_ns;
                switches += after.switches - before.switches;
            }
            round_medians[side] = percentile(&times, 0.5);
        }
        medians[0].push(round_medians[0]);
        medians[1].push(round_medians[1]);
        medians[2].push(round_medians[1] - round_medians[0]);
    }
    println!("(1) sequential non-stream chat, RUST_LOG={log}: {rounds} rounds x {PER_ROUND} requests per");
    println!("target on one keep-alive connection each; median and IQR of the per-round medians, ms");
    println!("{:<20}{:>10}{:>10}{:>10}", "", "median", "p25", "p75");
    for (name, values) in ["direct", "gateway", "overhead (g - d)"].iter().zip(&medians) {
        let [p25, p50, p75] = [0.25, 0.5, 0.75].map(|p| percentile(values, p));
        println!("{name:<20}{p50:>10.3}{p25:>10.3}{p75:>10.3}");
    }
    let served = (rounds * PER_ROUND) as f64;
    println!(
        "gateway CPU per request {:.3} ms, context switches per request {:.2}",
        cpu_ns as f64 / served / 1e6,
        switches as f64 / served
    );
    println!();
    let [p25, p50, p75] = [0.25, 0.5, 0.75].map(|p| percentile(&medians[2], p));
    Ok(match log {
        "warn" => format!(
            "sequential overhead: {p50:.3} ms median (IQR {p25:.3}–{p75:.3})   target < {OVERHEAD_TARGET_MS} ms  {}",
            verdict(p50 < OVERHEAD_TARGET_MS)
        ),
        _ => format!("sequential overhead with RUST_LOG={log}: {p50:.3} ms median (IQR {p25:.3}–{p75:.3})"),
    })
}

/// (2): keep-alive connections driven by the one-thread load generator, as fast as they go.
fn phase_load(direct: Target, gw: &Gateway, errors: &mut usize) -> String {
    eprintln!("(2) throughput");
    let secs = (LOAD_WINDOW.as_secs(), LOAD_WARMUP.as_secs());
    println!(
        "(2) throughput, non-stream chat, {} s after {} s warm-up, one connection per client;",
        secs.0, secs.1
    );
    println!("latencies in ms; CPU: the gateway's per request, and the bench's own (fake + load generator)");
    println!(
        "{:<9}{:>5}{:>9}{:>8}{:>8}{:>8}{:>8}{:>7}{:>8}{:>12}{:>10}",
        "target", "conc", "req/s", "p50", "p95", "p99", "max", "errors", "stalled", "gw CPU/req", "bench CPU"
    );
    let mut last = [(0.0, 0); 2]; // (req/s, stalled) at the highest concurrency
    for concurrency in CONCURRENCY {
        for (side, (name, target)) in [("direct", direct), ("gateway", gw.target())].into_iter().enumerate() {
            eprintln!("    {name}, {concurrency} connections");
            let request = target.request(CHAT);
            let run = LoadRun {
                addr: target.addr,
                request: &request,
                expect: REPLY_TEXT,
                connections: concurrency,
                warmup: LOAD_WARMUP,
                window: LOAD_WINDOW,
            };
            let mut cpu = [CpuSample::default(); 2];
            let load = loadgen::run_load(&run, &mut |edge| {
                cpu[usize::from(edge == Edge::Close)] = CpuSample::now(gw);
            });
            let [p50, p95, p99, max] = [0.5, 0.95, 0.99, 1.0].map(|p| percentile(&load.latencies, p));
            let served = load.latencies.len();
            let rps = served as f64 / LOAD_WINDOW.as_secs_f64();
            let gateway_cpu = match side {
                1 => format!(
                    "{:.3} ms",
                    ms(cpu[1].gateway.saturating_sub(cpu[0].gateway)) / served.max(1) as f64
                ),
                _ => "-".to_string(),
            };
            let bench_cpu =
                100.0 * cpu[1].bench.saturating_sub(cpu[0].bench).as_secs_f64() / LOAD_WINDOW.as_secs_f64();
            println!(
                "{name:<9}{concurrency:>5}{rps:>9.0}{p50:>8.3}{p95:>8.3}{p99:>8.3}{max:>8.1}{:>7}{:>8}{gateway_cpu:>12}{:>9.0}%",
                load.errors, load.stalled, bench_cpu
            );
            if let Some(error) = &load.first_error {
                println!("    first error: {error}");
            }
            *errors += load.errors;
            last[side] = (rps, load.stalled);
        }
    }
    println!("stalled = connections that completed no request in the window; errors: whole run;");
    println!("bench CPU: % of one core, from /proc/self/stat in 10 ms ticks\n");
    let [(direct_rps, _), (gateway_rps, stalled)] = last;
    let top = CONCURRENCY[CONCURRENCY.len() - 1];
    format!(
        "throughput at {top} clients: gateway {gateway_rps:.0} req/s = {:.0}% of direct ({direct_rps:.0}); \
         {stalled} gateway clients stalled",
        100.0 * gateway_rps / direct_rps
    )
}

/// (3): sequential streams, alternating direct and gateway; the same line's times compared.
fn phase_streams(direct: Target, gateway: Target) -> Result<String, String> {
    eprintln!("(3) streams");
    let mut clients = [Client::new(direct.addr), Client::new(gateway.addr)];
    let requests = [direct.request(CHAT_STREAM), gateway.request(CHAT_STREAM)];
    let (mut first, mut relay) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let (mut added, mut added_from_start) = (Vec::new(), Vec::new());
    for index in 0..=STREAMS {
        // Per side: each content line's (time from the request's start, relay delay).
        let mut lines: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        let mut firsts = [0.0; 2];
        for side in if index % 2 == 0 { [0, 1] } else { [1, 0] } {
            let events = stream_once(&mut clients[side], &requests[side], None)?;
            firsts[side] = events.first().map_or(f64::NAN, |event| event.at_ms);
            lines[side] = events.iter().filter_map(|event| Some((event.at_ms, event.relay_ms?))).collect();
            if lines[side].len() != STREAM_LINES {
                return Err(format!(
                    "a stream had {} of its {STREAM_LINES} content lines",
                    lines[side].len()
                ));
            }
        }
        if index == 0 {
            continue; // the first pair warms both paths up
        }
        for side in 0..2 {
            first[side].push(firsts[side]);
            relay[side].extend(lines[side].iter().map(|(_, relay)| relay));
        }
        for (direct, gateway) in lines[0].iter().zip(&lines[1]) {
            added.push(gateway.1 - direct.1);
            added_from_start.push(gateway.0 - direct.0);
        }
    }
    let gap = ms(STREAM_GAP);
    println!("(3) streams: {STREAM_LINES} lines {gap:.0} ms apart, {STREAMS} sequential streams per target, alternating;");
    println!("relay = from the fake sending a line to the client reading its event; ms");
    println!("{:<44}{:>10}{:>10}{:>10}", "", "median", "p95", "p99");
    let rows = [
        ("first event from the request's start, direct", &first[0]),
        ("first event from the request's start, gateway", &first[1]),
        ("relay per event, direct", &relay[0]),
        ("relay per event, gateway", &relay[1]),
        ("added per event (g - d relay, same line)", &added),
        ("added per event from the request's start", &added_from_start),
    ];
    for (name, values) in rows {
        let [p50, p95, p99] = [0.5, 0.95, 0.99].map(|p| percentile(values, p));
        println!("{name:<44}{p50:>10.3}{p95:>10.3}{p99:>10.3}");
    }
    println!("(the last row also holds the gateway's time to send the request upstream)\n");
    Ok(format!(
        "stream first event: +{:.3} ms median; added per event: {:.3} ms median, {:.3} ms p95, {:.3} ms p99",
        percentile(&first[1], 0.5) - percentile(&first[0], 0.5),
        percentile(&added, 0.5),
        percentile(&added, 0.95),
        percentile(&added, 0.99)
    ))
}

/// (4): a fresh gateway's memory, idle and while [`MEM_STREAMS`] streams are open.
fn phase_memory(gateway: &Gateway, errors: &mut usize) -> String {
    eprintln!("(4) memory, {MEM_STREAMS} streams");
    thread::sleep(Duration::from_millis(500));
    let idle = gateway.mb("VmRSS");
    let request = Arc::new(gateway.target().request(CHAT_STREAM));
    let (opened, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let start = Instant::now();
    let clients: Vec<_> = (0..MEM_STREAMS)
        .map(|_| {
            let (request, opened, finished) =
                (Arc::clone(&request), Arc::clone(&opened), Arc::clone(&finished));
            let addr = gateway.addr;
            spawn_small(move || {
                let result = stream_once(&mut Client::new(addr), &request, Some(&opened));
                finished.fetch_add(1, Relaxed);
                result
            })
        })
        .collect();
    let hold = sample_while_streaming(gateway, &opened, &finished, start);
    let (hwm_kb, hwm) = (gateway.status_kb("VmHWM").unwrap_or(0), gateway.mb("VmHWM"));
    let mut failed = 0;
    for client in clients {
        let failure = match client.join().expect("a stream client panicked") {
            Ok(events) if events.len() > MEM_LINES => continue,
            Ok(events) => format!("ended after {} events", events.len()),
            Err(error) => error,
        };
        failed += 1;
        eprintln!("    a stream failed: {failure}");
    }
    *errors += failed;
    let gap = MEM_GAP.as_millis();
    println!("(4) memory of a fresh gateway, {MEM_STREAMS} streams of {MEM_LINES} lines {gap} ms apart");
    println!("{:<44}{idle:>8} MB", "VmRSS idle after start");
    println!("{:<44}{:>8} of {MEM_STREAMS}", "most streams open at once", hold.most_open);
    let label = format!("VmRSS max at that count ({} samples)", hold.samples);
    println!("{label:<44}{:>8.1} MB", hold.max_kb as f64 / 1024.0);
    let after = hold.all_open_after.map_or("never".to_string(), |secs| format!("{secs:.1} s"));
    println!("{:<44}{after:>8}", "every stream had its first event after");
    println!("{:<44}{hwm:>8} MB", "VmHWM (peak) at the end");
    println!("{:<44}{failed:>8}\n", "streams failed");
    let (peak, most_open) = (hwm_kb.max(hold.max_kb) as f64 / 1024.0, hold.most_open);
    format!(
        "{MEM_STREAMS} streams peak RSS: {peak:.1} MB ({most_open} open at once)   target < {RSS_TARGET_MB} MB   {}",
        verdict(peak < RSS_TARGET_MB)
    )
}

#[derive(Default, Clone, Copy)]
struct Counters {
    cpu_ns: u64,
    switches: u64,
}

/// CPU time so far of the gateway and of this process, exited threads included.
#[derive(Default, Clone, Copy)]
struct CpuSample {
    gateway: Duration,
    bench: Duration,
}

impl CpuSample {
    fn now(gateway: &Gateway) -> CpuSample {
        let pid = gateway.child.id().to_string();
        CpuSample { gateway: process_cpu(&pid), bench: process_cpu("self") }
    }
}

/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICK: Duration = Duration::from_millis(10);

/// utime + stime of a process from /proc/PID/stat; zero when it cannot be read.
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it start at its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    TICK * (ticks(11) + ticks(12))
}

/// The gateway's VmRSS while streams run, at the largest number open at once.
struct Hold {
    most_open: usize,
    max_kb: u64,
    samples: usize,
    all_open_after: Option<f64>,
}

/// Samples VmRSS every 100 ms until every stream finished (or a generous deadline).
fn sample_while_streaming(
    gateway: &Gateway,
    opened: &AtomicUsize,
    finished: &AtomicUsize,
    start: Instant,
) -> Hold {
    let mut hold = Hold { most_open: 0, max_kb: 0, samples: 0, all_open_after: None };
    let deadline = start + MEM_GAP * MEM_LINES as u32 * 4;
    while finished.load(Relaxed) < MEM_STREAMS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let (rss, open) = (gateway.status_kb("VmRSS").unwrap_or(0), opened.load(Relaxed));
        let open_now = open.saturating_sub(finished.load(Relaxed));
        if open_now > hold.most_open {
            (hold.most_open, hold.max_kb, hold.samples) = (open_now, 0, 0);
        }
        if open_now == hold.most_open {
            (hold.max_kb, hold.samples) = (hold.max_kb.max(rss), hold.samples + 1);
        }
        if open == MEM_STREAMS && hold.all_open_after.is_none() {
            hold.all_open_after = Some(start.elapsed().as_secs_f64());
        }
    }
    hold
}

// ---- A minimal HTTP/1.1 client ------------------------------------------------

/// Reads a chunked body, passing each chunk to `sink` as soon as it is complete.
fn read_chunks(reader: &mut impl BufRead, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
        if size == 0 {
            line.clear();
            while reader.read_line(&mut line)? > 0 && !line.trim_end().is_empty() {
                line.clear(); // trailers
            }
            return Ok(());
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        sink(&chunk[..size]);
    }
}

/// Where requests go: the fake directly, or the gateway (which needs the token).
#[derive(Clone, Copy)]
struct Target {
    addr: SocketAddr,
    path: &'static str,
    token: bool,
}

impl Target {
    /// A whole POST request with `body`, rendered once and sent many times.
    fn request(&self, body: &str) -> Vec<u8> {
        let auth = if self.token { format!("Authorization: Bearer {TOKEN}\r\n") } else { String::new() };
        let (path, addr, length) = (self.path, self.addr, body.len());
        let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json");
        format!("{head}\r\nContent-Length: {length}\r\n\r\n{body}").into_bytes()
    }
}

/// One keep-alive connection, opened on first use and again after an error or a close.
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    /// Sends `request`, passes each body piece to `sink` as it arrives, returns the status.
    fn exchange(&mut self, request: &[u8], sink: &mut dyn FnMut(&[u8])) -> io::Result<u16> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(self.addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                self.conn.insert(BufReader::new(stream))
            }
        };
        let result = send(conn, request, sink);
        if !matches!(result, Ok((_, false))) {
            self.conn = None;
        }
        result.map(|(status, _)| status)
    }
}

/// One request and its response on an open connection: the status, and whether it closes.
/// Bodies are chunked or sized by Content-Length (both servers here send one or the other).
fn send(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<(u16, bool)> {
    conn.get_ref().write_all(request)?;
    let head = read_head(conn)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering"))?;
    let status = head.first_line.split(' ').nth(1).and_then(|code| code.parse().ok());
    let status = status.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.first_line.clone()))?;
    if head.chunked {
        read_chunks(conn, sink)?;
    } else {
        let mut body = vec![0; head.content_length.unwrap_or(0)];
        conn.read_exact(&mut body)?;
        sink(&body);
    }
    Ok((status, head.close))
}

/// One non-stream chat that must answer 200 with the fake's text.
fn chat_once(client: &mut Client, request: &[u8]) -> Result<(), String> {
    let mut body = Vec::new();
    let status = client.exchange(request, &mut |piece| body.extend_from_slice(piece));
    match status.map_err(|err| err.to_string())? {
        200 if contains(&body, REPLY_TEXT) => Ok(()),
        status => Err(format!("status {status}: {}", String::from_utf8_lossy(&body))),
    }
}

/// An event of a stream, as the client saw it.
struct Event {
    /// When it arrived, in ms from the request's start.
    at_ms: f64,
    /// How long after the fake sent its line it arrived, in ms; for content lines only
    /// (they carry the fake's stamp, see `fake_ollama::sent_at`).
    relay_ms: Option<f64>,
}

/// One streamed chat's events. `first` counts streams that had their first event.
fn stream_once(
    client: &mut Client,
    request: &[u8],
    first: Option<&AtomicUsize>,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let start = Instant::now();
    let status = client.exchange(request, &mut |piece| {
        let arrived = Instant::now();
        for line in piece.split(|byte| *byte == b'\n').filter(|line| loadgen::is_event(line)) {
            if let (Some(first), true) = (first, events.is_empty()) {
                first.fetch_add(1, Relaxed);
            }
            let relay_ms = fake_ollama::sent_at(line).map(|sent| ms(arrived.saturating_duration_since(sent)));
            events.push(Event { at_ms: ms(arrived - start), relay_ms });
        }
    });
    match status.map_err(|err| err.to_string())? {
        200 => Ok(events),
        status => Err(format!("stream answered {status}")),
    }
}

// ---- The gateway child process ---------------------------------------------------------

/// The gateway binary running on a temp config; killed and cleaned up on drop (and panic).
struct Gateway {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Gateway {
    /// Writes a config whose one upstream is `upstream`, starts the binary with `RUST_LOG`
    /// set to `rust_log`, and waits for `GET /health`.
    fn start(upstream: SocketAddr, rust_log: &str) -> Result<Gateway, String> {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        eprintln!("starting the gateway (RUST_LOG={rust_log})");
        let name = format!("ollama-gateway-bench-{}-{}", std::process::id(), STARTS.fetch_add(1, Relaxed));
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).map_err(|err| format!("create {}: {err}", dir.display()))?;
        // A free port, released just before the gateway binds it: with RUST_LOG=warn the
        // gateway does not print its address.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|err| format!("find a free port: {err}"))?
            .port();
        let digest = hex::encode(Sha256::digest(TOKEN.as_bytes()));
        let token = format!("[[tokens]]\nname = \"bench\"\nsha256 = \"{digest}\"\npool = \"default\"\n");
        let config = format!("listen = \"127.0.0.1:{port}\"\nworkers = 256\n\n{token}");
        for (file, text) in [("config.toml", config), ("keys.txt", format!("http://{upstream}\n"))] {
            std::fs::write(dir.join(file), text).map_err(|err| format!("write {file}: {err}"))?;
        }
        let log =
            std::fs::File::create(dir.join("gateway.log")).map_err(|err| format!("gateway.log: {err}"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_ollama-gateway"))
            .args(["serve", "--config"])
            .arg(dir.join("config.toml"))
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("start the gateway binary: {err}"))?;
        let mut gateway = Gateway { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        gateway.wait_healthy()?;
        Ok(gateway)
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the gateway exited ({status}); its log:\n{}", self.log()));
            }
            if let Ok(200) = Client::new(self.addr).exchange(request.as_bytes(), &mut |_| {}) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!("the gateway did not answer GET /health within 15 s; its log:\n{}", self.log()))
    }

    fn target(&self) -> Target {
        Target { addr: self.addr, path: "/v1/chat/completions", token: true }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// A `kB` field of /proc/PID/status, such as VmRSS or VmHWM.
    fn status_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.split(':').next() == Some(field))?;
        line[field.len() + 1..].split_whitespace().next()?.parse().ok()
    }

    /// A status field in MB, for printing.
    /// CPU time (ns, from each thread's schedstat) and context switches (voluntary and
    /// not) summed over the gateway's live threads.
    fn counters(&self) -> Counters {
        let mut counters = Counters::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return counters;
        };
        for task in tasks.flatten() {
            let read = |name: &str| std::fs::read_to_string(task.path().join(name)).unwrap_or_default();
            counters.cpu_ns +=
                read("schedstat").split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0);
            for line in read("status").lines() {
                if line.starts_with("voluntary_ctxt_switches")
                    || line.starts_with("nonvoluntary_ctxt_switches")
                {
                    counters.switches +=
                        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                }
            }
        }
        counters
    }

    fn mb(&self, field: &str) -> String {
        self.status_kb(field).map_or("?".to_string(), |kb| format!("{:.1}", kb as f64 / 1024.0))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- Small helpers ---------------------------------------------------------------------

fn print_environment() {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let field = |text: &str, name: &str| {
        let line = text.lines().find(|line| line.starts_with(name)).unwrap_or("");
        line.split_once(':').map_or("?".to_string(), |(_, value)| value.trim().to_string())
    };
    println!("ollama-gateway bench: direct (client → fake Ollama) vs gateway (client → gateway → fake)");
    println!(
        "environment: nproc {}, cpu {}, memory {}, kernel {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        field(&read("/proc/cpuinfo"), "model name"),
        field(&read("/proc/meminfo"), "MemTotal"),
        read("/proc/sys/kernel/osrelease").trim()
    );
    println!("the client, the fake Ollama and the gateway share these cores\n");
}

/// The `p` quantile of `values`, linearly interpolated; NaN when empty.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

fn verdict(met: bool) -> &'static str {
    ["MISSED", "OK"][usize::from(met)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Spawns a thread with a small stack (the bench runs hundreds of them); failing to is fatal.
fn spawn_small<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(256 * 1024).spawn(work).expect("spawn a bench thread")
}
