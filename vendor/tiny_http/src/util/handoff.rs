//! ollama-gateway: a one-value handoff, in place of `std::sync::mpsc::channel` where
//! `sequential.rs` passes a connection's reader (or its turn to write) from one request to
//! the next.
//!
//! std's channel allocates and zeroes a block of 31 slots on its first send, and each of
//! those handoffs makes one per request: about a twentieth of the gateway's instructions on
//! a small request. Here a send is a lock, a store, and a wake-up only when the receiver
//! is already waiting. Same contract as the channel's, for one value: `recv` blocks until
//! the value is sent, and fails if the sender is dropped without sending.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The sending half: sends at most one value.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// The sender was dropped without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvError;

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

enum State<T> {
    /// Nothing sent, nobody waiting.
    Empty,
    /// Nothing sent, and the receiver is blocked until something is.
    Waiting,
    Full(T),
    /// Taken, or the sender is gone without sending.
    Closed,
}

/// A connected pair.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared { state: Mutex::new(State::Empty), ready: Condvar::new() });
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared })
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T> Sender<T> {
    /// Hands `value` over; gives it back if one was sent already or the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut state = self.shared.lock();
        match *state {
            State::Empty => *state = State::Full(value),
            State::Waiting => {
                *state = State::Full(value);
                self.shared.ready.notify_one();
            }
            State::Full(_) | State::Closed => return Err(value),
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        match *state {
            State::Empty => *state = State::Closed,
            State::Waiting => {
                *state = State::Closed;
                self.shared.ready.notify_one();
            }
            State::Full(_) | State::Closed => {}
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the value.
    pub fn recv(&self) -> Result<T, RecvError> {
        let mut state = self.shared.lock();
        loop {
            match std::mem::replace(&mut *state, State::Closed) {
                State::Full(value) => return Ok(value),
                State::Closed => return Err(RecvError),
                State::Empty | State::Waiting => {
                    *state = State::Waiting;
                    state = self.shared.ready.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::channel;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn a_value_sent_before_recv_is_received_at_once() {
        let (sender, receiver) = channel();
        assert_eq!(sender.send(7), Ok(()));
        assert_eq!(sender.send(8), Err(8), "one value only");
        assert_eq!(receiver.recv(), Ok(7));
        assert!(receiver.recv().is_err(), "taken");
    }

    #[test]
    fn recv_waits_for_a_later_send_and_fails_when_the_sender_leaves() {
        let (sender, receiver) = channel();
        let waiter = thread::spawn(move || receiver.recv());
        thread::sleep(Duration::from_millis(50));
        sender.send("reader").unwrap();
        assert_eq!(waiter.join().unwrap(), Ok("reader"));

        let (sender, receiver) = channel::<u8>();
        let waiter = thread::spawn(move || receiver.recv());
        thread::sleep(Duration::from_millis(50));
        drop(sender);
        assert!(waiter.join().unwrap().is_err());
    }
}
