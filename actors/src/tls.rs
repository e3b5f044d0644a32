//! TLS for client listeners and for the peer transport, with rustls (ring
//! as its crypto provider).
//!
//! An `https://` listener hands every accepted connection to a handshake
//! with the current server configuration; a member dialing an `https://`
//! peer URL uses the current client configuration (its peer certificate as
//! the client certificate, as etcd does). Both are rebuilt when a
//! certificate, key, CA or CRL file changes (etcd reads them on every
//! handshake), so rotated certificates take effect for the next connection
//! without a restart; a rebuild that fails (a half-written file) is logged
//! and the previous configuration stays in use.
//!
//! ALPN offers `h2` and `http/1.1`: gRPC and the HTTP endpoints share the
//! port, as they do on a plain listener.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

/// A TLS protocol version as etcd's `--tls-min-version` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// etcd's names: TLS1.2, TLS1.3 (TLS 1.0 and 1.1 are not offered by
    /// rustls, so asking for them is a start-up error).
    pub fn parse(s: &str) -> Result<TlsVersion, String> {
        match s {
            "TLS1.2" => Ok(TlsVersion::Tls12),
            "TLS1.3" => Ok(TlsVersion::Tls13),
            "TLS1.0" | "TLS1.1" => Err(format!(
                "{s} is not supported (keel's TLS library offers TLS1.2 and TLS1.3)"
            )),
            _ => Err(format!("unexpected TLS version {s:?} (TLS1.2 or TLS1.3)")),
        }
    }

    fn protocol(self) -> &'static SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// What a TLS listener serves with: etcd's `--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth`, `--client-crl-file`,
/// `--cipher-suites`, `--tls-min-version` and `--tls-max-version`, or the
/// `--peer-*` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// How the flags are named: "" for clients, "peer-" for peers.
    pub flag_prefix: &'static str,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    /// IANA names of the TLS 1.2 suites allowed; empty: rustls's defaults.
    /// TLS 1.3 suites are not configurable, as in Go.
    pub cipher_suites: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Dialing: accept any server certificate (etcd's InsecureSkipVerify,
    /// which `--peer-auto-tls` sets: self-signed certificates have no CA).
    pub skip_server_verification: bool,
    /// With `client_cert_auth`: the common name a client certificate must
    /// carry (`--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    /// With `client_cert_auth`: the host name a client certificate must be
    /// valid for (`--client-cert-allowed-hostname`,
    /// `--peer-cert-allowed-hostname`).
    pub allowed_hostname: Option<String>,
}

impl TlsSettings {
    /// Checks what can be checked without reading files: versions and
    /// cipher suite names.
    pub fn check(&self) -> Result<(), String> {
        if self.min_version > self.max_version {
            return Err("--tls-min-version must not be above --tls-max-version".into());
        }
        if !self.cipher_suites.is_empty() && self.min_version == TlsVersion::Tls13 {
            return Err(
                "--cipher-suites cannot be used with --tls-min-version TLS1.3 (TLS 1.3 suites are not configurable)"
                    .into(),
            );
        }
        self.provider().map(|_| ())
    }

    fn files(&self) -> Vec<&Path> {
        let mut f = vec![self.cert_file.as_path(), self.key_file.as_path()];
        f.extend(self.trusted_ca_file.as_deref());
        f.extend(self.crl_file.as_deref());
        f
    }

    /// ring's provider with only the suites asked for.
    fn provider(&self) -> Result<CryptoProvider, String> {
        let mut p = rustls::crypto::ring::default_provider();
        if self.cipher_suites.is_empty() {
            return Ok(p);
        }
        let mut chosen = Vec::new();
        for name in &self.cipher_suites {
            let found = p
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()) == *name)
                .ok_or_else(|| format!("--cipher-suites: unexpected TLS cipher suite {name:?}"))?;
            if found.version() == &rustls::version::TLS13 {
                return Err(format!(
                    "--cipher-suites: {name} is a TLS 1.3 suite; those are not configurable"
                ));
            }
            chosen.push(*found);
        }
        chosen.extend(
            p.cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13),
        );
        p.cipher_suites = chosen;
        Ok(p)
    }

    fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        [TlsVersion::Tls12, TlsVersion::Tls13]
            .into_iter()
            .filter(|v| (self.min_version..=self.max_version).contains(v))
            .map(TlsVersion::protocol)
            .collect()
    }

    /// The CAs of `--trusted-ca-file`, which `needed_by` needs.
    fn roots(&self, needed_by: &str) -> Result<RootCertStore, String> {
        let p = self.flag_prefix;
        let ca = self.trusted_ca_file.as_deref().ok_or_else(|| {
            format!("{needed_by} needs --{p}trusted-ca-file (the CA that signs the certificates)")
        })?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        Ok(roots)
    }

    /// Reads the files and builds a server configuration.
    pub fn build(&self) -> Result<ServerConfig, String> {
        let provider = Arc::new(self.provider()?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions())
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = if self.client_cert_auth {
            let roots = self.roots(&format!("--{}client-cert-auth", self.flag_prefix))?;
            let crls = match &self.crl_file {
                Some(f) => read_crls(f)?,
                None => Vec::new(),
            };
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .build()
                .map_err(|e| format!("client certificate verifier: {e}"))?;
            if self.allowed_cn.is_none() && self.allowed_hostname.is_none() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(RestrictedClientCerts {
                    inner: verifier,
                    allowed_cn: self.allowed_cn.clone(),
                    allowed_hostname: self.allowed_hostname.clone(),
                }))
            }
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(read_certs(&self.cert_file)?, read_key(&self.key_file)?)
            .map_err(|e| {
                format!(
                    "{} and {}: {e}",
                    self.cert_file.display(),
                    self.key_file.display()
                )
            })?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Reads the files and builds the configuration a member dials its
    /// peers with: their certificates checked against the trusted CA (or
    /// not at all, with `skip_server_verification`), ours presented.
    pub fn build_client(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(self.provider()?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions())
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = if self.skip_server_verification {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        } else {
            builder.with_root_certificates(self.roots("dialing https:// peer URLs")?)
        };
        builder
            .with_client_auth_cert(read_certs(&self.cert_file)?, read_key(&self.key_file)?)
            .map_err(|e| {
                format!(
                    "{} and {}: {e}",
                    self.cert_file.display(),
                    self.key_file.display()
                )
            })
    }
}

/// A CA-checked client certificate that must also carry a given common
/// name or be valid for a given host name (etcd's `--peer-cert-allowed-cn`
/// and `--*-cert-allowed-hostname`); refused in the handshake otherwise.
#[derive(Debug)]
struct RestrictedClientCerts {
    inner: Arc<dyn ClientCertVerifier>,
    allowed_cn: Option<String>,
    allowed_hostname: Option<String>,
}

impl ClientCertVerifier for RestrictedClientCerts {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(cn) = &self.allowed_cn {
            if common_name(end_entity).as_deref() != Some(cn.as_str()) {
                return Err(rustls::Error::General(format!(
                    "the client certificate's CN is not the allowed {cn:?}"
                )));
            }
        }
        if let Some(host) = &self.allowed_hostname {
            let refused = || {
                rustls::Error::General(format!(
                    "the client certificate is not valid for the allowed host name {host:?}"
                ))
            };
            let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| refused())?;
            let name = ServerName::try_from(host.as_str()).map_err(|_| refused())?;
            cert.verify_is_valid_for_subject_name(&name)
                .map_err(|_| refused())?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element: (tag, contents, what follows it).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The first common name (OID 2.5.4.3) in a DER certificate's subject.
pub fn common_name(cert: &[u8]) -> Option<String> {
    const CN_OID: [u8; 3] = [0x55, 0x04, 0x03];
    let (_, certificate, _) = der_element(cert)?;
    let (_, mut tbs, _) = der_element(certificate)?;
    // version [0] (optional), serial, signature, issuer, validity, subject
    let mut fields = Vec::new();
    while fields.len() < 6 && !tbs.is_empty() {
        let (tag, contents, rest) = der_element(tbs)?;
        if !(fields.is_empty() && tag == 0xa0) {
            fields.push(contents);
        }
        tbs = rest;
    }
    let mut subject = *fields.get(4)?;
    while !subject.is_empty() {
        let (_, mut set, rest) = der_element(subject)?;
        subject = rest;
        while !set.is_empty() {
            let (_, attribute, rest) = der_element(set)?;
            set = rest;
            let (_, oid, value) = der_element(attribute)?;
            if oid == CN_OID {
                let (_, name, _) = der_element(value)?;
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

/// Accepts any server certificate; only for `--peer-auto-tls`, whose
/// self-signed certificates no CA vouches for (etcd does the same). The
/// handshake signatures are still checked, so the session is encrypted to
/// whoever holds the presented certificate's key.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key in it", path.display()))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = read_pem(path)?;
    let crls = rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if crls.is_empty() {
        // etcd accepts a DER file as well.
        return Ok(vec![CertificateRevocationListDer::from(pem)]);
    }
    Ok(crls)
}

/// What identifies a file's contents cheaply: its inode, size and mtime.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// A rustls configuration built from a [`TlsSettings`]' files and rebuilt
/// when they change. Shared by the cores; the lock is held for a few
/// `stat` calls per handshake.
pub struct Reloading<T> {
    settings: TlsSettings,
    build: fn(&TlsSettings) -> Result<T, String>,
    current: Mutex<(Vec<Stamp>, Arc<T>)>,
}

/// What an `https://` listener serves with.
pub type ServerTls = Reloading<ServerConfig>;
/// What a member dials `https://` peer URLs with.
pub type ClientTls = Reloading<ClientConfig>;

impl ServerTls {
    /// Builds the first configuration: a bad file is a start-up error.
    pub fn server(settings: TlsSettings) -> Result<ServerTls, String> {
        Reloading::new(settings, TlsSettings::build)
    }
}

impl ClientTls {
    pub fn client(settings: TlsSettings) -> Result<ClientTls, String> {
        Reloading::new(settings, TlsSettings::build_client)
    }
}

impl<T> Reloading<T> {
    fn new(
        settings: TlsSettings,
        build: fn(&TlsSettings) -> Result<T, String>,
    ) -> Result<Reloading<T>, String> {
        settings.check()?;
        let stamps = settings.files().into_iter().map(stamp).collect();
        let cfg = Arc::new(build(&settings)?);
        Ok(Reloading {
            settings,
            build,
            current: Mutex::new((stamps, cfg)),
        })
    }

    /// The configuration for the next handshake: rebuilt first if a file
    /// changed since the last build.
    pub fn config(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.settings.files().into_iter().map(stamp).collect();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != stamps {
            match (self.build)(&self.settings) {
                Ok(cfg) => {
                    tracing::info!(cert = %self.settings.cert_file.display(), "TLS files changed; reloaded");
                    *current = (stamps, Arc::new(cfg));
                }
                Err(e) => {
                    // Tried again at the next handshake; until the files
                    // make sense the old configuration serves.
                    tracing::warn!(
                        "TLS files changed but cannot be loaded, keeping the previous ones: {e}"
                    );
                }
            }
        }
        current.1.clone()
    }
}

/// etcd's `--auto-tls`: a self-signed certificate for `hosts`, written to
/// `dir/cert.pem` and `dir/key.pem` (mode 0600) and reused while it is
/// there, as etcd keeps it under `<data-dir>/fixtures/client`.
pub fn self_signed(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    keel_storage::create_dir_durably(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| format!("generating a self-signed certificate: {e}"))?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    write_private(&cert, generated.cert.pem().as_bytes())?;
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TlsSettings {
        TlsSettings {
            flag_prefix: "",
            cert_file: "c".into(),
            key_file: "k".into(),
            trusted_ca_file: None,
            client_cert_auth: false,
            crl_file: None,
            cipher_suites: Vec::new(),
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            skip_server_verification: false,
            allowed_cn: None,
            allowed_hostname: None,
        }
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let mut p = rcgen::CertificateParams::new(vec!["m1.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "keel");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "member-1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("member-1"));
        let none = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        // rcgen's default subject is "rcgen self signed cert".
        assert_ne!(common_name(none.der()).as_deref(), Some("member-1"));
        assert_eq!(common_name(b"\x30\x85garbage"), None);
        assert_eq!(common_name(&[]), None);
    }

    #[test]
    fn versions_and_suites_are_checked_before_any_file_is_read() {
        assert!(settings().check().is_ok());
        let mut s = settings();
        s.cipher_suites = vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()];
        assert!(s.check().is_ok());
        assert_eq!(
            s.provider()
                .unwrap()
                .cipher_suites
                .iter()
                .filter(|c| c.version() == &rustls::version::TLS12)
                .count(),
            1
        );
        s.cipher_suites = vec!["TLS_RSA_WITH_RC4_128_SHA".into()];
        assert!(s
            .check()
            .unwrap_err()
            .contains("unexpected TLS cipher suite"));
        s.cipher_suites = vec!["TLS13_AES_128_GCM_SHA256".into()];
        assert!(s.check().unwrap_err().contains("TLS 1.3"));
        let mut s = settings();
        s.min_version = TlsVersion::Tls13;
        s.max_version = TlsVersion::Tls12;
        assert!(s.check().is_err());
        assert!(TlsVersion::parse("TLS1.1")
            .unwrap_err()
            .contains("not supported"));
        assert_eq!(TlsVersion::parse("TLS1.3"), Ok(TlsVersion::Tls13));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = settings().build().unwrap_err();
        assert!(e.starts_with("c: "), "{e}");
    }

    #[test]
    fn a_self_signed_certificate_loads_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = dir.path().join("fixtures/client");
        let (cert, key) = self_signed(&fixtures, &["127.0.0.1".into()]).unwrap();
        let first = std::fs::read(&cert).unwrap();
        let mut s = settings();
        (s.cert_file, s.key_file) = (cert.clone(), key);
        let tls = ServerTls::server(s.clone()).unwrap();
        assert_eq!(tls.config().alpn_protocols[0], b"h2");
        self_signed(&fixtures, &["127.0.0.1".into()]).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        // A dialing member needs a CA to check its peers against, unless
        // it skips the check (`--peer-auto-tls`).
        s.flag_prefix = "peer-";
        let e = ClientTls::client(s.clone()).err().unwrap();
        assert!(e.contains("--peer-trusted-ca-file"), "{e}");
        s.skip_server_verification = true;
        assert!(ClientTls::client(s).is_ok());
    }
}
