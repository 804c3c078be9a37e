//! Mixed traffic with faults for ten minutes (`make soak`): the gateway must stay flat.
//!
//! The soak starts, in this process, a fake Ollama that injects a fault chosen at random in
//! about one upstream request in six (quota and overload 429/503, 500, a connection closed
//! mid-answer, an answer stalled past the gateway's idle timeout, garbage instead of JSON,
//! a rare 401), then the real release gateway binary as a child with a temp config: ten keys
//! on the fake, small timeouts, `max_connections` 200, `workers` 64, and the soak itself as
//! a trusted proxy (wrong tokens arrive forwarded from many addresses, so none is locked
//! out). [`CLIENTS`] client
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
//!
//! This file holds the settings (the constants below), the schedule and the run; each
//! module holds one part and takes the settings and std imports from here (`use crate::*`).

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

mod chaos; // reloads and connection bursts
mod fake; // the fake Ollama and its faults
mod gateway; // the gateway child process
mod http; // a minimal HTTP/1.1 client
mod outcome; // kinds of action, outcomes, judgements
mod report; // counts, samples, verdict
mod traffic; // the client threads
#[path = "../common/wire.rs"]
mod wire; // the head parser make bench shares

use chaos::*;
use fake::*;
use gateway::*;
use http::*;
use outcome::*;
use report::*;
use traffic::*;

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
    let (mut next_sample, mut minutes) = (shared.schedule.measured + SAMPLE_EVERY, Vec::new());
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
                minutes.push(sample);
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
    if let (Some(first), Some(last)) = (minutes.first(), minutes.last()) {
        println!(
            "VmRSS under traffic, first to last minute: {:.1} -> {:.1} MB (a leak would climb here)",
            mb(first.rss_kb),
            mb(last.rss_kb)
        );
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

// ---- Small helpers ---------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Spawns a thread with a small stack (the fake runs one per connection).
fn spawn_small<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    thread::Builder::new().stack_size(256 * 1024).spawn(work).expect("spawn a soak thread")
}

/// What the client threads and the chaos thread share.
struct Shared {
    addr: SocketAddr,
    schedule: Schedule,
    stats: Stats,
    bursts: Bursts,
    stop: AtomicBool,
}
