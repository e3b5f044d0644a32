//! Pure checks over a recorded [`History`], with revisions as the witness
//! order (as etcd's robustness tests do).
//!
//! The complete write history comes from the watch streams: a watch on the
//! workload prefix from the first revision, resumed across faults, shows
//! every revision once. Nothing but the workload writes under the prefix,
//! so every revision has events there, and every put event carries a value
//! only one client request ever wrote. The client responses are then
//! checked against that history and against a replay of it:
//!
//! 1. each watch: revisions increase with no gap and no duplicate; every
//!    event comes from a client op, and no value is applied twice;
//! 2. every acknowledged write is in the history at its response's revision;
//!    a definitely-failed op is not;
//! 3. real time: an op that returned before another was invoked has a
//!    revision no higher (strictly lower when the later op wrote);
//! 4. reads return the replayed state at their header revision;
//! 5. CAS outcomes agree with the replay;
//! 6. every watch equals the history of its range from its start;
//! 7. every member's final state is the replay at the last revision.
//!
//! Each check appends human-readable violations; none of them panics.

use std::collections::{BTreeMap, HashMap};

use crate::history::{Event, EventKind, History, Kv, Nanos, Op, Outcome, Request, Response};

/// How many violations a failure message shows.
pub const VIOLATIONS_SHOWN: usize = 30;

/// Runs every check; an empty list means the history is consistent.
pub fn check(h: &History) -> Vec<String> {
    let mut out = Vec::new();
    for w in &h.watches {
        check_watch_order(w.id, w.start_rev, &w.events, &mut out);
    }
    let events = complete_history(h, &mut out);
    let replay = Replay::build(h.base_rev, &events, &mut out);
    check_attribution(h, &events, &replay, &mut out);
    check_responses(h, &replay, &mut out);
    check_real_time(h, &events, &mut out);
    check_watches(h, &events, &mut out);
    check_final_state(h, &replay, &mut out);
    out
}

/// The first `VIOLATIONS_SHOWN` violations, one a line.
pub fn summarize(violations: &[String]) -> String {
    let mut s: String = violations
        .iter()
        .take(VIOLATIONS_SHOWN)
        .map(|v| format!("  {v}\n"))
        .collect();
    if violations.len() > VIOLATIONS_SHOWN {
        s += &format!("  ... and {} more\n", violations.len() - VIOLATIONS_SHOWN);
    }
    s
}

fn secs(t: Nanos) -> String {
    format!("{:.3}s", t as f64 / 1e9)
}

fn show_kv(kv: &Kv) -> String {
    format!(
        "{}={} (create {}, mod {}, version {})",
        kv.key, kv.value, kv.create_rev, kv.mod_rev, kv.version
    )
}

fn show_kvs(kvs: &[Kv]) -> String {
    let v: Vec<String> = kvs.iter().map(show_kv).collect();
    format!("[{}]", v.join(", "))
}

fn show_event(e: &Event) -> String {
    match e.kind {
        EventKind::Put => format!("PUT {}", show_kv(&e.kv)),
        EventKind::Delete => format!("DELETE {} at {}", e.kv.key, e.kv.mod_rev),
    }
}

/// One line naming an op: who, what, when, and what came back.
pub fn describe(op: &Op) -> String {
    let what = match &op.request {
        Request::Put { key, value } => format!("put {key}={value}"),
        Request::Get {
            key,
            prefix,
            serializable,
        } => format!(
            "{} get {key}{}",
            if *serializable {
                "serializable"
            } else {
                "linearizable"
            },
            if *prefix { " (prefix)" } else { "" }
        ),
        Request::Cas {
            key,
            expected_mod_rev,
            value,
        } => format!("cas {key} if mod={expected_mod_rev} then ={value}"),
        Request::Delete { key } => format!("delete {key}"),
    };
    let result = match &op.outcome {
        Outcome::Ok(Response::Put { rev }) => format!("ok rev {rev}"),
        Outcome::Ok(Response::Get { rev, kvs }) => format!("ok rev {rev} {}", show_kvs(kvs)),
        Outcome::Ok(Response::Cas {
            rev,
            succeeded,
            kvs,
        }) => format!("ok rev {rev} succeeded={succeeded} {}", show_kvs(kvs)),
        Outcome::Ok(Response::Delete { rev, deleted }) => format!("ok rev {rev} deleted {deleted}"),
        Outcome::Failed(e) => format!("failed: {e}"),
        Outcome::Unknown(e) => format!("unknown: {e}"),
    };
    format!(
        "c{} {what} via m{} [{}..{}] -> {result}",
        op.client,
        op.member,
        secs(op.invoke),
        secs(op.ret)
    )
}

/// Check 1 (order): revisions never go back, one event per key and
/// revision, and no revision skipped from `start_rev` on. In this workload
/// every revision writes under the watched prefix.
fn check_watch_order(id: usize, start_rev: i64, events: &[Event], out: &mut Vec<String>) {
    let mut expected = start_rev;
    let mut prev: Option<&Event> = None;
    for e in events {
        match prev {
            Some(p) if e.rev() == p.rev() && e.kv.key == p.kv.key => out.push(format!(
                "watch {id}: duplicate event at rev {}: {} after {}",
                e.rev(),
                show_event(e),
                show_event(p)
            )),
            // Another key of the same revision (a txn): nothing skipped.
            Some(p) if e.rev() == p.rev() => {}
            _ if e.rev() < expected => out.push(format!(
                "watch {id}: rev {} delivered again or out of order (expected {expected}): {}",
                e.rev(),
                show_event(e)
            )),
            _ if e.rev() > expected => out.push(format!(
                "watch {id}: gap: revs {expected}..{} missing before {}",
                e.rev() - 1,
                show_event(e)
            )),
            _ => {}
        }
        expected = expected.max(e.rev() + 1);
        prev = Some(e);
    }
}

/// The history: events of the watch from the first workload revision that
/// got furthest, one per (revision, key), in revision order.
fn complete_history(h: &History, out: &mut Vec<String>) -> Vec<Event> {
    let best = h
        .watches
        .iter()
        .filter(|w| w.start_rev <= h.base_rev + 1)
        .max_by_key(|w| (w.events.last().map_or(0, Event::rev), w.events.len()));
    let Some(best) = best else {
        out.push("no watch from the first revision: no history to check against".into());
        return Vec::new();
    };
    let mut by_rev: BTreeMap<(i64, String), Event> = BTreeMap::new();
    for e in &best.events {
        by_rev
            .entry((e.rev(), e.kv.key.clone()))
            .or_insert_with(|| e.clone());
    }
    by_rev.into_values().collect()
}

/// Every key's versions in revision order: `None` marks a delete.
pub struct Replay {
    base_rev: i64,
    last_rev: i64,
    keys: BTreeMap<String, Vec<(i64, Option<Kv>)>>,
}

impl Replay {
    /// Applies the history's events in order, checking that each event's
    /// create revision and version are what the replay computes.
    fn build(base_rev: i64, events: &[Event], out: &mut Vec<String>) -> Replay {
        let mut keys: BTreeMap<String, Vec<(i64, Option<Kv>)>> = BTreeMap::new();
        let mut last_rev = base_rev;
        for e in events {
            let versions = keys.entry(e.kv.key.clone()).or_default();
            let current = versions.last().and_then(|(_, kv)| kv.clone());
            let rev = e.rev();
            last_rev = last_rev.max(rev);
            match e.kind {
                EventKind::Put => {
                    let want = Kv {
                        key: e.kv.key.clone(),
                        value: e.kv.value.clone(),
                        create_rev: current.as_ref().map_or(rev, |c| c.create_rev),
                        mod_rev: rev,
                        version: current.as_ref().map_or(1, |c| c.version + 1),
                    };
                    if want != e.kv {
                        out.push(format!(
                            "history rev {rev}: event {} but the replay makes it {}",
                            show_event(e),
                            show_kv(&want)
                        ));
                    }
                    versions.push((rev, Some(want)));
                }
                EventKind::Delete => {
                    if current.is_none() {
                        out.push(format!(
                            "history rev {rev}: DELETE of {}, which did not exist",
                            e.kv.key
                        ));
                    }
                    versions.push((rev, None));
                }
            }
        }
        Replay {
            base_rev,
            last_rev,
            keys,
        }
    }

    /// The key at revision `rev`, if it existed then.
    fn get(&self, key: &str, rev: i64) -> Option<&Kv> {
        let versions = self.keys.get(key)?;
        let i = versions.partition_point(|(r, _)| *r <= rev);
        i.checked_sub(1).and_then(|i| versions[i].1.as_ref())
    }

    /// Every key starting with `prefix` at `rev`, in key order (as a range).
    fn range(&self, prefix: &str, rev: i64) -> Vec<Kv> {
        self.keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter_map(|k| self.get(k, rev).cloned())
            .collect()
    }

    fn mod_rev(&self, key: &str, rev: i64) -> i64 {
        self.get(key, rev).map_or(0, |kv| kv.mod_rev)
    }
}

/// Checks 1 and 2: every event comes from a client op; acknowledged writes
/// are there at their revision; failed ones are not; nothing twice.
fn check_attribution(h: &History, events: &[Event], replay: &Replay, out: &mut Vec<String>) {
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let Some(v) = op.request.written_value() {
            by_value.insert(v, i);
        }
    }
    let mut applied_at: HashMap<&str, i64> = HashMap::new();
    // Deletes by key: acknowledged ones claim their revision, unknown
    // ones may each explain one delete event of their key.
    let mut acked_deletes: HashMap<(&str, i64), usize> = HashMap::new();
    let mut unknown_deletes: HashMap<&str, usize> = HashMap::new();
    for op in &h.ops {
        if let Request::Delete { key } = &op.request {
            match &op.outcome {
                Outcome::Ok(Response::Delete { rev, deleted }) if *deleted > 0 => {
                    *acked_deletes.entry((key, *rev)).or_default() += 1;
                }
                Outcome::Unknown(_) => *unknown_deletes.entry(key).or_default() += 1,
                _ => {}
            }
        }
    }
    for e in events {
        let rev = e.rev();
        match e.kind {
            EventKind::Put => {
                let value = e.kv.value.as_str();
                if let Some(first) = applied_at.insert(value, rev) {
                    out.push(format!(
                        "value {value} applied twice: at rev {first} and at rev {rev}"
                    ));
                }
                let Some(&i) = by_value.get(value) else {
                    out.push(format!(
                        "history rev {rev}: {} was written by no client op",
                        show_event(e)
                    ));
                    continue;
                };
                let op = &h.ops[i];
                if op.request.key() != e.kv.key {
                    out.push(format!(
                        "history rev {rev}: {} but the op wrote another key: {}",
                        show_event(e),
                        describe(op)
                    ));
                }
                match &op.outcome {
                    Outcome::Failed(_) => out.push(format!(
                        "history rev {rev}: a definitely-failed op was applied: {}",
                        describe(op)
                    )),
                    Outcome::Ok(r) if !r.modified() => out.push(format!(
                        "history rev {rev}: {} but the op reported no change: {}",
                        show_event(e),
                        describe(op)
                    )),
                    Outcome::Ok(r) if r.rev() != rev => out.push(format!(
                        "history rev {rev}: {} but the op was acknowledged at rev {}: {}",
                        show_event(e),
                        r.rev(),
                        describe(op)
                    )),
                    _ => {}
                }
                if let Request::Cas {
                    key,
                    expected_mod_rev,
                    ..
                } = &op.request
                {
                    let before = replay.mod_rev(key, rev - 1);
                    if before != *expected_mod_rev {
                        out.push(format!(
                            "history rev {rev}: CAS applied though {key} had mod {before} \
                             at rev {}: {}",
                            rev - 1,
                            describe(op)
                        ));
                    }
                }
            }
            EventKind::Delete => {
                let key = e.kv.key.as_str();
                if let Some(n) = acked_deletes.get_mut(&(key, rev)).filter(|n| **n > 0) {
                    *n -= 1;
                } else if let Some(n) = unknown_deletes.get_mut(key).filter(|n| **n > 0) {
                    *n -= 1;
                } else {
                    out.push(format!(
                        "history rev {rev}: {} matches no delete op",
                        show_event(e)
                    ));
                }
            }
        }
    }
    for op in &h.ops {
        let Some(r) = op.ok().filter(|r| r.modified()) else {
            continue;
        };
        let rev = r.rev();
        let present = match &op.request {
            Request::Put { value, .. } | Request::Cas { value, .. } => {
                applied_at.get(value.as_str()) == Some(&rev)
            }
            Request::Delete { key } => events
                .binary_search_by_key(&(rev, key.as_str()), |e| (e.rev(), e.kv.key.as_str()))
                .is_ok_and(|i| events[i].kind == EventKind::Delete),
            Request::Get { .. } => true,
        };
        // A value applied at another revision is reported above.
        let elsewhere = op
            .request
            .written_value()
            .is_some_and(|v| applied_at.contains_key(v));
        if !present && !elsewhere {
            out.push(format!(
                "acknowledged write missing from the history (which ends at rev {}): {}",
                replay.last_rev,
                describe(op)
            ));
        }
    }
}

/// Checks 4 and 5: every response agrees with the replay at its revision.
fn check_responses(h: &History, replay: &Replay, out: &mut Vec<String>) {
    for op in &h.ops {
        let Some(r) = op.ok() else { continue };
        let rev = r.rev();
        if rev > replay.last_rev || rev < replay.base_rev {
            out.push(format!(
                "response revision {rev} outside the history ({}..={}): {}",
                replay.base_rev,
                replay.last_rev,
                describe(op)
            ));
            continue;
        }
        match (&op.request, r) {
            (Request::Get { key, prefix, .. }, Response::Get { kvs, .. }) => {
                let want = if *prefix {
                    replay.range(key, rev)
                } else {
                    replay.get(key, rev).cloned().into_iter().collect()
                };
                if *kvs != want {
                    out.push(format!(
                        "read at rev {rev} returned {}, the replay has {}: {}",
                        show_kvs(kvs),
                        show_kvs(&want),
                        describe(op)
                    ));
                }
            }
            (
                Request::Cas {
                    key,
                    expected_mod_rev,
                    ..
                },
                Response::Cas {
                    succeeded: false,
                    kvs,
                    ..
                },
            ) => {
                let at = replay.mod_rev(key, rev);
                if at == *expected_mod_rev {
                    out.push(format!(
                        "CAS failed though {key} had mod {at} at rev {rev}: {}",
                        describe(op)
                    ));
                }
                let want: Vec<Kv> = replay.get(key, rev).cloned().into_iter().collect();
                if *kvs != want {
                    out.push(format!(
                        "CAS else-branch get at rev {rev} returned {}, the replay has {}: {}",
                        show_kvs(kvs),
                        show_kvs(&want),
                        describe(op)
                    ));
                }
            }
            (Request::Delete { key }, Response::Delete { deleted: 0, .. }) => {
                if let Some(kv) = replay.get(key, rev) {
                    out.push(format!(
                        "delete found nothing but the replay has {} at rev {rev}: {}",
                        show_kv(kv),
                        describe(op)
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Check 3: real-time order. For every op B (but serializable reads), the
/// highest revision of any op that returned before B was invoked must be
/// ≤ rev(B), and < rev(B) when B wrote. An unknown write that was applied
/// took effect after its invoke, so the same holds for its revision.
fn check_real_time(h: &History, events: &[Event], out: &mut Vec<String>) {
    // (return time, revision, op) of every answered op, by return time,
    // with the running maximum of revisions.
    let mut done: Vec<(Nanos, i64, usize)> = h
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| op.ok().map(|r| (op.ret, r.rev(), i)))
        .collect();
    done.sort_unstable();
    let mut prefix_max: Vec<(i64, usize)> = Vec::with_capacity(done.len());
    for &(_, rev, i) in &done {
        let best = match prefix_max.last() {
            Some(&(m, j)) if m >= rev => (m, j),
            _ => (rev, i),
        };
        prefix_max.push(best);
    }
    let max_before = |t: Nanos| -> Option<(i64, usize)> {
        let n = done.partition_point(|d| d.0 < t);
        n.checked_sub(1).map(|n| prefix_max[n])
    };
    let applied_unknown: HashMap<&str, i64> = events
        .iter()
        .filter(|e| e.kind == EventKind::Put)
        .map(|e| (e.kv.value.as_str(), e.rev()))
        .collect();
    for op in &h.ops {
        let (rev, wrote) = match &op.outcome {
            Outcome::Ok(_) if op.is_serializable_read() => continue,
            Outcome::Ok(r) => (r.rev(), r.modified()),
            Outcome::Unknown(_) => {
                match op
                    .request
                    .written_value()
                    .and_then(|v| applied_unknown.get(v))
                {
                    Some(&rev) => (rev, true),
                    None => continue,
                }
            }
            Outcome::Failed(_) => continue,
        };
        let Some((before, j)) = max_before(op.invoke) else {
            continue;
        };
        if rev < before || (wrote && rev == before) {
            out.push(format!(
                "real-time order: {} has rev {rev}, but this op returned before it was \
                 invoked with rev {before}: {}",
                describe(op),
                describe(&h.ops[j])
            ));
        }
    }
}

/// Check 6: every watch shows exactly the history of its prefix from its
/// start revision, as far as it got.
fn check_watches(h: &History, events: &[Event], out: &mut Vec<String>) {
    for w in &h.watches {
        let from = events.partition_point(|e| e.rev() < w.start_rev);
        let want = events[from..]
            .iter()
            .filter(|e| e.kv.key.starts_with(&w.prefix));
        for (i, (got, want)) in w.events.iter().zip(want).enumerate() {
            if got != want {
                out.push(format!(
                    "watch {} event {i}: {}, the history has {}",
                    w.id,
                    show_event(got),
                    show_event(want)
                ));
                break;
            }
        }
        let last = events.last().map_or(h.base_rev, Event::rev);
        if let Some(e) = w.events.iter().find(|e| e.rev() > last) {
            out.push(format!(
                "watch {}: {} is beyond the history's last revision {last}",
                w.id,
                show_event(e)
            ));
        }
    }
}

/// Check 7: every member ends with the replayed state at the last revision.
fn check_final_state(h: &History, replay: &Replay, out: &mut Vec<String>) {
    let want = replay.range(&h.prefix, replay.last_rev);
    for f in &h.final_reads {
        match &f.result {
            Err(e) => out.push(format!("m{}: final read failed: {e}", f.member)),
            Ok((rev, kvs)) => {
                if *rev != replay.last_rev {
                    out.push(format!(
                        "m{}: final revision {rev}, the history ends at {}",
                        f.member, replay.last_rev
                    ));
                }
                if *kvs != want {
                    out.push(format!(
                        "m{}: final state {}, the replay has {}",
                        f.member,
                        show_kvs(kvs),
                        show_kvs(&want)
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Hand-made histories: a consistent one, then one mutation per kind of
    //! violation, each of which must be reported.

    use super::*;
    use crate::history::{FinalRead, WatchRecord};

    fn kv(key: &str, value: &str, create_rev: i64, mod_rev: i64, version: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            create_rev,
            mod_rev,
            version,
        }
    }

    fn put_event(key: &str, value: &str, create_rev: i64, mod_rev: i64, version: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: kv(key, value, create_rev, mod_rev, version),
        }
    }

    fn delete_event(key: &str, rev: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: kv(key, "", 0, rev, 0),
        }
    }

    fn op(invoke: Nanos, ret: Nanos, request: Request, outcome: Outcome) -> Op {
        Op {
            client: 0,
            member: 0,
            invoke,
            ret,
            request,
            outcome,
        }
    }

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn get(key: &str, prefix: bool, serializable: bool) -> Request {
        Request::Get {
            key: key.into(),
            prefix,
            serializable,
        }
    }

    /// base 1; k0=a @2, k1=b @3, read, CAS k0→c @4, delete k1 @5,
    /// a serializable read of an older state (allowed: no real-time order),
    /// a failed CAS, an unknown and a failed put (neither applied).
    fn good() -> History {
        let events = vec![
            put_event("/p/k0", "a", 2, 2, 1),
            put_event("/p/k1", "b", 3, 3, 1),
            put_event("/p/k0", "c", 2, 4, 2),
            delete_event("/p/k1", 5),
        ];
        History {
            prefix: "/p/".into(),
            base_rev: 1,
            ops: vec![
                op(
                    0,
                    10,
                    put("/p/k0", "a"),
                    Outcome::Ok(Response::Put { rev: 2 }),
                ),
                op(
                    20,
                    30,
                    put("/p/k1", "b"),
                    Outcome::Ok(Response::Put { rev: 3 }),
                ),
                op(
                    40,
                    50,
                    get("/p/k0", false, false),
                    Outcome::Ok(Response::Get {
                        rev: 3,
                        kvs: vec![kv("/p/k0", "a", 2, 2, 1)],
                    }),
                ),
                op(
                    60,
                    70,
                    Request::Cas {
                        key: "/p/k0".into(),
                        expected_mod_rev: 2,
                        value: "c".into(),
                    },
                    Outcome::Ok(Response::Cas {
                        rev: 4,
                        succeeded: true,
                        kvs: vec![],
                    }),
                ),
                op(
                    80,
                    90,
                    Request::Delete {
                        key: "/p/k1".into(),
                    },
                    Outcome::Ok(Response::Delete { rev: 5, deleted: 1 }),
                ),
                op(
                    100,
                    110,
                    get("/p/", true, true),
                    Outcome::Ok(Response::Get {
                        rev: 3,
                        kvs: vec![kv("/p/k0", "a", 2, 2, 1), kv("/p/k1", "b", 3, 3, 1)],
                    }),
                ),
                op(
                    120,
                    130,
                    Request::Cas {
                        key: "/p/k0".into(),
                        expected_mod_rev: 2,
                        value: "d".into(),
                    },
                    Outcome::Ok(Response::Cas {
                        rev: 5,
                        succeeded: false,
                        kvs: vec![kv("/p/k0", "c", 2, 4, 2)],
                    }),
                ),
                op(
                    140,
                    150,
                    put("/p/k2", "e"),
                    Outcome::Unknown("timeout".into()),
                ),
                op(
                    160,
                    170,
                    put("/p/k2", "f"),
                    Outcome::Failed("invalid".into()),
                ),
            ],
            watches: vec![
                WatchRecord {
                    id: 0,
                    prefix: "/p/".into(),
                    start_rev: 2,
                    events: events.clone(),
                    reopens: vec![],
                },
                WatchRecord {
                    id: 1,
                    prefix: "/p/".into(),
                    start_rev: 4,
                    events: events[2..].to_vec(),
                    reopens: vec![],
                },
            ],
            faults: vec![],
            final_reads: vec![FinalRead {
                member: 0,
                result: Ok((5, vec![kv("/p/k0", "c", 2, 4, 2)])),
            }],
            load_end: 200,
            invoke_end: 200,
        }
    }

    /// Asserts the history has a violation containing `needle`.
    fn assert_caught(h: &History, needle: &str) {
        let v = check(h);
        assert!(
            v.iter().any(|s| s.contains(needle)),
            "expected a violation containing {needle:?}, got:\n{}",
            summarize(&v)
        );
    }

    fn set_outcome(h: &mut History, i: usize, outcome: Outcome) {
        h.ops[i].outcome = outcome;
    }

    #[test]
    fn a_consistent_history_has_no_violation() {
        let v = check(&good());
        assert!(v.is_empty(), "{}", summarize(&v));
    }

    #[test]
    fn an_unknown_write_may_be_applied() {
        let mut h = good();
        let e = put_event("/p/k2", "e", 6, 6, 1);
        h.watches[0].events.push(e.clone());
        h.watches[1].events.push(e);
        h.final_reads[0].result = Ok((
            6,
            vec![kv("/p/k0", "c", 2, 4, 2), kv("/p/k2", "e", 6, 6, 1)],
        ));
        let v = check(&h);
        assert!(v.is_empty(), "{}", summarize(&v));
    }

    #[test]
    fn watch_gap_is_caught() {
        let mut h = good();
        h.watches[1].events.remove(0);
        assert_caught(&h, "watch 1: gap: revs 4..4 missing");
    }

    #[test]
    fn watch_duplicate_is_caught() {
        let mut h = good();
        let e = h.watches[1].events[0].clone();
        h.watches[1].events.insert(1, e);
        assert_caught(&h, "watch 1: duplicate event at rev 4");
    }

    #[test]
    fn watch_reordering_is_caught() {
        let mut h = good();
        h.watches[0].events.swap(1, 2);
        assert_caught(&h, "watch 0: rev 3 delivered again or out of order");
    }

    #[test]
    fn a_value_applied_twice_is_caught() {
        let mut h = good();
        let e = put_event("/p/k0", "a", 2, 6, 3);
        h.watches[0].events.push(e);
        assert_caught(&h, "value a applied twice");
    }

    #[test]
    fn an_event_from_no_op_is_caught() {
        let mut h = good();
        h.watches[0].events.push(put_event("/p/k3", "zz", 6, 6, 1));
        assert_caught(&h, "was written by no client op");
    }

    #[test]
    fn a_failed_op_applied_is_caught() {
        let mut h = good();
        h.watches[0].events.push(put_event("/p/k2", "f", 6, 6, 1));
        assert_caught(&h, "a definitely-failed op was applied");
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let mut h = good();
        h.ops.push(op(
            180,
            190,
            put("/p/k3", "g"),
            Outcome::Ok(Response::Put { rev: 5 }),
        ));
        assert_caught(&h, "acknowledged write missing from the history");
    }

    #[test]
    fn a_write_acknowledged_at_the_wrong_revision_is_caught() {
        let mut h = good();
        set_outcome(&mut h, 1, Outcome::Ok(Response::Put { rev: 4 }));
        assert_caught(&h, "but the op was acknowledged at rev 4");
    }

    #[test]
    fn an_acknowledged_delete_without_event_is_caught() {
        let mut h = good();
        h.watches[0].events.pop();
        assert_caught(&h, "acknowledged write missing from the history");
    }

    #[test]
    fn a_stale_linearizable_read_is_caught() {
        let mut h = good();
        // Invoked after the CAS at rev 4 returned, but reads rev 3.
        h.ops[2].invoke = 75;
        h.ops[2].ret = 76;
        assert_caught(&h, "real-time order");
    }

    #[test]
    fn a_write_ordered_before_an_earlier_one_is_caught() {
        let mut h = good();
        // The put at rev 2 invoked after the put at rev 3 returned.
        h.ops[0].invoke = 35;
        h.ops[0].ret = 36;
        assert_caught(&h, "real-time order");
    }

    #[test]
    fn an_unknown_write_applied_before_its_invoke_is_caught() {
        let mut h = good();
        // The unknown put "e" (invoked at 140) shows up at rev 6, which a
        // read had already returned at 135.
        let e = put_event("/p/k2", "e", 6, 6, 1);
        h.watches[0].events.push(e.clone());
        h.watches[1].events.push(e);
        h.ops.push(op(
            132,
            135,
            get("/p/k2", false, false),
            Outcome::Ok(Response::Get {
                rev: 6,
                kvs: vec![kv("/p/k2", "e", 6, 6, 1)],
            }),
        ));
        h.final_reads.clear();
        assert_caught(&h, "real-time order: c0 put /p/k2=e");
    }

    #[test]
    fn a_read_with_a_wrong_value_is_caught() {
        let mut h = good();
        set_outcome(
            &mut h,
            2,
            Outcome::Ok(Response::Get {
                rev: 3,
                kvs: vec![kv("/p/k0", "c", 2, 2, 1)],
            }),
        );
        assert_caught(&h, "read at rev 3 returned");
    }

    #[test]
    fn a_read_missing_a_key_is_caught() {
        let mut h = good();
        set_outcome(
            &mut h,
            5,
            Outcome::Ok(Response::Get {
                rev: 3,
                kvs: vec![kv("/p/k0", "a", 2, 2, 1)],
            }),
        );
        assert_caught(&h, "read at rev 3 returned");
    }

    #[test]
    fn a_read_beyond_the_history_is_caught() {
        let mut h = good();
        set_outcome(
            &mut h,
            2,
            Outcome::Ok(Response::Get {
                rev: 9,
                kvs: vec![],
            }),
        );
        assert_caught(&h, "response revision 9 outside the history");
    }

    #[test]
    fn a_cas_that_should_have_failed_is_caught() {
        let mut h = good();
        h.ops[3].request = Request::Cas {
            key: "/p/k0".into(),
            expected_mod_rev: 1,
            value: "c".into(),
        };
        assert_caught(&h, "CAS applied though /p/k0 had mod 2");
    }

    #[test]
    fn a_cas_that_should_have_succeeded_is_caught() {
        let mut h = good();
        h.ops[6].request = Request::Cas {
            key: "/p/k0".into(),
            expected_mod_rev: 4,
            value: "d".into(),
        };
        assert_caught(&h, "CAS failed though /p/k0 had mod 4");
    }

    #[test]
    fn a_wrong_cas_else_branch_is_caught() {
        let mut h = good();
        set_outcome(
            &mut h,
            6,
            Outcome::Ok(Response::Cas {
                rev: 5,
                succeeded: false,
                kvs: vec![],
            }),
        );
        assert_caught(&h, "CAS else-branch get at rev 5");
    }

    #[test]
    fn a_wrong_version_in_an_event_is_caught() {
        let mut h = good();
        h.watches[0].events[2].kv.version = 1;
        assert_caught(&h, "but the replay makes it");
    }

    #[test]
    fn a_delete_of_a_missing_key_in_the_history_is_caught() {
        let mut h = good();
        h.watches[0].events.push(delete_event("/p/k1", 6));
        assert_caught(&h, "DELETE of /p/k1, which did not exist");
    }

    #[test]
    fn a_watch_differing_from_the_history_is_caught() {
        let mut h = good();
        h.watches[1].events[0].kv.value = "x".into();
        assert_caught(&h, "watch 1 event 0");
    }

    #[test]
    fn a_diverged_member_is_caught() {
        let mut h = good();
        h.final_reads.push(FinalRead {
            member: 1,
            result: Ok((5, vec![])),
        });
        h.final_reads.push(FinalRead {
            member: 2,
            result: Ok((4, vec![kv("/p/k0", "c", 2, 4, 2)])),
        });
        assert_caught(&h, "m1: final state []");
        assert_caught(&h, "m2: final revision 4");
    }
}
