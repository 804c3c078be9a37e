//! Concurrency slots: how many requests each upstream key has in flight, and the line of
//! requests waiting for a key to free up.
//!
//! Ollama Cloud serves a key only a few requests at once and answers more with errors, so
//! a key may carry a limit (`max_concurrent_per_key`, per pool or per key line). A request
//! takes a [`Slot`] on the key it sends with and holds it until its answer is done (a
//! stream, until it ends or the client leaves: the slot is released when it is dropped).
//! When every key it may use is at its limit, the request waits in arrival order, per
//! pool, for the first slot to free up, until a deadline. The counts are kept by key id,
//! across config reloads, so a reload never lets a key take more than its limit.
//!
//! Which keys a request may use, and which of the free ones it takes, is the caller's to
//! say ([`Slots::acquire`]'s closures); this module only counts and waits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a waiting request looks whether its client is still there.
const ABANDON_POLL: Duration = Duration::from_millis(200);

/// Every key's requests in flight, and the requests waiting for one.
#[derive(Debug, Default)]
pub struct Slots {
    inner: Mutex<Inner>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// Requests in flight, by key id (absent: none).
    in_flight: HashMap<String, u32>,
    /// Requests waiting for a free key, by pool, oldest first.
    waiting: HashMap<String, VecDeque<Waiter>>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    /// Whether a key this waiter may use was free when it last looked; a waiter behind one
    /// that can go lets it go first.
    can_go: bool,
}

/// One candidate key as [`Slots::acquire`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The caller's index of the key (in its pool).
    pub index: usize,
    /// The key's id.
    pub id: &'a str,
    /// Its limit of requests at once (0: none).
    pub limit: u32,
}

/// A key's free candidates' view for choosing: the index and its requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Free {
    /// The caller's index of the key.
    pub index: usize,
    /// Requests it has in flight now.
    pub in_flight: u32,
}

/// What [`Slots::acquire`] got.
#[derive(Debug)]
pub enum Acquired<E> {
    /// A slot on the key of this index.
    Slot(usize, Slot),
    /// No key may serve the request at all (the candidates closure's error).
    NoKey(E),
    /// Every usable key stayed at its limit until the deadline.
    Busy,
    /// The request was given up while it waited (its client left).
    Abandoned,
    /// Every usable key was at its limit and the pool's line was full.
    LineFull,
}

/// One request in flight on one key; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if let Some(count) = inner.in_flight.get_mut(&self.id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.in_flight.remove(&self.id);
            }
        }
        // Every waiter may go now until it has looked: one behind lets those ahead look first.
        inner.waiting.values_mut().flat_map(|line| line.iter_mut()).for_each(|w| w.can_go = true);
        drop(inner);
        self.slots.freed.notify_all();
    }
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Requests in flight on key `id`.
    pub fn in_flight(&self, id: &str) -> u32 {
        self.lock().in_flight.get(id).copied().unwrap_or(0)
    }

    /// Takes a slot for one request of `pool`. `candidates` lists the keys the request may
    /// use now (it is asked again after each wait, under this module's lock, so it must not
    /// take a slot itself); `choose` picks one of those with a free slot. When none is free
    /// the request waits, behind earlier waiters of the same pool, until `until`, or until
    /// `abandoned` says it was given up (asked every 200 ms while it waits); when
    /// `max_waiting` requests of the pool wait already, it does not wait at all.
    pub fn acquire<'c, E>(
        self: &Arc<Self>,
        pool: &str,
        mut candidates: impl FnMut() -> Result<Vec<Candidate<'c>>, E>,
        mut choose: impl FnMut(&[Free]) -> usize,
        (until, max_waiting): (Instant, usize),
        abandoned: impl Fn() -> bool,
    ) -> Acquired<E> {
        // Declared before the lock, so that even a panic below leaves the line after the
        // lock is let go.
        let mut place = Place { slots: self, pool, ticket: None };
        let mut inner = self.lock();
        loop {
            let listed = match candidates() {
                Ok(listed) => listed,
                Err(error) => {
                    place.leave(&mut inner);
                    return Acquired::NoKey(error);
                }
            };
            let (free, view): (Vec<&Candidate>, Vec<Free>) = listed
                .iter()
                .map(|c| {
                    (c, Free { index: c.index, in_flight: inner.in_flight.get(c.id).copied().unwrap_or(0) })
                })
                .filter(|(c, view)| c.limit == 0 || view.in_flight < c.limit)
                .unzip();
            if !free.is_empty() && inner.first_in_line(pool, place.ticket) {
                let candidate = free[choose(&view).min(free.len() - 1)];
                *inner.in_flight.entry(candidate.id.to_string()).or_default() += 1;
                place.leave(&mut inner);
                return Acquired::Slot(
                    candidate.index,
                    Slot { slots: Arc::clone(self), id: candidate.id.to_string() },
                );
            }
            let now = Instant::now();
            if now >= until {
                place.leave(&mut inner);
                return Acquired::Busy;
            }
            if abandoned() {
                place.leave(&mut inner);
                return Acquired::Abandoned;
            }
            let line = inner.waiting.entry(pool.to_string()).or_default();
            let waiting = line.len();
            match place.ticket.and_then(|mine| line.iter_mut().find(|w| w.ticket == mine)) {
                // It looked and cannot go: those behind it, who let it look first, may.
                Some(me) if me.can_go && free.is_empty() => {
                    me.can_go = false;
                    self.freed.notify_all();
                }
                Some(me) => me.can_go = !free.is_empty(),
                None if waiting >= max_waiting => {
                    if waiting == 0 {
                        inner.waiting.remove(pool);
                    }
                    return Acquired::LineFull;
                }
                None => {
                    let mine = inner.next_ticket;
                    inner.next_ticket += 1;
                    let line = inner.waiting.entry(pool.to_string()).or_default();
                    line.push_back(Waiter { ticket: mine, can_go: false });
                    place.ticket = Some(mine);
                }
            }
            inner = match self.freed.wait_timeout(inner, (until - now).min(ABANDON_POLL)) {
                Ok((inner, _)) => inner,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// A request's place in its pool's line, if it took one; dropping it leaves the line.
struct Place<'a> {
    slots: &'a Slots,
    pool: &'a str,
    ticket: Option<u64>,
}

impl Place<'_> {
    /// Leaves the line (under the lock the caller holds); the next in line may go.
    fn leave(&mut self, inner: &mut Inner) {
        let Some(ticket) = self.ticket.take() else { return };
        if let Some(line) = inner.waiting.get_mut(self.pool) {
            line.retain(|w| w.ticket != ticket);
            if line.is_empty() {
                inner.waiting.remove(self.pool);
            }
        }
        self.slots.freed.notify_all();
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let mut inner = self.slots.lock();
            self.leave(&mut inner);
        }
    }
}

impl Inner {
    /// Whether the request holding `ticket` (or arriving, with none) goes before every
    /// waiter of `pool` ahead of it that may go.
    fn first_in_line(&self, pool: &str, ticket: Option<u64>) -> bool {
        self.waiting.get(pool).is_none_or(|line| {
            line.iter().take_while(|w| Some(w.ticket) != ticket).all(|ahead| !ahead.can_go)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    const IDS: [&str; 2] = ["a", "b"];

    fn keys(limit: u32) -> impl FnMut() -> Result<Vec<Candidate<'static>>, ()> {
        move || Ok(IDS.iter().enumerate().map(|(index, id)| Candidate { index, id, limit }).collect())
    }

    fn first(free: &[Free]) -> usize {
        free[0].index
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn take(slots: &Arc<Slots>, limit: u32, until: Instant) -> Option<(usize, Slot)> {
        match slots.acquire("p", keys(limit), first, (until, 64), || false) {
            Acquired::Slot(index, slot) => Some((index, slot)),
            Acquired::Busy => None,
            other => panic!("the candidates never fail and nobody gives up here: {other:?}"),
        }
    }

    #[test]
    fn a_key_at_its_limit_is_skipped_and_freed_by_dropping_the_slot() {
        let slots = Arc::new(Slots::default());
        let (index, held) = take(&slots, 1, soon()).expect("a is free");
        assert_eq!(index, 0);
        let (index, other) = take(&slots, 1, soon()).expect("b is free");
        assert_eq!(index, 1, "a is at its limit");
        assert_eq!((slots.in_flight("a"), slots.in_flight("b")), (1, 1));
        assert!(take(&slots, 1, Instant::now()).is_none(), "both busy, no time to wait");
        drop(held);
        assert_eq!(slots.in_flight("a"), 0);
        assert_eq!(take(&slots, 1, soon()).map(|(index, _)| index), Some(0));
        drop(other);
    }

    #[test]
    fn no_limit_counts_but_never_waits() {
        let slots = Arc::new(Slots::default());
        let held: Vec<_> = (0..5).map(|_| take(&slots, 0, Instant::now()).expect("no limit")).collect();
        assert_eq!(slots.in_flight("a"), 5, "the chooser took the first key each time");
        drop(held);
        assert_eq!(slots.in_flight("a"), 0);
    }

    #[test]
    fn waiters_are_served_in_arrival_order_when_a_slot_frees() {
        let slots = Arc::new(Slots::default());
        let held = [take(&slots, 1, soon()).expect("a"), take(&slots, 1, soon()).expect("b")];
        let (order, arrivals) = (mpsc::channel(), mpsc::channel::<()>());
        let waiters: Vec<_> = (0..3)
            .map(|n| {
                let (mine, order, arrived) = (Arc::clone(&slots), order.0.clone(), arrivals.0.clone());
                let waiter = thread::spawn(move || {
                    arrived.send(()).expect("main waits");
                    let slot = take(&mine, 1, soon()).expect("a slot frees within 30 s");
                    order.send(n).expect("main collects");
                    thread::sleep(Duration::from_millis(20));
                    drop(slot);
                });
                arrivals.1.recv().expect("the waiter started");
                // Let it reach the line before the next one starts.
                let queued = (0..500).any(|_| {
                    thread::sleep(Duration::from_millis(2));
                    slots.lock().waiting.get("p").map_or(0, VecDeque::len) > n
                });
                assert!(queued, "waiter {n} joined the line");
                waiter
            })
            .collect();
        drop(held);
        for waiter in waiters {
            waiter.join().expect("a waiter panicked");
        }
        let got: Vec<usize> = order.1.try_iter().collect();
        // Two slots free at once: 0 and 1 go first in either order, 2 after both.
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], 2, "{got:?}");
        assert!(slots.lock().waiting.is_empty(), "the line is empty again");
    }

    #[test]
    fn a_waiter_gives_up_at_its_deadline_and_leaves_the_line() {
        let slots = Arc::new(Slots::default());
        let _held = [take(&slots, 1, soon()).expect("a"), take(&slots, 1, soon()).expect("b")];
        let started = Instant::now();
        assert!(take(&slots, 1, Instant::now() + Duration::from_millis(50)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(slots.lock().waiting.is_empty());
    }

    #[test]
    fn a_request_given_up_while_it_waits_leaves_the_line_within_a_poll() {
        let slots = Arc::new(Slots::default());
        let _held = [take(&slots, 1, soon()).expect("a"), take(&slots, 1, soon()).expect("b")];
        let started = Instant::now();
        let gone = || started.elapsed() > Duration::from_millis(50);
        assert!(matches!(slots.acquire("p", keys(1), first, (soon(), 64), gone), Acquired::Abandoned));
        assert!(started.elapsed() < Duration::from_secs(5), "noticed within a poll, not at the deadline");
        assert!(slots.lock().waiting.is_empty());
    }

    #[test]
    fn a_full_line_is_not_joined() {
        let slots = Arc::new(Slots::default());
        let _held = [take(&slots, 1, soon()).expect("a"), take(&slots, 1, soon()).expect("b")];
        assert!(matches!(slots.acquire("p", keys(1), first, (soon(), 0), || false), Acquired::LineFull));
    }

    #[test]
    fn a_panic_while_waiting_leaves_the_line() {
        let slots = Arc::new(Slots::default());
        let _held = [take(&slots, 1, soon()).expect("a"), take(&slots, 1, soon()).expect("b")];
        let mut calls = 0;
        let panics_on_the_second_look = || {
            calls += 1;
            assert!(calls < 2, "a candidates closure that panics");
            keys(1)()
        };
        let waiting = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slots.acquire("p", panics_on_the_second_look, first, (soon(), 64), || false)
        }));
        assert!(waiting.is_err());
        assert!(slots.lock().waiting.is_empty(), "the line forgot the waiter that panicked");
    }

    #[test]
    fn a_key_lost_while_waiting_ends_the_wait_with_the_callers_error() {
        let slots = Arc::new(Slots::default());
        let held = take(&slots, 1, soon()).expect("a");
        let mut calls = 0;
        let only_a = || {
            calls += 1;
            match calls {
                1 => Ok(vec![Candidate { index: 0, id: "a", limit: 1 }]),
                _ => Err("a was revoked"),
            }
        };
        let releaser = {
            let slots = Arc::clone(&slots);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(30));
                slots.freed.notify_all();
            })
        };
        match slots.acquire("p", only_a, first, (soon(), 64), || false) {
            Acquired::NoKey(why) => assert_eq!(why, "a was revoked"),
            other => panic!("{other:?}"),
        }
        releaser.join().expect("releaser");
        drop(held);
        assert!(slots.lock().waiting.is_empty());
    }
}
