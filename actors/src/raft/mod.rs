//! The raft group: openraft configured for keel.
//!
//! * [`types`]: the type configuration, proposals and replies;
//! * [`codec`]: byte encodings of raft metadata for the WAL and snapshots;
//! * [`log_store`]: openraft's log storage over the WAL writer;
//! * [`state_machine`]: openraft's state machine over the MVCC apply actor;
//! * [`network`]: openraft's RPCs over the peer transport (`crate::peer`);
//! * [`members`]: membership changes with etcd's rules;
//! * [`actor`]: the raft actor that owns the `Raft` handle and serves reactors
//!   (proposal batching), with [`leader`] (what only the leader answers, run
//!   here or forwarded), [`reads`] (read-index rounds) and [`transfer`]
//!   (MoveLeader);
//! * [`QuietStart`]: a member that just started waits before it campaigns.

pub mod actor;
pub mod codec;
pub mod leader;
pub mod log_store;
pub mod members;
pub mod network;
pub mod reads;
pub mod state_machine;
pub mod transfer;
pub mod types;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use types::Raft;

/// A member that just started (a restarted leader among them: it comes back
/// as a follower, see `log_store::restart_vote`) first listens for a leader
/// as long as a follower of a live leader would before campaigning: its
/// leader lease plus the longest election timeout. Campaigning earlier,
/// before the leader's next heartbeat reaches it, would only make the
/// leader step down for its higher term and cost the cluster another
/// election.
///
/// A peer asking for its vote in a later term ends the wait at once: that
/// peer hears no leader either, and this member, perhaps holding the
/// longest log (a leader killed and restarted holds entries no one else
/// has yet), may be the only one the others can elect.
#[derive(Clone)]
pub struct QuietStart {
    raft: Raft,
    quiet: Rc<Cell<bool>>,
}

impl QuietStart {
    /// Turns `raft`'s elections off for `how_long`.
    pub fn begin(raft: &Raft, how_long: Duration) -> QuietStart {
        raft.runtime_config().elect(false);
        let q = QuietStart {
            raft: raft.clone(),
            quiet: Rc::new(Cell::new(true)),
        };
        let ends = q.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(how_long).await;
            ends.end();
        })
        .detach();
        q
    }

    /// A start that never waits (a sole voter, or a member with no wait).
    pub fn none(raft: &Raft) -> QuietStart {
        QuietStart {
            raft: raft.clone(),
            quiet: Rc::new(Cell::new(false)),
        }
    }

    /// Turns elections back on, if the wait is still running.
    pub fn end(&self) {
        if self.quiet.replace(false) {
            self.raft.runtime_config().elect(true);
        }
    }

    /// Ends the wait if `term` is later than this member's current term.
    pub fn on_vote_request(&self, term: u64) {
        if self.quiet.get() && term > self.raft.metrics().borrow().current_term {
            tracing::info!(term, "a peer campaigns: this member may campaign too");
            self.end();
        }
    }
}
