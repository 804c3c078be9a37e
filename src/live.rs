//! The running gateway over time: reloads, the state file, signals, background checks.
//!
//! [`Live`] holds the current [`Gateway`] generation; every request takes an `Arc` of it,
//! so a reload swaps in a new one without touching requests (and streams) in flight. The
//! housekeeper thread reloads on SIGHUP or when `config.toml` or `keys.txt` changes (a
//! broken edit is logged and the old config keeps serving), saves key states every few
//! seconds and at SIGTERM/SIGINT, picks up states that `ollama-gateway check` wrote, and
//! runs the periodic health checks of `[health] interval_secs`.
//!
//! A reload reads both files, reads them again half a second later, and applies them only
//! when both reads are the same. An editor that writes a file in place writes it in several
//! steps; a single read between two of them would load half a keys.txt (a cut-off key that
//! the upstream refuses, the keys after it missing) or a config.toml cut off before some
//! tokens, which may still parse. The first load at start-up reads once: nothing serves yet.

use crate::config::{Config, ConfigError, Files};
use crate::gateway::Gateway;
use crate::health::{self, ProbeResult};
use crate::keys::KeyEntry;
use crate::keystate::KeyStore;
use crate::keystate::{key_id, Health};
use crate::limits::Limits;
use crate::slots::Slots;
use crate::statefile::{self, Loaded};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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

/// How long a stop waits for requests (streams) in flight before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The current gateway generation and what outlives it.
pub struct Live {
    current: RwLock<Arc<Gateway>>,
    store: Arc<KeyStore>,
    slots: Arc<Slots>,
    limits: Arc<Limits>,
    config_path: PathBuf,
    started: Instant,
    /// Requests taken by the server and not finished.
    pub in_flight: AtomicUsize,
    /// Set on SIGTERM/SIGINT: new requests are refused while those in flight finish.
    pub draining: AtomicBool,
}

impl Live {
    /// Starts from a loaded config; key states come from its state file when it has one.
    pub fn new(config_path: &Path, config: Config) -> Arc<Live> {
        let states = match statefile::load(&config.state_file) {
            Loaded::Fresh => Default::default(),
            Loaded::Read(states) => states,
            Loaded::Corrupt(why) => {
                log::warn!("{}: {why}; starting with fresh key states", config.state_file.display());
                Default::default()
            }
        };
        let store = Arc::new(KeyStore::new(states));
        let started = Instant::now();
        let slots = Arc::new(Slots::default());
        let limits = Arc::new(Limits::default());
        let gateway = Gateway::new(config, Arc::clone(&store), Arc::clone(&slots), started)
            .with_limits(Arc::clone(&limits));
        forget_removed_keys(&gateway);
        Arc::new(Live {
            current: RwLock::new(Arc::new(gateway)),
            store,
            slots,
            limits,
            config_path: config_path.to_path_buf(),
            started,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        })
    }

    /// The gateway generation to serve a request with.
    pub fn current(&self) -> Arc<Gateway> {
        Arc::clone(&self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Serves new requests with the config in `files`, when it is good.
    pub fn apply(&self, files: &Files) -> Result<(), ConfigError> {
        let config = Config::from_files(files)?;
        let gateway = Gateway::new(config, Arc::clone(&self.store), Arc::clone(&self.slots), self.started)
            .with_limits(Arc::clone(&self.limits));
        forget_removed_keys(&gateway);
        crate::logline::set_format(gateway.config.raw.log_format);
        log::info!(
            "reloaded {}: {} upstreams in {} pools, {} tokens",
            self.config_path.display(),
            gateway.config.keys.len(),
            gateway.pools.len(),
            gateway.config.tokens.len()
        );
        let gateway = Arc::new(gateway);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&gateway);
        // A reload is a chance for a key set aside as invalid to prove it works again (the
        // operator may have fixed the account): probe those, off the housekeeper's thread.
        thread::Builder::new()
            .name("recheck".into())
            .spawn(move || recheck_invalid(&gateway))
            .map_err(|err| log::warn!("cannot recheck invalid keys after the reload: {err}"))
            .ok();
        Ok(())
    }

    /// Writes the key states to the state file.
    pub fn save_states(&self) {
        let path = self.current().config.state_file.clone();
        if let Err(err) = statefile::save(&path, &self.store.snapshot()) {
            log::warn!("{}: cannot save key states: {err}", path.display());
        }
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
    loop {
        thread::sleep(TICK);
        if signals.stop.load(Ordering::Acquire) {
            stop(live, &mut seen);
        }
        let hup = signals.reload.swap(false, Ordering::AcqRel);
        if hup || last_files_check.elapsed() >= FILE_CHECK_EVERY {
            last_files_check = Instant::now();
            let current = Seen::now(&live.current());
            if hup || current.config != seen.config || current.keys != seen.keys {
                seen.config = current.config;
                seen.keys = current.keys;
                reload.start(live);
            }
            merge_state_file(live, &mut seen);
            if live.store.take_dirty() {
                live.save_states();
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
}

impl Settling {
    /// Starts a reload (again, when one is waiting) with a first read of the files.
    fn start(&mut self, live: &Live) {
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
    if let Loaded::Read(states) = statefile::load(&path) {
        live.store.merge_newer(states, &known_ids(&live.current()));
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
    let model = gateway.config.raw.health.model.clone();
    let results = health::probe_keys(&gateway.agent, &gateway.config, entries, now, &policy);
    for (entry, result) in entries.iter().zip(&results) {
        let id = key_id(&entry.base_url, entry.key.as_ref());
        gateway.store.update(&id, |state| health::apply(state, result, Some(&model), now, &policy));
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
