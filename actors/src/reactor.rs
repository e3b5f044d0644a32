//! The network reactor: one per core, accepting on the client port (every
//! core accepts on its duplicate of the one listening socket).
//!
//! A connection that opens with the HTTP/2 preface is served by hyper's
//! HTTP/2 server; gRPC requests are dispatched by path, anything else goes
//! to the HTTP handler, as does every HTTP/1.1 connection. On an `https://`
//! listener the same happens inside TLS (`crate::tls`).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use http::{header, HeaderMap, HeaderValue, Response};
use hyper::body::Incoming;

use crate::grpc::body::{GrpcCall, RequestBody};
use hyper::service::service_fn;
use keel_proto::method::{Method, MethodKind};

use crate::grpc::body::{ResponseBody, StreamItem};
use crate::grpc::frame;
use crate::grpc::io::{HyperIo, LocalExec};
use crate::grpc::status::{Code, Status};
use crate::metrics::metrics;
use crate::service::{
    auth, cluster, election, gateway, http as http_service, kv, lease, maintenance, watch,
    ServerCtx,
};
use crate::tls::ServerTls;

/// What a client-side listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `--listen-client-urls`: gRPC and every HTTP endpoint.
    Clients,
    /// `--listen-metrics-urls`: `/metrics` and the health endpoints only.
    Metrics,
}

/// Serves `listener` (over TLS when `tls` is given) until the process ends.
///
/// Until `ready` turns true (the member recovered, joined its cluster and
/// caught up) every connection is reset as soon as it is accepted (SO_LINGER
/// 0), so the client tries another member instead of waiting through the
/// election. The accept itself is never abandoned: a cancelled io_uring
/// accept can complete anyway and leave a connection nobody serves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    surface: Surface,
    ctx: Rc<ServerCtx>,
    ready: tokio::sync::watch::Receiver<bool>,
) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !*ready.borrow() {
            use std::os::fd::{AsRawFd, BorrowedFd};
            // SAFETY: the descriptor belongs to `stream`, alive here.
            let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
            let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
            continue;
        }
        if open.get() >= ctx.cfg.connections_max {
            tracing::warn!(
                limit = ctx.cfg.connections_max,
                "connection limit reached; closing new connection"
            );
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (ctx, open, tls) = (ctx.clone(), open.clone(), tls.clone());
        glommio::spawn_local(async move {
            serve_connection(stream, tls, surface, ctx).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// `--grpc-keepalive-timeout 0`: a connection is never closed for an
/// unanswered ping (ten years; hyper adds it to an `Instant`).
const KEEPALIVE_TIMEOUT_NEVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A new connection has this long to send its first bytes (and, on a TLS
/// listener, to finish its handshake).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection(
    stream: TcpStream,
    tls: Option<Arc<ServerTls>>,
    surface: Surface,
    ctx: Rc<ServerCtx>,
) {
    let _ = stream.set_nodelay(true);
    crate::tcp::keep_alive(&stream, crate::tcp::CLIENT);
    let Some(tls) = tls else {
        return serve_stream(stream, surface, ctx).await;
    };
    let acceptor = futures_rustls::TlsAcceptor::from(tls.config());
    let handshake = glommio::timer::timeout(FIRST_BYTES_TIMEOUT, async {
        Ok(acceptor.accept(stream).await)
    })
    .await;
    match handshake {
        Ok(Ok(stream)) => {
            // With --client-cert-auth the certificate was verified; its
            // common name is the user of requests without a token (etcd's
            // CN auth).
            let cert_user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::tls::common_name(cert));
            let ctx = Rc::new(ServerCtx {
                cert_user,
                secure: true,
                ..(*ctx).clone()
            });
            serve_stream(stream, surface, ctx).await
        }
        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
        Err(_) => tracing::debug!("TLS handshake did not finish in {FIRST_BYTES_TIMEOUT:?}"),
    }
}

/// Serves one connection's HTTP/2 or HTTP/1.1, whichever it starts with.
async fn serve_stream<S>(mut stream: S, surface: Surface, ctx: Rc<ServerCtx>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // HTTP/2 with prior knowledge starts with "PRI * HTTP/2.0".
    let mut first = [0u8; 3];
    let sniffed = glommio::timer::timeout(FIRST_BYTES_TIMEOUT, async {
        Ok(stream.read_exact(&mut first).await)
    })
    .await;
    if !matches!(sniffed, Ok(Ok(()))) {
        return;
    }
    let io = HyperIo::new(stream, first.to_vec());
    if &first == b"PRI" {
        let svc_ctx = ctx.clone();
        let svc = service_fn(move |req| {
            let ctx = svc_ctx.clone();
            async move {
                Ok::<_, Infallible>(match surface {
                    Surface::Clients => handle_http2(req, ctx).await,
                    Surface::Metrics => http_service::handle_metrics(req, &ctx).await,
                })
            }
        });
        let mut http2 = hyper::server::conn::http2::Builder::new(LocalExec);
        http2.max_concurrent_streams(ctx.cfg.max_concurrent_streams);
        // HTTP/2 keepalive pings, as etcd's gRPC server sends: a client gone
        // without a FIN (its host lost power, say) loses its connection and
        // its watch streams.
        if let Some(interval) = ctx.cfg.keepalive.interval {
            http2
                .timer(crate::grpc::timer::ThreadTimer)
                .keep_alive_interval(interval)
                .keep_alive_timeout(ctx.cfg.keepalive.timeout.unwrap_or(KEEPALIVE_TIMEOUT_NEVER));
        }
        let result = http2.serve_connection(io, svc).await;
        if let Err(e) = result {
            tracing::debug!("http2 connection ended: {e}");
        }
    } else {
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            async move {
                Ok::<_, Infallible>(match surface {
                    Surface::Clients => handle_http(req, &ctx).await,
                    Surface::Metrics => http_service::handle_metrics(req, &ctx).await,
                })
            }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
        {
            tracing::debug!("http1 connection ended: {e}");
        }
    }
}

/// The gRPC metadata clientv3's `WithRequireLeader` sends ("true").
const REQUIRE_LEADER_KEY: &str = "hasleader";

fn grpc_headers(builder: http::response::Builder) -> http::response::Builder {
    builder.status(200).header(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    )
}

pub(crate) fn status_trailers(s: &Status) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(s.code as u8 as u16));
    if !s.message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&s.encoded_message()) {
            h.insert("grpc-message", v);
        }
    }
    h
}

/// A trailers-only response: the status travels in the headers.
fn error_response(s: &Status) -> Response<ResponseBody> {
    let mut resp = grpc_headers(Response::builder())
        .body(ResponseBody::empty())
        .expect("static response parts are valid");
    resp.headers_mut().extend(status_trailers(s));
    resp
}

/// Starts a streaming handler and answers with its stream of messages;
/// the call is counted as handled when the stream ends.
fn streaming_response<F, Fut>(call: GrpcCall, handler: F) -> Response<ResponseBody>
where
    F: FnOnce(tokio::sync::mpsc::Sender<StreamItem>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(watch::BODY_QUEUE);
    glommio::spawn_local(handler(tx)).detach();
    let lost = status_trailers(&Status::stopped());
    grpc_headers(Response::builder())
        .body(ResponseBody::grpc_stream(rx, lost, call))
        .expect("static response parts are valid")
}

fn ok_response(message: Bytes) -> Response<ResponseBody> {
    grpc_headers(Response::builder())
        .body(ResponseBody::with_trailers(
            message,
            status_trailers(&Status::new(Code::Ok, "")),
        ))
        .expect("static response parts are valid")
}

async fn handle_http2(req: http::Request<Incoming>, ctx: Rc<ServerCtx>) -> Response<ResponseBody> {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        return handle_http(req, &ctx).await;
    }
    serve_grpc(req.map(RequestBody::Http2), ctx).await
}

/// Plain HTTP on the client port: the JSON gateway, health, metrics,
/// version; behind etcd's access control (Host whitelist, CORS).
async fn handle_http(req: http::Request<Incoming>, ctx: &Rc<ServerCtx>) -> Response<ResponseBody> {
    if !ctx.secure {
        if let Some(refused) = http_service::check_host(&req, &ctx.cfg.host_whitelist) {
            return refused;
        }
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if req.method() == http::Method::OPTIONS {
        // A CORS preflight, answered as etcd's access controller does.
        Response::builder()
            .status(200)
            .body(ResponseBody::empty())
            .expect("static response parts are valid")
    } else if gateway::is_gateway_path(req.uri().path()) {
        gateway::handle(req, ctx).await
    } else {
        http_service::handle(req, ctx).await
    };
    http_service::add_cors(&mut resp, &ctx.cfg.cors, origin.as_ref());
    resp
}

/// Serves one gRPC call: from a client's HTTP/2 stream, or made by the
/// JSON gateway from an HTTP request.
pub(crate) async fn serve_grpc(
    req: http::Request<RequestBody>,
    ctx: Rc<ServerCtx>,
) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    let Some(method) = Method::from_path(&path) else {
        let (service, name) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((&path, ""));
        return error_response(&Status::new(
            Code::Unimplemented,
            format!("unknown method {name} for service {service}"),
        ));
    };
    let grpc_type = match method.kind() {
        MethodKind::Unary => "unary",
        MethodKind::ServerStream => "server_stream",
        MethodKind::BidiStream => "bidi_stream",
    };
    let labels = [grpc_type, method.service(), method.name()];
    metrics().grpc_started.with_label_values(&labels).inc();
    let client_api_version = req
        .headers()
        .get("client-api-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    let request_type = if method.kind() == MethodKind::Unary {
        "unary"
    } else {
        "stream"
    };
    metrics()
        .client_requests
        .with_label_values(&[request_type, client_api_version])
        .inc();
    let call = GrpcCall::new(labels);
    // A request with credentials is served with a context naming its
    // caller (proposals carry it; reads and administration check it).
    let ctx = match auth::caller(&ctx, req.headers()).await {
        Ok(None) => ctx,
        Ok(Some(caller)) => Rc::new(ServerCtx {
            caller: Some(caller),
            ..(*ctx).clone()
        }),
        Err(s) => return refuse(call, &s),
    };
    if matches!(
        method,
        Method::Watch | Method::LeaseKeepAlive | Method::Observe
    ) {
        if crate::raft::actor::is_learner() {
            return refuse(call, &Status::learner_unsupported());
        }
        // clientv3's WithRequireLeader (kube-apiserver sets it on watches):
        // refused without a leader, and a watch stream ends when its member
        // loses its leader, as etcd does.
        let require_leader = req
            .headers()
            .get(REQUIRE_LEADER_KEY)
            .is_some_and(|v| v == "true");
        if require_leader && !crate::raft::actor::has_leader() {
            return refuse(call, &Status::no_leader());
        }
        let body = req.into_body();
        return match method {
            Method::Watch => {
                streaming_response(call, |out| watch::serve(body, ctx, out, require_leader))
            }
            Method::LeaseKeepAlive => {
                streaming_response(call, |out| lease::keep_alive(body, ctx, out))
            }
            _ => streaming_response(call, |out| election::observe(body, ctx, out)),
        };
    }
    if method == Method::Snapshot {
        let checked = async {
            if crate::raft::actor::is_learner() {
                return Err(Status::learner_unsupported());
            }
            read_request::<keel_proto::etcdserverpb::SnapshotRequest>(req.into_body(), &ctx)
                .await?;
            ctx.check_admin()
        };
        return match checked.await {
            Ok(()) => streaming_response(call, |out| maintenance::snapshot(ctx, out)),
            Err(s) => refuse(call, &s),
        };
    }
    match dispatch(method, req.into_body(), &ctx).await {
        Ok(message) => {
            call.finish(Code::Ok);
            metrics()
                .client_grpc_sent_bytes
                .inc_by(message.len() as u64);
            ok_response(message)
        }
        Err(s) => refuse(call, &s),
    }
}

/// Answers a call with an error status, counting it as handled.
fn refuse(call: GrpcCall, s: &Status) -> Response<ResponseBody> {
    call.finish(s.code);
    error_response(s)
}

/// Reads a unary request, runs `f`, and encodes its answer.
async fn unary<Req, Resp, Fut>(
    body: RequestBody,
    ctx: &Rc<ServerCtx>,
    f: impl FnOnce(Rc<ServerCtx>, Req, usize) -> Fut,
) -> Result<Bytes, Status>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    Fut: Future<Output = Result<Resp, Status>>,
{
    let (req, len) = read_request::<Req>(body, ctx).await?;
    let resp = f(ctx.clone(), req, len).await?;
    Ok(frame::encode(&resp))
}

/// Reads and decodes a unary request; returns it with its encoded size.
async fn read_request<Req: prost::Message + Default>(
    body: RequestBody,
    ctx: &Rc<ServerCtx>,
) -> Result<(Req, usize), Status> {
    // A client that stops sending its request holds nothing for long.
    let read = frame::read_unary(body, ctx.cfg.max_recv_bytes());
    let message = glommio::timer::timeout(ctx.cfg.request_timeout, async { Ok(read.await) })
        .await
        .map_err(|_| {
            Status::new(
                Code::DeadlineExceeded,
                "keel: the request was not received in time",
            )
        })??;
    let len = message.len();
    Ok((frame::decode::<Req>(message)?, len))
}

/// Range, whose answer can hold millions of keys: encoding those takes
/// hundreds of milliseconds, so a large one is encoded on the executor's
/// blocking thread and the core (raft's, for core 0) goes on meanwhile.
async fn range(body: RequestBody, ctx: &Rc<ServerCtx>) -> Result<Bytes, Status> {
    let (req, _) = read_request(body, ctx).await?;
    let resp = kv::range(ctx, req).await?;
    if resp.kvs.len() <= crate::mvcc_actor::RANGE_STEP_KEYS {
        return Ok(frame::encode(&resp));
    }
    Ok(glommio::executor()
        .spawn_blocking(move || frame::encode(&resp))
        .await)
}

/// `unary!(body, ctx, handler)` serves a unary method with a handler taking
/// `(ctx, request)`; `unary!(body, ctx, handler, sized)` with one that also
/// takes the request's encoded size (writes check it against the limit).
macro_rules! unary {
    ($body:expr, $ctx:expr, $handler:path) => {
        unary($body, $ctx, |c, r, _| async move { $handler(&c, r).await }).await
    };
    ($body:expr, $ctx:expr, $handler:path, sized) => {
        unary(
            $body,
            $ctx,
            |c, r, n| async move { $handler(&c, r, n).await },
        )
        .await
    };
}

async fn dispatch(method: Method, body: RequestBody, ctx: &Rc<ServerCtx>) -> Result<Bytes, Status> {
    // A learner serves only Status and serializable ranges (checked in kv::range).
    if crate::raft::actor::is_learner() && !matches!(method, Method::Range | Method::Status) {
        return Err(Status::learner_unsupported());
    }
    match method {
        Method::Range => range(body, ctx).await,
        Method::Put => unary!(body, ctx, kv::put, sized),
        Method::DeleteRange => unary!(body, ctx, kv::delete_range, sized),
        Method::Txn => unary!(body, ctx, kv::txn, sized),
        Method::Compact => unary!(body, ctx, kv::compact, sized),
        Method::Status => unary!(body, ctx, maintenance::status),
        Method::HashKv => unary!(body, ctx, maintenance::hash_kv),
        Method::Hash => unary!(body, ctx, maintenance::hash),
        Method::Defragment => unary!(body, ctx, maintenance::defragment),
        Method::Alarm => unary!(body, ctx, maintenance::alarm),
        Method::MemberList => unary!(body, ctx, maintenance::member_list),
        Method::MemberAdd => unary!(body, ctx, cluster::member_add),
        Method::MemberRemove => unary!(body, ctx, cluster::member_remove),
        Method::MemberUpdate => unary!(body, ctx, cluster::member_update),
        Method::MemberPromote => unary!(body, ctx, cluster::member_promote),
        Method::MoveLeader => unary!(body, ctx, cluster::move_leader),
        Method::LeaseGrant => unary!(body, ctx, lease::grant, sized),
        Method::LeaseRevoke => unary!(body, ctx, lease::revoke, sized),
        Method::LeaseTimeToLive => unary!(body, ctx, lease::time_to_live),
        Method::LeaseLeases => unary!(body, ctx, lease::leases),
        Method::Lock => unary!(body, ctx, election::lock),
        Method::Unlock => unary!(body, ctx, election::unlock),
        Method::Campaign => unary!(body, ctx, election::campaign),
        Method::Proclaim => unary!(body, ctx, election::proclaim),
        Method::Leader => unary!(body, ctx, election::leader),
        Method::Resign => unary!(body, ctx, election::resign),
        Method::HealthCheck => unary!(body, ctx, maintenance::health_check),
        Method::AuthEnable => unary!(body, ctx, auth::auth_enable),
        Method::AuthDisable => unary!(body, ctx, auth::auth_disable),
        Method::AuthStatus => unary!(body, ctx, auth::auth_status),
        Method::Authenticate => unary!(body, ctx, auth::authenticate),
        Method::UserAdd => unary!(body, ctx, auth::user_add),
        Method::UserGet => unary!(body, ctx, auth::user_get),
        Method::UserList => unary!(body, ctx, auth::user_list),
        Method::UserDelete => unary!(body, ctx, auth::user_delete),
        Method::UserChangePassword => unary!(body, ctx, auth::user_change_password),
        Method::UserGrantRole => unary!(body, ctx, auth::user_grant_role),
        Method::UserRevokeRole => unary!(body, ctx, auth::user_revoke_role),
        Method::RoleAdd => unary!(body, ctx, auth::role_add),
        Method::RoleGet => unary!(body, ctx, auth::role_get),
        Method::RoleList => unary!(body, ctx, auth::role_list),
        Method::RoleDelete => unary!(body, ctx, auth::role_delete),
        Method::RoleGrantPermission => unary!(body, ctx, auth::role_grant_permission),
        Method::RoleRevokePermission => unary!(body, ctx, auth::role_revoke_permission),
        // etcd 3.5's method: etcd 3.4 answers as for any method it lacks.
        Method::Downgrade => Err(Status::new(
            Code::Unimplemented,
            "unknown method Downgrade for service etcdserverpb.Maintenance",
        )),
        other => Err(Status::new(
            Code::Unimplemented,
            format!(
                "keel: {}.{} is not implemented yet",
                other.service(),
                other.name()
            ),
        )),
    }
}
