//! The gateway child process: its temp folder and files, start-up until `/health` answers,
//! /proc samples, SIGTERM and the check that it exits 0 having saved its state.

use crate::*;

/// The gateway binary running on a temp config; killed on drop, its folder removed unless
/// the soak failed.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
    upstream: SocketAddr,
    pub keep_dir: bool,
}

impl Gateway {
    /// Writes the config and keys, starts the binary with `RUST_LOG=info`, waits for
    /// `GET /health`.
    pub fn start(upstream: SocketAddr) -> Result<Gateway, String> {
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

    pub fn files(&self) -> Files {
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

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// VmRSS, VmHWM and Threads from /proc/PID/status, and the entries of /proc/PID/fd.
    pub fn sample(&self) -> Option<Sample> {
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
    pub fn terminate(&mut self) -> Result<String, String> {
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
