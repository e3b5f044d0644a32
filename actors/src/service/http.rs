//! HTTP/1.1 (and non-gRPC HTTP/2) on the client port: `/metrics`,
//! `/health`, `/livez`, `/readyz`, `/version`; on a metrics port
//! (`--listen-metrics-urls`) only the first four.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use keel_proto::etcdserverpb as pb;

use super::kv;
use super::ServerCtx;
use crate::grpc::body::ResponseBody;
use crate::metrics::metrics;

/// `/health` gives up after this long.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(ResponseBody::bytes(body.into()))
        .expect("static response parts are valid")
}

/// True if no alarm is raised (as etcd 3.4) and a linearizable read
/// completes: there is a leader and this member can serve consistent reads.
/// Auth does not apply to this read (etcd 3.5 counts its auth refusals as
/// healthy; 3.4 reads through the v2 store, outside v3 auth).
async fn healthy(ctx: &ServerCtx) -> bool {
    if !super::maintenance::ask_alarms(ctx)
        .await
        .is_ok_and(|a| a.is_empty())
    {
        return false;
    }
    let req = pb::RangeRequest {
        key: Bytes::from_static(b"health"),
        ..Default::default()
    };
    glommio::timer::timeout(HEALTH_TIMEOUT, async {
        Ok(kv::read_unchecked(ctx, req).await)
    })
    .await
    .is_ok_and(|r| r.is_ok())
}

/// A `--listen-metrics-urls` request: metrics and health, nothing else.
pub async fn handle_metrics<B>(req: http::Request<B>, ctx: &ServerCtx) -> Response<ResponseBody> {
    match req.uri().path() {
        "/metrics" | "/health" | "/livez" | "/readyz" => handle(req, ctx).await,
        _ => not_found(),
    }
}

fn not_found() -> Response<ResponseBody> {
    reply(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n")
}

pub async fn handle<B>(req: http::Request<B>, ctx: &ServerCtx) -> Response<ResponseBody> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics().render(),
        ),
        "/health" | "/readyz" => {
            let ok = healthy(ctx).await;
            let code = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            if req.uri().path() == "/readyz" {
                return reply(code, "text/plain", if ok { "ok" } else { "not ready" });
            }
            let body = if ok {
                r#"{"health":"true"}"#
            } else {
                r#"{"health":"false"}"#
            };
            reply(code, "application/json", body)
        }
        "/livez" => reply(StatusCode::OK, "text/plain", "ok"),
        "/version" => reply(
            StatusCode::OK,
            "application/json",
            format!(
                r#"{{"etcdserver":"{v}","etcdcluster":"{v}"}}"#,
                v = crate::API_VERSION
            ),
        ),
        _ => not_found(),
    }
}
