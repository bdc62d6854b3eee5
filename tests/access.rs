//! Who may pass: client certificates (mutual TLS, required and optional, resumption), IP
//! allow/deny lists over IPv4 and IPv6, HTTP basic auth with bcrypt and argon2 hashes, the
//! `hash-password` command, and the config mistakes around them, each with its `file:line`.
//!
//! What a proxied backend learns (the verified client certificate's fields, forged ones
//! removed; `Authorization` kept back unless `forward_auth`) is checked against a backend that
//! echoes the request's fields.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use portcullis::config::validate::{Mode, Overrides};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{AlertDescription, ClientConfig, HandshakeKind, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// =============================================================================================
// Client PKI: a CA that issues client certificates, and another one nobody trusts
// =============================================================================================

/// A client-certificate CA (self-signed root issuing leaves directly).
struct ClientCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A client certificate and its key.
struct ClientId {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl ClientCa {
    fn new(cn: &str) -> ClientCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.self_signed(&key).unwrap();
        ClientCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn client(&self, cn: &str) -> ClientId {
        self.client_with_serial(cn, None)
    }

    fn client_with_serial(&self, cn: &str, serial: Option<u8>) -> ClientId {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            cn,
            serial,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        )
    }

    /// A client certificate that expired yesterday.
    fn expired_client(&self, cn: &str) -> ClientId {
        let now = time::OffsetDateTime::now_utc();
        self.issue(
            cn,
            None,
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
    }

    fn issue(
        &self,
        cn: &str,
        serial: Option<u8>,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> ClientId {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![format!("{cn}.clients.test")]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = serial.map(|s| rcgen::SerialNumber::from_slice(&[s]));
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientId {
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }
}

/// A TLS 1.3 (or `tls12`) HTTP/1.1 client trusting the test root, presenting `id` if given.
/// One config = one session store: connections made with it resume.
fn client(id: Option<&ClientId>, tls12: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki().root_der.clone()).unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_webpki_verifier(verifier);
    let mut cfg = match id {
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The alert the server refused the connection with: TLS 1.3 clients finish their side of the
/// handshake before the server has checked their certificate, so the alert may come with the
/// first read after it.
async fn refusal(addr: SocketAddr, sni: &str, cfg: Arc<ClientConfig>) -> AlertDescription {
    let err = match tls_connect(addr, Some(sni), cfg).await {
        Err(e) => e,
        Ok(mut tls) => {
            let _ = tls
                .write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n").as_bytes())
                .await;
            let mut buf = Vec::new();
            match tokio::time::timeout(IO_TIMEOUT, tls.read_to_end(&mut buf)).await {
                Ok(Err(e)) => e,
                other => panic!(
                    "connection to {sni} was not refused: {other:?}, read {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            }
        }
    };
    match rustls_error(&err) {
        Some(rustls::Error::AlertReceived(a)) => *a,
        _ => panic!("expected an alert from the server, got {err}"),
    }
}

/// Clients CA at `clients/ca.pem`, an untrusted one; sites:
/// - `open` (beta.test, the default site): no client auth, `/` → "open";
/// - `strict` (alpha.test): client certificate required, `/` → "strict";
/// - `mixed` (*.example.test): optional, `/` → "mixed", `/admin` needs a certificate.
struct Mtls {
    srv: TestServer,
    good: ClientId,
    stranger: ClientId,
    expired: ClientId,
}

const MIXED: &str = "app.example.test";

fn mtls() -> Mtls {
    let ca = ClientCa::new("Portcullis Test Clients CA");
    let other = ClientCa::new("Somebody Else's CA");
    let env = TestEnv::new();
    env.write("clients/ca.pem", &ca.pem);
    let srv = env.start(
        r#"
[tls]
default_site = "open"

[[site]]
name = "strict"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
client_auth = { mode = "required", ca = ["clients/ca.pem"] }
[[site.route]]
path = "/"
respond = { body = "strict" }

[[site]]
name = "open"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = { body = "open" }

[[site]]
name = "mixed"
hosts = ["*.example.test"]
cert = "certs/wild.pem"
key = "certs/wild.key"
client_auth = { mode = "optional", ca = ["clients/ca.pem"] }
[[site.route]]
path = "/"
respond = { body = "mixed" }
[[site.route]]
path = "/admin"
respond = { body = "admin" }
access = { require_client_cert = true }
"#,
    );
    Mtls {
        srv,
        good: ca.client("alice"),
        stranger: other.client("mallory"),
        expired: ca.expired_client("bob"),
    }
}

async fn get_with(addr: SocketAddr, cfg: Arc<ClientConfig>, host: &str, path: &str) -> Resp {
    request(addr, cfg, Some(host), Req::get(host, path))
        .await
        .unwrap_or_else(|e| panic!("GET https://{host}{path}: {e}"))
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_certificate() {
    let m = mtls();
    assert_eq!(
        refusal(m.srv.https, ALPHA, client(None, false)).await,
        AlertDescription::CertificateRequired
    );
    // rustls sends certificate_required (RFC 8446's alert, known to TLS 1.2 stacks such as
    // OpenSSL too) rather than TLS 1.2's generic handshake_failure.
    assert_eq!(
        refusal(m.srv.https, ALPHA, client(None, true)).await,
        AlertDescription::CertificateRequired
    );
}

#[tokio::test]
async fn required_client_auth_refuses_a_certificate_from_another_ca() {
    let m = mtls();
    for tls12 in [false, true] {
        assert_eq!(
            refusal(m.srv.https, ALPHA, client(Some(&m.stranger), tls12)).await,
            AlertDescription::UnknownCA
        );
    }
}

#[tokio::test]
async fn required_client_auth_refuses_an_expired_certificate() {
    let m = mtls();
    for tls12 in [false, true] {
        assert_eq!(
            refusal(m.srv.https, ALPHA, client(Some(&m.expired), tls12)).await,
            AlertDescription::CertificateExpired
        );
    }
}

#[tokio::test]
async fn required_client_auth_serves_a_client_with_a_trusted_certificate() {
    let m = mtls();
    for tls12 in [false, true] {
        let r = get_with(m.srv.https, client(Some(&m.good), tls12), ALPHA, "/").await;
        assert_eq!((r.status, r.text().as_str()), (200, "strict"));
    }
}

#[tokio::test]
async fn optional_client_auth_serves_clients_with_and_without_certificates() {
    let m = mtls();
    let r = get_with(m.srv.https, client(None, false), MIXED, "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "mixed"));
    // A route that demands a certificate refuses the client without one, with the site's
    // headers.
    let r = get_with(m.srv.https, client(None, false), MIXED, "/admin").await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("client certificate is required"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let r = get_with(m.srv.https, client(Some(&m.good), false), MIXED, "/admin").await;
    assert_eq!((r.status, r.text().as_str()), (200, "admin"));
    // Optional is not "anything goes": a certificate that does not verify ends the handshake.
    assert_eq!(
        refusal(m.srv.https, MIXED, client(Some(&m.stranger), false)).await,
        AlertDescription::UnknownCA
    );
}

#[tokio::test]
async fn a_resumed_session_keeps_its_client_certificate_and_its_absence() {
    let m = mtls();
    for tls12 in [false, true] {
        // With a certificate: the resumed connection (no certificate message at all) is
        // still the certificate holder's.
        let with = client(Some(&m.good), tls12);
        let first = get_with(m.srv.https, with.clone(), MIXED, "/admin").await;
        assert_eq!(
            (first.status, first.tls.kind),
            (200, Some(HandshakeKind::Full))
        );
        let again = get_with(m.srv.https, with.clone(), MIXED, "/admin").await;
        assert_eq!(
            (again.status, again.tls.kind),
            (200, Some(HandshakeKind::Resumed)),
            "tls12 {tls12}"
        );
        // Without: resumption does not make one up.
        let without = client(None, tls12);
        get_with(m.srv.https, without.clone(), MIXED, "/").await;
        let again = get_with(m.srv.https, without, MIXED, "/admin").await;
        assert_eq!(
            (again.status, again.tls.kind),
            (403, Some(HandshakeKind::Resumed)),
            "tls12 {tls12}"
        );
        // Required mode resumes as well.
        let strict = client(Some(&m.good), tls12);
        get_with(m.srv.https, strict.clone(), ALPHA, "/").await;
        let again = get_with(m.srv.https, strict, ALPHA, "/").await;
        assert_eq!(
            (again.status, again.tls.kind),
            (200, Some(HandshakeKind::Resumed))
        );
    }
}

#[tokio::test]
async fn a_connection_without_sni_cannot_reach_a_client_auth_site_by_host() {
    let m = mtls();
    // No SNI: the default site ("open", no client auth) made the handshake, so Host naming
    // the strict site is misdirected, not served without a certificate.
    let cfg = ClientOpts::default().no_name_check().build();
    let r = request(m.srv.https, cfg.clone(), None, Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    let r = request(m.srv.https, cfg.clone(), None, Req::get(MIXED, "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    // The default site itself is served as before.
    let r = request(m.srv.https, cfg, None, Req::get(BETA, "/"))
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "open"));
    // Over a connection made for another site, Host naming the strict site: 421 as always.
    let r = get_with(m.srv.https, client(None, false), BETA, "/").await;
    assert_eq!(r.status, 200);
    let r = request(
        m.srv.https,
        ClientOpts::default().build(),
        Some(BETA),
        Req::get(ALPHA, "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
}

impl ClientCa {
    /// A current PEM CRL revoking the certificates with these serials.
    fn crl(&self, revoked: &[u8]) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: rcgen::SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&[*s]),
                    revocation_time: now - time::Duration::minutes(30),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let ca = ClientCa::new("Portcullis Test Clients CA");
    let alice = ca.client_with_serial("alice", Some(1));
    let bob = ca.client_with_serial("bob", Some(2));
    let env = TestEnv::new();
    env.write("clients/ca.pem", &ca.pem);
    env.write("clients/crl.pem", ca.crl(&[2]));
    let srv = env.start(
        r#"
[[site]]
name = "strict"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
client_auth = { ca = ["clients/ca.pem"], crl = ["clients/crl.pem"] }
[[site.route]]
path = "/"
respond = { body = "strict" }
"#,
    );
    let r = get_with(srv.https, client(Some(&alice), false), ALPHA, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        refusal(srv.https, ALPHA, client(Some(&bob), false)).await,
        AlertDescription::CertificateRevoked
    );
}

// ---------------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------------

/// `openssl s_client` to `sni` with `args`, sending one request; (stdout + stderr).
fn s_client(addr: SocketAddr, sni: &str, args: &[&str]) -> String {
    let openssl = require_tool("openssl");
    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .args(["-verify_return_error", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let out = wait_output(child, Duration::from_secs(15), "openssl s_client");
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

struct OpensslFiles {
    root: String,
    cert: String,
    key: String,
    stranger_cert: String,
    stranger_key: String,
}

fn openssl_files(m: &Mtls) -> OpensslFiles {
    let env = &m.srv.env;
    let pem = |tag: &str, der: &[u8]| {
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
            lines.join("\n")
        )
    };
    let s = |p: std::path::PathBuf| p.display().to_string();
    OpensslFiles {
        root: s(env.path("certs/root.pem")),
        cert: s(env.write("clients/alice.pem", pem("CERTIFICATE", &m.good.cert))),
        key: s(env.write("clients/alice.key", pem("PRIVATE KEY", &m.good.key))),
        stranger_cert: s(env.write("clients/mallory.pem", pem("CERTIFICATE", &m.stranger.cert))),
        stranger_key: s(env.write("clients/mallory.key", pem("PRIVATE KEY", &m.stranger.key))),
    }
}

#[test]
fn openssl_s_client_sees_the_right_alerts_and_gets_in_with_a_good_certificate() {
    let m = mtls();
    let f = openssl_files(&m);
    let addr = m.srv.https;
    let out = s_client(addr, ALPHA, &["-CAfile", &f.root]);
    assert!(
        out.contains("alert certificate required"),
        "no certificate:\n{out}"
    );
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    let out = s_client(
        addr,
        ALPHA,
        &[
            "-CAfile",
            &f.root,
            "-cert",
            &f.stranger_cert,
            "-key",
            &f.stranger_key,
        ],
    );
    assert!(out.contains("alert unknown ca"), "wrong CA:\n{out}");
    let out = s_client(
        addr,
        ALPHA,
        &["-CAfile", &f.root, "-cert", &f.cert, "-key", &f.key],
    );
    assert!(out.contains("HTTP/1.1 200"), "good certificate:\n{out}");
    assert!(out.contains("strict"), "{out}");
    // The CertificateRequest names the trusted CA.
    assert!(
        out.contains("Acceptable client certificate CA names")
            && out.contains("Portcullis Test Clients CA"),
        "{out}"
    );
}

#[test]
fn a_session_from_another_site_is_not_resumed_on_a_client_auth_site() {
    // openssl can offer any saved session to any name; rustls clients would not.
    let m = mtls();
    let f = openssl_files(&m);
    let addr = m.srv.https;
    let sess = m.srv.env.path("beta.sess").display().to_string();
    for version in ["-tls1_3", "-tls1_2"] {
        let out = s_client(
            addr,
            BETA,
            &[version, "-CAfile", &f.root, "-sess_out", &sess],
        );
        assert!(out.contains("HTTP/1.1 200"), "{out}");
        assert!(Path::new(&sess).exists(), "no session saved:\n{out}");
        // The session from the open site, offered to the strict one: a full handshake, which
        // needs the certificate the client does not have.
        let out = s_client(
            addr,
            ALPHA,
            &[version, "-CAfile", &f.root, "-sess_in", &sess],
        );
        assert!(
            !out.contains("Reused, TLS"),
            "{version}: resumed across sites:\n{out}"
        );
        assert!(!out.contains("HTTP/1.1 200"), "{version}: served:\n{out}");
        // Control: the same session is resumed where it was made.
        let out = s_client(
            addr,
            BETA,
            &[version, "-CAfile", &f.root, "-sess_in", &sess],
        );
        assert!(
            out.contains("Reused, TLS"),
            "{version}: not resumed at home:\n{out}"
        );
    }
}

// =============================================================================================
// IP allow/deny
// =============================================================================================

/// Starts a server from a complete config text (own listeners).
fn start_raw(env: TestEnv, text: &str) -> TestServer {
    let path = env.write_config_raw(text);
    let (config, _) = env.load(&path).unwrap_or_else(|p| {
        panic!(
            "config does not load:\n{}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let server = portcullis::server::Server::start(config).expect("server starts");
    let https = server.https_addrs()[0];
    TestServer {
        server: Some(server),
        https,
        http: None,
        env,
    }
}

fn ip_site(listen: &str, rules: &str) -> String {
    format!(
        r#"workers = 1
data_dir = "data"
[listen]
https = ["{listen}"]
http = []

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
{rules}
[[site.route]]
path = "/"
respond = {{ body = "home" }}
[[site.route]]
path = "/public"
respond = {{ body = "public" }}
access = {{ allow = ["0.0.0.0/0", "::/0"] }}
[[site.route]]
path = "/lan"
respond = {{ body = "lan" }}
access = {{ allow = ["10.0.0.0/8", "fd00::/8"] }}
"#
    )
}

async fn status(srv: &TestServer, path: &str) -> u16 {
    let r = get_with(srv.https, ClientOpts::default().build(), ALPHA, path).await;
    if r.status == 403 {
        // Refusals carry the site's headers like every response.
        assert!(r.header("x-content-type-options").is_some(), "{path}");
    }
    r.status
}

#[tokio::test]
async fn ipv4_clients_are_admitted_or_refused_by_the_lists() {
    let allowed = start_raw(
        TestEnv::new(),
        &ip_site("127.0.0.1:0", r#"access = { allow = ["127.0.0.0/8"] }"#),
    );
    assert_eq!(status(&allowed, "/").await, 200);
    assert_eq!(status(&allowed, "/public").await, 200);
    // The route's list replaces the site's.
    assert_eq!(status(&allowed, "/lan").await, 403);
    // Deny wins over allow.
    let denied = start_raw(
        TestEnv::new(),
        &ip_site(
            "127.0.0.1:0",
            r#"access = { allow = ["127.0.0.0/8"], deny = ["127.0.0.1"] }"#,
        ),
    );
    assert_eq!(status(&denied, "/").await, 403);
    assert_eq!(status(&denied, "/public").await, 200);
    let elsewhere = start_raw(
        TestEnv::new(),
        &ip_site("127.0.0.1:0", r#"access = { allow = ["192.0.2.0/24"] }"#),
    );
    assert_eq!(status(&elsewhere, "/").await, 403);
}

#[tokio::test]
async fn a_site_list_refuses_paths_no_route_serves() {
    // 403, not 404: a refused client does not learn which paths exist.
    let text = ip_site("127.0.0.1:0", r#"access = { deny = ["127.0.0.0/8"] }"#)
        .replace("path = \"/\"\n", "path = \"/home\"\n");
    assert!(text.contains("path = \"/home\"") && !text.contains("path = \"/\"\n"));
    let srv = start_raw(TestEnv::new(), &text);
    assert_eq!(status(&srv, "/nowhere").await, 403);
    assert_eq!(status(&srv, "/home").await, 403);
    assert_eq!(status(&srv, "/public").await, 200);
    // Without the site's list, the same path is missing.
    let open = start_raw(
        TestEnv::new(),
        &ip_site("127.0.0.1:0", "").replace("path = \"/\"\n", "path = \"/home\"\n"),
    );
    assert_eq!(status(&open, "/nowhere").await, 404);
}

#[tokio::test]
async fn ipv6_clients_are_admitted_or_refused_by_the_lists() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let allowed = start_raw(
        TestEnv::new(),
        &ip_site("[::1]:0", r#"access = { allow = ["::1/128"] }"#),
    );
    assert_eq!(status(&allowed, "/").await, 200);
    assert_eq!(status(&allowed, "/lan").await, 403);
    let denied = start_raw(
        TestEnv::new(),
        &ip_site("[::1]:0", r#"access = { deny = ["::/0"] }"#),
    );
    assert_eq!(status(&denied, "/").await, 403);
    assert_eq!(status(&denied, "/public").await, 200);
    // An IPv4-only list does not admit an IPv6 client.
    let v4 = start_raw(
        TestEnv::new(),
        &ip_site("[::1]:0", r#"access = { allow = ["127.0.0.0/8"] }"#),
    );
    assert_eq!(status(&v4, "/").await, 403);
}

// IPv4-mapped client addresses (`::ffff:127.0.0.1`) cannot reach the server over its own
// listeners (IPv6 listeners are IPV6_V6ONLY); they come with PROXY protocol headers. Their
// matching is covered by `ip::tests::ipv4_mapped_addresses_match_ipv4_networks`.

// =============================================================================================
// Basic auth
// =============================================================================================

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn auth_get(srv: &TestServer, path: &str, authorization: Option<&str>) -> Resp {
    let mut req = Req::get(ALPHA, path);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    request(srv.https, ClientOpts::default().build(), Some(ALPHA), req)
        .await
        .unwrap()
}

#[tokio::test]
async fn basic_auth_asks_refuses_and_admits() {
    let env = TestEnv::new();
    let bcrypt = bcrypt_hash("bcrypt-pass");
    let argon2 = portcullis::http::access::basic::hash_password(b"argon2-pass").unwrap();
    let from_file = bcrypt_hash("file-pass");
    env.write("htpasswd", format!("# staff\ncarol:{from_file}\n"));
    let srv = env.start(&format!(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
basic_auth = {{ realm = "Staff area", users = {{ alice = "{bcrypt}", bob = "{argon2}" }}, users_file = "htpasswd" }}
[[site.route]]
path = "/"
respond = {{ body = "secret" }}
[[site.route]]
path = "/ops"
respond = {{ body = "ops" }}
basic_auth = {{ realm = "Ops", users = {{ dave = "{bcrypt}" }} }}
"#
    ));
    let challenge = "Basic realm=\"Staff area\", charset=\"UTF-8\"";
    let r = auth_get(&srv, "/", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some(challenge));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    for bad in [
        basic("alice", "wrong"),
        basic("alice", "argon2-pass"),
        basic("nobody", "bcrypt-pass"),
        "Bearer abc".to_string(),
        "Basic not-base64!".to_string(),
    ] {
        let r = auth_get(&srv, "/", Some(&bad)).await;
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.header("www-authenticate"), Some(challenge), "{bad}");
    }
    for good in [
        basic("alice", "bcrypt-pass"),
        basic("bob", "argon2-pass"),
        basic("carol", "file-pass"),
    ] {
        let r = auth_get(&srv, "/", Some(&good)).await;
        assert_eq!((r.status, r.text().as_str()), (200, "secret"), "{good}");
        // And again (served from the verification cache).
        let r = auth_get(&srv, "/", Some(&good)).await;
        assert_eq!(r.status, 200, "{good}");
    }
    // HTTP/2 requests meet the same rules.
    let h2 = ClientOpts::default().alpn(&["h2"]).build();
    let r = request(srv.https, h2.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!((r.version, r.status), (http::Version::HTTP_2, 401));
    assert_eq!(r.header("www-authenticate"), Some(challenge));
    let r = request(
        srv.https,
        h2,
        Some(ALPHA),
        Req::get(ALPHA, "/").header("authorization", &basic("bob", "argon2-pass")),
    )
    .await
    .unwrap();
    assert_eq!((r.version, r.status), (http::Version::HTTP_2, 200));
    // The route's own users replace the site's.
    let r = auth_get(&srv, "/ops", Some(&basic("alice", "bcrypt-pass"))).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Ops\", charset=\"UTF-8\"")
    );
    let r = auth_get(&srv, "/ops", Some(&basic("dave", "bcrypt-pass"))).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ops"));
}

#[tokio::test]
async fn ip_rules_are_checked_before_basic_auth() {
    let bcrypt = bcrypt_hash("pw");
    let srv = start_raw(
        TestEnv::new(),
        &ip_site(
            "127.0.0.1:0",
            &format!(
                "access = {{ deny = [\"127.0.0.0/8\"] }}\nbasic_auth = {{ users = {{ alice = \"{bcrypt}\" }} }}"
            ),
        ),
    );
    // Refused by address: 403 even with the right password, and no challenge.
    let r = auth_get(&srv, "/", Some(&basic("alice", "pw"))).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("www-authenticate"), None);
    // /public's own list admits the address; the site's basic auth still applies there
    // (only the kind the route sets is replaced). The realm defaults to the site's name.
    let r = auth_get(&srv, "/public", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"alpha\", charset=\"UTF-8\"")
    );
    let r = auth_get(&srv, "/public", Some(&basic("alice", "pw"))).await;
    assert_eq!(r.status, 200);
}

fn bcrypt_hash(password: &str) -> String {
    // Cost 4 (the minimum) keeps the tests fast; the format is the same as htpasswd -B.
    bcrypt::hash(password, 4).unwrap()
}

#[test]
fn hash_password_output_logs_in() {
    let mut child = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret with spaces\n")
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30), "portcullis hash-password");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let srv = start_raw(
        TestEnv::new(),
        &ip_site(
            "127.0.0.1:0",
            &format!("basic_auth = {{ users = {{ erin = \"{hash}\" }} }}"),
        ),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = auth_get(&srv, "/", Some(&basic("erin", "s3cret with spaces"))).await;
        assert_eq!(r.status, 200);
        let r = auth_get(&srv, "/", Some(&basic("erin", "s3cret with spaces\n"))).await;
        assert_eq!(r.status, 401);
    });
    // An empty password is refused with a hint.
    let mut child = Command::new(bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = wait_output(child, Duration::from_secs(30), "portcullis hash-password");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("the password is empty"),
        "{}",
        text(&out.stderr)
    );
}

// =============================================================================================
// Config mistakes: each with its file:line
// =============================================================================================

/// The config text (listeners, one site) with `site_extra` in the site table and
/// `route_extra` in its route.
fn config(site_extra: &str, route_extra: &str) -> String {
    format!(
        r#"workers = 1
data_dir = "data"
[listen]
https = ["127.0.0.1:0"]
http = []

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
{site_extra}
[[site.route]]
path = "/"
respond = {{ body = "ok" }}
{route_extra}
"#
    )
}

/// Loads `text` (check mode), expects a refusal with an error at the line holding `needle`
/// whose message contains every one of `says`; also runs `portcullis check` for the same.
fn refused_at(env: &TestEnv, text: &str, needle: &str, says: &[&str]) {
    let path = env.write_config_raw(text);
    let problems: Vec<String> =
        match portcullis::config::load(&path, &Overrides::default(), Mode::Check) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        };
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1;
    let at = format!("{}:{line}:", path.display());
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(&at) && says.iter().all(|s| p.contains(s))),
        "no error at {at} saying {says:?}:\n{}",
        problems.join("\n")
    );
    let (ok, out) = check_config(&path);
    assert!(!ok, "portcullis check accepted:\n{text}");
    assert!(
        out.contains(&at),
        "portcullis check does not name {at}:\n{out}"
    );
}

#[test]
fn a_bad_network_is_reported_at_its_line() {
    let env = TestEnv::new();
    refused_at(
        &env,
        &config("access = { allow = [\"10.0.0.0/33\"] }", ""),
        "10.0.0.0/33",
        &["access.allow", "\"10.0.0.0/33\" is not a network"],
    );
    refused_at(
        &env,
        &config("", "access = { deny = [\"10.1.2.3/8\"] }"),
        "10.1.2.3/8",
        &["route \"/\"", "access.deny", "the network is 10.0.0.0/8"],
    );
    refused_at(
        &env,
        &config("access = { allow = [] }", ""),
        "allow = []",
        &["admits no one"],
    );
}

#[test]
fn client_auth_mistakes_are_reported_at_their_lines() {
    let env = TestEnv::new();
    env.write("empty.pem", "nothing here\n");
    env.write("clients.pem", ClientCa::new("Clients").pem);
    refused_at(
        &env,
        &config("client_auth = { ca = [\"missing-ca.pem\"] }", ""),
        "missing-ca.pem",
        &["client_auth.ca", "missing-ca.pem cannot be read"],
    );
    refused_at(
        &env,
        &config("client_auth = { ca = [\"empty.pem\"] }", ""),
        "empty.pem",
        &["empty.pem has no certificate"],
    );
    refused_at(
        &env,
        &config("client_auth = { ca = [] }", ""),
        "ca = []",
        &["client_auth.ca is empty"],
    );
    refused_at(
        &env,
        &config(
            "client_auth = { mode = \"sometimes\", ca = [\"clients.pem\"] }",
            "",
        ),
        "sometimes",
        &["client_auth.mode = \"sometimes\" is not a mode"],
    );
    refused_at(
        &env,
        &config(
            "client_auth = { ca = [\"clients.pem\"], crl = [\"empty.pem\"] }",
            "",
        ),
        "crl = [",
        &["client_auth.crl", "has no revocation list"],
    );
    refused_at(
        &env,
        &config(
            "client_auth = { ca = [\"clients.pem\"] }\nearly_data = true",
            "",
        ),
        "client_auth",
        &["early_data and client_auth cannot be combined"],
    );
    refused_at(
        &env,
        &config("", "access = { require_client_cert = true }"),
        "require_client_cert",
        &["require_client_cert needs client_auth"],
    );
    refused_at(
        &env,
        &config(
            "client_auth = { mode = \"required\", ca = [\"clients.pem\"], cas = [] }",
            "",
        ),
        "cas = []",
        &["unknown field `cas`"],
    );
}

#[test]
fn basic_auth_mistakes_are_reported_at_their_lines() {
    let env = TestEnv::new();
    refused_at(
        &env,
        &config("basic_auth = { users = { alice = \"hunter2\" } }", ""),
        "hunter2",
        &[
            "user \"alice\"",
            "plain-text password",
            "portcullis hash-password",
        ],
    );
    refused_at(
        &env,
        &config("", "basic_auth = { users = { bob = \"$apr1$abc$def\" } }"),
        "$apr1$",
        &["route \"/\"", "MD5-crypt", "portcullis hash-password"],
    );
    refused_at(
        &env,
        &config("basic_auth = { users_file = \"no-such-htpasswd\" }", ""),
        "no-such-htpasswd",
        &["users_file", "no-such-htpasswd cannot be read"],
    );
    env.write("plain.htpasswd", "# users\nalice:swordfish\n");
    refused_at(
        &env,
        &config("basic_auth = { users_file = \"plain.htpasswd\" }", ""),
        "plain.htpasswd",
        &[
            "plain.htpasswd line 2",
            "user \"alice\"",
            "plain-text password",
        ],
    );
    refused_at(
        &env,
        &config("basic_auth = { realm = \"nobody\" }", ""),
        "realm = \"nobody\"",
        &["basic_auth has no users"],
    );
}

#[test]
fn a_valid_access_config_passes_check() {
    let env = TestEnv::new();
    env.write("clients.pem", ClientCa::new("Clients").pem);
    let hash = bcrypt_hash("pw");
    let path = env.write_config_raw(&config(
        &format!(
            "client_auth = {{ mode = \"optional\", ca = [\"clients.pem\"] }}\naccess = {{ allow = [\"127.0.0.1\", \"::1\"] }}\nbasic_auth = {{ users = {{ alice = \"{hash}\" }}, forward_auth = true }}"
        ),
        "access = { require_client_cert = true, deny = [\"192.0.2.0/24\"] }",
    ));
    let (ok, out) = check_config(&path);
    assert!(ok, "{out}");
}

// =============================================================================================
// What a proxied backend learns: client-certificate fields, Authorization
// =============================================================================================

/// A backend that answers every request with the request's header fields, one
/// `name: value` line each.
async fn echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut text = String::new();
                        for (k, v) in req.headers() {
                            text.push_str(&format!(
                                "{k}: {}\n",
                                String::from_utf8_lossy(v.as_bytes())
                            ));
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(text)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// The values of `name` in an echo body.
fn echoed(r: &Resp, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    r.text()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_backend_learns_the_verified_client_certificate_and_nothing_forged() {
    let backend = echo_backend().await;
    let ca = ClientCa::new("Portcullis Test Clients CA");
    let alice = ca.client_with_serial("alice", Some(0x2a));
    let env = TestEnv::new();
    env.write("clients/ca.pem", &ca.pem);
    let hash = bcrypt_hash("pw");
    let srv = env.start(&format!(
        r#"
[[site]]
name = "mixed"
hosts = ["*.example.test"]
cert = "certs/wild.pem"
key = "certs/wild.key"
client_auth = {{ mode = "optional", ca = ["clients/ca.pem"] }}
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://{backend}"] }}
[[site.route]]
path = "/auth"
proxy = {{ upstreams = ["http://{backend}"] }}
basic_auth = {{ users = {{ alice = "{hash}" }} }}
[[site.route]]
path = "/auth-forwarded"
proxy = {{ upstreams = ["http://{backend}"] }}
basic_auth = {{ users = {{ alice = "{hash}" }}, forward_auth = true }}

[[site]]
name = "open"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://{backend}"] }}
"#
    ));
    let forged = |host: &str, path: &str| {
        Req::get(host, path)
            .header("x-client-cert-subject", "CN=admin")
            .header("x-client-cert-verified", "SUCCESS")
            .header("x-client-cert-fingerprint", "00")
    };
    // With a certificate: its fields, the forged ones gone.
    let r = request(
        srv.https,
        client(Some(&alice), false),
        Some(MIXED),
        forged(MIXED, "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed(&r, "x-client-cert-verified"), ["SUCCESS"]);
    assert_eq!(echoed(&r, "x-client-cert-subject"), ["CN=alice"]);
    assert_eq!(echoed(&r, "x-client-cert-san"), ["DNS:alice.clients.test"]);
    assert_eq!(echoed(&r, "x-client-cert-serial"), ["2A"]);
    let fingerprint: String = <sha2::Sha256 as sha2::Digest>::digest(alice.cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(echoed(&r, "x-client-cert-fingerprint"), [fingerprint]);
    assert_eq!(echoed(&r, "x-client-cert-not-after").len(), 1);
    // Without one: NONE, and nothing the client claimed.
    let r = request(
        srv.https,
        client(None, false),
        Some(MIXED),
        forged(MIXED, "/"),
    )
    .await
    .unwrap();
    assert_eq!(echoed(&r, "x-client-cert-verified"), ["NONE"]);
    assert!(
        echoed(&r, "x-client-cert-subject").is_empty(),
        "{}",
        r.text()
    );
    assert!(
        echoed(&r, "x-client-cert-fingerprint").is_empty(),
        "{}",
        r.text()
    );
    // A site without client_auth passes none of these fields, forged or not.
    let r = request(
        srv.https,
        client(None, false),
        Some(BETA),
        forged(BETA, "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("x-client-cert"), "{}", r.text());

    // Authorization: the credentials checked here stay here unless forward_auth is set; a
    // route without basic_auth passes the client's own (the backend's business).
    let login = basic("alice", "pw");
    let r = request(
        srv.https,
        client(None, false),
        Some(MIXED),
        Req::get(MIXED, "/auth").header("authorization", &login),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(echoed(&r, "authorization").is_empty(), "{}", r.text());
    let r = request(
        srv.https,
        client(None, false),
        Some(MIXED),
        Req::get(MIXED, "/auth-forwarded").header("authorization", &login),
    )
    .await
    .unwrap();
    assert_eq!(echoed(&r, "authorization"), [login]);
    let r = request(
        srv.https,
        client(None, false),
        Some(BETA),
        Req::get(BETA, "/").header("authorization", "Bearer token"),
    )
    .await
    .unwrap();
    assert_eq!(echoed(&r, "authorization"), ["Bearer token"]);
}
