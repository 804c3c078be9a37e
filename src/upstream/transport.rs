//! The agent's transport: ureq's own connectors (a CONNECT proxy, TCP, then TLS), each
//! connection wrapped so that the request it serves can be cancelled from another thread
//! (see `cancel`) and a request's head leaves in one write with the start of its body.

use crate::cancel;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use ureq::unversioned::transport::{
    Buffers, ChainedConnector, ConnectProxyConnector, ConnectionDetails, Connector, NextTimeout,
    RustlsConnector, ShutdownHandle, TcpConnector, Transport,
};

/// ureq's connectors for what we use (a CONNECT proxy from the environment, TCP, rustls),
/// each transport wrapped so that the request served on the calling thread can shut its
/// socket down when its client leaves (see `cancel`). ureq's `DefaultConnector` chains
/// the same three plus warnings for features we do not build (SOCKS, native-tls), behind a
/// box; its connect frame was 10 KiB of every connection thread's stack.
pub(super) struct CancellableConnector(Chain);

type Chain = ChainedConnector<
    (),
    ChainedConnector<(), ChainedConnector<(), (), ConnectProxyConnector>, TcpConnector>,
    RustlsConnector,
>;

impl Default for CancellableConnector {
    fn default() -> CancellableConnector {
        CancellableConnector(
            ().chain(ConnectProxyConnector::default())
                .chain(TcpConnector::default())
                .chain(RustlsConnector::default()),
        )
    }
}

impl fmt::Debug for CancellableConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CancellableConnector")
    }
}

impl Connector<()> for CancellableConnector {
    type Out = Cancellable;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Cancellable>, ureq::Error> {
        // ureq hands the raw socket's shutdown handle to the agent as soon as it exists,
        // before TLS: keep a copy on the way through.
        let seen: Arc<Mutex<Option<Weak<dyn ShutdownHandle>>>> = Arc::default();
        let (register, keep) = (Arc::clone(&details.register_shutdown), Arc::clone(&seen));
        let details = ConnectionDetails {
            uri: details.uri,
            addrs: details.addrs.clone(),
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: Arc::clone(&details.current_time),
            run_connector: Arc::clone(&details.run_connector),
            register_shutdown: Arc::new(move |handle: Weak<dyn ShutdownHandle>| {
                *keep.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Weak::clone(&handle));
                register(handle)
            }),
        };
        let Some(inner) = self.0.connect(&details, chained)? else {
            return Ok(None);
        };
        let inner: Box<dyn Transport> = Box::new(inner);
        let socket = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        Ok(Some(Cancellable { inner, socket, held: Vec::new(), at_head: true }))
    }
}

/// Longest request head held back to leave together with the start of its body.
const MAX_HELD_HEAD: usize = 4096;

/// A transport that attaches its socket to the current request before each read or write,
/// and sends a request's head together with the start of its body.
///
/// ureq transmits a request head and its body in two writes. On a keep-alive connection
/// each write is a segment of its own (TCP_NODELAY), and on loopback each one runs the
/// receiver's TCP input path and wakes it: two of the gateway's three sends per request,
/// where one will do. So the first output of an exchange (its head) is held back and goes
/// out with the next output (the body), or before the first read when no body follows.
pub(super) struct Cancellable {
    inner: Box<dyn Transport>,
    socket: Option<Weak<dyn ShutdownHandle>>,
    /// A request head not sent yet.
    held: Vec<u8>,
    /// Whether the next output starts a request (nothing sent since the last read).
    at_head: bool,
}

impl Cancellable {
    fn attach(&self) {
        if let Some(socket) = &self.socket {
            cancel::attach(socket);
        }
    }
}

impl Cancellable {
    /// Sends the held head on its own.
    fn send_held(&mut self, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let head = self.held.len();
        self.inner.buffers().output()[..head].copy_from_slice(&self.held);
        self.held.clear();
        self.inner.transmit_output(head, timeout)
    }
}

impl fmt::Debug for Cancellable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellable").field("inner", &self.inner).finish()
    }
}

impl Transport for Cancellable {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.attach();
        if std::mem::take(&mut self.at_head) && amount <= MAX_HELD_HEAD && self.held.is_empty() {
            self.held.extend_from_slice(&self.inner.buffers().output()[..amount]);
            return Ok(());
        }
        if self.held.is_empty() {
            return self.inner.transmit_output(amount, timeout);
        }
        let (output, head) = (self.inner.buffers().output(), self.held.len());
        if head + amount <= output.len() {
            output.copy_within(..amount, head);
            output[..head].copy_from_slice(&self.held);
            self.held.clear();
            return self.inner.transmit_output(head + amount, timeout);
        }
        // No room for both (a large body): the head first, then this output as it was.
        let body = output[..amount].to_vec();
        self.send_held(timeout)?;
        self.inner.buffers().output()[..amount].copy_from_slice(&body);
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.attach();
        if !self.held.is_empty() {
            self.send_held(timeout)?;
        }
        self.at_head = true;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use ureq::unversioned::transport::LazyBuffers;

    /// A transport that records what it was asked to send, one entry per write.
    #[derive(Debug)]
    struct Recorder {
        buffers: LazyBuffers,
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Transport for Recorder {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, amount: usize, _: NextTimeout) -> Result<(), ureq::Error> {
            let bytes = self.buffers.output()[..amount].to_vec();
            self.sent.lock().unwrap().push(bytes);
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, ureq::Error> {
            Ok(true)
        }
        fn is_open(&mut self) -> bool {
            true
        }
    }

    fn transport(output_size: usize) -> (Cancellable, Arc<Mutex<Vec<Vec<u8>>>>) {
        let sent = Arc::default();
        let inner = Recorder { buffers: LazyBuffers::new(64, output_size), sent: Arc::clone(&sent) };
        (Cancellable { inner: Box::new(inner), socket: None, held: Vec::new(), at_head: true }, sent)
    }

    /// Writes `bytes` as ureq does: into the output buffer, then a transmit of its length.
    fn write(transport: &mut Cancellable, bytes: &[u8]) {
        transport.buffers().output()[..bytes.len()].copy_from_slice(bytes);
        transport.transmit_output(bytes.len(), NextTimeout::default()).unwrap();
    }

    fn read(transport: &mut Cancellable) {
        transport.await_input(NextTimeout::default()).unwrap();
    }

    #[test]
    fn a_head_leaves_with_its_body_in_one_write() {
        let (mut transport, sent) = transport(1024);
        write(&mut transport, b"POST /api/chat HTTP/1.1\r\n\r\n");
        assert!(sent.lock().unwrap().is_empty(), "the head waits for its body");
        write(&mut transport, b"{\"model\":\"m\"}");
        read(&mut transport);
        // The next request on the same connection is joined the same way.
        write(&mut transport, b"POST /api/embed HTTP/1.1\r\n\r\n");
        write(&mut transport, b"{}");
        read(&mut transport);
        let sent = sent.lock().unwrap();
        let want: [&[u8]; 2] =
            [b"POST /api/chat HTTP/1.1\r\n\r\n{\"model\":\"m\"}", b"POST /api/embed HTTP/1.1\r\n\r\n{}"];
        assert_eq!(*sent, want);
    }

    #[test]
    fn a_head_without_a_body_leaves_before_the_answer_is_awaited() {
        let (mut transport, sent) = transport(1024);
        write(&mut transport, b"GET /api/tags HTTP/1.1\r\n\r\n");
        read(&mut transport);
        read(&mut transport);
        assert_eq!(*sent.lock().unwrap(), [b"GET /api/tags HTTP/1.1\r\n\r\n".to_vec()]);
    }

    #[test]
    fn a_body_too_large_to_share_the_buffer_follows_the_head_intact() {
        let (mut transport, sent) = transport(64);
        let head = b"POST /api/chat HTTP/1.1\r\nContent-Length: 100\r\n\r\n";
        let body: Vec<u8> = (0..100u8).collect();
        write(&mut transport, head);
        write(&mut transport, &body[..64]);
        write(&mut transport, &body[64..]);
        read(&mut transport);
        let sent = sent.lock().unwrap();
        assert_eq!(sent[0], head);
        assert_eq!(sent[1..].concat(), body);
    }
}
