//! Strict HTTP/1.1 framing (RFC 9112) in the vendored tiny_http, seen from a client.
//!
//! Behind a front proxy, any request whose end the proxy and the gateway could place
//! differently lets one request hide another (request smuggling). Each such request here is
//! sent raw, followed by a smuggled `GET`, and must get exactly one answer, a `400`, then
//! the connection closed, with nothing sent upstream. A malformed head is refused by
//! tiny_http itself; a malformed chunked body is found while the gateway reads it, and
//! answered by the gateway. Well-framed bodies keep working, pipelined requests after them
//! included.

use crate::fake::{healthy, Fake};
use crate::util::{alice, Gateway, KEY_A, PATIENCE, TOKEN};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

/// A request the gateway must never see: it follows each bad request on its connection.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn gateway_over(fake: &Fake) -> Gateway {
    Gateway::start(&alice(), &format!("{}|{KEY_A}\n", fake.url))
}

/// A chat request with these framing headers (`\r\n`-separated) and this raw body.
fn chat(framing: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n{body}"
    )
}

/// The message content of [`body`]: upstream sees it only if the whole body was read.
const CONTENT: &str = "the whole of a well-framed body";

/// A valid chat body, as JSON text.
fn body() -> String {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": CONTENT}]}).to_string()
}

/// The chat body as a chunked body: two chunks and the last chunk, with `size` written as
/// the first chunk's size line.
fn chunked_with_size_line(size: &str) -> String {
    let body = body();
    let (first, rest) = body.split_at(5);
    format!("{size}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n", rest.len())
}

/// What came back on a connection, read until the gateway closed it.
struct Exchange {
    answer: String,
    /// `Err` when the connection was still open after [`PATIENCE`].
    closed: Result<(), String>,
}

/// Sends `raw`, half-closes (as a client that has nothing more to send), and reads until the
/// gateway closes the connection or [`PATIENCE`] runs out.
fn exchange(gateway: &Gateway, raw: &[u8]) -> Exchange {
    let mut socket = TcpStream::connect(&gateway.addr).expect("connect to the gateway");
    socket.set_write_timeout(Some(PATIENCE)).expect("set a write timeout");
    // The gateway may refuse the head and close before reading all of it: what it
    // answered is what counts.
    let _ = socket.write_all(raw);
    let _ = socket.shutdown(Shutdown::Write);
    let deadline = Instant::now() + PATIENCE;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(format!("still open after {PATIENCE:?}"));
        }
        socket.set_read_timeout(Some(left)).expect("set a read timeout");
        match socket.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(read) => answer.extend_from_slice(&buf[..read]),
            // Closed with bytes of ours unread (a refused head's body): a reset, after the
            // answer, which was read first.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break Ok(()),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Err(format!("still open after {PATIENCE:?}"))
            }
            Err(err) => break Err(format!("read failed: {err}")),
        }
    };
    Exchange { answer: String::from_utf8_lossy(&answer).into_owned(), closed }
}

/// `raw`, then [`SMUGGLED`], gets one answer, a 400, then the connection closes, and
/// nothing reaches upstream.
#[track_caller]
fn assert_refused(raw: &str) {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake);
    let exchange = exchange(&gateway, format!("{raw}{SMUGGLED}").as_bytes());
    let context = format!("request: {raw:?}\nanswer: {:?}", exchange.answer);
    assert!(exchange.answer.starts_with("HTTP/1.1 400 "), "not a 400\n{context}");
    eqnice!(1, exchange.answer.matches("HTTP/1.1 ").count(), "one answer only\n{context}");
    eqnice!(Ok(()), exchange.closed, "the connection closes\n{context}");
    eqnice!(0, fake.count(), "nothing reaches upstream\n{context}");
}

/// One test per refused request, each named after what is wrong with it.
macro_rules! refused {
    ($($(#[$doc:meta])* $name:ident: $raw:expr;)+) => {$(
        $(#[$doc])*
        #[test]
        fn $name() {
            assert_refused(&$raw);
        }
    )+};
}

// Body framing, refused from the head: Content-Length and Transfer-Encoding.
refused! {
    /// 0.12.0 let Transfer-Encoding win and kept the connection open.
    content_length_and_transfer_encoding: chat(
        &format!("Content-Length: {}\r\nTransfer-Encoding: chunked", body().len()),
        &chunked_with_size_line("5"),
    );
    transfer_encoding_and_content_length: chat(
        &format!("Transfer-Encoding: chunked\r\nContent-Length: {}", body().len()),
        &chunked_with_size_line("5"),
    );
    /// 0.12.0 took the first.
    two_different_content_lengths: chat(
        &format!("Content-Length: {}\r\nContent-Length: {}", body().len(), body().len() + 1),
        &body(),
    );
    a_content_length_list_that_differs: chat(&format!("Content-Length: {}, 5", body().len()), &body());
    /// 0.12.0 took `+5` as 5.
    a_content_length_with_a_plus_sign: chat(&format!("Content-Length: +{}", body().len()), &body());
    a_content_length_with_a_minus_sign: chat("Content-Length: -5", &body());
    a_content_length_with_a_space_inside: chat("Content-Length: 1 0", &body());
    a_hexadecimal_content_length: chat("Content-Length: 0x10", &body());
    an_empty_content_length: chat("Content-Length:", &body());
    a_content_length_over_u64: chat("Content-Length: 18446744073709551616", &body());
    /// 0.12.0 took any Transfer-Encoding for chunked.
    transfer_encoding_xchunked: chat("Transfer-Encoding: xchunked", &chunked_with_size_line("5"));
    transfer_encoding_chunkedx: chat("Transfer-Encoding: chunkedx", &chunked_with_size_line("5"));
    transfer_encoding_quoted_chunked: chat("Transfer-Encoding: \"chunked\"", &chunked_with_size_line("5"));
    transfer_encoding_chunked_then_identity: chat(
        "Transfer-Encoding: chunked, identity",
        &chunked_with_size_line("5"),
    );
    transfer_encoding_gzip_then_chunked: chat("Transfer-Encoding: gzip, chunked", &chunked_with_size_line("5"));
    two_transfer_encoding_headers: chat(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        &chunked_with_size_line("5"),
    );
}

// Chunked bodies, refused while the gateway reads them.
refused! {
    /// 0.12.0 trimmed the size line.
    a_chunk_size_with_a_leading_space: chat("Transfer-Encoding: chunked", &chunked_with_size_line(" 5"));
    a_chunk_size_with_a_trailing_space: chat("Transfer-Encoding: chunked", &chunked_with_size_line("5 "));
    a_chunk_size_with_a_plus_sign: chat("Transfer-Encoding: chunked", &chunked_with_size_line("+5"));
    a_chunk_size_with_0x: chat("Transfer-Encoding: chunked", &chunked_with_size_line("0x5"));
    an_empty_chunk_size: chat("Transfer-Encoding: chunked", &chunked_with_size_line(""));
    a_chunk_size_over_u64: chat("Transfer-Encoding: chunked", &chunked_with_size_line("10000000000000005"));
    a_chunk_size_line_ending_in_a_bare_lf: chat(
        "Transfer-Encoding: chunked",
        &chunked_with_size_line("5").replacen("\r\n", "\n", 1),
    );
    chunk_data_without_its_crlf: chat(
        "Transfer-Encoding: chunked",
        &chunked_with_size_line("4"),
    );
    an_endless_trailer_line: chat(
        "Transfer-Encoding: chunked",
        &format!("{:x}\r\n{}\r\n0\r\nX-Trailer: {}", body().len(), body(), "a".repeat(20 * 1024)),
    );
    too_many_trailer_lines: chat(
        "Transfer-Encoding: chunked",
        &format!("{:x}\r\n{}\r\n0\r\n{}\r\n", body().len(), body(), "X-Trailer: 1\r\n".repeat(200)),
    );
}

// The head: line ends, field lines, the request line.
refused! {
    /// 0.12.0 kept a bare LF inside the value, where a proxy may see two header lines.
    a_bare_lf_inside_a_header_value: chat(
        &format!("Content-Length: {}\r\nX-Note: a\nTransfer-Encoding: chunked", body().len()),
        &body(),
    );
    a_header_line_ending_in_a_bare_lf: chat(&format!("X-Note: a\nContent-Length: {}", body().len()), &body());
    a_cr_without_lf_in_a_header: chat(&format!("Content-Length: {}\r\nX-Note: a\rb", body().len()), &body());
    a_nul_in_a_header_value: chat(&format!("Content-Length: {}\r\nX-Note: a\0b", body().len()), &body());
    an_obs_fold: chat(&format!("Content-Length: {}\r\nX-Note: a\r\n b", body().len()), &body());
    whitespace_between_a_field_name_and_its_colon: chat(&format!("Content-Length : {}", body().len()), &body());
    an_empty_field_name: chat(&format!("Content-Length: {}\r\n: x", body().len()), &body());
    two_spaces_in_the_request_line: chat(&format!("Content-Length: {}", body().len()), &body())
        .replacen("POST /", "POST  /", 1);
    a_space_after_the_http_version: chat(&format!("Content-Length: {}", body().len()), &body())
        .replacen("HTTP/1.1\r\n", "HTTP/1.1 \r\n", 1);
    a_space_before_the_method: format!(" {}", chat(&format!("Content-Length: {}", body().len()), &body()));
}

/// What a well-framed request followed by a pipelined `GET /health` gets: both served on
/// one connection, and the chat request sent upstream with its whole body.
#[track_caller]
fn assert_served(raw: &str) {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake);
    let health = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let exchange = exchange(&gateway, format!("{raw}{health}").as_bytes());
    let context = format!("request: {raw:?}\nanswer: {:?}", exchange.answer);
    eqnice!(2, exchange.answer.matches("HTTP/1.1 200 ").count(), "two answers, both 200\n{context}");
    eqnice!(Ok(()), exchange.closed, "the connection closes after Connection: close\n{context}");
    let upstream = fake.only_request().raw;
    assert!(upstream.contains(CONTENT), "upstream got {upstream:?}\n{context}");
}

#[test]
fn a_correct_content_length_body_is_served() {
    assert_served(&chat(&format!("Content-Length: {}", body().len()), &body()));
}

#[test]
fn a_correct_chunked_body_is_served() {
    assert_served(&chat("Transfer-Encoding: chunked", &chunked_with_size_line("5")));
}

/// Chunk extensions are skipped and trailers read to their end; case and surrounding
/// spaces of `chunked` do not matter.
#[test]
fn a_chunked_body_with_extensions_and_trailers_is_served() {
    let body = body();
    let chunked = format!(
        "5;name=value\r\n{}\r\n{:X}\r\n{}\r\n0\r\nX-Checksum: 1\r\n\r\n",
        &body[..5],
        body.len() - 5,
        &body[5..]
    );
    assert_served(&chat("Transfer-Encoding:  Chunked ", &chunked));
}

/// Identical Content-Length values are one (RFC 9110 §8.6), as repeated headers or a list.
#[test]
fn identical_content_lengths_count_as_one() {
    let length = body().len();
    assert_served(&chat(&format!("Content-Length: {length}\r\nContent-Length: {length}"), &body()));
    assert_served(&chat(&format!("Content-Length: {length}, {length}"), &body()));
}
