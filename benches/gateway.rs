//! Direct-to-Ollama vs through-the-gateway, side by side, for the release binary and the
//! static one (`make bench`), ending in one table of the goals of issue 12.
//!
//! The bench starts, in this process, a fake Ollama (benches/common/fake_ollama.rs: one
//! thread, one epoll loop, HTTP/1.1 keep-alive, canned `/api/chat` answers and NDJSON
//! streams whose lines are due at fixed times), then the real gateway binary as a child
//! process with a temp config whose only upstream is the fake. Every measurement does the
//! same work on the fake two ways: "direct" is client → fake `/api/chat`, "gateway" is
//! client → gateway `/v1/chat/completions` → fake, so the difference is what the gateway
//! adds (an HTTP hop, auth, JSON translation both ways, logging).
//!
//! Why the fake and the load generator are each one thread on an event loop: the client,
//! the fake and the gateway share the machine's cores (two, here). With a thread per
//! connection on both, 64 client threads and 64 fake threads waking and sleeping spent
//! most of those cores in the kernel's wake-up paths, and the gateway got what was left:
//! the harness, not the gateway, was measured. One thread each costs little, costs the same
//! on both paths, and is how the issue measured ("fake Ollama on one thread, the same load
//! generator" for both paths).
//!
//! For each build (the release glibc binary cargo builds; the static musl binary when
//! `BENCH_STATIC_BINARY` names it, as `make bench` does):
//!
//! 1. Start-up: [`STARTS`] times, from spawning the binary to the first `200` on
//!    `GET /health`, connecting every 0.5 ms; the median. (The glibc binary re-executes
//!    itself once at start, see src/main.rs; that is part of its start-up.)
//! 2. Sequential overhead: one client, one keep-alive connection per target, rounds of
//!    [`PER_ROUND`] non-stream chats per target (which goes first alternates); the median and
//!    IQR of the per-round medians, and of the per-round difference. The gateway's CPU time
//!    and context switches per request, summed over its threads (`/proc/PID/task/*`)
//!    around its batches.
//! 3. Throughput: [`CONCURRENCY`] keep-alive connections driven by the one-thread load
//!    generator (benches/common/loadgen.rs) for [`LOAD_WINDOW`] after [`LOAD_WARMUP`]. A
//!    connection that completes nothing in the window is counted as stalled. The gateway's
//!    CPU per request in the window (`/proc/PID/stat`, which counts exited threads too) and
//!    this process's own CPU (the fake and the load generator).
//! 4. Streams, one at a time, alternating: time to the first event from the request's
//!    start, and the delay the gateway adds to each event of a [`STREAM_LINES`]-line
//!    stream. The fake writes the time it sends each line into the line's text, which the
//!    gateway passes through, so each event's relay delay (fake sent → client read) is
//!    measured on one clock; added = gateway relay − direct relay of the same line index.
//!    (Timed from the request's start instead, every line would also carry the gateway's
//!    time to send the request upstream, which the first-event row measures already.)
//!    Then a few sequential rounds again with `RUST_LOG=info`, to show the cost of the
//!    per-request log line.
//! 5. Many streams: a fresh gateway with `workers = 2048`; its VmRSS idle, then
//!    [`MANY_STREAMS`] streams open at once (opened over [`MANY_RAMP`]), held on the load
//!    generator's loop: whether every one got every event, the longest gap between two
//!    events of one stream, relay delays, and the gateway's VmRSS while all were open and
//!    its VmHWM (peak).
//!
//! The sequential rounds and the one-at-a-time streams use a minimal blocking HTTP/1.1
//! client over `TcpStream` (one request at a time needs no more). All ratios in the final table come
//! from this one run. Results go to stdout, progress to stderr. Missed goals are reported,
//! not failed on; the process exits non-zero only if the gateway does not start or
//! requests fail.
//!
//! Profiling: `BENCH_PROFILE_ROUNDS=N make bench` starts one glibc gateway, prints its pid
//! to stderr and runs only N sequential rounds (for `perf record -p`);
//! `BENCH_PROFILE_LOAD=1` as well adds the throughput runs on the same gateway;
//! `BENCH_PROFILE_MANY=1` runs only the many streams (5), on the glibc build.

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
use loadgen::{Edge, LoadRun, StreamsRun};
use wire::read_head;

const TOKEN: &str = "sk-bench-only-not-a-secret";
const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":false}"#;
const CHAT_STREAM: &str = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true}"#;
/// The fake's answer text, which every non-stream reply must hold.
const REPLY_TEXT: &[u8] = b"Hello!";

const STARTS: usize = 10;
const PER_ROUND: usize = 200;
const ROUNDS: usize = 15;
const INFO_ROUNDS: usize = 5;
/// Connections of the throughput runs; the goals table takes the first (c=64).
const CONCURRENCY: [usize; 2] = [64, 256];
const LOAD_WARMUP: Duration = Duration::from_secs(1);
const LOAD_WINDOW: Duration = Duration::from_secs(5);
const STREAM_LINES: usize = 20;
const STREAM_GAP: Duration = Duration::from_millis(10);
const STREAMS: usize = 40;
const MANY_STREAMS: usize = 2000;
const MANY_WORKERS: usize = 2048;
const MANY_LINES: usize = 20;
const MANY_GAP: Duration = Duration::from_millis(250);
const MANY_RAMP: Duration = Duration::from_secs(1);
/// Gateway `workers` for every phase but the many streams (the config's default).
const WORKERS: usize = 256;
/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICK: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a measurement
    // that takes minutes has no place in the test run.
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

/// Measures each build in turn, then prints the goals table.
fn run() -> Result<(), String> {
    raise_open_files_limit();
    print_environment();
    let shape = Arc::new(Shape::default());
    let fake = FakeOllama::start(Arc::clone(&shape));
    let direct = Target { addr: fake.addr, path: "/api/chat", token: false };
    let builds = builds();
    let mut failed = 0;
    if let Ok(rounds) = std::env::var("BENCH_PROFILE_ROUNDS") {
        let rounds = rounds.parse().map_err(|_| "BENCH_PROFILE_ROUNDS: not a number")?;
        let gateway = Gateway::start(&builds[0], direct.addr, "warn", WORKERS)?;
        eprintln!("gateway pid {}", gateway.child.id());
        phase_sequential(direct, &gateway, rounds, "warn")?;
        if std::env::var("BENCH_PROFILE_LOAD").is_ok() {
            phase_load(direct, &gateway, &mut failed);
        }
        return Ok(());
    }
    if std::env::var("BENCH_PROFILE_MANY").is_ok() {
        let gateway = Gateway::start(&builds[0], direct.addr, "warn", MANY_WORKERS)?;
        eprintln!("gateway pid {}", gateway.child.id());
        shape.set(MANY_LINES, MANY_GAP);
        phase_many_streams(&gateway, &mut failed);
        return Ok(());
    }
    let mut results = Vec::new();
    for build in &builds {
        println!("==== {} binary: {} ({:.2} MB)\n", build.name, build.path.display(), build.size_mb);
        results.push(measure(build, direct, &shape, &mut failed)?);
    }
    print_goals(&builds, &results);
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} requests failed (see the tables above)")),
    }
}

/// The phases, in order, for one build; each prints its table.
fn measure(build: &Build, direct: Target, shape: &Shape, failed: &mut usize) -> Result<Measured, String> {
    let startup_ms = phase_startup(build, direct.addr)?;

    let gateway = Gateway::start(build, direct.addr, "warn", WORKERS)?;
    let sequential = phase_sequential(direct, &gateway, ROUNDS, "warn")?;
    let throughput = phase_load(direct, &gateway, failed);
    println!("gateway after (2)-(3): VmRSS {} MB, VmHWM {} MB\n", gateway.mb("VmRSS"), gateway.mb("VmHWM"));
    drop(gateway);

    // A fresh gateway, so the streams do not share it with the load's idle threads.
    let gateway = Gateway::start(build, direct.addr, "warn", WORKERS)?;
    shape.set(STREAM_LINES, STREAM_GAP);
    let streams = phase_streams(direct, &gateway)?;
    drop(gateway);

    let gateway = Gateway::start(build, direct.addr, "info", WORKERS)?;
    phase_sequential(direct, &gateway, INFO_ROUNDS, "info")?;
    drop(gateway);

    let gateway = Gateway::start(build, direct.addr, "warn", MANY_WORKERS)?;
    shape.set(MANY_LINES, MANY_GAP);
    let many = phase_many_streams(&gateway, failed);
    drop(gateway);
    Ok(Measured { size_mb: build.size_mb, startup_ms, sequential, throughput, streams, many })
}

// ---- The phases ------------------------------------------------------------------------

/// (1): spawn to the first served `GET /health`, [`STARTS`] times; the median, in ms.
fn phase_startup(build: &Build, upstream: SocketAddr) -> Result<f64, String> {
    eprintln!("(1) start-up, {STARTS} starts");
    let mut times = Vec::new();
    for _ in 0..STARTS {
        times.push(ms(Gateway::start(build, upstream, "warn", WORKERS)?.startup));
    }
    let [min, p50, max] = [0.0, 0.5, 1.0].map(|p| percentile(&times, p));
    println!("(1) start-up: spawn to the first 200 on GET /health, connecting every 0.5 ms, {STARTS} starts");
    println!("median {p50:.2} ms, min {min:.2} ms, max {max:.2} ms\n");
    Ok(p50)
}

/// What (2) measured.
struct Sequential {
    direct_p50_ms: f64,
    overhead_ms: f64,
    cpu_ms: f64,
    switches: f64,
}

/// (2): interleaved rounds of sequential non-stream chats on one connection per target.
fn phase_sequential(direct: Target, gw: &Gateway, rounds: usize, log: &str) -> Result<Sequential, String> {
    eprintln!("(2) sequential overhead, RUST_LOG={log}");
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
                cpu_ns += after.cpu_ns.saturating_sub(before.cpu_ns);
                switches += after.switches.saturating_sub(before.switches);
            }
            round_medians[side] = percentile(&times, 0.5);
        }
        medians[0].push(round_medians[0]);
        medians[1].push(round_medians[1]);
        medians[2].push(round_medians[1] - round_medians[0]);
    }
    println!("(2) sequential non-stream chat, RUST_LOG={log}: {rounds} rounds x {PER_ROUND} requests per");
    println!("target on one keep-alive connection each; median and IQR of the per-round medians, ms");
    println!("{:<20}{:>10}{:>10}{:>10}", "", "median", "p25", "p75");
    for (name, values) in ["direct", "gateway", "overhead (g - d)"].iter().zip(&medians) {
        let [p25, p50, p75] = [0.25, 0.5, 0.75].map(|p| percentile(values, p));
        println!("{name:<20}{p50:>10.3}{p25:>10.3}{p75:>10.3}");
    }
    let served = (rounds * PER_ROUND) as f64;
    let (cpu_ms, switches) = (cpu_ns as f64 / served / 1e6, switches as f64 / served);
    println!("gateway CPU per request {cpu_ms:.3} ms, context switches per request {switches:.2}");
    println!();
    let (direct_p50_ms, overhead_ms) = (percentile(&medians[0], 0.5), percentile(&medians[2], 0.5));
    Ok(Sequential { direct_p50_ms, overhead_ms, cpu_ms, switches })
}

/// What (3) measured at the lowest concurrency: gateway ÷ direct.
struct Throughput {
    rps_ratio: f64,
    p99_ratio: f64,
}

/// (3): keep-alive connections driven by the one-thread load generator, as fast as they go.
fn phase_load(direct: Target, gw: &Gateway, failed: &mut usize) -> Throughput {
    eprintln!("(3) throughput");
    let secs = (LOAD_WINDOW.as_secs(), LOAD_WARMUP.as_secs());
    println!(
        "(3) throughput, non-stream chat, {} s after {} s warm-up, one connection per client;",
        secs.0, secs.1
    );
    println!("latencies in ms; CPU: the gateway's per request, and the bench's own (fake + load generator)");
    println!(
        "{:<9}{:>5}{:>9}{:>8}{:>8}{:>8}{:>8}{:>7}{:>8}{:>12}{:>10}",
        "target", "conc", "req/s", "p50", "p95", "p99", "max", "errors", "stalled", "gw CPU/req", "bench CPU"
    );
    let mut first = None; // (direct, gateway) (req/s, p99) at the first concurrency
    for concurrency in CONCURRENCY {
        let mut sides = [(0.0, 0.0); 2];
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
            *failed += load.errors;
            sides[side] = (rps, p99);
        }
        first.get_or_insert(sides);
    }
    println!("stalled = connections that completed no request in the window; errors: whole run;");
    println!("bench CPU: % of one core, from /proc/self/stat in 10 ms ticks. Direct is bound by the");
    println!("fake and the load generator themselves: about twice as fast when the scheduler runs");
    println!("their two threads on different cores as when on one\n");
    let [(direct_rps, direct_p99), (gateway_rps, gateway_p99)] = first.unwrap_or_default();
    Throughput { rps_ratio: gateway_rps / direct_rps, p99_ratio: gateway_p99 / direct_p99 }
}

/// What (4) measured: gateway minus direct, ms.
struct StreamDelays {
    added_p50_ms: f64,
    added_p99_ms: f64,
    first_event_added_ms: f64,
}

/// (4): sequential streams, alternating direct and gateway; the same line's times compared.
fn phase_streams(direct: Target, gw: &Gateway) -> Result<StreamDelays, String> {
    eprintln!("(4) streams");
    let mut clients = [Client::new(direct.addr), Client::new(gw.addr)];
    let requests = [direct.request(CHAT_STREAM), gw.target().request(CHAT_STREAM)];
    let (mut first, mut relay) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let (mut added, mut added_from_start) = (Vec::new(), Vec::new());
    for index in 0..=STREAMS {
        // Per side: each content line's (time from the request's start, relay delay).
        let mut lines: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        let mut firsts = [0.0; 2];
        for side in if index % 2 == 0 { [0, 1] } else { [1, 0] } {
            let events = stream_once(&mut clients[side], &requests[side])?;
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
    println!("(4) streams: {STREAM_LINES} lines {gap:.0} ms apart, {STREAMS} sequential streams per target, alternating;");
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
    Ok(StreamDelays {
        added_p50_ms: percentile(&added, 0.5),
        added_p99_ms: percentile(&added, 0.99),
        first_event_added_ms: percentile(&first[1], 0.5) - percentile(&first[0], 0.5),
    })
}

/// What (5) measured.
struct ManyStreams {
    streams: usize,
    /// Streams that answered 200 and had every event.
    complete: usize,
    longest_gap_ms: f64,
    idle_rss_mb: f64,
    /// The larger of VmHWM at the end and the largest VmRSS sampled.
    peak_rss_mb: f64,
}

/// (5): a fresh gateway's memory idle, then [`MANY_STREAMS`] streams open at once.
fn phase_many_streams(gateway: &Gateway, failed: &mut usize) -> ManyStreams {
    eprintln!("(5) {MANY_STREAMS} streams at once");
    thread::sleep(Duration::from_millis(500));
    let idle_kb = gateway.status_kb("VmRSS").unwrap_or(0);
    let request = gateway.target().request(CHAT_STREAM);
    let stream_time = MANY_GAP * MANY_LINES as u32;
    let run = StreamsRun {
        addr: gateway.addr,
        request: &request,
        streams: MANY_STREAMS,
        ramp: MANY_RAMP,
        deadline: (MANY_RAMP + stream_time) * 3,
    };
    // VmRSS while every stream is open, and the most open at once.
    let (mut most_open, mut all_open_kb, mut samples) = (0, 0, 0);
    let mut relay = Vec::with_capacity(MANY_STREAMS * MANY_LINES);
    let mut on_tick = |open| {
        most_open = most_open.max(open);
        if open == MANY_STREAMS {
            all_open_kb = all_open_kb.max(gateway.status_kb("VmRSS").unwrap_or(0));
            samples += 1;
        }
    };
    let mut on_event = |event: &[u8], arrived: Instant| {
        relay.extend(fake_ollama::sent_at(event).map(|sent| ms(arrived.saturating_duration_since(sent))));
    };
    let streams = loadgen::hold_streams(&run, &mut on_tick, &mut on_event);
    let hwm_kb = gateway.status_kb("VmHWM").unwrap_or(0);
    // Every content line and the done line, each an event (a chunk of its own) through
    // the gateway.
    let complete = streams.events.iter().filter(|&&events| events > MANY_LINES).count();
    *failed += streams.failed;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let gap = ms(MANY_GAP);
    println!("(5) {MANY_STREAMS} streams at once through a fresh gateway (workers = {MANY_WORKERS}), each");
    println!(
        "{MANY_LINES} lines {gap:.0} ms apart, a connection each, opened over {:.1} s",
        MANY_RAMP.as_secs_f64()
    );
    println!("{:<48}{:>10.1} MB", "VmRSS idle after start", mb(idle_kb));
    println!("{:<48}{:>10} of {MANY_STREAMS}", "most streams open at once", most_open);
    println!("{:<48}{:>10} of {MANY_STREAMS}", "streams that had their first event", streams.first_events);
    println!("{:<48}{:>10} of {MANY_STREAMS}", "streams that had every event", complete);
    println!("{:<48}{:>10.1} ms", "longest gap between events of one stream", ms(streams.longest_gap));
    println!("{:<48}{:>10.1} ms", "slowest first event", ms(streams.slowest_first));
    let [p50, p99, max] = [0.5, 0.99, 1.0].map(|p| percentile(&relay, p));
    println!("{:<48}{p50:>10.2} / {p99:.2} / {max:.1} ms", "relay per event, p50 / p99 / max");
    let label = format!("VmRSS max while all were open ({samples} samples)");
    println!("{label:<48}{:>10.1} MB", mb(all_open_kb));
    println!("{:<48}{:>10.1} MB", "VmHWM (peak) at the end", mb(hwm_kb));
    println!("{:<48}{:>10}", "streams failed", streams.failed);
    if let Some(failure) = &streams.first_failure {
        println!("    first failure: {failure}");
    }
    println!();
    ManyStreams {
        streams: MANY_STREAMS,
        complete,
        longest_gap_ms: ms(streams.longest_gap),
        idle_rss_mb: mb(idle_kb),
        peak_rss_mb: mb(hwm_kb.max(all_open_kb)),
    }
}

// ---- The goals table -------------------------------------------------------------------

/// One build's figures for the goals table.
struct Measured {
    size_mb: f64,
    startup_ms: f64,
    sequential: Sequential,
    throughput: Throughput,
    streams: StreamDelays,
    many: ManyStreams,
}

/// A row of the goals table: what is measured, the goal, and the figure (as shown, and
/// whether it meets the goal; `None` when the goal is not about this build).
struct Goal {
    measurement: &'static str,
    goal: &'static str,
    figure: fn(&Measured, &Build) -> (String, Option<bool>),
}

/// Longest gap between two events of one stream that still counts as progressing.
const PROGRESS_GAP_MS: f64 = 1000.0;

const GOALS: &[Goal] = &[
    Goal {
        measurement: "sequential overhead (g - d p50) / direct p50",
        goal: "<= 1.0x",
        figure: |m, _| {
            let ratio = m.sequential.overhead_ms / m.sequential.direct_p50_ms;
            (format!("{ratio:.2}x ({:.3} ms)", m.sequential.overhead_ms), Some(ratio <= 1.0))
        },
    },
    Goal {
        measurement: "gateway CPU per request, c=1",
        goal: "<= 0.08 ms",
        figure: |m, _| (format!("{:.3} ms", m.sequential.cpu_ms), Some(m.sequential.cpu_ms <= 0.08)),
    },
    Goal {
        measurement: "context switches per request, c=1",
        goal: "<= 2.5",
        figure: |m, _| (format!("{:.2}", m.sequential.switches), Some(m.sequential.switches <= 2.5)),
    },
    Goal {
        measurement: "c=64 req/s, gateway / direct",
        goal: ">= 33%",
        figure: |m, _| {
            let ratio = m.throughput.rps_ratio;
            (format!("{:.0}%", 100.0 * ratio), Some(ratio >= 0.33))
        },
    },
    Goal {
        measurement: "c=64 p99, gateway / direct",
        goal: "<= 4x",
        figure: |m, _| (format!("{:.2}x", m.throughput.p99_ratio), Some(m.throughput.p99_ratio <= 4.0)),
    },
    Goal {
        measurement: "stream: added delay per event, p50",
        goal: "<= 0.15 ms",
        figure: |m, _| (format!("{:.3} ms", m.streams.added_p50_ms), Some(m.streams.added_p50_ms <= 0.15)),
    },
    Goal {
        measurement: "stream: added delay per event, p99",
        goal: "<= 1 ms",
        figure: |m, _| (format!("{:.3} ms", m.streams.added_p99_ms), Some(m.streams.added_p99_ms <= 1.0)),
    },
    Goal {
        measurement: "stream: first event, gateway - direct p50",
        goal: "<= 0.2 ms",
        figure: |m, _| {
            let added = m.streams.first_event_added_ms;
            (format!("{added:.3} ms"), Some(added <= 0.2))
        },
    },
    Goal {
        measurement: "2,000 streams: all get every event, gaps",
        goal: "all, gaps < 1 s",
        figure: |m, _| {
            let many = &m.many;
            let progressing = many.complete == many.streams && many.longest_gap_ms < PROGRESS_GAP_MS;
            (format!("{}/{}, {:.0} ms", many.complete, many.streams, many.longest_gap_ms), Some(progressing))
        },
    },
    Goal {
        measurement: "2,000 streams: gateway peak RSS",
        goal: "< 100 MB",
        figure: |m, _| (format!("{:.1} MB", m.many.peak_rss_mb), Some(m.many.peak_rss_mb < 100.0)),
    },
    Goal {
        measurement: "idle RSS after start",
        goal: "< 5 MB",
        figure: |m, _| (format!("{:.1} MB", m.many.idle_rss_mb), Some(m.many.idle_rss_mb < 5.0)),
    },
    Goal {
        measurement: "start-up to a served GET /health, median",
        goal: "< 20 ms",
        figure: |m, _| (format!("{:.2} ms", m.startup_ms), Some(m.startup_ms < 20.0)),
    },
    Goal {
        measurement: "binary size (the goal is the static one's)",
        goal: "< 6 MB static",
        figure: |m, build| {
            (format!("{:.2} MB", m.size_mb), (build.name == "static").then_some(m.size_mb < 6.0))
        },
    },
];

fn print_goals(builds: &[Build], results: &[Measured]) {
    let figures: Vec<Vec<(String, Option<bool>)>> = GOALS
        .iter()
        .map(|goal| {
            results.iter().zip(builds).map(|(measured, build)| (goal.figure)(measured, build)).collect()
        })
        .collect();
    let cell = |figures: &[(String, Option<bool>)], index: usize| {
        figures.get(index).map_or(("not run".to_string(), "-"), |(text, met)| {
            (text.clone(), met.map_or("-", |met| ["MISSED", "OK"][usize::from(met)]))
        })
    };
    println!("goals (issue 12), every figure from this run");
    println!(
        "{:<46}{:>18}{:>18}{:>17}{:>8}{:>8}",
        "measurement", "glibc", "static", "goal", "glibc", "static"
    );
    for (goal, figures) in GOALS.iter().zip(&figures) {
        let ((glibc, glibc_met), (static_, static_met)) = (cell(figures, 0), cell(figures, 1));
        println!(
            "{:<46}{glibc:>18}{static_:>18}{:>17}{glibc_met:>8}{static_met:>8}",
            goal.measurement, goal.goal
        );
    }
}

// ---- A minimal blocking HTTP/1.1 client ------------------------------------------------

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
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, timeout: Duration::from_secs(60), conn: None }
    }

    /// Sends `request`, passes each body piece to `sink` as it arrives, returns the status.
    fn exchange(&mut self, request: &[u8], sink: &mut dyn FnMut(&[u8])) -> io::Result<u16> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(self.addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(self.timeout))?;
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

/// One streamed chat's events.
fn stream_once(client: &mut Client, request: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let start = Instant::now();
    let status = client.exchange(request, &mut |piece| {
        let arrived = Instant::now();
        for line in piece.split(|byte| *byte == b'\n').filter(|line| loadgen::is_event(line)) {
            let relay_ms = fake_ollama::sent_at(line).map(|sent| ms(arrived.saturating_duration_since(sent)));
            events.push(Event { at_ms: ms(arrived - start), relay_ms });
        }
    });
    match status.map_err(|err| err.to_string())? {
        200 => Ok(events),
        status => Err(format!("stream answered {status}")),
    }
}

// ---- The binaries and the gateway child process ----------------------------------------

/// A gateway binary to measure.
struct Build {
    /// "glibc" or "static".
    name: &'static str,
    path: PathBuf,
    size_mb: f64,
}

/// The release binary cargo built for this bench, and the static one when
/// `BENCH_STATIC_BINARY` names a file (`make bench` builds it first).
fn builds() -> Vec<Build> {
    let build = |name, path: PathBuf| {
        let size = std::fs::metadata(&path).ok()?.len();
        Some(Build { name, path, size_mb: size as f64 / (1024.0 * 1024.0) })
    };
    let glibc = PathBuf::from(env!("CARGO_BIN_EXE_ollama-gateway"));
    let mut builds = vec![build("glibc", glibc).expect("cargo builds the gateway binary before its bench")];
    match std::env::var_os("BENCH_STATIC_BINARY").map(PathBuf::from) {
        None => {
            println!("static binary: not measured (BENCH_STATIC_BINARY is not set; `make bench` sets it)\n")
        }
        Some(path) => match build("static", path.clone()) {
            Some(found) => builds.push(found),
            None => println!("static binary: not measured ({} is missing)\n", path.display()),
        },
    }
    builds
}

/// The gateway binary running on a temp config; killed and cleaned up on drop (and panic).
struct Gateway {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    /// From spawning the binary to its first `200` on `GET /health`.
    startup: Duration,
}

impl Gateway {
    /// Writes a config whose one upstream is `upstream`, starts `build` with `RUST_LOG`
    /// set to `rust_log`, and waits for `GET /health`.
    fn start(build: &Build, upstream: SocketAddr, rust_log: &str, workers: usize) -> Result<Gateway, String> {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        eprintln!("starting the {} gateway (RUST_LOG={rust_log}, workers = {workers})", build.name);
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
        let config = format!("listen = \"127.0.0.1:{port}\"\nworkers = {workers}\n\n{token}");
        for (file, text) in [("config.toml", config), ("keys.txt", format!("http://{upstream}\n"))] {
            std::fs::write(dir.join(file), text).map_err(|err| format!("write {file}: {err}"))?;
        }
        let log =
            std::fs::File::create(dir.join("gateway.log")).map_err(|err| format!("gateway.log: {err}"))?;
        let spawned = Instant::now();
        let child = Command::new(&build.path)
            .args(["serve", "--config"])
            .arg(dir.join("config.toml"))
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|err| format!("start {}: {err}", build.path.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut gateway = Gateway { child, addr, dir, startup: Duration::ZERO };
        gateway.startup = gateway.wait_healthy(spawned)?;
        Ok(gateway)
    }

    /// Asks `GET /health` every 0.5 ms until it answers 200; the time since `spawned`.
    fn wait_healthy(&mut self, spawned: Instant) -> Result<Duration, String> {
        let request = format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        let deadline = spawned + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the gateway exited ({status}); its log:\n{}", self.log()));
            }
            let mut client = Client { timeout: Duration::from_secs(1), ..Client::new(self.addr) };
            if let Ok(200) = client.exchange(request.as_bytes(), &mut |_| {}) {
                return Ok(spawned.elapsed());
            }
            thread::sleep(Duration::from_micros(500));
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
    fn mb(&self, field: &str) -> String {
        self.status_kb(field).map_or("?".to_string(), |kb| format!("{:.1}", kb as f64 / 1024.0))
    }

    /// CPU time (ns, from each thread's schedstat) and context switches (voluntary and
    /// not) summed over the gateway's live threads: precise, but blind to threads that
    /// exited in between (none do in the sequential rounds, whose connection lives on).
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
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// utime + stime of a process from /proc/PID/stat; zero when it cannot be read.
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it start at its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    TICK * (ticks(11) + ticks(12))
}

// ---- Small helpers ---------------------------------------------------------------------

/// Raises this process's soft limit on open files to the hard one: it holds thousands of
/// sockets (the many-streams client's and the fake's ends), and the gateway it starts
/// inherits the limit.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Err(error) = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum })
    {
        eprintln!("could not raise the open-files limit ({error}); the many-streams phase may fail");
    }
}

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
    println!("the client, the fake Ollama and the gateway share these cores");
    println!("load average at start: {}\n", read("/proc/loadavg").trim());
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

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
