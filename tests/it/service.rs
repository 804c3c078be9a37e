//! The gateway as a long-running service: it outlives idle gaps, holds its connection and
//! memory limits against slow or numerous clients, keeps serving when descriptors run out,
//! stops upstream work nobody waits for any more, and reconnects when an upstream closes
//! the connections it keeps pooled.
//!
//! Timeouts are set small so the tests are quick; every wait is bounded, and no assertion
//! depends on the machine being fast: each compares against a much longer span (a drip that
//! would go on for a minute, a trickle that would take far longer than the limit).

use crate::fake::{chat_answer, content_line, done_line, healthy, Fake, FakeReply, Ndjson};
use crate::util::{alice, chat_body, wait_until, Gateway, KEY_A, PATIENCE, TOKEN};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

fn gateway_over(fake: &Fake, config_extra: &str) -> Gateway {
    Gateway::start(&format!("{config_extra}\n{}", alice()), &format!("{}|{KEY_A}\n", fake.url))
}

fn connect(gateway: &Gateway) -> TcpStream {
    let socket = TcpStream::connect(&gateway.addr).expect("connect to the gateway");
    socket.set_read_timeout(Some(PATIENCE)).expect("set a read timeout");
    socket
}

/// Whether the gateway closes `socket` within `within`: a read returns end of file (or a
/// reset), rather than data or a timeout.
fn closed_within(socket: &mut TcpStream, within: Duration) -> Result<String, String> {
    socket.set_read_timeout(Some(within)).expect("set a read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(err)
                if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                return Err(format!(
                    "still open after {within:?}; received {:?}",
                    String::from_utf8_lossy(&got)
                ))
            }
            Err(_) => return Ok(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

/// `GET /health` on an open keep-alive connection; the status code.
fn health_on(socket: &mut TcpStream) -> u16 {
    socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut buf = [0u8; 4096];
    let read = socket.read(&mut buf).expect("an answer");
    let text = String::from_utf8_lossy(&buf[..read]);
    text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// Before the fix, `accept()` failed after `client_timeout_secs` without a new connection
/// (its timeout was set on the listener), tiny_http's accept loop ended, and the process
/// exited 0. The gateway must serve after idle gaps longer than every timeout it has.
#[test]
fn it_serves_after_idle_gaps_longer_than_every_timeout() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(
        &fake,
        "client_timeout_secs = 1\nheader_timeout_secs = 1\n[upstream]\nidle_timeout_secs = 1\nrequest_timeout_secs = 1\nconnect_timeout_secs = 1",
    );
    let mut kept = connect(&gateway);
    assert_eq!(health_on(&mut kept), 200);
    for gap in 0..2 {
        thread::sleep(Duration::from_millis(2500));
        assert!(gateway.running(), "the gateway exited during idle gap {gap}; logs:\n{}", gateway.logs());
        assert_eq!(gateway.get("/health").status, 200, "after idle gap {gap}");
        assert_eq!(gateway.chat(&chat_body("m", false)).status, 200, "after idle gap {gap}");
    }
    // The kept-alive connection idle past client_timeout_secs was closed, quietly.
    assert_eq!(closed_within(&mut kept, PATIENCE), Ok(String::new()));
    assert!(!gateway.logs().contains("Error accepting"), "{}", gateway.logs());
}

/// Past `max_connections` new connections are closed at once (and logged); the open ones
/// are still served, and new ones are taken again once some close.
#[test]
fn past_max_connections_new_connections_are_closed_and_it_recovers() {
    let fake = Fake::start(healthy);
    let gateway =
        gateway_over(&fake, "max_connections = 4\nheader_timeout_secs = 60\nclient_timeout_secs = 60");
    // Open connections, each served (and so counted), until one is closed at once: the
    // test client's own kept-alive connection may hold one of the four already.
    let mut open: Vec<TcpStream> = Vec::new();
    let refused = (0..10).find_map(|_| {
        let mut socket = connect(&gateway);
        if socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
            return Some(socket);
        }
        let mut buf = [0u8; 4096];
        match socket.read(&mut buf) {
            Ok(read) if read > 0 => {
                assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..read]));
                open.push(socket);
                None
            }
            _ => Some(socket),
        }
    });
    assert!(refused.is_some(), "every one of 10 connections was served");
    assert!((3..=4).contains(&open.len()), "{} connections served before the limit", open.len());
    gateway.wait_for_log(&["closed a new connection", "max_connections"]);
    // The open connections keep being served at the limit.
    assert_eq!(health_on(&mut open[0]), 200);
    open.truncate(2);
    wait_until(PATIENCE, "a new connection is served once two closed", || {
        let mut socket = connect(&gateway);
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_ok()
            && closed_within(&mut socket, PATIENCE).is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
    });
    assert!(gateway.running());
}

/// With the open-files limit exhausted (the limit lowered under the running gateway, then
/// connections opened until `accept()` fails), the gateway logs it, keeps serving the
/// connections it has, and serves new ones once descriptors are free again.
#[test]
fn out_of_descriptors_it_keeps_serving_and_recovers() {
    let fake = Fake::start(healthy);
    let gateway =
        gateway_over(&fake, "max_connections = 10000\nheader_timeout_secs = 60\nclient_timeout_secs = 60");
    let mut first = connect(&gateway);
    assert_eq!(health_on(&mut first), 200);
    let in_use = std::fs::read_dir(format!("/proc/{}/fd", gateway.pid())).expect("the gateway's fds").count();
    let limit = in_use + 16;
    let status = Command::new("prlimit")
        .args([format!("--pid={}", gateway.pid()), format!("--nofile={limit}:{limit}")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
    // More connections than descriptors left: the last ones cannot be accepted.
    let mut crowd: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        if let Ok(socket) = TcpStream::connect(&gateway.addr) {
            crowd.push(socket);
        }
    }
    gateway.wait_for_log(&["cannot accept a connection", "out of file descriptors"]);
    // A connection accepted before is still served.
    assert_eq!(health_on(&mut first), 200);
    assert!(gateway.running(), "{}", gateway.logs());
    drop(crowd);
    wait_until(PATIENCE, "new connections are served again", || {
        let Ok(mut socket) = TcpStream::connect(&gateway.addr) else { return false };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_ok()
            && closed_within(&mut socket, Duration::from_secs(2)).is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
    });
    assert_eq!(gateway.chat(&chat_body("m", false)).status, 200);
}

/// A head trickled a byte at a time must arrive whole within `header_timeout_secs`, or the
/// connection is closed; before, each byte reset a per-read timeout and the head never
/// timed out.
#[test]
fn a_head_trickled_slowly_is_cut_off() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "header_timeout_secs = 1\nclient_timeout_secs = 60");
    let mut socket = connect(&gateway);
    let started = Instant::now();
    let head = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let mut cut_off = false;
    // At 4 bytes a second this head would take over 20 s.
    for byte in head.as_bytes() {
        if socket.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        if closed_within(&mut socket, Duration::from_millis(250)).is_ok() {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the whole head went through in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15), "cut off only after {:?}", started.elapsed());
    assert_eq!(fake.count(), 0);
    assert_eq!(gateway.get("/health").status, 200);
}

/// A body slower than `min_body_bytes_per_sec` (after the grace of `header_timeout_secs`)
/// gets 408 and its connection closed, and while it trickles it holds no worker: with one
/// worker, other requests are served meanwhile.
#[test]
fn a_body_below_the_minimum_rate_is_cut_off_without_holding_a_worker() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(
        &fake,
        "workers = 1\nqueue_size = 4\nheader_timeout_secs = 1\nmin_body_bytes_per_sec = 100",
    );
    let mut slow = connect(&gateway);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).expect("send the head");
    // The only worker is free for others while that body trickles.
    assert_eq!(gateway.chat(&chat_body("m", false)).status, 200);
    let started = Instant::now();
    let mut answer = Err(String::new());
    // 100,000 bytes at 5 a second would take hours.
    for _ in 0..200 {
        if slow.write_all(b" ").is_err() {
            break;
        }
        answer = closed_within(&mut slow, Duration::from_millis(200));
        if answer.is_ok() {
            break;
        }
    }
    let answer = answer.expect("the slow body's connection is closed");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(30), "cut off only after {:?}", started.elapsed());
    assert_eq!(fake.count(), 1, "only the other request reached upstream");
}

/// Request bodies in memory are bounded by `max_inflight_body_bytes` across requests: a
/// request that would pass it gets 503 with `Retry-After`, before its body is read.
#[test]
fn bodies_past_the_inflight_budget_get_503() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "max_inflight_body_bytes = 100000\nheader_timeout_secs = 30");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 90000\r\n\r\n{{\"model\":\"m\""
    );
    let probe = || {
        gateway.post_raw(
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            &vec![b' '; 20000],
        )
    };
    // The holding request must have taken its share before a probe does (a probe that
    // holds its 20,000 bytes first leaves the holding one no room): retry until it has.
    let mut holding = None;
    for _ in 0..20 {
        let mut socket = connect(&gateway);
        socket.write_all(head.as_bytes()).expect("send the head");
        let reply = probe();
        let still_holding = closed_within(&mut socket, Duration::from_millis(100)).is_err();
        if reply.status == 503 && still_holding {
            assert_eq!(reply.header("retry-after"), Some("1"), "{}", reply.text);
            holding = Some(socket);
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let holding = holding.expect("a body over the budget beside a held one got 503");
    // Small bodies still fit beside it.
    assert_eq!(gateway.chat(&chat_body("m", false)).status, 200);
    drop(holding);
    wait_until(PATIENCE, "the budget is given back when that request ends", || {
        gateway
            .post_raw(
                "/v1/chat/completions",
                &[("authorization", &format!("Bearer {TOKEN}"))],
                &vec![b' '; 20000],
            )
            .status
            == 400
    });
}

/// An upstream answer that dribbles blank lines for a minute: nothing a reader of the
/// answer can use, but enough to keep every per-read timeout from firing.
fn dribble(lines: usize, then: &serde_json::Value) -> FakeReply {
    let mut script: Vec<String> = vec![String::new(); lines];
    script.push(then.to_string());
    FakeReply::Ndjson(Ndjson { lines: script, delay: Duration::from_millis(100), gate: None })
}

/// Sends a chat request on a new connection, without reading anything back.
fn send_chat(gateway: &Gateway, stream: bool) -> TcpStream {
    let mut socket = connect(gateway);
    let body = chat_body("m", stream).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).expect("send");
    socket
}

/// A client that leaves a non-stream request while upstream is still answering makes the
/// gateway close the upstream connection (which stops the generation and its quota spend),
/// instead of reading the answer to its end.
#[test]
fn a_client_that_leaves_a_plain_request_stops_the_upstream() {
    let fake = Fake::start(|_| dribble(600, &chat_answer("late")));
    let gateway = gateway_over(&fake, "");
    let socket = send_chat(&gateway, false);
    wait_until(PATIENCE, "the upstream answer has started", || {
        fake.streams().first().is_some_and(|s| s.written() > 2)
    });
    drop(socket);
    let left = Instant::now();
    wait_until(PATIENCE, "the upstream connection is closed", || fake.streams()[0].failed());
    let stream = &fake.streams()[0];
    assert!(stream.written() < 600, "the whole answer was read");
    assert!(left.elapsed() < Duration::from_secs(10), "{:?}", left.elapsed());
    gateway.wait_for_log(&["status=499"]);
    // Not the key's fault: the next request uses it as before.
    assert_eq!(fake.count(), 1);
}

/// The same for a stream still waiting for its first token.
#[test]
fn a_client_that_leaves_a_stream_before_its_first_token_stops_the_upstream() {
    let fake = Fake::start(|_| dribble(600, &content_line("late")));
    let gateway = gateway_over(&fake, "");
    let conn = send_chat(&gateway, true);
    wait_until(PATIENCE, "the upstream answer has started", || {
        fake.streams().first().is_some_and(|s| s.written() > 2)
    });
    drop(conn);
    wait_until(PATIENCE, "the upstream connection is closed", || fake.streams()[0].failed());
    assert!(fake.streams()[0].written() < 600);
    gateway.wait_for_log(&["status=499"]);
}

/// `request_timeout_secs` bounds the whole upstream exchange: an upstream that keeps every
/// per-read timeout from firing still ends within it, with 504 (or, once a stream has
/// started, an error event).
#[test]
fn request_timeout_bounds_an_upstream_that_never_finishes() {
    let fake = Fake::start(|recorded| match recorded.wants_stream() {
        true => {
            let mut lines = vec![content_line("Hi").to_string()];
            lines.extend(vec![String::new(); 600]);
            lines.push(done_line("stop", 1, 1).to_string());
            FakeReply::Ndjson(Ndjson { lines, delay: Duration::from_millis(100), gate: None })
        }
        false => dribble(600, &chat_answer("late")),
    });
    let gateway = gateway_over(&fake, "[upstream]\nidle_timeout_secs = 5\nrequest_timeout_secs = 2");
    let started = Instant::now();
    let reply = gateway.chat(&chat_body("m", false));
    assert_eq!(reply.status, 504, "{}", reply.text);
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let started = Instant::now();
    let events = gateway.stream("/v1/chat/completions", Some(TOKEN), &chat_body("m", true));
    let last = &events.last().expect("events").1;
    assert!(last.contains("\"error\""), "the stream ends with an error event: {events:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

/// A raw upstream that answers one chat per connection, with a keep-alive answer, then
/// closes the connection while the gateway has it pooled (an upstream's idle timeout, say,
/// or a load balancer's); returns its URL and the count of connections it accepted.
fn closing_upstream(answer: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    );
    thread::spawn(move || {
        for mut socket in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            // The head and a Content-Length body arrive together or nearly so: read until
            // the body is in (bounded by a read timeout), answer, close.
            let _ = socket.set_read_timeout(Some(PATIENCE));
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = socket.read(&mut buffer) {
                request.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&request);
                let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
                let length = head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|n| n.trim().to_string())
                    })
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    break;
                }
            }
            let _ = socket.write_all(answer.as_bytes());
            drop(socket);
        }
    });
    (url, accepted)
}

#[test]
fn an_upstream_that_closes_pooled_connections_is_reconnected_without_blaming_its_key() {
    let answer = serde_json::to_string(&chat_answer("Hi")).unwrap();
    let (url, accepted) = closing_upstream(&answer);
    let gateway = Gateway::start(&alice(), &format!("{url}|{KEY_A}\n"));
    for round in 1..=3 {
        // Long enough for the close to have reached the gateway's pooled connection.
        thread::sleep(Duration::from_millis(200));
        let reply = gateway.chat(&chat_body("llama3.2", false));
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text);
        assert_eq!(reply.body["choices"][0]["message"]["content"], "Hi", "round {round}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3, "a fresh connection per request");
    // Each request's log line is written once its answer is out: wait for the third.
    gateway.wait_for_log(&["00000004 POST"]);
    let logs = gateway.logs();
    assert_eq!(logs.matches(" attempts=1 ").count(), 3, "each request took one attempt:\n{logs}");
}
