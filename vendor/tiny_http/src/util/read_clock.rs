//! ollama-gateway: how long a connection's reads may block, shared by the connection's
//! reader and its owner.
//!
//! tiny_http 0.12.0 had no timeouts of its own; the gateway set `SO_RCVTIMEO` on the
//! listening socket, which bounds each read but not a whole request head, so a head
//! trickled one byte a second never timed out. A `ReadClock` gives every read on the
//! connection a timeout from the phase it is in:
//! - waiting for the first byte of a request: the keep-alive idle timeout (for the first
//!   request of a connection, the head timeout: a client that connects and says nothing is
//!   not idle, it is slow);
//! - inside a request head: what is left of the head timeout, counted from its first byte;
//! - reading a body: the deadline the owner sets (from a minimum rate), or the idle timeout.
//!
//! A read past its deadline fails with `TimedOut`, which closes the connection.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The read timeouts of one connection.
#[derive(Debug)]
pub struct ReadClock {
    idle: Duration,
    head: Duration,
    phase: Mutex<Phase>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's first byte until `by`; then the head has `head` to arrive.
    AwaitingHead { by: Instant },
    /// Reading a head or a body until `by`.
    Until { by: Instant },
    /// Any other read: the idle timeout each.
    Idle,
}

impl ReadClock {
    /// A clock for a connection accepted now: `idle` bounds each read between requests,
    /// `head` a whole request head.
    pub fn new(idle: Duration, head: Duration) -> ReadClock {
        let by = Instant::now() + head;
        ReadClock { idle, head, phase: Mutex::new(Phase::AwaitingHead { by }) }
    }

    /// The keep-alive idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Starts waiting for the next request on a kept-alive connection.
    pub(crate) fn await_next_request(&self) {
        self.set(Phase::AwaitingHead { by: Instant::now() + self.idle });
    }

    /// Bounds a lingering close (reading what a client still sends after an answer that
    /// did not read its body) by the head timeout.
    pub(crate) fn linger(&self) {
        self.set(Phase::Until { by: Instant::now() + self.head });
    }

    /// Bounds the reads of the current phase (a body, a lingering close) by `deadline`;
    /// `None` leaves each read the idle timeout.
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        self.set(match deadline {
            Some(by) => Phase::Until { by },
            None => Phase::Idle,
        });
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = phase;
    }

    /// The timeout for the next read, or `TimedOut` when the deadline has passed.
    pub(crate) fn next_timeout(&self) -> io::Result<Duration> {
        let phase = *self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let by = match phase {
            Phase::Idle => return Ok(self.idle),
            Phase::AwaitingHead { by } | Phase::Until { by } => by,
        };
        let left = by.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the client was too slow"));
        }
        Ok(left.min(self.idle))
    }

    /// Whether a read that timed out has run out of time for good: always in the idle
    /// phase (the idle timeout is per read), else once the phase's deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        match *self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            Phase::Idle => true,
            Phase::AwaitingHead { by } | Phase::Until { by } => Instant::now() >= by,
        }
    }

    /// Notes that a read returned data: the first byte of a head starts its timeout.
    pub(crate) fn got_bytes(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Phase::AwaitingHead { .. } = *phase {
            *phase = Phase::Until { by: Instant::now() + self.head };
        }
    }

    /// Says the head has been read: later reads (the body) get the idle timeout until the
    /// owner sets a deadline.
    pub(crate) fn head_done(&self) {
        self.set(Phase::Idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_must_arrive_within_its_timeout_from_the_first_byte() {
        let clock = ReadClock::new(Duration::from_secs(60), Duration::from_millis(30));
        assert!(clock.next_timeout().unwrap() <= Duration::from_millis(30));
        clock.await_next_request();
        // Between requests the idle timeout applies…
        assert!(clock.next_timeout().unwrap() > Duration::from_secs(59));
        // …until the first byte, after which the head has 30 ms in all.
        clock.got_bytes();
        assert!(clock.next_timeout().unwrap() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(clock.next_timeout().unwrap_err().kind(), io::ErrorKind::TimedOut);
        clock.head_done();
        assert_eq!(clock.next_timeout().unwrap(), Duration::from_secs(60));
    }

    #[test]
    fn a_deadline_bounds_body_reads() {
        let clock = ReadClock::new(Duration::from_secs(60), Duration::from_secs(10));
        clock.set_deadline(Some(Instant::now() + Duration::from_secs(2)));
        let timeout = clock.next_timeout().unwrap();
        assert!(timeout <= Duration::from_secs(2) && timeout > Duration::from_secs(1));
        clock.set_deadline(Some(Instant::now()));
        assert!(clock.next_timeout().is_err());
        clock.set_deadline(None);
        assert_eq!(clock.next_timeout().unwrap(), Duration::from_secs(60));
    }
}
