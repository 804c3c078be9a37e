//! The agent's transport: ureq's own connector (TCP, then TLS), each connection wrapped so
//! that the request it serves can be cancelled from another thread (see `cancel`).

use crate::cancel;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, ShutdownHandle, Transport,
};

/// ureq's own connector (TCP, TLS), each transport wrapped so that the request served on
/// the calling thread can shut its socket down when its client leaves (see `cancel`).
#[derive(Debug, Default)]
pub(super) struct CancellableConnector(DefaultConnector);

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
        let socket = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        Ok(Some(Cancellable { inner, socket }))
    }
}

/// A transport that attaches its socket to the current request before each read or write.
pub(super) struct Cancellable {
    inner: Box<dyn Transport>,
    socket: Option<Weak<dyn ShutdownHandle>>,
}

impl Cancellable {
    fn attach(&self) {
        if let Some(socket) = &self.socket {
            cancel::attach(socket);
        }
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
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.attach();
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}
