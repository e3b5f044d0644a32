//! Client TLS: https listen URLs beside http ones, mutual TLS with a CA
//! and a revocation list, certificates rotated without a restart,
//! `--auto-tls`, and etcd's start-up errors. Certificates are made per test
//! (rcgen) in the test's own directory.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, Server};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};

/// A certificate authority that signs test certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for 127.0.0.1 and localhost, good for a server and a
    /// client, with common name `cn` and serial number `serial`.
    fn leaf(&self, cn: &str, serial: u64) -> Leaf {
        self.leaf_for(cn, serial, &["127.0.0.1", "localhost"])
    }

    /// As `leaf`, valid for the names `sans`.
    fn leaf_for(&self, cn: &str, serial: u64, sans: &[&str]) -> Leaf {
        self.leaf_with(cn, serial, sans, |_| {})
    }

    /// As `leaf`, valid only in 2000 (expired).
    fn expired_leaf(&self, cn: &str, serial: u64) -> Leaf {
        self.leaf_with(cn, serial, &["127.0.0.1", "localhost"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2000, 12, 31);
        })
    }

    fn leaf_with(
        &self,
        cn: &str,
        serial: u64,
        sans: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).unwrap();
        adjust(&mut p);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A revocation list naming `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&s| RevokedCertParams {
                    serial_number: SerialNumber::from(s),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Writes the server's certificate and key into `dir` (rotation replaces
/// them by rename, as cert-manager and kubeadm do).
fn install_server_cert(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    for (path, pem) in [(&key, &leaf.key), (&cert, &leaf.cert)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    (cert, key)
}

/// A member listening on http (`server.port`, for the harness) and on
/// https at the returned port, with `extra` flags.
fn start_tls_server(certs: &Path, extra: &[String]) -> (Server, u16) {
    let tls_port = free_port();
    let mut args = vec![
        "--listen-client-urls".to_string(),
        String::new(),
        "--cert-file".into(),
        certs.join("server.crt").display().to_string(),
        "--key-file".into(),
        certs.join("server.key").display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let mut server = Server::new(args);
    server.args[1] = format!(
        "http://127.0.0.1:{},https://127.0.0.1:{tls_port}",
        server.port
    );
    server.spawn();
    server.wait_healthy();
    (server, tls_port)
}

/// An etcd-client over TLS trusting `ca`, with a client certificate if given.
async fn tls_client(
    port: u16,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<Client, etcd_client::Error> {
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    let mut c = Client::connect([format!("https://127.0.0.1:{port}")], Some(opts)).await?;
    // tonic connects lazily: a refused handshake shows on the first call.
    c.status().await?;
    Ok(c)
}

/// HTTP/1.1 GET over TLS (rustls, trusting `ca_pem`); returns the response.
fn https_get(port: u16, ca_pem: &str, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    // A peer that closes without close_notify ends the read with an error
    // after the body; what arrived is what counts.
    let _ = tls.read_to_string(&mut out);
    out
}

#[tokio::test]
async fn clients_reach_one_member_over_https_and_http_alike() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel test CA");
    install_server_cert(dir.path(), &ca.leaf("server", 1));
    let metrics_port = free_port();
    let (server, tls_port) = start_tls_server(
        dir.path(),
        &[
            "--listen-metrics-urls".into(),
            format!("https://127.0.0.1:{metrics_port}"),
        ],
    );

    let mut secure = tls_client(tls_port, &ca.pem(), None).await.unwrap();
    secure.put("tls/k", "over tls", None).await.unwrap();
    let mut plain = server.client().await;
    let got = plain.get("tls/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"over tls");
    // HTTP/1.1 on the same TLS port, as etcd serves /health there.
    let health = https_get(tls_port, &ca.pem(), "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"health\":\"true\""), "{health}");
    // An https metrics URL uses the client certificate, as etcd.
    let scraped = https_get(metrics_port, &ca.pem(), "/metrics");
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(scraped.contains("etcd_server_has_leader"), "{scraped}");
    // A client that does not trust the server's CA is refused.
    let stranger = Ca::new("another CA");
    assert!(tls_client(tls_port, &stranger.pem(), None).await.is_err());
    // Plain HTTP/2 on the TLS port gets no answer.
    assert!(Client::connect(
        [format!("http://127.0.0.1:{tls_port}")],
        Some(ConnectOptions::new().with_timeout(Duration::from_secs(3)))
    )
    .await
    .unwrap()
    .status()
    .await
    .is_err());
}

#[tokio::test]
async fn client_cert_auth_admits_only_certificates_of_the_trusted_ca_not_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel test CA");
    install_server_cert(dir.path(), &ca.leaf("server", 1));
    let ca_file = write(dir.path(), "ca.crt", &ca.pem());
    let crl_file = write(dir.path(), "ca.crl", &ca.crl(&[66]));
    let (_server, tls_port) = start_tls_server(
        dir.path(),
        &[
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca_file.display().to_string(),
            "--client-crl-file".into(),
            crl_file.display().to_string(),
        ],
    );

    let good = ca.leaf("alice", 65);
    let mut c = tls_client(tls_port, &ca.pem(), Some(&good)).await.unwrap();
    c.put("mtls/k", "v", None).await.unwrap();

    assert!(
        tls_client(tls_port, &ca.pem(), None).await.is_err(),
        "a client without a certificate was admitted"
    );
    let stranger = Ca::new("another CA").leaf("mallory", 65);
    assert!(
        tls_client(tls_port, &ca.pem(), Some(&stranger))
            .await
            .is_err(),
        "a certificate of another CA was admitted"
    );
    let revoked = ca.leaf("eve", 66);
    assert!(
        tls_client(tls_port, &ca.pem(), Some(&revoked))
            .await
            .is_err(),
        "a revoked certificate was admitted"
    );
    let expired = ca.expired_leaf("old", 67);
    assert!(
        tls_client(tls_port, &ca.pem(), Some(&expired))
            .await
            .is_err(),
        "an expired certificate was admitted"
    );
    // The good one still is.
    assert!(tls_client(tls_port, &ca.pem(), Some(&good)).await.is_ok());
}

/// etcd's CN auth: with `--client-cert-auth` and auth on, a request without
/// a token runs as the user its certificate's common name names; a token
/// wins over the certificate.
#[tokio::test]
async fn a_client_certificates_common_name_is_the_user_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel test CA");
    install_server_cert(dir.path(), &ca.leaf("server", 1));
    let ca_file = write(dir.path(), "ca.crt", &ca.pem());
    let (server, tls_port) = start_tls_server(
        dir.path(),
        &[
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca_file.display().to_string(),
        ],
    );
    // etcd's warnings for the plain listener beside TLS settings.
    let logs = server.logs();
    for warning in [
        "scheme is HTTP while key and cert files are present; ignoring key and cert files",
        "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for this URL",
        "serving client traffic insecurely; this is strongly discouraged!",
    ] {
        assert!(logs.contains(warning), "{warning}:\n{logs}");
    }
    // Set up through the plain listener, before auth is on.
    let mut setup = server.client().await;
    let no_pwd = Some(etcd_client::UserAddOptions::new().with_no_pwd());
    setup.user_add("root", "rootpw", None).await.unwrap();
    setup.user_grant_role("root", "root").await.unwrap();
    setup.user_add("alice", "", no_pwd).await.unwrap();
    setup.role_add("app").await.unwrap();
    let perm = etcd_client::Permission::read_write("app/").with_prefix();
    setup.role_grant_permission("app", perm).await.unwrap();
    setup.user_grant_role("alice", "app").await.unwrap();
    setup.auth_enable().await.unwrap();

    let mut alice = tls_client(tls_port, &ca.pem(), Some(&ca.leaf("alice", 2)))
        .await
        .unwrap();
    alice.put("app/1", "v", None).await.unwrap();
    assert_eq!(alice.get("app/1", None).await.unwrap().count(), 1);
    let e = alice.put("other", "v", None).await.unwrap_err();
    assert_eq!(
        common::status_of(e),
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    assert!(alice.user_list().await.is_err());
    // A certificate naming no user: refused like an unknown user.
    let mut nobody = tls_client(tls_port, &ca.pem(), Some(&ca.leaf("nobody", 3)))
        .await
        .unwrap();
    let e = nobody.get("app/1", None).await.unwrap_err();
    assert_eq!(common::status_of(e).0, tonic::Code::PermissionDenied);
    let mut root = tls_client(tls_port, &ca.pem(), Some(&ca.leaf("root", 4)))
        .await
        .unwrap();
    assert_eq!(root.user_list().await.unwrap().users(), ["alice", "root"]);
    // The plain listener has no certificate: no user.
    let e = setup.get("app/1", None).await.unwrap_err();
    assert_eq!(
        common::status_of(e),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
}

/// Story: with only https client URLs and two cores, the raft core has no
/// client listener (handshakes stay off it); its executor ended right
/// after start-up, taking raft and the peer server with it, and the member
/// never answered a write.
#[tokio::test]
async fn a_member_with_only_https_client_urls_serves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel test CA");
    install_server_cert(dir.path(), &ca.leaf("server", 1));
    let tls_port = free_port();
    let mut server = Server::new(vec![
        "--cores".into(),
        "2".into(),
        "--listen-client-urls".into(),
        format!("https://127.0.0.1:{tls_port}"),
        "--cert-file".into(),
        dir.path().join("server.crt").display().to_string(),
        "--key-file".into(),
        dir.path().join("server.key").display().to_string(),
    ]);
    server.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        match tls_client(tls_port, &ca.pem(), None).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(server.is_running(), "{}", server.logs());
                assert!(
                    std::time::Instant::now() < deadline,
                    "{e}: {}",
                    server.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for i in 0..3 {
        c.put("only-https", i.to_string(), None).await.unwrap();
        let r = c.get("only-https", None).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), i.to_string());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn rotated_certificates_serve_the_next_connection_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    install_server_cert(dir.path(), &old_ca.leaf("server", 1));
    let (mut server, tls_port) = start_tls_server(dir.path(), &[]);
    let mut old = tls_client(tls_port, &old_ca.pem(), None).await.unwrap();
    old.put("rot/k", "1", None).await.unwrap();
    assert!(tls_client(tls_port, &new_ca.pem(), None).await.is_err());

    install_server_cert(dir.path(), &new_ca.leaf("server", 2));
    let mut new = tls_client(tls_port, &new_ca.pem(), None)
        .await
        .unwrap_or_else(|e| panic!("the new certificate is not served: {e}\n{}", server.logs()));
    assert_eq!(new.get("rot/k", None).await.unwrap().kvs()[0].value(), b"1");
    // The connection made before the rotation still works.
    old.put("rot/k", "2", None).await.unwrap();

    // A key that does not match the certificate is not taken: the
    // certificate in use stays.
    let other = new_ca.leaf("server", 3);
    std::fs::write(dir.path().join("server.key"), &other.key).unwrap();
    let mut still = tls_client(tls_port, &new_ca.pem(), None).await.unwrap();
    assert_eq!(
        still.get("rot/k", None).await.unwrap().kvs()[0].value(),
        b"2"
    );
    assert!(server.is_running());
    assert!(
        server.logs().contains("cannot be loaded"),
        "{}",
        server.logs()
    );
}

#[tokio::test]
async fn auto_tls_serves_a_self_signed_certificate_kept_in_the_data_dir() {
    let tls_port = free_port();
    let mut server = Server::new(vec![
        "--listen-client-urls".into(),
        String::new(),
        "--auto-tls".into(),
    ]);
    server.args[1] = format!(
        "http://127.0.0.1:{},https://127.0.0.1:{tls_port}",
        server.port
    );
    server.spawn();
    server.wait_healthy();
    let cert = server.dir.join("fixtures/client/cert.pem");
    let pem = std::fs::read_to_string(&cert).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let key = server.dir.join("fixtures/client/key.pem");
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let mut c = tls_client(tls_port, &pem, None).await.unwrap();
    c.put("auto/k", "v", None).await.unwrap();
    // The same certificate after a restart.
    server.restart();
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
    let mut c = tls_client(tls_port, &pem, None).await.unwrap();
    assert_eq!(c.get("auto/k", None).await.unwrap().kvs()[0].value(), b"v");
}

#[test]
fn tls_misconfiguration_is_a_start_up_error_with_etcds_message() {
    let https = format!("https://127.0.0.1:{}", free_port());
    let cases: [(Vec<String>, &str); 4] = [
        (
            vec!["--listen-client-urls".into(), https.clone()],
            "TLS key/cert (--cert-file, --key-file) must be provided for client url",
        ),
        (
            vec![
                "--listen-client-urls".into(),
                https.clone(),
                "--cert-file".into(),
                "/nonexistent/server.crt".into(),
                "--key-file".into(),
                "/nonexistent/server.key".into(),
            ],
            "/nonexistent/server.crt",
        ),
        (
            vec![
                "--listen-client-urls".into(),
                https.clone(),
                "--auto-tls".into(),
                "--cipher-suites".into(),
                "TLS_RSA_WITH_RC4_128_SHA".into(),
            ],
            "unexpected TLS cipher suite",
        ),
        (
            vec![
                "--listen-client-urls".into(),
                https.clone(),
                "--auto-tls".into(),
                "--client-cert-auth".into(),
            ],
            "--client-cert-auth needs --trusted-ca-file",
        ),
    ];
    for (args, want) in cases {
        let mut server = Server::new(args.clone());
        let (code, out) = server.start_expect_exit();
        assert_ne!(code, Some(0), "{args:?}");
        assert!(code.is_some(), "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: expected {want:?} in\n{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

/// Three members on `https://` peer URLs with `extra` flags each (given
/// the member's index); waits until all serve.
fn start_tls_cluster(extra: impl Fn(usize) -> Vec<String>) -> Vec<Server> {
    let mut members: Vec<Server> = (0..3).map(|_| Server::new(Vec::new())).collect();
    let initial: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| format!("m{i}=https://127.0.0.1:{}", m.peer_port))
        .collect();
    for (i, m) in members.iter_mut().enumerate() {
        let url = format!("https://127.0.0.1:{}", m.peer_port);
        let mut args: Vec<String> = vec![
            "--name".into(),
            format!("m{i}"),
            "--initial-cluster".into(),
            initial.join(","),
            "--initial-cluster-token".into(),
            "keel-tls".into(),
            "--listen-peer-urls".into(),
            url.clone(),
            "--initial-advertise-peer-urls".into(),
            url,
        ];
        args.extend(extra(i));
        m.args = args;
        m.spawn();
    }
    for m in &mut members {
        m.wait_healthy();
    }
    members
}

/// A put through the first member is read, serializably, from the others.
async fn replicated(members: &[Server]) {
    let mut c0 = members[0].client().await;
    c0.put("peer/k", "over tls", None).await.unwrap();
    for m in &members[1..] {
        let mut c = m.client().await;
        let opts = || Some(etcd_client::GetOptions::new().with_serializable());
        let mut seen = false;
        for _ in 0..100 {
            let got = c.get("peer/k", opts()).await.unwrap();
            if got
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == b"over tls")
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen, "not replicated to {}:\n{}", m.endpoint(), m.logs());
    }
}

/// Opens TLS to a peer port with `identity` (trusting `ca`), writes a
/// byte and waits 2 s for an answer: Ok(()) if the server kept quiet
/// (it waits for a greeting: it took the certificate), Err if it ended
/// the session.
fn peer_session(port: u16, ca: &Ca, identity: &Leaf) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut identity.cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut identity.key.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&[0]).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        Ok(0) => Err("closed".into()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn members_replicate_over_mutual_tls_and_refuse_peers_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel peer CA");
    let ca_file = write(dir.path(), "ca.crt", &ca.pem());
    let d = dir.path().to_path_buf();
    let leaves: Vec<Leaf> = (0..3).map(|i| ca.leaf(&format!("m{i}"), 10 + i)).collect();
    for (i, leaf) in leaves.iter().enumerate() {
        write(&d, &format!("m{i}.crt"), &leaf.cert);
        write(&d, &format!("m{i}.key"), &leaf.key);
    }
    let members = start_tls_cluster(|i| {
        vec![
            "--peer-cert-file".into(),
            d.join(format!("m{i}.crt")).display().to_string(),
            "--peer-key-file".into(),
            d.join(format!("m{i}.key")).display().to_string(),
            "--peer-trusted-ca-file".into(),
            ca_file.display().to_string(),
            "--peer-client-cert-auth".into(),
        ]
    });
    replicated(&members).await;

    let port = members[0].peer_port;
    peer_session(port, &ca, &ca.leaf("another member", 20))
        .unwrap_or_else(|e| panic!("a certificate of the peers' CA was refused: {e}"));
    assert!(
        peer_session(port, &ca, &Ca::new("rogue CA").leaf("rogue", 21)).is_err(),
        "a peer certificate of another CA was taken"
    );
    // A plain (non-TLS) peer greeting gets no peer frame back.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    plain.write_all(&[0u8; 64]).unwrap();
    let mut buf = [0u8; 16];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "a plain greeting got {:?}",
        &buf[..n]
    );
}

#[tokio::test]
async fn members_replicate_over_peer_auto_tls() {
    let members = start_tls_cluster(|_| vec!["--peer-auto-tls".into()]);
    replicated(&members).await;
    assert!(members[0].dir.join("fixtures/peer/cert.pem").exists());
}

#[tokio::test]
async fn allowed_cn_and_hostname_narrow_the_certificates_taken() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keel test CA");
    install_server_cert(dir.path(), &ca.leaf("server", 1));
    let ca_file = write(dir.path(), "ca.crt", &ca.pem()).display().to_string();
    let (cert, key) = (
        dir.path().join("server.crt").display().to_string(),
        dir.path().join("server.key").display().to_string(),
    );
    let peer_port = free_port();
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let (server, tls_port) = start_tls_server(
        dir.path(),
        &[
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca_file.clone(),
            "--client-cert-allowed-hostname".into(),
            "localhost".into(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url,
            "--peer-cert-file".into(),
            cert,
            "--peer-key-file".into(),
            key,
            "--peer-trusted-ca-file".into(),
            ca_file,
            "--peer-client-cert-auth".into(),
            "--peer-cert-allowed-cn".into(),
            "member".into(),
        ],
    );
    let for_localhost = ca.leaf_for("anyone", 30, &["localhost"]);
    let mut c = tls_client(tls_port, &ca.pem(), Some(&for_localhost))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    c.put("allowed/k", "v", None).await.unwrap();
    let elsewhere = ca.leaf_for("anyone", 31, &["other.example"]);
    assert!(
        tls_client(tls_port, &ca.pem(), Some(&elsewhere))
            .await
            .is_err(),
        "a client certificate for another host name was taken"
    );
    peer_session(peer_port, &ca, &ca.leaf("member", 32))
        .unwrap_or_else(|e| panic!("the allowed CN was refused: {e}"));
    assert!(
        peer_session(peer_port, &ca, &ca.leaf("intruder", 33)).is_err(),
        "a peer certificate with another CN was taken"
    );
}
