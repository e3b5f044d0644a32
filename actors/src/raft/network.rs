//! The peer transport seen by openraft: each RPC is one request/response on
//! a pooled peer connection; a snapshot streams the leader's snapshot file
//! in chunks over a connection of its own.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncReadExt;
use glommio::io::{BufferedFile, StreamReaderBuilder};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;

use super::codec::encode_snapshot_meta;
use super::types::{Node, NodeId, TypeConfig, Vote};
use crate::peer::conn::{request_frame, PeerClients, PeerError};
use crate::peer::wire::{
    append_from_wire, entry_to_wire, log_id_from_wire, log_id_to_wire, vote_from_wire,
    vote_to_wire, PeerRequest, PeerResponse,
};

/// Bytes of snapshot data per frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The least time a snapshot transfer (sending it and the receiver's
/// install) is given.
pub const SNAPSHOT_DEADLINE_MIN: Duration = Duration::from_secs(60);
/// The slowest transfer rate a snapshot's deadline allows for, beyond
/// [`SNAPSHOT_DEADLINE_MIN`]: a store of several GiB gets minutes, not one.
pub const SNAPSHOT_BYTES_PER_SEC_MIN: u64 = 8 << 20;

/// How long sending a snapshot of `size` bytes and waiting for the
/// receiver to install it may take.
pub fn snapshot_deadline(size: u64) -> Duration {
    SNAPSHOT_DEADLINE_MIN + Duration::from_secs(size / SNAPSHOT_BYTES_PER_SEC_MIN)
}
/// Entry bytes per AppendEntries at most (at least one entry is sent), as
/// etcd's 1 MiB per message: openraft bounds a request only by entry count
/// and gives it one heartbeat interval, which a large request can miss.
pub const APPEND_BYTES_MAX: usize = 1 << 20;

/// How many of `sizes` (entry payload sizes, in order) one AppendEntries
/// carries: as many as fit in `budget`, and at least one.
pub fn entries_within(sizes: impl Iterator<Item = usize>, budget: usize) -> usize {
    let mut total = 0;
    let mut n = 0;
    for size in sizes {
        if n > 0 && total + size > budget {
            break;
        }
        total += size;
        n += 1;
    }
    n
}

pub struct PeerNetwork {
    pub peers: Rc<PeerClients>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerLink {
        PeerLink {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's handle on one peer.
pub struct PeerLink {
    peers: Rc<PeerClients>,
    target: NodeId,
    node: Node,
}

type RpcError = RPCError<NodeId, Node, RaftError<NodeId>>;

fn rpc_error(e: PeerError) -> RpcError {
    match e {
        PeerError::Unreachable(..) | PeerError::Rejected(..) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        PeerError::Io(..) | PeerError::Timeout(..) => RPCError::Network(NetworkError::new(&e)),
    }
}

/// The peer answered, but could not serve the RPC (its raft stopped, say).
fn remote_failure(target: NodeId, reason: String) -> RpcError {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "peer {target:x}: {reason}"
    ))))
}

fn unexpected(target: NodeId, resp: &PeerResponse) -> RpcError {
    RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
        "peer {target:x} sent an unexpected response: {resp:?}"
    ))))
}

impl PeerLink {
    async fn call(&self, req: &PeerRequest, ttl: Duration) -> Result<PeerResponse, RpcError> {
        self.peers
            .call(self.target, &self.node, req, ttl)
            .await
            .map_err(rpc_error)
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let wire: Vec<_> = rpc.entries.iter().map(entry_to_wire).collect();
        let n = entries_within(wire.iter().map(|e| e.payload.len()), APPEND_BYTES_MAX);
        // Sending a prefix is answered as a partial success: openraft then
        // continues from the last entry the follower got.
        let prefix_end = (n < wire.len()).then(|| rpc.entries[n - 1].log_id);
        // An AppendEntries without entries is the leader's heartbeat.
        let heartbeat = wire.is_empty();
        let req = PeerRequest::AppendEntries {
            vote: vote_to_wire(&rpc.vote),
            prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to_wire),
            leader_commit: rpc.leader_commit.as_ref().map(log_id_to_wire),
            entries: wire.into_iter().take(n).collect(),
        };
        let answer = self.call(&req, option.hard_ttl()).await;
        if heartbeat && answer.is_err() {
            crate::metrics::metrics().heartbeat_send_failures.inc();
        }
        match answer? {
            PeerResponse::AppendEntries(r) => Ok(match (append_from_wire(&r), prefix_end) {
                (AppendEntriesResponse::Success, Some(last)) => {
                    AppendEntriesResponse::PartialSuccess(Some(last))
                }
                (r, _) => r,
            }),
            PeerResponse::Failed { reason } => Err(remote_failure(self.target, reason)),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: openraft::raft::VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let VoteRequest { vote, last_log_id } = rpc;
        let req = PeerRequest::Vote {
            vote: vote_to_wire(&vote),
            last_log_id: last_log_id.as_ref().map(log_id_to_wire),
        };
        match self.call(&req, option.hard_ttl()).await? {
            PeerResponse::Vote {
                vote,
                granted,
                last_log_id,
            } => Ok(VoteResponse {
                vote: vote_from_wire(&vote),
                vote_granted: granted,
                last_log_id: last_log_id.as_ref().map(log_id_from_wire),
            }),
            PeerResponse::Failed { reason } => Err(remote_failure(self.target, reason)),
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let net = |e: &dyn std::fmt::Display| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        };
        let path = &snapshot.snapshot.path;
        let file = BufferedFile::open(path).await.map_err(|e| net(&e))?;
        let size = file.file_size().await.map_err(|e| net(&e))?;
        let send = async {
            let mut reader = StreamReaderBuilder::new(file)
                .with_buffer_size(SNAPSHOT_CHUNK_BYTES)
                .build();
            let mut conn = self
                .peers
                .connect(self.target, &self.node)
                .await
                .map_err(|e| net(&e))?;
            let meta = &snapshot.meta;
            let begin = request_frame(&PeerRequest::SnapshotBegin {
                vote: vote_to_wire(&vote),
                snapshot_id: meta.snapshot_id.clone(),
                meta: encode_snapshot_meta(meta.last_log_id.as_ref(), &meta.last_membership),
                size,
            });
            conn.send(&begin).await.map_err(|e| net(&e))?;
            let mut sent = 0u64;
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            while sent < size {
                let n = reader.read(&mut buf).await.map_err(|e| net(&e))?;
                if n == 0 {
                    return Err(net(&"snapshot file ended early"));
                }
                let chunk = request_frame(&PeerRequest::SnapshotChunk {
                    data: buf[..n].to_vec(),
                });
                conn.send(&chunk).await.map_err(|e| net(&e))?;
                sent += n as u64;
            }
            let _ = reader.close().await;
            match conn.recv().await.map_err(|e| net(&e))? {
                PeerResponse::Snapshot { vote } => Ok(SnapshotResponse {
                    vote: vote_from_wire(&vote),
                }),
                other => Err(net(&format!("unexpected snapshot response {other:?}"))),
            }
        };
        // A snapshot may be large: it gets time by its size, not one RPC's
        // time-to-live.
        let deadline = option.hard_ttl().max(snapshot_deadline(size));
        let timed = async {
            match glommio::timer::timeout(deadline, async { Ok(send.await) }).await {
                Ok(result) => result,
                Err(_) => Err(net(&"snapshot transfer timed out")),
            }
        };
        futures_lite::future::or(timed, async {
            let closed = cancel.await;
            Err(StreamingError::Closed(closed))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{entries_within, snapshot_deadline, Duration};

    #[test]
    fn a_large_snapshot_gets_time_by_its_size() {
        assert_eq!(snapshot_deadline(1 << 20), Duration::from_secs(60));
        // 4 GiB at 8 MiB/s: 512 s more.
        assert_eq!(snapshot_deadline(4 << 30), Duration::from_secs(572));
    }

    #[test]
    fn append_requests_are_bounded_by_bytes() {
        assert_eq!(entries_within([10, 10, 10].into_iter(), 25), 2);
        assert_eq!(entries_within([10, 10, 10].into_iter(), 30), 3);
        // One entry always goes, however large.
        assert_eq!(entries_within([100, 1].into_iter(), 25), 1);
        assert_eq!(entries_within(std::iter::empty(), 25), 0);
    }
}
