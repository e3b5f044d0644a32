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

/// A query string's `name=value` pairs (a bare `name` has value "").
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// What `/health` checks, from the request's query
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
        for pair in query_pairs(query) {
            match pair {
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

/// etcd 3.6's probes: `/livez` (the process serves) and `/readyz` (it can
/// serve consistent reads), each a list of named checks; `/<probe>/<check>`
/// runs one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Livez,
    Readyz,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// No CORRUPT alarm is raised.
    DataCorruption,
    /// This member's apply loop answers a local read.
    SerializableRead,
    /// A read through the leader completes: the cluster has a quorum.
    LinearizableRead,
    /// This member is a voter.
    NonLearner,
}

impl Probe {
    /// The probe and, for a check's own path, that check.
    fn of(path: &str) -> Option<(Probe, Option<Check>)> {
        let (probe, rest) = match path.strip_prefix("/livez") {
            Some(rest) => (Probe::Livez, rest),
            None => (Probe::Readyz, path.strip_prefix("/readyz")?),
        };
        if rest.is_empty() {
            return Some((probe, None));
        }
        let name = rest.strip_prefix('/')?;
        let check = probe.checks().iter().find(|c| c.name() == name)?;
        Some((probe, Some(*check)))
    }

    fn name(self) -> &'static str {
        match self {
            Probe::Livez => "livez",
            Probe::Readyz => "readyz",
        }
    }

    /// Its checks, in the order they run (etcd's order is its map's).
    fn checks(self) -> &'static [Check] {
        match self {
            Probe::Livez => &[Check::SerializableRead],
            Probe::Readyz => &[
                Check::DataCorruption,
                Check::SerializableRead,
                Check::LinearizableRead,
                Check::NonLearner,
            ],
        }
    }
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }
}

/// A probe's query: `exclude=<check>` (repeatable) skips a check;
/// `verbose` lists every check's result.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProbeQuery {
    excluded: Vec<String>,
    verbose: bool,
}

impl ProbeQuery {
    fn parse(query: Option<&str>) -> ProbeQuery {
        let mut q = ProbeQuery::default();
        for pair in query_pairs(query) {
            match pair {
                ("exclude", check) if !check.is_empty() => q.excluded.push(check.to_string()),
                ("verbose", _) => q.verbose = true,
                _ => {}
            }
        }
        q
    }
}

async fn run_check(ctx: &ServerCtx, check: Check) -> Result<(), String> {
    match check {
        Check::DataCorruption => {
            let alarms = super::maintenance::ask_alarms(ctx)
                .await
                .map_err(|s| s.message)?;
            match alarms
                .iter()
                .any(|(_, a)| *a == crate::mvcc_actor::ALARM_CORRUPT)
            {
                true => Err("alarm activated: CORRUPT".into()),
                false => Ok(()),
            }
        }
        Check::SerializableRead | Check::LinearizableRead => {
            let req = pb::RangeRequest {
                key: Bytes::from_static(b"health"),
                keys_only: true,
                limit: 1,
                serializable: check == Check::SerializableRead,
                ..Default::default()
            };
            let read = glommio::timer::timeout(HEALTH_TIMEOUT, async {
                Ok(kv::read_unchecked(ctx, req).await)
            })
            .await;
            match read {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(status.message),
                Err(_) => Err("etcdserver: request timed out".into()),
            }
        }
        Check::NonLearner => match crate::raft::actor::is_learner() {
            true => Err("not supported for learner".into()),
            false => Ok(()),
        },
    }
}

/// `etcd_server_healthcheck` and `etcd_server_healthchecks_total`.
fn record_check(probe: Probe, check: Check, outcome: &Result<(), String>) {
    let m = metrics();
    let labels = [probe.name(), check.name()];
    m.healthcheck
        .with_label_values(&labels)
        .set(if outcome.is_ok() { 1.0 } else { 0.0 });
    let status = if outcome.is_ok() { "success" } else { "error" };
    m.healthchecks
        .with_label_values(&[probe.name(), check.name(), status])
        .inc();
}

/// A probe's answer, as etcd writes it: 503 with every check's line when
/// one failed; else "ok", after the lines with `verbose`.
fn probe_answer(outcomes: &[(Check, Result<(), String>)], verbose: bool) -> (StatusCode, String) {
    let mut lines = String::new();
    for (check, outcome) in outcomes {
        match outcome {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => lines.push_str(&format!("[-]{} failed: {e}\n", check.name())),
        }
    }
    if outcomes.iter().any(|(_, o)| o.is_err()) {
        // Go's http.Error ends the text with a newline of its own.
        lines.push('\n');
        return (StatusCode::SERVICE_UNAVAILABLE, lines);
    }
    if !verbose {
        lines.clear();
    }
    lines.push_str("ok\n");
    (StatusCode::OK, lines)
}

/// A `--listen-metrics-urls` request: metrics and health, nothing else.
pub async fn handle_metrics<B>(req: http::Request<B>, ctx: &ServerCtx) -> Response<ResponseBody> {
    match req.uri().path() {
        "/metrics" | "/health" => handle(req, ctx).await,
        path if Probe::of(path).is_some() => handle(req, ctx).await,
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
        path if req.method() != http::Method::GET
            && (path == "/health" || Probe::of(path).is_some()) =>
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
        path if Probe::of(path).is_some() => {
            let (probe, only) = Probe::of(path).expect("matched");
            let q = ProbeQuery::parse(req.uri().query());
            let checks: Vec<Check> = match only {
                Some(check) => vec![check],
                None => probe
                    .checks()
                    .iter()
                    .copied()
                    .filter(|c| !q.excluded.iter().any(|x| x == c.name()))
                    .collect(),
            };
            let mut outcomes = Vec::with_capacity(checks.len());
            for check in checks {
                let outcome = run_check(ctx, check).await;
                record_check(probe, check, &outcome);
                outcomes.push((check, outcome));
            }
            let (code, body) = probe_answer(&outcomes, q.verbose);
            let mut r = reply(code, "text/plain; charset=utf-8", body);
            r.headers_mut().insert(
                "X-Content-Type-Options",
                http::HeaderValue::from_static("nosniff"),
            );
            r
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

    #[test]
    fn probes_as_etcd_3_6_answers_them() {
        assert_eq!(Probe::of("/livez"), Some((Probe::Livez, None)));
        assert_eq!(
            Probe::of("/readyz/non_learner"),
            Some((Probe::Readyz, Some(Check::NonLearner)))
        );
        // A check of the other probe, or none, is not a path.
        assert_eq!(Probe::of("/livez/non_learner"), None);
        assert_eq!(Probe::of("/readyz/"), None);
        assert_eq!(Probe::of("/readyzz"), None);
        let q = ProbeQuery::parse(Some("exclude=linearizable_read&verbose&exclude=x"));
        assert_eq!(q.excluded, ["linearizable_read", "x"]);
        assert!(q.verbose);
        assert!(!ProbeQuery::parse(Some("verbosee=1")).verbose);

        let ok = [
            (Check::DataCorruption, Ok(())),
            (Check::SerializableRead, Ok(())),
        ];
        assert_eq!(probe_answer(&ok, false), (StatusCode::OK, "ok\n".into()));
        assert_eq!(
            probe_answer(&ok, true),
            (
                StatusCode::OK,
                "[+]data_corruption ok\n[+]serializable_read ok\nok\n".into()
            )
        );
        let failed = [
            (
                Check::DataCorruption,
                Err("alarm activated: CORRUPT".into()),
            ),
            (Check::SerializableRead, Ok(())),
        ];
        assert_eq!(
            probe_answer(&failed, false),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n\n"
                    .into()
            )
        );
        // Every check excluded: nothing failed.
        assert_eq!(probe_answer(&[], true), (StatusCode::OK, "ok\n".into()));
    }
}
