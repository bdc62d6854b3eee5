//! Shared support for the integration tests: a test PKI (root → intermediate → leaves), an
//! in-process server in a temporary directory, TLS/HTTP clients that report what was
//! negotiated, raw HTTP/1.1 over TLS or TCP, and helpers for the external tools and the binary.
//!
//! Every network wait is bounded by a timeout so that a hang fails the test instead of
//! blocking the suite.

#![allow(dead_code)]

pub mod acme_proxy;
pub mod backends;
pub mod browser;
pub mod cluster;
pub mod h3client;
pub mod ocsp;
pub mod pebble;
pub mod probe;
pub mod redis_server;
pub mod scrape;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, HandshakeKind, NamedGroup,
    ProtocolVersion, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Upper bound for any single network exchange in a test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// =============================================================================================
// Test PKI
// =============================================================================================

/// Root CA (ECDSA P-256) → intermediate (ECDSA P-256) → leaves, made fresh per test process.
pub struct Pki {
    pub root_pem: String,
    pub root_der: CertificateDer<'static>,
    pub inter_pem: String,
    inter_params: CertificateParams,
    inter_key: KeyPair,
    rsa_key_der: OnceLock<Vec<u8>>,
}

/// Key type of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ecdsa,
    Rsa,
}

/// A leaf certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub const ROOT_CN: &str = "Portcullis Test Root";
pub const INTER_CN: &str = "Portcullis Test Intermediate";

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis tests");
    dn.push(DnType::CommonName, cn);
    dn
}

/// The PKI of this test process (created on first use).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::new)
}

impl Pki {
    fn new() -> Pki {
        let now = time::OffsetDateTime::now_utc();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root_params = CertificateParams::default();
        root_params.distinguished_name = dn(ROOT_CN);
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        root_params.not_before = now - time::Duration::days(1);
        root_params.not_after = now + time::Duration::days(3650);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);

        let inter_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut inter_params = CertificateParams::default();
        inter_params.distinguished_name = dn(INTER_CN);
        inter_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        inter_params.use_authority_key_identifier_extension = true;
        inter_params.not_before = now - time::Duration::days(1);
        inter_params.not_after = now + time::Duration::days(1825);
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();

        Pki {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            inter_pem: inter.pem(),
            inter_params,
            inter_key,
            rsa_key_der: OnceLock::new(),
        }
    }

    /// One RSA-2048 key per process (generation is slow), PKCS#8 DER.
    fn rsa_key(&self) -> KeyPair {
        let der = self.rsa_key_der.get_or_init(|| {
            let k = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA-2048 key generation");
            k.serialize_der()
        });
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.clone());
        KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap()
    }

    fn issue(
        &self,
        names: &[&str],
        alg: Alg,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Leaf {
        self.issue_with(names, alg, not_before, not_after, Vec::new())
    }

    fn issue_with(
        &self,
        names: &[&str],
        alg: Alg,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
        extensions: Vec<rcgen::CustomExtension>,
    ) -> Leaf {
        let key = match alg {
            Alg::Ecdsa => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            Alg::Rsa => self.rsa_key(),
        };
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cn = match alg {
            Alg::Ecdsa => format!("{} (ECDSA)", names[0]),
            Alg::Rsa => format!("{} (RSA)", names[0]),
        };
        params.distinguished_name = dn(&cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.custom_extensions = extensions;
        let issuer = Issuer::from_params(&self.inter_params, &self.inter_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A currently valid leaf (90 days) for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str], alg: Alg) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            names,
            alg,
            now - time::Duration::days(1),
            now + time::Duration::days(90),
        )
    }

    /// A leaf that expired ten days ago.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            names,
            Alg::Ecdsa,
            now - time::Duration::days(100),
            now - time::Duration::days(10),
        )
    }

    /// A leaf valid for `days` more days (e.g. 10: inside the 30-day warning window).
    pub fn leaf_expiring_in(&self, names: &[&str], days: i64) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            names,
            Alg::Ecdsa,
            now - time::Duration::days(80),
            now + time::Duration::days(days),
        )
    }

    /// A leaf that becomes valid only in `days` days.
    pub fn leaf_not_yet_valid(&self, names: &[&str], days: i64) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            names,
            Alg::Ecdsa,
            now + time::Duration::days(days),
            now + time::Duration::days(days + 90),
        )
    }

    /// A 90-day ECDSA leaf whose Authority Information Access names the OCSP responder `url`;
    /// with `must_staple`, also the TLS Feature extension asking for a staple (RFC 7633).
    pub fn leaf_with_ocsp(&self, names: &[&str], url: &str, must_staple: bool) -> Leaf {
        self.leaf_with_ocsp_of(Alg::Ecdsa, names, url, must_staple)
    }

    /// [`Pki::leaf_with_ocsp`] with an `alg` key.
    pub fn leaf_with_ocsp_of(
        &self,
        alg: Alg,
        names: &[&str],
        url: &str,
        must_staple: bool,
    ) -> Leaf {
        // AuthorityInfoAccessSyntax ::= SEQUENCE OF SEQUENCE { id-ad-ocsp, [6] IA5String }.
        // Hand-encoded because rcgen has no AIA support; every length here is < 128.
        let mut desc = vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
        desc.push(0x86);
        desc.push(url.len() as u8);
        desc.extend_from_slice(url.as_bytes());
        let mut access = vec![0x30, desc.len() as u8];
        access.extend(desc);
        let mut aia = vec![0x30, access.len() as u8];
        aia.extend(access);
        let mut exts = vec![rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            aia,
        )];
        if must_staple {
            exts.push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 24],
                vec![0x30, 0x03, 0x02, 0x01, 0x05],
            ));
        }
        let now = time::OffsetDateTime::now_utc();
        self.issue_with(
            names,
            alg,
            now - time::Duration::days(1),
            now + time::Duration::days(90),
            exts,
        )
    }

    /// A 90-day ECDSA leaf for `names` with extra extensions (e.g. an SCT list).
    pub fn leaf_with_extensions(&self, names: &[&str], exts: Vec<rcgen::CustomExtension>) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.issue_with(
            names,
            Alg::Ecdsa,
            now - time::Duration::days(1),
            now + time::Duration::days(90),
            exts,
        )
    }

    /// The intermediate's key, PEM (to sign OCSP responses as the issuer).
    pub fn inter_key_pem(&self) -> String {
        self.inter_key.serialize_pem()
    }

    /// A delegated OCSP responder certificate (id-kp-OCSPSigning) issued by the intermediate.
    pub fn ocsp_responder(&self) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("Portcullis Test OCSP Responder");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let issuer = Issuer::from_params(&self.inter_params, &self.inter_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Leaf then intermediate: what a "fullchain.pem" holds.
    pub fn chain_pem(&self, leaf: &Leaf) -> String {
        format!("{}{}", leaf.cert_pem, self.inter_pem)
    }
}

// =============================================================================================
// Test environment and in-process server
// =============================================================================================

/// Site names the standard certificates cover.
pub const ALPHA: &str = "alpha.test";
pub const ALPHA_WWW: &str = "www.alpha.test";
pub const BETA: &str = "beta.test";
pub const WILD: &str = "*.example.test";

/// A temporary directory with the standard certificates (`certs/*.pem`, `certs/*.key`) and
/// the CA root (`certs/root.pem`). Config files written here resolve relative paths against it.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// Writes `certs/alpha.{pem,key}` (alpha.test, www.alpha.test), `certs/beta.*` (beta.test),
    /// `certs/wild.*` (*.example.test) — ECDSA chains (leaf + intermediate) — and
    /// `certs/root.pem`.
    pub fn new() -> TestEnv {
        let env = TestEnv {
            dir: tempfile::tempdir().unwrap(),
        };
        let p = pki();
        env.write_chain("alpha", &p.leaf(&[ALPHA, ALPHA_WWW], Alg::Ecdsa));
        env.write_chain("beta", &p.leaf(&[BETA], Alg::Ecdsa));
        env.write_chain("wild", &p.leaf(&[WILD], Alg::Ecdsa));
        env.write("certs/root.pem", &p.root_pem);
        env
    }

    /// `certs/<name>.pem` (leaf + intermediate) and `certs/<name>.key`.
    pub fn write_chain(&self, name: &str, leaf: &Leaf) {
        use std::os::unix::fs::PermissionsExt;
        self.write(&format!("certs/{name}.pem"), pki().chain_pem(leaf));
        let key = self.write(&format!("certs/{name}.key"), &leaf.key_pem);
        // Readable by its owner only, as `check` wants private keys.
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating parent directories).
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Writes `portcullis.toml` with exactly `text` and returns its path.
    pub fn write_config_raw(&self, text: &str) -> PathBuf {
        self.write("portcullis.toml", text)
    }

    /// Writes `portcullis.toml`: the test prelude (2 workers, data dir in the tempdir,
    /// ephemeral HTTPS and HTTP listeners on 127.0.0.1) followed by `body`.
    pub fn write_config(&self, body: &str) -> PathBuf {
        self.write_config_raw(&format!("{}{body}", Self::prelude()))
    }

    pub fn prelude() -> &'static str {
        "workers = 2\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\"]\n\n"
    }

    /// Loads the config file (serve mode) the way `portcullis serve --config` does.
    pub fn load(&self, path: &Path) -> portcullis::config::validate::Validated {
        portcullis::config::load(
            path,
            &portcullis::config::validate::Overrides::default(),
            portcullis::config::validate::Mode::Serve,
        )
    }

    /// Writes the config (prelude + `body`) and starts the server in-process.
    pub fn start(self, body: &str) -> TestServer {
        self.start_with_workers(2, body)
    }

    /// [`TestEnv::start`] with `workers` worker threads.
    pub fn start_with_workers(self, workers: usize, body: &str) -> TestServer {
        let text = Self::prelude().replace("workers = 2", &format!("workers = {workers}"));
        let path = self.write_config_raw(&format!("{text}{body}"));
        let (config, _warnings) = match self.load(&path) {
            Ok(x) => x,
            Err(problems) => panic!(
                "test config does not load:\n{}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        let server =
            portcullis::server::Server::start(config).expect("Server::start on test config");
        let https = server.https_addrs()[0];
        let http = server.http_addrs().first().copied();
        TestServer {
            server: Some(server),
            https,
            http,
            env: self,
        }
    }
}

/// A running in-process server. Dropping it starts its shutdown (without waiting).
pub struct TestServer {
    pub server: Option<portcullis::server::Server>,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub env: TestEnv,
}

impl TestServer {
    pub fn http(&self) -> SocketAddr {
        self.http.expect("server has an HTTP listener")
    }

    /// Takes the server out (for explicit shutdown).
    pub fn take(&mut self) -> portcullis::server::Server {
        self.server.take().expect("server still running")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Shut down in the background: blocking here would stall a current-thread test
        // runtime whose tasks (e.g. hyper's h2 connection task) are what closes the last
        // client connections the server is draining.
        if let Some(server) = self.server.take() {
            std::thread::spawn(move || server.shutdown());
        }
    }
}

/// Starts a server with the standard environment.
pub fn start(body: &str) -> TestServer {
    TestEnv::new().start(body)
}

/// A config body with one respond-route site per standard certificate:
/// `alpha` (alpha.test, www.alpha.test; body "alpha"), `beta` (beta.test; body "beta").
pub const TWO_SITES: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
respond = { status = 200, body = "alpha" }

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = { status = 200, body = "beta" }
"#;

/// One site `alpha` answering "hello from alpha" at every path.
pub const ONE_SITE: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
respond = { status = 200, body = "hello from alpha", content_type = "text/plain; charset=utf-8" }
"#;

// =============================================================================================
// TLS client
// =============================================================================================

/// How the test client is configured.
#[derive(Clone)]
pub struct ClientOpts {
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// `None`: the provider's default groups (X25519MLKEM768 first).
    pub kx: Option<Vec<&'static dyn SupportedKxGroup>>,
    pub alpn: Vec<&'static str>,
    /// Offer only RSA signature schemes (a client that cannot verify ECDSA).
    pub rsa_only: bool,
    /// Check that the certificate covers the server name (off: only the chain is verified,
    /// e.g. when connecting by IP without SNI).
    pub check_name: bool,
    /// Trust anchor (default: the test PKI's root).
    pub root: Option<CertificateDer<'static>>,
    /// Where the stapled OCSP response of the last handshake is put (empty: none stapled).
    pub staple: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
}

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            kx: None,
            alpn: vec!["http/1.1"],
            rsa_only: false,
            check_name: true,
            root: None,
            staple: None,
        }
    }
}

impl ClientOpts {
    pub fn alpn(mut self, alpn: &[&'static str]) -> Self {
        self.alpn = alpn.to_vec();
        self
    }
    pub fn tls12(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }
    pub fn tls13(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }
    pub fn no_name_check(mut self) -> Self {
        self.check_name = false;
        self
    }
    pub fn build(&self) -> Arc<ClientConfig> {
        client_config(self)
    }
}

/// Verifies the chain against the test root with webpki; optionally ignores the name check
/// and optionally advertises RSA signature schemes only.
#[derive(Debug)]
struct TestVerifier {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
    rsa_only: bool,
    staple: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
}

impl ServerCertVerifier for TestVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(s) = &self.staple {
            *s.lock().unwrap() = ocsp_response.to_vec();
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
        let all = self.inner.supported_verify_schemes();
        if self.rsa_only {
            all.into_iter()
                .filter(|s| format!("{s:?}").starts_with("RSA_"))
                .collect()
        } else {
            all
        }
    }
}

/// A rustls client config (aws-lc-rs) trusting the test root (or `opts.root`).
pub fn client_config(opts: &ClientOpts) -> Arc<ClientConfig> {
    let mut provider = aws_lc_rs::default_provider();
    if let Some(kx) = &opts.kx {
        provider.kx_groups = kx.clone();
    }
    let provider = Arc::new(provider);
    let mut roots = RootCertStore::empty();
    roots
        .add(opts.root.clone().unwrap_or_else(|| pki().root_der.clone()))
        .unwrap();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let verifier = Arc::new(TestVerifier {
        inner,
        check_name: opts.check_name,
        rsa_only: opts.rsa_only,
        staple: opts.staple.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&opts.versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = opts.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// The provider's X25519MLKEM768 and X25519 groups.
pub fn kx_pq() -> &'static dyn SupportedKxGroup {
    aws_lc_rs::kx_group::X25519MLKEM768
}
pub fn kx_x25519() -> &'static dyn SupportedKxGroup {
    aws_lc_rs::kx_group::X25519
}

/// A provider handle, for tests that want to inspect the defaults.
pub fn default_provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

/// TCP connect + TLS handshake. `sni = None` connects by IP address (rustls then sends no SNI).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    cfg: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let name: ServerName<'static> = match sni {
            Some(n) => ServerName::try_from(n.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        TlsConnector::from(cfg).connect(name, tcp).await
    };
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS connect timed out",
        )),
    }
}

/// The rustls error behind a failed handshake, if any.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// What was negotiated on a TLS connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: Option<ProtocolVersion>,
    pub cipher: Option<rustls::CipherSuite>,
    pub kx: Option<NamedGroup>,
    pub alpn: Option<String>,
    pub kind: Option<HandshakeKind>,
    pub chain: Vec<CertificateDer<'static>>,
}

impl TlsInfo {
    /// Subject of the presented leaf, e.g. "O=portcullis tests, CN=alpha.test (ECDSA)".
    pub fn leaf_subject(&self) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.chain[0]).unwrap();
        cert.subject().to_string()
    }
    /// DNS and IP SANs of the presented leaf, as strings.
    pub fn leaf_sans(&self) -> Vec<String> {
        leaf_sans(&self.chain[0])
    }
    /// Public key algorithm of the leaf: "EC" or "RSA".
    pub fn leaf_key_kind(&self) -> &'static str {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.chain[0]).unwrap();
        match cert.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::EC(_)) => "EC",
            Ok(x509_parser::public_key::PublicKey::RSA(_)) => "RSA",
            _ => "other",
        }
    }
}

/// DNS and IP SANs of a certificate, as strings.
pub fn leaf_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip: Option<IpAddr> = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

pub fn tls_info(s: &TlsStream<TcpStream>) -> TlsInfo {
    let c = s.get_ref().1;
    TlsInfo {
        version: c.protocol_version(),
        cipher: c.negotiated_cipher_suite().map(|cs| cs.suite()),
        kx: c.negotiated_key_exchange_group().map(|g| g.name()),
        alpn: c
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned()),
        kind: c.handshake_kind(),
        chain: c
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default(),
    }
}

// =============================================================================================
// HTTP over TLS (hyper client, h1 or h2 by ALPN)
// =============================================================================================

/// A request to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: http::Method,
    /// Host header / :authority.
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn get(host: &str, path: &str) -> Req {
        Req {
            method: http::Method::GET,
            host: host.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
    pub fn method(mut self, m: http::Method) -> Req {
        self.method = m;
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub tls: TlsInfo,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `req` on an established TLS stream (HTTP/2 when ALPN said h2, else HTTP/1.1) and
/// reads the whole response. The connection is closed afterwards.
pub async fn send(tls: TlsStream<TcpStream>, req: Req) -> Result<Resp, String> {
    let info = tls_info(&tls);
    let h2 = info.alpn.as_deref() == Some("h2");
    let fut = async move {
        let io = TokioIo::new(tls);
        let (status, version, headers, body) = if h2 {
            let uri = format!("https://{}{}", req.host, req.path);
            let mut b = http::Request::builder().method(req.method).uri(uri);
            for (k, v) in &req.headers {
                b = b.header(k, v);
            }
            let hreq = b.body(Full::new(req.body)).map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            drive(conn, async move {
                let resp = sender
                    .send_request(hreq)
                    .await
                    .map_err(|e| format!("h2 request: {e}"))?;
                collect(resp).await
            })
            .await?
        } else {
            let mut b = http::Request::builder()
                .method(req.method)
                .uri(req.path.as_str())
                .header("host", req.host.as_str());
            for (k, v) in &req.headers {
                b = b.header(k, v);
            }
            let hreq = b.body(Full::new(req.body)).map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            drive(conn, async move {
                let resp = sender
                    .send_request(hreq)
                    .await
                    .map_err(|e| format!("h1 request: {e}"))?;
                collect(resp).await
            })
            .await?
        };
        Ok::<_, String>((status, version, headers, body))
    };
    let (status, version, headers, body) = tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| "request timed out".to_string())??;
    Ok(Resp {
        status,
        version,
        headers,
        body,
        tls: info,
    })
}

type Parts = (u16, http::Version, http::HeaderMap, Bytes);

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Parts, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes();
    Ok((parts.status.as_u16(), parts.version, parts.headers, body))
}

/// Polls the connection future while `work` runs; drops the connection once `work` is done.
async fn drive<C, E, W>(conn: C, work: W) -> Result<Parts, String>
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    W: std::future::Future<Output = Result<Parts, String>>,
{
    tokio::pin!(conn);
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        c = &mut conn => {
            // The connection ended first (e.g. `Connection: close`); the response may still
            // be buffered for `work`.
            match work.await {
                Ok(r) => Ok(r),
                Err(e) => Err(match c {
                    Ok(()) => e,
                    Err(ce) => format!("{e} (connection: {ce})"),
                }),
            }
        }
    }
}

/// Connects with `cfg` and sends one request.
pub async fn request(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    sni: Option<&str>,
    req: Req,
) -> Result<Resp, String> {
    let tls = tls_connect(addr, sni, cfg)
        .await
        .map_err(|e| format!("TLS connect: {e}"))?;
    send(tls, req).await
}

/// GET `path` with SNI `sni` (None: no SNI, connecting by IP) and `Host` = the SNI name (or
/// the IP), offering exactly `alpn`. Panics on connection errors.
pub async fn get(addr: SocketAddr, sni: Option<&str>, path: &str, alpn: &'static str) -> Resp {
    let host = sni
        .map(str::to_string)
        .unwrap_or_else(|| addr.ip().to_string());
    let cfg = ClientOpts::default().alpn(&[alpn]).no_name_check().build();
    request(addr, cfg, sni, Req::get(&host, path))
        .await
        .unwrap_or_else(|e| panic!("GET {path} (sni {sni:?}, alpn {alpn}): {e}"))
}

// =============================================================================================
// Raw HTTP/1.1 (hand-written request bytes; nothing normalized by a client library)
// =============================================================================================

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone, Default)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one response from the start of `buf`. `Ok(None)`: incomplete. `head_only`: the
/// request was HEAD (no body whatever the headers say). `eof`: no more bytes will come.
pub fn parse_response(
    buf: &[u8],
    head_only: bool,
    eof: bool,
) -> Result<Option<(RawResp, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            Err(format!(
                "truncated response head: {:?}",
                String::from_utf8_lossy(buf)
            ))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = RawResp {
        status,
        headers,
        body: Vec::new(),
    };
    let start = end + 4;
    let rest = &buf[start..];
    if head_only || status == 304 || status == 204 || (100..200).contains(&status) {
        return Ok(Some((resp, start)));
    }
    if resp
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        let mut pos = 0;
        let mut body = Vec::new();
        loop {
            let Some(le) = rest[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_line = std::str::from_utf8(&rest[pos..pos + le]).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .map_err(|e| format!("bad chunk size {size_line:?}: {e}"))?;
            pos += le + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                let Some(te) = rest[pos..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                pos += te + 2;
                resp.body = body;
                return Ok(Some((resp, start + pos)));
            }
            if rest.len() < pos + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        if rest.len() < len {
            return if eof {
                Err(format!("body truncated: {} of {len} bytes", rest.len()))
            } else {
                Ok(None)
            };
        }
        resp.body = rest[..len].to_vec();
        return Ok(Some((resp, start + len)));
    }
    // Delimited by close.
    if eof {
        resp.body = rest.to_vec();
        Ok(Some((resp, buf.len())))
    } else {
        Ok(None)
    }
}

/// How a read loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Clean end of stream.
    Eof,
    /// An error (reset, missing close_notify, ...); still means "the server closed it".
    Error(String),
    /// Still open when the timeout hit.
    StillOpen,
}

/// Reads until the peer closes or `timeout` passes; returns what was read and how it ended.
pub async fn read_until_close<S: AsyncRead + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> (Vec<u8>, Closed) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, Closed::StillOpen),
            Ok(Ok(0)) => return (out, Closed::Eof),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Closed::Error(e.to_string())),
        }
    }
}

/// Reads exactly one response from `s` (leaving the connection open when possible).
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head_only: bool,
) -> Result<RawResp, String> {
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some((resp, used)) = parse_response(buf, head_only, false)? {
            buf.drain(..used);
            return Ok(resp);
        }
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err("timed out waiting for a response".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if buf.is_empty() => return Err(format!("read error: {e}")),
            Ok(Err(_)) => 0,
        };
        if n == 0 {
            return match parse_response(buf, head_only, true)? {
                Some((resp, used)) => {
                    buf.drain(..used);
                    Ok(resp)
                }
                None => Err("connection closed without a response".into()),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `request` as is, then reads one response. `Err` when the connection closed with
/// no response at all.
pub async fn raw_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
) -> Result<RawResp, String> {
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("flush: {e}"))?;
    let head_only = request.starts_with(b"HEAD ");
    read_response(s, &mut Vec::new(), head_only).await
}

/// Raw request over a fresh TLS connection (`sni` as in [`tls_connect`]).
pub async fn raw_tls(
    addr: SocketAddr,
    sni: Option<&str>,
    request: &[u8],
) -> Result<RawResp, String> {
    let cfg = ClientOpts::default().no_name_check().build();
    let mut tls = tls_connect(addr, sni, cfg)
        .await
        .map_err(|e| format!("TLS connect: {e}"))?;
    raw_exchange(&mut tls, request).await
}

/// Raw request over a fresh plain TCP connection (port 80 side).
pub async fn raw_tcp(addr: SocketAddr, request: &[u8]) -> Result<RawResp, String> {
    let mut tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    raw_exchange(&mut tcp, request).await
}

// =============================================================================================
// External tools and the binary
// =============================================================================================

/// Path of a required external tool. Panics (the test FAILS) when it is missing: CI installs
/// curl, nghttp (nghttp2-client) and openssl.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` is not installed (Debian: apt-get install curl nghttp2-client openssl)");
}

/// Runs a command with a deadline; kills it and panics on timeout.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    wait_output(child, timeout, &format!("{cmd:?}"))
}

/// Waits for `child` (stdout/stderr piped) with a deadline; kills it and panics on timeout.
pub fn wait_output(child: Child, timeout: Duration, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {timeout:?}");
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The portcullis binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// `portcullis check --config PATH`: success, and stdout + stderr together.
pub fn check_config(path: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run portcullis check");
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

/// A `portcullis serve` child process whose stderr is collected line by line.
pub struct ServeProcess {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl ServeProcess {
    /// Spawns `portcullis <args>` with the given environment.
    pub fn spawn(args: &[&str], envs: &[(&str, &Path)]) -> ServeProcess {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn portcullis");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ServeProcess {
            child,
            lines: rx,
            stderr: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; panics (with everything printed so far)
    /// when the process exits or the timeout passes first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no stderr line with {needle:?} within {timeout:?}; stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "portcullis exited ({:?}) before printing {needle:?}; stderr:\n{}",
                    self.child.try_wait(),
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Collects the stderr lines printed so far into `stderr`, waiting up to `timeout` for
    /// more (all of them once the process has exited).
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.stderr.push(line);
        }
    }

    /// Sends a signal with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the exit status with a deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses `https://ADDR` out of a "listening on https://ADDR" line.
pub fn parse_listen_line(line: &str) -> SocketAddr {
    let rest = line
        .split("https://")
        .nth(1)
        .or_else(|| line.split("http://").nth(1))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let addr = rest.split_whitespace().next().unwrap();
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"))
}

// =============================================================================================
// Kernel counters
// =============================================================================================

/// TCP segments a socket has sent and received so far (`TCP_INFO`'s `tcpi_segs_out` and
/// `tcpi_segs_in`, Linux ≥ 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub sent: u32,
    pub received: u32,
}

pub fn tcp_segments(fd: std::os::fd::RawFd) -> Segments {
    // struct tcp_info (linux/tcp.h): tcpi_segs_out and tcpi_segs_in are the u32s at 136 and 140
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; the kernel writes at most len and updates len.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt(TCP_INFO): {}", io::Error::last_os_error());
    assert!(len >= 144, "tcp_info without tcpi_segs_in ({len} bytes)");
    let at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
    Segments {
        sent: at(136),
        received: at(140),
    }
}
