//! The lease table: every granted lease, its TTL, its last checkpointed
//! remaining TTL, and the keys attached to it. Pure state, changed only by
//! applying raft entries (grant, revoke, checkpoint, and puts/deletes of
//! attached keys), so every member holds the same table. When a lease
//! expires is decided elsewhere (the leader's clock); here is only what
//! was agreed.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// etcd's largest TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A lease as the snapshot stores it (attached keys are rebuilt from the
/// keys' own lease ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint, seconds; 0 when never checkpointed.
    pub remaining: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub ttl: i64,
    pub remaining: i64,
    pub keys: BTreeSet<Bytes>,
}

#[derive(Debug, Clone, Default)]
pub struct Leases {
    map: BTreeMap<i64, Lease>,
}

impl Leases {
    pub fn exists(&self, id: i64) -> bool {
        self.map.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.map.get(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.map.keys().copied()
    }

    pub fn records(&self) -> Vec<LeaseRecord> {
        self.map
            .iter()
            .map(|(id, l)| LeaseRecord {
                id: *id,
                ttl: l.ttl,
                remaining: l.remaining,
            })
            .collect()
    }

    /// Adds a lease; false if the id is taken.
    pub fn grant(&mut self, id: i64, ttl: i64) -> bool {
        if self.map.contains_key(&id) {
            return false;
        }
        self.map.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                keys: BTreeSet::new(),
            },
        );
        true
    }

    /// Removes a lease, returning it (its keys are the caller's to delete).
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.map.remove(&id)
    }

    pub fn checkpoint(&mut self, id: i64, remaining: i64) {
        if let Some(l) = self.map.get_mut(&id) {
            l.remaining = remaining;
        }
    }

    /// A key's lease changed from `from` to `to` (0: none).
    pub fn reattach(&mut self, key: &Bytes, from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(l) = self.map.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.map.get_mut(&to) {
            l.keys.insert(key.clone());
        }
    }

    /// Rebuilds the table from snapshot records and the live keys' leases.
    pub fn restore<'a>(
        records: &[LeaseRecord],
        live: impl Iterator<Item = (&'a Bytes, i64)>,
    ) -> Leases {
        let mut t = Leases::default();
        for r in records {
            t.map.insert(
                r.id,
                Lease {
                    ttl: r.ttl,
                    remaining: r.remaining,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, lease) in live {
            if let Some(l) = t.map.get_mut(&lease) {
                l.keys.insert(key.clone());
            }
        }
        t
    }
}
