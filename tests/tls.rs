//! TLS as a client sees it: versions, key exchange groups, ALPN, certificate choice (SNI,
//! wildcard, no SNI, unknown SNI, ECDSA vs RSA), resumption and the handshake timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rustls::{AlertDescription, CipherSuite, HandshakeKind, NamedGroup, ProtocolVersion};
use tokio::io::AsyncReadExt;

/// Three sites: alpha (default), beta, and a wildcard site.
const THREE_SITES: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
respond = { body = "alpha" }

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = { body = "beta" }

[[site]]
name = "wild"
hosts = ["*.example.test"]
cert = "certs/wild.pem"
key = "certs/wild.key"
[[site.route]]
path = "/"
respond = { body = "wild" }
"#;

#[tokio::test]
async fn tls13_is_negotiated_when_client_offers_only_tls13() {
    let srv = start(ONE_SITE);
    let cfg = ClientOpts::default().tls13().build();
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.tls.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(r.text(), "hello from alpha");
}

#[tokio::test]
async fn tls12_is_negotiated_with_ecdhe_aead_when_client_offers_only_tls12() {
    let srv = start(ONE_SITE);
    let cfg = ClientOpts::default().tls12().build();
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.tls.version, Some(ProtocolVersion::TLSv1_2));
    let suite = format!("{:?}", r.tls.cipher.unwrap());
    assert!(
        suite.starts_with("TLS_ECDHE_ECDSA_WITH_")
            && (suite.contains("GCM") || suite.contains("CHACHA20_POLY1305")),
        "TLS 1.2 suite must be ECDHE + AEAD with the ECDSA certificate, got {suite}"
    );
}

/// `openssl s_client` offering only `version_flag`; returns (success, stdout+stderr).
fn openssl_old_version(addr: std::net::SocketAddr, version_flag: &str) -> (bool, String) {
    let openssl = require_tool("openssl");
    // SECLEVEL=0 so that OpenSSL 3 itself is willing to offer TLS 1.0/1.1: the refusal must
    // come from the server.
    let out = run_with_timeout(
        std::process::Command::new(openssl).args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            ALPHA,
            version_flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]),
        Duration::from_secs(10),
    );
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// The handshake failed because the *server* answered with a fatal alert (rustls answers an
/// old-version ClientHello with handshake_failure or protocol_version), and no cipher was agreed.
fn assert_refused_by_server(ok: bool, out: &str, what: &str) {
    assert!(!ok, "{what} handshake must fail:\n{out}");
    assert!(
        out.contains("alert handshake failure") || out.contains("alert protocol version"),
        "expected a fatal alert from the server refusing {what}:\n{out}"
    );
    assert!(
        out.contains("Cipher is (NONE)"),
        "no cipher may be agreed:\n{out}"
    );
}

#[test]
fn tls11_is_refused_openssl_s_client() {
    let srv = start(ONE_SITE);
    let (ok, out) = openssl_old_version(srv.https, "-tls1_1");
    assert_refused_by_server(ok, &out, "TLS 1.1");
}

#[test]
fn tls10_is_refused_openssl_s_client() {
    let srv = start(ONE_SITE);
    let (ok, out) = openssl_old_version(srv.https, "-tls1");
    assert_refused_by_server(ok, &out, "TLS 1.0");
}

#[tokio::test]
async fn pq_hybrid_x25519mlkem768_is_negotiated_when_offered() {
    let srv = start(ONE_SITE);
    let mut opts = ClientOpts::default().tls13();
    opts.kx = Some(vec![kx_pq(), kx_x25519()]);
    let r = request(srv.https, opts.build(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.tls.kx, Some(NamedGroup::X25519MLKEM768));
}

#[tokio::test]
async fn pq_hybrid_is_preferred_by_default_rustls_client() {
    let srv = start(ONE_SITE);
    let r = request(
        srv.https,
        ClientOpts::default().build(),
        Some(ALPHA),
        Req::get(ALPHA, "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.tls.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(r.tls.kx, Some(NamedGroup::X25519MLKEM768));
}

#[tokio::test]
async fn x25519_is_negotiated_when_only_x25519_is_offered() {
    let srv = start(ONE_SITE);
    for opts in [ClientOpts::default().tls13(), ClientOpts::default().tls12()] {
        let mut opts = opts;
        opts.kx = Some(vec![kx_x25519()]);
        let r = request(srv.https, opts.build(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.tls.kx,
            Some(NamedGroup::X25519),
            "version {:?}",
            r.tls.version
        );
        assert_ne!(
            r.tls.kind,
            Some(HandshakeKind::FullWithHelloRetryRequest),
            "no HelloRetryRequest needed for X25519"
        );
    }
}

#[tokio::test]
async fn alpn_h2_is_negotiated_and_served_as_http2() {
    let srv = start(ONE_SITE);
    let r = get(srv.https, Some(ALPHA), "/", "h2").await;
    assert_eq!(r.tls.alpn.as_deref(), Some("h2"));
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from alpha");
}

#[tokio::test]
async fn alpn_http11_is_negotiated_and_served_as_http11() {
    let srv = start(ONE_SITE);
    let r = get(srv.https, Some(ALPHA), "/", "http/1.1").await;
    assert_eq!(r.tls.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn alpn_prefers_h2_when_client_offers_both() {
    let srv = start(ONE_SITE);
    let cfg = ClientOpts::default().alpn(&["h2", "http/1.1"]).build();
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.alpn.as_deref(), Some("h2"));
}

#[tokio::test]
async fn http2_disabled_negotiates_http11() {
    let srv = start(&format!("[http]\nhttp2 = false\n{ONE_SITE}"));
    let cfg = ClientOpts::default().alpn(&["h2", "http/1.1"]).build();
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn modern_profile_refuses_tls12() {
    let srv = start(&format!("[tls]\nprofile = \"modern\"\n{ONE_SITE}"));
    let err = tls_connect(
        srv.https,
        Some(ALPHA),
        ClientOpts::default().tls12().build(),
    )
    .await
    .expect_err("a TLS 1.2-only client must be refused by the modern profile");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::ProtocolVersion
        )),
        "{err}"
    );
    // TLS 1.3 still works.
    let r = request(
        srv.https,
        ClientOpts::default().tls13().build(),
        Some(ALPHA),
        Req::get(ALPHA, "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.tls.version, Some(ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn sni_selects_the_certificate_of_the_named_site() {
    let srv = start(THREE_SITES);
    for (sni, cn, body) in [
        (ALPHA, "alpha.test (ECDSA)", "alpha"),
        (ALPHA_WWW, "alpha.test (ECDSA)", "alpha"),
        (BETA, "beta.test (ECDSA)", "beta"),
    ] {
        // Strict verification: the presented chain is valid for the name.
        let r = request(
            srv.https,
            ClientOpts::default().build(),
            Some(sni),
            Req::get(sni, "/"),
        )
        .await
        .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert!(
            r.tls.leaf_subject().contains(&format!("CN={cn}")),
            "{sni}: got {}",
            r.tls.leaf_subject()
        );
        assert!(r.tls.leaf_sans().iter().any(|s| s == sni), "{sni}");
        assert_eq!(r.tls.chain.len(), 2, "leaf + intermediate are sent");
        assert_eq!(r.text(), body);
    }
}

#[tokio::test]
async fn wildcard_host_matches_one_label_subdomain() {
    let srv = start(THREE_SITES);
    let r = request(
        srv.https,
        ClientOpts::default().build(),
        Some("a.example.test"),
        Req::get("a.example.test", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.tls.leaf_sans(), vec![WILD.to_string()]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "wild");
}

#[tokio::test]
async fn client_without_sni_gets_the_default_site_certificate() {
    let srv = start(&format!("[tls]\ndefault_site = \"beta\"\n{THREE_SITES}"));
    // Connecting by IP address: rustls sends no SNI.
    let tls = tls_connect(
        srv.https,
        None,
        ClientOpts::default().no_name_check().build(),
    )
    .await
    .unwrap();
    let info = tls_info(&tls);
    assert!(
        info.leaf_subject().contains("CN=beta.test"),
        "no-SNI client must get the default site's (beta) certificate, got {}",
        info.leaf_subject()
    );
}

#[tokio::test]
async fn client_without_sni_gets_first_site_certificate_when_no_default_site_is_set() {
    let srv = start(THREE_SITES);
    let tls = tls_connect(
        srv.https,
        None,
        ClientOpts::default().no_name_check().build(),
    )
    .await
    .unwrap();
    assert!(tls_info(&tls).leaf_subject().contains("CN=alpha.test"));
}

#[tokio::test]
async fn unknown_sni_with_reject_gets_unrecognized_name_alert() {
    let srv = start(&format!("[tls]\nunknown_sni = \"reject\"\n{THREE_SITES}"));
    let err = tls_connect(
        srv.https,
        Some("nobody.invalid"),
        ClientOpts::default().no_name_check().build(),
    )
    .await
    .expect_err("handshake for an unknown name must fail");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::UnrecognisedName
        )),
        "{err:?}"
    );
    // Known names still work on the same server.
    let r = get(srv.https, Some(BETA), "/", "http/1.1").await;
    assert_eq!(r.text(), "beta");
}

#[tokio::test]
async fn unknown_sni_gets_default_certificate_by_default() {
    let srv = start(THREE_SITES);
    let tls = tls_connect(
        srv.https,
        Some("nobody.invalid"),
        ClientOpts::default().no_name_check().build(),
    )
    .await
    .expect("unknown_sni = default: the handshake completes with the default certificate");
    assert!(tls_info(&tls).leaf_subject().contains("CN=alpha.test"));
}

fn dual_cert_env() -> TestEnv {
    let env = TestEnv::new();
    let p = pki();
    env.write_chain("dual-ec", &p.leaf(&[ALPHA], Alg::Ecdsa));
    env.write_chain("dual-rsa", &p.leaf(&[ALPHA], Alg::Rsa));
    env
}

const DUAL_SITE: &str = r#"
[[site]]
name = "dual"
hosts = ["alpha.test"]
certs = [
  { cert = "certs/dual-ec.pem", key = "certs/dual-ec.key" },
  { cert = "certs/dual-rsa.pem", key = "certs/dual-rsa.key" },
]
[[site.route]]
path = "/"
respond = { body = "dual" }
"#;

#[tokio::test]
async fn dual_cert_site_serves_ecdsa_leaf_to_default_client() {
    let srv = dual_cert_env().start(DUAL_SITE);
    for opts in [ClientOpts::default().tls13(), ClientOpts::default().tls12()] {
        let r = request(srv.https, opts.build(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(r.tls.leaf_key_kind(), "EC", "{:?}", r.tls.version);
        assert_eq!(r.text(), "dual");
    }
}

#[tokio::test]
async fn dual_cert_site_serves_rsa_leaf_to_rsa_only_tls13_client() {
    let srv = dual_cert_env().start(DUAL_SITE);
    let mut opts = ClientOpts::default().tls13();
    opts.rsa_only = true;
    let r = request(srv.https, opts.build(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.leaf_key_kind(), "RSA");
    assert!(r.tls.leaf_subject().contains("(RSA)"));
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn dual_cert_site_serves_rsa_leaf_to_rsa_only_tls12_client() {
    let srv = dual_cert_env().start(DUAL_SITE);
    let mut opts = ClientOpts::default().tls12();
    opts.rsa_only = true;
    let r = request(srv.https, opts.build(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.leaf_key_kind(), "RSA");
    let suite = r.tls.cipher.unwrap();
    assert!(
        format!("{suite:?}").starts_with("TLS_ECDHE_RSA_WITH_"),
        "{suite:?}"
    );
    assert_ne!(suite, CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
}

/// Two connections with one client config (one session store): the second resumes.
async fn second_connection_resumes(body: &str, opts: ClientOpts) {
    let srv = start(body);
    let cfg = opts.build();
    let first = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(first.tls.kind, Some(HandshakeKind::Full));
    let second = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(
        second.tls.kind,
        Some(HandshakeKind::Resumed),
        "second handshake ({:?}) must resume",
        second.tls.version
    );
    assert_eq!(second.status, 200);
}

#[tokio::test]
async fn tls13_session_is_resumed() {
    second_connection_resumes(ONE_SITE, ClientOpts::default().tls13()).await;
}

#[tokio::test]
async fn tls12_session_is_resumed() {
    second_connection_resumes(ONE_SITE, ClientOpts::default().tls12()).await;
}

#[tokio::test]
async fn tls12_session_is_resumed_by_session_id_without_tickets() {
    second_connection_resumes(
        &format!("[tls]\nsession_tickets = false\n{ONE_SITE}"),
        ClientOpts::default().tls12(),
    )
    .await;
}

#[tokio::test]
async fn tls13_session_is_resumed_across_workers() {
    // Ticket keys are shared by all workers: several resumptions in a row all succeed,
    // whichever worker accepts the connection.
    let srv = start(ONE_SITE);
    let cfg = ClientOpts::default().tls13().build();
    request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    for i in 0..6 {
        let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(r.tls.kind, Some(HandshakeKind::Resumed), "connection {i}");
    }
}

#[tokio::test]
async fn handshake_timeout_closes_a_silent_tcp_connection() {
    let srv = start(&format!("[limits]\nhandshake_timeout = \"1s\"\n{ONE_SITE}"));
    let mut tcp = tokio::net::TcpStream::connect(srv.https).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let res = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    let elapsed = started.elapsed();
    match res {
        Err(_) => panic!("connection still open 5 s after connect (handshake_timeout = 1s)"),
        Ok(Ok(n)) => assert_eq!(n, 0, "expected the connection to be closed, got {n} bytes"),
        Ok(Err(_)) => {} // reset: closed as well
    }
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(3000),
        "closed after {elapsed:?}, expected about 1 s"
    );
}

#[tokio::test]
async fn handshake_timeout_closes_a_connection_stalled_mid_client_hello() {
    let srv = start(&format!("[limits]\nhandshake_timeout = \"1s\"\n{ONE_SITE}"));
    let mut tcp = tokio::net::TcpStream::connect(srv.https).await.unwrap();
    // The first bytes of a TLS record header announcing a 512-byte handshake message.
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert_ne!(closed, Closed::StillOpen, "still open after 5 s");
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "{:?}",
        started.elapsed()
    );
}

/// A site whose ACME certificate is not there yet refuses handshakes with an `internal_error`
/// alert, and the log says why (rate-limited), instead of a bare handshake failure.
#[test]
fn a_site_whose_certificate_is_pending_gets_a_clear_alert_and_log_line() {
    let env = TestEnv::new();
    // A CA that cannot be reached: the order never completes during the test.
    let cfg = env.write_config(
        "[acme]\nca = \"https://127.0.0.1:1/dir\"\n\
         [[site]]\nname = \"pending\"\nhosts = [\"pending.example\"]\nissuer = \"acme\"\n\
         [[site.route]]\npath = \"/\"\nrespond = { body = \"ok\" }\n",
    );
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let line = p.wait_for_line("listening on https://", Duration::from_secs(10));
    let addr = parse_listen_line(&line);
    for _ in 0..3 {
        let out = run_with_timeout(
            std::process::Command::new("openssl")
                .args(["s_client", "-servername", "pending.example", "-connect"])
                .arg(addr.to_string())
                .stdin(std::process::Stdio::null()),
            IO_TIMEOUT,
        );
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(all.contains("alert internal error"), "{all}");
    }
    let warn = p.wait_for_line(
        "certificate is still being obtained",
        Duration::from_secs(5),
    );
    assert!(warn.contains("site=\"pending\""), "{warn}");
    // Three refused handshakes, one warning.
    p.drain(Duration::from_millis(500));
    let n = p
        .stderr
        .iter()
        .filter(|l| l.contains("certificate is still being obtained"))
        .count();
    assert_eq!(n, 1, "{}", p.stderr.join("\n"));
}

/// An expired chain is never chosen while a valid one the client can use exists (caddy#7589):
/// the expired ECDSA chain would normally win over RSA.
#[tokio::test]
async fn an_expired_chain_is_passed_over_for_a_valid_one() {
    let env = TestEnv::new();
    let p = pki();
    env.write_chain("dual-ec", &p.expired_leaf(&[ALPHA]));
    env.write_chain("dual-rsa", &p.leaf(&[ALPHA], Alg::Rsa));
    let srv = env.start(DUAL_SITE);
    for opts in [ClientOpts::default().tls13(), ClientOpts::default().tls12()] {
        let r = request(srv.https, opts.build(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .expect("a verifying client gets the valid chain");
        assert_eq!(r.tls.leaf_key_kind(), "RSA");
        assert_eq!(r.text(), "dual");
    }
}

/// Counts the TLS 1.3 tickets a client is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, n: rustls::pki_types::ServerName<'static>, g: NamedGroup) {
        self.inner.set_kx_hint(n, g)
    }
    fn kx_hint(&self, n: &rustls::pki_types::ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(n)
    }
    fn set_tls12_session(
        &self,
        n: rustls::pki_types::ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(n, v)
    }
    fn tls12_session(
        &self,
        n: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(n)
    }
    fn remove_tls12_session(&self, n: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(n)
    }
    fn insert_tls13_ticket(
        &self,
        n: rustls::pki_types::ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(n, v)
    }
    fn take_tls13_ticket(
        &self,
        n: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(n)
    }
}

/// One TLS 1.3 ticket per handshake (full or resumed), and the resumption still works.
#[tokio::test]
async fn one_tls13_ticket_is_sent_per_handshake() {
    let srv = start(ONE_SITE);
    let store = std::sync::Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(32),
        tickets: Default::default(),
    });
    let mut cfg = (*ClientOpts::default().tls13().build()).clone();
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    let cfg = std::sync::Arc::new(cfg);
    let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.kind, Some(HandshakeKind::Full));
    assert_eq!(store.tickets.load(std::sync::atomic::Ordering::SeqCst), 1);
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/"))
        .await
        .unwrap();
    assert_eq!(r.tls.kind, Some(HandshakeKind::Resumed));
    assert_eq!(store.tickets.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// The worker threads of this process (`portcullis-w<n>`), by worker number: thread ids.
fn worker_threads() -> Vec<rustix::thread::Pid> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Some(n) = comm.trim().strip_prefix("portcullis-w") {
            let tid: i32 = task.file_name().to_string_lossy().parse().unwrap();
            found.push((
                n.parse::<usize>().unwrap(),
                rustix::thread::Pid::from_raw(tid).unwrap(),
            ));
        }
    }
    found.sort_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, tid)| tid).collect()
}

/// CPU time (user + system, clock ticks) each thread has used so far.
fn cpu_ticks(tids: &[rustix::thread::Pid]) -> Vec<u64> {
    tids.iter()
        .map(|tid| {
            let stat =
                std::fs::read_to_string(format!("/proc/self/task/{}/stat", tid.as_raw_nonzero()))
                    .unwrap();
            portcullis::server::placement::own_ticks(&stat).unwrap()
        })
        .collect()
}

/// Full handshakes + GET, one at a time, until the workers together used `ticks` more CPU
/// ticks (at most 20 s); returns each worker's share of them. Every request must succeed.
async fn load_until(srv: &TestServer, tids: &[rustix::thread::Pid], ticks: u64) -> Vec<u64> {
    let cfg = ClientOpts::default().tls13().build();
    let before = cpu_ticks(tids);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..50 {
            let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
        let used: Vec<u64> = cpu_ticks(tids)
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        if used.iter().sum::<u64>() >= ticks || Instant::now() > deadline {
            return used;
        }
    }
}

/// Sets every worker's affinity to `cpus`, then makes connections (all must succeed) until
/// `accepting` workers take new ones: the affinity is re-read on accepts, at most every 100 ms.
async fn set_worker_affinity(
    srv: &TestServer,
    tids: &[rustix::thread::Pid],
    cpus: &rustix::thread::CpuSet,
    accepting: usize,
) {
    for tid in tids {
        rustix::thread::sched_setaffinity(Some(*tid), cpus).unwrap();
    }
    let placement = &srv.server.as_ref().unwrap().state().placement;
    let cfg = ClientOpts::default().tls13().build();
    let deadline = Instant::now() + Duration::from_secs(10);
    while placement.accepting() != accepting {
        assert!(
            Instant::now() < deadline,
            "{accepting} worker(s) accepting 10 s after the affinity became {cpus:?}"
        );
        let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Busy loops at the lowest priority, one per CPU this process may use; killed on drop.
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start(n: usize) -> Self {
        CpuHogs(
            (0..n)
                .map(|_| {
                    std::process::Command::new("nice")
                        .args(["-n", "19", "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .expect("nice and sh")
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// When other processes keep the CPUs busy (here: a busy loop per CPU, as a load generator or a
/// backend on the same machine would), one worker takes the new connections, and the others'
/// listening sockets move to it; no connection is lost on the way. (The way back, when the
/// CPUs are free again, is the affinity test's: other tests running beside this one keep the
/// CPUs too busy to check it here.)
#[tokio::test]
async fn workers_taking_connections_concentrate_when_other_processes_use_the_cpus() {
    let cpus = rustix::thread::sched_getaffinity(None).unwrap().count() as usize;
    if cpus < 2 {
        eprintln!("only one CPU here: nothing to concentrate");
        return;
    }
    let srv = start(ONE_SITE);
    let placement = &srv.server.as_ref().unwrap().state().placement;
    let cfg = ClientOpts::default().tls13().build();
    assert_eq!(placement.accepting(), 2, "both workers accept at first");
    let _hogs = CpuHogs::start(cpus);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = 0;
    while placement.accepting() != 1 {
        assert!(
            Instant::now() < deadline,
            "still {} workers accepting 15 s after {cpus} busy loops started ({served} requests)",
            placement.accepting()
        );
        let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The moved socket is served by the accepting worker.
    for _ in 0..20 {
        let r = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, "/"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
}

/// With their CPU affinity narrowed to one CPU (as `taskset -a -p` does to a running server),
/// only one worker takes new connections: the other's listening socket moves to it. When the
/// affinity widens again, the socket moves back and both workers share the connections. No
/// connection is lost on the way.
#[tokio::test]
async fn workers_taking_connections_follow_their_cpu_affinity() {
    use rustix::thread::{sched_getaffinity, CpuSet};
    let srv = start(ONE_SITE);
    // Affinity alone: other tests running beside this one must not make it concentrate.
    srv.server
        .as_ref()
        .unwrap()
        .state()
        .placement
        .follow_load(false);
    // A thread names itself once it runs: wait for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tids = worker_threads();
    while tids.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tids = worker_threads();
    }
    assert_eq!(tids.len(), 2, "two worker threads");
    let own = sched_getaffinity(None).unwrap();
    let first = (0..CpuSet::MAX_CPU).find(|&c| own.is_set(c)).unwrap();
    let mut one = CpuSet::new();
    one.set(first);
    set_worker_affinity(&srv, &tids, &one, 1).await;
    let used = load_until(&srv, &tids, 30).await;
    assert!(
        used[0] >= 20 && used[1] * 10 <= used[0],
        "worker 0 alone takes the connections on one CPU: ticks used {used:?}"
    );

    if own.count() < 2 {
        eprintln!("only one CPU here: the widening half of this test is skipped");
        return;
    }
    set_worker_affinity(&srv, &tids, &own, 2).await;
    let used = load_until(&srv, &tids, 40).await;
    let total = used[0] + used[1];
    assert!(
        total >= 20 && used[1] * 5 >= total && used[0] * 5 >= total,
        "both workers take connections again: ticks used {used:?}"
    );
}

/// A ClientHello that arrives in pieces (three TCP segments, 50 ms apart) is put together:
/// after each short read the server waits for the next piece.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_hello_in_pieces_completes_the_handshake() {
    let srv = start(THREE_SITES);
    let addr = srv.https;
    let cfg = ClientOpts::default().build();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let name = rustls::pki_types::ServerName::try_from("alpha.test").unwrap();
        let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).unwrap();
        }
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let third = hello.len() / 3;
        for piece in hello.chunks(third) {
            tcp.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        conn.writer()
            .write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        rustls::Stream::new(&mut conn, &mut tcp)
            .read_to_end(&mut out)
            .expect("handshake, response and a clean close");
        out
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("alpha"), "{text}");
}
