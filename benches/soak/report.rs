//! Results: outcome counts, /proc samples of the gateway, and the verdict.
//!
//! Printing only; the figures come from `traffic`, `chaos`, `fake` and `gateway`.

use crate::*;

/// Outcomes by kind, and the first unexpected ones in full.
#[derive(Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<(Kind, Outcome, bool), u64>>,
    examples: Mutex<Vec<String>>,
}

impl Stats {
    pub fn record(&self, kind: Kind, judged: &Judged) {
        *lock(&self.counts).entry((kind, judged.outcome, judged.expected)).or_default() += 1;
        let mut examples = lock(&self.examples);
        if !judged.expected && examples.len() < 20 {
            examples.push(format!("{}: {}: {}", kind.name(), judged.outcome, judged.detail.trim()));
        }
    }

    pub fn total(&self) -> u64 {
        lock(&self.counts).iter().filter(|((kind, ..), _)| *kind != Kind::Burst).map(|(_, n)| n).sum()
    }

    pub fn unexpected(&self) -> u64 {
        lock(&self.counts).iter().filter(|((_, _, expected), _)| !expected).map(|(_, n)| n).sum()
    }

    pub fn print(&self) {
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
pub struct Sample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    pub fds: u64,
    pub sockets: u64,
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
pub struct Verdicts(Vec<(String, String, bool)>);

impl Verdicts {
    pub fn new(
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
    pub fn print(&self) -> bool {
        println!("verdict");
        for (check, got, ok) in &self.0 {
            println!("{check:<48}{got:<40}{}", ["FAIL", "ok"][usize::from(*ok)]);
        }
        let ok = self.0.iter().all(|(_, _, ok)| *ok);
        println!("\nsoak: {}", if ok { "FLAT, all checks passed" } else { "FAILED" });
        ok
    }
}

pub fn print_settings(secs: u64, schedule: &Schedule, gateway: &Gateway) {
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

pub fn print_log_summary(log: &str, reloads: &Reloads) {
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

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
