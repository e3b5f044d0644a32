//! The Watch service: one task per gRPC stream, on the reactor's core.
//!
//! It reads WatchRequests and passes them to the watch hub in the MVCC
//! actor, and writes the hub's responses to the HTTP/2 stream. Queues are
//! bounded both ways: when the client reads slowly, the response body's
//! queue fills, this task stops taking from the hub's queue, and the hub
//! turns the stream's watchers into slow watchers that catch up from
//! history later; writes never wait for a watcher.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::grpc::body::RequestBody;
use keel_proto::etcdserverpb as pb;
use keel_storage::auth::{AuthError, AuthInfo};
use tokio::sync::mpsc;

use super::ServerCtx;
use crate::grpc::body::StreamItem;
use crate::grpc::frame::{self, MessageReader};
use crate::grpc::status::{Code, Status};
use crate::mvcc_actor::{MvccMsg, WatchMsg};
use crate::watch::{StreamId, WatchSpec};

/// Hub → stream task responses queued per stream.
pub const HUB_QUEUE: usize = 256;
/// Encoded messages queued for the HTTP/2 response body.
pub const BODY_QUEUE: usize = 16;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

enum Step {
    Request(Result<Option<bytes::Bytes>, Status>),
    Response(Option<pb::WatchResponse>),
    LeaderLost,
}

/// Election timeouts in a row without a leader that end a require-leader
/// stream (etcd's `maxNoLeaderCnt`).
pub const NO_LEADER_CHECKS_MAX: u32 = 3;

/// Resolves once this member has known no leader at
/// [`NO_LEADER_CHECKS_MAX`] checks in a row, one per election timeout, as
/// etcd's monitorLeader does for streams that require a leader.
async fn leader_lost(election_timeout: std::time::Duration) {
    let mut misses = 0;
    while misses < NO_LEADER_CHECKS_MAX {
        glommio::timer::sleep(election_timeout).await;
        misses = if crate::raft::actor::has_leader() {
            0
        } else {
            misses + 1
        };
    }
}

/// Serves one Watch stream until the client goes away; ends the response
/// with a status if the request stream breaks, or with `etcdserver: no
/// leader` if `require_leader` and this member lost its leader.
pub async fn serve(
    body: RequestBody,
    ctx: Rc<ServerCtx>,
    out: mpsc::Sender<StreamItem>,
    require_leader: bool,
) {
    let stream: StreamId = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(HUB_QUEUE);
    let open = WatchMsg::Open {
        stream,
        tx,
        max_bytes: ctx.cfg.max_request_bytes,
    };
    if ctx.mvcc.send(MvccMsg::Watch(open)).await.is_err() {
        let _ = out
            .send(StreamItem::End(crate::reactor::status_trailers(
                &Status::stopped(),
            )))
            .await;
        return;
    }
    let mut reader = MessageReader::new(body, ctx.cfg.max_recv_bytes());
    let mut reading = true;
    let election_timeout = ctx.cfg.election_timeout;
    let mut lost = Box::pin(async move {
        if require_leader {
            leader_lost(election_timeout).await
        } else {
            std::future::pending().await
        }
    });
    let end = loop {
        let io = async {
            if reading {
                futures_lite::future::or(async { Step::Request(reader.next().await) }, async {
                    Step::Response(rx.recv().await)
                })
                .await
            } else {
                Step::Response(rx.recv().await)
            }
        };
        let step = futures_lite::future::or(io, async {
            (&mut lost).await;
            Step::LeaderLost
        })
        .await;
        match step {
            Step::LeaderLost => break Some(Status::no_leader()),
            // The client closed its side: keep sending, as etcd does.
            Step::Request(Ok(None)) => reading = false,
            Step::Request(Ok(Some(bytes))) => {
                let req = match frame::decode::<pb::WatchRequest>(bytes) {
                    Ok(r) => r,
                    Err(s) => break Some(s),
                };
                if let Some(refused) = check_create(&ctx, &req).await {
                    if out
                        .send(StreamItem::Message(frame::encode(&refused)))
                        .await
                        .is_err()
                    {
                        break None;
                    }
                    continue;
                }
                if let Some(msg) = to_hub(stream, req) {
                    if ctx.mvcc.send(MvccMsg::Watch(msg)).await.is_err() {
                        break Some(Status::stopped());
                    }
                }
            }
            Step::Request(Err(s)) => {
                // A reset by the client is just the end of the stream.
                break (s.code != Code::Internal).then_some(s);
            }
            Step::Response(Some(resp)) => {
                if out
                    .send(StreamItem::Message(frame::encode(&resp)))
                    .await
                    .is_err()
                {
                    break None;
                }
            }
            Step::Response(None) => break Some(Status::stopped()),
        }
    };
    let _ = ctx
        .mvcc
        .send(MvccMsg::Watch(WatchMsg::Close { stream }))
        .await;
    let status = end.unwrap_or_else(|| Status::new(Code::Ok, ""));
    let _ = out
        .send(StreamItem::End(crate::reactor::status_trailers(&status)))
        .await;
}

/// With auth on, a watch is created only for a caller that may read its
/// whole range; otherwise etcd answers at once with a watch created and
/// canceled, id -1, and the refusal as the gRPC error's text.
async fn check_create(ctx: &ServerCtx, req: &pb::WatchRequest) -> Option<pb::WatchResponse> {
    use pb::watch_request::RequestUnion;
    let Some(RequestUnion::CreateRequest(c)) = &req.request_union else {
        return None;
    };
    if !ctx.auth.enabled() {
        return None;
    }
    // A token's credentials are as of now (etcd resolves them per create).
    let store = ctx.auth.store();
    let who = ctx.caller.as_ref().map_or(AuthInfo::NONE, |c| AuthInfo {
        user: &c.user,
        revision: store.revision(),
    });
    let refusal = match store.check_read(who, &c.key, &c.range_end) {
        Ok(()) => return None,
        Err(e @ (AuthError::AuthOldRevision | AuthError::UserEmpty)) => Status::from(e),
        Err(_) => Status::from(AuthError::PermissionDenied),
    };
    let header = match (
        super::maintenance::ask_raft(ctx).await,
        super::maintenance::ask_mvcc(ctx).await,
    ) {
        (Ok(raft), Ok(mvcc)) => super::maintenance::header(ctx, &raft, &mvcc),
        _ => None,
    };
    Some(pb::WatchResponse {
        header,
        watch_id: -1,
        created: true,
        canceled: true,
        cancel_reason: format!(
            "rpc error: code = {} desc = {}",
            refusal.code.name(),
            refusal.message
        ),
        ..Default::default()
    })
}

fn to_hub(stream: StreamId, req: pb::WatchRequest) -> Option<WatchMsg> {
    use pb::watch_request::RequestUnion;
    Some(match req.request_union? {
        RequestUnion::CreateRequest(c) => WatchMsg::Create {
            stream,
            spec: WatchSpec::from(c),
        },
        RequestUnion::CancelRequest(c) => WatchMsg::Cancel {
            stream,
            watch_id: c.watch_id,
        },
        RequestUnion::ProgressRequest(_) => WatchMsg::Progress { stream },
    })
}
