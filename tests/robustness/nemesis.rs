//! Faults injected into a running 3-member cluster while the clients run:
//! one kind per scenario, repeated until the deadline, each recorded with
//! its start and end so the failover time can be measured. A fault in
//! progress at the deadline is always undone (member restarted, resumed,
//! partition healed) before `run` returns.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{http_get, Cluster};
use crate::history::{nanos_since, Fault, FaultKind};
use crate::recorder::connect;

/// Status of one member, or None if it does not answer within a second.
async fn status(endpoint: &str) -> Option<etcd_client::StatusResponse> {
    let mut c = connect(endpoint).await?;
    tokio::time::timeout(Duration::from_secs(1), c.status())
        .await
        .ok()?
        .ok()
}

/// Every member's id, in member order, asked once at the start.
pub async fn member_ids(cluster: &Cluster) -> Vec<u64> {
    let mut ids = Vec::new();
    for ep in cluster.endpoints() {
        let mut id = 0;
        for _ in 0..20 {
            if let Some(h) = status(&ep).await.as_ref().and_then(|s| s.header()) {
                id = h.member_id();
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ids.push(id);
    }
    ids
}

/// The member a majority of members names as leader, within `limit`.
/// Unlike `Cluster::leader`, every question has a deadline (a paused
/// member never answers) and no agreement is not a panic.
pub async fn leader(cluster: &Cluster, ids: &[u64], limit: Duration) -> Option<usize> {
    let deadline = Instant::now() + limit;
    let majority = ids.len() / 2 + 1;
    loop {
        let mut named = Vec::new();
        for ep in cluster.endpoints() {
            if let Some(s) = status(&ep).await {
                named.push(s.leader());
            }
        }
        for candidate in &named {
            let votes = named.iter().filter(|l| *l == candidate).count();
            if *candidate != 0 && votes >= majority {
                if let Some(i) = ids.iter().position(|id| id == candidate) {
                    return Some(i);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secs(rng: &mut StdRng, low: f64, high: f64) -> Duration {
    Duration::from_secs_f64(rng.gen_range(low..high))
}

/// The leader 80% of the time (when known), else any member.
fn biased(rng: &mut StdRng, leader: Option<usize>, members: usize) -> usize {
    match leader {
        Some(l) if rng.gen_bool(0.8) => l,
        _ => rng.gen_range(0..members),
    }
}

/// How long a restarted member may take to serve before that is reported.
const RESTART_LIMIT: Duration = Duration::from_secs(30);

/// Starts member `i` again and waits until /health says true. Unlike
/// `Server::wait_healthy`, a connection taken and not answered in time is
/// not fatal here: a member restarted under load may recover its WAL with
/// its client port already listening, and how long that takes is data
/// (the fault's note), not a panic. Past `RESTART_LIMIT`, or if the member
/// exits, the error says so.
async fn restart(cluster: &mut Cluster, i: usize) -> Result<Duration, String> {
    let spawned = Instant::now();
    // Blocking harness calls must not stall a runtime worker the clients need.
    tokio::task::block_in_place(|| cluster.members[i].spawn());
    let port = cluster.members[i].port;
    while spawned.elapsed() < RESTART_LIMIT {
        if !cluster.members[i].is_running() {
            return Err(format!("m{i} exited while starting"));
        }
        let health = tokio::task::spawn_blocking(move || http_get(port, "/health")).await;
        if let Ok(Ok((200, body))) = health {
            if body.contains("true") {
                return Ok(spawned.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "m{i} not healthy {RESTART_LIMIT:?} after its restart"
    ))
}

/// One line for a fault's note about its member's restart.
fn restarted(result: Result<Duration, String>, problems: &mut Vec<String>) -> String {
    match result {
        Ok(d) => format!("healthy {:.1} s after restart", d.as_secs_f64()),
        Err(e) => {
            problems.push(e.clone());
            e
        }
    }
}

/// How often the snapshot-catchup member logged installing a snapshot.
fn snapshots_received(cluster: &Cluster, i: usize) -> usize {
    cluster.members[i]
        .logs()
        .matches("received a snapshot from the leader")
        .count()
}

/// Upper bound on faults in one run, whatever the duration.
const FAULTS_MAX: usize = 1000;

/// Injects `kind` faults until `deadline`, starting each after a short
/// quiet spell so the cluster does some work between faults. Returns the
/// faults and the problems met undoing them (a member that did not come
/// back).
pub async fn run(
    kind: FaultKind,
    cluster: &mut Cluster,
    ids: &[u64],
    seed: u64,
    start: Instant,
    deadline: Instant,
) -> (Vec<Fault>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut problems = Vec::new();
    let members = cluster.members.len();
    for _ in 0..FAULTS_MAX {
        let quiet = match kind {
            FaultKind::MoveLeader => secs(&mut rng, 0.8, 1.2),
            _ => secs(&mut rng, 0.5, 1.5),
        };
        tokio::time::sleep(quiet).await;
        if Instant::now() >= deadline {
            break;
        }
        let leader = leader(cluster, ids, Duration::from_secs(5)).await;
        let t0 = nanos_since(start);
        let (member, note) = match kind {
            FaultKind::Kill => {
                let i = biased(&mut rng, leader, members);
                let down = if rng.gen_bool(0.2) {
                    secs(&mut rng, 2.0, 3.0)
                } else {
                    secs(&mut rng, 0.2, 0.8)
                };
                cluster.members[i].kill9();
                tokio::time::sleep(down).await;
                let back = restarted(restart(cluster, i).await, &mut problems);
                (i, format!("down {down:.1?}, {back}"))
            }
            FaultKind::Pause => {
                let i = biased(&mut rng, leader, members);
                let paused = secs(&mut rng, 0.2, 1.5);
                cluster.members[i].pause();
                tokio::time::sleep(paused).await;
                cluster.members[i].resume();
                (i, format!("stopped {paused:.1?}"))
            }
            FaultKind::Partition => {
                let i = biased(&mut rng, leader, members);
                let cut = secs(&mut rng, 1.0, 3.0);
                cluster.cut(i);
                tokio::time::sleep(cut).await;
                cluster.heal();
                (i, format!("cut {cut:.1?}"))
            }
            FaultKind::MoveLeader => {
                let Some(l) = leader else {
                    continue;
                };
                let to = (l + rng.gen_range(1..members)) % members;
                let moved = match connect(&cluster.members[l].endpoint()).await {
                    Some(mut c) => {
                        match tokio::time::timeout(Duration::from_secs(5), c.move_leader(ids[to]))
                            .await
                        {
                            Ok(Ok(_)) => format!("to m{to}: ok"),
                            Ok(Err(e)) => format!("to m{to}: {e}"),
                            Err(_) => format!("to m{to}: no answer in 5 s"),
                        }
                    }
                    None => format!("to m{to}: connect failed"),
                };
                (l, moved)
            }
            FaultKind::SnapshotCatchup => {
                // A follower misses enough entries that the leader has
                // purged them and must send a snapshot.
                let i = match leader {
                    Some(l) => (l + rng.gen_range(1..members)) % members,
                    None => rng.gen_range(0..members),
                };
                let down = secs(&mut rng, 3.0, 5.0);
                let before = snapshots_received(cluster, i);
                cluster.members[i].kill9();
                tokio::time::sleep(down).await;
                let back = restarted(restart(cluster, i).await, &mut problems);
                // Installing happens just after start-up: give it a moment.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let installed = snapshots_received(cluster, i) - before;
                (
                    i,
                    format!("down {down:.1?}, {back}, snapshots installed {installed}"),
                )
            }
        };
        faults.push(Fault {
            kind,
            member,
            hit_leader: kind == FaultKind::MoveLeader || leader == Some(member),
            start: t0,
            end: nanos_since(start),
            note,
        });
    }
    (faults, problems)
}
