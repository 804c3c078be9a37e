//! Stopping an upstream exchange whose client has gone.
//!
//! A request that waits on upstream (a whole non-stream answer, or a stream's first token)
//! runs under a [`Cancel`] made current for its thread with [`scope`]. The upstream
//! transport (in `upstream`) attaches each socket it reads or writes on that thread to
//! the current `Cancel`; when the client leaves, [`Cancel::cancel`] shuts that socket down,
//! which ends the blocked read at once and, upstream, stops the generation and its token
//! spend. Who notices that a client left is not this module's business (`watch` does).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use ureq::unversioned::transport::ShutdownHandle;

/// The cancellation of one client request.
#[derive(Default)]
pub struct Cancel {
    cancelled: AtomicBool,
    socket: Mutex<Option<Weak<dyn ShutdownHandle>>>,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl Cancel {
    /// A request not cancelled yet.
    pub fn new() -> Arc<Cancel> {
        Arc::new(Cancel::default())
    }

    /// Cancels the request: its upstream socket, if any, is shut down now, and any socket
    /// attached later is shut down as soon as it is.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(socket) = self.lock().as_ref().and_then(Weak::upgrade) {
            socket.shutdown();
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn attach(&self, socket: &Weak<dyn ShutdownHandle>) {
        let mut current = self.lock();
        if !current.as_ref().is_some_and(|held| Weak::ptr_eq(held, socket)) {
            *current = Some(Weak::clone(socket));
        }
        drop(current);
        if self.is_cancelled() {
            if let Some(socket) = socket.upgrade() {
                socket.shutdown();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Weak<dyn ShutdownHandle>>> {
        self.socket.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Cancel>>> = const { RefCell::new(None) };
}

/// Makes `cancel` current on this thread until the guard is dropped.
pub fn scope(cancel: &Arc<Cancel>) -> Scope {
    CURRENT.with(|current| *current.borrow_mut() = Some(Arc::clone(cancel)));
    Scope(())
}

/// Ends a [`scope`] when dropped.
#[must_use = "the scope ends when this is dropped"]
pub struct Scope(());

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = None);
    }
}

/// Whether the current request of this thread was cancelled (its client left).
pub fn cancelled() -> bool {
    CURRENT.with(|current| current.borrow().as_ref().is_some_and(|cancel| cancel.is_cancelled()))
}

/// Attaches an upstream socket, used on this thread now, to the current request.
pub(crate) fn attach(socket: &Weak<dyn ShutdownHandle>) {
    CURRENT.with(|current| {
        if let Some(cancel) = current.borrow().as_ref() {
            cancel.attach(socket);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Counted(AtomicUsize);
    impl ShutdownHandle for Counted {
        fn shutdown(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn cancelling_shuts_the_attached_socket_and_any_attached_later() {
        let (first, second) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
        let cancel = Cancel::new();
        {
            let _scope = scope(&cancel);
            attach(&(Arc::downgrade(&first) as Weak<dyn ShutdownHandle>));
            assert!(!cancelled());
            cancel.cancel();
            assert!(cancelled());
            assert_eq!(first.0.load(Ordering::SeqCst), 1);
            attach(&(Arc::downgrade(&second) as Weak<dyn ShutdownHandle>));
            assert_eq!(second.0.load(Ordering::SeqCst), 1);
        }
        // Outside a scope nothing is attached and nothing is cancelled.
        assert!(!cancelled());
        attach(&(Arc::downgrade(&first) as Weak<dyn ShutdownHandle>));
        assert_eq!(first.0.load(Ordering::SeqCst), 1);
    }
}
