//! The client threads: each picks a kind of action at random, performs it against the
//! gateway, and records the judged outcome; all pause together in the schedule's gaps.
//!
//! Ordinary requests go through `http::Client` (a keep-alive connection reused while it is
//! fresh); the misbehaving clients (slow heads and bodies, idle connections, early hang-ups)
//! drive their own sockets here.

use crate::*;

pub fn client_loop(shared: &Shared) {
    let mut client = Client::new(shared.addr);
    while shared.schedule.wait_turn(&shared.stop) {
        let kind = Kind::pick();
        let judged = act(kind, &mut client, shared);
        shared.stats.record(kind, &judged);
        thread::sleep(Duration::from_millis(fastrand::u64(0..40)));
    }
}

fn act(kind: Kind, client: &mut Client, shared: &Shared) -> Judged {
    let bursts = &shared.bursts;
    let faulty = || Marker::random(true);
    let exchange = |client: &mut Client, request: Vec<u8>, hang_after: Option<usize>| match client
        .exchange(&request, hang_after, bursts)
    {
        Ok(answer) => judge_answer(kind, &answer),
        Err(failed) => judge_failure(&failed),
    };
    match kind {
        Kind::Stream => exchange(client, post_v1(TOKEN, &chat_body(true, faulty())), None),
        Kind::Chat => exchange(client, post_v1(TOKEN, &chat_body(false, faulty())), None),
        Kind::Native => exchange(client, post("/api/chat", Some(TOKEN), &native_body(false, faulty())), None),
        Kind::NativeStream => {
            exchange(client, post("/api/chat", Some(TOKEN), &native_body(true, faulty())), None)
        }
        Kind::Models => exchange(client, get("/v1/models", Some(TOKEN)), None),
        Kind::Health => exchange(client, get("/health", None), None),
        Kind::BadToken => {
            let body = chat_body(false, faulty());
            let request = match fastrand::bool() {
                false => post("/v1/chat/completions", None, &body),
                // Wrong tokens come through the trusted proxy (see the config) from one of
                // 256 forwarded addresses: each stays under the lock-out's 20 a minute,
                // while the table of addresses is kept busy.
                true => {
                    let from = format!("X-Forwarded-For: 198.51.100.{}\r\n", fastrand::u8(..));
                    let head = format!("{from}Content-Length: {}", body.len());
                    let mut request =
                        request_head("POST", "/v1/chat/completions", Some("sk-wrong-token"), &head);
                    request.push_str(&body);
                    request.into_bytes()
                }
            };
            exchange(client, request, None)
        }
        Kind::BadJson => {
            let body = [r#"{"model":"m","messages":[{"role":"user""#, r#"{"model":7,"messages":"no"}"#]
                [fastrand::usize(0..2)];
            exchange(client, post_v1(TOKEN, body), None)
        }
        Kind::Oversized => {
            // Only the head: the gateway answers from the declared length.
            let head = request_head("POST", "/v1/chat/completions", Some(TOKEN), "Content-Length: 100000");
            exchange(client, head.into_bytes(), None)
        }
        Kind::OversizedChunked => oversized_chunked(shared),
        Kind::HangMidStream => {
            let marker = Marker { lines: 30, gap_ms: 40, delay_ms: 0, faults: false };
            exchange(client, post_v1(TOKEN, &chat_body(true, marker)), Some(3))
        }
        Kind::HangBeforeFirst => hang_before_first(shared),
        Kind::SlowHead => slow_head(shared),
        Kind::SlowBody => slow_body(shared),
        Kind::IdleKeepAlive => idle_keep_alive(shared),
        Kind::Burst => Judged::ok(Outcome::Accepted),
    }
}

/// A body past max_body_bytes in chunks, with no declared length: 413 once the gateway has
/// read past the limit. It closes the connection with the rest unread, so the client may
/// see a reset instead of the 413 (TCP's rule for unread data), which is also fine.
fn oversized_chunked(shared: &Shared) -> Judged {
    let mut request = request_head("POST", "/v1/chat/completions", Some(TOKEN), "Transfer-Encoding: chunked");
    let chunk = vec![b'a'; 8192];
    for _ in 0..(MAX_BODY / chunk.len() + 2) {
        request.push_str(&format!("{:x}\r\n{}\r\n", chunk.len(), String::from_utf8_lossy(&chunk)));
    }
    request.push_str("0\r\n\r\n");
    match Client::new(shared.addr).exchange(request.as_bytes(), None, &shared.bursts) {
        Ok(answer) => judge_answer(Kind::OversizedChunked, &answer),
        Err(failed) if !failed.answered && failed.error.kind() == io::ErrorKind::ConnectionReset => {
            Judged::ok(Outcome::Error("reset after the body (413 lost)"))
        }
        Err(failed) => judge_failure(&failed),
    }
}

/// A streamed chat whose first token comes after 1.5 s; the client hangs up at 0.4 s.
fn hang_before_first(shared: &Shared) -> Judged {
    let marker = Marker { lines: 5, gap_ms: 20, delay_ms: 1500, faults: false };
    let request = post_v1(TOKEN, &chat_body(fastrand::bool(), marker));
    let (mut stream, epoch) = match connect(shared) {
        Ok(connected) => connected,
        Err(judged) => return judged,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(400)));
    let mut first = [0; 64];
    let result = stream.write_all(&request).and_then(|()| stream.read(&mut first));
    match result {
        Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Judged::ok(Outcome::HungUp)
        }
        // Something answered early: an empty pool's 429, say.
        Ok(n) if n > 0 => match parse_status(&first[..n]) {
            Some(status) if UPSTREAM_STATUSES.contains(&status) && status != 200 => {
                Judged::ok(Outcome::Status(status))
            }
            _ => Judged::new(Outcome::BadBody, false, String::from_utf8_lossy(&first[..n])),
        },
        Ok(_) => judge_failure(&Failed::early(io::ErrorKind::UnexpectedEof.into(), epoch, &shared.bursts)),
        Err(err) => judge_failure(&Failed::early(err, epoch, &shared.bursts)),
    }
}

/// A request head trickled a byte every 250 ms: the gateway must close the connection (or
/// answer 408) once `header_timeout_secs` have passed since the connect.
fn slow_head(shared: &Shared) -> Judged {
    let (stream, _) = match connect(shared) {
        Ok(connected) => connected,
        Err(judged) => return judged,
    };
    let mut head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nX-Padding: ".iter().cycle();
    trickle(stream, Duration::from_secs(HEADER_TIMEOUT + 2), || vec![*head.next().unwrap_or(&b'a')])
}

/// A whole head, then a body at 256 bytes a second, under `min_body_bytes_per_sec` (1024):
/// 408 or a close once the grace (`header_timeout_secs`) and the rate are used up, ~2.7 s.
fn slow_body(shared: &Shared) -> Judged {
    let (mut stream, _) = match connect(shared) {
        Ok(connected) => connected,
        Err(judged) => return judged,
    };
    let head = request_head("POST", "/v1/chat/completions", Some(TOKEN), "Content-Length: 20000");
    if let Err(err) = stream.write_all(head.as_bytes()) {
        return Judged::new(Outcome::Error("connection reset"), false, err.to_string());
    }
    trickle(stream, Duration::from_secs(HEADER_TIMEOUT + 4), || vec![b' '; 64])
}

/// Writes `next()` every 250 ms until the gateway closes the connection or answers; judges
/// the time against `limit`.
fn trickle(mut stream: TcpStream, limit: Duration, mut next: impl FnMut() -> Vec<u8>) -> Judged {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let mut answer = [0; 256];
    loop {
        let elapsed = started.elapsed();
        if elapsed > limit + Duration::from_secs(3) {
            return Judged::new(Outcome::NotClosed, false, format!("still open after {elapsed:.1?}"));
        }
        let read = match stream.write_all(&next()) {
            Ok(()) => stream.read(&mut answer),
            Err(err) => Err(err),
        };
        let in_time = |outcome| match started.elapsed() <= limit {
            true => Judged::ok(outcome),
            false => Judged::new(Outcome::NotClosed, false, format!("closed late, after {elapsed:.1?}")),
        };
        match read {
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Ok(0) | Err(_) => return in_time(Outcome::Closed),
            Ok(n) => {
                return match parse_status(&answer[..n]) {
                    Some(408) => in_time(Outcome::Status(408)),
                    _ => Judged::new(Outcome::BadBody, false, String::from_utf8_lossy(&answer[..n])),
                }
            }
        }
    }
}

/// One `GET /health`, then the connection left idle: the gateway must close it after
/// `client_timeout_secs`.
fn idle_keep_alive(shared: &Shared) -> Judged {
    let mut client = Client::new(shared.addr);
    let request = get("/health", None);
    let answer = match client.exchange(&request, None, &shared.bursts) {
        Ok(answer) => answer,
        Err(failed) => return judge_failure(&failed),
    };
    let Some(conn) = client.conn.take().filter(|_| answer.status == 200) else {
        return judge_answer(Kind::Health, &answer);
    };
    let started = Instant::now();
    let limit = Duration::from_secs(CLIENT_TIMEOUT) + Duration::from_millis(1500);
    let _ = conn.reader.get_ref().set_read_timeout(Some(limit + Duration::from_secs(2)));
    let mut reader = conn.reader;
    let read = reader.read(&mut [0; 64]);
    let elapsed = started.elapsed();
    match read {
        Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Judged::new(Outcome::NotClosed, false, format!("still open after {elapsed:.1?}"))
        }
        Ok(0) | Err(_) if elapsed <= limit => Judged::ok(Outcome::Closed),
        Ok(0) | Err(_) => Judged::new(Outcome::NotClosed, false, format!("closed late, after {elapsed:.1?}")),
        Ok(n) => Judged::new(Outcome::BadBody, false, format!("{n} unasked-for bytes on an idle connection")),
    }
}

/// A fresh connection with a write timeout, and the burst epoch at the connect.
pub fn connect(shared: &Shared) -> Result<(TcpStream, u64), Judged> {
    let epoch = shared.bursts.epoch();
    let stream = TcpStream::connect_timeout(&shared.addr, Duration::from_secs(5))
        .map_err(|err| judge_failure(&Failed::early(err, epoch, &shared.bursts)))?;
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    Ok((stream, epoch))
}
