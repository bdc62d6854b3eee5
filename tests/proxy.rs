//! The reverse proxy end to end: a client over TLS (HTTP/1.1 or HTTP/2 by ALPN) in front of
//! the in-process server, real backends behind it (tests/common/backends.rs) — balancing,
//! failover, health, error pages, streaming with bounded memory, trailers, gRPC, WebSockets,
//! the header policy, the body limit and the config's errors.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::backends::{Backend, GrpcBackend, Repeat};
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Method, Request, Response};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

// =============================================================================================
// Config and client helpers
// =============================================================================================

/// Site `alpha` with one route per `(prefix, proxy table body)`; every route but `/` strips
/// its prefix, so `/h1/name` reaches the backend as `/name`.
fn sites(routes: &[(&str, &str)]) -> String {
    let mut out = String::from(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
"#,
    );
    for (prefix, proxy) in routes {
        let strip = if *prefix == "/" {
            ""
        } else {
            ", strip_prefix = true"
        };
        out.push_str(&format!(
            "[[site.route]]\npath = \"{prefix}\"\nproxy = {{ {proxy}{strip} }}\n"
        ));
    }
    out
}

/// One proxy route at `/`.
fn site(proxy: &str) -> String {
    sites(&[("/", proxy)])
}

/// `upstreams = ["url", ...]`.
fn ups(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.url()))
        .collect();
    format!("upstreams = [{}]", list.join(", "))
}

type ReqBody = BoxBody<Bytes, io::Error>;

fn empty() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A request for `path` on alpha.test (the client puts the host where its protocol wants it).
fn req(method: Method, path: &str, body: ReqBody) -> Request<ReqBody> {
    let mut r = Request::new(body);
    *r.method_mut() = method;
    *r.uri_mut() = path.parse().unwrap();
    r
}

enum Conn {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

/// A keep-alive client: one TLS connection to the server (reopened when it closes), HTTP/2 or
/// HTTP/1.1 by `alpn`.
struct Client {
    addr: SocketAddr,
    alpn: &'static str,
    /// The address the client connects from (any of 127.0.0.0/8 works on loopback).
    source: Option<std::net::IpAddr>,
    conn: Option<Conn>,
    /// Connections opened so far.
    opened: usize,
}

/// A whole response.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Got {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    fn new(addr: SocketAddr, alpn: &'static str) -> Client {
        Client {
            addr,
            alpn,
            source: None,
            conn: None,
            opened: 0,
        }
    }

    /// A client connecting from `source` (e.g. 127.0.0.7).
    fn from(addr: SocketAddr, alpn: &'static str, source: &str) -> Client {
        let mut c = Client::new(addr, alpn);
        c.source = Some(source.parse().unwrap());
        c
    }

    async fn open(&mut self) -> Result<Conn, String> {
        let cfg = ClientOpts::default().alpn(&[self.alpn]).build();
        let tls = match self.source {
            None => tls_connect(self.addr, Some(ALPHA), cfg).await,
            Some(ip) => {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(ip, 0)).unwrap();
                let tcp = sock
                    .connect(self.addr)
                    .await
                    .map_err(|e| format!("connect from {ip}: {e}"))?;
                let name = rustls::pki_types::ServerName::try_from(ALPHA).unwrap();
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
            }
        }
        .map_err(|e| format!("TLS connect: {e}"))?;
        assert_eq!(tls_info(&tls).alpn.as_deref(), Some(self.alpn));
        self.opened += 1;
        let io = TokioIo::new(tls);
        if self.alpn == "h2" {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Conn::H2(s))
        } else {
            let (s, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn.with_upgrades());
            Ok(Conn::H1(s))
        }
    }

    /// Sends `req` (origin-form URI) and returns the response head; the body streams.
    async fn send(&mut self, mut req: Request<ReqBody>) -> Result<Response<Incoming>, String> {
        let usable = match &mut self.conn {
            Some(Conn::H1(s)) => s.ready().await.is_ok(),
            Some(Conn::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.conn = Some(self.open().await?);
        }
        match self.conn.as_mut().unwrap() {
            Conn::H1(s) => {
                if !req.headers().contains_key(http::header::HOST) {
                    req.headers_mut()
                        .insert(http::header::HOST, ALPHA.parse().unwrap());
                }
                s.send_request(req).await.map_err(|e| format!("h1: {e}"))
            }
            Conn::H2(s) => {
                let pq = req.uri().path_and_query().unwrap().clone();
                *req.uri_mut() = format!("https://{ALPHA}{pq}").parse().unwrap();
                s.send_request(req).await.map_err(|e| format!("h2: {e}"))
            }
        }
    }

    /// Sends `req` and reads the whole response (trailers included), within `IO_TIMEOUT`.
    async fn fetch(&mut self, req: Request<ReqBody>) -> Result<Got, String> {
        tokio::time::timeout(IO_TIMEOUT, async {
            let resp = self.send(req).await?;
            let (parts, body) = resp.into_parts();
            let c = body
                .collect()
                .await
                .map_err(|e| format!("reading body: {e}"))?;
            let trailers = c.trailers().cloned();
            Ok(Got {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: c.to_bytes(),
                trailers,
            })
        })
        .await
        .map_err(|_| "request timed out".to_string())?
    }

    async fn get(&mut self, path: &str) -> Got {
        self.fetch(req(Method::GET, path, empty()))
            .await
            .unwrap_or_else(|e| panic!("GET {path} over {}: {e}", self.alpn))
    }
}

/// The value of `name` in a `/headers` answer (`None` when absent; all values joined by
/// `" | "` when repeated).
fn seen(headers_body: &str, name: &str) -> Option<String> {
    let values: Vec<&str> = headers_body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect();
    (!values.is_empty()).then(|| values.join(" | "))
}

/// Waits until `cond` holds, polling every 20 ms; panics with `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP server on 127.0.0.1 that reads a request head, writes `answer` and closes; it runs
/// until the test's runtime ends.
fn raw_backend(answer: &'static [u8]) -> SocketAddr {
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let l = tokio::net::TcpListener::from_std(std).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

/// A TCP server on 127.0.0.1 that keeps what each connection sent up to the end of the first
/// request head (a PROXY header included), then answers `200 ok`.
fn capturing_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let l = tokio::net::TcpListener::from_std(std).unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head_complete(&buf) {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock().unwrap().push(buf);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, out)
}

/// The PROXY protocol v2 signature.
const PP2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Whether `buf` holds a whole request head, after a PROXY v2 header if one comes first (its
/// signature starts with CRLF CRLF too).
fn head_complete(buf: &[u8]) -> bool {
    let rest = if buf.starts_with(PP2_SIGNATURE) {
        if buf.len() < 16 {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        match buf.get(16 + len..) {
            Some(rest) => rest,
            None => return false,
        }
    } else {
        buf
    };
    rest.windows(4).any(|w| w == b"\r\n\r\n")
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// =============================================================================================
// Every kind of backend, both client protocols
// =============================================================================================

/// GET and a 1 MiB POST through the proxy to each kind of upstream — http://, https:// with
/// the backend verified against the test CA (HTTP/1.1 and HTTP/2 by ALPN), h2c://, unix: —
/// from clients speaking HTTP/1.1 and HTTP/2; the body comes back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_reach_every_kind_of_backend_over_h1_and_h2() {
    let h1 = Backend::h1("plain");
    let tls1 = Backend::tls("tls-h1", false);
    let tls2 = Backend::tls("tls-h2", true);
    let h2c = Backend::h2c("h2c");
    let unix = Backend::unix("unix");
    let tls = r#"tls = { ca = "certs/root.pem" }"#;
    let srv = start(&sites(&[
        ("/h1", &ups(&[&h1])),
        ("/tls1", &format!("{}, {tls}", ups(&[&tls1]))),
        ("/tls2", &format!("{}, {tls}", ups(&[&tls2]))),
        ("/h2c", &ups(&[&h2c])),
        ("/unix", &ups(&[&unix])),
    ]));
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        for (prefix, name) in [
            ("/h1", "plain"),
            ("/tls1", "tls-h1"),
            ("/tls2", "tls-h2"),
            ("/h2c", "h2c"),
            ("/unix", "unix"),
        ] {
            let r = c.get(&format!("{prefix}/name")).await;
            assert_eq!(
                (r.status, r.text()),
                (200, name.to_string()),
                "{alpn} {prefix}"
            );
            let r = c
                .fetch(req(
                    Method::POST,
                    &format!("{prefix}/echo"),
                    full(body.clone()),
                ))
                .await
                .unwrap_or_else(|e| panic!("{alpn} POST {prefix}/echo: {e}"));
            assert_eq!(r.status, 200, "{alpn} {prefix}/echo");
            assert_eq!(r.body.len(), body.len(), "{alpn} {prefix}/echo length");
            assert!(
                r.body == body,
                "{alpn} {prefix}/echo: body changed on the way"
            );
        }
    }
    // HTTP/2 to the backends that speak it (h2c, TLS with ALPN h2), HTTP/1.1 to the others:
    // HTTP/2 requests arrive with an :authority.
    let mut c = Client::new(srv.https, "h2");
    for (prefix, h2) in [
        ("/h1", false),
        ("/tls1", false),
        ("/tls2", true),
        ("/h2c", true),
        ("/unix", false),
    ] {
        let h = c.get(&format!("{prefix}/headers")).await.text();
        assert_eq!(seen(&h, ":authority").is_some(), h2, "{prefix}:\n{h}");
    }
    for b in [&h1, &tls1, &tls2, &h2c, &unix] {
        assert_eq!(b.requests(), 5, "{}", b.name);
    }
}

/// https:// backends are verified: against the configured CA and for `tls.server_name`
/// (default: the upstream's host). A certificate from another CA or for another name: 502,
/// and the request never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_verified_by_ca_and_name() {
    let b = Backend::tls("tls", true);
    let env = TestEnv::new();
    // A CA that did not issue the backend's certificate: another leaf as the only anchor.
    let other = env.write(
        "certs/other-ca.pem",
        &pki().leaf(&["x.test"], Alg::Ecdsa).cert_pem,
    );
    let up = ups(&[&b]);
    let srv = env.start(&sites(&[
        (
            "/named",
            &format!(r#"{up}, tls = {{ ca = "certs/root.pem", server_name = "backend.test" }}"#),
        ),
        (
            "/wrong-name",
            &format!(r#"{up}, tls = {{ ca = "certs/root.pem", server_name = "other.test" }}"#),
        ),
        (
            "/wrong-ca",
            &format!(r#"{up}, tls = {{ ca = "{}" }}"#, other.display()),
        ),
    ]));
    let mut c = Client::new(srv.https, "h2");
    let r = c.get("/named/name").await;
    assert_eq!((r.status, r.text()), (200, "tls".to_string()));
    for path in ["/wrong-name/name", "/wrong-ca/name"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
    }
    assert_eq!(b.requests(), 1);
}

/// A client certificate for mutual TLS to a backend: issued by a CA of its own (made here),
/// written to `certs/client.{pem,key}` and `certs/client-ca.pem`; returns the CA's DER.
fn client_cert(env: &TestEnv) -> rustls::pki_types::CertificateDer<'static> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Backend Client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["proxy.test".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    env.write("certs/client.pem", cert.pem());
    env.write("certs/client.key", key.serialize_pem());
    env.write("certs/client-ca.pem", ca_cert.pem());
    ca_cert.der().clone()
}

/// tls.client_cert/client_key: the proxy presents its certificate to a backend that requires
/// one; a route without it is refused by that backend (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backend_requiring_a_client_certificate_gets_the_configured_one() {
    let env = TestEnv::new();
    let b = Backend::tls_mutual("mtls", client_cert(&env));
    let up = ups(&[&b]);
    let srv = env.start(&sites(&[
        (
            "/with",
            &format!(
                r#"{up}, tls = {{ ca = "certs/root.pem", client_cert = "certs/client.pem", client_key = "certs/client.key" }}"#
            ),
        ),
        ("/without", &format!(r#"{up}, tls = {{ ca = "certs/root.pem" }}"#)),
    ]));
    let mut c = Client::new(srv.https, "h2");
    let r = c.get("/with/name").await;
    assert_eq!((r.status, r.text()), (200, "mtls".to_string()));
    let r = c.get("/without/name").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(b.requests(), 1);
}

// =============================================================================================
// Balancing
// =============================================================================================

/// round_robin with weights 3 and 1: 400 requests split 300 / 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_3_to_1_split_400_requests_75_25() {
    let a = Backend::h1("a");
    let b = Backend::h1("b");
    let srv = start(&site(&format!(
        r#"upstreams = [{{ url = "{}", weight = 3 }}, {{ url = "{}", weight = 1 }}], policy = "round_robin""#,
        a.url(),
        b.url()
    )));
    let mut c = Client::new(srv.https, "h2");
    let mut to_a = 0;
    for _ in 0..400 {
        let r = c.get("/name").await;
        assert_eq!(r.status, 200);
        if r.text() == "a" {
            to_a += 1;
        }
    }
    assert_eq!((a.requests(), b.requests()), (to_a, 400 - to_a));
    assert!(
        (294..=306).contains(&to_a),
        "a got {to_a} of 400, b {}: not 75/25",
        400 - to_a
    );
}

/// first: everything to the first available upstream; backup = true: only when no primary is
/// available (here: killed, so connections are refused and it is ejected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_policy_and_backup_upstreams() {
    let a = Backend::h1("a");
    let b = Backend::h1("b");
    let spare = Backend::h1("spare");
    let srv = start(&sites(&[
        (
            "/first",
            &format!(r#"{}, policy = "first""#, ups(&[&a, &b])),
        ),
        (
            "/backup",
            &format!(
                r#"upstreams = ["{}", {{ url = "{}", backup = true }}]"#,
                a.url(),
                spare.url()
            ),
        ),
    ]));
    let mut c = Client::new(srv.https, "h2");
    for _ in 0..10 {
        assert_eq!(c.get("/first/name").await.text(), "a");
        assert_eq!(c.get("/backup/name").await.text(), "a");
    }
    assert_eq!((b.requests(), spare.requests()), (0, 0));
    drop(a);
    for i in 0..10 {
        let r = c.get("/first/name").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "b".to_string()),
            "first, request {i}"
        );
        let r = c.get("/backup/name").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "spare".to_string()),
            "backup, request {i}"
        );
    }
}

/// random_two: requests spread over every backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_spreads_requests() {
    let bs = [Backend::h1("a"), Backend::h1("b"), Backend::h1("c")];
    let srv = start(&site(&format!(
        r#"{}, policy = "random_two""#,
        ups(&[&bs[0], &bs[1], &bs[2]])
    )));
    let mut c = Client::new(srv.https, "h2");
    for _ in 0..300 {
        assert_eq!(c.get("/name").await.status, 200);
    }
    for b in &bs {
        assert!(b.requests() >= 30, "{} got {} of 300", b.name, b.requests());
    }
}

/// least_conn: while one backend holds a slow request, new requests go to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_requests_to_the_backend_with_fewer_in_flight() {
    let a = Backend::h1("a");
    let b = Backend::h1("b");
    let srv = start(&site(&format!(
        r#"{}, policy = "least_conn""#,
        ups(&[&a, &b])
    )));
    let addr = srv.https;
    let slow = tokio::spawn(async move { Client::new(addr, "h2").get("/slow/1500").await });
    eventually(
        Duration::from_secs(5),
        "the slow request reaching a backend",
        async || a.requests() + b.requests() == 1,
    )
    .await;
    let busy = if a.requests() == 1 { "a" } else { "b" };
    let mut c = Client::new(srv.https, "h2");
    for i in 0..10 {
        let r = c.get("/name").await;
        assert_ne!(
            r.text(),
            busy,
            "request {i} went to the backend holding the slow one"
        );
    }
    assert_eq!(slow.await.unwrap().text(), "slow");
}

/// ip_hash: every request from one client address lands on the same backend, over new
/// connections and both protocols; 20 addresses (127.0.0.1-20) spread over the backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_client_address_on_one_backend() {
    let bs = [Backend::h1("a"), Backend::h1("b"), Backend::h1("c")];
    let srv = start(&site(&format!(
        r#"{}, policy = "ip_hash""#,
        ups(&[&bs[0], &bs[1], &bs[2]])
    )));
    let mut all = std::collections::BTreeSet::new();
    for host in 1..=20 {
        let ip = format!("127.0.0.{host}");
        let mut names = std::collections::BTreeSet::new();
        for i in 0..4 {
            let alpn = if i % 2 == 0 { "h2" } else { "http/1.1" };
            names.insert(Client::from(srv.https, alpn, &ip).get("/name").await.text());
        }
        assert_eq!(names.len(), 1, "{ip} went to {names:?}");
        all.extend(names);
    }
    assert!(all.len() >= 2, "20 client addresses all went to {all:?}");
}

/// header:X-User: the same value sticks to one backend; different values spread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hash_sticks_per_value_and_spreads_across_values() {
    let bs = [Backend::h1("a"), Backend::h1("b"), Backend::h1("c")];
    let srv = start(&site(&format!(
        r#"{}, policy = "header:X-User""#,
        ups(&[&bs[0], &bs[1], &bs[2]])
    )));
    let mut c = Client::new(srv.https, "h2");
    let mut all = std::collections::BTreeSet::new();
    for user in 0..20 {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let mut r = req(Method::GET, "/name", empty());
            r.headers_mut()
                .insert("x-user", format!("user-{user}").parse().unwrap());
            names.insert(c.fetch(r).await.unwrap().text());
        }
        assert_eq!(names.len(), 1, "user-{user} went to {names:?}");
        all.extend(names);
    }
    assert!(all.len() >= 2, "20 users all went to {all:?}");
}

/// cookie:srv: a request without the cookie gets one; with it, every request goes to the
/// backend it names, even where round robin would have moved on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_stickiness_sets_the_cookie_and_honours_it() {
    let a = Backend::h1("a");
    let b = Backend::h1("b");
    let srv = start(&site(&format!(
        r#"{}, policy = "cookie:srv""#,
        ups(&[&a, &b])
    )));
    let mut c = Client::new(srv.https, "h2");
    let first = c.get("/name").await;
    let set = first
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie on the first response: {:?}", first.headers));
    assert!(set.starts_with("srv="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let mut sticky = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut r = req(Method::GET, "/name", empty());
        r.headers_mut()
            .insert("cookie", format!("theme=dark; {cookie}").parse().unwrap());
        let got = c.fetch(r).await.unwrap();
        assert!(got.header("set-cookie").is_none(), "cookie set again");
        sticky.insert(got.text());
    }
    assert_eq!(sticky.into_iter().collect::<Vec<_>>(), [first.text()]);
    // Without the cookie, both backends get requests.
    let mut spread = std::collections::BTreeSet::new();
    for _ in 0..10 {
        spread.insert(c.get("/name").await.text());
    }
    assert_eq!(spread.len(), 2, "{spread:?}");
}

// =============================================================================================
// Failover and health
// =============================================================================================

/// A backend killed in the middle of 500 GETs from 5 concurrent clients (its listener and
/// connections gone at once, requests in flight included): every request still gets its 200,
/// from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_mid_loop_loses_no_request() {
    for alpn in ["http/1.1", "h2"] {
        let a = Backend::h1("a");
        let b = Backend::h1("b");
        let c = Backend::h1("c");
        let srv = start(&site(&ups(&[&a, &b, &c])));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..5 {
            let (addr, done, killed) = (srv.https, done.clone(), killed.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = Client::new(addr, alpn);
                let mut from_b_after_kill = 0;
                for i in 0..100 {
                    // Some requests take a moment, so that the kill finds some in flight.
                    let path = if i % 3 == 0 { "/slow/5" } else { "/name" };
                    let was_killed = killed.load(Ordering::SeqCst);
                    let r = client
                        .fetch(req(Method::GET, path, empty()))
                        .await
                        .unwrap_or_else(|e| panic!("{alpn}: client {t} request {i}: {e}"));
                    assert_eq!(
                        r.status,
                        200,
                        "{alpn}: client {t} request {i}: {}",
                        r.text()
                    );
                    if was_killed && r.text() == "b" {
                        from_b_after_kill += 1;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                from_b_after_kill
            }));
        }
        eventually(Duration::from_secs(30), "150 requests done", async || {
            done.load(Ordering::SeqCst) >= 150
        })
        .await;
        assert!(
            b.requests() > 0,
            "{alpn}: b got nothing before it was killed"
        );
        drop(b);
        killed.store(true, Ordering::SeqCst);
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                0,
                "{alpn}: answers from b after it was killed"
            );
        }
        assert_eq!(done.load(Ordering::SeqCst), 500);
        assert!(a.requests() > 150 && c.requests() > 150, "{alpn}");
    }
}

/// Retries: a request that never reached a backend (refused) is tried on the next, POST
/// included; one that reached a backend that then failed is retried only when idempotent —
/// a POST with a body gets 502 and is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_retried_after_reaching_a_backend() {
    let dead = closed_port();
    let closes = raw_backend(b"");
    let good = Backend::h1("good");
    let srv = start(&sites(&[
        (
            "/refused",
            &format!(
                r#"upstreams = ["http://{dead}", "{}"], policy = "first""#,
                good.url()
            ),
        ),
        (
            "/closes",
            &format!(
                r#"upstreams = ["http://{closes}", "{}"], policy = "first""#,
                good.url()
            ),
        ),
    ]));
    let mut c = Client::new(srv.https, "h2");
    let r = c
        .fetch(req(Method::POST, "/refused/sink", full(vec![b'p'; 5000])))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "5000".to_string()),
        "POST after refused"
    );
    let before = good.requests();
    let r = c
        .fetch(req(Method::POST, "/closes/sink", full(vec![b'p'; 5000])))
        .await
        .unwrap();
    assert_eq!(
        r.status,
        502,
        "POST that reached a failing backend: {}",
        r.text()
    );
    assert_eq!(good.requests(), before, "the POST was sent again");
    let r = c.get("/closes/name").await;
    assert_eq!(
        (r.status, r.text()),
        (200, "good".to_string()),
        "GET retried"
    );
}

/// Requests through the proxy reuse its keep-alive connections to the backend, and HEAD
/// answers carry the length without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_and_head_has_no_body() {
    for b in [Backend::h1("h1"), Backend::h2c("h2c")] {
        let srv = start(&site(&ups(&[&b])));
        for alpn in ["http/1.1", "h2"] {
            let mut c = Client::new(srv.https, alpn);
            for _ in 0..100 {
                assert_eq!(c.get("/name").await.status, 200);
            }
            let r = c
                .fetch(req(Method::HEAD, "/size/12345", empty()))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("content-length"),
                Some("12345"),
                "{} {alpn}",
                b.name
            );
            assert!(r.body.is_empty());
        }
        // 200 sequential requests: a handful of connections (one per server worker at most
        // for HTTP/1.1, one shared for HTTP/2), not one each.
        assert!(
            b.connections() <= 4,
            "{}: {} connections for 202 requests",
            b.name,
            b.connections()
        );
    }
}

/// proxy_protocol = "v1" / "v2": each new connection to the backend starts with a PROXY
/// header naming the client's address (here 127.0.0.9) and the address it connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_headers_name_the_client_to_the_backend() {
    let (v1, seen1) = capturing_backend();
    let (v2, seen2) = capturing_backend();
    let srv = start(&sites(&[
        (
            "/v1",
            &format!(r#"upstreams = [{{ url = "http://{v1}", proxy_protocol = "v1" }}]"#),
        ),
        (
            "/v2",
            &format!(r#"upstreams = [{{ url = "http://{v2}", proxy_protocol = "v2" }}]"#),
        ),
    ]));
    let port = srv.https.port();
    let mut c = Client::from(srv.https, "h2", "127.0.0.9");
    assert_eq!(c.get("/v1/x").await.text(), "ok");
    assert_eq!(c.get("/v2/x").await.text(), "ok");

    let got = seen1.lock().unwrap()[0].clone();
    let line = String::from_utf8_lossy(&got[..got.iter().position(|&b| b == b'\n').unwrap() + 1])
        .into_owned();
    let fields: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    assert_eq!(
        &fields[..4],
        ["PROXY", "TCP4", "127.0.0.9", "127.0.0.1"],
        "{line:?}"
    );
    assert_eq!(fields[5], port.to_string(), "{line:?}");
    assert!(line.ends_with("\r\n"), "{line:?}");
    assert!(
        got[line.len()..].starts_with(b"GET /x HTTP/1.1\r\n"),
        "{:?}",
        text(&got)
    );

    let got = seen2.lock().unwrap()[0].clone();
    assert!(got.starts_with(PP2_SIGNATURE), "{got:?}");
    assert_eq!(got[12], 0x21, "version 2, PROXY command");
    assert_eq!(got[13], 0x11, "TCP over IPv4");
    let len = usize::from(u16::from_be_bytes([got[14], got[15]]));
    assert!(len >= 12, "{len}");
    assert_eq!(&got[16..20], [127, 0, 0, 9], "source address");
    assert_eq!(&got[20..24], [127, 0, 0, 1], "destination address");
    assert_eq!(
        u16::from_be_bytes([got[26], got[27]]),
        port,
        "destination port"
    );
    assert!(got[16 + len..].starts_with(b"GET /x HTTP/1.1\r\n"));
}

/// Active checks: a backend whose /health turns 500 stops getting requests; when it turns
/// 200 again it gets them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_backend_out_and_bring_it_back() {
    let a = Backend::h1("a");
    let b = Backend::h1("b");
    let srv = start(&site(&format!(
        r#"{}, health = {{ path = "/health", interval = "100ms", timeout = "80ms", rise = 2, fall = 2 }}"#,
        ups(&[&a, &b])
    )));
    let mut c = Client::new(srv.https, "h2");
    eventually(
        Duration::from_secs(5),
        "health checks reaching b",
        async || b.health_checks() >= 2,
    )
    .await;
    b.set_health(500);
    // Out: within a few intervals, 20 requests in a row all go to a.
    eventually(Duration::from_secs(5), "b taken out", async || {
        let before = b.requests();
        for _ in 0..20 {
            assert_eq!(c.get("/name").await.status, 200);
        }
        b.requests() == before
    })
    .await;
    b.set_health(200);
    eventually(Duration::from_secs(5), "b brought back", async || {
        let before = b.requests();
        for _ in 0..4 {
            c.get("/name").await;
        }
        b.requests() > before
    })
    .await;
}

/// Every backend down by the health checks: 503 at once (well within a second), a page
/// naming the request id, the same id in X-Request-Id, and Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_gives_503_fast_with_a_request_id() {
    let a = Backend::h1("a");
    let b = Backend::h1("b");
    let srv = start(&site(&format!(
        r#"{}, health = {{ path = "/health", interval = "100ms", timeout = "80ms", rise = 1, fall = 1 }}"#,
        ups(&[&a, &b])
    )));
    a.set_health(503);
    b.set_health(500);
    for alpn in ["h2", "http/1.1"] {
        let mut c = Client::new(srv.https, alpn);
        eventually(Duration::from_secs(5), "both backends down", async || {
            c.get("/name").await.status == 503
        })
        .await;
        // Until the first checks fail, the backends count as up and may get requests.
        let reached = a.requests() + b.requests();
        let t = Instant::now();
        let r = c.get("/name").await;
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{alpn}");
        assert!(took < Duration::from_secs(1), "{alpn}: 503 took {took:?}");
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{alpn}: no X-Request-Id: {:?}", r.headers))
            .to_string();
        assert!(!id.is_empty());
        assert!(
            r.text().contains(&id),
            "{alpn}: page does not name {id}: {}",
            r.text()
        );
        assert!(r.header("retry-after").is_some(), "{alpn}: no Retry-After");
        assert_eq!(
            a.requests() + b.requests(),
            reached,
            "{alpn}: a backend down got the request"
        );
    }
}

/// Connection refused, a backend that closes without answering and one that answers garbage
/// → 502; no response headers in time → 504: short pages with a request id, nothing internal
/// (addresses, ports, error texts, the backend's bytes) in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_timed_out_backends_give_502_and_504_pages_without_internals() {
    let dead = closed_port();
    let slow = Backend::h1("slow");
    // Backends that read the request, then close without a word or answer with garbage.
    let closes = raw_backend(b"");
    let garbage = raw_backend(b"HELLO THERE\r\n\r\n");
    let srv = start(&sites(&[
        ("/refused", &format!("upstreams = [\"http://{dead}\"]")),
        ("/closes", &format!("upstreams = [\"http://{closes}\"]")),
        ("/garbage", &format!("upstreams = [\"http://{garbage}\"]")),
        (
            "/slow",
            &format!(
                r#"{}, timeouts = {{ response_header = "300ms" }}"#,
                ups(&[&slow])
            ),
        ),
    ]));
    let mut c = Client::new(srv.https, "h2");
    let t = Instant::now();
    let refused = c.get("/refused/name").await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    let timed_out = c.get("/slow/slow/3000").await;
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let closed = c.get("/closes/name").await;
    assert_eq!(closed.status, 502, "{}", closed.text());
    let bad = c.get("/garbage/name").await;
    assert_eq!(bad.status, 502, "{}", bad.text());
    let slow_port = slow.addr.unwrap().port().to_string();
    for (r, what) in [
        (&refused, "502 refused"),
        (&timed_out, "504"),
        (&closed, "502 closed"),
        (&bad, "502 garbage"),
    ] {
        let id = r.header("x-request-id").expect("X-Request-Id").to_string();
        let page = r.text();
        assert!(page.contains(&id), "{what}: {page}");
        for secret in [
            "127.0.0.1",
            &dead.port().to_string(),
            &slow_port,
            &closes.port().to_string(),
            &garbage.port().to_string(),
            "HELLO",
            "refused",
            "os error",
            "timed out",
            "hyper",
        ] {
            assert!(
                !page.contains(secret),
                "{what} page leaks {secret:?}: {page}"
            );
        }
    }
}

// =============================================================================================
// Streaming with bounded memory
// =============================================================================================

/// This process's resident set size in bytes (the server, backends and clients all run here).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Samples [`rss`] every 20 ms on a thread until dropped; `peak()` is the highest sample.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start() -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch { peak, stop }
    }
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const GIB: u64 = 1 << 30;
/// How much the process may grow while a gibibyte passes through it.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;

/// 1 GiB down (`/size/N`) and 1 GiB up (to `/sink`) through the proxy over `alpn`, each with
/// a one-second stall of the receiving side, while the resident set grows by less than
/// [`RSS_GROWTH_LIMIT`]: backpressure both ways, no whole-body buffering.
async fn stream_a_gibibyte(alpn: &'static str) {
    let b = Backend::h1("big");
    // The global limit too: a declared Content-Length is checked against it before routing.
    let srv = start(&format!(
        "[limits]\nmax_body_bytes = {}\n{}",
        2 * GIB,
        site(&format!(r#"{}, max_body = "2GiB""#, ups(&[&b])))
    ));
    let mut c = Client::new(srv.https, alpn);
    // Warm up: connections, pools, buffers, TLS state, the allocator's arenas.
    let r = c.get("/size/16777216").await;
    assert_eq!(r.body.len(), 16 << 20);
    let r = c
        .fetch(req(Method::POST, "/sink", Repeat::new(16 << 20).boxed()))
        .await
        .unwrap();
    assert_eq!(r.text(), (16u64 << 20).to_string());

    let base = rss();
    let watch = RssWatch::start();
    let work = async {
        let resp = c
            .send(req(Method::GET, &format!("/size/{GIB}"), empty()))
            .await?;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut down: u64 = 0;
        let mut paused = false;
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| format!("download: {e} after {down} bytes"))?;
            down += f.data_ref().map_or(0, |d| d.len() as u64);
            if !paused && down >= 8 << 20 {
                // A client that stops reading: the backend must be held back, not buffered.
                paused = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // And a backend that stops reading (for a second, after the first MiB).
        let up = c
            .send(req(
                Method::POST,
                "/sink?pause_ms=1000",
                Repeat::new(GIB).boxed(),
            ))
            .await?;
        assert_eq!(up.status(), 200);
        let up = up.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((down, String::from_utf8_lossy(&up.to_bytes()).into_owned()))
    };
    let (down, up) = tokio::time::timeout(Duration::from_secs(600), work)
        .await
        .expect("2 GiB did not pass within 10 minutes")
        .unwrap_or_else(|e| panic!("{alpn}: {e}"));
    assert_eq!(down, GIB, "{alpn}: download length");
    assert_eq!(
        up,
        GIB.to_string(),
        "{alpn}: the backend's count of the upload"
    );
    let growth = watch.peak().saturating_sub(base);
    eprintln!(
        "{alpn}: RSS {} MiB before, peak growth {} KiB while 2 GiB streamed",
        base >> 20,
        growth >> 10
    );
    assert!(
        growth < RSS_GROWTH_LIMIT,
        "{alpn}: RSS grew by {} MiB while 2 GiB streamed (from {} MiB)",
        growth >> 20,
        base >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_gibibyte_each_way_over_h1_keeps_memory_bounded() {
    stream_a_gibibyte("http/1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_gibibyte_each_way_over_h2_keeps_memory_bounded() {
    stream_a_gibibyte("h2").await;
}

/// timeouts.idle: a backend that stops sending in the middle of a body ends the client's
/// response abruptly (HTTP/2: a reset stream; HTTP/1.1: the connection closes before the
/// last chunk), so the client knows it is incomplete; timeouts.total likewise for a body
/// that trickles past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_total_timeouts_cut_the_body_visibly() {
    let b = Backend::h1("drip");
    let srv = start(&sites(&[
        (
            "/idle",
            &format!(r#"{}, timeouts = {{ idle = "300ms" }}"#, ups(&[&b])),
        ),
        (
            "/total",
            &format!(r#"{}, timeouts = {{ total = "1s" }}"#, ups(&[&b])),
        ),
    ]));
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        // Within the limits: whole.
        let r = c.get("/idle/drip/3/100").await;
        assert_eq!(r.text(), "drip\n".repeat(3), "{alpn}");
        for path in ["/idle/drip/3/1500", "/total/drip/20/100"] {
            let t = Instant::now();
            let resp = c.send(req(Method::GET, path, empty())).await.unwrap();
            assert_eq!(resp.status(), 200, "{alpn} {path}");
            let body = tokio::time::timeout(IO_TIMEOUT, resp.into_body().collect())
                .await
                .unwrap_or_else(|_| panic!("{alpn} {path}: the body was never cut"));
            assert!(
                body.is_err(),
                "{alpn} {path}: the cut body ended as if complete"
            );
            assert!(t.elapsed() < Duration::from_secs(5), "{alpn} {path}");
            // The next request still works (HTTP/1.1: on a new connection).
            assert_eq!(c.get("/idle/name").await.text(), "drip", "{alpn}");
        }
    }
}

// =============================================================================================
// Trailers and gRPC
// =============================================================================================

/// A backend's trailers reach an HTTP/2 client, from an h2c backend and from an HTTP/1.1 one
/// (chunked trailers, asked for with `TE: trailers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_the_client_over_h2() {
    response_trailers_reach_the_client("h2").await;
}

/// The same for an HTTP/1.1 client that asks for trailers (`TE: trailers`): chunked trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_trailers_reach_the_client_over_h1() {
    response_trailers_reach_the_client("http/1.1").await;
}

async fn response_trailers_reach_the_client(alpn: &'static str) {
    let h2c = Backend::h2c("h2c");
    let h1 = Backend::h1("h1");
    let srv = start(&sites(&[("/h2c", &ups(&[&h2c])), ("/h1", &ups(&[&h1]))]));
    let mut c = Client::new(srv.https, alpn);
    for prefix in ["/h2c", "/h1"] {
        let mut r = req(Method::GET, &format!("{prefix}/trailers"), empty());
        r.headers_mut().insert("te", "trailers".parse().unwrap());
        let got = c.fetch(r).await.unwrap();
        assert_eq!(
            (got.status, got.text()),
            (200, "body".to_string()),
            "{prefix}"
        );
        let t = got
            .trailers
            .unwrap_or_else(|| panic!("{prefix}: no trailers arrived"));
        assert_eq!(
            t.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{prefix}"
        );
        assert_eq!(
            t.get("x-trailer").map(|v| v.as_bytes()),
            Some(&b"yes"[..]),
            "{prefix}"
        );
    }
}

/// A client's request trailers (HTTP/2) reach an h2c backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_an_h2c_backend() {
    let b = Backend::h2c("h2c");
    let srv = start(&site(&ups(&[&b])));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-req-trailer", "42".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
        Ok(Frame::data(Bytes::from_static(b"some body"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )));
    let mut r = req(Method::POST, "/request-trailers", body);
    r.headers_mut().insert("te", "trailers".parse().unwrap());
    let got = Client::new(srv.https, "h2").fetch(r).await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        seen(&got.text(), "x-req-trailer").as_deref(),
        Some("42"),
        "{}",
        got.text()
    );
}

/// gRPC end to end: tonic's health client over TLS + HTTP/2 to the proxy, which passes it to
/// a tonic server on h2c: `Check` answers SERVING (its status in trailers), an unknown
/// service NOT_FOUND, and a `Watch` stream delivers each change as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_check_through_the_proxy_is_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let grpc = GrpcBackend::start();
    let srv = start(&site(&format!("upstreams = [\"{}\"]", grpc.url())));
    let addr = srv.https;
    let connector = tower::service_fn(move |_: http::Uri| async move {
        let cfg = ClientOpts::default().alpn(&["h2"]).build();
        let tls = tls_connect(addr, Some(ALPHA), cfg).await?;
        Ok::<_, io::Error>(TokioIo::new(tls))
    });
    let channel = tonic::transport::Endpoint::from_static("https://alpha.test")
        .connect_with_connector(connector)
        .await
        .expect("gRPC channel to the proxy");
    let mut client = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    let resp = tokio::time::timeout(IO_TIMEOUT, client.check(check("")))
        .await
        .expect("gRPC check timed out")
        .expect("gRPC check");
    assert_eq!(resp.into_inner().status, ServingStatus::Serving as i32);
    // A gRPC error status (in trailers-only form) comes through as the error it is.
    let err = client
        .check(check("no.such.Service"))
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    // A server stream: each message comes through when the backend sends it, not at the end.
    let mut watch = client.watch(check("")).await.expect("watch").into_inner();
    let next = async |w: &mut tonic::Streaming<_>| {
        tokio::time::timeout(IO_TIMEOUT, w.message())
            .await
            .expect("no message in time")
            .expect("stream error")
            .map(|m: tonic_health::pb::HealthCheckResponse| m.status)
    };
    assert_eq!(next(&mut watch).await, Some(ServingStatus::Serving as i32));
    grpc.reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        next(&mut watch).await,
        Some(ServingStatus::NotServing as i32)
    );
}

// =============================================================================================
// WebSockets
// =============================================================================================

async fn ws_roundtrip<S>(ws: &mut WebSocketStream<S>, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for msg in [
        Message::text("hello through the proxy"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(vec![7u8; 100_000]),
    ] {
        tokio::time::timeout(IO_TIMEOUT, ws.send(msg.clone()))
            .await
            .unwrap_or_else(|_| panic!("{what}: send timed out"))
            .unwrap_or_else(|e| panic!("{what}: send: {e}"));
        let back = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no echo"))
            .unwrap_or_else(|| panic!("{what}: closed"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(back, msg, "{what}");
    }
}

/// WebSocket over HTTP/1.1 Upgrade: text and binary frames both ways, then a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_both_ways_over_h1_upgrade() {
    let b = Backend::h1("ws");
    let srv = start(&site(&ups(&[&b])));
    let cfg = ClientOpts::default().alpn(&["http/1.1"]).build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_tungstenite::client_async("wss://alpha.test/ws", tls),
    )
    .await
    .expect("handshake timed out")
    .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    ws_roundtrip(&mut ws, "h1").await;
    ws.close(None).await.unwrap();
    assert_eq!(b.counters.ws_messages.load(Ordering::Relaxed), 3);
}

/// WebSocket over HTTP/2 extended CONNECT (RFC 8441) to an HTTP/1.1 backend: frames both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_both_ways_over_h2_extended_connect() {
    let b = Backend::h1("ws");
    let srv = start(&site(&ups(&[&b])));
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let (mut send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    // A first request, so that the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) are in.
    let r = send
        .send_request(
            Request::get("https://alpha.test/name")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri("https://alpha.test/ws")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    let resp = tokio::time::timeout(IO_TIMEOUT, send.send_request(connect))
        .await
        .expect("extended CONNECT timed out")
        .expect("extended CONNECT");
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    let upgraded = hyper::upgrade::on(resp).await.expect("upgrade");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws_roundtrip(&mut ws, "h2").await;
    assert_eq!(b.counters.ws_messages.load(Ordering::Relaxed), 3);
}

/// websocket = false: an HTTP/1.1 upgrade goes on as a plain request (its Upgrade is
/// hop-by-hop, so the backend refuses it), an extended CONNECT gets 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_false_passes_no_upgrade() {
    let b = Backend::h1("ws");
    let srv = start(&site(&format!("{}, websocket = false", ups(&[&b]))));
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"GET /ws HTTP/1.1\r\nHost: alpha.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (400, "not a WebSocket upgrade".to_string())
    );
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let (mut send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send.send_request(
        Request::get("https://alpha.test/name")
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri("https://alpha.test/ws")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    let resp = send.send_request(connect).await.unwrap();
    assert_eq!(resp.status(), 501);
    assert_eq!(b.counters.ws_messages.load(Ordering::Relaxed), 0);
}

// =============================================================================================
// Header policy
// =============================================================================================

const SPOOFED: [(&str, &str); 4] = [
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-host", "evil.test"),
    ("forwarded", "for=6.6.6.6;proto=http"),
];

async fn headers_seen(c: &mut Client, path: &str, extra: &[(&str, &str)]) -> String {
    let mut r = req(Method::GET, path, empty());
    for (k, v) in extra {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let got = c.fetch(r).await.unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    got.text()
}

/// From a client that is not a trusted proxy, X-Forwarded-* and Forwarded are replaced by
/// what the proxy knows; from a trusted one (127.0.0.0/8) they are kept and extended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_replaced_from_untrusted_and_extended_from_trusted_clients() {
    let b = Backend::h1("b");
    let srv = start(&sites(&[
        ("/untrusted", &ups(&[&b])),
        (
            "/trusted",
            &format!(r#"{}, trusted_proxies = ["127.0.0.0/8"]"#, ups(&[&b])),
        ),
    ]));
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        let h = headers_seen(&mut c, "/untrusted/headers", &SPOOFED).await;
        assert_eq!(
            seen(&h, "x-forwarded-for").as_deref(),
            Some("127.0.0.1"),
            "{alpn}: {h}"
        );
        assert_eq!(
            seen(&h, "x-forwarded-proto").as_deref(),
            Some("https"),
            "{alpn}"
        );
        assert_eq!(
            seen(&h, "x-forwarded-host").as_deref(),
            Some("alpha.test"),
            "{alpn}"
        );
        assert_eq!(
            seen(&h, "forwarded").as_deref(),
            Some("for=127.0.0.1;proto=https;host=alpha.test"),
            "{alpn}"
        );
        let h = headers_seen(&mut c, "/trusted/headers", &SPOOFED).await;
        assert_eq!(
            seen(&h, "x-forwarded-for").as_deref(),
            Some("6.6.6.6, 127.0.0.1"),
            "{alpn}: {h}"
        );
        assert_eq!(
            seen(&h, "x-forwarded-proto").as_deref(),
            Some("http"),
            "{alpn}"
        );
        assert_eq!(
            seen(&h, "x-forwarded-host").as_deref(),
            Some("evil.test"),
            "{alpn}"
        );
        assert_eq!(
            seen(&h, "forwarded").as_deref(),
            Some("for=6.6.6.6;proto=http, for=127.0.0.1;proto=https;host=alpha.test"),
            "{alpn}"
        );
        // A trusted client that sent none: the proxy's own values.
        let h = headers_seen(&mut c, "/trusted/headers", &[]).await;
        assert_eq!(
            seen(&h, "x-forwarded-for").as_deref(),
            Some("127.0.0.1"),
            "{alpn}"
        );
        assert_eq!(
            seen(&h, "x-forwarded-proto").as_deref(),
            Some("https"),
            "{alpn}"
        );
    }
}

/// Hop-by-hop request fields (those the Connection field lists, Keep-Alive, TE other than
/// `trailers`, Upgrade, Proxy-Authorization) stay at the proxy; end-to-end ones pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_do_not_reach_the_backend() {
    let b = Backend::h1("b");
    let srv = start(&site(&ups(&[&b])));
    let raw = "GET /headers HTTP/1.1\r\nHost: alpha.test\r\n\
        Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers, deflate\r\nUpgrade: foo/2\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        X-End: kept\r\n\r\n";
    let r = raw_tls(srv.https, Some(ALPHA), raw.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.text();
    assert_eq!(seen(&h, "x-end").as_deref(), Some("kept"), "{h}");
    for gone in ["x-hop", "keep-alive", "upgrade", "proxy-authorization"] {
        assert_eq!(seen(&h, gone), None, "{gone} reached the backend:\n{h}");
    }
    let te = seen(&h, "te");
    assert!(
        te.is_none() || te.as_deref() == Some("trailers"),
        "TE reached the backend as {te:?}"
    );
    if let Some(conn) = seen(&h, "connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-hop"),
            "connection: {conn}"
        );
    }
    // Over HTTP/2: TE other than trailers is refused by the protocol; proxy-authorization goes.
    let h = headers_seen(
        &mut Client::new(srv.https, "h2"),
        "/headers",
        &[
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-end", "kept"),
        ],
    )
    .await;
    assert_eq!(seen(&h, "proxy-authorization"), None, "{h}");
    assert_eq!(seen(&h, "x-end").as_deref(), Some("kept"), "{h}");
}

/// The backend's hop-by-hop response fields stay at the proxy, over both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let b = Backend::h1("b");
    let srv = start(&site(&ups(&[&b])));
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"GET /hop HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    for gone in ["x-backend-conn", "keep-alive", "proxy-authenticate"] {
        assert_eq!(
            r.header(gone),
            None,
            "h1: {gone} reached the client: {:?}",
            r.headers
        );
    }
    let got = Client::new(srv.https, "h2").get("/hop").await;
    assert_eq!(got.header("x-end-to-end"), Some("kept"));
    for gone in ["x-backend-conn", "keep-alive", "proxy-authenticate"] {
        assert_eq!(got.header(gone), None, "h2: {gone} reached the client");
    }
}

/// host = "pass" (default: the client's), "upstream" (the backend's address), or a literal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_passed_rewritten_to_the_upstream_or_set() {
    let b = Backend::h1("b");
    let srv = start(&sites(&[
        ("/pass", &ups(&[&b])),
        (
            "/upstream",
            &format!(r#"{}, host = "upstream""#, ups(&[&b])),
        ),
        (
            "/literal",
            &format!(r#"{}, host = "app.internal""#, ups(&[&b])),
        ),
    ]));
    let backend = b.addr.unwrap().to_string();
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        for (prefix, host) in [
            ("/pass", ALPHA),
            ("/upstream", backend.as_str()),
            ("/literal", "app.internal"),
        ] {
            let h = headers_seen(&mut c, &format!("{prefix}/headers"), &[]).await;
            assert_eq!(
                seen(&h, "host").as_deref(),
                Some(host),
                "{alpn} {prefix}:\n{h}"
            );
        }
    }
}

/// strip_prefix = true sends the path without the route's prefix (query kept, `/` for the
/// prefix itself); without it the path goes as it came. Every request carries an
/// X-Request-Id of 16 hex digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_request_id_reach_the_backend() {
    let b = Backend::h1("b");
    let mut config = sites(&[("/strip", &ups(&[&b]))]);
    config.push_str(&format!(
        "[[site.route]]\npath = \"/headers\"\nproxy = {{ {} }}\n",
        ups(&[&b])
    ));
    let srv = start(&config);
    let b_path = |h: &str| seen(h, ":path").unwrap();
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        let h = headers_seen(&mut c, "/strip/headers?q=1&r=%20", &[]).await;
        assert_eq!(b_path(&h), "/headers?q=1&r=%20", "{alpn}");
        let id = seen(&h, "x-request-id").unwrap_or_default();
        assert!(
            id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{alpn}: X-Request-Id {id:?}"
        );
        // A route without strip_prefix: the path as it came.
        let h = headers_seen(&mut c, "/headers?q=1", &[]).await;
        assert_eq!(b_path(&h), "/headers?q=1", "{alpn}");
        let r = c.get("/strip").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "b".to_string()),
            "{alpn}: /strip → /"
        );
        let r = c.get("/strip?x=1").await;
        assert_eq!(
            (r.status, r.text()),
            (200, "b".to_string()),
            "{alpn}: /strip?x=1"
        );
    }
}

/// request_headers and response_headers edits: remove, set (replacing), add (appending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_header_edits_apply() {
    let b = Backend::h1("b");
    let srv = start(&site(&format!(
        r#"{}, request_headers = {{ set = {{ X-Set = "by-proxy" }}, add = {{ X-Add = "by-proxy" }}, remove = ["X-Drop"] }}, response_headers = {{ set = {{ X-Resp = "by-proxy" }}, add = {{ X-Resp-Add = "by-proxy" }}, remove = ["X-Backend-Only"] }}"#,
        ups(&[&b])
    )));
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        let h = headers_seen(
            &mut c,
            "/headers",
            &[("x-set", "client"), ("x-add", "client"), ("x-drop", "1")],
        )
        .await;
        assert_eq!(
            seen(&h, "x-set").as_deref(),
            Some("by-proxy"),
            "{alpn}: {h}"
        );
        assert_eq!(
            seen(&h, "x-add").as_deref(),
            Some("client | by-proxy"),
            "{alpn}: {h}"
        );
        assert_eq!(seen(&h, "x-drop"), None, "{alpn}: {h}");
        let r = c
            .get("/set?X-Backend-Only=1&X-Resp=backend&X-Resp-Add=backend")
            .await;
        assert_eq!(r.header("x-backend-only"), None, "{alpn}");
        assert_eq!(r.header("x-resp"), Some("by-proxy"), "{alpn}");
        let added: Vec<_> = r.headers.get_all("x-resp-add").iter().collect();
        assert_eq!(added, ["backend", "by-proxy"], "{alpn}");
    }
}

/// via = true: Via names the proxy's hop both ways, by the protocol version of each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_is_added_both_ways_when_asked() {
    let b = Backend::h1("b");
    let srv = start(&sites(&[
        ("/via", &format!("{}, via = true", ups(&[&b]))),
        ("/novia", &ups(&[&b])),
    ]));
    for (alpn, version) in [("http/1.1", "1.1"), ("h2", "2")] {
        let mut c = Client::new(srv.https, alpn);
        let h = headers_seen(&mut c, "/via/headers", &[("via", "1.1 upstream-proxy")]).await;
        let via = seen(&h, "via").unwrap_or_else(|| panic!("{alpn}: no Via upstream: {h}"));
        assert!(via.starts_with("1.1 upstream-proxy"), "{alpn}: {via}");
        assert!(
            via.contains(&format!("{version} portcullis")),
            "{alpn}: {via}"
        );
        let r = c.get("/via/name").await;
        let via = r
            .header("via")
            .unwrap_or_else(|| panic!("{alpn}: no Via back"));
        assert!(via.contains("portcullis"), "{alpn}: {via}");
        let h = headers_seen(&mut c, "/novia/headers", &[]).await;
        assert_eq!(seen(&h, "via"), None, "{alpn}");
        assert_eq!(c.get("/novia/name").await.header("via"), None, "{alpn}");
    }
}

/// The site's security headers (HSTS among them) are on proxied responses; a backend's own
/// HSTS loses by default and wins with backend_headers_win = true, and then the site's value
/// still fills in when the backend sends none. The same for the current stage of an HSTS ramp.
/// (alpha.test is a local name: its HSTS is configured explicitly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_hsts_applies_to_proxied_responses_and_backend_headers_win_both_ways() {
    for (hsts_config, site_value) in [
        ("enabled = true", "max-age=31536000"),
        ("ramp = true", "max-age=300"),
    ] {
        site_hsts_on_proxied_responses(hsts_config, site_value).await;
    }
}

async fn site_hsts_on_proxied_responses(hsts_config: &str, site_value: &'static str) {
    let b = Backend::h1("b");
    let config = sites(&[
        ("/site", &ups(&[&b])),
        (
            "/backend",
            &format!("{}, backend_headers_win = true", ups(&[&b])),
        ),
    ])
    .replacen(
        "[[site.route]]",
        &format!("[site.hsts]\n{hsts_config}\n[[site.route]]"),
        1,
    );
    let srv = start(&config);
    let own = "set?Strict-Transport-Security=max-age%3D60";
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        let hsts = |r: &Got| {
            r.headers
                .get_all("strict-transport-security")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(hsts(&c.get("/site/name").await), [site_value], "{alpn}");
        assert_eq!(
            hsts(&c.get(&format!("/site/{own}")).await),
            [site_value],
            "{alpn}"
        );
        assert_eq!(
            c.get("/site/name").await.header("x-content-type-options"),
            Some("nosniff"),
            "{alpn}"
        );
        assert_eq!(
            hsts(&c.get(&format!("/backend/{own}")).await),
            ["max-age=60"],
            "{alpn}"
        );
        assert_eq!(
            hsts(&c.get("/backend/name").await),
            [site_value],
            "{alpn}: backend_headers_win dropped the site's HSTS where the backend sent none"
        );
    }
}

/// A GET that arrives in TLS 1.3 early data reaches the backend with `Early-Data: 1`
/// (RFC 8470 §5.1), so that it can refuse what must not be replayed; the same GET after a
/// full handshake comes without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_early_data_reaches_the_backend_marked_early_data_1() {
    let b = Backend::h1("b");
    let config = site(&ups(&[&b])).replace(
        "key = \"certs/alpha.key\"\n",
        "key = \"certs/alpha.key\"\nearly_data = true\n",
    );
    let srv = start(&config);
    let addr = srv.https;
    let (late, early, accepted) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut cfg = (*ClientOpts::default().tls13().build()).clone();
        cfg.enable_early_data = true;
        let cfg = Arc::new(cfg);
        let name = rustls::pki_types::ServerName::try_from(ALPHA).unwrap();
        let get = b"GET /headers HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n";
        let exchange = |conn: &mut rustls::ClientConnection| {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut s = rustls::Stream::new(conn, &mut tcp);
            let mut out = Vec::new();
            // The server closes after `Connection: close`; how it closes does not matter here.
            let _ = s.read_to_end(&mut out);
            out
        };
        // A full handshake leaves the client a ticket that allows early data.
        let mut conn = rustls::ClientConnection::new(cfg.clone(), name.clone()).unwrap();
        conn.writer().write_all(get).unwrap();
        let late = exchange(&mut conn);
        let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
        conn.early_data()
            .expect("the ticket allows early data")
            .write_all(get)
            .unwrap();
        let early = exchange(&mut conn);
        (late, early, conn.is_early_data_accepted())
    })
    .await
    .unwrap();
    assert!(accepted, "early data was not accepted");
    let headers = |raw: &[u8]| {
        let (r, _) = parse_response(raw, false, true)
            .unwrap()
            .unwrap_or_else(|| panic!("no response in {:?}", text(raw)));
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    };
    let h = headers(&late);
    assert_eq!(seen(&h, "early-data"), None, "after a full handshake:\n{h}");
    let h = headers(&early);
    assert_eq!(
        seen(&h, "early-data").as_deref(),
        Some("1"),
        "in early data:\n{h}"
    );
}

// =============================================================================================
// Compression
// =============================================================================================

/// compress = true: a compressible response is compressed for a client that accepts gzip, br
/// or zstd (and says so in Vary), not for one that accepts none, not when already compressed
/// by type, and not on a route without compress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_true_compresses_compressible_responses_for_clients_that_accept_it() {
    let b = Backend::h1("b");
    let srv = start(&sites(&[
        ("/on", &format!("{}, compress = true", ups(&[&b]))),
        ("/off", &ups(&[&b])),
    ]));
    const N: usize = 64 * 1024;
    for alpn in ["http/1.1", "h2"] {
        let mut c = Client::new(srv.https, alpn);
        let get = async |c: &mut Client, path: &str, accept: Option<&str>| {
            let mut r = req(Method::GET, path, empty());
            if let Some(a) = accept {
                r.headers_mut()
                    .insert("accept-encoding", a.parse().unwrap());
            }
            let got = c.fetch(r).await.unwrap();
            assert_eq!(got.status, 200, "{alpn} {path}");
            got
        };
        let r = get(
            &mut c,
            &format!("/on/text/{N}"),
            Some("gzip, deflate, br, zstd"),
        )
        .await;
        let enc = r.header("content-encoding").map(str::to_string);
        assert!(
            matches!(enc.as_deref(), Some("gzip" | "br" | "zstd")),
            "{alpn}: compress = true, text/plain, Accept-Encoding: gzip, br, zstd: Content-Encoding {enc:?}"
        );
        assert!(r.body.len() < N / 4, "{alpn}: {} bytes", r.body.len());
        let vary = r.header("vary").unwrap_or("").to_ascii_lowercase();
        assert!(vary.contains("accept-encoding"), "{alpn}: Vary {vary:?}");
        let r = get(&mut c, &format!("/on/text/{N}"), Some("gzip")).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{alpn}");
        let r = get(&mut c, &format!("/on/text/{N}"), None).await;
        assert_eq!(
            (r.header("content-encoding"), r.body.len()),
            (None, N),
            "{alpn}"
        );
        let r = get(
            &mut c,
            &format!("/on/text/{N}?type=image/png"),
            Some("gzip"),
        )
        .await;
        assert_eq!(
            (r.header("content-encoding"), r.body.len()),
            (None, N),
            "{alpn} png"
        );
        let r = get(&mut c, &format!("/off/text/{N}"), Some("gzip")).await;
        assert_eq!(
            (r.header("content-encoding"), r.body.len()),
            (None, N),
            "{alpn} off"
        );
    }
}

// =============================================================================================
// Request body limit
// =============================================================================================

/// max_body: a chunked upload (no Content-Length) over the limit gets 413 over HTTP/1.1 and
/// HTTP/2; one under it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_over_max_body_gets_413() {
    let b = Backend::h1("b");
    let srv = start(&site(&format!("{}, max_body = 1024", ups(&[&b]))));
    // HTTP/1.1, chunked by hand.
    let mut chunked = String::from(
        "POST /sink HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..8 {
        chunked.push_str(&format!("200\r\n{}\r\n", "y".repeat(0x200)));
    }
    chunked.push_str("0\r\n\r\n");
    let r = raw_tls(srv.https, Some(ALPHA), chunked.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 413, "h1: {}", r.text());
    // HTTP/2: DATA frames, no content-length.
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = (0..8)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 512]))))
        .collect();
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )));
    let mut c = Client::new(srv.https, "h2");
    let r = c.fetch(req(Method::POST, "/sink", body)).await.unwrap();
    assert_eq!(r.status, 413, "h2: {}", r.text());
    // Under the limit.
    let r = c
        .fetch(req(Method::POST, "/sink", full(vec![b'y'; 1000])))
        .await
        .unwrap();
    assert_eq!((r.status, r.text()), (200, "1000".to_string()));
    // A declared Content-Length over the limit, over HTTP/1.1.
    let mut tls = tls_connect(
        srv.https,
        Some(ALPHA),
        ClientOpts::default().alpn(&["http/1.1"]).build(),
    )
    .await
    .unwrap();
    tls.write_all(b"POST /sink HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 4096\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&[b'y'; 4096]).await.unwrap();
    let r = read_response(&mut tls, &mut Vec::new(), false)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "h1 with Content-Length: {}", r.text());
}

/// A route's max_body above the global `[limits] max_body_bytes` admits bodies up to the
/// route's limit, whether their length is declared (Content-Length) or not (chunked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_max_body_above_the_global_limit_admits_declared_lengths() {
    let b = Backend::h1("b");
    let srv = start(&format!(
        "[limits]\nmax_body_bytes = 1024\n{}",
        site(&format!("{}, max_body = 65536", ups(&[&b])))
    ));
    let mut c = Client::new(srv.https, "http/1.1");
    // Chunked (no length known up front): passes.
    let frames: Vec<Result<Frame<Bytes>, io::Error>> = (0..4)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 1000]))))
        .collect();
    let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )));
    let r = c.fetch(req(Method::POST, "/sink", body)).await.unwrap();
    assert_eq!((r.status, r.text()), (200, "4000".to_string()), "chunked");
    // The same size with a Content-Length.
    let r = c
        .fetch(req(Method::POST, "/sink", full(vec![b'y'; 4000])))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, "4000".to_string()),
        "Content-Length: 4000 under the route's max_body = 65536 refused"
    );
}

// =============================================================================================
// Config errors
// =============================================================================================

/// Bad `proxy` settings that tests/proxy_config.rs (which covers the others) does not try:
/// each is refused at load with `portcullis.toml:LINE` and a message naming the key.
#[test]
fn bad_proxy_settings_are_reported_with_their_line() {
    let env = TestEnv::new();
    let cases: &[(&str, &str)] = &[
        (r#"upstreams = ["127.0.0.1:8080"]"#, "has no scheme"),
        (
            r#"upstreams = ["http://user@127.0.0.1:8080"]"#,
            "user information",
        ),
        (r#"upstreams = ["http://127.0.0.1:0"]"#, "port 0"),
        (
            r#"upstreams = ["http://127.0.0.1:8080"], health = { interval = "soon" }"#,
            "health.interval = \"soon\" is not a duration",
        ),
        (
            r#"upstreams = ["http://127.0.0.1:8080"], health = { status = 99 }"#,
            "health.status",
        ),
        (
            r#"upstreams = ["http://127.0.0.1:8080"], health = { host = "" }"#,
            "health.host",
        ),
        (
            r#"upstreams = ["https://127.0.0.1:8443"], tls = { server_name = "not a name" }"#,
            "tls.server_name",
        ),
        (
            r#"upstreams = ["http://127.0.0.1:8080"], response_headers = { set = { Content-Length = "1" } }"#,
            "response_headers.set: content-length frames the message",
        ),
        (
            r#"upstreams = ["http://127.0.0.1:8080"], response_headers = { add = { "X-Ok" = "line\nbreak" } }"#,
            "response_headers.add",
        ),
        (
            r#"upstreams = ["http://127.0.0.1:8080"], max_body = -1"#,
            "max_body",
        ),
    ];
    let mut failures = Vec::new();
    for (proxy, needle) in cases {
        // The proxy table on its own line, so that the line number is unambiguous.
        let text = format!("{}{}", TestEnv::prelude(), site(proxy));
        let line = text
            .lines()
            .position(|l| l.starts_with("proxy = "))
            .unwrap()
            + 1;
        let path = env.write_config_raw(&text);
        let at = format!("{}:{line}", path.display());
        match portcullis::config::load(
            &path,
            &portcullis::config::validate::Overrides::default(),
            portcullis::config::validate::Mode::Serve,
        ) {
            Ok(_) => failures.push(format!("accepted: {proxy}")),
            Err(problems) => {
                let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                if !all.iter().any(|p| p.contains(&at) && p.contains(needle)) {
                    failures.push(format!(
                        "{proxy}\n  wanted {at} and {needle:?}, got:\n  {}",
                        all.join("\n  ")
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
