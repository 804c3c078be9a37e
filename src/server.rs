//! The HTTP server: accepting connections, one thread per connection, and the one adapter
//! between tiny_http and the handlers in `api`.
//!
//! The accept loop runs on the calling thread and never ends: an `accept()` error is logged
//! (at most once a second) and retried after a short back-off, and when descriptors run out
//! a reserve one is given up to close the waiting connection instead of leaving it hanging.
//! Past `max_connections` a new connection is closed at once, so descriptors and threads
//! stay bounded whatever clients do. Each connection is served on its own thread, which
//! reads a request (its head within `header_timeout_secs`, its body at no less than
//! `min_body_bytes_per_sec`), checks it ([`api::screen`]) before reading the body (and a
//! token sent in the body, after it: [`api::screen_body`]), and only then waits for one of
//! `workers` slots to run [`api::handle`]; a slow client holds its
//! connection's thread, never a worker. While a handler waits on upstream, the client's
//! socket is watched ([`Watch`]) so that a client who leaves stops the upstream at once.
//! A scrape of `/metrics` is answered without a worker or a queue place, so a gateway at
//! capacity can still be watched. Each finished request is counted in [`metrics`] with its
//! log line. Nothing here parses JSON bodies.

use crate::api;
use crate::cancel::{self, Cancel};
use crate::chunked::{self, LiveWriter};
use crate::config::RawConfig;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{LogFields, Reply, Req, StreamReply};
use crate::live::Live;
use crate::logline;
use crate::metrics;
use crate::translate::{Flow, Usage};
use crate::watch::{ClientSocket, Watch};
use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tiny_http::{ClientConnection, ReadClock};

/// Stack of each connection thread; handlers are shallow, and untouched stack costs no
/// memory.
const CONNECTION_STACK: usize = 512 * 1024;

/// Descriptors kept free beside the connections: the listener, the state file, logs, the
/// upstream connections of requests in flight are counted per connection.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Upper bound of the default `max_connections`, whatever the open-files limit allows.
const DEFAULT_MAX_CONNECTIONS_CAP: u64 = 4096;

/// How long the accept loop waits after a failed `accept()`, at first and at most.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(500));

/// Bytes read from a request body between two deadline updates.
const BODY_STEP: u64 = 256 * 1024;

/// A bound, not yet serving, HTTP server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(addr: SocketAddr) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        Ok(Server { listener, addr })
    }

    /// The address actually bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process is stopped (by a signal, see `live`): this never returns.
    /// `listen`, `workers`, `queue_size` and `max_connections` are read once here;
    /// everything else follows the current generation of `live`, request by request.
    pub fn run(self, live: Arc<Live>) -> ! {
        let shared = Arc::new(Shared::new(&live.current().config.raw, Arc::clone(&live)));
        log::info!(
            "serving at most {} connections and {} requests at once ({} more may wait)",
            shared.limits.max_connections,
            shared.limits.workers,
            shared.limits.queue_size
        );
        let mut accept_errors = Throttle::default();
        let mut refused = Throttle::default();
        // Given up to accept (and close) a connection when no descriptor is left, so that
        // the client sees a closed connection instead of a connect that never answers.
        let mut reserve = File::open("/dev/null").ok();
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    shared.take_connection(stream, peer, &mut refused);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let out_of_descriptors = matches!(err.raw_os_error(), Some(23 | 24)); // ENFILE, EMFILE
                    accept_errors.warn(|suppressed| {
                        format!(
                            "cannot accept a connection: {err}{}; retrying{suppressed}",
                            if out_of_descriptors {
                                " (out of file descriptors: lower max_connections or raise LimitNOFILE)"
                            } else {
                                ""
                            }
                        )
                    });
                    if out_of_descriptors && reserve.take().is_some() {
                        if let Ok((stream, _)) = self.listener.accept() {
                            drop(stream);
                        }
                        reserve = File::open("/dev/null").ok();
                    }
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
    }
}

/// The open-files limit, raised from its soft value to the hard one when it can be; logs
/// what it did. Returns the limit in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return None;
    };
    // An unlimited hard limit cannot be the soft one on Linux (nr_open caps it); a million
    // descriptors is more than max_connections' cap needs.
    let wanted = hard.unwrap_or(1 << 20).min(1 << 20);
    if wanted <= soft {
        log::info!("open-files limit: {soft}");
        return Some(soft);
    }
    match setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(wanted), maximum: hard }) {
        Ok(()) => {
            log::info!("raised the open-files limit from {soft} to {wanted}");
            Some(wanted)
        }
        Err(err) => {
            log::warn!("could not raise the open-files limit from {soft} to {wanted} ({err})");
            Some(soft)
        }
    }
}

/// `max_connections` when the config leaves it at 0: what the open-files limit allows at
/// two descriptors per connection (the client's and an upstream one), less a reserve.
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let limit = open_files.unwrap_or(1024);
    (limit.saturating_sub(RESERVED_DESCRIPTORS) / 2).clamp(16, DEFAULT_MAX_CONNECTIONS_CAP) as usize
}

/// What is fixed for the life of the server.
struct Limits {
    max_connections: usize,
    workers: usize,
    queue_size: usize,
    idle: Duration,
    header: Duration,
    min_body_rate: u64,
}

/// What every connection thread shares.
struct Shared {
    live: Arc<Live>,
    limits: Limits,
    connections: AtomicUsize,
    workers: Slots,
    bodies: BodyBudget,
    watch: Option<Arc<Watch>>,
}

impl Shared {
    fn new(config: &RawConfig, live: Arc<Live>) -> Shared {
        let max_connections = match config.max_connections {
            0 => default_max_connections(raise_open_files_limit()),
            set => {
                raise_open_files_limit();
                set
            }
        };
        let watch = Watch::start()
            .map_err(|err| {
                log::error!(
                    "cannot start the client watcher ({err}); clients that leave early are noticed late"
                )
            })
            .ok();
        Shared {
            live,
            limits: Limits {
                max_connections,
                workers: config.workers,
                queue_size: config.queue_size,
                idle: Duration::from_secs(config.client_timeout_secs),
                header: Duration::from_secs(config.header_timeout_secs),
                min_body_rate: config.min_body_bytes_per_sec,
            },
            connections: AtomicUsize::new(0),
            workers: Slots::new(config.workers),
            bodies: BodyBudget::new(config.max_inflight_body_bytes),
            watch,
        }
    }

    /// Serves a new connection on a thread of its own, or closes it at once when the
    /// connection limit is reached (or no thread can be started).
    fn take_connection(self: &Arc<Shared>, stream: TcpStream, peer: SocketAddr, refused: &mut Throttle) {
        let max = self.limits.max_connections;
        if self.connections.fetch_add(1, Ordering::AcqRel) >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            refused.warn(|suppressed| {
                format!("closed a new connection from {}: {max} connections are open (max_connections){suppressed}", peer.ip())
            });
            return;
        }
        // TCP_NODELAY: each flushed event leaves at once instead of waiting on Nagle's
        // algorithm. The write timeout bounds a client that stops reading; reads are
        // bounded by the connection's clock.
        log::debug!("connection from {peer}");
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(self.limits.idle));
        let shared = Arc::clone(self);
        let spawned =
            thread::Builder::new().name("conn".into()).stack_size(CONNECTION_STACK).spawn(move || {
                let _counted = Counted(&shared.connections);
                shared.serve_connection(stream);
            });
        if let Err(err) = spawned {
            // The closure, and with it the stream and the count, was dropped.
            refused.warn(|suppressed| {
                format!("closed a new connection: cannot start a thread ({err}){suppressed}")
            });
        }
    }

    fn serve_connection(&self, stream: TcpStream) {
        let clock = Arc::new(ReadClock::new(self.limits.idle, self.limits.header));
        let connection = ClientConnection::for_stream(stream, Arc::clone(&clock));
        let socket = connection.socket();
        for request in connection {
            let served = catch_unwind(AssertUnwindSafe(|| self.serve_one(request, &clock, socket.as_ref())));
            if served.is_err() {
                log::error!("a request handler panicked; its connection is closed");
                break;
            }
        }
    }

    fn serve_one(
        &self,
        mut request: tiny_http::Request,
        clock: &ReadClock,
        socket: Option<&Arc<tiny_http::Connection>>,
    ) {
        let started = Instant::now();
        let id = format!("{:08x}", REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed) + 1);
        let mut req = head_of(&request);
        // Each request keeps the generation it started with, through a reload.
        let gateway = self.live.current();
        if self.live.draining.load(Ordering::Acquire) {
            let why = "the gateway is shutting down; retry in a moment";
            return refuse(request, &req, &gateway, why, None, started);
        }
        let scrape = api::metrics::wanted(&req, &gateway);
        let admitted = match scrape {
            true => None,
            false => match self.admit() {
                Some(admitted) => Some(admitted),
                None => {
                    let why =
                        "the gateway is at capacity (every worker busy and the queue full); retry shortly";
                    return refuse(request, &req, &gateway, why, Some(1), started);
                }
            },
        };
        let mut log = LogFields::default();
        let http10 = request.http_version() == &tiny_http::HTTPVersion(1, 0);
        let close = req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut body_read = false;
        let mut body_held = None;
        let mut slot = None;
        // The request's place in its token's max_concurrent, held until its answer is out.
        let mut permit = None;
        let reply = catch_unwind(AssertUnwindSafe(|| {
            if scrape {
                // Behind a trusted proxy, the address it forwarded: a proxy on loopback must
                // not open /metrics to everyone it serves.
                let from = api::client_addr(&req, &gateway);
                return api::metrics::answer(&req, from, &gateway, self.gauges(), &mut log);
            }
            let admission = match api::screen(&req, &gateway, &mut log) {
                Ok(admission) => admission,
                Err(early) => return early,
            };
            let limits = BodyLimits {
                max: gateway.config.raw.max_body_bytes,
                rate: self.limits.min_body_rate,
                grace: self.limits.header,
            };
            match read_body(&mut request, clock, &limits, &self.bodies) {
                Ok((body, held)) => {
                    req.body = body;
                    body_read = true;
                    body_held = Some(held);
                }
                Err(error) => return api::error_reply(&req, &gateway, &error),
            }
            // A token in the body (allow_body_token) is checked now, before a worker is taken.
            let mut admission = match api::screen_body(&mut req, &gateway, admission, &mut log) {
                Ok(admission) => admission,
                Err(early) => return early,
            };
            permit = Some(admission.take_permit());
            // Counted as queued while it waits for a worker (the admin API shows it).
            self.live.queued.fetch_add(1, Ordering::AcqRel);
            let queued = Counted(&self.live.queued);
            slot = Some(self.workers.acquire());
            drop(queued);
            let cancel = Cancel::new();
            let _watched = match (&self.watch, socket) {
                (Some(watch), Some(socket)) => {
                    Some(watch.watch(Arc::clone(socket) as Arc<dyn ClientSocket>, Arc::clone(&cancel)))
                }
                _ => None,
            };
            let _scope = cancel::scope(&cancel);
            let reply = api::handle(&req, &gateway, admission, &mut log);
            match cancel.is_cancelled() {
                // Whatever the handler made of its cut upstream, nobody will read it.
                true => api::error_reply(&req, &gateway, &ApiError::client_gone()),
                false => reply,
            }
        }))
        .unwrap_or_else(|_| {
            api::error_reply(
                &req,
                &gateway,
                &ApiError::server(500, "the gateway hit an internal error; see its log"),
            )
        });
        let (status, note, first_byte) = match reply {
            Reply::Full { status, body, mut headers } => {
                if !body_read && has_body(&req) {
                    // The body was never read, so the connection cannot carry another
                    // request (the vendored tiny_http closes it); say so, so the client
                    // does not try.
                    headers.push(("Connection", "close".to_string()));
                }
                // Counted out before the client can see the answer and send the next
                // request, which must find this one's worker free.
                drop((slot, body_held, admitted, permit));
                let response = json_response(status, body, headers, Some(&id));
                let first_byte = Instant::now();
                let _ = request.respond(response);
                (status, "", Some(first_byte))
            }
            Reply::Stream(stream) => {
                let status = stream.status;
                let (note, usage, first_byte) = write_stream(request, stream, http10, close, &id);
                drop((slot, body_held, admitted, permit));
                log.usage = usage;
                (status, note, first_byte)
            }
        };
        if let (Some(usage), Some(key)) = (log.usage, &log.trace.key_id) {
            gateway.store.update(key, |state| state.record_usage(usage.prompt, usage.completion));
        }
        gateway.usage.record(log.token.as_deref(), log.model.as_deref(), status, log.usage);
        let elapsed = started.elapsed();
        // A scraper, or an open status page, asks every few seconds: their lines are kept
        // for debugging, unless refused.
        let polled = scrape || (req.method == "GET" && req.path().starts_with("/admin/api/"));
        let level = if polled && status == 200 { log::Level::Debug } else { log::Level::Info };
        let line = logline::RequestLine {
            id: &id,
            method: &req.method,
            path: req.path(),
            family: log.family,
            token: log.token.as_deref(),
            pool: log.trace.pool.as_deref(),
            key: log.trace.key.as_deref(),
            model: log.model.as_deref(),
            status,
            attempts: log.trace.attempts,
            duration: elapsed,
            first_byte: first_byte.map(|at| at.saturating_duration_since(started)),
            tokens: log.usage.map(|usage| (usage.prompt, usage.completion)),
            note,
        };
        line.log(level, module_path!());
        metrics::global().request(&metrics::Finished {
            family: log.family,
            status,
            token: metrics::configured(log.token.as_deref(), &gateway.config.tokens),
            model: log.model.as_deref(),
            usage: log.usage,
            duration: elapsed,
            first_byte: first_byte.map(|at| at.saturating_duration_since(started)),
        });
    }

    /// What a scrape reports of the requests held: all taken, and those waiting for a worker.
    fn gauges(&self) -> api::metrics::Gauges {
        api::metrics::Gauges {
            in_flight: self.live.in_flight.load(Ordering::Acquire),
            // The one count of requests waiting for a worker, the admin API's too.
            queued: self.live.queued.load(Ordering::Acquire),
        }
    }

    /// Counts a request in (at most `workers` served and `queue_size` waiting), or `None`
    /// when both are full.
    fn admit(&self) -> Option<Counted<'_>> {
        let in_flight = &self.live.in_flight;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= self.limits.workers + self.limits.queue_size {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Counted(in_flight))
    }
}

/// One unit of a counter, given back when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs a repeated warning at most once a second, counting the ones held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    fn warn(&mut self, message: impl FnOnce(String) -> String) {
        if self.last.is_some_and(|last| last.elapsed() < Duration::from_secs(1)) {
            self.suppressed += 1;
            return;
        }
        let suppressed = match self.suppressed {
            0 => String::new(),
            n => format!(" ({n} more like it in the last second)"),
        };
        log::warn!("{}", message(suppressed));
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// The `workers` slots: a request holds one while its handler runs and its answer is
/// written (a stream until it ends).
struct Slots {
    capacity: usize,
    state: Mutex<SlotState>,
    freed: Condvar,
}

#[derive(Default)]
struct SlotState {
    busy: usize,
    waiting: usize,
}

impl Slots {
    fn new(capacity: usize) -> Slots {
        Slots { capacity, state: Mutex::new(SlotState::default()), freed: Condvar::new() }
    }

    fn acquire(&self) -> Slot<'_> {
        let mut state = self.lock();
        if state.busy >= self.capacity {
            state.waiting += 1;
            while state.busy >= self.capacity {
                state = self.freed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.waiting -= 1;
        }
        state.busy += 1;
        Slot(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A held worker slot.
struct Slot<'a>(&'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy -= 1;
        // Only a waiter needs the wake-up (and its syscall).
        if state.waiting > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// The bytes of request bodies all requests may hold at once.
struct BodyBudget {
    left: AtomicU64,
}

impl BodyBudget {
    fn new(total: u64) -> BodyBudget {
        BodyBudget { left: AtomicU64::new(total) }
    }

    fn take(&self, bytes: u64) -> bool {
        self.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(bytes)).is_ok()
    }

    fn reserve(&self, bytes: u64) -> Option<HeldBytes<'_>> {
        self.take(bytes).then(|| HeldBytes { budget: self, bytes })
    }
}

/// Bytes of the body budget held by one request.
struct HeldBytes<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

impl HeldBytes<'_> {
    /// Holds at least `bytes` in all, or says the budget has no room.
    fn grow_to(&mut self, bytes: u64) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        // Grow ahead (a chunked body of unknown length), within what may be asked.
        let more = (bytes - self.bytes).max(BODY_STEP);
        if !self.budget.take(more) {
            return false;
        }
        self.bytes += more;
        true
    }
}

impl Drop for HeldBytes<'_> {
    fn drop(&mut self) {
        self.budget.left.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// Answers a request with a 503 before reading its body, in its endpoint's envelope, and
/// closes the connection (shedding load; the vendored tiny_http closes it after an unread
/// body anyway). It counts in the metrics like any answered request.
fn refuse(
    request: tiny_http::Request,
    req: &Req,
    gateway: &Gateway,
    why: &str,
    retry_after: Option<u64>,
    started: Instant,
) {
    log::warn!("{} {} 503: {why}", req.method, req.path());
    let mut error = ApiError::server(503, why);
    error.retry_after = retry_after;
    let mut first_byte = None;
    if let Reply::Full { status, body, mut headers } = api::error_reply(req, gateway, &error) {
        headers.push(("Connection", "close".to_string()));
        let response = json_response(status, body, headers, None);
        first_byte = Some(Instant::now().saturating_duration_since(started));
        let _ = request.respond(response);
    }
    metrics::global().request(&metrics::Finished {
        family: api::metrics_family(req),
        status: 503,
        token: None,
        model: None,
        usage: None,
        duration: started.elapsed(),
        first_byte,
    });
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a request declares a body.
fn has_body(req: &Req) -> bool {
    req.header("transfer-encoding").is_some()
        || req.header("content-length").is_some_and(|len| len.trim() != "0")
}

/// A tiny_http request's method, URL and headers as a [`Req`] without its body.
fn head_of(request: &tiny_http::Request) -> Req {
    Req {
        method: request.method().as_str().to_ascii_uppercase(),
        url: request.url().to_string(),
        headers: request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_string()))
            .collect(),
        body: Vec::new(),
        peer: request.remote_addr().map(|addr| addr.ip()),
    }
}

/// How a request body must arrive.
struct BodyLimits {
    /// Largest body, in bytes.
    max: u64,
    /// Slowest average rate after the grace, in bytes a second.
    rate: u64,
    /// Time before the rate applies.
    grace: Duration,
}

/// Reads the body within `limits`, holding its bytes in the body budget: more than `max` is
/// a 413 (and the rest is never read: the vendored tiny_http then closes the connection),
/// too slow a 408, no room in the budget a 503.
fn read_body<'b>(
    request: &mut tiny_http::Request,
    clock: &ReadClock,
    limits: &BodyLimits,
    budget: &'b BodyBudget,
) -> Result<(Vec<u8>, HeldBytes<'b>), ApiError> {
    let declared = request.body_length().map(|n| n as u64);
    if declared.is_some_and(|declared| declared > limits.max) {
        return Err(ApiError::too_large(limits.max));
    }
    let busy = || {
        let mut error = ApiError::server(
            503,
            "the gateway holds as many request bodies as max_inflight_body_bytes allows; retry shortly",
        );
        error.retry_after = Some(1);
        error
    };
    let mut held = budget.reserve(declared.unwrap_or(0)).ok_or_else(busy)?;
    let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let started = Instant::now();
    let result = loop {
        let allowed = limits.grace + Duration::from_secs_f64(body.len() as f64 / limits.rate as f64);
        clock.set_deadline(Some(started + allowed));
        let step = BODY_STEP.min(limits.max + 1 - body.len() as u64);
        match request.as_reader().take(step).read_to_end(&mut body) {
            Ok(0) => break Ok(()),
            Ok(_) if body.len() as u64 > limits.max => break Err(ApiError::too_large(limits.max)),
            Ok(_) if !held.grow_to(body.len() as u64) => break Err(busy()),
            Ok(_) => {}
            Err(err) if matches!(err.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                break Err(ApiError::server(
                    408,
                    format!(
                        "the request body came too slowly (under {} bytes a second); the connection is closed",
                        limits.rate
                    ),
                ))
            }
            Err(err) => break Err(ApiError::bad_request(format!("could not read the request body: {err}"), None)),
        }
    };
    clock.set_deadline(None);
    result.map(|()| (body, held))
}

fn json_response(
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    request_id: Option<&str>,
) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_data(body).with_status_code(status);
    let mut add = |name: &str, value: &str| {
        if let Ok(header) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    };
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        add("Content-Type", "application/json");
    }
    if let Some(id) = request_id {
        add("X-Request-Id", id);
    }
    for (name, value) in &headers {
        add(name, value);
    }
    response
}

/// Relays a stream to the client line by line; returns a note for the log line, the
/// reply's token counts when it finished, and when its head reached the client.
fn write_stream(
    request: tiny_http::Request,
    stream: StreamReply,
    http10: bool,
    close: bool,
    id: &str,
) -> (&'static str, Option<Usage>, Option<Instant>) {
    let StreamReply { status, content_type, mut headers, mut upstream, mut translator } = stream;
    headers.push(("X-Request-Id", id.to_string()));
    let reason = tiny_http::StatusCode(status).default_reason_phrase();
    let head =
        chunked::Head { status, reason, http10, close, content_type: &content_type, headers: &headers };
    let mut writer = LiveWriter::start(request.into_writer(), &head);
    let (mut line, mut out) = (Vec::new(), Vec::new());
    let (ended, first_byte) = loop {
        out.clear();
        let flow = match crate::upstream::read_line(&mut upstream, &mut line, crate::upstream::MAX_LINE_BYTES)
        {
            Ok(true) => translator.push_line(&line, &mut out),
            Ok(false) => {
                translator.upstream_ended(None, &mut out);
                Flow::Done
            }
            Err(err) => {
                let text = if crate::upstream::is_timeout(&err) {
                    "the upstream timed out (idle_timeout_secs between two lines, or request_timeout_secs in all); the reply is incomplete"
                        .to_string()
                } else {
                    format!("reading the upstream stream failed ({err}); the reply is incomplete")
                };
                translator.upstream_ended(Some(&text), &mut out);
                Flow::Done
            }
        };
        if flow == Flow::Done {
            // The last event and the end of the body leave together.
            let started = writer.started();
            // A stream whose first event is its last sends its head with it, just now.
            let first_byte = writer.first_byte().unwrap_or_else(Instant::now);
            match writer.finish_with(&out) {
                Err(_) if !started => {
                    return (" client gone before the stream started", translator.usage(), None)
                }
                ended => break (ended, Some(first_byte)),
            }
        }
        if writer.send(&out).and_then(|()| writer.flush()).is_err() {
            // The client went away: dropping the upstream reader closes that connection,
            // which stops the generation (and its token spend) upstream.
            let note = match writer.started() {
                true => " client disconnected mid-stream",
                false => " client gone before the stream started",
            };
            return (note, translator.usage(), writer.first_byte());
        }
    };
    let finished = translator.usage().is_some();
    let note = match (ended, finished) {
        (Err(_), _) => " client disconnected at the end",
        (Ok(()), true) => "",
        (Ok(()), false) => " stream ended early with an error event",
    };
    // Read the upstream's end of body (the last chunk after the done line), so ureq can
    // put the connection back in its pool instead of opening a new one (a TLS handshake,
    // for ollama.com) for the next stream. Bounded, in case an upstream goes on talking.
    if finished {
        let _ = io::copy(&mut upstream.take(64 * 1024), &mut io::sink());
    }
    (note, translator.usage(), first_byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_descriptors_for_upstream() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(64)), 16);
        assert_eq!(default_max_connections(Some(1 << 20)), 4096);
        assert_eq!(default_max_connections(None), 480);
    }

    #[test]
    fn the_body_budget_is_shared_and_given_back() {
        let budget = BodyBudget::new(BODY_STEP * 2);
        let mut first = budget.reserve(10).unwrap();
        assert!(first.grow_to(BODY_STEP));
        assert!(budget.reserve(BODY_STEP).is_none(), "only BODY_STEP - 10 left");
        drop(first);
        assert!(budget.reserve(BODY_STEP * 2).is_some());
        assert_eq!(budget.left.load(Ordering::Acquire), BODY_STEP * 2);
    }

    #[test]
    fn slots_bound_requests_served_at_once() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire();
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiting = Arc::clone(&slots);
        let waiter = thread::spawn(move || {
            let _slot = waiting.acquire();
            sender.send(()).unwrap();
        });
        assert!(receiver.recv_timeout(Duration::from_millis(100)).is_err(), "the second request must wait");
        drop(held);
        assert!(receiver.recv_timeout(Duration::from_secs(10)).is_ok(), "a freed slot wakes the waiter");
        waiter.join().unwrap();
    }
}
