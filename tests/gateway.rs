//! The JSON gateway (`/v3/...`) through real HTTP/1.1 requests. CI also
//! compares its answers with etcd 3.4.23's (`.ci/interop-gateway.sh`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Server;

/// POSTs `body` to `path`; returns (status, body). `extra` is added to the
/// request head (an Authorization header, say).
fn post(port: u16, path: &str, body: &str, extra: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap();
    (code, body)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Story: every `/v3/...` path answered 404, so clients that speak only
/// etcd's JSON gateway (etcd3gw, Patroni) could not use keel. The gateway
/// now answers as etcd's: proto names, 64-bit integers as strings, bytes
/// in base64, errors with grpc-gateway's body and HTTP status, the
/// `/v3beta/` spelling, and the `Authorization` header as the token.
#[test]
fn the_gateway_answers_as_etcds() {
    let s = Server::start(&[]);
    let (code, body) = post(s.port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#, "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["header"]["revision"], "2");
    let (code, body) = post(s.port, "/v3beta/kv/range", r#"{"key":"Zm9v"}"#, "");
    assert_eq!(code, 200);
    let r = json(&body);
    assert_eq!(
        r["kvs"][0],
        json(
            r#"{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}"#
        )
    );
    assert_eq!(r["count"], "1");
    assert!(r.get("more").is_none(), "defaults are left out: {body}");

    let (code, body) = post(
        s.port,
        "/v3/kv/range",
        r#"{"key":"Zm9v","revision":"100"}"#,
        "",
    );
    assert_eq!(code, 400);
    assert_eq!(
        body,
        r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#
    );
    let (code, _) = post(s.port, "/v3/kv/nope", "{}", "");
    assert_eq!(code, 404);

    // Auth through the gateway: authenticate, then the token in the
    // Authorization header.
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        assert_eq!(post(s.port, path, body, "").0, 200, "{path}");
    }
    let (code, body) = post(s.port, "/v3/kv/range", r#"{"key":"Zm9v"}"#, "");
    assert_eq!(
        (code, json(&body)["message"].clone()),
        (400, "etcdserver: user name is empty".into())
    );
    let (_, body) = post(
        s.port,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        "",
    );
    let token = json(&body)["token"].as_str().unwrap().to_string();
    let (code, body) = post(
        s.port,
        "/v3/kv/range",
        r#"{"key":"Zm9v"}"#,
        &format!("Authorization: {token}\r\n"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["kvs"][0]["value"], "YmFy");
}

/// A watch over the gateway: one `{"result":…}` line per message, the
/// stream kept open after the request body ends, as etcd's.
#[test]
fn a_gateway_watch_streams_events_as_lines() {
    let s = Server::start(&[]);
    let mut w = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = r#"{"create_request":{"key":"dw=="}}"#;
    write!(
        w,
        "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{req}",
        req.len()
    )
    .unwrap();
    // The created message first, then the event of a put made afterwards.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"created\":true") {
        let n = w.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(
        post(s.port, "/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#, "").0,
        200
    );
    while !seen.contains("\"events\"") {
        let n = w.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = seen.lines().find(|l| l.contains("\"events\"")).unwrap();
    // Chunked transfer: the line sits between chunk sizes.
    let event = json(line.trim())["result"]["events"][0]["kv"].clone();
    assert_eq!(event["key"], "dw==");
    assert_eq!(event["value"], "MQ==");
    assert_eq!(event["mod_revision"], "2");
}

/// Story: the gateway read a body with serde's rules: a request followed
/// by anything was refused ("trailing characters"), which etcd's Go decoder
/// ignores, and malformed JSON got serde's wording, not Go's.
#[test]
fn a_body_is_read_as_gos_decoder_reads_it() {
    let s = Server::start(&[]);
    let (code, body) = post(
        s.port,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}{"x":1}"#,
        "",
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(s.port, "/v3/kv/range", "null", "");
    assert_eq!(
        (code, json(&body)["message"].clone()),
        (400, json(r#""etcdserver: key is not provided""#))
    );
    for (request, message) in [
        (
            r#"{"key":"Zm9v",}"#,
            "invalid character '}' looking for beginning of object key string",
        ),
        (r#"{"key":"#, "unexpected EOF"),
        (
            "[1]",
            "json: cannot unmarshal array into Go value of type map[string]json.RawMessage",
        ),
    ] {
        let (code, body) = post(s.port, "/v3/kv/range", request, "");
        let answer = json(&body);
        assert_eq!(code, 400, "{request}: {body}");
        assert_eq!(answer["message"], message, "{request}: {body}");
        assert_eq!(answer["error"], message, "{request}: {body}");
        assert_eq!(answer["code"], 3, "{request}: {body}");
    }
}
