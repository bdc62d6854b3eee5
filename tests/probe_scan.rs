//! `portcullis probe`'s scan of protocol versions, cipher suites and key-exchange groups,
//! against Debian's `openssl s_server` configured the ways that break browsers (TLS 1.0 only,
//! static RSA key exchange only) and against healthy rustls servers and portcullis itself.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::probe::*;
use common::*;
use serde_json::{json, Value};

/// A running `openssl s_server`, killed when dropped (with the directory holding its key).
struct OpensslServer {
    child: Child,
    addr: SocketAddr,
    _env: TestEnv,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `openssl s_server -www` with `leaf` (and the test intermediate) and `args` on a free
/// loopback port, and waits until it accepts connections.
fn openssl_server(leaf: &Leaf, args: &[&str]) -> OpensslServer {
    let openssl = require_tool("openssl");
    let env = TestEnv::new();
    let cert = env.write("cert.pem", &leaf.cert_pem);
    let chain = env.write("chain.pem", &pki().inter_pem);
    let key = env.write("key.pem", &leaf.key_pem);
    // s_server cannot be handed a socket: take a free port and retry if another process got
    // it first.
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new(&openssl)
            .arg("s_server")
            .arg("-accept")
            .arg(addr.to_string())
            .arg("-cert")
            .arg(&cert)
            .arg("-cert_chain")
            .arg(&chain)
            .arg("-key")
            .arg(&key)
            .args(["-www", "-quiet"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_server starts");
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return OpensslServer {
                    child,
                    addr,
                    _env: env,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "openssl s_server on {addr} did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    panic!("openssl s_server {args:?} never accepted connections");
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_tls10_only_server_is_a_version_mismatch_for_browsers() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Rsa);
    let srv = openssl_server(&leaf, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    let (target, ip) = at(srv.addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(r["facts"]["versions_accepted"], json!(["TLSv1.0"]), "{r:#}");
    let c = check(&r, "tls.versions", "error");
    assert_eq!(c["browser_error"], "ERR_SSL_VERSION_OR_CIPHER_MISMATCH");
    let s = c["summary"].as_str().unwrap();
    assert!(s.contains("no version current browsers speak"), "{s}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("ssl_protocols TLSv1.2 TLSv1.3"),
        "{c}"
    );
    // rustls's own handshake fails: the scan is what says why.
    check(&r, "tls", "error");
    // Suites were listed for TLS 1.0 only; all of them CBC.
    let ciphers = r["facts"]["ciphers"].as_object().unwrap();
    assert_eq!(ciphers.keys().collect::<Vec<_>>(), ["TLSv1.0"], "{r:#}");
    assert!(
        strings(&ciphers["TLSv1.0"])
            .iter()
            .all(|s| s.contains("_CBC_")),
        "{r:#}"
    );
    assert!(r["took_ms"].as_u64().unwrap() < 3000, "{r:#}");
}

#[tokio::test]
async fn static_rsa_key_exchange_only_has_no_forward_secrecy_and_no_browser_suite() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Rsa);
    let srv = openssl_server(
        &leaf,
        &["-tls1_2", "-cipher", "AES128-GCM-SHA256:AES256-SHA"],
    );
    let (target, ip) = at(srv.addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(r["facts"]["versions_accepted"], json!(["TLSv1.2"]));
    // No -serverpref: OpenSSL takes the client's order.
    assert_eq!(
        r["facts"]["ciphers"],
        json!({"TLSv1.2": ["TLS_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_256_CBC_SHA"]})
    );
    assert_eq!(r["facts"]["server_preference"], false);
    let c = check(&r, "tls.ciphers", "error");
    // Chrome dropped static RSA key exchange: nothing left for it.
    assert_eq!(c["browser_error"], "ERR_SSL_VERSION_OR_CIPHER_MISMATCH");
    let s = c["summary"].as_str().unwrap();
    assert!(s.contains("no forward secrecy"), "{s}");
    assert!(
        s.contains("CBC suites: TLS_RSA_WITH_AES_256_CBC_SHA"),
        "{s}"
    );
    assert!(c["fix"].as_str().unwrap().contains("ECDHE+AESGCM"), "{c}");
    // Weak suites and the client's order: a warning of its own.
    check(&r, "tls.preference", "warning");
    // TLS 1.2 only: no TLS 1.3 is a warning; no ECDHE, no groups.
    check(&r, "tls.versions", "warning");
    assert_eq!(r["facts"]["groups"], json!({"TLSv1.2": []}));
    assert_eq!(r["facts"]["pq_hybrid"], false);
}

/// What a healthy rustls (aws-lc-rs) server accepts: TLS 1.2 and 1.3, ECDHE + AEAD, and
/// the post-quantum hybrid.
fn assert_healthy(r: &Value, tls12: &[&str], tls13: &[&str]) {
    assert_eq!(
        r["facts"]["versions_accepted"],
        json!(["TLSv1.2", "TLSv1.3"]),
        "{r:#}"
    );
    assert_eq!(
        r["facts"]["ciphers"],
        json!({"TLSv1.2": tls12, "TLSv1.3": tls13}),
        "{r:#}"
    );
    assert_eq!(
        r["facts"]["groups"],
        json!({
            "TLSv1.3": ["X25519MLKEM768", "x25519", "secp256r1", "secp384r1"],
            "TLSv1.2": ["x25519", "secp256r1", "secp384r1"],
        }),
        "{r:#}"
    );
    assert_eq!(r["facts"]["pq_hybrid"], true);
    check(r, "tls.versions", "ok");
    check(r, "tls.ciphers", "ok");
    check(r, "tls.preference", "ok");
    let g = check(r, "tls.groups", "ok");
    assert!(
        g["summary"]
            .as_str()
            .unwrap()
            .contains("X25519MLKEM768 supported"),
        "{g}"
    );
}

#[tokio::test]
async fn healthy_rustls_servers_and_portcullis_accept_only_modern_suites() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    // The test server takes the client's order: the scan's (strongest first).
    assert_healthy(
        &r,
        &[
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ],
        &[
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
        ],
    );
    assert_eq!(r["facts"]["server_preference"], false);

    // portcullis: its own order (tls.prefer_server_cipher_order, on by default).
    let srv = start(&format!("{ONE_SITE}[site.hsts]\nenabled = true\n"));
    let (target, ip) = at(srv.https);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    assert_healthy(
        &r,
        &[
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ],
        &[
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
        ],
    );
    assert_eq!(r["facts"]["server_preference"], true, "{r:#}");
    let c = check(&r, "tls.preference", "ok");
    assert!(
        c["summary"].as_str().unwrap().contains("its own order"),
        "{c}"
    );
}

#[tokio::test]
async fn an_sslv3_hello_to_servers_that_refuse_it_is_a_clean_no() {
    let p = pki();
    let leaf = p.leaf(&[ALPHA], Alg::Ecdsa);
    // rustls.
    let addr = tls_server(&p.chain_pem(&leaf), &leaf.key_pem).await;
    let (target, ip) = at(addr);
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    assert_eq!(code, 0, "{r:#}");
    let answer = r["facts"]["version_answers"]["SSLv3"].as_str().unwrap();
    assert!(answer.starts_with("refused"), "{answer}");
    // OpenSSL, TLS 1.2 only (its SSLv3 is compiled out).
    let leaf = p.leaf(&[ALPHA], Alg::Rsa);
    let srv = openssl_server(&leaf, &["-tls1_2"]);
    let (target, ip) = at(srv.addr);
    let started = Instant::now();
    let (code, r) = probe(&target, &["--ip", &ip]).await;
    // TLS 1.2 only: no TLS 1.3 is a warning, nothing worse.
    assert_eq!(code, 1, "{r:#}");
    let answer = r["facts"]["version_answers"]["SSLv3"].as_str().unwrap();
    // OpenSSL says handshake_failure (an SSLv3 hello offers nothing it can use).
    assert!(answer.starts_with("refused: alert "), "{r:#}");
    assert_eq!(r["facts"]["versions_accepted"], json!(["TLSv1.2"]));
    let c = check(&r, "tls.versions", "warning");
    assert!(
        c["summary"].as_str().unwrap().contains("refused: SSLv3"),
        "{c}"
    );
    // No hang: far below the 3 s per-question timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
