//! The `ollama-gateway` binary: set up logging, parse the command line, run it, exit with
//! its code.
//!
//! Logging follows `RUST_LOG` (default `info`) for every subcommand, with one limit no
//! directive lifts: other crates' debug and trace records are dropped (see [`Logger`]).
//! Lines are env_logger's text, or one JSON object each once `serve` has read
//! `log_format = "json"`; then the error a run ends with and a panic's message are JSON
//! lines too, so that every line on stderr parses.

use log::{Level, Log, Metadata, Record};
use ollama_gateway::logline::{self, LogFormat};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = ollama_gateway::cli::parse(&args, std::env::var("OLLAMA_GATEWAY_CONFIG").ok());
    if matches!(command, Ok(ollama_gateway::cli::Command::Serve { .. })) {
        tune_malloc();
    }
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    log::set_max_level(inner.filter());
    // Only fails when a logger is already set, which nothing before this line does.
    let _ = log::set_boxed_logger(Box::new(Logger(inner)));
    let text_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match logline::format() {
        // The message and where it was, as one line; RUST_BACKTRACE's frames are text's only.
        LogFormat::Json => write_stderr(&logline::json_message(
            logline::now_millis(),
            Level::Error,
            "panic",
            &info.to_string(),
        )),
        LogFormat::Text => text_hook(info),
    }));
    match command {
        Ok(command) => ollama_gateway::cli::run(command).unwrap_or_else(|error| report(&error)),
        Err(message) => report(&ollama_gateway::cli::CliError::Usage(message)),
    }
}

/// Prints why a command failed, once, and picks its exit code.
fn report(error: &ollama_gateway::cli::CliError) -> ExitCode {
    for message in error.messages() {
        match logline::format() {
            LogFormat::Text => eprintln!("error: {message}"),
            LogFormat::Json => write_stderr(&logline::json_message(
                logline::now_millis(),
                Level::Error,
                "ollama_gateway",
                &message,
            )),
        }
    }
    error.code()
}

/// Writes `line` and its newline to stderr in one write, so that lines written by threads
/// at once do not interleave.
fn write_stderr(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    // Nowhere is left to report a failed write to stderr.
    let _ = std::io::stderr().lock().write_all(&bytes);
}

/// The glibc tunables `serve` runs with: the names, and the settings.
const MALLOC_TUNABLES: [(&str, &str); 2] =
    [("glibc.malloc.mmap_threshold", "=131072"), ("glibc.malloc.tcache_max", "=256")];

/// Starts `serve` again with glibc's malloc tuned for a long-running server of many
/// threads, once, when glibc is the C library.
///
/// - `mmap_threshold` fixed at 128 KiB gives large freed blocks back to the system.
///   glibc raises the threshold to the size of the largest block freed so far (up to
///   32 MiB); after that, request bodies of up to that size come from per-thread arenas
///   whose free memory glibc keeps: after 48 concurrent 30 MB bodies, 1.7 to 2.1 GB stayed
///   resident. With the threshold fixed, every block of 128 KiB or more is a mapping of its
///   own, unmapped when freed (12 MB resident after the same burst).
/// - `tcache_max` at 256 bytes: each thread caches freed blocks of up to 1 KiB for its own
///   reuse, and a connection thread holding a stream keeps what its request freed for as
///   long as the stream lasts: 8 KB of 73 per held stream (2,000 streams: 16 MB), for 3%
///   more instructions per request.
///
/// glibc reads these only from `GLIBC_TUNABLES` at start, and setting them in code needs
/// unsafe FFI, so the process replaces itself once with the variable set (the same process
/// id; the variable then says it is done). An operator's own setting of either is kept. If
/// the new start fails, serving goes on as it is. musl (the static build) needs none of
/// this: its allocator unmaps large blocks and keeps no per-thread caches.
fn tune_malloc() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let Some(tunables) = with_malloc_tunables(&current) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    // `exec` returns only when it failed.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec();
}

/// `current` (a `GLIBC_TUNABLES` value) with those of [`MALLOC_TUNABLES`] it lacks added,
/// or `None` when it has them all (an operator's own setting of one is kept).
fn with_malloc_tunables(current: &str) -> Option<String> {
    let missing = MALLOC_TUNABLES.iter().filter(|(name, _)| !current.contains(name));
    let missing: Vec<String> = missing.map(|(name, value)| format!("{name}{value}")).collect();
    if missing.is_empty() {
        return None;
    }
    let kept = (!current.is_empty()).then(|| current.to_string());
    Some(kept.into_iter().chain(missing).collect::<Vec<_>>().join(":"))
}

/// Crates whose debug and trace records are written when `RUST_LOG` asks for them: ours,
/// and tiny_http's (its accept thread starting and stopping).
const VERBOSE_CRATES: [&str; 2] = ["ollama_gateway", "tiny_http"];

/// `env_logger` behind a gate that keeps secrets out of the log at every level.
///
/// ureq and ureq-proto write each request head at debug and trace, as text and as a hex
/// dump, upstream `Authorization: Bearer KEY` included; rustls logs handshake details.
/// `RUST_LOG` directives combine in ways that are easy to get wrong (`RUST_LOG=trace`,
/// `ureq_proto=trace`), so instead of adding a directive this gate drops every debug or
/// trace record that does not come from a crate in [`VERBOSE_CRATES`], whatever `RUST_LOG`
/// says. Their info, warn and error records pass as `RUST_LOG` decides.
struct Logger(env_logger::Logger);

/// Whether a record of this level and target may reach the log at all.
fn admitted(metadata: &Metadata<'_>) -> bool {
    metadata.level() <= Level::Info || VERBOSE_CRATES.iter().any(|name| in_crate(metadata.target(), name))
}

/// Whether `target` (a module path, by default) is crate `name` or one of its modules.
fn in_crate(target: &str, name: &str) -> bool {
    target.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        admitted(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !admitted(record.metadata()) {
            return;
        }
        match logline::format() {
            LogFormat::Text => self.0.log(record),
            LogFormat::Json if self.0.matches(record) => {
                write_stderr(&logline::json_record(record, logline::now_millis()))
            }
            LogFormat::Json => {}
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_tunables_are_added_once_and_an_operators_own_are_kept() {
        let ours = "glibc.malloc.mmap_threshold=131072:glibc.malloc.tcache_max=256";
        assert_eq!(with_malloc_tunables("").as_deref(), Some(ours));
        assert_eq!(
            with_malloc_tunables("glibc.pthread.rseq=0").as_deref(),
            Some(&*format!("glibc.pthread.rseq=0:{ours}"))
        );
        assert_eq!(
            with_malloc_tunables("glibc.malloc.tcache_max=512").as_deref(),
            Some("glibc.malloc.tcache_max=512:glibc.malloc.mmap_threshold=131072")
        );
        // What the second start sees: nothing to add, so no third.
        assert_eq!(with_malloc_tunables(ours), None);
    }

    #[test]
    fn only_our_crates_debug_and_trace_records_pass() {
        let cases = [
            (Level::Trace, "ureq_proto::util", false),
            (Level::Debug, "ureq::run", false),
            (Level::Trace, "ureq", false),
            (Level::Debug, "rustls::client::hs", false),
            (Level::Debug, "ollama_gateway_evil", false),
            (Level::Info, "ureq::run", true),
            (Level::Warn, "rustls::common_state", true),
            (Level::Trace, "ollama_gateway", true),
            (Level::Debug, "ollama_gateway::live", true),
            (Level::Debug, "tiny_http", true),
        ];
        for (level, target, want) in cases {
            let metadata = Metadata::builder().level(level).target(target).build();
            assert_eq!(admitted(&metadata), want, "{level} {target}");
        }
    }
}
