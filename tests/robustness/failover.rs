//! How long writes stopped around each fault that hit the leader, from the
//! recorded history alone: the longest stretch with no acknowledged write
//! (by return time) from the fault's start until 5 s after its end.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::history::{Fault, FaultKind, History, Nanos, Outcome, Request, Response};

/// How long after a fault's end its stretch is still measured (unless the
/// next fault starts sooner).
const AFTER_FAULT: Duration = Duration::from_secs(5);

/// Return times of the acknowledged writes, in order.
fn write_acks(h: &History) -> Vec<Nanos> {
    let mut acks: Vec<Nanos> = h
        .ops
        .iter()
        .filter(|o| o.ok().is_some_and(Response::modified))
        .map(|o| o.ret)
        .collect();
    acks.sort_unstable();
    acks
}

/// Each fault that hit the leader with its window: from its start until
/// 5 s after its end, the next fault's start, or the time the clients
/// stopped starting operations, whichever comes first.
fn leader_fault_windows(h: &History) -> Vec<(&Fault, Nanos, Nanos)> {
    let after = u64::try_from(AFTER_FAULT.as_nanos()).unwrap_or(u64::MAX);
    h.faults
        .iter()
        .filter(|f| f.hit_leader)
        .filter_map(|f| {
            let next = h
                .faults
                .iter()
                .map(|g| g.start)
                .filter(|&s| s > f.start)
                .min()
                .unwrap_or(u64::MAX);
            let to = (f.end + after).min(h.invoke_end).min(next);
            (to > f.start).then_some((f, f.start, to))
        })
        .collect()
}

/// The longest stretch in `from..to` with no ack: (length, start, end).
fn longest_gap(acks: &[Nanos], from: Nanos, to: Nanos) -> (Nanos, Nanos, Nanos) {
    let mut gap = (0, from, from);
    let mut last = from;
    let inside = acks.iter().copied().filter(|t| (from..to).contains(t));
    for t in inside.chain([to]) {
        if t - last > gap.0 {
            gap = (t - last, last, t);
        }
        last = t;
    }
    gap
}

/// (fault kind, longest write gap) for every fault that hit the leader.
pub fn write_gaps(h: &History) -> Vec<(FaultKind, Duration)> {
    fault_gaps(h)
        .into_iter()
        .map(|(k, gap, _)| (k, gap))
        .collect()
}

/// (fault kind, longest write gap, how long the fault lasted) for every
/// fault that hit the leader.
fn fault_gaps(h: &History) -> Vec<(FaultKind, Duration, Duration)> {
    let acks = write_acks(h);
    leader_fault_windows(h)
        .into_iter()
        .map(|(f, from, to)| {
            let gap = Duration::from_nanos(longest_gap(&acks, from, to).0);
            (
                f.kind,
                gap,
                Duration::from_nanos(f.end.saturating_sub(f.start)),
            )
        })
        .collect()
}

/// The longest write gap beyond its fault's own length, per fault kind
/// (for pauses: how much longer than the pause itself writes stopped).
pub fn beyond_fault(h: &History) -> BTreeMap<FaultKind, Duration> {
    let mut worst: BTreeMap<FaultKind, Duration> = BTreeMap::new();
    for (kind, gap, fault) in fault_gaps(h) {
        let beyond = gap.saturating_sub(fault);
        let w = worst.entry(kind).or_default();
        *w = (*w).max(beyond);
    }
    worst
}

/// For each leader fault whose write gap is longer than `over`: the fault,
/// where the gap lies, what every client was doing in it, and the members'
/// log lines from then (`logs[i]` is member i's log, `start_unix` the run's
/// start in seconds since the epoch). Printed with `KEEL_ROBUSTNESS_TRACE`.
pub fn explain(h: &History, over: Duration, logs: &[String], start_unix: f64) -> String {
    let acks = write_acks(h);
    let secs = |n: Nanos| n as f64 / 1e9;
    let mut out = String::new();
    for (f, from, to) in leader_fault_windows(h) {
        let (len, g0, g1) = longest_gap(&acks, from, to);
        if Duration::from_nanos(len) <= over {
            continue;
        }
        out += &format!(
            "{} m{} {:.3}..{:.3}: no acknowledged write {:.3}..{:.3} ({:.2} s) {}\n",
            f.kind.name(),
            f.member,
            secs(f.start),
            secs(f.end),
            secs(g0),
            secs(g1),
            secs(len),
            f.note
        );
        for o in h.ops.iter().filter(|o| o.invoke < g1 && o.ret > g0) {
            let what = match &o.outcome {
                Outcome::Ok(r) => format!("ok rev {}", r.rev()),
                Outcome::Failed(e) => format!("failed: {e}"),
                Outcome::Unknown(e) => format!("unknown: {e}"),
            };
            out += &format!(
                "  c{} m{} {:.3}..{:.3} {} {}\n",
                o.client,
                o.member,
                secs(o.invoke),
                secs(o.ret),
                kind_of(&o.request),
                what.chars().take(120).collect::<String>()
            );
        }
        let (w0, w1) = (secs(f.start) - 0.5, secs(g1) + 0.5);
        for (i, log) in logs.iter().enumerate() {
            for line in log.lines() {
                let clean = strip_ansi(line);
                if let Some(t) = log_offset(&clean, start_unix) {
                    if (w0..w1).contains(&t) {
                        let text: String = clean.chars().take(220).collect();
                        out += &format!("  m{i} {t:.3} {text}\n");
                    }
                }
            }
        }
    }
    out
}

fn kind_of(r: &Request) -> &'static str {
    match r {
        Request::Put { .. } => "put",
        Request::Get {
            serializable: true, ..
        } => "sget",
        Request::Get { .. } => "get",
        Request::Cas { .. } => "cas",
        Request::Delete { .. } => "del",
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the run's start of a log line stamped
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, same day as the start).
fn log_offset(line: &str, start_unix: f64) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    let of_day = h * 3600.0 + m * 60.0 + s;
    let start_of_day = start_unix.rem_euclid(86_400.0);
    Some(of_day - start_of_day)
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
    use crate::history::Op;

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
            invoke_end: 20 * s,
            ..History::default()
        };
        // Window 1 s..7 s; acks at 1, 2.5, 3, 4.5, then none until 7.
        let gaps = write_gaps(&h);
        assert_eq!(gaps, [(FaultKind::Kill, Duration::from_millis(2500))]);
        let stats = by_kind(&gaps);
        assert_eq!(stats[&FaultKind::Kill].0, Duration::from_millis(2500));
    }

    #[test]
    fn a_window_ends_where_the_next_fault_starts() {
        let s = 1_000_000_000;
        let fault = |start, hit_leader| Fault {
            kind: FaultKind::Kill,
            member: 0,
            hit_leader,
            start,
            end: start + s / 2,
            note: String::new(),
        };
        let h = History {
            // Acks up to 2 s, then none until 9 s.
            ops: [1, 2, 3, 4, 18]
                .iter()
                .map(|t| put_acked_at(t * s / 2))
                .collect(),
            faults: vec![fault(s, true), fault(3 * s, false)],
            load_end: 20 * s,
            invoke_end: 20 * s,
            ..History::default()
        };
        // The first fault's window is 1 s..3 s (the second starts there),
        // so the long gap after 2 s counts for 1 s only; the second fault
        // did not hit the leader and has no window.
        assert_eq!(write_gaps(&h), [(FaultKind::Kill, Duration::from_secs(1))]);
    }
}
