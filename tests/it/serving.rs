//! Serving under load: many streams open at once, a burst of keep-alive clients, a full
//! queue answered with 503 and recovered from, and one request log line per request.

use crate::fake::{chat_answer, content_line, done_line, healthy, Fake, FakeReply, Gate, Ndjson, OpenOnDrop};
use crate::util::*;
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Opens a gate when dropped, so a failing test never leaves held streams behind.
/// A fake whose streams send one line, wait at `gate`, then finish.
fn gated_fake(gate: &Arc<Gate>) -> Fake {
    let gate = Arc::clone(gate);
    Fake::start(move |recorded| {
        if !recorded.wants_stream() {
            return FakeReply::ok(chat_answer("quick"));
        }
        let lines = [content_line("held"), content_line(" open"), done_line("stop", 1, 2)];
        FakeReply::Ndjson(Ndjson {
            lines: lines.iter().map(|l| l.to_string()).collect(),
            delay: Duration::ZERO,
            gate: Some(Arc::clone(&gate)),
        })
    })
}

/// The concatenated content of a stream that ended with `[DONE]`.
fn content_of(events: &[Event]) -> String {
    assert!(matches!(events.last(), Some(Event::Done)), "the stream ends with [DONE]: {events:#?}");
    events
        .iter()
        .filter_map(|e| match e {
            Event::Chunk(chunk) => chunk.choices.first().and_then(|c| c.delta.content.clone()),
            _ => None,
        })
        .collect()
}

/// With the default 256 workers, 256 streams opened together must all be live at once.
// See: vendor/tiny_http/README.md (tiny_http 0.12.0's connection thread pool queued part of
// a burst of connections behind busy threads; those streams waited, workers idle, until
// another connection closed).
#[test]
fn two_hundred_fifty_six_streams_are_served_at_once() {
    const STREAMS: usize = 256;
    let gate = Gate::new();
    let _opener = OpenOnDrop(Arc::clone(&gate));
    let fake = gated_fake(&gate);
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url)); // workers = 256 by default

    // Every client reports its first event (or why it got none), then reads to the end.
    let (first_tx, first_rx) = mpsc::channel::<Result<(), String>>();
    // All sockets connect in one burst first, as clients of a busy gateway do.
    let sockets: Vec<TcpStream> =
        (0..STREAMS).map(|_| TcpStream::connect(&gateway.addr).expect("connect to the gateway")).collect();
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let first_tx = first_tx.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut conn = SseConn::post_on(socket, "/v1/chat/completions", &chat_body("m", true));
                    if conn.status != 200 {
                        let status = conn.status;
                        let _ = first_tx.send(Err(format!("status {status}: {}", conn.read_body())));
                        return Vec::new();
                    }
                    let Some(first) = conn.next_event() else {
                        let _ = first_tx.send(Err("the stream ended without an event".to_string()));
                        return Vec::new();
                    };
                    let _ = first_tx.send(Ok(()));
                    let mut events = vec![first];
                    events.extend(conn.events());
                    decode_events(&events)
                })
                .expect("spawn a client thread")
        })
        .collect();
    drop(first_tx);

    // Waits while first events keep coming; a stream that gets none for PATIENCE is stuck.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut started = 0;
    while started < STREAMS {
        let wait = PATIENCE.min(deadline.saturating_duration_since(Instant::now()));
        match first_rx.recv_timeout(wait) {
            Ok(Ok(())) => started += 1,
            Ok(Err(why)) => panic!("a client got no first event: {why}"),
            Err(_) => break,
        }
    }
    let reached_upstream = fake.count();
    gate.open();
    eqnice!(
        STREAMS,
        started,
        "clients with their first event while every upstream stream was held ({reached_upstream} requests reached upstream)"
    );

    for client in clients {
        let events = client.join().expect("a client thread panicked");
        eqnice!("held open", content_of(&events));
    }
    eqnice!(STREAMS, fake.count());
}

#[test]
fn a_full_queue_answers_503_and_recovers() {
    let gate = Gate::new();
    let opener = OpenOnDrop(Arc::clone(&gate));
    let fake = gated_fake(&gate);
    let config = format!("workers = 1\nqueue_size = 0\n{}", alice());
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));

    let mut held = gateway.open_stream(&chat_body("m", true));
    eqnice!(200, held.status);
    assert!(held.next_event().is_some(), "the held stream's first event");

    let error = assert_envelope(&gateway.chat(&chat_body("m", false)), 503);
    eqnice!("api_error", error.kind);
    eqnice!(1, fake.count(), "the refused request never reached upstream");

    drop(opener);
    let rest = decode_events(&held.events());
    assert!(matches!(rest.last(), Some(Event::Done)), "the held stream finishes: {rest:#?}");

    // The worker frees up once the stream is written; from then on requests are served.
    let mut last = None;
    wait_until(PATIENCE, "a request is served again after the stream ended", || {
        let reply = gateway.chat(&chat_body("m", false));
        let served = reply.status == 200;
        last = Some(reply);
        served
    });
    completion(&last.expect("a reply"));
}

#[test]
fn every_request_gets_a_log_line_with_its_token_and_status() {
    let fake = Fake::start(healthy);
    const BOB: &str = "sk-test-bob-9876543210";
    let gateway = Gateway::start(
        &format!("{}{}", alice(), token_entry("bob", BOB, "default")),
        &format!("{}|{KEY_A}\n", fake.url),
    );
    completion(&gateway.chat(&chat_body("m", false)));
    gateway.stream("/v1/chat/completions", Some(BOB), &chat_body("m", true));
    assert_envelope(&gateway.post_json("/v1/chat/completions", None, &chat_body("m", false)), 401);

    gateway.wait_for_log(&["POST /v1/chat/completions", "token=alice", "status=200"]);
    gateway.wait_for_log(&["POST /v1/chat/completions", "token=bob", "status=200"]);
    gateway.wait_for_log(&["POST /v1/chat/completions", "status=401"]);
    let logs = gateway.logs();
    eqnice!(
        3,
        logs.lines().filter(|l| l.contains("POST /v1/chat/completions")).count(),
        "one line each:\n{logs}"
    );
}

/// Clients that keep their connections open must not hold up others arriving with them.
// See: vendor/tiny_http/README.md (`make bench`: up to 60 of 64 keep-alive clients stalled).
#[test]
fn a_burst_of_keep_alive_clients_is_served_at_once() {
    const CLIENTS: usize = 64;
    let fake = Fake::start(healthy);
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url));
    let release = Gate::new();
    let _opener = OpenOnDrop(Arc::clone(&release));

    // Every client connects in one burst, gets its answer, and keeps its connection open
    // (keep-alive, as SDK clients do) until all have been answered.
    let sockets: Vec<TcpStream> =
        (0..CLIENTS).map(|_| TcpStream::connect(&gateway.addr).expect("connect to the gateway")).collect();
    let (done_tx, done_rx) = mpsc::channel::<Result<(), String>>();
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let (done_tx, release) = (done_tx.clone(), Arc::clone(&release));
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut conn = SseConn::post_on(socket, "/v1/chat/completions", &chat_body("m", false));
                    let reply = conn.reply();
                    let _ = done_tx.send(match reply.status {
                        200 => Ok(()),
                        status => Err(format!("status {status}: {}", reply.text)),
                    });
                    release.wait();
                    drop(conn);
                })
                .expect("spawn a client thread")
        })
        .collect();
    drop(done_tx);

    let mut answered = 0;
    while answered < CLIENTS {
        match done_rx.recv_timeout(PATIENCE) {
            Ok(Ok(())) => answered += 1,
            Ok(Err(why)) => panic!("a client was refused: {why}"),
            Err(_) => break,
        }
    }
    release.open();
    eqnice!(CLIENTS, answered, "clients answered while every connection stayed open");
    for client in clients {
        client.join().expect("a client thread panicked");
    }
}
