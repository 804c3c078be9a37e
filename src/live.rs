//! The running gateway over time: reloads, the state file, signals, background checks.
//!
//! [`Live`] holds the current [`Gateway`] generation; every request takes an `Arc` of it,
//! so a reload swaps in a new one without touching requests (and streams) in flight. The
//! housekeeper thread reloads on SIGHUP or when `config.toml` or `keys.txt` changes (a
//! broken edit is logged and the old config keeps serving), saves key states and usage
//! every few seconds and at SIGTERM/SIGINT, picks up states that `ollama-gateway check`
//! wrote, and runs the periodic health checks of `[health] interval_secs`. The admin API
//! reaches the same reload, and the request counters, through [`Runtime`].
//!
//! A reload reads both files, reads them again half a second later, and applies them only
//! when both reads are the same. An editor that writes a file in place writes it in several
//! steps; a single read between two of them would load half a keys.txt (a cut-off key that
//! the upstream refuses, the keys after it missing) or a config.toml cut off before some
//! tokens, which may still parse. The first load at start-up reads once: nothing serves yet.

use crate::config::{Config, ConfigError, Files};
use crate::control::Runtime;
use crate::gateway::{Gateway, Lasting};
use crate::health::{self, ProbeResult};
use crate::keys::KeyEntry;
use crate::keystate::KeyStore;
use crate::keystate::{key_id, Health};
use crate::statefile::{self, Loaded, Saved};
use crate::usage::Usage;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// How often the housekeeper looks at signals and files.
const TICK: Duration = Duration::from_millis(250);
/// How often config files are checked for changes, and key states saved when changed.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long config.toml and keys.txt must stay the same before a reload applies them.
const SETTLE: Duration = Duration::from_millis(500);
/// Reads in a row a reload makes of files that keep changing before it gives up (about
/// 10 s); the next change it notices, or SIGHUP, starts it again.
const SETTLE_TRIES: u32 = 20;

/// A state file is written at most once in this many times the time its last write took.
const SAVE_SHARE: u32 = 20;

/// How long a stop waits for requests (streams) in flight before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The current gateway generation and what outlives it.
pub struct Live {
    current: RwLock<Arc<Gateway>>,
    /// What outlives a generation.
    lasting: Lasting,
    config_path: PathBuf,
    /// The current generation's number.
    generation: AtomicU64,
    /// Held while a reload applies its files, so two (the housekeeper's and the admin
    /// API's) never number the same generation.
    reloading: Mutex<()>,
    /// The files the last reload applied (none before the first reload).
    applied: Mutex<Option<Files>>,
    /// The modification times of config.toml and keys.txt when a reload last started.
    files_seen: Mutex<Stamps>,
    /// Requests taken by the server and not finished.
    pub in_flight: AtomicUsize,
    /// Requests waiting for a worker (the server counts them).
    pub queued: AtomicUsize,
    /// Set on SIGTERM/SIGINT: new requests are refused while those in flight finish.
    pub draining: AtomicBool,
}

/// Modification times of config.toml and keys.txt.
type Stamps = (Option<SystemTime>, Option<SystemTime>);

impl Live {
    /// Starts from a loaded config; key states and usage come from its state file when it
    /// has one.
    pub fn new(config_path: &Path, config: Config) -> Arc<Live> {
        let saved = match statefile::load(&config.state_file) {
            Loaded::Fresh => Saved::default(),
            Loaded::Read(saved) => saved,
            Loaded::Corrupt(why) => {
                log::warn!("{}: {why}; starting with fresh key states", config.state_file.display());
                Saved::default()
            }
        };
        let stamps = (modified(&config.path), modified(&config.keys_file));
        let lasting = Lasting::new(KeyStore::new(saved.keys), Usage::new(saved.usage));
        let gateway = Gateway::new(config, &lasting, 1);
        forget_removed_keys(&gateway);
        let live = Arc::new(Live {
            current: RwLock::new(Arc::new(gateway)),
            lasting,
            config_path: config_path.to_path_buf(),
            generation: AtomicU64::new(1),
            reloading: Mutex::new(()),
            applied: Mutex::new(None),
            files_seen: Mutex::new(stamps),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        });
        let runtime: Weak<dyn Runtime> = Arc::downgrade(&live) as Weak<Live>;
        live.lasting.control.attach(runtime);
        live
    }

    /// The gateway generation to serve a request with.
    pub fn current(&self) -> Arc<Gateway> {
        Arc::clone(&self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Serves new requests with the config in `files`, when it is good; the number of the
    /// generation that serves them.
    pub fn apply(&self, files: &Files) -> Result<u64, ConfigError> {
        let _one = self.reloading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let config = Config::from_files(files)?;
        let number = self.generation.load(Ordering::Acquire) + 1;
        let gateway = Gateway::new(config, &self.lasting, number);
        forget_removed_keys(&gateway);
        crate::logline::set_format(gateway.config.raw.log_format);
        log::info!(
            "reloaded {} (generation {number}): {} upstreams in {} pools, {} tokens",
            self.config_path.display(),
            gateway.config.keys.len(),
            gateway.pools.len(),
            gateway.config.tokens.len()
        );
        let gateway = Arc::new(gateway);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&gateway);
        self.generation.store(number, Ordering::Release);
        *self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(files.clone());
        // A reload is a chance for a key set aside as invalid to prove it works again (the
        // operator may have fixed the account): probe those, off the housekeeper's thread.
        thread::Builder::new()
            .name("recheck".into())
            .spawn(move || recheck_invalid(&gateway))
            .map_err(|err| log::warn!("cannot recheck invalid keys after the reload: {err}"))
            .ok();
        Ok(number)
    }

    /// Reloads at once, as SIGHUP does: reads the files until two reads [`SETTLE`] apart
    /// agree (at most [`SETTLE_TRIES`] times), then applies them.
    fn reload_now(&self) -> Result<u64, ConfigError> {
        // Counts as the housekeeper noticing the change, so it does not load it again.
        self.files_changed(&Seen::now(&self.current()));
        let mut before = read_files(self);
        for _ in 0..SETTLE_TRIES {
            thread::sleep(SETTLE);
            let now = read_files(self);
            if now == before {
                return self.apply(&now);
            }
            before = now;
        }
        Err(ConfigError {
            file: self.config_path.clone(),
            line: None,
            key: None,
            message: format!(
                "the file or its keys file kept changing for {} s; to change either, write a new file and \
                 rename it over the old one, then reload again",
                (SETTLE * SETTLE_TRIES).as_secs()
            ),
        })
    }

    /// Whether config.toml or keys.txt changed since a reload last started (and notes
    /// their times now).
    fn files_changed(&self, now: &Seen) -> bool {
        let mut seen = self.files_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = *seen != (now.config, now.keys);
        *seen = (now.config, now.keys);
        changed
    }

    /// Writes the key states and usage to the state file.
    pub fn save_states(&self) {
        let path = self.current().config.state_file.clone();
        if let Err(err) =
            statefile::save(&path, &self.lasting.store.snapshot(), &self.lasting.usage.all_rows())
        {
            log::warn!("{}: cannot save key states: {err}", path.display());
        }
    }
}

impl Runtime for Live {
    fn reload(&self) -> Result<u64, ConfigError> {
        self.reload_now()
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// The ids of the keys in keys.txt now.
fn known_ids(gateway: &Gateway) -> BTreeSet<String> {
    gateway.pools.values().flat_map(|pool| pool.ids.iter().cloned()).collect()
}

/// Drops states of keys no longer in keys.txt.
fn forget_removed_keys(gateway: &Gateway) {
    gateway.store.retain(&known_ids(gateway));
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Signal flags the housekeeper watches.
#[derive(Default)]
pub struct Signals {
    /// SIGHUP: reload.
    pub reload: Arc<AtomicBool>,
    /// SIGTERM or SIGINT: save and exit.
    pub stop: Arc<AtomicBool>,
}

impl Signals {
    /// Registers the handlers.
    pub fn register() -> std::io::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals = Signals::default();
        signal_hook::flag::register(SIGHUP, Arc::clone(&signals.reload))?;
        signal_hook::flag::register(SIGTERM, Arc::clone(&signals.stop))?;
        signal_hook::flag::register(SIGINT, Arc::clone(&signals.stop))?;
        Ok(signals)
    }
}

/// Starts the housekeeper thread (and the health checker, when configured).
pub fn spawn_housekeeper(live: Arc<Live>, signals: Signals) {
    let checker = Arc::clone(&live);
    thread::Builder::new()
        .name("health".into())
        .spawn(move || health_loop(&checker))
        .map_err(|err| log::error!("cannot start the health checker: {err}"))
        .ok();
    thread::Builder::new()
        .name("housekeeper".into())
        .spawn(move || housekeeper(&live, &signals))
        .map_err(|err| log::error!("cannot start the housekeeper: {err}"))
        .ok();
}

/// The modification times that say a reload or a state merge is due.
struct Seen {
    config: Option<SystemTime>,
    keys: Option<SystemTime>,
    state: Option<SystemTime>,
}

impl Seen {
    fn now(gateway: &Gateway) -> Seen {
        Seen {
            config: modified(&gateway.config.path),
            keys: modified(&gateway.config.keys_file),
            state: modified(&gateway.config.state_file),
        }
    }
}

fn housekeeper(live: &Live, signals: &Signals) {
    let mut seen = Seen::now(&live.current());
    let mut last_files_check = Instant::now();
    let mut reload = Settling::default();
    // When the state file was last written, and how long that took.
    let mut last_save = (Instant::now(), Duration::ZERO);
    loop {
        thread::sleep(TICK);
        if signals.stop.load(Ordering::Acquire) {
            stop(live, &mut seen);
        }
        let hup = signals.reload.swap(false, Ordering::AcqRel);
        if hup || last_files_check.elapsed() >= FILE_CHECK_EVERY {
            last_files_check = Instant::now();
            // `|`, not `||`: the times are noted even on SIGHUP.
            if live.files_changed(&Seen::now(&live.current())) | hup {
                reload.start(live);
            }
            merge_state_file(live, &mut seen);
            // A big state file (90 days of usage) is written no more than a twentieth of
            // the time, so saving it never takes the machine.
            let due = last_save.0.elapsed() >= last_save.1 * SAVE_SHARE;
            if due && (live.lasting.store.take_dirty() | live.lasting.usage.take_dirty()) {
                let started = Instant::now();
                live.save_states();
                last_save = (Instant::now(), started.elapsed());
                seen.state = modified(&live.current().config.state_file);
            }
        }
        reload.tick(live);
    }
}

/// A reload waiting for config.toml and keys.txt to stay the same for [`SETTLE`].
#[derive(Default)]
struct Settling {
    /// The latest read and when it was made; `None` when no reload is due.
    read: Option<(Files, Instant)>,
    /// Reads in a row that found the files changed since the read before.
    changes: u32,
    /// The generation serving when it started.
    generation: u64,
}

impl Settling {
    /// Starts a reload (again, when one is waiting) with a first read of the files.
    fn start(&mut self, live: &Live) {
        self.generation = live.generation.load(Ordering::Acquire);
        self.read = Some((read_files(live), Instant::now()));
        self.changes = 0;
    }

    /// Once the latest read is [`SETTLE`] old, reads again: applies the files when nothing
    /// changed, else waits for the new read to settle in turn.
    fn tick(&mut self, live: &Live) {
        let Some((before, at)) = &self.read else { return };
        if at.elapsed() < SETTLE {
            return;
        }
        let generation = live.generation.load(Ordering::Acquire);
        if generation != self.generation {
            // Another reload (the admin API's) applied meanwhile. When it applied what this
            // one read, that is served already; else this one goes on, over it.
            let applied = live.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if applied.as_ref() == Some(before) {
                log::debug!("reload: the files were reloaded meanwhile; nothing more to do");
                self.read = None;
                return;
            }
            drop(applied);
            self.generation = generation;
        }
        let now = read_files(live);
        if now == *before {
            self.read = None;
            if let Err(err) = live.apply(&now) {
                log::error!("reload failed, still serving the previous config: {err}");
            }
            return;
        }
        self.changes += 1;
        if self.changes >= SETTLE_TRIES {
            log::warn!(
                "reload: {} or its keys file kept changing for {} s; still serving the previous config \
                 (to change either file, write a new file and rename it over the old one)",
                live.config_path.display(),
                (SETTLE * SETTLE_TRIES).as_secs()
            );
            self.read = None;
            return;
        }
        log::debug!("reload: the files changed while being read; waiting for them to settle");
        self.read = Some((now, Instant::now()));
    }
}

/// Reads config.toml and keys.txt for a reload.
fn read_files(live: &Live) -> Files {
    let files = Files::read(&live.config_path);
    let size = |read: &Result<Vec<u8>, String>| match read {
        Ok(bytes) => format!("{} bytes", bytes.len()),
        Err(_) => "unreadable".to_string(),
    };
    let keys = match &files.keys {
        Some((path, read)) => format!("{} ({})", path.display(), size(read)),
        None => "no keys file".to_string(),
    };
    log::debug!(
        "reload: read {} ({}) and {keys}; applying them if they are the same in {} ms",
        files.path.display(),
        size(&files.config),
        SETTLE.as_millis()
    );
    files
}

/// Stops gracefully: refuse new requests, let those in flight finish (streams included, up
/// to [`SHUTDOWN_GRACE`]), save the key states, exit.
fn stop(live: &Live, seen: &mut Seen) -> ! {
    live.draining.store(true, Ordering::Release);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let busy = live.in_flight.load(Ordering::Acquire);
    if busy > 0 {
        log::info!("stopping: waiting up to {} s for {busy} requests in flight", SHUTDOWN_GRACE.as_secs());
    }
    while live.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    merge_state_file(live, seen);
    live.save_states();
    log::info!("stopping: key states saved");
    std::process::exit(0);
}

/// Takes in what another process (`ollama-gateway check`) wrote to the state file.
fn merge_state_file(live: &Live, seen: &mut Seen) {
    let path = live.current().config.state_file.clone();
    let stamp = modified(&path);
    if stamp == seen.state {
        return;
    }
    seen.state = stamp;
    if let Loaded::Read(saved) = statefile::load(&path) {
        live.lasting.store.merge_newer(saved.keys, &known_ids(&live.current()));
        // The other process wrote the usage it read, which may be seconds older than
        // this one's: write this one's again.
        live.lasting.usage.mark_dirty();
    }
}

/// Probes the keys marked invalid, and brings back those found good.
fn recheck_invalid(gateway: &Gateway) {
    let now = crate::keystate::now();
    let entries: Vec<_> = gateway
        .config
        .keys
        .iter()
        .filter(|entry| {
            let id = key_id(&entry.base_url, entry.key.as_ref());
            gateway.store.get(&id).state == Health::Invalid
        })
        .cloned()
        .collect();
    if entries.is_empty() {
        return;
    }
    for (entry, result) in record_probes(gateway, &entries, now) {
        log::info!("reload: rechecked invalid key {}: {}", entry.label(), result.note);
    }
}

/// Whether a probe of this process has logged that it could not read usage fractions.
static USAGE_WARNED: AtomicBool = AtomicBool::new(false);

/// Probes `entries` and records the results in the key store (usage fractions included,
/// as `check` does). The first usage warning of the process is logged; the same warning
/// would come again on every probe of every key.
fn record_probes<'e>(
    gateway: &Gateway,
    entries: &'e [KeyEntry],
    now: u64,
) -> Vec<(&'e KeyEntry, ProbeResult)> {
    let policy = gateway.policy();
    let results = health::probe_into(&gateway.store, &gateway.agent, &gateway.config, entries, now, &policy);
    for (entry, result) in entries.iter().zip(&results) {
        if let Some(warning) = &result.warning {
            if !USAGE_WARNED.swap(true, Ordering::Relaxed) {
                log::warn!("health check: {}: {warning} (said once per run)", entry.label());
            }
        }
    }
    entries.iter().zip(results).collect()
}

fn health_loop(live: &Live) {
    loop {
        let interval = live.current().config.raw.health.interval_secs;
        if interval == 0 {
            thread::sleep(Duration::from_secs(5));
            continue;
        }
        thread::sleep(Duration::from_secs(interval));
        let gateway = live.current();
        let probed = record_probes(&gateway, &gateway.config.keys, crate::keystate::now());
        log::info!("health check: {} keys probed", probed.len());
    }
}
