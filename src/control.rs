//! What the admin API may ask of the running process beyond one generation: a reload now,
//! the request counters, and the one health check allowed to run at a time.
//!
//! `live` owns the process and implements [`Runtime`]; handlers reach it through the
//! [`Control`] every generation carries, so they never import `live`, which sits above
//! them. A gateway built without a process around it (the router's unit tests) has no
//! runtime, and the admin API says so instead of reloading anything.

use crate::config::ConfigError;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The process's side of the admin API.
pub trait Runtime: Send + Sync {
    /// Reads config.toml and keys.txt now and serves them when they are good, as SIGHUP
    /// does; the new generation's number, or why the files were not taken (the previous
    /// config keeps serving).
    fn reload(&self) -> Result<u64, ConfigError>;
    /// Requests taken by the server and not finished (those waiting for a worker included).
    fn in_flight(&self) -> usize;
    /// Requests waiting for a worker.
    fn queued(&self) -> usize;
}

/// Shared by every generation of one process.
#[derive(Default)]
pub struct Control {
    runtime: OnceLock<Weak<dyn Runtime>>,
    /// When the running admin check started, if one runs.
    checking: Mutex<Option<Instant>>,
}

impl Control {
    /// Connects the process; a second call is ignored (there is one process).
    pub fn attach(&self, runtime: Weak<dyn Runtime>) {
        let _ = self.runtime.set(runtime);
    }

    /// The process, when there is one.
    pub fn runtime(&self) -> Option<Arc<dyn Runtime>> {
        self.runtime.get().and_then(Weak::upgrade)
    }

    /// Starts a health check, or says how long the one already running has run: probing
    /// every key twice at once would only double the upstream calls.
    pub fn start_check(&self) -> Result<Checking<'_>, Duration> {
        let mut running = self.lock();
        if let Some(since) = *running {
            return Err(since.elapsed());
        }
        *running = Some(Instant::now());
        Ok(Checking(self))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.checking.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running admin check; the next may start once it is dropped.
pub struct Checking<'a>(&'a Control);

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Runtime for Fixed {
        fn reload(&self) -> Result<u64, ConfigError> {
            Ok(7)
        }
        fn in_flight(&self) -> usize {
            3
        }
        fn queued(&self) -> usize {
            1
        }
    }

    #[test]
    fn one_check_at_a_time() {
        let control = Control::default();
        let first = control.start_check().expect("none runs yet");
        assert!(control.start_check().is_err(), "a second waits for the first");
        drop(first);
        assert!(control.start_check().is_ok(), "free again once the first ended");
    }

    #[test]
    fn the_runtime_is_reached_while_the_process_lives() {
        let control = Control::default();
        assert!(control.runtime().is_none());
        let process: Arc<dyn Runtime> = Arc::new(Fixed);
        control.attach(Arc::downgrade(&process));
        assert_eq!(control.runtime().map(|r| (r.in_flight(), r.queued())), Some((3, 1)));
        drop(process);
        assert!(control.runtime().is_none(), "a weak link: no cycle through the generations");
    }
}
