//! HTTP/3 over QUIC end to end, with a real HTTP/3 client (quinn + h3, rustls verifying the
//! chain): static files answer over HTTP/3 with the same status, headers and bytes as over
//! HTTP/1.1; a proxied POST streams a body larger than every window both ways; certificates
//! come from the same resolver (local CA, files) and unknown names are refused; `Alt-Svc`
//! advertises the UDP port only where HTTP/3 is on; Retry is seen on the wire when asked
//! for; 0-RTT is taken for a GET and answered 425 for a POST on an opted-in site only; a client
//! that stops reading is flow-controlled (the server's RSS stays flat); per-client limits
//! refuse QUIC connections; shutdown and reload let an in-flight request finish after a
//! GOAWAY; metrics and the access log count HTTP/3.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::h3client::*;
use common::*;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

/// The first UDP address the server listens on for HTTP/3; the same port as its first HTTPS
/// listener (the `Alt-Svc` promise).
fn h3_addr(srv: &TestServer) -> SocketAddr {
    let addrs = srv.server.as_ref().expect("server running").h3_addrs();
    let first = *addrs.first().expect("an HTTP/3 (UDP) address");
    assert_eq!(
        first.port(),
        srv.https.port(),
        "UDP port {addrs:?} vs HTTPS {}",
        srv.https
    );
    first
}

/// `n` bytes that do not compress (xorshift), the same for the same `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Polls `cond` every 20 ms until it holds; fails after `secs` seconds with `what`.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// =============================================================================================
// A backend that reports what it saw
// =============================================================================================

/// An HTTP/1.1 backend on 127.0.0.1: `/slow/MS` answers `slow` after MS milliseconds; any
/// other request is answered 200 with its body streamed back and what arrived in
/// `x-seen-method`, `x-seen-path`, `x-seen-xff` (X-Forwarded-For), `x-seen-proto`
/// (X-Forwarded-Proto) and `x-seen-length` (Content-Length, `-` when chunked).
struct SeenBackend {
    addr: SocketAddr,
    /// Requests that have arrived (counted before answering).
    arrived: Arc<AtomicUsize>,
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn seen_backend() -> SeenBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let n = arrived.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| seen(req, n.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    SeenBackend { addr, arrived }
}

async fn seen(
    req: http::Request<hyper::body::Incoming>,
    arrived: Arc<AtomicUsize>,
) -> Result<http::Response<Body>, Infallible> {
    arrived.fetch_add(1, Ordering::SeqCst);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        let body = Full::new(Bytes::from_static(b"slow"))
            .map_err(|e| match e {})
            .boxed();
        return Ok(http::Response::new(body));
    }
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let resp = http::Response::builder()
        .header("x-seen-method", req.method().as_str())
        .header("x-seen-path", path)
        .header("x-seen-xff", h("x-forwarded-for"))
        .header("x-seen-proto", h("x-forwarded-proto"))
        .header("x-seen-length", h("content-length"))
        .body(req.into_body().boxed())
        .unwrap();
    Ok(resp)
}

// =============================================================================================
// 1. Static files: HTTP/3 answers as HTTP/1.1 does
// =============================================================================================

/// A public name (so that HSTS is on), with a certificate from the test PKI.
const FILES_HOST: &str = "files.example.com";

fn files_env() -> TestEnv {
    let env = TestEnv::new();
    env.write_chain("files", &pki().leaf(&[FILES_HOST], Alg::Ecdsa));
    env.write("www/data.bin", noise(100_000, 7));
    env.write("www/index.html", "<!doctype html><p>index</p>\n");
    env.write("www/style.css", "body { color: #123456; }\n".repeat(40));
    env.write("www/style.css.br", b"\x0b\x02\x80BROTLI-VARIANT\x03");
    env
}

const FILES_SITE: &str = r#"
[[site]]
name = "files"
hosts = ["files.example.com"]
cert = "certs/files.pem"
key = "certs/files.key"
[[site.route]]
path = "/"
files = { root = "www" }
"#;

/// The headers that must be the same over HTTP/1.1 and HTTP/3: all but `Date` (the clock
/// moves), `Alt-Svc` (TCP only) and the connection-specific fields HTTP/3 forbids.
fn comparable(h: &http::HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "date" | "alt-svc" | "connection" | "keep-alive" | "transfer-encoding"
            )
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("<binary>").to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_over_h3_match_http1_get_head_range_conditional_precompressed() {
    let srv = files_env().start(FILES_SITE);
    let udp = h3_addr(&srv);
    let data = noise(100_000, 7);
    let h1cfg = ClientOpts::default().build();
    let client = H3Client::new();
    let mut conn = client.connect(udp, FILES_HOST).await.unwrap();

    // First a plain GET for the validators.
    let first = conn.send(&Req::get(FILES_HOST, "/data.bin")).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(sha256(&first.body), sha256(&data));
    let etag = first.header("etag").expect("ETag over HTTP/3").to_string();
    let modified = first
        .header("last-modified")
        .expect("Last-Modified over HTTP/3")
        .to_string();

    let cases: Vec<(&str, Req, u16)> = vec![
        ("GET", Req::get(FILES_HOST, "/data.bin"), 200),
        (
            "HEAD",
            Req::get(FILES_HOST, "/data.bin").method(http::Method::HEAD),
            200,
        ),
        (
            "Range",
            Req::get(FILES_HOST, "/data.bin").header("range", "bytes=100-199"),
            206,
        ),
        (
            "suffix Range",
            Req::get(FILES_HOST, "/data.bin").header("range", "bytes=-10"),
            206,
        ),
        (
            "If-None-Match",
            Req::get(FILES_HOST, "/data.bin").header("if-none-match", &etag),
            304,
        ),
        (
            "If-Modified-Since",
            Req::get(FILES_HOST, "/data.bin").header("if-modified-since", &modified),
            304,
        ),
        ("index", Req::get(FILES_HOST, "/"), 200),
        (
            "precompressed",
            Req::get(FILES_HOST, "/style.css").header("accept-encoding", "br, gzip"),
            200,
        ),
        ("missing", Req::get(FILES_HOST, "/nope.txt"), 404),
    ];
    for (what, req, want) in cases {
        let h3 = conn
            .send(&req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let h1 = request(srv.https, h1cfg.clone(), Some(FILES_HOST), req.clone())
            .await
            .unwrap_or_else(|e| panic!("{what} over HTTP/1.1: {e}"));
        assert_eq!(h1.version, http::Version::HTTP_11);
        assert_eq!((what, h3.status), (what, want), "{:?}", h3.headers);
        assert_eq!(h1.status, h3.status, "{what}");
        assert_eq!(
            comparable(&h3.headers),
            comparable(&h1.headers),
            "{what}: HTTP/3 headers (left) differ from HTTP/1.1's (right)"
        );
        assert_eq!(h3.body, h1.body, "{what}: bodies differ");
        // The security headers are there (not merely equally absent).
        for name in [
            "strict-transport-security",
            "x-content-type-options",
            "date",
        ] {
            assert!(h3.header(name).is_some(), "{what}: no {name} over HTTP/3");
        }
        match what {
            "Range" => {
                assert_eq!(h3.header("content-range"), Some("bytes 100-199/100000"));
                assert_eq!(h3.header("content-length"), Some("100"));
                assert_eq!(&h3.body[..], &data[100..200]);
            }
            "suffix Range" => {
                assert_eq!(h3.header("content-range"), Some("bytes 99990-99999/100000"));
                assert_eq!(&h3.body[..], &data[99_990..]);
            }
            "GET" => {
                assert_eq!(h3.header("content-length"), Some("100000"));
                assert_eq!(h3.header("etag"), Some(etag.as_str()));
                assert_eq!(sha256(&h3.body), sha256(&data));
            }
            "HEAD" => {
                assert_eq!(h3.header("content-length"), Some("100000"));
                assert!(h3.body.is_empty(), "a HEAD answer has no body");
            }
            "If-None-Match" | "If-Modified-Since" => {
                assert!(h3.body.is_empty());
                assert_eq!(h3.header("etag"), Some(etag.as_str()));
            }
            "precompressed" => {
                assert_eq!(h3.header("content-encoding"), Some("br"));
                assert_eq!(&h3.body[..], b"\x0b\x02\x80BROTLI-VARIANT\x03");
            }
            _ => {}
        }
    }
    // One connection served them all.
    assert!(conn.closed(Duration::from_millis(10)).await.is_none());
}

// =============================================================================================
// 2. Reverse proxy: a POST body larger than every window, both ways
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_post_bodies_stream_through_http3_intact() {
    let backend = seen_backend().await;
    let srv = start(&format!(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/api"
proxy = {{ upstreams = ["http://{}"] }}
"#,
        backend.addr
    ));
    let client = H3Client::new();
    let mut conn = client.connect(h3_addr(&srv), ALPHA).await.unwrap();

    let mut small = Req::get(ALPHA, "/api/echo?x=1").method(http::Method::POST);
    small.body = Bytes::from_static(b"hello over quic");
    let r = conn.send(&small).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello over quic");
    assert_eq!(r.header("x-seen-method"), Some("POST"));
    assert_eq!(r.header("x-seen-path"), Some("/api/echo?x=1"));
    assert_eq!(r.header("x-seen-xff"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-proto"), Some("https"));

    // 3 MiB: more than quinn's stream window (1.25 MB) and the backend's socket buffers, so
    // it only gets through if flow control is handed back as the backend takes the data.
    let big_body = noise(3 << 20, 42);
    let mut big = Req::get(ALPHA, "/api/big").method(http::Method::PUT);
    big.body = Bytes::from(big_body.clone());
    let r = conn.send(&big).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-method"), Some("PUT"));
    assert_eq!(r.body.len(), big_body.len());
    assert_eq!(sha256(&r.body), sha256(&big_body), "echoed body differs");
    assert_eq!(backend.arrived.load(Ordering::SeqCst), 2);
}

// =============================================================================================
// 3. Certificates: the local CA, and names no site has
// =============================================================================================

fn local_ca_root(srv: &TestServer) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    let path = srv
        .server
        .as_ref()
        .unwrap()
        .local_ca_root
        .clone()
        .expect("the local CA is used");
    rustls::pki_types::CertificateDer::from_pem_file(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ca_certificate_verifies_over_quic_and_other_roots_do_not() {
    let srv = start(
        r#"
[[site]]
name = "local"
hosts = ["localhost"]
[[site.route]]
path = "/"
respond = { body = "local over h3" }
"#,
    );
    let udp = h3_addr(&srv);
    let trusting = H3Client::with(H3Opts {
        root: Some(local_ca_root(&srv)),
        ..H3Opts::default()
    });
    let mut conn = trusting.connect(udp, "localhost").await.unwrap();
    let r = conn.send(&Req::get("localhost", "/")).await.unwrap();
    assert_eq!((r.status, r.text()), (200, "local over h3".to_string()));
    let certs = conn
        .quic
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .expect("the server's chain");
    assert!(leaf_sans(&certs[0]).iter().any(|s| s == "localhost"));

    // A client that trusts another root refuses the handshake: the chain really was checked.
    let other = H3Client::new();
    let err = other
        .connect(udp, "localhost")
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("invalid peer certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

/// The error of a handshake the server refuses: a CONNECTION_CLOSE from the server with a
/// TLS alert (not a timeout), and no stream ever answered.
async fn refused(client: &H3Client, udp: SocketAddr, sni: &str) -> String {
    match client.quic(udp, sni).await {
        Ok(c) => {
            let mut conn = H3Conn::new(c).await.expect("HTTP/3 set-up");
            let r = conn.send(&Req::get(sni, "/")).await;
            panic!("{sni} was served over QUIC: {r:?}");
        }
        Err(e) => {
            assert!(!e.contains("timed out"), "{sni}: {e}");
            e
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_is_refused_over_quic() {
    // unknown_sni = "reject": the handshake fails on the server's side, even for a client that
    // would take any certificate.
    let srv = start(&format!("[tls]\nunknown_sni = \"reject\"\n{TWO_SITES}"));
    let udp = h3_addr(&srv);
    let lax = H3Client::with(H3Opts {
        check_name: false,
        ..H3Opts::default()
    });
    let e = refused(&lax, udp, "nobody.example.org").await;
    // Refused by the server's TLS stack before any certificate is sent. Over QUIC the alert is
    // rustls's for "no certificate for this name", access_denied (49; QUIC CRYPTO_ERROR 0x131,
    // RFC 9001 §4.8): quinn runs the whole ClientHello through rustls before the server sees
    // anything of it, so the server cannot answer unrecognized_name (112) itself as on TCP.
    assert!(
        e.contains("the cryptographic handshake failed: error 49"),
        "not the refusal alert: {e}"
    );
    // The listed names are served on the same endpoint.
    let r = h3_get(udp, ALPHA, "/").await.unwrap();
    assert_eq!(r.text(), "alpha");

    // By default an unknown name gets the default site's certificate, which a verifying
    // client refuses: still no response.
    let srv = start(TWO_SITES);
    let udp = h3_addr(&srv);
    let e = refused(&H3Client::new(), udp, "nobody.example.org").await;
    assert!(e.contains("certificate"), "{e}");
}

// =============================================================================================
// 4. Alt-Svc and the switches
// =============================================================================================

/// Alpha with HTTP/3 (default), beta with `http3 = false`.
const ALPHA_H3_BETA_NOT: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
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
http3 = false
[[site.route]]
path = "/"
respond = { body = "beta" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_svc_names_the_udp_port_only_where_http3_is_on() {
    let srv = start(ALPHA_H3_BETA_NOT);
    let udp = h3_addr(&srv);
    let want = format!("h3=\":{}\"; ma=86400", udp.port());
    for alpn in ["http/1.1", "h2"] {
        let r = get(srv.https, Some(ALPHA), "/", alpn).await;
        assert_eq!(
            r.header("alt-svc"),
            Some(want.as_str()),
            "alpha over {alpn}"
        );
        let r = get(srv.https, Some(BETA), "/", alpn).await;
        assert_eq!(r.text(), "beta");
        assert_eq!(
            r.header("alt-svc"),
            None,
            "beta (http3 = false) over {alpn}"
        );
    }
    // The advertised endpoint answers for alpha and refuses beta's name.
    assert_eq!(h3_get(udp, ALPHA, "/").await.unwrap().text(), "alpha");
    let lax = H3Client::with(H3Opts {
        check_name: false,
        ..H3Opts::default()
    });
    refused(&lax, udp, BETA).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_off_means_no_alt_svc_and_no_udp_socket() {
    let srv = start(&format!("[http]\nhttp3 = false\n{ALPHA_H3_BETA_NOT}"));
    assert_eq!(srv.server.as_ref().unwrap().h3_addrs(), Vec::new());
    for alpn in ["http/1.1", "h2"] {
        let r = get(srv.https, Some(ALPHA), "/", alpn).await;
        assert_eq!(r.text(), "alpha");
        assert_eq!(r.header("alt-svc"), None, "over {alpn}");
    }
    // Nothing is bound at the HTTPS port number over UDP: the kernel answers with ICMP port
    // unreachable (ECONNREFUSED on a connected socket).
    let port = SocketAddr::new(srv.https.ip(), srv.https.port());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(port).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send(&[0xc0; 1200]).unwrap();
    let mut buf = [0u8; 2048];
    let e = sock.recv(&mut buf).expect_err("something answered on UDP");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // And a QUIC client gets nowhere.
    let client = H3Client::with(H3Opts {
        idle_timeout: Duration::from_secs(2),
        ..H3Opts::default()
    });
    let connecting = client.connecting(port, ALPHA).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), connecting).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "a QUIC handshake on a server with http3 = false: {r:?}"
    );
}

// =============================================================================================
// 5. Retry
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_retry_always_sends_one_retry_per_connection_and_still_serves() {
    let srv = start(&format!("[http]\nh3_retry = \"always\"\n{ONE_SITE}"));
    let relay = UdpRelay::start(h3_addr(&srv)).await;
    let client = H3Client::new();
    for i in 1..=2 {
        let mut conn = client.connect(relay.addr, ALPHA).await.unwrap();
        let r = conn.send(&Req::get(ALPHA, "/")).await.unwrap();
        assert_eq!(r.text(), "hello from alpha");
        // One Retry per Initial datagram without a token: a post-quantum ClientHello fills
        // two, and the second may reach the server before the client has taken the Retry
        // (Retry is stateless, RFC 9000 §8.1.2), so one or two per connection.
        let retries = relay.counts.server(PacketType::Retry);
        assert!(
            (i..=2 * i).contains(&retries),
            "{retries} Retry packets from the server after {i} connection(s)"
        );
        conn.quic.close(0u32.into(), b"done");
    }
    // Each client Initial after a Retry carries its token: at least two Initials each.
    assert!(relay.counts.client(PacketType::Initial) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_below_the_threshold_by_default() {
    let srv = start(ONE_SITE);
    let relay = UdpRelay::start(h3_addr(&srv)).await;
    let client = H3Client::new();
    let mut conn = client.connect(relay.addr, ALPHA).await.unwrap();
    let r = conn.send(&Req::get(ALPHA, "/")).await.unwrap();
    assert_eq!(r.text(), "hello from alpha");
    assert!(
        relay.counts.server(PacketType::Initial) >= 1,
        "the relay sees packets"
    );
    assert_eq!(relay.counts.server(PacketType::Retry), 0);
}

// =============================================================================================
// 6. 0-RTT
// =============================================================================================

/// Alpha with early data (and an access log), beta without.
fn early_env() -> TestEnv {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("logs")).unwrap();
    env
}

const EARLY_SITES: &str = r#"
[log]
access_log = { format = "json", file = "logs/access.log" }

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
early_data = true
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
"#;

/// A full handshake and a GET to `host`, then waits for the session ticket(s) the server
/// sends after the handshake; returns their `max_early_data_size`.
async fn prime(client: &H3Client, udp: SocketAddr, host: &str) -> Vec<u32> {
    let mut conn = client.connect(udp, host).await.unwrap();
    let r = conn.send(&Req::get(host, "/")).await.unwrap();
    assert_eq!(r.status, 200);
    let tickets = client.tickets.clone();
    let h = host.to_string();
    eventually(5, "a session ticket", || {
        !tickets.received_for(&h).is_empty()
    })
    .await;
    conn.quic.close(0u32.into(), b"done");
    client.tickets.received_for(host)
}

/// JSON access log lines whose path is `path`, waiting up to 5 s for `n` of them.
async fn access_lines(env: &TestEnv, path: &str, n: usize) -> Vec<serde_json::Value> {
    let log = env.path("logs/access.log");
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["path"] == path)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while read().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    read()
}

/// Sends `req` as 0-RTT through `relay`: the server's datagrams are held back until the
/// client has sent the request in 0-RTT packets (so it cannot have gone after the
/// handshake), then released. Returns the response and whether the server accepted 0-RTT.
async fn in_0rtt(
    client: &H3Client,
    relay: &UdpRelay,
    host: &str,
    req: &Req,
) -> (Result<H3Resp, String>, bool, H3Conn) {
    let before = relay.counts.client(PacketType::ZeroRtt);
    relay.hold(true);
    let connecting = client.connecting(relay.addr, host).unwrap();
    let (quic, accepted) = connecting
        .into_0rtt()
        .unwrap_or_else(|_| panic!("the client cannot send 0-RTT to {host}: no usable ticket"));
    let mut conn = H3Conn::new(quic).await.expect("HTTP/3 in 0-RTT");
    let stream = conn.start(req).await.expect("request head in 0-RTT");
    let (mut tx, mut rx) = stream.split();
    if !req.body.is_empty() {
        tx.send_data(req.body.clone()).await.expect("body in 0-RTT");
    }
    tx.finish().await.expect("finish in 0-RTT");
    let counts = relay.counts.clone();
    eventually(5, "0-RTT packets from the client", || {
        counts.client(PacketType::ZeroRtt) > before
    })
    .await;
    // Everything the client had to send is out before the server's first flight arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay.hold(false);
    let resp = tokio::time::timeout(IO_TIMEOUT, read_h3_response(&mut rx))
        .await
        .unwrap_or_else(|_| Err("no response in time".into()));
    let accepted = tokio::time::timeout(IO_TIMEOUT, accepted)
        .await
        .expect("handshake done");
    drop(tx);
    (resp, accepted, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_get_is_served_and_post_gets_425_on_an_opted_in_site() {
    let srv = early_env().start(EARLY_SITES);
    let udp = h3_addr(&srv);
    let relay = UdpRelay::start(udp).await;
    let client = H3Client::new();
    // QUIC tickets allow 0-RTT with max_early_data_size 0xffffffff (RFC 9001 §4.6.1).
    let tickets = prime(&client, udp, ALPHA).await;
    assert!(tickets.contains(&u32::MAX), "alpha's tickets: {tickets:?}");

    let (resp, accepted, mut conn) = in_0rtt(&client, &relay, ALPHA, &Req::get(ALPHA, "/e")).await;
    assert!(accepted, "the server rejected 0-RTT on an early_data site");
    let resp = resp.unwrap();
    assert_eq!((resp.status, resp.text()), (200, "alpha".to_string()));
    assert_eq!(client.tickets.taken_for(ALPHA), 1);
    // After the handshake a POST on the same connection is an ordinary one.
    let mut after = Req::get(ALPHA, "/after").method(http::Method::POST);
    after.body = Bytes::from_static(b"x");
    assert_eq!(conn.send(&after).await.unwrap().status, 200);
    conn.quic.close(0u32.into(), b"done");

    // A new ticket came with that connection; a POST in 0-RTT could be a replay: 425.
    let tickets = client.tickets.clone();
    eventually(5, "a second ticket", || {
        tickets.received_for(ALPHA).len() >= 2
    })
    .await;
    let mut post = Req::get(ALPHA, "/buy").method(http::Method::POST);
    post.body = Bytes::from_static(b"order=1");
    let (resp, accepted, mut conn) = in_0rtt(&client, &relay, ALPHA, &post).await;
    assert!(accepted);
    let resp = resp.unwrap();
    assert_eq!(resp.status, 425, "a POST in 0-RTT: {}", resp.text());
    // The same POST after the handshake is served.
    assert_eq!(conn.send(&post).await.unwrap().status, 200);

    let e = access_lines(&srv.env, "/e", 1).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["early_data"], true, "{}", e[0]);
    assert_eq!(e[0]["status"], 200);
    let buys = access_lines(&srv.env, "/buy", 2).await;
    assert_eq!(buys.len(), 2, "{buys:?}");
    assert_eq!(
        (&buys[0]["status"], &buys[0]["early_data"]),
        (&425.into(), &true.into())
    );
    assert_eq!(
        (&buys[1]["status"], &buys[1]["early_data"]),
        (&200.into(), &false.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_requests_of_a_site_without_early_data_wait_for_the_handshake() {
    // One TLS configuration serves every site over QUIC (quinn needs it before the ClientHello
    // is read), so with alpha opted in, beta's tickets allow 0-RTT at the TLS level too; what
    // makes 0-RTT opt-in per site is that beta's requests are not answered before the
    // handshake completes: a replayed copy (which cannot complete it) is never served.
    let srv = early_env().start(EARLY_SITES);
    let udp = h3_addr(&srv);
    let relay = UdpRelay::start(udp).await;
    let client = H3Client::new();
    prime(&client, udp, BETA).await;
    let before = relay.counts.client(PacketType::ZeroRtt);
    relay.hold(true);
    let connecting = client.connecting(relay.addr, BETA).unwrap();
    let Ok((quic, _accepted)) = connecting.into_0rtt() else {
        panic!("the client cannot send 0-RTT to beta: no usable ticket");
    };
    let mut conn = H3Conn::new(quic).await.expect("HTTP/3 in 0-RTT");
    let mut post = Req::get(BETA, "/buy").method(http::Method::POST);
    post.body = Bytes::from_static(b"order=1");
    let stream = conn.start(&post).await.expect("request head in 0-RTT");
    let (mut tx, mut rx) = stream.split();
    tx.send_data(post.body.clone())
        .await
        .expect("body in 0-RTT");
    tx.finish().await.expect("finish in 0-RTT");
    let counts = relay.counts.clone();
    eventually(5, "0-RTT packets from the client", || {
        counts.client(PacketType::ZeroRtt) > before
    })
    .await;
    // The server has the request, but the handshake cannot complete while its flight is held:
    // nothing may be answered (an answered request is logged when its response is written).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = std::fs::read_to_string(srv.env.path("logs/access.log")).unwrap_or_default();
    assert!(
        !log.contains("\"/buy\""),
        "beta answered a 0-RTT request before the handshake completed: {log}"
    );
    relay.hold(false);
    let resp = tokio::time::timeout(IO_TIMEOUT, read_h3_response(&mut rx))
        .await
        .expect("a response after the handshake")
        .unwrap();
    assert_eq!((resp.status, resp.text()), (200, "beta".to_string()));
    let buys = access_lines(&srv.env, "/buy", 1).await;
    assert_eq!(buys.len(), 1, "{buys:?}");
    assert_eq!(
        (&buys[0]["status"], &buys[0]["early_data"]),
        (&200.into(), &false.into())
    );
    drop(tx);

    // Without any site opted in, QUIC tickets allow no 0-RTT at all.
    let srv = early_env().start(&EARLY_SITES.replace("early_data = true\n", ""));
    let udp = h3_addr(&srv);
    let client = H3Client::new();
    let tickets = prime(&client, udp, ALPHA).await;
    assert!(
        tickets.iter().all(|&e| e == 0),
        "tickets allowing 0-RTT (max_early_data_size) with no site opted in: {tickets:?}"
    );
}

// =============================================================================================
// 7. Flow control: a client that stops reading
// =============================================================================================

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_flow_controlled_and_the_server_does_not_buffer() {
    const BIG: usize = 64 << 20;
    const STREAM_WINDOW: u32 = 1 << 20;
    const CONN_WINDOW: u32 = 2 << 20;
    let env = TestEnv::new();
    let data = noise(BIG, 99);
    env.write("www/big.bin", &data);
    env.write("www/small.txt", "small");
    let path = env.write_config(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
files = { root = "www" }
"#,
    );
    let mut p = ServeProcess::spawn(&["serve", "--config", path.to_str().unwrap()], &[]);
    let tcp = parse_listen_line(&p.wait_for_line("listening on https://", Duration::from_secs(20)));
    // The UDP socket has the HTTPS listener's port number (the Alt-Svc promise).
    let alt = get(tcp, Some(ALPHA), "/small.txt", "http/1.1").await;
    assert_eq!(
        alt.header("alt-svc"),
        Some(format!("h3=\":{}\"; ma=86400", tcp.port()).as_str())
    );
    let udp = tcp;
    let pid = p.child.id();

    let client = H3Client::with(H3Opts {
        stream_window: Some(STREAM_WINDOW),
        conn_window: Some(CONN_WINDOW),
        ..H3Opts::default()
    });
    let mut conn = client.connect(udp, ALPHA).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            conn.send(&Req::get(ALPHA, "/small.txt"))
                .await
                .unwrap()
                .text(),
            "small"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);

    let stream = conn.start(&Req::get(ALPHA, "/big.bin")).await.unwrap();
    let (mut tx, mut rx) = stream.split();
    tx.finish().await.unwrap();
    let head = rx.recv_response().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers().get("content-length").unwrap(),
        &BIG.to_string()
    );
    let mut got: Vec<u8> = Vec::with_capacity(BIG);
    while got.len() < 512 << 10 {
        let mut chunk = rx.recv_data().await.unwrap().expect("more data");
        got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    // Stop reading for 3 s: the server may send what the windows allow, then must wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rx_before = conn.quic.stats().udp_rx.bytes;
    let mut peak = base;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(pid));
    }
    let arrived_while_stalled = conn.quic.stats().udp_rx.bytes - rx_before;
    let grew = peak.saturating_sub(base);
    eprintln!(
        "RSS {base} KiB before, peak {peak} KiB while stalled (+{grew} KiB); {arrived_while_stalled} bytes arrived while stalled"
    );
    assert!(
        arrived_while_stalled < u64::from(CONN_WINDOW),
        "the server sent {arrived_while_stalled} bytes past a stalled reader"
    );
    assert!(
        grew < 8 * 1024,
        "the server's RSS grew by {grew} KiB for a reader that stopped (file: 64 MiB, windows: 2 MiB)"
    );

    // Reading again: every byte arrives.
    while let Some(mut chunk) = tokio::time::timeout(IO_TIMEOUT, rx.recv_data())
        .await
        .expect("data keeps coming")
        .unwrap()
    {
        got.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(got.len(), BIG);
    assert!(got == data, "the 64 MiB body differs");
}

// =============================================================================================
// 8. Per-client limits
// =============================================================================================

/// A QUIC client from `ip` (any 127.0.0.0/8 address is local) that gives up after 3 s.
fn client_from(ip: [u8; 4]) -> H3Client {
    H3Client::with(H3Opts {
        bind: std::net::IpAddr::from(ip),
        idle_timeout: Duration::from_secs(3),
        ..H3Opts::default()
    })
}

/// A new connection from `client` and one GET on it.
async fn served(client: &H3Client, udp: SocketAddr) -> Result<H3Conn, String> {
    let mut conn = client.connect(udp, ALPHA).await?;
    let r = conn.send(&Req::get(ALPHA, "/")).await?;
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    Ok(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_concurrent_connections_apply_to_quic() {
    let srv = start(&format!(
        "[limits.per_client]\nconcurrent_connections = 2\ntrusted = []\n{ONE_SITE}"
    ));
    let udp = h3_addr(&srv);
    let a = client_from([127, 0, 0, 2]);
    let c1 = served(&a, udp).await.unwrap();
    let c2 = served(&a, udp).await.unwrap();
    let third = served(&a, udp).await;
    assert!(third.is_err(), "a third concurrent connection was served");
    // Another client is not affected.
    let b = client_from([127, 0, 0, 3]);
    let _b1 = served(&b, udp).await.unwrap();
    // Closing one frees a slot.
    drop(c1);
    let mut again = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.is_none() && Instant::now() < deadline {
        match served(&a, udp).await {
            Ok(c) => again = Some(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(again.is_some(), "no slot after a connection closed");
    drop(c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_new_connection_rate_applies_to_quic() {
    let srv = start(&format!(
        "[limits.per_client]\nnew_connections = {{ rate = \"1/m\", burst = 3 }}\ntrusted = []\n{ONE_SITE}"
    ));
    let udp = h3_addr(&srv);
    let a = client_from([127, 0, 0, 4]);
    let mut ok = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match served(&a, udp).await {
            Ok(c) => {
                c.quic.close(0u32.into(), b"done");
                ok.push(c);
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!((ok.len(), refused), (3, 3), "burst 3, then refused");
    assert!(served(&client_from([127, 0, 0, 5]), udp).await.is_ok());
}

// =============================================================================================
// 9. Graceful shutdown, 10. reload
// =============================================================================================

/// One site: `/` answers `gen N`, `/slow/` goes to `backend`.
fn gen_config(generation: u32, backend: SocketAddr) -> String {
    format!(
        r#"{}
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/slow"
proxy = {{ upstreams = ["http://{backend}"] }}
[[site.route]]
path = "/"
respond = {{ body = "gen {generation}" }}
"#,
        TestEnv::prelude()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_lets_the_request_in_flight_finish() {
    let backend = seen_backend().await;
    let env = TestEnv::new();
    let path = env.write_config_raw(&gen_config(1, backend.addr));
    let (cfg, _) = env.load(&path).expect("config loads");
    let server = Arc::new(portcullis::server::Server::start(cfg).unwrap());
    let udp = server.h3_addrs()[0];

    let client = H3Client::new();
    let mut conn = client.connect(udp, ALPHA).await.unwrap();
    assert_eq!(
        conn.send(&Req::get(ALPHA, "/")).await.unwrap().text(),
        "gen 1"
    );
    let slow = conn.start(&Req::get(ALPHA, "/slow/2000")).await.unwrap();
    let (mut tx, mut rx) = slow.split();
    tx.finish().await.unwrap();
    let arrived = backend.arrived.clone();
    eventually(5, "the slow request at the backend", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;

    let s = server.clone();
    let shutdown = tokio::task::spawn_blocking(move || s.shutdown());
    // The GOAWAY arrives while the request is in flight: the client may not start another.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = conn.start(&Req::get(ALPHA, "/")).await;
    assert!(
        matches!(&next, Err(e) if e.contains("GOAWAY") || e.to_lowercase().contains("closing")),
        "a new request after the GOAWAY: {:?}",
        next.map(|_| ())
    );
    // New connections are no longer taken.
    let late = H3Client::with(H3Opts {
        idle_timeout: Duration::from_secs(2),
        ..H3Opts::default()
    });
    assert!(late.connect(udp, ALPHA).await.is_err());

    let resp = read_h3_response(&mut rx)
        .await
        .expect("the in-flight request");
    assert_eq!((resp.status, resp.text()), (200, "slow".to_string()));
    let how = conn
        .closed(Duration::from_secs(5))
        .await
        .expect("the connection closed after its last response");
    assert!(how.is_h3_no_error(), "closed with {how:?}");
    tokio::time::timeout(Duration::from_secs(15), shutdown)
        .await
        .expect("shutdown finished")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_new_connections_see_the_new_config_old_ones_finish_their_request() {
    let backend = seen_backend().await;
    let env = TestEnv::new();
    let path = env.write_config_raw(&gen_config(1, backend.addr));
    let (cfg, _) = env.load(&path).expect("config loads");
    let server = Arc::new(portcullis::server::Server::start(cfg).unwrap());
    let udp = server.h3_addrs()[0];

    let client = H3Client::new();
    let mut old = client.connect(udp, ALPHA).await.unwrap();
    assert_eq!(
        old.send(&Req::get(ALPHA, "/")).await.unwrap().text(),
        "gen 1"
    );
    let slow = old.start(&Req::get(ALPHA, "/slow/1500")).await.unwrap();
    let (mut tx, mut rx) = slow.split();
    tx.finish().await.unwrap();
    let arrived = backend.arrived.clone();
    eventually(5, "the slow request at the backend", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;

    env.write_config_raw(&gen_config(2, backend.addr));
    let (cfg, _) = env.load(&path).expect("config loads");
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.reload(cfg))
        .await
        .unwrap()
        .expect("reload");
    assert_eq!(server.h3_addrs()[0], udp, "the UDP socket is kept");

    let mut new = client.connect(udp, ALPHA).await.unwrap();
    assert_eq!(
        new.send(&Req::get(ALPHA, "/")).await.unwrap().text(),
        "gen 2"
    );
    let resp = read_h3_response(&mut rx)
        .await
        .expect("the old connection's request");
    assert_eq!((resp.status, resp.text()), (200, "slow".to_string()));
    // The old connection is told to go (GOAWAY) and closed once its request is done.
    let how = old
        .closed(Duration::from_secs(5))
        .await
        .expect("the old connection closed after its request");
    assert!(how.is_h3_no_error(), "closed with {how:?}");
    assert_eq!(
        new.send(&Req::get(ALPHA, "/")).await.unwrap().text(),
        "gen 2"
    );
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.shutdown())
        .await
        .unwrap();
}

// =============================================================================================
// 11. Metrics and the access log
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requests_are_counted_in_metrics_and_logged_with_their_protocol() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("logs")).unwrap();
    let srv = env.start(&format!(
        "[log]\naccess_log = {{ format = \"json\", file = \"logs/access.log\" }}\n{ONE_SITE}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let admin = common::scrape::admin_addr(&srv);
    let scrape = || common::scrape::scrape(admin);
    let h3_requests = |s: &prometheus_parse::Scrape, code: &str| {
        let labels = [("protocol", "h3"), ("site", "alpha"), ("code", code)];
        common::scrape::value(s, "portcullis_http_requests_total", &labels)
    };
    let before = scrape().await;
    let client = H3Client::new();
    let mut conn = client.connect(h3_addr(&srv), ALPHA).await.unwrap();
    for path in ["/m1", "/m2", "/m3"] {
        assert_eq!(conn.send(&Req::get(ALPHA, path)).await.unwrap().status, 200);
    }
    let after = scrape().await;
    assert_eq!(
        h3_requests(&after, "2xx") - h3_requests(&before, "2xx"),
        3.0,
        "portcullis_http_requests_total{{protocol=\"h3\"}}: {:?}",
        after.samples
    );

    let lines = {
        let log = srv.env.path("logs/access.log");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|v: &serde_json::Value| {
                    v["path"].as_str().is_some_and(|p| p.starts_with("/m"))
                })
                .collect();
            if lines.len() >= 3 || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert_eq!(l["protocol"], "HTTP/3.0", "{l}");
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["client"], "127.0.0.1", "{l}");
        assert_eq!(l["host"], ALPHA, "{l}");
        assert_eq!(l["site"], "alpha", "{l}");
    }
}
