//! The HTTP server: tiny_http, a pool of worker threads, and the one adapter between them
//! and the handlers in `api`.
//!
//! One dispatcher thread takes requests from tiny_http and hands them to `workers` threads
//! through a bounded queue; when the queue is full the dispatcher answers 503 at once. Each
//! worker checks the head ([`api::screen`]), reads the body (up to `max_body_bytes`), calls
//! [`api::handle`] under
//! `catch_unwind`, writes the [`Reply`] (streams through [`LiveWriter`]), and logs one line.
//! Nothing here parses JSON bodies.

use crate::api::{self, LogFields, Reply, Req, StreamReply};
use crate::cors;
use crate::gateway::Gateway;
use crate::live::Live;
use crate::sse::{self, LiveWriter};
use crate::translate::errors::ApiError;
use crate::translate::{Flow, Usage};
use std::io::{self, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Stack of each worker thread; handlers are shallow, and untouched stack costs no memory.
const WORKER_STACK: usize = 512 * 1024;

/// A bound, not yet serving, HTTP server.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

impl Server {
    /// Binds the listening socket. `client_timeout` bounds every wait on a client: for its
    /// next request on a kept-alive connection, for its body, and for it to take our bytes.
    pub fn bind(addr: SocketAddr, client_timeout: Duration) -> io::Result<Server> {
        let listener = tune_listener(TcpListener::bind(addr)?, client_timeout)?;
        let addr = listener.local_addr()?;
        let http = tiny_http::Server::from_listener(listener, None).map_err(io::Error::other)?;
        Ok(Server { http: Arc::new(http), addr })
    }

    /// The address actually bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends. `listen`, `workers` and `queue_size` are read once
    /// here; everything else follows the current generation of `live`, request by request.
    pub fn run(self, live: Arc<Live>) {
        let first = live.current();
        let config = &first.config.raw;
        // Requests taken but not finished: at most `workers` being served and `queue_size`
        // waiting. Counting them (rather than sizing a channel) makes "full" exact: a
        // worker between two requests still counts as free.
        let capacity = config.workers + config.queue_size;
        let (sender, receiver) = channel::<tiny_http::Request>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..config.workers {
            let (live, receiver) = (Arc::clone(&live), Arc::clone(&receiver));
            let spawned = thread::Builder::new()
                .name(format!("worker-{index}"))
                .stack_size(WORKER_STACK)
                .spawn(move || work(&receiver, &live));
            if let Err(err) = spawned {
                log::error!("could not start worker {index} ({err}); serving with {index} workers");
                break;
            }
        }
        for request in self.http.incoming_requests() {
            if live.draining.load(Ordering::Acquire) {
                refuse(
                    request,
                    &config.cors.allow_origins,
                    "the gateway is shutting down; retry in a moment",
                );
                continue;
            }
            if live.in_flight.fetch_add(1, Ordering::AcqRel) < capacity {
                if sender.send(request).is_err() {
                    break;
                }
                continue;
            }
            live.in_flight.fetch_sub(1, Ordering::AcqRel);
            refuse(
                request,
                &config.cors.allow_origins,
                "the gateway is at capacity (every worker busy and the queue full); retry shortly",
            );
        }
    }
}

/// Answers 503 on the dispatcher thread, without reading the body, and closes the
/// connection (shedding load; the vendored tiny_http closes it after an unread body anyway).
fn refuse(request: tiny_http::Request, allow_origins: &[String], why: &str) {
    let error = ApiError::server(503, why);
    log::warn!("{} {} 503: {why}", request.method(), path_of(request.url()));
    let origin = request.headers().iter().find(|h| h.field.equiv("Origin")).map(|h| h.value.as_str());
    let mut headers = cors::headers(allow_origins, origin, None);
    headers.push(("Connection", "close".to_string()));
    let _ = request.respond(json_response(error.status, error.body(), headers, None));
}

/// Sets options on the listening socket that Linux copies to every accepted socket
/// (tiny_http offers no hook on accept): TCP_NODELAY, so each flushed event leaves at once
/// instead of waiting on Nagle's algorithm, and read and write timeouts, so a client that
/// goes quiet cannot hold a thread or a worker forever. std has no setters on listeners,
/// but a socket is a socket: they are set through a `TcpStream` view of the descriptor.
fn tune_listener(listener: TcpListener, client_timeout: Duration) -> io::Result<TcpListener> {
    let stream = TcpStream::from(OwnedFd::from(listener));
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(client_timeout))?;
    stream.set_write_timeout(Some(client_timeout))?;
    Ok(TcpListener::from(OwnedFd::from(stream)))
}

fn work(receiver: &Mutex<Receiver<tiny_http::Request>>, live: &Live) {
    loop {
        let request = {
            let queue = receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match queue.recv() {
                Ok(request) => request,
                Err(_) => return,
            }
        };
        // A panic in one request must cost that request, not the worker.
        // Each request keeps the generation it started with, through a reload.
        let gateway = live.current();
        if catch_unwind(AssertUnwindSafe(|| serve_one(request, &gateway))).is_err() {
            log::error!("a request handler panicked; the worker goes on");
        }
        live.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn path_of(url: &str) -> &str {
    url.split('?').next().unwrap_or("")
}

fn serve_one(mut request: tiny_http::Request, gateway: &Gateway) {
    let started = Instant::now();
    let id = format!("{:08x}", REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed) + 1);
    let mut req = head_of(&request);
    let mut log = LogFields::default();
    let http10 = request.http_version() == &tiny_http::HTTPVersion(1, 0);
    let close = req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body_read = false;
    let reply = catch_unwind(AssertUnwindSafe(|| {
        let admission = match api::screen(&req, gateway, &mut log) {
            Ok(admission) => admission,
            Err(early) => return early,
        };
        match read_body(&mut request, gateway.config.raw.max_body_bytes) {
            Ok(body) => {
                req.body = body;
                body_read = true;
                api::handle(&req, gateway, admission, &mut log)
            }
            Err(error) => api::error_reply(&req, gateway, &error),
        }
    }))
    .unwrap_or_else(|_| {
        Reply::error(&ApiError::server(500, "the gateway hit an internal error; see its log"))
    });
    let (status, note) = match reply {
        Reply::Full { status, body, mut headers } => {
            if !body_read && has_body(&req) {
                // The body was never read, so the connection cannot carry another request
                // (the vendored tiny_http closes it); say so, so the client does not try.
                headers.push(("Connection", "close".to_string()));
            }
            let _ = request.respond(json_response(status, body, headers, Some(&id)));
            (status, "")
        }
        Reply::Stream(stream) => {
            let status = stream.status;
            let (note, usage) = write_stream(request, stream, http10, close, &id);
            log.usage = usage;
            (status, note)
        }
    };
    let tokens = match log.usage {
        Some(usage) => {
            if let Some(key) = &log.trace.key_id {
                gateway.store.update(key, |state| state.record_usage(usage.prompt, usage.completion));
            }
            format!(" tokens={}+{}", usage.prompt, usage.completion)
        }
        None => String::new(),
    };
    log::info!(
        "{id} {} {} token={} key=\"{}\" model={} status={status} attempts={} {:.1}ms{tokens}{note}",
        req.method,
        req.path(),
        log.token.as_deref().unwrap_or("-"),
        log.trace.key.as_deref().unwrap_or("-"),
        log.model.as_deref().unwrap_or("-"),
        log.trace.attempts,
        started.elapsed().as_secs_f64() * 1000.0,
    );
}

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
    }
}

/// Reads at most `max_body` bytes of body; more is a 413 (and the rest is never read: the
/// vendored tiny_http then closes the connection).
fn read_body(request: &mut tiny_http::Request, max_body: u64) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|declared| declared as u64 > max_body) {
        return Err(ApiError::too_large(max_body));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(max_body + 1)
        .read_to_end(&mut body)
        .map_err(|err| ApiError::bad_request(format!("could not read the request body: {err}"), None))?;
    if body.len() as u64 > max_body {
        return Err(ApiError::too_large(max_body));
    }
    Ok(body)
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

/// Relays a stream to the client line by line; returns a note for the log line and the
/// reply's token counts when it finished.
fn write_stream(
    request: tiny_http::Request,
    stream: StreamReply,
    http10: bool,
    close: bool,
    id: &str,
) -> (&'static str, Option<Usage>) {
    let StreamReply { status, content_type, mut headers, upstream, mut translator } = stream;
    headers.push(("X-Request-Id", id.to_string()));
    let reason = tiny_http::StatusCode(status).default_reason_phrase();
    let head = sse::Head { status, reason, http10, close, content_type: &content_type, headers: &headers };
    let mut writer = match LiveWriter::start(request.into_writer(), &head) {
        Ok(writer) => writer,
        Err(_) => return (" client gone before the stream started", None),
    };
    let mut upstream = BufReader::with_capacity(16 * 1024, upstream);
    let (mut line, mut out) = (Vec::new(), Vec::new());
    loop {
        out.clear();
        let flow = match sse::read_line(&mut upstream, &mut line, sse::MAX_LINE_BYTES) {
            Ok(true) => translator.push_line(&line, &mut out),
            Ok(false) => {
                translator.upstream_ended(None, &mut out);
                Flow::Done
            }
            Err(err) => {
                let text = if crate::upstream::is_timeout(&err) {
                    "the upstream went silent for longer than idle_timeout_secs; the reply is incomplete"
                        .to_string()
                } else {
                    format!("reading the upstream stream failed ({err}); the reply is incomplete")
                };
                translator.upstream_ended(Some(&text), &mut out);
                Flow::Done
            }
        };
        if writer.send(&out).is_err() {
            // The client went away: dropping the upstream reader closes that connection,
            // which stops the generation (and its token spend) upstream.
            return (" client disconnected mid-stream", translator.usage());
        }
        if flow == Flow::Done {
            break;
        }
    }
    let finished = translator.usage().is_some();
    let note = match (writer.finish(), finished) {
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
    (note, translator.usage())
}
