//! Auth as etcd: users, roles, permissions, tokens, through the real
//! binary and the etcd-client crate. Codes and messages are etcd 3.4.23's
//! (recorded against it with etcdctl; see `.ci/interop-auth.sh`).

mod common;

use std::time::Duration;

use common::{status_of, Cluster, Server};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Permission, Txn, TxnOp,
    UserAddOptions, WatchOptions,
};
use tonic::Code;

const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

async fn connect(endpoint: &str, user: Option<(&str, &str)>) -> Result<Client, etcd_client::Error> {
    let options = user.map(|(u, p)| ConnectOptions::new().with_user(u, p));
    Client::connect([endpoint.to_string()], options).await
}

/// Why connecting as `user` fails.
async fn refused(endpoint: &str, user: (&str, &str)) -> (Code, String) {
    match connect(endpoint, Some(user)).await {
        Ok(_) => panic!("{} authenticated", user.0),
        Err(e) => status_of(e),
    }
}

/// root (holding the root role), and alice holding role `r1`: read-write
/// on prefix `foo/`, read on `a`, write on `[b, c)`, read from `x` on;
/// nothing on `k`.
async fn set_up_auth(endpoint: &str) {
    let mut root = connect(endpoint, None).await.unwrap();
    let e = root.auth_enable().await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not exist".into()
        )
    );
    root.user_add("root", "rootpw", None).await.unwrap();
    let e = root.auth_enable().await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: root user does not have root role".into()
        )
    );
    root.user_grant_role("root", "root").await.unwrap();
    root.user_add("alice", "apw", None).await.unwrap();
    root.role_add("r1").await.unwrap();
    for perm in [
        Permission::read_write("foo/").with_prefix(),
        Permission::read("a"),
        Permission::write("b").with_range_end("c"),
        Permission::read("x").with_from_key(),
    ] {
        root.role_grant_permission("r1", perm).await.unwrap();
    }
    root.user_grant_role("alice", "r1").await.unwrap();
    root.put("a", "1", None).await.unwrap();
    root.auth_enable().await.unwrap();
}

/// Waits at most 10 s for `fut`.
async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("no answer within 10 s")
}

fn denied() -> (Code, String) {
    (
        Code::PermissionDenied,
        "etcdserver: permission denied".into(),
    )
}

#[tokio::test]
async fn users_roles_and_permissions_as_etcd() {
    let s = Server::start(&["--cores", "1"]);
    let ep = s.endpoint();
    set_up_auth(&ep).await;

    // No credentials, wrong ones.
    let mut anon = connect(&ep, None).await.unwrap();
    let e = anon.put("foo/1", "x", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
    let e = anon.get("a", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
    assert_eq!(
        refused(&ep, ("alice", "wrong")).await,
        (
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".into()
        )
    );

    let mut alice = connect(&ep, Some(("alice", "apw"))).await.unwrap();
    alice.put("foo/1", "one", None).await.unwrap();
    let r = alice.get("foo/1", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "one");
    assert_eq!(
        alice
            .get("foo/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        status_of(alice.put("k", "1", None).await.unwrap_err()),
        denied()
    );
    assert_eq!(status_of(alice.get("k", None).await.unwrap_err()), denied());
    assert_eq!(alice.get("a", None).await.unwrap().kvs()[0].value(), b"1");
    assert_eq!(
        status_of(alice.put("a", "2", None).await.unwrap_err()),
        denied()
    );
    // A range wider than the granted one.
    let wide = GetOptions::new().with_range("foo1");
    assert_eq!(
        status_of(alice.get("foo/", Some(wide)).await.unwrap_err()),
        denied()
    );
    // Write-only range: deletes yes, reads no (prev_kv reads).
    let range = etcd_client::DeleteOptions::new().with_range("c");
    alice.delete("b", Some(range)).await.unwrap();
    let prev = etcd_client::DeleteOptions::new()
        .with_range("c")
        .with_prev_key();
    assert_eq!(
        status_of(alice.delete("b", Some(prev)).await.unwrap_err()),
        denied()
    );
    // From-key permission.
    alice.get("zzz", None).await.unwrap();

    // One forbidden operation denies the whole txn, nothing is applied.
    let txn = Txn::new()
        .when([Compare::value("foo/1", CompareOp::Equal, "one")])
        .and_then([TxnOp::put("foo/2", "two", None), TxnOp::put("k", "x", None)]);
    assert_eq!(status_of(alice.txn(txn).await.unwrap_err()), denied());
    // Also in the branch that would not run, and in a compare.
    let txn = Txn::new()
        .when([Compare::value("foo/1", CompareOp::Equal, "one")])
        .and_then([TxnOp::put("foo/2", "two", None)])
        .or_else([TxnOp::get("k", None)]);
    assert_eq!(status_of(alice.txn(txn).await.unwrap_err()), denied());
    let txn = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("foo/2", "two", None)]);
    assert_eq!(status_of(alice.txn(txn).await.unwrap_err()), denied());
    assert_eq!(alice.get("foo/2", None).await.unwrap().count(), 0);
    let txn = Txn::new()
        .when([Compare::value("foo/1", CompareOp::Equal, "one")])
        .and_then([TxnOp::put("foo/2", "two", None), TxnOp::get("a", None)]);
    assert!(alice.txn(txn).await.unwrap().succeeded());

    // Locks write and read keys under their name: the same checks.
    let held = within(alice.lock("foo/lock", None)).await.unwrap();
    assert!(held.key().starts_with(b"foo/lock/"));
    alice.unlock(held.key().to_vec()).await.unwrap();
    let e = within(alice.lock("k", None)).await.unwrap_err();
    assert_eq!(status_of(e).1, "etcdserver: permission denied");

    // A watch on a range she may not read is created and canceled at once
    // (the crate reads the first create's answer itself).
    let (mut watcher, mut stream) = alice
        .watch("foo/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(watcher.watch_id() >= 0);
    watcher.watch("k", None).await.unwrap();
    let r = within(stream.message()).await.unwrap().unwrap();
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let (refused_watch, _) = alice.watch("k", None).await.unwrap();
    assert_eq!(refused_watch.watch_id(), -1);
    // The stream goes on for what she may read.
    alice.put("foo/3", "three", None).await.unwrap();
    let r = within(stream.message()).await.unwrap().unwrap();
    assert_eq!(r.events()[0].event_type(), EventType::Put);
    assert_eq!(r.events()[0].kv().unwrap().key(), b"foo/3");

    // Administration is root's; a user may read itself and its roles.
    assert_eq!(status_of(alice.user_list().await.unwrap_err()), denied());
    assert_eq!(status_of(alice.role_add("r2").await.unwrap_err()), denied());
    assert_eq!(alice.user_get("alice").await.unwrap().roles(), ["r1"]);
    assert_eq!(alice.role_get("r1").await.unwrap().permissions().len(), 4);
    assert_eq!(
        status_of(alice.user_get("root").await.unwrap_err()),
        denied()
    );
    assert_eq!(status_of(alice.hash_kv(0).await.unwrap_err()), denied());
    let e = alice
        .member_add(["http://127.0.0.1:1"], None)
        .await
        .unwrap_err();
    assert_eq!(status_of(e), denied());

    let mut root = connect(&ep, Some(("root", "rootpw"))).await.unwrap();
    assert_eq!(root.user_list().await.unwrap().users(), ["alice", "root"]);
    assert_eq!(root.role_list().await.unwrap().roles(), ["r1"]);
    let e = root.user_delete("root").await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: invalid auth management".into()
        )
    );
    let e = root.user_add("alice", "x", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: user name already exists".into()
        )
    );
    let e = root.user_get("nobody").await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: user name not found".into()
        )
    );
    let e = root.role_get("nobody").await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: role name not found".into()
        )
    );
    let e = root.user_revoke_role("alice", "r9").await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user".into()
        )
    );
    let e = root
        .role_revoke_permission("r1", "zz", None)
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role".into()
        )
    );
    // A permission taken away applies to the token she already has.
    let prefix = etcd_client::RoleRevokePermissionOptions::new().with_prefix();
    root.role_revoke_permission("r1", "foo/", Some(prefix))
        .await
        .unwrap();
    assert_eq!(
        status_of(alice.get("foo/1", None).await.unwrap_err()),
        denied()
    );

    // A user without a password cannot authenticate with one.
    root.user_add("certonly", "", Some(UserAddOptions::new().with_no_pwd()))
        .await
        .unwrap();
    assert_eq!(
        refused(&ep, ("certonly", "x")).await,
        (
            Code::Unknown,
            "auth: authentication failed, password was given for no password user".into()
        )
    );

    // A new password: the old one and its tokens stop working.
    root.user_change_password("alice", "newpw").await.unwrap();
    let e = alice.get("a", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
    assert!(connect(&ep, Some(("alice", "apw"))).await.is_err());
    let mut alice = connect(&ep, Some(("alice", "newpw"))).await.unwrap();
    alice.get("a", None).await.unwrap();

    root.auth_disable().await.unwrap();
    anon.put("k", "free", None).await.unwrap();
    let e = anon.authenticate_is_off().await;
    assert_eq!(
        e,
        (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled".into()
        )
    );
}

trait AuthenticateIsOff {
    async fn authenticate_is_off(&mut self) -> (Code, String);
}

impl AuthenticateIsOff for Client {
    async fn authenticate_is_off(&mut self) -> (Code, String) {
        let e = self
            .auth_client()
            .authenticate("root".into(), "rootpw".into())
            .await
            .unwrap_err();
        status_of(e)
    }
}

#[tokio::test]
async fn a_token_expires_its_ttl_after_its_last_use() {
    let s = Server::start(&["--cores", "1", "--auth-token-ttl", "2"]);
    let ep = s.endpoint();
    set_up_auth(&ep).await;
    let mut alice = connect(&ep, Some(("alice", "apw"))).await.unwrap();
    // Used every second, it lives on.
    for _ in 0..4 {
        alice.get("a", None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let e = alice.get("a", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
}

#[test]
fn token_flags_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (public, private) = (dir.path().join("jwt.pub"), dir.path().join("jwt.key"));
    std::fs::write(&public, key.public_key_pem()).unwrap();
    std::fs::write(&private, key.serialize_pem()).unwrap();
    let cases = [
        ("magic".to_string(), "unknown token type \"magic\""),
        ("jwt,priv-key=x".to_string(), "sign-method is required"),
        (
            "jwt,sign-method=XX999".to_string(),
            "sign-method \"XX999\" is not one of",
        ),
        (
            format!("jwt,sign-method=ES256,priv-key={}", private.display()),
            "pub-key is needed to check tokens",
        ),
        (
            format!(
                "jwt,sign-method=ES256,pub-key={}",
                dir.path().join("none").display()
            ),
            "No such file or directory",
        ),
        (
            format!(
                "jwt,sign-method=ES256,pub-key={},ttl=soon",
                public.display()
            ),
            "ttl=soon: expected a duration",
        ),
    ];
    for (flag, message) in cases {
        let mut s = Server::new(vec!["--auth-token".into(), flag.clone()]);
        let (code, out) = s.start_expect_exit();
        assert_eq!(code, Some(1), "{flag}: {out}");
        assert!(out.contains(message), "{flag}: {out}");
        assert!(!out.contains("recovered"), "checked before recovery: {out}");
    }
}

/// `--auth-token jwt,...`: tokens are JWTs etcd's way (ES256 here: claims
/// username, revision, exp), checked by signature and expiry; an auth
/// change makes them old, as etcd's.
#[tokio::test]
async fn jwt_tokens_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (public, private) = (dir.path().join("jwt.pub"), dir.path().join("jwt.key"));
    std::fs::write(&public, key.public_key_pem()).unwrap();
    std::fs::write(&private, key.serialize_pem()).unwrap();
    let flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=3s",
        public.display(),
        private.display()
    );
    let s = Server::start(&["--cores", "1", "--auth-token", &flag]);
    let ep = s.endpoint();
    set_up_auth(&ep).await;
    let mut alice = connect(&ep, Some(("alice", "apw"))).await.unwrap();
    alice.get("a", None).await.unwrap();
    assert_eq!(status_of(alice.get("k", None).await.unwrap_err()), denied());
    let token = alice
        .auth_client()
        .authenticate("alice".into(), "apw".into())
        .await
        .unwrap()
        .token()
        .to_string();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    use base64::Engine;
    let decode = |p: &str| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    assert_eq!(decode(parts[0])["alg"], "ES256");
    let claims = decode(parts[1]);
    assert_eq!(claims["username"], "alice");
    assert!(claims["revision"].as_u64().unwrap() > 0);
    assert!(claims["exp"].as_u64().is_some());

    // An auth change makes every token older than the store.
    let mut root = connect(&ep, Some(("root", "rootpw"))).await.unwrap();
    root.role_add("r2").await.unwrap();
    let e = alice.get("a", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old".into()
        )
    );
    // A new token works, until it expires.
    let mut alice = connect(&ep, Some(("alice", "apw"))).await.unwrap();
    alice.get("a", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let e = alice.get("a", None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
}

/// Auth state is raft state: set up through one member, it holds on every
/// member, in the snapshot a lagging member installs, and after kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_replicated_snapshotted_and_survives_kill9() {
    let mut args = FAST.to_vec();
    args.extend([
        "--snapshot-count",
        "200",
        "--experimental-snapshot-catchup-entries",
        "20",
    ]);
    let mut cluster = Cluster::start(3, &args);
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.members[lagging].kill9();
    let eps = cluster.endpoints();
    set_up_auth(&eps[leader]).await;
    // Enough entries for snapshots the lagging member must install.
    let mut root = connect(&eps[leader], Some(("root", "rootpw")))
        .await
        .unwrap();
    for i in 0..600 {
        root.put(format!("foo/{i:03}"), "v", None).await.unwrap();
    }
    cluster.members[lagging].spawn();
    cluster.members[lagging].wait_healthy();
    let logs = cluster.members[lagging].logs();
    assert!(
        logs.contains("received a snapshot from the leader"),
        "the lagging member did not install a snapshot:\n{logs}"
    );
    for i in [lagging, other] {
        let mut alice = connect(&eps[i], Some(("alice", "apw"))).await.unwrap();
        let prefix = GetOptions::new().with_prefix().with_serializable();
        assert_eq!(alice.get("foo/", Some(prefix)).await.unwrap().count(), 600);
        assert_eq!(status_of(alice.get("k", None).await.unwrap_err()), denied());
        assert_eq!(
            status_of(alice.put("k", "1", None).await.unwrap_err()),
            denied()
        );
    }
    // Kill -9 and restart: from its snapshot and log, auth still holds.
    cluster.members[other].kill9();
    cluster.members[other].restart();
    let mut anon = connect(&eps[other], None).await.unwrap();
    let e = anon
        .get("a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
    let mut alice = connect(&eps[other], Some(("alice", "apw"))).await.unwrap();
    alice.get("a", None).await.unwrap();
    assert_eq!(status_of(alice.user_list().await.unwrap_err()), denied());
}
