//! An epoll set plus a timerfd, for the bench's one-thread event loops (the fake Ollama
//! and the load generator, `make bench`).
//!
//! Why the timerfd: rustix's `epoll::wait` passes its timeout to the kernel in whole
//! milliseconds (rounded up) unless rustix is built with `linux_5_11`, and dev-dependency
//! features unify into the gateway binary `cargo bench` builds, which should not change
//! for the bench's sake. A streamed line due at start + 10 ms would then go out up to 1 ms
//! late, on the direct and the gateway path alike, which is noise of the size of the
//! per-event goals. The timerfd is armed to the nanosecond instead.

use rustix::event::epoll::{self, Event, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::fd::{AsFd, OwnedFd};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};
use std::io;
use std::time::{Duration, Instant};

/// The token the timer's readiness comes with; never handed to the caller.
const TIMER: u64 = u64::MAX;

/// Events taken from the kernel per wait; more stay queued for the next one.
const BATCH: usize = 1024;

/// What one descriptor is ready for.
#[derive(Clone, Copy)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// An error or a hang-up: reading tells which (0 bytes or an error).
    pub broken: bool,
}

/// Level-triggered readiness for sockets registered under caller-chosen tokens, and one
/// wake-up time.
pub struct Poller {
    epoll: OwnedFd,
    timer: OwnedFd,
    /// When the timer is set to fire, if it is.
    armed: Option<Instant>,
    events: Vec<Event>,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timer =
            timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        epoll::add(&epoll, &timer, EventData::new_u64(TIMER), EventFlags::IN)?;
        Ok(Poller { epoll, timer, armed: None, events: Vec::with_capacity(BATCH) })
    }

    /// Watches `fd` for reading, and for writing too when `writable` (a pending output).
    pub fn add(&self, fd: impl AsFd, token: u64, writable: bool) -> io::Result<()> {
        Ok(epoll::add(&self.epoll, fd, EventData::new_u64(token), interest(writable))?)
    }

    /// Changes whether `fd` is watched for writing.
    pub fn modify(&self, fd: impl AsFd, token: u64, writable: bool) -> io::Result<()> {
        Ok(epoll::modify(&self.epoll, fd, EventData::new_u64(token), interest(writable))?)
    }

    /// Waits until a descriptor is ready, `wake_at` has passed, or `limit` has elapsed
    /// (a coarse bound, so the caller looks at its own deadlines), and puts what is ready
    /// into `ready` (emptied first; empty when one of the times came).
    pub fn wait(
        &mut self,
        wake_at: Option<Instant>,
        limit: Duration,
        ready: &mut Vec<Ready>,
    ) -> io::Result<()> {
        if wake_at != self.armed {
            self.arm(wake_at)?;
        }
        self.events.clear();
        let limit = timespec(limit);
        ready.clear();
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut self.events), Some(&limit)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        for event in &self.events {
            let token = event.data.u64();
            if token == TIMER {
                // Fired: drain its count, or it stays readable. Its time is past.
                let _ = rustix::io::read(&self.timer, &mut [0; 8]);
                self.armed = None;
                continue;
            }
            let flags = event.flags;
            ready.push(Ready {
                token,
                readable: flags.contains(EventFlags::IN),
                writable: flags.contains(EventFlags::OUT),
                broken: flags.intersects(EventFlags::ERR | EventFlags::HUP),
            });
        }
        Ok(())
    }

    /// Sets the timer to fire at `at` (at once when past), or disarms it.
    fn arm(&mut self, at: Option<Instant>) -> io::Result<()> {
        // An all-zero value disarms, so a time already past is 1 ns from now.
        let after = at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1))
        });
        let value = Itimerspec { it_interval: timespec(Duration::ZERO), it_value: timespec(after) };
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &value)?;
        self.armed = at;
        Ok(())
    }
}

/// `duration` for the kernel; the bench's times are far below where this would saturate.
fn timespec(duration: Duration) -> Timespec {
    Timespec::try_from(duration).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
}

fn interest(writable: bool) -> EventFlags {
    match writable {
        true => EventFlags::IN | EventFlags::OUT,
        false => EventFlags::IN,
    }
}
