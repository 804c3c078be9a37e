//! Noticing clients that leave while their request waits on upstream.
//!
//! A connection thread blocked on upstream (a whole non-stream answer, or a stream's first
//! token) cannot see its client go. It registers the client's socket here with the
//! request's [`Cancel`]; one thread looks at every registered socket a few times a second
//! with a non-blocking peek, and cancels the requests whose client closed or reset its
//! connection, which closes their upstream connection within a fraction of a second.
//! Pipelined bytes from the client count as present, not gone.

use crate::cancel::Cancel;
use rustix::net::RecvFlags;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often registered sockets are looked at.
pub const EVERY: Duration = Duration::from_millis(200);

/// A socket the watcher can look at: the client's TCP connection.
pub trait ClientSocket: Send + Sync {
    /// The TCP socket, if the connection is one.
    fn tcp(&self) -> Option<&TcpStream>;
}

impl ClientSocket for tiny_http::Connection {
    fn tcp(&self) -> Option<&TcpStream> {
        tiny_http::Connection::tcp(self)
    }
}

struct Entry {
    id: u64,
    socket: Arc<dyn ClientSocket>,
    cancel: Arc<Cancel>,
}

#[derive(Default)]
struct Entries {
    next_id: u64,
    watched: Vec<Entry>,
}

/// The registry of waiting requests, and its thread.
#[derive(Default)]
pub struct Watch {
    entries: Mutex<Entries>,
}

impl Watch {
    /// Starts the watching thread.
    pub fn start() -> std::io::Result<Arc<Watch>> {
        let watch = Arc::new(Watch::default());
        let looked_at = Arc::clone(&watch);
        thread::Builder::new().name("watch".into()).spawn(move || loop {
            thread::sleep(EVERY);
            looked_at.sweep();
        })?;
        Ok(watch)
    }

    /// Watches `socket` for `cancel` until the guard is dropped.
    pub fn watch(self: &Arc<Watch>, socket: Arc<dyn ClientSocket>, cancel: Arc<Cancel>) -> Watched {
        let mut entries = self.lock();
        entries.next_id += 1;
        let id = entries.next_id;
        entries.watched.push(Entry { id, socket, cancel });
        Watched { watch: Arc::clone(self), id }
    }

    /// Cancels every watched request whose client has gone.
    pub fn sweep(&self) {
        let entries = self.lock();
        for entry in &entries.watched {
            if !entry.cancel.is_cancelled() && entry.socket.tcp().is_some_and(client_gone) {
                entry.cancel.cancel();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Stops watching a request when dropped.
#[must_use = "the request is watched until this is dropped"]
pub struct Watched {
    watch: Arc<Watch>,
    id: u64,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.watch.lock().watched.retain(|entry| entry.id != self.id);
    }
}

/// Whether the peer closed or reset `socket`: a peek that neither blocks nor consumes.
fn client_gone(socket: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(socket, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, 0)) => true,
        Ok(_) => false,
        Err(err) => !matches!(err, rustix::io::Errno::AGAIN | rustix::io::Errno::INTR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    struct Plain(TcpStream);
    impl ClientSocket for Plain {
        fn tcp(&self) -> Option<&TcpStream> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_closed_client_cancels_its_request_and_a_present_one_does_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut staying, leaving) = (TcpStream::connect(addr).unwrap(), TcpStream::connect(addr).unwrap());
        let (first, _) = listener.accept().unwrap();
        let (second, _) = listener.accept().unwrap();
        let watch = Arc::new(Watch::default());
        let (kept, gone) = (Cancel::new(), Cancel::new());
        let _a = watch.watch(Arc::new(Plain(first)), Arc::clone(&kept));
        let _b = watch.watch(Arc::new(Plain(second)), Arc::clone(&gone));
        // A pipelined byte is a client still there.
        staying.write_all(b"G").unwrap();
        drop(leaving);
        thread::sleep(Duration::from_millis(50));
        watch.sweep();
        assert!(gone.is_cancelled());
        assert!(!kept.is_cancelled());
    }

    #[test]
    fn dropping_the_guard_stops_watching() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let watch = Arc::new(Watch::default());
        let cancel = Cancel::new();
        drop(watch.watch(Arc::new(Plain(server_side)), Arc::clone(&cancel)));
        drop(client);
        thread::sleep(Duration::from_millis(50));
        watch.sweep();
        assert!(!cancel.is_cancelled());
        assert!(watch.lock().watched.is_empty());
    }
}
