//! etcd's JSON gateway (grpc-gateway in etcd) on the client port: `POST
//! /v3/<service>/<method>` (and the `/v3beta/` spelling etcd 3.4 rewrites
//! to it) with a proto3 JSON body, answered in proto3 JSON as etcd's
//! gateway writes it: fields by their proto names, 64-bit integers as
//! strings, bytes in base64, enums by name, defaults left out.
//!
//! A request is translated into the gRPC call it stands for and served by
//! the same code as gRPC clients (`reactor::serve_grpc`): the JSON becomes
//! protobuf through the protos' descriptors, `Authorization` becomes the
//! `token` metadata, and the gRPC answer becomes JSON again. Errors are
//! `{"error","message","code"}` with grpc-gateway's HTTP status; streams
//! (watch, lease keep-alive, observe, snapshot) answer with one
//! `{"result":…}` line per message.

use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use keel_proto::method::{Method, MethodKind};
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tokio::sync::mpsc;

use super::{go_json, ServerCtx};
use crate::grpc::body::{RequestBody, ResponseBody, StreamItem};
use crate::grpc::frame;
use crate::grpc::status::{Code, Status};

/// The gateway's paths after `/v3/`, as etcd 3.4's protos annotate them
/// (`/v3/auth/status` is etcd 3.5's). Hash and HashKV share one path in
/// 3.4, where Hash answers it.
const ROUTES: &[(&str, Method)] = &[
    ("kv/range", Method::Range),
    ("kv/put", Method::Put),
    ("kv/deleterange", Method::DeleteRange),
    ("kv/txn", Method::Txn),
    ("kv/compaction", Method::Compact),
    ("watch", Method::Watch),
    ("lease/grant", Method::LeaseGrant),
    ("lease/revoke", Method::LeaseRevoke),
    ("kv/lease/revoke", Method::LeaseRevoke),
    ("lease/keepalive", Method::LeaseKeepAlive),
    ("lease/timetolive", Method::LeaseTimeToLive),
    ("kv/lease/timetolive", Method::LeaseTimeToLive),
    ("lease/leases", Method::LeaseLeases),
    ("kv/lease/leases", Method::LeaseLeases),
    ("cluster/member/add", Method::MemberAdd),
    ("cluster/member/remove", Method::MemberRemove),
    ("cluster/member/update", Method::MemberUpdate),
    ("cluster/member/list", Method::MemberList),
    ("cluster/member/promote", Method::MemberPromote),
    ("maintenance/alarm", Method::Alarm),
    ("maintenance/status", Method::Status),
    ("maintenance/defragment", Method::Defragment),
    ("maintenance/hash", Method::Hash),
    ("maintenance/snapshot", Method::Snapshot),
    ("maintenance/transfer-leadership", Method::MoveLeader),
    ("auth/enable", Method::AuthEnable),
    ("auth/disable", Method::AuthDisable),
    ("auth/status", Method::AuthStatus),
    ("auth/authenticate", Method::Authenticate),
    ("auth/user/add", Method::UserAdd),
    ("auth/user/get", Method::UserGet),
    ("auth/user/list", Method::UserList),
    ("auth/user/delete", Method::UserDelete),
    ("auth/user/changepw", Method::UserChangePassword),
    ("auth/user/grant", Method::UserGrantRole),
    ("auth/user/revoke", Method::UserRevokeRole),
    ("auth/role/add", Method::RoleAdd),
    ("auth/role/get", Method::RoleGet),
    ("auth/role/list", Method::RoleList),
    ("auth/role/delete", Method::RoleDelete),
    ("auth/role/grant", Method::RoleGrantPermission),
    ("auth/role/revoke", Method::RoleRevokePermission),
    ("lock/lock", Method::Lock),
    ("lock/unlock", Method::Unlock),
    ("election/campaign", Method::Campaign),
    ("election/proclaim", Method::Proclaim),
    ("election/leader", Method::Leader),
    ("election/observe", Method::Observe),
    ("election/resign", Method::Resign),
];

/// Whether `path` is the gateway's (`/v3/...` or `/v3beta/...`).
pub fn is_gateway_path(path: &str) -> bool {
    path.starts_with("/v3/") || path.starts_with("/v3beta/")
}

fn route(path: &str) -> Option<Method> {
    let rest = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))?;
    ROUTES.iter().find(|(p, _)| *p == rest).map(|(_, m)| *m)
}

/// The request and response message types of a method.
fn message_types(method: Method) -> Option<(MessageDescriptor, MessageDescriptor)> {
    let service = keel_proto::descriptor_pool().get_service_by_name(method.service())?;
    let m = service.methods().find(|m| m.name() == method.name())?;
    Some((m.input(), m.output()))
}

fn text(code: StatusCode, body: &'static str) -> Response<ResponseBody> {
    super::http::reply(code, "text/plain; charset=utf-8", body)
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(code: StatusCode, body: Bytes) -> Response<ResponseBody> {
    with_gateway_headers(Response::builder().status(code))
        .body(ResponseBody::bytes(body))
        .expect("static response parts are valid")
}

/// The headers etcd's gateway answers with (its CORS defaults included).
fn with_gateway_headers(b: http::response::Builder) -> http::response::Builder {
    b.header(header::CONTENT_TYPE, "application/json")
        .header("Grpc-Metadata-Content-Type", "application/grpc")
        .header("Access-Control-Allow-Origin", "*")
        .header(
            "Access-Control-Allow-Methods",
            "POST, GET, OPTIONS, PUT, DELETE",
        )
        .header(
            "Access-Control-Allow-Headers",
            "accept, content-type, authorization",
        )
}

/// `{"error":…,"message":…,"code":…}`, as grpc-gateway writes an error.
fn error_json(s: &Status) -> Bytes {
    let msg = serde_json::to_string(&s.message).unwrap_or_else(|_| "\"\"".into());
    Bytes::from(format!(
        r#"{{"error":{msg},"message":{msg},"code":{}}}"#,
        s.code as i32
    ))
}

fn error_response(s: &Status) -> Response<ResponseBody> {
    json_response(http_status(s.code), error_json(s))
}

/// A protobuf message as etcd's gateway writes it in JSON.
fn to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let msg = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| Status::new(Code::Internal, format!("keel: gateway: {e}")))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(true)
        .skip_default_fields(true);
    msg.serialize_with_options(&mut ser, &opts)
        .map_err(|e| Status::new(Code::Internal, format!("keel: gateway: {e}")))?;
    Ok(out)
}

/// A JSON request body as the framed protobuf message gRPC carries, read
/// as grpc-gateway reads it with Go's decoder: an empty body (or `null`) is
/// the empty message, the first value is the request and anything after
/// it is ignored, and a malformed one gets Go's message.
fn from_json(desc: &MessageDescriptor, json: &[u8]) -> Result<Bytes, Status> {
    let object =
        go_json::request_object(json).map_err(|m| Status::new(Code::InvalidArgument, m))?;
    let msg = match object {
        None => DynamicMessage::new(desc.clone()),
        Some(object) => {
            let mut de = serde_json::Deserializer::from_slice(object);
            let opts = DeserializeOptions::new().deny_unknown_fields(false);
            let msg = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &opts)
                .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
            de.end()
                .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
            msg
        }
    };
    Ok(frame::encode(&msg))
}

/// Serves one gateway request.
pub async fn handle(req: http::Request<Incoming>, ctx: &Rc<ServerCtx>) -> Response<ResponseBody> {
    let Some(method) = route(req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "Not Found\n");
    };
    if req.method() != http::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    let Some((input, output)) = message_types(method) else {
        return text(StatusCode::NOT_FOUND, "Not Found\n");
    };
    let (parts, body) = req.into_parts();
    let (tx, rx) = mpsc::channel(16);
    if method.kind() == MethodKind::BidiStream {
        glommio::spawn_local(forward_json_stream(
            body,
            input,
            tx,
            ctx.cfg.max_recv_bytes(),
        ))
        .detach();
    } else {
        let json = match read_all(body, ctx.cfg.max_recv_bytes()).await {
            Ok(b) => b,
            Err(s) => return error_response(&s),
        };
        match from_json(&input, &json) {
            Ok(framed) => {
                let _ = tx.try_send(framed);
            }
            Err(s) => return error_response(&s),
        }
    }
    let mut grpc = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/{}/{}", method.service(), method.name()))
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(RequestBody::Gateway(rx))
        .expect("static request parts are valid");
    if let Some(token) = parts.headers.get(header::AUTHORIZATION) {
        grpc.headers_mut().insert("token", token.clone());
    }
    let answer = crate::reactor::serve_grpc(grpc, ctx.clone()).await;
    if method.kind() == MethodKind::Unary {
        unary_answer(answer, &output).await
    } else {
        stream_answer(answer, output)
    }
}

/// Reads a whole request body, refusing one larger than `max` bytes.
async fn read_all(mut body: Incoming, max: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > max {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    format!(
                        "grpc: received message larger than max ({} vs. {max})",
                        buf.len()
                    ),
                ));
            }
        }
    }
    Ok(buf.freeze())
}

/// Turns a stream of JSON messages (concatenated or newline-separated, as
/// Go's JSON decoder reads them) into framed protobuf messages, until the
/// body ends, the call ends, or a message does not parse.
async fn forward_json_stream(
    mut body: Incoming,
    desc: MessageDescriptor,
    tx: mpsc::Sender<Bytes>,
    max: usize,
) {
    let mut buf = BytesMut::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        let mut values =
            serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
        let mut messages = Vec::new();
        let mut failed = false;
        for value in values.by_ref() {
            match value {
                Ok(v) => {
                    let opts = DeserializeOptions::new().deny_unknown_fields(false);
                    match DynamicMessage::deserialize_with_options(desc.clone(), v, &opts) {
                        Ok(m) => messages.push(frame::encode(&m)),
                        Err(e) => {
                            tracing::debug!("gateway stream: {e}");
                            failed = true;
                            break;
                        }
                    }
                }
                Err(e) if e.is_eof() => break,
                Err(e) => {
                    tracing::debug!("gateway stream: {e}");
                    failed = true;
                    break;
                }
            }
        }
        let used = values.byte_offset();
        buf.advance(used);
        for m in messages {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        if failed || buf.len() > max {
            return;
        }
    }
    // The client closed its side; the call goes on until it goes away, as
    // a gRPC stream half-closed by its client does.
    tx.closed().await;
}

/// The gRPC status of an answer: from its headers (trailers-only) or
/// trailers; None while it is not known.
fn status_of(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<u8>()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Status::new(Code::from_u8(code), message))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits complete gRPC messages off the front of `buf`.
fn take_messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let mut m = buf.split_to(5 + len);
        m.advance(5);
        out.push(m.freeze());
    }
    out
}

async fn unary_answer(
    answer: Response<ResponseBody>,
    output: &MessageDescriptor,
) -> Response<ResponseBody> {
    if let Some(s) = status_of(answer.headers()).filter(|s| s.code != Code::Ok) {
        return error_response(&s);
    }
    let mut body = answer.into_body();
    let mut buf = BytesMut::new();
    let mut status = None;
    while let Some(Ok(frame)) = body.frame().await {
        match frame.into_data() {
            Ok(data) => buf.extend_from_slice(&data),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    status = status_of(&trailers);
                }
            }
        }
    }
    match status {
        Some(s) if s.code == Code::Ok => {}
        Some(s) => return error_response(&s),
        None => return error_response(&Status::stopped()),
    }
    match take_messages(&mut buf).first().map(|m| to_json(output, m)) {
        Some(Ok(json)) => json_response(StatusCode::OK, json.into()),
        Some(Err(s)) => error_response(&s),
        None => error_response(&Status::new(Code::Internal, "keel: gateway: no answer")),
    }
}

/// A stream's answer: one `{"result":…}` line per message, and an
/// `{"error":{…}}` line if it ends with an error, as grpc-gateway streams.
fn stream_answer(
    answer: Response<ResponseBody>,
    output: MessageDescriptor,
) -> Response<ResponseBody> {
    if let Some(s) = status_of(answer.headers()).filter(|s| s.code != Code::Ok) {
        return error_response(&s);
    }
    let (tx, rx) = mpsc::channel(crate::service::watch::BODY_QUEUE);
    glommio::spawn_local(async move {
        let mut body = answer.into_body();
        let mut buf = BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            let frame = match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    None
                }
                Err(frame) => frame.into_trailers().ok(),
            };
            for m in take_messages(&mut buf) {
                let line = match to_json(&output, &m) {
                    Ok(json) => [&b"{\"result\":"[..], &json, b"}\n"].concat(),
                    Err(s) => stream_error_line(&s),
                };
                if tx.send(StreamItem::Message(line.into())).await.is_err() {
                    return;
                }
            }
            if let Some(s) = frame.as_ref().and_then(status_of) {
                if s.code != Code::Ok {
                    let _ = tx
                        .send(StreamItem::Message(stream_error_line(&s).into()))
                        .await;
                }
                break;
            }
        }
        let _ = tx.send(StreamItem::End(http::HeaderMap::new())).await;
    })
    .detach();
    with_gateway_headers(Response::builder().status(StatusCode::OK))
        .body(ResponseBody::stream(rx, http::HeaderMap::new()))
        .expect("static response parts are valid")
}

/// grpc-gateway's error line in a stream.
fn stream_error_line(s: &Status) -> Vec<u8> {
    let code = http_status(s.code);
    let msg = serde_json::to_string(&s.message).unwrap_or_else(|_| "\"\"".into());
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{msg},\"http_status\":{}}}}}\n",
        s.code as i32,
        code.as_u16(),
        serde_json::to_string(code.canonical_reason().unwrap_or("")).unwrap_or_default()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn every_route_has_its_message_types() {
        for (path, method) in ROUTES {
            assert!(message_types(*method).is_some(), "{path}");
            assert_eq!(route(&format!("/v3/{path}")), Some(*method));
            assert_eq!(route(&format!("/v3beta/{path}")), Some(*method));
        }
        assert_eq!(route("/v3alpha/kv/range"), None);
        assert_eq!(route("/v3/kv/nope"), None);
    }

    #[test]
    fn json_round_trips_as_etcds_gateway_writes_it() {
        let (input, output) = message_types(Method::Range).unwrap();
        let framed = from_json(
            &input,
            br#"{"key":"Zm9v","limit":"2","sort_order":"DESCEND"}"#,
        )
        .unwrap();
        let req = keel_proto::etcdserverpb::RangeRequest::decode(&framed[5..]).unwrap();
        assert_eq!(
            (&req.key[..], req.limit, req.sort_order),
            (&b"foo"[..], 2, 2)
        );
        let resp = keel_proto::etcdserverpb::RangeResponse {
            header: Some(keel_proto::etcdserverpb::ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 1,
                revision: 2,
                raft_term: 2,
            }),
            kvs: vec![keel_proto::mvccpb::KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            String::from_utf8(to_json(&output, &resp.encode_to_vec()).unwrap()).unwrap(),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"1","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        assert!(from_json(&input, b"garbage").is_err());
        assert_eq!(from_json(&input, b"").unwrap().len(), 5);
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b%25c%"), "a b%c%");
    }
}
