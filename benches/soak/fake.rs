//! The fake Ollama: a raw `TcpListener`, a thread per connection, HTTP/1.1 keep-alive,
//! `/api/chat` (whole or NDJSON streams), `/api/tags`, `/api/version`, `/api/usage`.
//!
//! About one chat in six gets a fault chosen at random (see [`FAULTS`]); a marker in the
//! user message (`soak:lines=…;gap=…;delay=…;faults=…`) shapes the answer, so clients that
//! need a known answer (the hang-ups) turn faults off.

use crate::*;

const NATIVE_REPLY: &str = r#"{"model":"m","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant","content":"Hello!"},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":3}"#;
const CONTENT_LINE: &str = "{\"model\":\"m\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"tok\"},\"done\":false}\n";
const DONE_LINE: &str = "{\"model\":\"m\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":5,\"eval_count\":20}\n";
const TAGS: &str = r#"{"models":[{"name":"m","model":"m","modified_at":"2024-01-01T00:00:00Z","size":1,"digest":"0","details":{}}]}"#;
const GARBAGE: &str = "<html><body>502 Bad Gateway</body></html>\n";

/// A fault the fake injects into one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// 429 naming the session limit, with `Retry-After: 2` (the key rests 2 s, not 5 h).
    Quota,
    /// 429 naming a usage limit, no window: the key rests `cooldown_secs`.
    QuotaNoWindow,
    /// 503 "Server overloaded" with `Retry-After: 1`.
    Overloaded,
    /// 503 "Server overloaded" without: the key backs off 30 s.
    OverloadedNoRetry,
    /// 500.
    ServerError,
    /// The connection closed in the middle of the answer.
    CloseMidway,
    /// No bytes for longer than the gateway's idle timeout.
    Stall,
    /// Garbage instead of JSON.
    Garbage,
    /// 401: the key is set aside until a reload's recheck finds it good.
    Unauthorized,
}

/// Each fault's chance, per 10,000 answers: about one in six in all. Faults that rest a key
/// for long are rare, or every key would rest at once.
const FAULTS: [(Fault, u32, &str); 9] = [
    (Fault::Quota, 100, "429 session quota (Retry-After 2)"),
    (Fault::QuotaNoWindow, 50, "429 usage limit (cooldown)"),
    (Fault::Overloaded, 100, "503 overloaded (Retry-After 1)"),
    (Fault::OverloadedNoRetry, 5, "503 overloaded (30 s back-off)"),
    (Fault::ServerError, 250, "500"),
    (Fault::CloseMidway, 250, "closed mid-answer"),
    (Fault::Stall, 150, "stalled past idle_timeout"),
    (Fault::Garbage, 150, "garbage instead of JSON"),
    (Fault::Unauthorized, 5, "401"),
];

impl Fault {
    pub fn pick() -> Fault {
        let mut roll = fastrand::u32(0..10_000);
        for (fault, chance, _) in FAULTS {
            if roll < chance {
                return fault;
            }
            roll -= chance;
        }
        Fault::None
    }
}

/// How the fake answers a chat, written into the user message by the client.
#[derive(Debug, Clone, Copy)]
pub struct Marker {
    pub lines: u32,
    pub gap_ms: u64,
    pub delay_ms: u64,
    pub faults: bool,
}

impl Marker {
    /// An ordinary chat: 3–12 lines 5–30 ms apart; one in 30 too long for request_timeout.
    pub fn random(faults: bool) -> Marker {
        match fastrand::u32(0..30) {
            0 => Marker { lines: 70, gap_ms: 90, delay_ms: 0, faults },
            _ => Marker { lines: fastrand::u32(3..13), gap_ms: fastrand::u64(5..31), delay_ms: 0, faults },
        }
    }

    /// The marker inside a request body, or the default one.
    pub fn find(body: &[u8]) -> Marker {
        let mut marker = Marker { lines: 5, gap_ms: 10, delay_ms: 0, faults: true };
        let Some(at) = body.windows(5).position(|window| window == b"soak:") else {
            return marker;
        };
        let rest = &body[at + 5..];
        let end =
            rest.iter().position(|b| !(b.is_ascii_alphanumeric() || b"=;".contains(b))).unwrap_or(rest.len());
        for field in String::from_utf8_lossy(&rest[..end]).split(';') {
            let Some((name, value)) = field.split_once('=') else { continue };
            let value: u64 = value.parse().unwrap_or(0);
            match name {
                "lines" => marker.lines = value as u32,
                "gap" => marker.gap_ms = value,
                "delay" => marker.delay_ms = value,
                "faults" => marker.faults = value == 1,
                _ => {}
            }
        }
        marker
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Marker { lines, gap_ms, delay_ms, faults } = self;
        write!(f, "soak:lines={lines};gap={gap_ms};delay={delay_ms};faults={}", u8::from(*faults))
    }
}

/// What the fake did, for the report.
#[derive(Default)]
struct FakeCounts {
    requests: AtomicU64,
    faults: [AtomicU64; FAULTS.len()],
    /// Writes that failed: the gateway hung up on an answer (client gone, timeout, garbage).
    aborted: AtomicU64,
}

/// The fake Ollama's address and counts.
pub struct Fake {
    pub addr: SocketAddr,
    counts: Arc<FakeCounts>,
}

impl Fake {
    /// Starts the fake on 127.0.0.1, a thread per connection.
    pub fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Ollama");
        let addr = listener.local_addr().expect("the fake Ollama's address");
        let counts = Arc::new(FakeCounts::default());
        let serving = Arc::clone(&counts);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = Arc::clone(&serving);
                spawn_small(move || serve_fake_connection(stream, &counts));
            }
        });
        Fake { addr, counts }
    }

    pub fn print(&self) {
        let counts = &self.counts;
        println!("fake upstream: {} requests, faults injected:", counts.requests.load(Relaxed));
        for ((_, _, name), count) in FAULTS.iter().zip(&counts.faults) {
            println!("  {name:<40}{:>8}", count.load(Relaxed));
        }
        println!("  {:<40}{:>8}", "answers the gateway hung up on", counts.aborted.load(Relaxed));
        println!();
    }
}

fn serve_fake_connection(stream: TcpStream, counts: &FakeCounts) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // ureq keeps idle connections up to 15 s; the fake lets go later than that.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader)? {
        let mut body = vec![0; head.content_length.unwrap_or(0).min(1 << 20)];
        reader.read_exact(&mut body)?;
        counts.requests.fetch_add(1, Relaxed);
        let path = head.first_line.split(' ').nth(1).unwrap_or("").to_string();
        let out = &mut reader.get_ref();
        let keep = match path.as_str() {
            "/api/chat" => {
                let marker = Marker::find(&body);
                thread::sleep(Duration::from_millis(marker.delay_ms));
                let fault = if marker.faults { Fault::pick() } else { Fault::None };
                if let Some(index) = FAULTS.iter().position(|(f, ..)| *f == fault) {
                    counts.faults[index].fetch_add(1, Relaxed);
                }
                match contains(&body, b"\"stream\":true") {
                    true => fake_stream(out, fault, marker),
                    false => fake_plain(out, fault, NATIVE_REPLY),
                }
            }
            "/api/tags" => fake_plain(out, Fault::pick(), TAGS),
            "/api/version" => fake_plain(out, Fault::None, r#"{"version":"0.12.0"}"#),
            "/api/usage" | "/api/show" => fake_plain(out, Fault::None, "{}"),
            _ => respond(out, 404, r#"{"error":"not found"}"#, None).map(|()| true),
        };
        match keep {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                counts.aborted.fetch_add(1, Relaxed);
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The error answer of a status fault: status, message, `Retry-After`.
fn fault_status(fault: Fault) -> Option<(u16, &'static str, Option<u64>)> {
    Some(match fault {
        Fault::Quota => (429, "you (soak) have reached your session usage limit, please wait", Some(2)),
        Fault::QuotaNoWindow => (429, "you (soak) have reached your usage limit", None),
        Fault::Overloaded => (503, "Server overloaded, please retry shortly", Some(1)),
        Fault::OverloadedNoRetry => (503, "Server overloaded, please retry shortly", None),
        Fault::ServerError => (500, "internal server error", None),
        Fault::Unauthorized => (401, "unauthorized", None),
        Fault::None | Fault::CloseMidway | Fault::Stall | Fault::Garbage => return None,
    })
}

/// A whole answer with Content-Length, or `fault`; whether the connection can go on.
fn fake_plain(out: &mut &TcpStream, fault: Fault, ok: &str) -> io::Result<bool> {
    if let Some((status, text, retry_after)) = fault_status(fault) {
        return respond(out, status, &format!("{{\"error\":\"{text}\"}}"), retry_after).map(|()| true);
    }
    match fault {
        Fault::CloseMidway => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                ok.len()
            );
            out.write_all(head.as_bytes())?;
            out.write_all(&ok.as_bytes()[..ok.len() / 2])?;
            Ok(false)
        }
        Fault::Stall => {
            thread::sleep(STALL);
            respond(out, 200, ok, None).map(|()| false)
        }
        Fault::Garbage => respond(out, 200, GARBAGE, None).map(|()| true),
        _ => respond(out, 200, ok, None).map(|()| true),
    }
}

/// A chunked NDJSON answer of `marker.lines` lines and a done line, `marker.gap_ms` apart,
/// with `fault` before the head (status faults, half the stalls) or after the first line.
fn fake_stream(out: &mut &TcpStream, fault: Fault, marker: Marker) -> io::Result<bool> {
    let midway = match fault {
        Fault::None | Fault::CloseMidway | Fault::Garbage => true,
        Fault::Stall => fastrand::bool(),
        _ => false,
    };
    if !midway {
        return fake_plain(out, fault, NATIVE_REPLY);
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    out.write_all(head.as_bytes())?;
    let (start, gap) = (Instant::now(), Duration::from_millis(marker.gap_ms));
    for index in 0..=marker.lines {
        thread::sleep((start + gap * index).saturating_duration_since(Instant::now()));
        if index == 1 {
            match fault {
                Fault::CloseMidway => return Ok(false),
                Fault::Stall => thread::sleep(STALL),
                Fault::Garbage => chunk(out, GARBAGE)?,
                _ => {}
            }
        }
        chunk(out, if index < marker.lines { CONTENT_LINE } else { DONE_LINE })?;
    }
    out.write_all(b"0\r\n\r\n")?;
    Ok(fault == Fault::None)
}

pub fn chunk(out: &mut &TcpStream, line: &str) -> io::Result<()> {
    out.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
}

fn respond(out: &mut &TcpStream, status: u16, body: &str, retry_after: Option<u64>) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let retry = retry_after.map_or(String::new(), |secs| format!("Retry-After: {secs}\r\n"));
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n{retry}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())
}
