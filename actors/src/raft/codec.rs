//! Byte encodings of raft metadata: log ids, votes and memberships for the
//! WAL, and the snapshot's raft metadata (last applied log id and
//! membership). Little-endian throughout.
//!
//! ```text
//! membership: n_configs u32, per config: n u32, n x node_id u64;
//!             n_nodes u32, per node: node_id u64, name (len u32, utf-8),
//!             n_peer_urls u32, each (len u32, utf-8), n_client_urls u32, each
//! snapshot meta: flags u8 (bit0 applied present, bit1 membership log id present),
//!                applied (term u64, leader u64, index u64),
//!                membership log id (term, leader, index), membership
//! snapshot file's app bytes: snapshot meta, then removed members:
//!                n u32, n x node_id u64 (absent in older files: none)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use keel_storage::wal::{LogIdRecord, VoteRecord};

use super::types::{LogId, Membership, Node, NodeId, StoredMembership, Vote};

pub fn log_id_record(id: &LogId) -> LogIdRecord {
    LogIdRecord {
        term: id.leader_id.term,
        leader: NO_LEADER_RECORDED,
        index: id.index,
    }
}

pub fn log_id_from(r: &LogIdRecord) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(r.term, r.leader), r.index)
}

pub fn vote_record(v: &Vote) -> VoteRecord {
    VoteRecord {
        term: v.leader_id.term,
        node_id: v.leader_id.voted_for().unwrap_or(NO_VOTE),
        committed: v.committed,
    }
}

pub fn vote_from(r: &VoteRecord) -> Vote {
    vote_of(r.term, r.node_id, r.committed)
}

/// What a log id records as its leader. openraft runs with one leader per
/// term (`single-term-leader`), so a log id is (term, index) and the term
/// names the leader; the field stays in the formats, always 0.
pub const NO_LEADER_RECORDED: NodeId = 0;

/// The node id recorded for a vote for nobody (a member's vote before its
/// first election). Member ids are never 0.
pub const NO_VOTE: NodeId = 0;

/// A vote from its recorded parts.
pub fn vote_of(term: u64, node_id: NodeId, committed: bool) -> Vote {
    let voted_for = (node_id != NO_VOTE).then_some(node_id);
    openraft::Vote {
        leader_id: openraft::LeaderId { term, voted_for },
        committed,
    }
}

pub fn encode_membership(m: &Membership, out: &mut Vec<u8>) {
    let configs = m.get_joint_config();
    out.extend_from_slice(&(configs.len() as u32).to_le_bytes());
    for c in configs {
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        for id in c {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    out.extend_from_slice(&(nodes.len() as u32).to_le_bytes());
    for (id, node) in nodes {
        out.extend_from_slice(&id.to_le_bytes());
        put_str(out, &node.name);
        for urls in [&node.peer_urls, &node.client_urls] {
            out.extend_from_slice(&(urls.len() as u32).to_le_bytes());
            for u in urls {
                put_str(out, u);
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err("truncated raft metadata".into());
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|e| e.to_string())
    }
    fn strings(&mut self) -> Result<Vec<String>, String> {
        let n = self.u32()?;
        (0..n).map(|_| self.string()).collect()
    }
    fn log_id(&mut self) -> Result<LogId, String> {
        let term = self.u64()?;
        let leader = self.u64()?;
        let index = self.u64()?;
        Ok(log_id_from(&LogIdRecord {
            term,
            leader,
            index,
        }))
    }
    fn membership(&mut self) -> Result<Membership, String> {
        let n_configs = self.u32()?;
        let mut configs = Vec::new();
        for _ in 0..n_configs {
            let n = self.u32()?;
            let mut set = BTreeSet::new();
            for _ in 0..n {
                set.insert(self.u64()?);
            }
            configs.push(set);
        }
        let n_nodes = self.u32()?;
        let mut nodes = BTreeMap::<NodeId, Node>::new();
        for _ in 0..n_nodes {
            let id = self.u64()?;
            let name = self.string()?;
            let peer_urls = self.strings()?;
            let client_urls = self.strings()?;
            nodes.insert(
                id,
                Node {
                    name,
                    peer_urls,
                    client_urls,
                },
            );
        }
        Ok(Membership::new(configs, nodes))
    }
}

pub fn decode_membership(b: &[u8]) -> Result<Membership, String> {
    Reader { b }.membership()
}

fn put_log_id(out: &mut Vec<u8>, id: Option<&LogId>) {
    let r = id.map(log_id_record).unwrap_or_default();
    out.extend_from_slice(&r.term.to_le_bytes());
    out.extend_from_slice(&r.leader.to_le_bytes());
    out.extend_from_slice(&r.index.to_le_bytes());
}

/// Raft's part of a snapshot: what the data covers and the membership then.
pub fn encode_snapshot_meta(applied: Option<&LogId>, membership: &StoredMembership) -> Vec<u8> {
    let mut out = Vec::new();
    let flags = u8::from(applied.is_some()) | (u8::from(membership.log_id().is_some()) << 1);
    out.push(flags);
    put_log_id(&mut out, applied);
    put_log_id(&mut out, membership.log_id().as_ref());
    encode_membership(membership.membership(), &mut out);
    out
}

pub fn decode_snapshot_meta(b: &[u8]) -> Result<(Option<LogId>, StoredMembership), String> {
    let mut r = Reader { b };
    let flags = r.take(1)?[0];
    let applied = r.log_id()?;
    let m_log_id = r.log_id()?;
    let membership = r.membership()?;
    Ok((
        (flags & 1 != 0).then_some(applied),
        StoredMembership::new((flags & 2 != 0).then_some(m_log_id), membership),
    ))
}

/// Raft's part of a snapshot file and the state kept beside the store:
/// the snapshot meta, the ids of members removed from the cluster (refused
/// if they come back), and the alarms raised.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotApp {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub removed: BTreeSet<NodeId>,
    /// (member id, `pb::AlarmType` wire value)
    pub alarms: BTreeSet<(NodeId, i32)>,
}

pub fn encode_snapshot_app(app: &SnapshotApp) -> Vec<u8> {
    let mut out = encode_snapshot_meta(app.applied.as_ref(), &app.membership);
    out.extend_from_slice(&(app.removed.len() as u32).to_le_bytes());
    for id in &app.removed {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&(app.alarms.len() as u32).to_le_bytes());
    for (id, alarm) in &app.alarms {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&alarm.to_le_bytes());
    }
    out
}

/// Reads what [`encode_snapshot_app`] wrote; files from before removed
/// members or alarms were kept end early and have none.
pub fn decode_snapshot_app(b: &[u8]) -> Result<SnapshotApp, String> {
    let mut r = Reader { b };
    let flags = r.take(1)?[0];
    let applied = r.log_id()?;
    let m_log_id = r.log_id()?;
    let membership = r.membership()?;
    let mut removed = BTreeSet::new();
    if !r.b.is_empty() {
        let n = r.u32()?;
        for _ in 0..n {
            removed.insert(r.u64()?);
        }
    }
    let mut alarms = BTreeSet::new();
    if !r.b.is_empty() {
        let n = r.u32()?;
        for _ in 0..n {
            let id = r.u64()?;
            let alarm = r.u32()? as i32;
            alarms.insert((id, alarm));
        }
    }
    Ok(SnapshotApp {
        applied: (flags & 1 != 0).then_some(applied),
        membership: StoredMembership::new((flags & 2 != 0).then_some(m_log_id), membership),
        removed,
        alarms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_meta_round_trips() {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            7u64,
            Node {
                name: "a".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
                client_urls: vec!["http://127.0.0.1:2379".into(), "http://[::1]:2379".into()],
            },
        );
        let m = Membership::new(vec![BTreeSet::from([7u64])], nodes);
        let id = log_id_from(&LogIdRecord {
            term: 3,
            leader: 7,
            index: 99,
        });
        let sm = StoredMembership::new(
            Some(log_id_from(&LogIdRecord {
                term: 1,
                leader: 7,
                index: 1,
            })),
            m,
        );
        let bytes = encode_snapshot_meta(Some(&id), &sm);
        let (applied, back) = decode_snapshot_meta(&bytes).unwrap();
        assert_eq!(applied, Some(id));
        assert_eq!(back, sm);
        assert!(decode_snapshot_meta(&bytes[..bytes.len() - 1]).is_err());
        // The file's app bytes add removed members and alarms; files
        // written before either have none.
        let app = SnapshotApp {
            applied: Some(id),
            membership: sm.clone(),
            removed: BTreeSet::from([5u64, 9]),
            alarms: BTreeSet::from([(5u64, 1), (7, 2)]),
        };
        let encoded = encode_snapshot_app(&app);
        assert_eq!(decode_snapshot_app(&encoded).unwrap(), app);
        let old = decode_snapshot_app(&bytes).unwrap();
        assert!(old.removed.is_empty() && old.alarms.is_empty());
        assert!(decode_snapshot_app(&encoded[..encoded.len() - 1]).is_err());
        // A file from before alarms: removed members, then nothing.
        let before_alarms = &encoded[..encoded.len() - 4 - 2 * 12];
        let back = decode_snapshot_app(before_alarms).unwrap();
        assert_eq!(back.removed, app.removed);
        assert!(back.alarms.is_empty());
    }
}
