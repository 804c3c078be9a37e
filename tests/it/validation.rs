//! Requests the gateway refuses itself, before any upstream call: bodies that are not
//! JSON, fields of the wrong type, empty messages, bodies over `max_body_bytes`, unknown
//! routes and wrong methods. Each gets the OpenAI error envelope.

use crate::fake::{healthy, Fake};
use crate::util::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn gateway_over(fake: &Fake, config_extra: &str) -> Gateway {
    Gateway::start(&format!("{config_extra}\n{}", alice()), &format!("{}|{KEY_A}\n", fake.url))
}

#[test]
fn a_body_that_is_not_json_is_a_400() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let auth = format!("Bearer {TOKEN}");
    for body in [&b"{\"model\": \"m\", "[..], b"not json", b"", b"[1, 2]"] {
        let reply = gateway.post_raw("/v1/chat/completions", &[("authorization", &auth)], body);
        let error = assert_envelope(&reply, 400);
        eqnice!("invalid_request_error", error.kind, "body {:?}", String::from_utf8_lossy(body));
    }
    eqnice!(0, fake.count());
}

#[test]
fn fields_of_the_wrong_type_are_named_in_param() {
    // (what is wrong, body, param)
    let cases = [
        ("messages is a string", json!({"model": "m", "messages": "Hi"}), "messages"),
        ("messages is empty", json!({"model": "m", "messages": []}), "messages"),
        ("messages is missing", json!({"model": "m"}), "messages"),
        (
            "temperature is a string",
            json!({"model": "m", "temperature": "hot", "messages": [{"role": "user", "content": "Hi"}]}),
            "temperature",
        ),
        (
            "stream is a string",
            json!({"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "Hi"}]}),
            "stream",
        ),
        ("model is missing", json!({"messages": [{"role": "user", "content": "Hi"}]}), "model"),
        (
            "max_tokens is a float",
            json!({"model": "m", "max_tokens": 1.5, "messages": [{"role": "user", "content": "Hi"}]}),
            "max_tokens",
        ),
    ];
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    for (what, body, param) in cases {
        let error = assert_envelope(&gateway.chat(&body), 400);
        eqnice!(
            ("invalid_request_error", Some(param)),
            (error.kind.as_str(), error.param.as_deref()),
            "{what}: {}",
            error.message
        );
    }
    eqnice!(0, fake.count(), "no upstream call for an invalid request");
}

#[test]
fn a_body_over_max_body_bytes_is_a_413() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "max_body_bytes = 2048");
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(10 * 1024)}]});
    let error = assert_envelope(&gateway.chat(&big), 413);
    eqnice!(Some("request_too_large"), error.code.as_deref());
    eqnice!(0, fake.count());
    // The limit is on the body, not the request: a small one still passes.
    completion(&gateway.chat(&chat_body("m", false)));
}

#[test]
fn a_chunked_body_over_max_body_bytes_is_a_413() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "max_body_bytes = 2048");
    let big =
        json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(10 * 1024)}]}).to_string();
    // A reader of unknown length makes ureq send the body chunked, with no Content-Length.
    let reply = test_agent()
        .post(gateway.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .send(ureq::SendBody::from_reader(&mut big.as_bytes()));
    let reply = match reply {
        Ok(mut response) => {
            (response.status().as_u16(), response.body_mut().read_to_string().unwrap_or_default())
        }
        Err(err) => panic!("request failed: {err}"),
    };
    eqnice!(413, reply.0, "body: {}", reply.1);
    eqnice!(0, fake.count());
}

#[test]
fn an_unknown_route_is_a_404_envelope() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    for path in ["/v1/nope", "/v2/chat/completions", "/v1/api/chat"] {
        let error = assert_envelope(&gateway.post_json(path, Some(TOKEN), &chat_body("m", false)), 404);
        assert!(error.message.contains(path), "{path}: {}", error.message);
    }
    assert_envelope(&gateway.get("/v1/unknown"), 404);
    eqnice!(0, fake.count());
}

#[test]
fn get_on_chat_completions_is_a_405() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let error = assert_envelope(&gateway.get("/v1/chat/completions"), 405);
    assert!(error.message.contains("POST"), "the error says which method to use: {}", error.message);
    eqnice!(0, fake.count());
}

#[test]
fn health_needs_no_token() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let reply = gateway.get("/health");
    eqnice!(200, reply.status, "{}", reply.text);
    eqnice!(json!("ok"), reply.body["status"]);
}

/// A client declaring an enormous body must get its 413 without taking the gateway down.
// See: vendor/tiny_http/README.md (tiny_http 0.12.0 drained unread bodies into a buffer sized
// by Content-Length, so `Content-Length: 900000000000` aborted the process).
#[test]
fn huge_declared_body_does_not_kill_the_gateway() {
    let fake = Fake::start(healthy);
    let gateway = gateway_over(&fake, "");
    let mut socket = TcpStream::connect(&gateway.addr).expect("connect");
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 900000000000\r\n\r\n{{\"model\":",
        gateway.addr
    );
    socket.write_all(head.as_bytes()).expect("send the head");
    let mut status_line = String::new();
    BufReader::new(&socket).read_line(&mut status_line).expect("read the status line");
    assert!(status_line.starts_with("HTTP/1.1 413"), "status line {status_line:?}");
    drop(socket);

    // The worker drains what is left of the body once the reply is out, then logs the
    // request; a gateway that cannot drain it dies first.
    wait_until(PATIENCE, "the 413 is logged or the gateway ends", || {
        !gateway.running()
            || gateway.logs().lines().any(|l| l.contains("/v1/chat/completions") && l.contains("413"))
    });
    assert!(gateway.running(), "the gateway died:\n{}", gateway.logs());
    eqnice!(200, gateway.get("/health").status, "the gateway is still up");
    completion(&gateway.chat(&chat_body("m", false)));
    eqnice!(1, fake.count());
}
