//! The logs end to end: access-log lines (JSON and combined) for ready and proxied answers over
//! HTTP/1.1 and HTTP/2 with their TLS facts, the request id shared with error pages, the TLS
//! event log for failed handshakes (each reason, with what the client offered), plain HTTP
//! sent to the HTTPS port, rate limiting under a flood, SIGUSR1 reopening files, and the
//! config's errors.
//!
//! The event log and the line budgets are process-wide: every test here runs in its own
//! process (cargo nextest).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::backends::Backend;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The lines of `path` once `done` says they are all there (10 s at most).
fn lines_when(path: &Path, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if done(&lines) {
            return lines;
        }
        if Instant::now() > deadline {
            panic!(
                "{}: not there in 10 s; lines so far:\n{}",
                path.display(),
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON lines of `path`, once there are `n`.
fn json_lines(path: &Path, n: usize) -> Vec<Value> {
    lines_when(path, |l| l.len() >= n)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The events of the event log whose `reason` (or `event`) is `what`, once there is one.
fn events_with(path: &Path, key: &str, what: &str) -> Vec<Value> {
    let lines = lines_when(path, |l| {
        l.iter()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v[key] == what))
    });
    lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v[key] == what)
        .collect()
}

fn is_time(v: &Value) -> bool {
    let re = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$").unwrap();
    v.as_str().is_some_and(|s| re.is_match(s))
}

fn is_request_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

const LOGGED_SITE: &str = r#"
[log]
access_log = { format = "json", file = "logs/access.log" }

[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
respond = { status = 200, body = "hello from alpha", content_type = "text/plain; charset=utf-8" }
"#;

fn env_with_logs() -> TestEnv {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("logs")).unwrap();
    env
}

#[tokio::test]
async fn json_access_log_has_every_field_over_h1_and_h2_and_resumption() {
    let srv = env_with_logs().start(LOGGED_SITE);
    let log = srv.env.path("logs/access.log");
    // One client config (one session store): the second connection resumes.
    let h1 = ClientOpts::default().tls13().build();
    let req = || {
        Req::get("alpha.test", "/some/path?q=1")
            .header("user-agent", "logs-test/1.0")
            .header("referer", "https://ref.test/from")
    };
    let r1 = request(srv.https, h1.clone(), Some("alpha.test"), req())
        .await
        .unwrap();
    assert_eq!(r1.status, 200);
    let r2 = request(srv.https, h1.clone(), Some("alpha.test"), req())
        .await
        .unwrap();
    assert_eq!(r2.tls.kind, Some(rustls::HandshakeKind::Resumed));
    let h2 = ClientOpts::default().alpn(&["h2"]).build();
    let r3 = request(
        srv.https,
        h2,
        Some("alpha.test"),
        req().method(http::Method::HEAD),
    )
    .await
    .unwrap();
    assert_eq!(r3.status, 200);

    let lines = json_lines(&log, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert!(is_time(&l["time"]), "time: {l}");
        assert_eq!(l["client"], "127.0.0.1");
        assert_eq!(l["scheme"], "https");
        assert_eq!(l["site"], "alpha");
        assert_eq!(l["host"], "alpha.test");
        assert_eq!(l["path"], "/some/path?q=1");
        assert_eq!(l["status"], 200);
        assert!(
            l["request_time"]
                .as_f64()
                .is_some_and(|t| (0.0..5.0).contains(&t)),
            "{l}"
        );
        assert!(is_request_id(&l["request_id"]), "{l}");
        assert_eq!(l["user_agent"], "logs-test/1.0");
        assert_eq!(l["referer"], "https://ref.test/from");
        assert_eq!(l["early_data"], false);
        assert!(
            l.get("backend").is_none() && l.get("upstream_time").is_none(),
            "{l}"
        );
        let tls = &l["tls"];
        assert_eq!(tls["version"], "TLSv1.3", "{l}");
        assert!(tls["cipher"].as_str().unwrap().starts_with("TLS13_"), "{l}");
        assert_eq!(tls["group"], "X25519MLKEM768", "{l}");
        assert_eq!(tls["sni"], "alpha.test");
        assert_eq!(tls["resumed"], i == 1, "line {i}: {l}");
    }
    let (a, b, c) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["protocol"], "HTTP/1.1");
    assert_eq!(a["bytes"], 16, "{a}");
    assert_eq!(a["tls"]["alpn"], "http/1.1");
    assert_eq!(b["bytes"], 16);
    assert_eq!(c["method"], "HEAD");
    assert_eq!(c["protocol"], "HTTP/2.0");
    assert_eq!(c["bytes"], 0, "HEAD sends no body: {c}");
    assert_eq!(c["tls"]["alpn"], "h2");
    assert_ne!(a["request_id"], b["request_id"]);
}

#[tokio::test]
async fn error_pages_show_the_request_id_of_their_log_line() {
    let srv = env_with_logs().start(LOGGED_SITE);
    let cfg = ClientOpts::default().no_name_check().build();
    // A Host no site serves, on alpha's connection: 421.
    let r = request(
        srv.https,
        cfg,
        Some("alpha.test"),
        Req::get("nobody.test", "/x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
    let id = r
        .header("x-request-id")
        .expect("x-request-id on the error page")
        .to_owned();
    assert!(
        r.text().contains(&format!("Request id: {id}")),
        "{}",
        r.text()
    );
    let l = &json_lines(&srv.env.path("logs/access.log"), 1)[0];
    assert_eq!(l["request_id"], id.as_str());
    assert_eq!(l["status"], 421);
    assert_eq!(l["host"], "nobody.test");
    assert_eq!(l["bytes"], r.body.len());
}

#[tokio::test]
async fn without_access_log_error_pages_have_no_request_id() {
    let srv = start(ONE_SITE);
    let cfg = ClientOpts::default().no_name_check().build();
    let r = request(
        srv.https,
        cfg,
        Some("alpha.test"),
        Req::get("nobody.test", "/x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
    assert_eq!(r.header("x-request-id"), None);
    assert!(!r.text().contains("Request id"));
}

#[tokio::test]
async fn combined_format_per_site_and_off_for_another() {
    let env = env_with_logs();
    let srv = env.start(
        r#"
[log]
access_log = { format = "json", file = "logs/default.log" }

[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
access_log = { format = "combined", file = "logs/alpha.log" }
[[site.route]]
path = "/"
respond = { body = "alpha" }

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
access_log = "off"
[[site.route]]
path = "/"
respond = { body = "beta" }
"#,
    );
    let cfg = ClientOpts::default().build();
    let r = request(
        srv.https,
        cfg.clone(),
        Some("alpha.test"),
        Req::get("alpha.test", "/p?q=1")
            .header("user-agent", "agent \"quoted\"/1")
            .header("referer", "https://ref.test/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = request(
        srv.https,
        cfg.clone(),
        Some("beta.test"),
        Req::get("beta.test", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // Port 80 goes to the [log] default log.
    let mut tcp = TcpStream::connect(srv.http()).await.unwrap();
    tcp.write_all(b"GET /old HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 30"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let alpha = lines_when(&srv.env.path("logs/alpha.log"), |l| !l.is_empty());
    assert_eq!(alpha.len(), 1, "{alpha:?}");
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /p\?q=1 HTTP/1\.1" 200 5 "https://ref\.test/" "agent \\x22quoted\\x22/1"$"#,
    )
    .unwrap();
    assert!(re.is_match(&alpha[0]), "combined line: {}", alpha[0]);
    let default = json_lines(&srv.env.path("logs/default.log"), 1);
    assert_eq!(
        default.len(),
        1,
        "beta is off; only port 80 here: {default:?}"
    );
    assert_eq!(default[0]["scheme"], "http");
    assert_eq!(default[0]["site"], "-");
    assert_eq!(default[0]["path"], "/old");
    assert!(default[0]["status"]
        .as_u64()
        .is_some_and(|s| s == 301 || s == 308));
    assert!(default[0].get("tls").is_none());
}

#[tokio::test]
async fn proxied_requests_log_backend_upstream_time_and_the_id_the_backend_got() {
    let b = Backend::h1("b1");
    let env = env_with_logs();
    let srv = env.start(&format!(
        r#"
[log]
access_log = {{ file = "logs/access.log" }}

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
proxy = {{ upstreams = [{{ url = "{}" }}] }}
"#,
        b.url()
    ));
    for alpn in ["http/1.1", "h2"] {
        let cfg = ClientOpts::default().alpn(&[alpn]).build();
        let r = request(
            srv.https,
            cfg.clone(),
            Some("alpha.test"),
            Req::get("alpha.test", "/slow/150"),
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "slow"));
        let r = request(
            srv.https,
            cfg,
            Some("alpha.test"),
            Req::get("alpha.test", "/headers"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let sent_id = r
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: ").map(str::to_owned))
            .expect("the backend got an X-Request-Id");
        let lines = json_lines(
            &srv.env.path("logs/access.log"),
            if alpn == "h2" { 4 } else { 2 },
        );
        let (slow, headers) = if alpn == "h2" {
            (&lines[2], &lines[3])
        } else {
            (&lines[0], &lines[1])
        };
        let backend = b.addr.unwrap().to_string();
        for l in [slow, headers] {
            assert_eq!(l["backend"], backend.as_str(), "{l}");
            assert_eq!(l["site"], "alpha");
            assert_eq!(l["status"], 200);
            assert_eq!(l["tls"]["alpn"], alpn);
        }
        let up = slow["upstream_time"].as_f64().unwrap();
        let total = slow["request_time"].as_f64().unwrap();
        assert!((0.15..5.0).contains(&up), "upstream_time {up}");
        assert!(total >= up, "request_time {total} < upstream_time {up}");
        assert_eq!(slow["bytes"], 4);
        assert_eq!(
            headers["request_id"],
            sent_id.as_str(),
            "the backend saw the logged id"
        );
        assert_eq!(headers["bytes"], r.body.len());
    }
    // A backend that is gone: the proxy's 502 page and the log line share the id.
    let backend_addr = b.addr.unwrap().to_string();
    drop(b);
    let cfg = ClientOpts::default().build();
    let r = request(
        srv.https,
        cfg,
        Some("alpha.test"),
        Req::get("alpha.test", "/gone"),
    )
    .await
    .unwrap();
    assert!(r.status == 502 || r.status == 503, "{}", r.status);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(r.text().contains(&id));
    let lines = json_lines(&srv.env.path("logs/access.log"), 5);
    assert_eq!(lines[4]["request_id"], id.as_str());
    assert_eq!(
        lines[4]["backend"],
        backend_addr.as_str(),
        "the backend that failed"
    );
    assert_eq!(lines[4]["status"], r.status);
}

// =============================================================================================
// TLS events
// =============================================================================================

fn events_config(extra: &str) -> String {
    format!(
        "[log]\ntls_events = \"logs/tls.log\"\n{extra}\n{}",
        common::ONE_SITE
    )
}

#[tokio::test]
async fn unknown_sni_event_names_what_the_client_offered() {
    let srv = env_with_logs().start(&events_config("[tls]\nunknown_sni = \"reject\""));
    let cfg = ClientOpts::default().build();
    let err = request(
        srv.https,
        cfg,
        Some("nope.test"),
        Req::get("nope.test", "/"),
    )
    .await
    .unwrap_err();
    assert!(err.contains("TLS connect"), "{err}");
    let ev = &events_with(&srv.env.path("logs/tls.log"), "reason", "unknown_sni")[0];
    assert!(is_time(&ev["time"]));
    assert_eq!(ev["event"], "handshake_failed");
    assert!(
        ev["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ev}"
    );
    assert_eq!(ev["sni"], "nope.test");
    assert_eq!(ev["detail"], "unknown SNI name: no site serves it");
    assert_eq!(
        ev["offered_versions"],
        serde_json::json!(["TLSv1.3", "TLSv1.2"])
    );
    let groups: Vec<&str> = ev["offered_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(groups[0], "X25519MLKEM768", "{ev}");
    assert!(groups.contains(&"X25519"), "{ev}");
    assert_eq!(ev["offered_alpn"], serde_json::json!(["http/1.1"]));
    assert!(ev["offered_cipher_suites"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "TLS13_AES_128_GCM_SHA256"));
    // The certificates served from the start are events too.
    let loaded = &events_with(&srv.env.path("logs/tls.log"), "event", "certificate_loaded")[0];
    assert_eq!(loaded["site"], "alpha");
    assert_eq!(loaded["source"], "file");
    assert_eq!(
        loaded["names"],
        serde_json::json!(["alpha.test", "www.alpha.test"])
    );
    assert!(loaded["not_after"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn static_file_error_pages_show_the_request_id_too() {
    let env = env_with_logs();
    env.write("www/index.html", "hi");
    let srv = env.start(
        r#"
[log]
access_log = { file = "logs/access.log" }

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
root = "www"
"#,
    );
    let r = get(srv.https, Some("alpha.test"), "/missing.html", "h2").await;
    assert_eq!(r.status, 404);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(r.text(), format!("404 Not Found\nRequest id: {id}\n"));
    let l = &json_lines(&srv.env.path("logs/access.log"), 1)[0];
    assert_eq!(
        (l["request_id"].as_str(), &l["status"]),
        (Some(id.as_str()), &Value::from(404))
    );
    assert_eq!(l["bytes"], r.body.len());
}

#[tokio::test]
async fn no_shared_version_event() {
    let srv = env_with_logs().start(&events_config("[tls]\nprofile = \"modern\""));
    let cfg = ClientOpts::default().tls12().build();
    request(
        srv.https,
        cfg,
        Some("alpha.test"),
        Req::get("alpha.test", "/"),
    )
    .await
    .unwrap_err();
    let ev = &events_with(&srv.env.path("logs/tls.log"), "reason", "no_shared_version")[0];
    assert_eq!(ev["sni"], "alpha.test");
    assert_eq!(ev["offered_versions"], serde_json::json!(["TLSv1.2"]));
    assert!(ev["detail"]
        .as_str()
        .unwrap()
        .starts_with("no shared TLS version"));
}

#[tokio::test]
async fn no_shared_cipher_suite_event() {
    let srv = env_with_logs().start(&events_config(""));
    // TLS 1.2 with RSA key exchange suites only, against an ECDSA certificate.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().root_der.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    request(
        srv.https,
        std::sync::Arc::new(cfg),
        Some("alpha.test"),
        Req::get("alpha.test", "/"),
    )
    .await
    .unwrap_err();
    let ev = &events_with(
        &srv.env.path("logs/tls.log"),
        "reason",
        "no_shared_cipher_suite",
    )[0];
    assert_eq!(ev["detail"], "no shared cipher suite");
    assert_eq!(
        ev["offered_cipher_suites"],
        serde_json::json!([
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"
        ])
    );
    assert_eq!(ev["offered_versions"], serde_json::json!(["TLSv1.2"]));
}

#[tokio::test]
async fn missing_client_certificate_event() {
    let srv = env_with_logs().start(&format!(
        "[log]\ntls_events = \"logs/tls.log\"\n{}",
        common::ONE_SITE.replace(
            "key = \"certs/alpha.key\"",
            "key = \"certs/alpha.key\"\nclient_auth = { mode = \"required\", ca = [\"certs/root.pem\"] }"
        )
    ));
    let cfg = ClientOpts::default().tls13().build();
    let _ = request(
        srv.https,
        cfg,
        Some("alpha.test"),
        Req::get("alpha.test", "/"),
    )
    .await;
    let ev = &events_with(
        &srv.env.path("logs/tls.log"),
        "reason",
        "client_certificate_missing",
    )[0];
    assert_eq!(ev["detail"], "client certificate missing");
    assert_eq!(ev["sni"], "alpha.test");
}

#[tokio::test]
async fn client_rejecting_our_certificate_is_logged_with_its_alert() {
    let srv = env_with_logs().start(&events_config(""));
    // A client that trusts another root: it refuses the chain with an alert.
    let other_root = pki().leaf(&["other.test"], Alg::Ecdsa).der;
    let cfg = ClientOpts {
        root: Some(other_root),
        ..ClientOpts::default()
    }
    .tls13()
    .build();
    request(
        srv.https,
        cfg,
        Some("alpha.test"),
        Req::get("alpha.test", "/"),
    )
    .await
    .unwrap_err();
    let ev = &events_with(
        &srv.env.path("logs/tls.log"),
        "reason",
        "client_rejected_certificate",
    )[0];
    assert_eq!(ev["alert"], "unknown_ca", "{ev}");
    assert_eq!(
        ev["detail"],
        "the client rejected our certificate (alert unknown_ca)"
    );
    assert_eq!(ev["sni"], "alpha.test");
}

#[tokio::test]
async fn not_tls_timeout_and_closed_events() {
    let srv = env_with_logs().start(&events_config("[limits]\nhandshake_timeout = \"2s\""));
    let log = srv.env.path("logs/tls.log");
    // Garbage that is not a TLS record.
    let mut tcp = TcpStream::connect(srv.https).await.unwrap();
    tcp.write_all(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06])
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    let ev = &events_with(&log, "reason", "not_tls")[0];
    assert_eq!(ev["detail"], "not TLS at all");
    assert_eq!(ev["sni"], Value::Null);
    // Silence: no ClientHello within the timeout.
    let mut tcp = TcpStream::connect(srv.https).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    let ev = &events_with(&log, "reason", "no_client_hello")[0];
    assert_eq!(ev["detail"], "timeout: no ClientHello");
    // Half a record, then a close.
    let mut tcp = TcpStream::connect(srv.https).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    drop(tcp);
    let ev = &events_with(&log, "reason", "client_closed")[0];
    assert_eq!(ev["detail"], "the client closed the connection");
}

// =============================================================================================
// Plain HTTP on the HTTPS port
// =============================================================================================

async fn plain(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .expect("the server closes after its answer")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn plain_http_to_the_https_port_gets_a_400_naming_https() {
    let srv = env_with_logs().start(&events_config(""));
    let port = srv.https.port();
    let resp = plain(
        srv.https,
        b"GET /docs/a?b=1 HTTP/1.1\r\nHost: alpha.test:8080\r\nUser-Agent: x\r\n\r\n",
    )
    .await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{resp}");
    assert!(head.contains("\r\nConnection: close"), "{resp}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    assert!(
        body.contains(&format!(
            "Use https://alpha.test:{port}/docs/a?b=1 instead."
        )),
        "{body}"
    );
    // Sent in pieces, and a Host that is no host name: the address connected to is named.
    let mut tcp = TcpStream::connect(srv.https).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(b"Host: <script>\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(&format!("Use https://127.0.0.1:{port}/ instead.")),
        "{out}"
    );
    assert!(!out.contains("<script>"));

    let evs = events_with(&srv.env.path("logs/tls.log"), "reason", "plain_http");
    assert_eq!(evs[0]["detail"], "plain HTTP sent to the HTTPS port");
    // TLS still works on the same port.
    let r = get(srv.https, Some("alpha.test"), "/", "http/1.1").await;
    assert_eq!(r.status, 200);
}

// =============================================================================================
// Rate limiting
// =============================================================================================

#[tokio::test]
async fn a_flood_of_bad_handshakes_yields_bounded_lines_and_a_count() {
    let srv = env_with_logs().start(&events_config("lines_per_second = 3"));
    let log = srv.env.path("logs/tls.log");
    const FLOOD: u64 = 300;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FLOOD {
        let addr = srv.https;
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"\x00\x00garbage").await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let flood_secs = started.elapsed().as_secs() + 1;
    // The summary comes within about 10 s.
    let deadline = Instant::now() + Duration::from_secs(25);
    let (lines, suppressed) = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let lines = events.iter().filter(|e| e["reason"] == "not_tls").count() as u64;
        let summaries: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "suppressed")
            .collect();
        let suppressed: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
        for s in &summaries {
            assert_eq!(s["cause"], "handshake_failed: not_tls");
            assert!(s["message"].as_str().unwrap().ends_with(&format!(
                "{} similar lines suppressed in the last {} s",
                s["count"], s["seconds"]
            )));
        }
        if lines + suppressed == FLOOD || Instant::now() > deadline {
            break (lines, suppressed);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{FLOOD} bad handshakes in about {flood_secs} s: {lines} lines, {suppressed} suppressed"
    );
    assert_eq!(
        lines + suppressed,
        FLOOD,
        "{lines} lines + {suppressed} suppressed"
    );
    assert!(
        lines <= 3 * (flood_secs + 1),
        "{lines} lines in about {flood_secs} s"
    );
    assert!(suppressed >= FLOOD - 3 * (flood_secs + 1));
}

// =============================================================================================
// SIGUSR1 (the real binary)
// =============================================================================================

#[test]
fn sigusr1_reopens_log_files_after_a_rename() {
    let env = env_with_logs();
    let cfg = env.write_config(&format!(
        "[log]\naccess_log = {{ format = \"combined\", file = \"logs/access.log\" }}\ntls_events = \"logs/tls.log\"\n{}",
        common::ONE_SITE
    ));
    let mut p = ServeProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let addr =
        parse_listen_line(&p.wait_for_line("listening on https://", Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = env.path("logs/access.log");
    rt.block_on(get(addr, Some("alpha.test"), "/before", "http/1.1"));
    lines_when(&log, |l| l.len() == 1);
    std::fs::rename(&log, env.path("logs/access.log.1")).unwrap();
    std::fs::rename(env.path("logs/tls.log"), env.path("logs/tls.log.1")).unwrap();
    p.signal("USR1");
    p.wait_for_line("reopening the log files", Duration::from_secs(10));
    rt.block_on(get(addr, Some("alpha.test"), "/after", "http/1.1"));
    let after = lines_when(&log, |l| l.len() == 1);
    assert!(
        after[0].contains("\"GET /after HTTP/1.1\" 200"),
        "{after:?}"
    );
    let before = std::fs::read_to_string(env.path("logs/access.log.1")).unwrap();
    assert_eq!(before.lines().count(), 1);
    assert!(before.contains("\"GET /before HTTP/1.1\" 200"), "{before}");
    // The event log was reopened too: a new event lands in a new file.
    rt.block_on(async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"\x01\x02garbage").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    });
    let events = lines_when(&env.path("logs/tls.log"), |l| !l.is_empty());
    assert!(events[0].contains("\"not_tls\""), "{events:?}");
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
}

// =============================================================================================
// Config errors
// =============================================================================================

/// The config: `top` (top-level keys), the test prelude, `body`, one site.
fn config(env: &TestEnv, top: &str, body: &str) -> std::path::PathBuf {
    env.write_config_raw(&format!(
        "{top}\n{}{body}\n{}",
        TestEnv::prelude(),
        common::ONE_SITE
    ))
}

fn refused(body: &str, needles: &[&str]) {
    refused_with("", body, needles)
}

fn refused_with(top: &str, body: &str, needles: &[&str]) {
    let env = env_with_logs();
    let path = config(&env, top, body);
    let (ok, out) = check_config(&path);
    assert!(!ok, "accepted:\n{body}\n{out}");
    let line = out
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{out}"));
    assert!(
        line.contains("portcullis.toml:"),
        "no file:line in {line:?}"
    );
}

#[test]
fn log_config_errors_name_the_line_and_the_fix() {
    refused(
        "[log]\naccess_log = { format = \"apache\" }",
        &[
            "log.access_log: unknown format \"apache\"",
            "use \"json\", \"combined\" or \"off\"",
        ],
    );
    refused(
        "[log]\naccess_log = { format = \"json\", path = \"x.log\" }",
        &["unknown field `path`"],
    );
    refused(
        "[log]\naccess_log = 3",
        &["\"off\", \"json\", \"combined\""],
    );
    refused(
        "[log]\naccess_log = { file = \"missing/dir/access.log\" }",
        &["the directory of", "missing/dir/access.log does not exist"],
    );
    refused(
        "[log]\ntls_events = \"logs\"",
        &["log.tls_events:", "is a directory"],
    );
    refused(
        "[log]\nlines_per_second = 0",
        &["log.lines_per_second = 0 is out of range"],
    );
    refused("[log]\nverbose = true", &["unknown field `verbose`"]);
    refused_with(
        "access_log = true",
        "[log]\naccess_log = \"json\"",
        &["access_log is set twice"],
    );
    // A site's own setting.
    let env = env_with_logs();
    let path = env.write_config(&common::ONE_SITE.replace(
        "key = \"certs/alpha.key\"",
        "key = \"certs/alpha.key\"\naccess_log = \"loud\"",
    ));
    let (ok, out) = check_config(&path);
    assert!(!ok);
    assert!(
        out.contains("site \"alpha\": access_log: unknown format \"loud\""),
        "{out}"
    );
}

#[test]
fn log_config_forms_are_accepted() {
    for (top, body) in [
        ("", "[log]\naccess_log = \"combined\"\ntls_events = \"stdout\""),
        ("", "[log]\naccess_log = false\ntls_events = \"off\""),
        ("", "[log]\naccess_log = { file = \"logs/a.log\" }\ntls_events = \"logs/t.log\"\nlines_per_second = 50"),
        ("access_log = true", ""),
    ] {
        let env = env_with_logs();
        let path = config(&env, top, body);
        let (ok, out) = check_config(&path);
        assert!(ok, "{body}:\n{out}");
    }
}
