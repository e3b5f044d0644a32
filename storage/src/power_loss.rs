//! A test mode that acts out power cuts while the WAL and snapshots are
//! written.
//!
//! kill -9 cannot show a missing fdatasync: with O_DIRECT the data is on the
//! device once the write returns, and the page cache survives the process.
//! With `KEEL_TEST_POWER_LOSS=<step>:<n>`, the n-th time the process reaches
//! `<step>` it puts back on disk what the disk held before every write no
//! completed fsync covers (what a power cut would leave), then aborts. A test
//! then restarts the member and checks that every acknowledged write is
//! there and that it starts.
//!
//! The steps:
//!
//! * `flush-written`: a WAL flush's blocks are written, its fdatasync not
//!   run (the cut undoes every WAL write since the last completed one);
//! * `flush-synced`: its fdatasync is done, its appends not acknowledged;
//! * `rotated`: the WAL writer moved to a fresh segment, wrote nothing yet;
//! * `releasing`: a WAL segment a snapshot covers is about to be deleted;
//! * `snapshot-synced`: a snapshot file (saved, or received and about to
//!   be installed) is complete and synced, not yet renamed into place;
//! * `snapshot-renamed`: it is renamed into place, the directory not yet
//!   synced (the cut undoes the rename).
//!
//! Unset, nothing changes: each step costs one check of a flag.

use std::sync::{Mutex, OnceLock};

/// A step where a power cut can be acted out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    FlushWritten,
    FlushSynced,
    Rotated,
    Releasing,
    SnapshotSynced,
    SnapshotRenamed,
}

impl Step {
    fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "flush-written" => Step::FlushWritten,
            "flush-synced" => Step::FlushSynced,
            "rotated" => Step::Rotated,
            "releasing" => Step::Releasing,
            "snapshot-synced" => Step::SnapshotSynced,
            "snapshot-renamed" => Step::SnapshotRenamed,
            _ => return None,
        })
    }
}

/// The environment variable that arms a power cut.
pub const VAR: &str = "KEEL_TEST_POWER_LOSS";

/// An armed power cut: at the `left`-th time the process reaches `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerLoss {
    step: Step,
    left: u64,
}

impl PowerLoss {
    /// `<step>:<n>`, n ≥ 1.
    pub fn parse(s: &str) -> Result<PowerLoss, String> {
        let bad = || {
            format!(
                "{VAR}={s}: expected <step>:<n>, step one of flush-written, flush-synced, \
                 rotated, releasing, snapshot-synced, snapshot-renamed"
            )
        };
        let (step, n) = s.split_once(':').ok_or_else(bad)?;
        let step = Step::parse(step).ok_or_else(bad)?;
        let left: u64 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
        Ok(PowerLoss { step, left })
    }

    /// Counts a visit to `step`; true when the cut is due now.
    pub fn reached(&mut self, step: Step) -> bool {
        if step != self.step || self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.left == 0
    }
}

/// The cut armed in this process's environment. An unreadable setting is
/// an error at start-up, never a silent run without the cut.
fn armed_cut() -> &'static Option<Mutex<PowerLoss>> {
    static ARMED: OnceLock<Option<Mutex<PowerLoss>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let v = std::env::var(VAR).ok()?;
        match PowerLoss::parse(&v) {
            Ok(p) => Some(Mutex::new(p)),
            Err(e) => {
                eprintln!("keel: fatal: {e}");
                std::process::exit(2)
            }
        }
    })
}

/// Whether a power cut is armed at all (the WAL writer then keeps track of
/// what its completed fsyncs cover).
pub fn armed() -> bool {
    armed_cut().is_some()
}

/// Counts a visit to `step`; true when the cut is due now: the caller puts
/// the disk in its after-the-cut state and calls [`cut`].
pub fn reached(step: Step) -> bool {
    armed_cut()
        .as_ref()
        .is_some_and(|p| p.lock().unwrap_or_else(|e| e.into_inner()).reached(step))
}

/// Ends the process as a power cut would, once the disk holds only what it
/// would after one.
pub fn cut(step: Step) -> ! {
    eprintln!("{VAR}: power cut acted out at {step:?}");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_comes_at_the_nth_visit_of_its_step() {
        let mut p = PowerLoss::parse("flush-synced:3").unwrap();
        assert!(!p.reached(Step::FlushSynced));
        assert!(!p.reached(Step::FlushWritten));
        assert!(!p.reached(Step::FlushSynced));
        assert!(p.reached(Step::FlushSynced));
        assert!(!p.reached(Step::FlushSynced), "once only");
        assert!(PowerLoss::parse("releasing:1").is_ok());
        assert!(PowerLoss::parse("snapshot-renamed:2").is_ok());
        assert!(PowerLoss::parse("rotated:0").is_err());
        assert!(PowerLoss::parse("flush:1").is_err());
        assert!(PowerLoss::parse("rotated").is_err());
    }
}
