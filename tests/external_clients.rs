//! Real-world clients against the in-process server: curl (HTTP/1.1 and HTTP/2), nghttp and
//! openssl s_client. These tools are required: a missing tool FAILS the test (CI installs
//! them: curl, nghttp2-client, openssl).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SITE: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/hello"
respond = { status = 200, body = "hello from alpha" }
"#;

const T: Duration = Duration::from_secs(20);

fn curl(srv: &TestServer, extra: &[&str], url: &str) -> (String, String, std::process::Output) {
    let curl = require_tool("curl");
    let body_file = srv.env.path("curl-body");
    let out = run_with_timeout(
        Command::new(curl)
            .args(["-sS", "--max-time", "15", "--cacert"])
            .arg(srv.env.path("certs/root.pem"))
            .args([
                "--resolve",
                &format!("alpha.test:{}:127.0.0.1", srv.https.port()),
            ])
            .args(extra)
            .args(["-w", "%{http_code} %{http_version}", "-o"])
            .arg(&body_file)
            .arg(url),
        T,
    );
    let body = std::fs::read_to_string(&body_file).unwrap_or_default();
    (text(&out.stdout), body, out)
}

#[test]
fn curl_http11_gets_200_over_http11() {
    let srv = start(SITE);
    let url = format!("https://alpha.test:{}/hello", srv.https.port());
    let (w, body, out) = curl(&srv, &["--http1.1"], &url);
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    assert_eq!(w, "200 1.1");
    assert_eq!(body, "hello from alpha");
}

#[test]
fn curl_http2_gets_200_over_http2() {
    let srv = start(SITE);
    let url = format!("https://alpha.test:{}/hello", srv.https.port());
    let (w, body, out) = curl(&srv, &["--http2"], &url);
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    assert_eq!(w, "200 2");
    assert_eq!(body, "hello from alpha");
}

#[test]
fn curl_follows_port80_redirect_to_https() {
    let srv = start(SITE);
    let http = srv.http();
    let url = format!("http://alpha.test:{}/hello", http.port());
    let resolve_http = format!("alpha.test:{}:127.0.0.1", http.port());
    let (w, body, out) = curl(&srv, &["-L", "--resolve", &resolve_http], &url);
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    assert!(w.starts_with("200 "), "{w}");
    assert_eq!(body, "hello from alpha");
}

#[test]
fn curl_tls13_http2_verifies_chain_and_name() {
    // curl verifies the chain (leaf + intermediate sent by the server) and the name.
    let srv = start(SITE);
    let url = format!("https://alpha.test:{}/hello", srv.https.port());
    let (w, _, out) = curl(&srv, &["--http2", "--tlsv1.3"], &url);
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    assert_eq!(w, "200 2");
}

fn nghttp(srv: &TestServer, extra: &[&str], path: &str) -> (bool, String) {
    let nghttp = require_tool("nghttp");
    // By IP: nghttp sends no SNI (default site); :authority names the site.
    let url = format!("https://127.0.0.1:{}{path}", srv.https.port());
    let out = run_with_timeout(
        Command::new(nghttp)
            .args(["-nv", "-t", "15", "-H", ":authority: alpha.test"])
            .args(extra)
            .arg(&url),
        T,
    );
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn nghttp_negotiates_h2_and_gets_200() {
    let srv = start(SITE);
    let (ok, out) = nghttp(&srv, &[], "/hello");
    assert!(ok, "nghttp failed:\n{out}");
    assert!(out.contains("recv SETTINGS frame"), "{out}");
    assert!(out.contains("negotiated protocol: h2"), "{out}");
    assert!(out.contains(":status: 200"), "{out}");
}

#[test]
fn nghttp_head_gets_content_length_and_no_data() {
    let srv = start(SITE);
    let (ok, out) = nghttp(&srv, &["-H", ":method: HEAD"], "/hello");
    assert!(ok, "nghttp failed:\n{out}");
    assert!(out.contains(":status: 200"), "{out}");
    assert!(out.contains("content-length: 16"), "{out}");
    let data_with_payload = out
        .lines()
        .filter(|l| l.contains("recv DATA frame"))
        .filter(|l| !l.contains("<length=0,"))
        .count();
    assert_eq!(data_with_payload, 0, "HEAD response carried DATA:\n{out}");
}

fn s_client(srv: &TestServer, extra: &[&str]) -> (bool, String) {
    let openssl = require_tool("openssl");
    let out = run_with_timeout(
        Command::new(openssl)
            .args(["s_client", "-connect", &srv.https.to_string()])
            .args(["-servername", ALPHA, "-verify_return_error", "-CAfile"])
            .arg(srv.env.path("certs/root.pem"))
            .args(extra),
        T,
    );
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn openssl_s_client_tls12_connects_and_verifies() {
    let srv = start(SITE);
    let (ok, out) = s_client(&srv, &["-tls1_2"]);
    assert!(ok, "s_client failed:\n{out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("Cipher is ECDHE-ECDSA-"), "{out}");
}

#[test]
fn openssl_s_client_tls13_connects_and_verifies() {
    let srv = start(SITE);
    let (ok, out) = s_client(&srv, &["-tls1_3"]);
    assert!(ok, "s_client failed:\n{out}");
    // OpenSSL prints the "SSL-Session: Protocol : TLSv1.3" block only once a session ticket
    // has arrived, which s_client may not wait for; the "New, TLSv1.3" line is always there.
    assert!(
        out.contains("New, TLSv1.3, Cipher is TLS_") || out.contains("Protocol  : TLSv1.3"),
        "{out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}

#[test]
fn openssl_s_client_negotiates_alpn_h2() {
    let srv = start(SITE);
    let (ok, out) = s_client(&srv, &["-alpn", "h2,http/1.1"]);
    assert!(ok, "s_client failed:\n{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
}

#[test]
fn openssl_s_client_tls11_fails() {
    let srv = start(SITE);
    let (ok, out) = s_client(&srv, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok, "TLS 1.1 must be refused:\n{out}");
    assert!(
        out.contains("alert"),
        "the server must answer with an alert:\n{out}"
    );
    assert!(out.contains("Cipher is (NONE)"), "{out}");
}
