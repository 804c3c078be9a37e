//! What a client does and what came of it: the kinds of action, their outcomes, and the
//! judgement of an answer or a failure against what each kind allows.
//!
//! Pure: no sockets here. `traffic` performs the actions; `report` counts the outcomes.

use crate::*;

/// What a client does, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Stream,
    Chat,
    Native,
    NativeStream,
    Models,
    Health,
    BadToken,
    BadJson,
    Oversized,
    OversizedChunked,
    HangMidStream,
    HangBeforeFirst,
    SlowHead,
    SlowBody,
    IdleKeepAlive,
    Burst,
}

/// How often each kind is picked, out of their sum. Bursts are the chaos thread's.
const WEIGHTS: [(Kind, u32); 15] = [
    (Kind::Stream, 20),
    (Kind::Chat, 20),
    (Kind::Native, 6),
    (Kind::NativeStream, 6),
    (Kind::Models, 6),
    (Kind::Health, 5),
    (Kind::BadToken, 4),
    (Kind::BadJson, 4),
    (Kind::Oversized, 2),
    (Kind::OversizedChunked, 2),
    (Kind::HangMidStream, 4),
    (Kind::HangBeforeFirst, 4),
    (Kind::SlowHead, 2),
    (Kind::SlowBody, 2),
    (Kind::IdleKeepAlive, 2),
];

impl Kind {
    pub fn pick() -> Kind {
        let mut roll = fastrand::u32(0..WEIGHTS.iter().map(|(_, weight)| weight).sum());
        for (kind, weight) in WEIGHTS {
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        Kind::Health
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Stream => "v1 chat, stream",
            Kind::Chat => "v1 chat",
            Kind::Native => "api/chat",
            Kind::NativeStream => "api/chat, stream",
            Kind::Models => "v1/models",
            Kind::Health => "health",
            Kind::BadToken => "wrong token",
            Kind::BadJson => "malformed JSON",
            Kind::Oversized => "oversized, declared",
            Kind::OversizedChunked => "oversized, chunked",
            Kind::HangMidStream => "hang up mid-stream",
            Kind::HangBeforeFirst => "hang up before 1st token",
            Kind::SlowHead => "slow head",
            Kind::SlowBody => "slow body",
            Kind::IdleKeepAlive => "idle keep-alive",
            Kind::Burst => "burst connection",
        }
    }
}

/// What came of one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A whole answer with this status (for a 200 of a stream, see the stream outcomes).
    Status(u16),
    /// A 200 stream (or native answer) that ended with its done event.
    StreamDone,
    /// A 200 stream that ended with an error event: an upstream fault after the first byte.
    StreamError,
    /// A 200 stream that ended with neither: the gateway promises this never happens.
    StreamCut,
    /// A 200 answer whose body is not what the route answers.
    BadBody,
    /// The gateway's own 500 (a handler panicked).
    Panic,
    /// We hung up on purpose.
    HungUp,
    /// The gateway closed the connection, as it must for a slow or idle client.
    Closed,
    /// The gateway left a slow or idle client's connection open past its timeout.
    NotClosed,
    /// A burst connection the gateway closed at once (past max_connections).
    Refused,
    /// A burst connection the gateway took.
    Accepted,
    /// A burst that met fewer refusals than it went past max_connections.
    NotLimited,
    /// A client-side error: connect refused, reset, closed before answering, timeout.
    Error(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(status) => write!(f, "{status}"),
            Outcome::StreamDone => f.write_str("200, done"),
            Outcome::StreamError => f.write_str("200, ended by an error event"),
            Outcome::StreamCut => f.write_str("200, cut short (no done, no error)"),
            Outcome::BadBody => f.write_str("200, body not the route's JSON"),
            Outcome::Panic => f.write_str("500 from a gateway panic"),
            Outcome::HungUp => f.write_str("hung up (on purpose)"),
            Outcome::Closed => f.write_str("closed by the gateway in time"),
            Outcome::NotClosed => f.write_str("NOT closed by the gateway in time"),
            Outcome::Refused => f.write_str("refused at once"),
            Outcome::Accepted => f.write_str("accepted"),
            Outcome::NotLimited => f.write_str("burst NOT limited"),
            Outcome::Error(what) => f.write_str(what),
        }
    }
}

/// An outcome, whether the action's kind allows it, and what to show when it does not.
pub struct Judged {
    pub outcome: Outcome,
    pub expected: bool,
    pub detail: String,
}

impl Judged {
    pub fn ok(outcome: Outcome) -> Judged {
        Judged { outcome, expected: true, detail: String::new() }
    }

    pub fn new(outcome: Outcome, expected: bool, detail: impl Into<String>) -> Judged {
        Judged { outcome, expected, detail: detail.into() }
    }
}

/// Statuses an inference request may get when upstream faults are injected: success, a
/// refused key passed on, an empty pool or spent quota, the upstream's 500/503, 502 when
/// nothing answered, 504 on a timeout.
pub const UPSTREAM_STATUSES: [u16; 7] = [200, 401, 429, 500, 502, 503, 504];

/// Judges a whole answer against what `kind` allows.
pub fn judge_answer(kind: Kind, answer: &Answer) -> Judged {
    let (status, body) = (answer.status, &answer.body);
    let text = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if status == 500 && contains(body, b"the gateway hit an internal error") {
        return Judged::new(Outcome::Panic, false, text());
    }
    let allowed: &[u16] = match kind {
        Kind::Health => &[200],
        Kind::BadToken => &[401],
        Kind::BadJson => &[400],
        Kind::Oversized | Kind::OversizedChunked => &[413],
        _ => &UPSTREAM_STATUSES,
    };
    if !allowed.contains(&status) {
        return Judged::new(Outcome::Status(status), false, text());
    }
    if status != 200 {
        return Judged::ok(Outcome::Status(status));
    }
    if answer.hung_up {
        return Judged::ok(Outcome::HungUp);
    }
    let has_line = |prefix: &[u8]| body.split(|b| *b == b'\n').any(|line| line.starts_with(prefix));
    match kind {
        Kind::Stream | Kind::HangMidStream => {
            if has_line(b"data: {\"error\"") {
                Judged::ok(Outcome::StreamError)
            } else if has_line(b"data: [DONE]") {
                Judged::ok(Outcome::StreamDone)
            } else {
                Judged::new(Outcome::StreamCut, false, text())
            }
        }
        // Native answers pass through unchanged, garbage included; the gateway adds an
        // error line when the upstream breaks off.
        Kind::Native | Kind::NativeStream => {
            if has_line(b"{\"error\"") {
                Judged::ok(Outcome::StreamError)
            } else if contains(body, b"\"done\":true") {
                Judged::ok(Outcome::StreamDone)
            } else if contains(body, b"<html>") {
                Judged::ok(Outcome::BadBody)
            } else {
                Judged::new(Outcome::StreamCut, false, text())
            }
        }
        _ => {
            let wanted: &[u8] = match kind {
                Kind::Chat => b"\"choices\"",
                Kind::Models => b"\"data\"",
                _ => b"\"status\"",
            };
            match contains(body, wanted) {
                true => Judged::ok(Outcome::Status(200)),
                false => Judged::new(Outcome::BadBody, false, text()),
            }
        }
    }
}

/// Judges a request that got no whole answer. A fresh connection closed at once during a
/// burst was refused for max_connections, as it should be; anything else is a failure.
pub fn judge_failure(failed: &Failed) -> Judged {
    let detail = format!("{} ({})", failed.error, if failed.fresh { "new connection" } else { "kept-alive" });
    if failed.answered {
        return Judged::new(Outcome::Error("broken off mid-answer"), false, detail);
    }
    if failed.fresh && failed.met_burst && !matches!(failed.error.kind(), io::ErrorKind::TimedOut) {
        return Judged::ok(Outcome::Error("refused during a burst"));
    }
    let what = match failed.error.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused",
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            "connection reset"
        }
        io::ErrorKind::UnexpectedEof => "closed before answering",
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "client timed out",
        _ => "other client error",
    };
    Judged::new(Outcome::Error(what), false, detail)
}
