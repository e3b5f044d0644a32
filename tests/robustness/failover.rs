//! How long writes stopped around each fault that hit the leader, from the
//! recorded history alone: the longest stretch with no acknowledged write
//! (by return time) from the fault's start until 5 s after its end.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::history::{FaultKind, History, Nanos, Response};

/// How long after a fault's end its stretch is still measured.
const AFTER_FAULT: Duration = Duration::from_secs(5);

/// (fault kind, longest write gap) for every fault that hit the leader.
pub fn write_gaps(h: &History) -> Vec<(FaultKind, Duration)> {
    let mut acks: Vec<Nanos> = h
        .ops
        .iter()
        .filter(|o| o.ok().is_some_and(Response::modified))
        .map(|o| o.ret)
        .collect();
    acks.sort_unstable();
    let after = u64::try_from(AFTER_FAULT.as_nanos()).unwrap_or(u64::MAX);
    h.faults
        .iter()
        .filter(|f| f.hit_leader)
        .filter_map(|f| {
            let (from, to) = (f.start, (f.end + after).min(h.load_end));
            if to <= from {
                return None;
            }
            let inside = acks.iter().copied().filter(|t| (from..to).contains(t));
            let mut longest = 0;
            let mut last = from;
            for t in inside.chain([to]) {
                longest = longest.max(t - last);
                last = t;
            }
            Some((f.kind, Duration::from_nanos(longest)))
        })
        .collect()
}

/// Max and median of the gaps of each fault kind.
pub fn by_kind(gaps: &[(FaultKind, Duration)]) -> BTreeMap<FaultKind, (Duration, Duration)> {
    let mut kinds: BTreeMap<FaultKind, Vec<Duration>> = BTreeMap::new();
    for (k, d) in gaps {
        kinds.entry(*k).or_default().push(*d);
    }
    kinds
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_unstable();
            (k, (v[v.len() - 1], v[v.len() / 2]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Fault, Op, Outcome, Request};

    fn put_acked_at(ret: Nanos) -> Op {
        Op {
            client: 0,
            member: 0,
            invoke: ret.saturating_sub(1),
            ret,
            request: Request::Put {
                key: "k".into(),
                value: format!("{ret}"),
            },
            outcome: Outcome::Ok(Response::Put { rev: 2 }),
        }
    }

    #[test]
    fn the_longest_gap_inside_the_window_counts() {
        let s = 1_000_000_000;
        let h = History {
            ops: [1, 2, 5, 6, 9, 30]
                .iter()
                .map(|t| put_acked_at(t * s / 2))
                .collect(),
            faults: vec![Fault {
                kind: FaultKind::Kill,
                member: 0,
                hit_leader: true,
                start: s,
                end: 2 * s,
                note: String::new(),
            }],
            load_end: 20 * s,
            ..History::default()
        };
        // Window 1 s..7 s; acks at 1, 2.5, 3, 4.5, then none until 7.
        let gaps = write_gaps(&h);
        assert_eq!(gaps, [(FaultKind::Kill, Duration::from_millis(2500))]);
        let stats = by_kind(&gaps);
        assert_eq!(stats[&FaultKind::Kill].0, Duration::from_millis(2500));
    }
}
