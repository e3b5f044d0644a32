//! When leases expire: the leader's clock, kept beside the lease table in
//! the MVCC actor. Pure: every call takes `now`.
//!
//! Only the leader's deadlines count. When a member becomes leader, every
//! lease gets `now + remaining`, where remaining is the TTL left at the last
//! checkpoint (or the full TTL if none): so a lease's remaining time
//! survives a leader change instead of being reset, going beyond etcd's
//! default. The leader checkpoints remaining TTLs through raft every
//! `--experimental-lease-checkpoint-interval`, and revokes expired leases
//! through raft; a revoke is proposed again if it has not been applied a
//! second later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_storage::mvcc::Leases;

/// How long a proposed revoke may take to apply before it is proposed again.
pub const REVOKE_RETRY: Duration = Duration::from_secs(1);
/// Leases checkpointed by one raft entry at most (etcd's batch).
pub const CHECKPOINTS_PER_ENTRY: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    NotFound,
    /// This member does not lead; ask the leader.
    NotLeader,
}

#[derive(Debug, Default)]
pub struct LeaseClock {
    leader: bool,
    deadlines: HashMap<i64, Instant>,
    /// Revokes proposed and not applied yet, with when.
    revoking: HashMap<i64, Instant>,
    last_checkpoint: Option<Instant>,
}

/// Whole seconds, rounded up (checkpoints: never record less than is left).
fn secs_up(d: Duration) -> i64 {
    d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0)
}

impl LeaseClock {
    /// Leadership changed. A new leader starts every lease's clock from
    /// its checkpointed remaining TTL.
    pub fn set_leader(&mut self, leader: bool, leases: &Leases, now: Instant) {
        if leader && !self.leader {
            self.deadlines.clear();
            for r in leases.records() {
                let left = if r.remaining > 0 { r.remaining } else { r.ttl };
                self.deadlines
                    .insert(r.id, now + Duration::from_secs(left.max(0) as u64));
            }
            self.revoking.clear();
            self.last_checkpoint = Some(now);
        }
        self.leader = leader;
    }

    pub fn granted(&mut self, id: i64, ttl: i64, now: Instant) {
        self.deadlines
            .insert(id, now + Duration::from_secs(ttl.max(0) as u64));
    }

    pub fn revoked(&mut self, id: i64) {
        self.deadlines.remove(&id);
        self.revoking.remove(&id);
    }

    /// A keep-alive: the lease lives another TTL. Returns the TTL.
    pub fn renew(&mut self, leases: &Leases, id: i64, now: Instant) -> Result<i64, LeaseError> {
        if !self.leader {
            return Err(LeaseError::NotLeader);
        }
        let lease = leases.get(id).ok_or(LeaseError::NotFound)?;
        if self.revoking.contains_key(&id) {
            // Already expired: etcd refuses to renew a lease being revoked.
            return Err(LeaseError::NotFound);
        }
        self.deadlines
            .insert(id, now + Duration::from_secs(lease.ttl.max(0) as u64));
        Ok(lease.ttl)
    }

    /// Whole seconds left (rounded down, as etcd reports); 0 once expired.
    pub fn remaining(&self, leases: &Leases, id: i64, now: Instant) -> Result<i64, LeaseError> {
        if !self.leader {
            return Err(LeaseError::NotLeader);
        }
        leases.get(id).ok_or(LeaseError::NotFound)?;
        Ok(self
            .deadlines
            .get(&id)
            .map_or(0, |d| d.saturating_duration_since(now).as_secs() as i64))
    }

    /// Leases whose time is up and whose revoke should be proposed now.
    pub fn expired(&mut self, now: Instant) -> Vec<i64> {
        if !self.leader {
            return Vec::new();
        }
        let mut out: Vec<i64> = self
            .deadlines
            .iter()
            .filter(|(id, d)| {
                **d <= now
                    && self
                        .revoking
                        .get(*id)
                        .is_none_or(|at| now.duration_since(*at) >= REVOKE_RETRY)
            })
            .map(|(id, _)| *id)
            .collect();
        out.sort_unstable();
        for id in &out {
            self.revoking.insert(*id, now);
        }
        out
    }

    /// Remaining TTLs to checkpoint, if `every` has passed since the last.
    pub fn checkpoint_due(&mut self, now: Instant, every: Duration) -> Vec<(i64, i64)> {
        if !self.leader || self.deadlines.is_empty() {
            return Vec::new();
        }
        if self
            .last_checkpoint
            .is_some_and(|at| now.duration_since(at) < every)
        {
            return Vec::new();
        }
        self.last_checkpoint = Some(now);
        let mut out: Vec<(i64, i64)> = self
            .deadlines
            .iter()
            .filter(|(id, _)| !self.revoking.contains_key(*id))
            .map(|(id, d)| (*id, secs_up(d.saturating_duration_since(now)).max(1)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether the clock needs ticks (a leader with leases).
    pub fn active(&self) -> bool {
        self.leader && !self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(i64, i64, i64)]) -> Leases {
        let records: Vec<_> = entries
            .iter()
            .map(|&(id, ttl, remaining)| keel_storage::mvcc::LeaseRecord { id, ttl, remaining })
            .collect();
        Leases::restore(&records, std::iter::empty())
    }

    #[test]
    fn a_new_leader_starts_from_the_checkpoint() {
        let t0 = Instant::now();
        let leases = table(&[(1, 60, 0), (2, 60, 5)]);
        let mut c = LeaseClock::default();
        assert_eq!(c.renew(&leases, 1, t0), Err(LeaseError::NotLeader));
        c.set_leader(true, &leases, t0);
        assert_eq!(c.remaining(&leases, 1, t0), Ok(60));
        assert_eq!(
            c.remaining(&leases, 2, t0 + Duration::from_millis(1)),
            Ok(4)
        );
        assert_eq!(c.expired(t0 + Duration::from_secs(4)), Vec::<i64>::new());
        assert_eq!(c.expired(t0 + Duration::from_secs(5)), vec![2]);
        // Not proposed again at once, but again after the retry delay.
        assert!(c.expired(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(c.expired(t0 + Duration::from_secs(6)), vec![2]);
        assert_eq!(c.renew(&leases, 2, t0), Err(LeaseError::NotFound));
        c.revoked(2);
        assert_eq!(c.renew(&leases, 3, t0), Err(LeaseError::NotFound));
    }

    #[test]
    fn renew_extends_and_checkpoints_record_what_is_left() {
        let t0 = Instant::now();
        let leases = table(&[(1, 10, 0)]);
        let mut c = LeaseClock::default();
        c.set_leader(true, &leases, t0);
        let every = Duration::from_secs(5);
        assert!(c.checkpoint_due(t0, every).is_empty());
        let t4 = t0 + Duration::from_secs(4);
        assert_eq!(c.renew(&leases, 1, t4), Ok(10));
        assert_eq!(
            c.remaining(&leases, 1, t4 + Duration::from_millis(500)),
            Ok(9)
        );
        let t6 = t0 + Duration::from_secs(6);
        assert_eq!(c.checkpoint_due(t6, every), vec![(1, 8)]);
        assert!(c.checkpoint_due(t6, every).is_empty());
        assert!(c.expired(t4 + Duration::from_secs(9)).is_empty());
        assert_eq!(c.expired(t4 + Duration::from_secs(10)), vec![1]);
        c.set_leader(false, &leases, t6);
        assert!(c.expired(t4 + Duration::from_secs(20)).is_empty());
    }
}
