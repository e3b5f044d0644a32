//! Raw gRPC against the real binary, for inputs the etcd-client crate never
//! sends: invalid enum values, malformed protobuf, unknown methods. The server must answer each with a gRPC error
//! and keep serving.

mod common;

use bytes::{Buf, BufMut};
use common::Server;
use keel_proto::etcdserverpb as pb;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Sends and receives raw message bytes.
#[derive(Default, Clone)]
struct Raw;
struct RawEnc;
struct RawDec;

impl Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

async fn call(s: &Server, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let ch = tonic::transport::Channel::from_shared(s.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    g.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(|r| r.into_inner())
}

async fn still_serving(s: &Server) {
    let mut c = s.client().await;
    c.put("alive", "yes", None).await.unwrap();
    assert_eq!(c.get("alive", None).await.unwrap().kvs()[0].value(), b"yes");
}

#[tokio::test]
async fn invalid_sort_option() {
    let s = Server::start(&["--cores", "1"]);
    for (order, target) in [(9, 0), (0, 42), (-1, 0)] {
        let req = pb::RangeRequest {
            key: "k".into(),
            sort_order: order,
            sort_target: target,
            ..Default::default()
        };
        let e = call(&s, "/etcdserverpb.KV/Range", req.encode_to_vec())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "etcdserver: invalid sort option");
    }
    // Inside a txn too.
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: "k".into(),
                sort_target: 17,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let e = call(&s, "/etcdserverpb.KV/Txn", txn.encode_to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: invalid sort option");
    still_serving(&s).await;
}

#[tokio::test]
async fn empty_txn_operation_is_key_not_found() {
    let s = Server::start(&["--cores", "1"]);
    let txn = pb::TxnRequest {
        success: vec![pb::RequestOp { request: None }],
        ..Default::default()
    };
    let e = call(&s, "/etcdserverpb.KV/Txn", txn.encode_to_vec())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::InvalidArgument, "etcdserver: key not found")
    );
}

#[tokio::test]
async fn malformed_protobuf_and_unknown_methods() {
    let s = Server::start(&["--cores", "1"]);
    // A length-delimited field claiming more bytes than follow.
    let e = call(&s, "/etcdserverpb.KV/Put", vec![0x0a, 0xff, 0x01, b'k'])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal);
    assert!(
        e.message().starts_with("grpc: error unmarshalling request"),
        "{}",
        e.message()
    );
    // Wrong wire type for a field.
    let e = call(&s, "/etcdserverpb.KV/Range", vec![0x0d, 1, 2, 3, 4])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal);
    let e = call(&s, "/etcdserverpb.KV/Nope", vec![]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert_eq!(
        e.message(),
        "unknown method Nope for service etcdserverpb.KV"
    );
    let e = call(&s, "/no.Such/Service", vec![]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    // etcd 3.5's Downgrade, which etcd 3.4 does not know.
    let e = call(&s, "/etcdserverpb.Maintenance/Downgrade", vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert_eq!(
        e.message(),
        "unknown method Downgrade for service etcdserverpb.Maintenance"
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn status_health_and_member_list() {
    let s = Server::start(&["--cores", "1", "--name", "solo"]);
    let mut c = s.client().await;
    let st = c.status().await.unwrap();
    assert_eq!(st.version(), "3.6.0");
    assert!(st.raft_index() >= 1);
    assert_eq!(st.raft_applied_index(), st.raft_index());
    assert!(!st.is_learner());
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].name(), "solo");
    assert_eq!(members.members()[0].client_urls(), [s.endpoint()]);
    let req = keel_proto::grpc_health_v1::HealthCheckRequest::default();
    let resp = call(&s, "/grpc.health.v1.Health/Check", req.encode_to_vec())
        .await
        .unwrap();
    let resp = keel_proto::grpc_health_v1::HealthCheckResponse::decode(&resp[..]).unwrap();
    assert_eq!(resp.status, 1, "SERVING");
}

#[tokio::test]
async fn unbuilt_streaming_services_fail_fast() {
    let s = Server::start(&["--cores", "1"]);
    // grpc.health.v1.Health/Watch is a server stream keel does not serve;
    // the server must still answer at once, not hang.
    let req = keel_proto::grpc_health_v1::HealthCheckRequest::default();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        call(&s, "/grpc.health.v1.Health/Watch", req.encode_to_vec()),
    )
    .await
    .expect("answered within the bound");
    assert_eq!(answer.unwrap_err().code(), tonic::Code::Unimplemented);
    still_serving(&s).await;
}
