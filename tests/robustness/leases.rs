//! Lease and lock safety across partitions and leader moves.
//!
//! A client believes its lease valid until (send time of its last answered
//! keep-alive + TTL), as etcd's clientv3 does. Safety means the cluster
//! never deletes the lease's keys before that moment, so a leader cut off
//! from the majority must stop answering keep-alives before a new leader
//! could expire the lease; and a lease kept alive on the majority side
//! must survive the partition's heal and a MoveLeader. Locks built on
//! leases are then exclusive: two clients never both believe they hold one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, LockOptions, PutOptions};
use rand::{Rng, SeedableRng};

use crate::common::Cluster;
use crate::history::{nanos_since, Nanos};
use crate::nemesis::{leader, member_ids};
use crate::recorder::connect;
use crate::{proxy_supported, FAST, SERIAL};

/// The election timeout FAST sets.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

const S: Nanos = 1_000_000_000;

fn secs(t: Nanos) -> f64 {
    t as f64 / 1e9
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn must_connect(endpoint: &str) -> Client {
    connect(endpoint).await.expect("connect")
}

/// One keep-alive on an open stream: the TTL answered, or why not.
async fn keep_alive_once(
    keeper: &mut LeaseKeeper,
    responses: &mut LeaseKeepAliveStream,
) -> Result<i64, String> {
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match responses.message().await {
            Ok(Some(r)) => Ok(r.ttl()),
            Ok(None) => Err("keep-alive stream ended".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    answer.unwrap_or_else(|_| Err("no answer within 1 s".into()))
}

/// Keeps lease `id` alive through `endpoint` every 500 ms until `stop`,
/// reopening the stream after an error. Returns (send time, answer) of
/// every keep-alive; `last_ok` holds the send time of the last one
/// answered with a positive TTL.
async fn keep_alive_loop(
    endpoint: String,
    id: i64,
    start: Instant,
    stop: Arc<AtomicBool>,
    last_ok: Arc<AtomicU64>,
) -> Vec<(Nanos, Result<i64, String>)> {
    let mut log = Vec::new();
    let mut stream = None;
    for _ in 0..10_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let sent = nanos_since(start);
        if stream.is_none() {
            let opened = match connect(&endpoint).await {
                Some(mut c) => {
                    tokio::time::timeout(Duration::from_secs(1), c.lease_keep_alive(id)).await
                }
                None => Ok(Err(etcd_client::Error::InvalidArgs(
                    "connect failed".into(),
                ))),
            };
            match opened {
                // Opening the stream already did one keep-alive.
                Ok(Ok(s)) => {
                    stream = Some(s);
                    last_ok.fetch_max(sent, Ordering::Relaxed);
                    log.push((sent, Ok(1)));
                }
                Ok(Err(e)) => log.push((sent, Err(format!("open: {e}")))),
                Err(_) => log.push((sent, Err("open: no answer within 1 s".into()))),
            }
        } else if let Some((keeper, responses)) = stream.as_mut() {
            let answer = keep_alive_once(keeper, responses).await;
            match answer {
                Ok(ttl) if ttl > 0 => {
                    last_ok.fetch_max(sent, Ordering::Relaxed);
                }
                _ => stream = None,
            }
            log.push((sent, answer));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log
}

/// Polls `key` linearizably through `endpoint` every 100 ms until `stop`;
/// returns (invoke, return, present) of every answered read.
async fn presence_loop(
    endpoint: String,
    key: &'static str,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<(Nanos, Nanos, bool)> {
    let mut seen = Vec::new();
    let mut client = None;
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if client.is_none() {
            client = connect(&endpoint).await;
        }
        if let Some(c) = client.as_mut() {
            let invoke = nanos_since(start);
            match tokio::time::timeout(Duration::from_secs(2), c.get(key, None)).await {
                Ok(Ok(r)) => seen.push((invoke, nanos_since(start), !r.kvs().is_empty())),
                Ok(Err(_)) => {}
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// A 3-member cluster behind the partitioning proxy with its member ids,
/// while holding the scenario lock (they run one at a time); `None` (test
/// skipped) when the server binary does not speak keel's peer protocol.
async fn cluster_to_cut() -> Option<(tokio::sync::MutexGuard<'static, ()>, Cluster, Vec<u64>)> {
    if !proxy_supported() {
        println!("skipped: cutting members off needs keel's peer protocol");
        return None;
    }
    let serial = SERIAL.lock().await;
    let cluster = Cluster::start_proxied(3, FAST).await;
    let ids = member_ids(&cluster).await;
    Some((serial, cluster, ids))
}

/// Cutting the leader off: keep-alives through it must stop succeeding
/// within about an election timeout, and the majority must expire the
/// lease after its TTL, but not before the last renewal the client got
/// plus the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_keep_a_lease_alive() {
    const TTL: i64 = 3;
    let Some((_serial, cluster, ids)) = cluster_to_cut().await else {
        return;
    };
    let old = leader(&cluster, &ids, Duration::from_secs(10))
        .await
        .expect("a leader");
    let majority = (old + 1) % 3;
    let mut c = must_connect(&cluster.members[old].endpoint()).await;
    let start = Instant::now();
    let granted_at = nanos_since(start);
    let lease = c.lease_grant(TTL, None).await.expect("grant").id();
    c.put("/lease/k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");

    let stop = Arc::new(AtomicBool::new(false));
    let last_ok = Arc::new(AtomicU64::new(granted_at));
    let keeping = tokio::spawn(keep_alive_loop(
        cluster.members[old].endpoint(),
        lease,
        start,
        stop.clone(),
        last_ok.clone(),
    ));
    let polling = tokio::spawn(presence_loop(
        cluster.members[majority].endpoint(),
        "/lease/k",
        start,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let cut_at = nanos_since(start);
    cluster.cut(old);
    tokio::time::sleep(Duration::from_secs(TTL as u64 + 5)).await;
    stop.store(true, Ordering::Relaxed);
    let renewals = keeping.await.expect("keep-alive task");
    let reads = polling.await.expect("poll task");
    cluster.heal();

    let ttl = nanos(Duration::from_secs(TTL as u64));
    let believed_until = last_ok.load(Ordering::Relaxed) + ttl;
    let mut violations = Vec::new();
    let allowed = cut_at + 2 * nanos(ELECTION_TIMEOUT);
    for (sent, answer) in &renewals {
        if *sent > allowed && matches!(answer, Ok(ttl) if *ttl > 0) {
            violations.push(format!(
                "the isolated leader renewed the lease for a keep-alive sent {:.2} s after the cut",
                secs(sent - cut_at)
            ));
        }
    }
    match reads.iter().find(|r| !r.2) {
        Some((_, ret, _)) if *ret < believed_until => violations.push(format!(
            "the majority deleted the key by {:.2} s, but the client was told the lease \
             lives until {:.2} s",
            secs(*ret),
            secs(believed_until)
        )),
        Some(_) => {}
        None => violations.push(format!(
            "the majority never expired the lease ({} reads, last renewal sent at {:.2} s, \
             cut at {:.2} s)",
            reads.len(),
            secs(believed_until - ttl),
            secs(cut_at)
        )),
    }
    // Expiry is checked every 100 ms after a new leader is elected.
    let late = believed_until + 3 * S;
    if let Some((invoke, _, _)) = reads.iter().find(|r| r.2 && r.0 > late) {
        violations.push(format!(
            "the key was still there at {:.2} s, the lease should have expired at {:.2} s",
            secs(*invoke),
            secs(believed_until)
        ));
    }
    assert!(
        violations.is_empty(),
        "{}\nkeep-alives through the isolated leader (send time, answer):\n{}",
        violations.join("\n"),
        renewals
            .iter()
            .map(|(t, a)| format!("  {:.2}s {a:?}", secs(*t)))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A lease kept alive through a member on the majority side survives the
/// partition of the old leader, the heal, and a MoveLeader: its key is
/// still there two TTLs after the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_kept_alive_on_the_majority_survives_heal_and_move_leader() {
    const TTL: i64 = 3;
    let Some((_serial, cluster, ids)) = cluster_to_cut().await else {
        return;
    };
    let old = leader(&cluster, &ids, Duration::from_secs(10))
        .await
        .expect("a leader");
    let follower = (old + 1) % 3;
    let endpoint = cluster.members[follower].endpoint();
    let mut c = must_connect(&endpoint).await;
    let start = Instant::now();
    let lease = c.lease_grant(TTL, None).await.expect("grant").id();
    c.put(
        "/lease/kept",
        "v",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put with lease");
    let stop = Arc::new(AtomicBool::new(false));
    let keeping = tokio::spawn(keep_alive_loop(
        endpoint.clone(),
        lease,
        start,
        stop.clone(),
        Arc::new(AtomicU64::new(0)),
    ));
    let polling = tokio::spawn(presence_loop(
        endpoint.clone(),
        "/lease/kept",
        start,
        stop.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.cut(old);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.heal();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut moved = String::from("no leader to move");
    if let Some(l) = leader(&cluster, &ids, Duration::from_secs(10)).await {
        let to = (l + 1) % 3;
        let mut lc = must_connect(&cluster.members[l].endpoint()).await;
        moved = match tokio::time::timeout(Duration::from_secs(5), lc.move_leader(ids[to])).await {
            Ok(Ok(_)) => format!("moved m{l} -> m{to}"),
            Ok(Err(e)) => format!("move m{l} -> m{to}: {e}"),
            Err(_) => format!("move m{l} -> m{to}: no answer"),
        };
    }
    let moved_at = nanos_since(start);
    tokio::time::sleep(Duration::from_secs(2 * TTL as u64)).await;
    stop.store(true, Ordering::Relaxed);
    let renewals = keeping.await.expect("keep-alive task");
    let reads = polling.await.expect("poll task");

    let mut violations = Vec::new();
    if let Some((invoke, _, _)) = reads.iter().find(|r| !r.2) {
        violations.push(format!(
            "the kept-alive lease's key was gone at {:.2} s",
            secs(*invoke)
        ));
    }
    if !reads.iter().any(|r| r.0 > moved_at + 2 * S) {
        violations.push("no read answered after the leader move".into());
    }
    for (i, m) in cluster.members.iter().enumerate() {
        let mut mc = must_connect(&m.endpoint()).await;
        let r = tokio::time::timeout(Duration::from_secs(3), mc.get("/lease/kept", None)).await;
        match r {
            Ok(Ok(r)) if r.kvs().len() == 1 => {}
            Ok(Ok(_)) => violations.push(format!("m{i}: the key is gone at the end")),
            Ok(Err(e)) => violations.push(format!("m{i}: final read: {e}")),
            Err(_) => violations.push(format!("m{i}: final read: no answer")),
        }
    }
    assert!(
        violations.is_empty(),
        "{}\n{moved} at {:.2} s; keep-alives (send time, answer):\n{}",
        violations.join("\n"),
        secs(moved_at),
        renewals
            .iter()
            .map(|(t, a)| format!("  {:.2}s {a:?}", secs(*t)))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A client's belief that it holds the lock, from the lock's answer until
/// it unlocks or its lease may have expired, whichever is first.
#[derive(Debug, Clone)]
pub struct Hold {
    pub client: usize,
    pub key: String,
    pub from: Nanos,
    pub to: Nanos,
}

/// A KV check during a hold: which key was first under the lock prefix
/// (lowest create revision) in a read returned at `at`.
#[derive(Debug, Clone)]
pub struct OwnerCheck {
    pub client: usize,
    pub at: Nanos,
    pub owner: Option<String>,
}

/// Holds of different clients must not overlap, and while a client holds
/// the lock, the KV must name its key as the owner.
pub fn lock_violations(holds: &[Hold], checks: &[OwnerCheck]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if a.client != b.client && a.from < b.to && b.from < a.to {
                out.push(format!(
                    "c{} held {} during {:.3}..{:.3} s and c{} held {} during {:.3}..{:.3} s",
                    a.client,
                    a.key,
                    secs(a.from),
                    secs(a.to),
                    b.client,
                    b.key,
                    secs(b.from),
                    secs(b.to)
                ));
            }
        }
    }
    for c in checks {
        let hold = holds
            .iter()
            .find(|h| h.client == c.client && (h.from..=h.to).contains(&c.at));
        if let Some(h) = hold {
            if c.owner.as_deref() != Some(h.key.as_str()) {
                out.push(format!(
                    "c{} held {} at {:.3} s but the first key under the lock was {:?}",
                    c.client,
                    h.key,
                    secs(c.at),
                    c.owner
                ));
            }
        }
    }
    out
}

const LOCK: &str = "/rb-lock";
const LOCK_TTL: i64 = 2;

/// One client taking and releasing the lock through `endpoint` until
/// `deadline`, each time with a fresh lease kept alive meanwhile.
async fn locker(
    client: usize,
    endpoint: String,
    start: Instant,
    deadline: Instant,
) -> (Vec<Hold>, Vec<OwnerCheck>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64);
    let (mut holds, mut checks) = (Vec::new(), Vec::new());
    let ttl = nanos(Duration::from_secs(LOCK_TTL as u64));
    for _ in 0..1000 {
        if Instant::now() >= deadline {
            break;
        }
        let Some(mut c) = connect(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let granted_at = nanos_since(start);
        let lease =
            match tokio::time::timeout(Duration::from_secs(3), c.lease_grant(LOCK_TTL, None)).await
            {
                Ok(Ok(g)) => g.id(),
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        let stop = Arc::new(AtomicBool::new(false));
        let last_ok = Arc::new(AtomicU64::new(granted_at));
        let keeping = tokio::spawn(keep_alive_loop(
            endpoint.clone(),
            lease,
            start,
            stop.clone(),
            last_ok.clone(),
        ));
        let locked = tokio::time::timeout(
            Duration::from_secs(5),
            c.lock(LOCK, Some(LockOptions::new().with_lease(lease))),
        )
        .await;
        if let Ok(Ok(r)) = locked {
            let key = String::from_utf8_lossy(r.key()).into_owned();
            let from = nanos_since(start);
            let hold_for = Duration::from_millis(rng.gen_range(300..700));
            let until = Instant::now() + hold_for;
            while Instant::now() < until {
                let read = tokio::time::timeout(
                    Duration::from_secs(1),
                    c.get(format!("{LOCK}/"), Some(GetOptions::new().with_prefix())),
                )
                .await;
                if let Ok(Ok(r)) = read {
                    let owner = r
                        .kvs()
                        .iter()
                        .min_by_key(|kv| kv.create_revision())
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
                    checks.push(OwnerCheck {
                        client,
                        at: nanos_since(start),
                        owner,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let released = nanos_since(start);
            let _ = tokio::time::timeout(Duration::from_secs(3), c.unlock(key.clone())).await;
            let believed_until = last_ok.load(Ordering::Relaxed) + ttl;
            holds.push(Hold {
                client,
                key,
                from,
                to: released.min(believed_until),
            });
        }
        stop.store(true, Ordering::Relaxed);
        let _ = keeping.await;
        let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(lease)).await;
    }
    (holds, checks)
}

/// Two clients lock the same name through different members while the
/// leader is cut off and later moved: they never both hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_across_partition_and_move_leader() {
    let Some((_serial, cluster, ids)) = cluster_to_cut().await else {
        return;
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(14);
    let lockers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(locker(i, cluster.members[i].endpoint(), start, deadline)))
        .collect();
    let mut faults = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(l) = leader(&cluster, &ids, Duration::from_secs(5)).await {
            faults.push(format!("{:.2}s cut m{l}", secs(nanos_since(start))));
            cluster.cut(l);
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.heal();
            faults.push(format!("{:.2}s healed", secs(nanos_since(start))));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(l) = leader(&cluster, &ids, Duration::from_secs(5)).await {
            let to = (l + 1) % 3;
            if let Some(mut c) = connect(&cluster.members[l].endpoint()).await {
                let r = tokio::time::timeout(Duration::from_secs(5), c.move_leader(ids[to])).await;
                faults.push(format!(
                    "{:.2}s move m{l} -> m{to}: {}",
                    secs(nanos_since(start)),
                    if matches!(r, Ok(Ok(_))) {
                        "ok"
                    } else {
                        "failed"
                    }
                ));
            }
        }
    }
    let (mut holds, mut checks) = (Vec::new(), Vec::new());
    for l in lockers {
        let (h, c) = l.await.expect("locker task");
        holds.extend(h);
        checks.extend(c);
    }
    let violations = lock_violations(&holds, &checks);
    assert!(
        violations.is_empty(),
        "{}\nfaults: {faults:?}\nholds: {holds:?}",
        violations.join("\n")
    );
    assert!(
        holds.iter().any(|h| h.client == 0) && holds.iter().any(|h| h.client == 1),
        "a client never got the lock: {holds:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(client: usize, from: Nanos, to: Nanos) -> Hold {
        Hold {
            client,
            key: format!("/l/{client}"),
            from,
            to,
        }
    }

    #[test]
    fn overlapping_holds_are_caught() {
        let holds = [
            hold(0, 0, 10),
            hold(1, 10, 20),
            hold(0, 25, 30),
            hold(1, 29, 40),
        ];
        let v = lock_violations(&holds, &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("c0 held /l/0"), "{v:?}");
    }

    #[test]
    fn a_holder_that_is_not_the_owner_is_caught() {
        let holds = [hold(0, 0, 10)];
        let checks = [
            OwnerCheck {
                client: 0,
                at: 5,
                owner: Some("/l/0".into()),
            },
            OwnerCheck {
                client: 0,
                at: 8,
                owner: Some("/l/1".into()),
            },
            OwnerCheck {
                client: 0,
                at: 12,
                owner: None,
            },
        ];
        let v = lock_violations(&holds, &checks);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("first key under the lock was Some(\"/l/1\")"));
    }
}
