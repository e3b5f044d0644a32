//! A test mode that acts out power cuts in the WAL writer.
//!
//! kill -9 cannot show a missing fdatasync: with O_DIRECT the data is on the
//! device once the write returns. With `KEEL_TEST_POWER_LOSS=<step>:<n>` the
//! writer, the n-th time it reaches `<step>`, puts back on disk what the disk
//! held before every write no completed fdatasync covers (what a power cut
//! would leave), then aborts the process. A test then restarts the member
//! and checks that every acknowledged write is there.
//!
//! The steps, in the order a flush and a segment's life go through them:
//!
//! * `flush-written`: a flush's blocks are written, its fdatasync not run;
//! * `flush-synced`: its fdatasync is done, its appends not yet acknowledged;
//! * `rotated`: the writer moved to a fresh segment and wrote nothing to it;
//! * `releasing`: a segment a snapshot covers is about to be deleted (a
//!   deletion not yet made durable by a directory fsync is undone by a cut).
//!
//! Unset, the writer runs as always; the check is one branch per step.

/// A step of the WAL writer where a power cut can be acted out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    FlushWritten,
    FlushSynced,
    Rotated,
    Releasing,
}

impl Step {
    fn parse(s: &str) -> Option<Step> {
        Some(match s {
            "flush-written" => Step::FlushWritten,
            "flush-synced" => Step::FlushSynced,
            "rotated" => Step::Rotated,
            "releasing" => Step::Releasing,
            _ => return None,
        })
    }
}

/// The environment variable that arms a power cut.
pub const VAR: &str = "KEEL_TEST_POWER_LOSS";

/// An armed power cut: at the `left`-th time the writer reaches `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerLoss {
    step: Step,
    left: u64,
}

impl PowerLoss {
    /// `<step>:<n>`, n ≥ 1.
    pub fn parse(s: &str) -> Result<PowerLoss, String> {
        let bad = || {
            format!("{VAR}={s}: expected <step>:<n>, step one of flush-written, flush-synced, rotated, releasing")
        };
        let (step, n) = s.split_once(':').ok_or_else(bad)?;
        let step = Step::parse(step).ok_or_else(bad)?;
        let left: u64 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
        Ok(PowerLoss { step, left })
    }

    /// The power cut armed in this process's environment, if any.
    pub fn from_env() -> Option<PowerLoss> {
        let v = std::env::var(VAR).ok()?;
        match PowerLoss::parse(&v) {
            Ok(p) => Some(p),
            Err(e) => crate::fatal(&e),
        }
    }

    /// Counts a visit to `step`; true when the cut is due now.
    pub fn reached(&mut self, step: Step) -> bool {
        if step != self.step {
            return false;
        }
        self.left -= 1;
        self.left == 0
    }
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
        assert!(PowerLoss::parse("releasing:1").is_ok());
        assert!(PowerLoss::parse("rotated:0").is_err());
        assert!(PowerLoss::parse("flush:1").is_err());
        assert!(PowerLoss::parse("rotated").is_err());
    }
}
