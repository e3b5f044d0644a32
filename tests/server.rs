//! The server as an operator sees it: HTTP endpoints, metrics, start-up
//! flags and their errors, auto-compaction.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, run_to_exit, status_of, Server};
use etcd_client::{GetOptions, Txn, TxnOp};

#[tokio::test]
async fn http_endpoints_and_metrics() {
    let s = Server::start(&["--cores", "1"]);
    let mut c = s.client().await;
    c.put("m", "1", None).await.unwrap();
    c.get("m", None).await.unwrap();
    c.delete("m", None).await.unwrap();
    c.txn(Txn::new().and_then([TxnOp::put("t", "1", None)]))
        .await
        .unwrap();
    let _ = c.put("", "x", None).await.unwrap_err();

    assert_eq!(
        http_get(s.port, "/health").unwrap(),
        (200, r#"{"health":"true"}"#.to_string())
    );
    // One etcd version everywhere it is reported.
    let (code, body) = http_get(s.port, "/version").unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, r#"{"etcdserver":"3.6.0","etcdcluster":"3.6.0"}"#);
    assert_eq!(c.status().await.unwrap().version(), "3.6.0");
    let (_, metrics) = http_get(s.port, "/metrics").unwrap();
    assert!(metrics.contains(r#"etcd_server_version{server_version="3.6.0"} 1"#));
    assert!(metrics.contains(r#"etcd_cluster_version{cluster_version="3.6.0"} 1"#));
    for arg in ["--version", "version"] {
        let mut cmd = keel();
        cmd.arg(arg);
        let (code, out) = common::run_to_exit(cmd, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains(concat!("keel Version: ", env!("CARGO_PKG_VERSION"))),
            "{out}"
        );
        assert!(out.contains("etcd API Version: 3.6.0"), "{out}");
    }
    assert_eq!(http_get(s.port, "/livez").unwrap().0, 200);
    assert_eq!(http_get(s.port, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(s.port, "/nope").unwrap().0, 404);
    // The health endpoints take GET only, as etcd's.
    {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = conn.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        assert!(out.to_ascii_lowercase().contains("allow: get"), "{out}");
    }

    let (code, m) = http_get(s.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{m}"))
    };
    for name in [
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_wal_write_bytes_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_debugging_mvcc_keys_total",
        "etcd_mvcc_db_total_size_in_bytes",
    ] {
        value(name);
    }
    assert!(value("etcd_disk_wal_fsync_duration_seconds_count") >= 3.0);
    assert_eq!(
        value("etcd_mvcc_put_total"),
        2.0,
        "the put and the put inside the txn"
    );
    assert_eq!(value("etcd_mvcc_delete_total"), 1.0);
    // The /health asked above (the harness's waits ask it too).
    assert!(value("etcd_server_health_success") >= 1.0);
    assert!(m.contains("etcd_server_health_failures "), "{m}");
    assert_eq!(value("etcd_mvcc_txn_total"), 1.0);
    assert!(value("etcd_mvcc_range_total") >= 1.0);
    assert_eq!(
        value("etcd_debugging_mvcc_keys_total"),
        1.0,
        "only t is live"
    );
    assert!(value("etcd_server_proposals_applied_total") >= 3.0);
    assert!(m.contains(r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#), "{m}");
    assert!(m.contains(r#"grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#), "{m}");
    assert!(m.contains(r#"keel_actor_core{actor="mvcc"} 0"#));
}

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

#[test]
fn bad_flags_are_clear_startup_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--max-txn-ops", "lots"],
            "invalid value 'lots' for '--max-txn-ops",
        ),
        (
            &["--listen-client-urls", "https://127.0.0.1:1"],
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:1 with HTTPS scheme",
        ),
        (
            &["--listen-client-urls", "127.0.0.1:1"],
            "expected a URL like http://127.0.0.1:2379",
        ),
        (
            &["--auto-compaction-retention", "soon"],
            "--auto-compaction-retention=soon",
        ),
        (
            &["--auto-compaction-mode", "sometimes"],
            "invalid value 'sometimes'",
        ),
        (&["--cores", "999"], "--cores must be between 1 and"),
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (
            &[
                "--initial-cluster",
                "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            ],
            "no entry for this member's --name",
        ),
        (
            &["--name", "a", "--initial-cluster", "a=http://127.0.0.1:1"],
            "--initial-advertise-peer-urls is http://127.0.0.1:2380",
        ),
        (
            &[
                "--initial-cluster-state",
                "existing",
                "--initial-cluster",
                "default=http://127.0.0.1:2380,b=http://127.0.0.1:9",
            ],
            "--initial-cluster-state=existing: no member of --initial-cluster answered",
        ),
        (&["--proxy", "on"], "keel has no v2 proxy mode"),
        (
            &["--discovery", "https://discovery.etcd.io/x"],
            "keel has no v2 discovery service client",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = keel();
        cmd.arg("--data-dir").arg(&dir).args(*args);
        let (code, out) = run_to_exit(cmd, Duration::from_secs(20));
        assert!(
            matches!(code, Some(c) if c != 0),
            "{args:?} should fail: {out}"
        );
        assert!(out.contains(want), "{args:?}: expected {want:?} in:\n{out}");
    }
    let (code, out) = run_to_exit(
        {
            let mut c = keel();
            c.arg("--help");
            c
        },
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0));
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--snapshot-count",
        "--auto-compaction-mode",
        "--cores",
        "ETCD_NAME",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

/// Story: 60 of etcd 3.4's flags were refused, there was no
/// `--config-file` and no Go-style `-flag`, so kubeadm's manifest and
/// typical unit files did not start keel. Now: a configuration file with
/// etcd's keys (its sample's, with etcd's precedence: the file wins over
/// flags), Go-style flags, and etcd's tuning flags for its bbolt backend,
/// profiler and v2 API all start it, the meaningless ones with a warning.
#[tokio::test]
async fn etcd_command_lines_and_configuration_files_start_keel() {
    // etcd's sample configuration, with this test's ports and directory.
    let mut server = Server::new(vec!["--name".into(), "ignored-flag".into()]);
    let config = server.dir.with_file_name("etcd.conf.yml");
    std::fs::write(
        &config,
        format!(
            r#"
name: 'from-file'
data-dir: {dir}
wal-dir:
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: {peer}
listen-client-urls: {client}
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: {peer}
advertise-client-urls: {client}
discovery:
discovery-fallback: 'proxy'
discovery-proxy:
discovery-srv:
initial-cluster:
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
enable-pprof: true
proxy: 'off'
proxy-failure-wait: 5000
proxy-refresh-interval: 30000
proxy-dial-timeout: 1000
proxy-write-timeout: 5000
proxy-read-timeout: 0
client-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
self-signed-cert-validity: 1
debug: false
log-level: info
logger: zap
log-outputs: [stderr]
force-new-cluster: false
auto-compaction-mode: periodic
auto-compaction-retention: "1"
"#,
            dir = server.dir.display(),
            peer = server.peer_url(),
            client = server.endpoint(),
        ),
    )
    .unwrap();
    server
        .args
        .extend(["--config-file".into(), config.display().to_string()]);
    server.env.push(("ETCD_NAME".into(), "ignored-env".into()));
    server.spawn();
    server.wait_healthy();
    let mut c = server.client().await;
    assert_eq!(
        c.member_list().await.unwrap().members()[0].name(),
        "from-file"
    );
    let logs = server.logs();
    assert!(logs.contains("loaded server configuration"), "{logs}");
    assert!(logs.contains("--enable-pprof is ignored"), "{logs}");
    assert!(
        logs.contains("self-signed-cert-validity is not a setting keel knows"),
        "{logs}"
    );
    // `--logger zap`: JSON lines.
    assert!(logs.lines().any(|l| l.starts_with("{\"level\":")), "{logs}");
    drop(c);
    server.kill9();

    // Go-style flags, etcd's storage tuning flags, and --wal-dir.
    let wal = server.dir.with_file_name("wal-elsewhere");
    let mut go = Server::new(
        [
            "-name",
            "go-style",
            "-wal-dir",
            wal.to_str().unwrap(),
            "-backend-batch-limit=10000",
            "-backend-batch-interval",
            "10ms",
            "-experimental-backend-bbolt-freelist-type=map",
            "-experimental-compaction-batch-limit",
            "1000",
            "-initial-election-tick-advance=false",
            "-pre-vote",
            "-metrics",
            "extensive",
            "-max-snapshots",
            "3",
            // etcd 3.6's names for experimental flags.
            "-watch-progress-notify-interval=5s",
            "--snapshot-catchup-entries",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    go.spawn();
    go.wait_healthy();
    let mut c = go.client().await;
    assert_eq!(
        c.member_list().await.unwrap().members()[0].name(),
        "go-style"
    );
    c.put("k", "v", None).await.unwrap();
    assert!(
        go.logs().contains("--backend-batch-limit=10000 is ignored"),
        "{}",
        go.logs()
    );
    let segments = std::fs::read_dir(&wal).unwrap().count();
    assert!(segments > 0, "no WAL segment in --wal-dir");
    assert_eq!(std::fs::read_dir(go.wal_dir()).unwrap().count(), 0);
    drop(c);
    go.restart();
    let mut c = go.client().await;
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
}

/// Story: the log said nothing of compactions or membership, tools that
/// wait for etcd's start-up lines never saw them, and a peer that was down
/// was logged twice a second with decimal ids. Now: the start-up
/// configuration, etcd's "published", "enabled capabilities" and "ready"
/// lines, compactions, members added (ids in hex), and an unreachable peer
/// at most every 30 s.
#[tokio::test]
async fn the_log_says_what_operators_and_tools_wait_for() {
    let s = Server::start(&[]);
    let mut c = s.client().await;
    c.put("a", "1", None).await.unwrap();
    c.put("a", "2", None).await.unwrap();
    c.compact(2, None).await.unwrap();
    let added = c
        .member_add(
            ["http://127.0.0.1:9"],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let id = added.member().unwrap().id();
    // Two seconds of failing to reach the learner.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = s.logs();
    for line in [
        "starting an etcd server",
        "published local member to cluster through raft",
        "enabled capabilities for version 3.6",
        "ready to serve client requests",
        "store.index: compact compact_revision=2",
    ] {
        assert!(logs.contains(line), "{line:?} not in:\n{logs}");
    }
    assert!(
        logs.contains(&format!("added member added_member_id=\"{id:x}\"")),
        "{logs}"
    );
    let unreachable = logs.matches("peer unreachable").count();
    assert_eq!(unreachable, 1, "{logs}");
    assert!(
        !logs.contains(&id.to_string()),
        "a decimal member id: {logs}"
    );
}

/// `--host-whitelist` and `--cors`, as etcd's access controller applies
/// them to plain HTTP.
#[test]
fn host_whitelist_and_cors_guard_plain_http() {
    use std::io::{Read, Write};
    let s = Server::start(&[
        "--host-whitelist",
        "good.example,127.0.0.1",
        "--cors",
        "http://app.example",
    ]);
    let get = |host: &str, origin: &str| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "GET /version HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        out
    };
    let refused = get("evil.example:2379", "http://app.example");
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    assert!(
        refused.contains("etcd --host-whitelist \"evil.example\""),
        "{refused}"
    );
    let ok = get("good.example:2379", "http://app.example");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(
        ok.to_lowercase()
            .contains("access-control-allow-origin: http://app.example"),
        "{ok}"
    );
    let other = get("good.example", "http://other.example");
    assert!(
        !other.to_lowercase().contains("access-control-allow-origin"),
        "{other}"
    );
}

#[tokio::test]
async fn environment_variables_set_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let mut cmd = keel();
    cmd.env("ETCD_NAME", "from-env")
        .env("ETCD_DATA_DIR", tmp.path().join("env.keel"))
        .env(
            "ETCD_LISTEN_CLIENT_URLS",
            format!("http://127.0.0.1:{port}"),
        )
        .env("ETCD_LISTEN_PEER_URLS", &peer)
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", &peer)
        .env("ETCD_MAX_TXN_OPS", "2")
        .env("KEEL_CORES", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + common::START_TIMEOUT;
    while http_get(port, "/health").map(|r| r.0).ok() != Some(200) {
        assert!(Instant::now() < deadline, "not healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None)
        .await
        .unwrap();
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members()[0].name(), "from-env");
    let ops: Vec<_> = (0..3)
        .map(|i| TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    assert_eq!(
        status_of(c.txn(Txn::new().and_then(ops)).await.unwrap_err()).1,
        "etcdserver: too many operations in txn request"
    );
    assert!(tmp.path().join("env.keel/member/wal").is_dir());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn data_dir_is_locked_against_a_second_server() {
    let mut s = Server::start(&["--cores", "1"]);
    let mut second = keel();
    second
        .arg("--data-dir")
        .arg(&s.dir)
        .arg("--listen-client-urls")
        .arg(format!("http://127.0.0.1:{}", common::free_port()))
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{}", common::free_port()))
        .args(["--cores", "1"]);
    let (code, out) = run_to_exit(second, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("in use by another keel process"), "{out}");
    // The first server is untouched.
    s.client().await.put("still", "here", None).await.unwrap();
    s.restart();
}

#[tokio::test]
async fn a_port_in_use_is_refused_not_shared() {
    let s = Server::start(&["--cores", "1"]);
    let other = tempfile::tempdir().unwrap();
    let mut second = keel();
    second
        .arg("--data-dir")
        .arg(other.path())
        .arg("--listen-client-urls")
        .arg(s.endpoint())
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{}", common::free_port()))
        .args(["--cores", "1"]);
    let (code, out) = run_to_exit(second, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "cannot listen for clients on 127.0.0.1:{}: Address already in use",
            s.port
        )),
        "{out}"
    );
    s.client().await.put("still", "mine", None).await.unwrap();
}

/// A member that does not serve yet (its peers are not up) holds its client
/// port all the same: another socket cannot take it (std's bind sets
/// SO_REUSEADDR, which could join a bound socket that did not listen yet,
/// and the member then died on "cannot listen for clients"). Meanwhile a
/// client's connection is reset at once, not left waiting, and the member
/// serves once a quorum is up.
#[test]
fn a_member_not_serving_yet_holds_its_port_and_resets_clients() {
    let peer_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let cluster: Vec<String> = (0..3)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_ports[i]))
        .collect();
    let member = |i: usize| {
        let mut s = Server::new(
            [
                "--name",
                &format!("m{i}"),
                "--initial-cluster",
                &cluster.join(","),
                "--cores",
                "1",
            ]
            .map(String::from)
            .to_vec(),
        );
        s.peer_port = peer_ports[i];
        s
    };
    let mut m0 = member(0);
    m0.spawn();
    // Bound and listening at start-up, well before it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stolen = loop {
        match std::net::TcpListener::bind(("127.0.0.1", m0.port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => break None,
            Ok(l) if Instant::now() > deadline => break Some(l),
            Ok(l) => drop(l),
            Err(e) => panic!("binding: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(stolen.is_none(), "another socket took the client port");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", m0.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut conn, &mut buf);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(m0.is_running(), "{}", m0.logs());
    let mut m1 = member(1);
    m1.spawn();
    m0.wait_healthy();
    m1.wait_healthy();
}

#[tokio::test]
async fn periodic_auto_compaction() {
    // Retention 2 s: revisions are sampled every 200 ms and history older
    // than ~2 s is compacted every 2 s.
    let s = Server::start(&[
        "--cores",
        "1",
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "2s",
    ]);
    let mut c = s.client().await;
    c.put("a", "old", None).await.unwrap(); // rev 2
    c.put("a", "new", None).await.unwrap(); // rev 3
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.get("a", Some(GetOptions::new().with_revision(2))).await {
            Err(e) => {
                assert_eq!(
                    status_of(e).1,
                    "etcdserver: mvcc: required revision has been compacted"
                );
                break;
            }
            Ok(r) => assert_eq!(r.kvs()[0].value(), b"old"),
        }
        assert!(Instant::now() < deadline, "history was never compacted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"new");
}

#[tokio::test]
async fn revision_auto_compaction_is_accepted() {
    // etcd checks every 5 minutes in revision mode, longer than a test;
    // the policy itself is unit-tested (actors::compactor). Here: the mode
    // starts and serves.
    let s = Server::start(&[
        "--cores",
        "1",
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "10",
    ]);
    s.client().await.put("k", "v", None).await.unwrap();
}

/// Regression: with the default, relative data dir (`default.keel`), the
/// WAL writer failed to open its directory (glommio refuses relative paths
/// with EBADF) and the server stopped at start-up. Every other test passes an
/// absolute --data-dir, so none saw it.
#[tokio::test]
async fn default_relative_data_dir() {
    let cwd = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let mut child = keel()
        .current_dir(cwd.path())
        .args([
            "--cores",
            "1",
            "--listen-client-urls",
            &format!("http://127.0.0.1:{port}"),
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::START_TIMEOUT;
    while http_get(port, "/health").map(|r| r.0).ok() != Some(200) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "keel exited at start-up"
        );
        assert!(Instant::now() < deadline, "not healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None)
        .await
        .unwrap();
    c.put("relative", "ok", None).await.unwrap();
    assert!(cwd.path().join("default.keel/member/wal").is_dir());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every core accepts on a duplicate of one listening socket from the moment
/// its executor starts. While that socket was blocking, glommio's accept
/// (which flips O_NONBLOCK on and back around a first accept(2) attempt)
/// raced on the shared file flags between the cores: one core could block
/// in accept(2) and leave the connection it had just taken unserved, so a
/// client connecting right after start-up waited forever.
#[tokio::test]
async fn connections_right_after_start_up_are_served() {
    let mut s = Server::start(&["--cores", "2"]);
    // Each restart polls /health from the moment the process is spawned and
    // fails on a connection that is taken but never answered.
    for _ in 0..25 {
        s.restart();
    }
}

/// Every directory and file under `dir` with its permission bits (a file
/// renamed or removed by the running server while this looks is skipped).
fn modes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(m) = std::fs::metadata(&p) {
                if m.is_dir() {
                    todo.push(p.clone());
                }
                out.push((p, m.permissions().mode() & 0o777));
            }
        }
    }
    out
}

/// The data directory is the server's alone, as etcd keeps it: 0700
/// directories and 0600 files, whatever the umask it was started with. An
/// existing directory open to others is used as it is, with etcd's warning.
#[tokio::test]
async fn data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start(&["--snapshot-count", "10"]);
    let mut c = s.client().await;
    for i in 0..30 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    // The snapshot is written in the background: wait for it (bounded).
    let has_snap = |m: &[(std::path::PathBuf, u32)]| {
        m.iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "snap"))
    };
    let mut modes = modes_under(&s.dir);
    for _ in 0..50 {
        if has_snap(&modes) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        modes = modes_under(&s.dir);
    }
    assert!(has_snap(&modes), "no snapshot was written");
    let top = std::fs::metadata(&s.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(top, 0o700, "the data dir is {top:o}");
    for (path, mode) in &modes {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
    assert!(!s.logs().contains("The recommended permission is"));
    s.kill9();

    let mut open = Server::new(vec![]);
    std::fs::create_dir_all(&open.dir).unwrap();
    std::fs::set_permissions(&open.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    open.spawn();
    open.wait_healthy();
    assert!(
        open.logs()
            .contains("but the permission is 755. The recommended permission is 700"),
        "{}",
        open.logs()
    );
    let member = open.dir.join("member");
    assert_eq!(
        std::fs::metadata(&member).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// Story: keel raised only its locked-memory limit. Under an open-file
/// limit, idle client connections took every descriptor, and the WAL
/// writer's next segment failed to open, which is fatal: the member
/// stopped. Client connections now leave descriptors for the rest.
#[tokio::test]
async fn idle_connections_cannot_starve_the_wal_of_descriptors() {
    let mut server = Server::new(
        ["--wal-segment-bytes", "5242880"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    // The issue's case: `ulimit -n 256` and 300 idle connections.
    server.open_files = Some(256);
    server.spawn();
    server.wait_healthy();
    // Connected (etcd-client connects on first use) before the others.
    let mut c = server.client().await;
    c.put("fd/first", "x", None).await.unwrap();
    // More idle HTTP/2 connections than the server has descriptors.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", server.port)) else {
            break;
        };
        use std::io::Write;
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        idle.push(s);
    }
    assert_eq!(idle.len(), 300, "opened only {} connections", idle.len());
    // Enough writes to fill several 5 MiB WAL segments.
    let value = vec![b'w'; 64 << 10];
    for i in 0..300 {
        c.put(format!("fd/{i}"), value.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}\n{}", server.logs()));
    }
    assert!(server.is_running(), "{}", server.logs());
    assert!(
        server.logs().contains("the open-file limit"),
        "no warning about the limit:\n{}",
        server.logs()
    );
    drop(idle);
}

/// Story: a connection that never sent its first bytes was held forever
/// (the protocol sniffing read had no deadline), one descriptor each.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = Server::start(&[]);
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    use std::io::Read;
    let n = silent.read(&mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected the server to close the connection, got {n:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Story: client connections had no HTTP/2 keepalive, so a client whose
/// host vanished without closing its connections (power loss, a dropped
/// route) held them, and their watch streams, for good. The server now
/// pings a quiet connection (`--grpc-keepalive-interval`) and closes it
/// when the ping goes unanswered for `--grpc-keepalive-timeout`, as etcd.
#[tokio::test]
async fn a_connection_that_answers_no_ping_is_closed() {
    use std::io::{Read, Write};
    let server = Server::start(&[
        "--grpc-keepalive-interval",
        "200ms",
        "--grpc-keepalive-timeout",
        "300ms",
    ]);
    let mut mute = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame; then nothing, ever.
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    mute.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    mute.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut got_ping = false;
    let mut buf = vec![0u8; 4096];
    let mut frames = Vec::new();
    let end = loop {
        match mute.read(&mut buf) {
            Ok(0) => break Ok(0),
            Ok(n) => frames.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
        // Frame headers: 3 bytes length, 1 byte type (6 is PING).
        let mut at = 0;
        while at + 9 <= frames.len() {
            let len = u32::from_be_bytes([0, frames[at], frames[at + 1], frames[at + 2]]) as usize;
            got_ping |= frames[at + 3] == 6;
            at += 9 + len;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "not closed");
    };
    assert!(
        matches!(end, Ok(0))
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected the server to close the connection, got {end:?} after {:?}",
        started.elapsed()
    );
    assert!(got_ping, "closed without a ping first");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A client that answers pings keeps its connection.
    let mut c = server.client().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.put("still", "here", None).await.unwrap();
}

/// Story: `--grpc-keepalive-min-time` was accepted and ignored, so a client
/// could ping a server as often as it liked. keel now applies grpc-go's
/// enforcement policy, as etcd 3.4.23 does (checked against it on the
/// wire): a ping sooner than the minimum after the previous one (2 h while
/// the connection has no stream) is a strike, and the third strike is
/// answered with its pong, then GOAWAY ENHANCE_YOUR_CALM "too_many_pings",
/// then the connection closes. Pings at least the minimum apart on a
/// connection with a stream are fine.
#[tokio::test]
async fn a_client_that_pings_too_often_is_sent_away() {
    use std::io::{Read, Write};
    let server = Server::start(&["--grpc-keepalive-min-time", "100ms"]);
    let mut rude = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    rude.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The preface and an empty SETTINGS frame, then four pings on a
    // connection without streams.
    rude.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    rude.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    for i in 0..4u8 {
        rude.write_all(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i])
            .unwrap();
    }
    let mut received = Vec::new();
    let started = Instant::now();
    loop {
        let mut buf = [0u8; 4096];
        match rude.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close after {:?}: {e}", started.elapsed()),
        }
    }
    // (type, flags, payload) of every frame the server sent.
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let len =
            u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        let end = (at + 9 + len).min(received.len());
        frames.push((
            received[at + 3],
            received[at + 4],
            received[at + 9..end].to_vec(),
        ));
        at += 9 + len;
    }
    let pongs: Vec<u8> = frames
        .iter()
        .filter(|(kind, flags, _)| *kind == 6 && flags & 1 == 1)
        .map(|(_, _, payload)| payload[7])
        .collect();
    assert_eq!(pongs, [0, 1, 2, 3], "{frames:?}");
    let (_, _, goaway) = frames
        .iter()
        .find(|(kind, _, _)| *kind == 7)
        .expect("GOAWAY");
    // Last stream id (4 bytes), error code ENHANCE_YOUR_CALM (0xb), debug data.
    assert_eq!(&goaway[4..8], &[0, 0, 0, 0xb], "{goaway:?}");
    assert_eq!(&goaway[8..], b"too_many_pings");

    // A client that pings every 200 ms while its watch is open keeps it.
    let options = etcd_client::ConnectOptions::new()
        .with_keep_alive(Duration::from_millis(200), Duration::from_secs(2));
    let mut polite = etcd_client::Client::connect([server.endpoint()], Some(options))
        .await
        .unwrap();
    let (_watcher, mut events) = polite.watch("k", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.client().await.put("k", "v", None).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("watch answers")
        .expect("watch stream still open")
        .expect("an event");
    assert_eq!(got.events()[0].kv().unwrap().value(), b"v");
}

/// Story: an `ETCD_*` variable keel did not know was ignored without a
/// word, so a unit file's misspelt (or not yet supported) security setting
/// gave a server without it and no warning. keel now warns, as etcd does.
#[test]
fn an_unknown_etcd_variable_is_warned_about() {
    let mut server = Server::new(Vec::new());
    server
        .env
        .push(("ETCD_CLIENT_CERT_AUTHH".into(), "true".into()));
    server.spawn();
    server.wait_healthy();
    assert!(
        server
            .logs()
            .contains("unrecognized environment variable ETCD_CLIENT_CERT_AUTHH=true"),
        "{}",
        server.logs()
    );
}

/// `--listen-metrics-urls` (kubeadm's etcd manifest passes one, and keel
/// refused to start on it): /metrics and the health endpoints are served
/// there, and nothing else: no gRPC, no /version.
#[tokio::test]
async fn a_metrics_listener_serves_metrics_and_health_only() {
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server::start(&["--listen-metrics-urls", &url]);
    let (code, body) = common::http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    let (code, body) = common::http_get(port, "/health").unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));
    for path in ["/livez", "/readyz"] {
        assert_eq!(common::http_get(port, path).unwrap().0, 200, "{path}");
    }
    for path in ["/version", "/v3/kv/range"] {
        assert_eq!(common::http_get(port, path).unwrap().0, 404, "{path}");
    }
    let grpc = etcd_client::Client::connect(
        [url],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3))),
    )
    .await
    .unwrap()
    .status()
    .await;
    assert!(grpc.is_err(), "gRPC answered on the metrics port: {grpc:?}");
}

/// Story: logs were ANSI-coloured text wherever they went, with no JSON
/// option. `--logger zap` writes one JSON object per line with zap's keys
/// (as etcd), `--log-outputs` sends them to files as well, and text written
/// to a file carries no colour codes.
#[test]
fn logs_go_to_files_as_json_or_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let json_log = dir.path().join("keel.json");
    let mut server = Server::new(vec![
        "--logger".into(),
        "zap".into(),
        "--log-outputs".into(),
        format!("stderr,{}", json_log.display()),
    ]);
    server.spawn();
    server.wait_healthy();
    let text = std::fs::read_to_string(&json_log).unwrap();
    let mut ready = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["level", "ts", "caller", "msg"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        ready |= v["msg"] == "ready to serve client requests" && v["level"] == "info";
    }
    assert!(ready, "{text}");
    // The same lines went to stderr.
    assert!(server
        .logs()
        .contains("\"msg\":\"ready to serve client requests\""));
    drop(server);

    let text_log = dir.path().join("keel.log");
    let mut server = Server::new(vec!["--log-outputs".into(), text_log.display().to_string()]);
    server.spawn();
    server.wait_healthy();
    let text = std::fs::read_to_string(&text_log).unwrap();
    assert!(text.contains("ready to serve client requests"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
}
