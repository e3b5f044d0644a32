//! Auto-compaction, as etcd 3.4 does it.
//!
//! * **periodic** (retention `P`): every `min(P, 1h) / 10` sample the current
//!   revision, keeping enough samples that the oldest is about `P` old.
//!   Once `P` has passed since start (then every `min(P, 1h)`), compact at
//!   the oldest sample.
//! * **revision** (retention `N`): every 5 minutes compact at
//!   `current - N`, unless that is not positive or was done last time.
//!
//! [`Policy`] makes these decisions from the time and revision it is given,
//! without I/O; the task at the bottom feeds it and proposes compactions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_proto::command::{Command, CompactCmd};
use tokio::sync::{mpsc, oneshot};

use crate::mvcc_actor::MvccMsg;
use crate::raft::actor::{Origin, RaftRequest};

/// etcd's revision-mode check interval.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Periodic(Duration),
    Revision(i64),
}

#[derive(Debug)]
pub struct Policy {
    mode: AutoCompaction,
    samples: VecDeque<i64>,
    last_success: Instant,
    /// Time that must pass after `last_success` before the next compaction.
    wait: Duration,
    /// Revision-mode: the last revision compacted.
    prev: i64,
}

impl Policy {
    pub fn new(mode: AutoCompaction, now: Instant) -> Policy {
        let wait = match mode {
            AutoCompaction::Periodic(p) => p,
            AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
        };
        Policy {
            mode,
            samples: VecDeque::new(),
            last_success: now,
            wait,
            prev: 0,
        }
    }

    /// How often [`Policy::tick`] should run.
    pub fn tick_interval(&self) -> Duration {
        match self.mode {
            AutoCompaction::Periodic(p) => (p.min(HOUR) / 10).max(Duration::from_millis(1)),
            AutoCompaction::Revision(_) => REVISION_CHECK_INTERVAL,
        }
    }

    /// Called every tick with the store's revision; returns a revision to
    /// compact at, if it is time.
    pub fn tick(&mut self, now: Instant, current_rev: i64) -> Option<i64> {
        match self.mode {
            AutoCompaction::Periodic(p) => {
                let retention_samples =
                    (p.as_nanos() / self.tick_interval().as_nanos()) as usize + 1;
                self.samples.push_back(current_rev);
                while self.samples.len() > retention_samples {
                    self.samples.pop_front();
                }
                if now.duration_since(self.last_success) < self.wait {
                    return None;
                }
                self.samples.front().copied()
            }
            AutoCompaction::Revision(keep) => {
                let rev = current_rev - keep;
                (rev > 0 && rev != self.prev).then_some(rev)
            }
        }
    }

    /// Reports how a proposed compaction went. `Compacted` (someone already
    /// compacted further) counts as done, as in etcd.
    pub fn done(&mut self, now: Instant, rev: i64, ok: bool) {
        if ok {
            self.last_success = now;
            self.prev = rev;
            if let AutoCompaction::Periodic(p) = self.mode {
                self.wait = p.min(HOUR);
            }
        }
    }
}

/// Runs the policy against the live store, proposing compactions through raft.
pub async fn run(
    mode: AutoCompaction,
    raft: mpsc::Sender<RaftRequest>,
    mvcc: mpsc::Sender<MvccMsg>,
) {
    let mut policy = Policy::new(mode, Instant::now());
    loop {
        glommio::timer::sleep(policy.tick_interval()).await;
        let (tx, rx) = oneshot::channel();
        if mvcc.send(MvccMsg::Status { reply: tx }).await.is_err() {
            return;
        }
        let Ok(status) = rx.await else { return };
        let Some(rev) = policy.tick(Instant::now(), status.current_rev) else {
            continue;
        };
        // Like etcd, only the leader compacts (followers apply its command).
        let (tx, rx) = oneshot::channel();
        if raft.send(RaftRequest::Status { reply: tx }).await.is_err() {
            return;
        }
        let Ok(raft_status) = rx.await else { return };
        if raft_status.leader != Some(raft_status.me) {
            policy.done(Instant::now(), rev, false);
            continue;
        }
        let command = Bytes::from_owner(
            Command::Compact(CompactCmd {
                revision: rev,
                physical: false,
            })
            .to_bytes(),
        );
        let (tx, rx) = oneshot::channel();
        if raft
            .send(RaftRequest::Propose {
                command,
                origin: Origin::Client,
                reply: tx,
            })
            .await
            .is_err()
        {
            return;
        }
        let ok = match rx.await {
            Ok(Ok(applied)) => matches!(
                applied.outcome,
                Ok(_) | Err(keel_storage::mvcc::MvccError::Compacted)
            ),
            other => {
                tracing::warn!(rev, "auto-compaction failed: {other:?}");
                false
            }
        };
        if ok {
            tracing::info!(rev, "auto-compacted");
        }
        policy.done(Instant::now(), rev, ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_at_the_revision_from_one_period_ago() {
        let t0 = Instant::now();
        let period = Duration::from_secs(100);
        let mut p = Policy::new(AutoCompaction::Periodic(period), t0);
        assert_eq!(p.tick_interval(), Duration::from_secs(10));
        let mut got = Vec::new();
        // The store gains 5 revisions per 10 s tick.
        for i in 1..=25u64 {
            let now = t0 + Duration::from_secs(10 * i);
            let rev = 5 * i as i64;
            if let Some(r) = p.tick(now, rev) {
                got.push((i, r));
                p.done(now, r, true);
            }
        }
        // First at t=100 s, at the oldest sample (t=10 s, rev 5); then every
        // period, at the revision of one period before (t=100 s, rev 50).
        assert_eq!(got[0], (10, 5));
        assert_eq!(got[1], (20, 50));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn periodic_over_an_hour_compacts_hourly() {
        let t0 = Instant::now();
        let mut p = Policy::new(AutoCompaction::Periodic(Duration::from_secs(3 * 3600)), t0);
        assert_eq!(p.tick_interval(), Duration::from_secs(360));
        let mut at = Vec::new();
        for i in 1..=60u64 {
            let now = t0 + Duration::from_secs(360 * i);
            if let Some(r) = p.tick(now, i as i64) {
                at.push(i);
                p.done(now, r, true);
            }
        }
        // 3 h first (tick 30), then every hour (10 ticks).
        assert_eq!(at, vec![30, 40, 50, 60]);
    }

    #[test]
    fn failed_compaction_retries_next_tick() {
        let t0 = Instant::now();
        let mut p = Policy::new(AutoCompaction::Periodic(Duration::from_secs(10)), t0);
        let now = t0 + Duration::from_secs(10);
        let r = p.tick(now, 7).unwrap();
        p.done(now, r, false);
        assert!(p.tick(now + Duration::from_secs(1), 8).is_some());
    }

    #[test]
    fn revision_mode_keeps_the_last_n() {
        let t0 = Instant::now();
        let mut p = Policy::new(AutoCompaction::Revision(100), t0);
        assert_eq!(p.tick(t0, 50), None);
        assert_eq!(p.tick(t0, 150), Some(50));
        p.done(t0, 50, true);
        assert_eq!(p.tick(t0, 150), None, "nothing new to compact");
        assert_eq!(p.tick(t0, 180), Some(80));
    }
}
