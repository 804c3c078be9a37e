//! A minimal HTTP/1.1 client over `TcpStream`: Content-Length and chunked bodies, an
//! optional hang-up after some chunks, and failures that say whether the connection was new
//! and met a burst. The fake shares its head parser.

use crate::*;

pub use crate::wire::read_head;

pub fn parse_status(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.")?.split(' ').nth(1)?.parse().ok()
}

/// `{verb} {path}` with the token (when given) and one more header line, ending the head.
pub fn request_head(verb: &str, path: &str, token: Option<&str>, header: &str) -> String {
    let auth = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    format!(
        "{verb} {path} HTTP/1.1\r\nHost: soak\r\n{auth}Content-Type: application/json\r\n{header}\r\n\r\n"
    )
}

pub fn post(path: &str, token: Option<&str>, body: &str) -> Vec<u8> {
    let mut request = request_head("POST", path, token, &format!("Content-Length: {}", body.len()));
    request.push_str(body);
    request.into_bytes()
}

pub fn post_v1(token: &str, body: &str) -> Vec<u8> {
    post("/v1/chat/completions", Some(token), body)
}

pub fn get(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: soak\r\n{auth}\r\n").into_bytes()
}

pub fn chat_body(stream: bool, marker: Marker) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{marker}"}}],"stream":{stream}}}"#)
}

pub fn native_body(stream: bool, marker: Marker) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{marker}"}}],"stream":{stream}}}"#)
}

/// A whole answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// The client stopped reading on purpose (and dropped the connection).
    pub hung_up: bool,
}

/// A request that got no whole answer.
pub struct Failed {
    pub error: io::Error,
    /// On a new connection (not a kept-alive one).
    pub fresh: bool,
    /// A burst was on at some point since the connect.
    pub met_burst: bool,
    /// The head had arrived: the body broke off.
    pub answered: bool,
}

impl Failed {
    /// A failure on a new connection before any answer.
    pub fn early(error: io::Error, epoch: u64, bursts: &Bursts) -> Failed {
        Failed { error, fresh: true, met_burst: bursts.met_since(epoch), answered: false }
    }
}

/// A kept-alive connection and when it was last used.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
    last_used: Instant,
    epoch: u64,
}

/// One keep-alive connection, reused while fresh, opened again after an error or a close.
pub struct Client {
    addr: SocketAddr,
    pub conn: Option<Conn>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    /// Sends `request` and reads the whole answer; with `hang_after`, hangs up after that
    /// many body chunks.
    pub fn exchange(
        &mut self,
        request: &[u8],
        hang_after: Option<usize>,
        bursts: &Bursts,
    ) -> Result<Answer, Failed> {
        let fresh = self.conn.as_ref().is_none_or(|conn| conn.last_used.elapsed() >= REUSE_WITHIN);
        let mut conn = match self.conn.take() {
            Some(conn) if !fresh => conn,
            _ => {
                let epoch = bursts.epoch();
                let connected =
                    TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).and_then(|stream| {
                        stream.set_nodelay(true)?;
                        stream.set_read_timeout(Some(READ_TIMEOUT))?;
                        stream.set_write_timeout(Some(READ_TIMEOUT))?;
                        Ok(stream)
                    });
                let stream = connected.map_err(|error| Failed::early(error, epoch, bursts))?;
                Conn { reader: BufReader::new(stream), last_used: Instant::now(), epoch }
            }
        };
        let mut answered = false;
        let result = send(&mut conn.reader, request, hang_after, &mut answered);
        match result {
            Ok((answer, close)) => {
                if !close && !answer.hung_up {
                    conn.last_used = Instant::now();
                    self.conn = Some(conn);
                }
                Ok(answer)
            }
            Err(error) => Err(Failed { error, fresh, met_burst: bursts.met_since(conn.epoch), answered }),
        }
    }
}

/// One request and its answer on an open connection, and whether the connection closes.
fn send(
    conn: &mut BufReader<TcpStream>,
    request: &[u8],
    hang_after: Option<usize>,
    answered: &mut bool,
) -> io::Result<(Answer, bool)> {
    conn.get_ref().write_all(request)?;
    let head = read_head(conn)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering"))?;
    *answered = true;
    let status = parse_status(head.first_line.as_bytes())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.first_line.clone()))?;
    let mut answer = Answer { status, body: Vec::new(), hung_up: false };
    if head.chunked {
        let (mut chunks, started) = (0, Instant::now());
        let completed = read_chunks(conn, &mut |piece| {
            answer.body.extend_from_slice(piece);
            chunks += 1;
            hang_after.is_none_or(|after| chunks < after) && started.elapsed() < ANSWER_LIMIT
        })?;
        if !completed && hang_after.is_none_or(|after| chunks < after) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the answer went on past ANSWER_LIMIT"));
        }
        answer.hung_up = !completed;
    } else {
        answer.body = vec![0; head.content_length.unwrap_or(0)];
        conn.read_exact(&mut answer.body)?;
    }
    Ok((answer, head.close))
}

/// Reads a chunked body, passing each chunk to `sink`; stops early (returning false) when
/// `sink` says so.
fn read_chunks(reader: &mut impl BufRead, sink: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<bool> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed inside a chunked body"));
        }
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
        if size == 0 {
            line.clear();
            while reader.read_line(&mut line)? > 0 && !line.trim_end().is_empty() {
                line.clear(); // trailers
            }
            return Ok(true);
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if !sink(&chunk[..size]) {
            return Ok(false);
        }
    }
}
