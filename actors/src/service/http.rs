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

/// etcd's access control for plain HTTP (`--host-whitelist`): a request
/// whose Host is not listed gets 421 and etcd's explanation. `*` or an
/// empty list allows every host.
pub fn check_host<B>(
    req: &http::Request<B>,
    whitelist: &[String],
) -> Option<Response<ResponseBody>> {
    if whitelist.is_empty() || whitelist.iter().any(|h| h == "*") {
        return None;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    // The whitelist names hosts; a port after them does not matter.
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    if whitelist.iter().any(|h| h == name || h == host) {
        return None;
    }
    let body = format!(
        r#"
etcd received your request, but the Host header was unrecognized.

To fix this, choose one of the following options:
- Enable TLS, then any HTTP request will be accepted.
- Add the hostname you want to use to the whitelist in settings.
  - e.g. etcd --host-whitelist {name:?}

This requirement has been added to help prevent "DNS Rebinding" attacks (CVE-2018-5702).
"#
    );
    Some(reply(
        StatusCode::MISDIRECTED_REQUEST,
        "text/plain; charset=utf-8",
        body,
    ))
}

/// etcd's CORS headers (`--cors`): for any origin with `*`, else for a
/// request whose Origin is listed.
pub fn add_cors(
    resp: &mut Response<ResponseBody>,
    cors: &[String],
    origin: Option<&http::HeaderValue>,
) {
    let allowed = if cors.iter().any(|c| c == "*") {
        Some(http::HeaderValue::from_static("*"))
    } else {
        origin
            .filter(|o| cors.iter().any(|c| o.as_bytes() == c.as_bytes()))
            .cloned()
    };
    if let Some(allowed) = allowed {
        let h = resp.headers_mut();
        h.insert("Access-Control-Allow-Origin", allowed);
        h.insert(
            "Access-Control-Allow-Methods",
            http::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(
            "Access-Control-Allow-Headers",
            http::HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
}

/// `/health` gives up after this long.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) fn reply(
    code: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(ResponseBody::bytes(body.into()))
        .expect("static response parts are valid")
}

/// What `/health` (and `/livez`, `/readyz`) check, from the request's query
/// as etcd reads it: `exclude=NOSPACE` (repeatable) ignores that alarm,
/// `serializable=true` reads locally instead of through the leader.
#[derive(Debug, Default, PartialEq, Eq)]
struct HealthQuery {
    excluded_alarms: Vec<String>,
    serializable: bool,
}

impl HealthQuery {
    fn parse(query: Option<&str>) -> HealthQuery {
        let mut q = HealthQuery::default();
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("exclude", alarm) if !alarm.is_empty() => {
                    q.excluded_alarms.push(alarm.to_string())
                }
                ("serializable", v) => q.serializable = v == "true",
                _ => {}
            }
        }
        q
    }
}

/// True if no alarm is raised but those excluded (as etcd) and a read
/// completes within [`HEALTH_TIMEOUT`]: a linearizable one (there is a
/// leader and this member can serve consistent reads), or with
/// `serializable` a local one (this member's apply loop answers).
/// Auth does not apply to this read (etcd 3.5 counts its auth refusals as
/// healthy; 3.4 reads through the v2 store, outside v3 auth).
async fn healthy(ctx: &ServerCtx, q: &HealthQuery) -> bool {
    let Ok(alarms) = super::maintenance::ask_alarms(ctx).await else {
        return false;
    };
    let raised = alarms.iter().any(|(_, alarm)| {
        let name = crate::mvcc_actor::alarm_name(*alarm);
        !q.excluded_alarms.iter().any(|x| x == name)
    });
    if raised {
        return false;
    }
    let req = pb::RangeRequest {
        key: Bytes::from_static(b"health"),
        serializable: q.serializable,
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
        _ if req.method() != http::Method::GET
            && matches!(req.uri().path(), "/health" | "/livez" | "/readyz") =>
        {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "Method Not Allowed\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("GET"));
            r
        }
        "/health" => {
            let ok = healthy(ctx, &HealthQuery::parse(req.uri().query())).await;
            let m = metrics();
            if ok {
                m.health_success.inc();
                reply(StatusCode::OK, "application/json", r#"{"health":"true"}"#)
            } else {
                m.health_failures.inc();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"health\":\"false\"}\n",
                )
            }
        }
        // Modelled on etcd 3.6: alive while this member's apply loop
        // answers a local read; ready while it can serve consistent reads
        // and no CORRUPT alarm is raised. Plain "ok", or "<name> check failed".
        "/livez" | "/readyz" => {
            let live = req.uri().path() == "/livez";
            let q = if live {
                HealthQuery {
                    // An alarm does not make a member dead.
                    excluded_alarms: vec!["NOSPACE".into(), "CORRUPT".into()],
                    serializable: true,
                }
            } else {
                HealthQuery {
                    excluded_alarms: vec!["NOSPACE".into()],
                    serializable: false,
                }
            };
            if healthy(ctx, &q).await {
                reply(StatusCode::OK, "text/plain; charset=utf-8", "ok")
            } else {
                let name = &req.uri().path()[1..];
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("{name} check failed"),
                )
            }
        }
        "/version" => reply(
            StatusCode::OK,
            "application/json",
            format!(
                r#"{{"etcdserver":"{}","etcdcluster":"{}"}}"#,
                crate::API_VERSION,
                crate::CLUSTER_VERSION
            ),
        ),
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_query_as_etcd_reads_it() {
        assert_eq!(HealthQuery::parse(None), HealthQuery::default());
        let q = HealthQuery::parse(Some(
            "exclude=NOSPACE&serializable=true&exclude=CORRUPT&x=1",
        ));
        assert_eq!(q.excluded_alarms, ["NOSPACE", "CORRUPT"]);
        assert!(q.serializable);
        assert!(!HealthQuery::parse(Some("serializable=false&exclude=")).serializable);
        assert!(HealthQuery::parse(Some("exclude="))
            .excluded_alarms
            .is_empty());
    }
}
