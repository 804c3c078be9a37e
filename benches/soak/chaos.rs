//! The chaos thread: atomic rewrites of config.toml and keys.txt followed by SIGHUP, some
//! of them broken on purpose, and bursts of connections past `max_connections`.

use crate::*;

/// The files the chaos thread rewrites, and what goes in them.
pub struct Files {
    pub dir: PathBuf,
    pub port: u16,
    pub upstream: SocketAddr,
}

/// What config.toml holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ConfigText {
    Base,
    /// Other settings and a second token.
    Changed,
    /// A syntax error: the gateway must log it and keep the previous config.
    Broken,
}

/// What keys.txt holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeysText {
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
    pub fn config(&self, text: ConfigText) -> String {
        let digest = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
        let mut config = format!(
            "listen = \"127.0.0.1:{port}\"\nworkers = {WORKERS}\nmax_connections = {MAX_CONNECTIONS}\n\
             client_timeout_secs = {CLIENT_TIMEOUT}\nheader_timeout_secs = {HEADER_TIMEOUT}\n\
             max_body_bytes = {MAX_BODY}\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
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

    pub fn keys(&self, text: KeysText) -> String {
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
    pub fn write(&self, name: &str, text: &str) -> Result<(), String> {
        let temp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&temp, text).map_err(|err| format!("write {}: {err}", temp.display()))?;
        std::fs::rename(&temp, self.dir.join(name)).map_err(|err| format!("rename to {name}: {err}"))
    }
}

/// What the chaos thread did, for the report.
#[derive(Default)]
pub struct Reloads {
    pub sent: u64,
    pub broken: u64,
    pub errors: Vec<String>,
}

pub fn chaos_loop(shared: &Shared, pid: u32, files: &Files) -> Reloads {
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
pub fn burst(shared: &Shared) {
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
