//! The reverse proxy's upstream side, driven directly (`portcullis::outbound::UpstreamGroup`)
//! against real backends started here on loopback: hyper HTTP/1.1 and h2c servers, TLS
//! servers with certificates from the test PKI, a Unix-socket server, and raw TCP servers for
//! PROXY headers and misbehaving backends.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::config::proxy::{
    parse_upstream_url, HealthSpec, Policy, ProxyProtocol, ProxySpec, StatusMatch, UpstreamSpec,
    UpstreamTlsSpec,
};
use portcullis::outbound::{BalanceKey, ClientAddrs, Exchange, UpstreamError, UpstreamGroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use common::{pki, Alg, IO_TIMEOUT};

// =============================================================================================
// Backends
// =============================================================================================

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2c,
}

/// What a backend counts and how it answers.
struct State {
    name: String,
    accepted: AtomicUsize,
    requests: AtomicUsize,
    /// Status of `GET /health`.
    health: AtomicU16,
    /// The Host of the last `GET /health`.
    health_host: Mutex<String>,
}

/// A backend server; `kill` (or drop) stops it and closes every connection it has.
struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop.
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// One task per connection.
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Backend {
    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }
    fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }
    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
        self.close_connections();
    }
    /// Closes every open connection (as a backend's keep-alive timeout does); keeps listening.
    fn close_connections(&self) {
        self.conns.lock().unwrap().abort_all();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn state(name: &str) -> Arc<State> {
    Arc::new(State {
        name: name.into(),
        accepted: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
        health: AtomicU16::new(200),
        health_host: Mutex::new(String::new()),
    })
}

/// A response body of one data frame, an optional pause, and optional trailers.
struct TestBody {
    data: Option<Bytes>,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    trailers: Option<HeaderMap>,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(s) = &mut self.stall {
            if s.as_mut().poll(_cx).is_pending() {
                return Poll::Pending;
            }
            self.stall = None;
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }
}

fn body(s: impl Into<Bytes>) -> TestBody {
    TestBody {
        data: Some(s.into()),
        stall: None,
        trailers: None,
    }
}

/// `/health`: the settable status; `/slow`: answers after 3 s; `/trailers`: data and a
/// `grpc-status` trailer; `/echo`: the request body; `/ws`: 101 and an echo of the upgraded
/// bytes; anything else: the backend's name (also in `x-backend`) and the Host it got.
async fn handle(
    mut req: Request<hyper::body::Incoming>,
    st: Arc<State>,
) -> Result<Response<TestBody>, Infallible> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let name = st.name.clone();
    let resp = match req.uri().path() {
        "/health" => {
            let s = st.health.load(Ordering::SeqCst);
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_string());
            *st.health_host.lock().unwrap() = host.unwrap_or_default();
            Response::builder()
                .status(s)
                .body(body(format!("health {s}")))
                .unwrap()
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(body("slow"))
        }
        "/stall" => {
            // Headers and a first chunk, then nothing for 3 s.
            Response::new(TestBody {
                data: Some(Bytes::from_static(b"first")),
                stall: Some(Box::pin(tokio::time::sleep(Duration::from_secs(3)))),
                trailers: None,
            })
        }
        "/trailers" => {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            t.insert("grpc-message", HeaderValue::from_static("fine"));
            Response::builder()
                .header("content-type", "application/grpc")
                .body(TestBody {
                    data: Some(Bytes::from_static(b"\0\0\0\0\x02hi")),
                    stall: None,
                    trailers: Some(t),
                })
                .unwrap()
        }
        "/echo" => {
            let got = req.body_mut().collect().await.map(|c| c.to_bytes());
            Response::new(body(got.unwrap_or_default()))
        }
        "/ws" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(body(Bytes::new()))
                .unwrap()
        }
        _ => {
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_string())
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let te = req
                .headers()
                .get("te")
                .map(|h| h.to_str().unwrap().to_string())
                .unwrap_or_default();
            Response::builder()
                .header("x-backend", name.as_str())
                .header("x-host", host)
                .header("x-te", te)
                .body(body(name))
                .unwrap()
        }
    };
    Ok(resp)
}

/// Serves HTTP on `io` (HTTP/1.1 with upgrades, or HTTP/2).
async fn serve_io<I>(io: I, proto: Proto, st: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, st.clone()));
    let io = TokioIo::new(io);
    match proto {
        Proto::H1 => {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
                .await;
        }
        Proto::H2c => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await;
        }
    }
}

async fn backend(name: &str, proto: Proto) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = state(name);
    let tasks = Arc::new(Mutex::new(JoinSet::new()));
    let conns = Arc::new(Mutex::new(JoinSet::new()));
    let (st2, tasks2) = (st.clone(), conns.clone());
    tasks.lock().unwrap().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            st2.accepted.fetch_add(1, Ordering::SeqCst);
            let st = st2.clone();
            tasks2
                .lock()
                .unwrap()
                .spawn(async move { serve_io(tcp, proto, st).await });
        }
    });
    Backend {
        addr,
        state: st,
        tasks,
        conns,
    }
}

/// A TLS backend with `leaf` (chain with the test intermediate): h2 or http/1.1 by ALPN;
/// with `client_ca`, client certificates from that CA are required.
async fn tls_backend(name: &str, leaf: &common::Leaf, client_ca: Option<&[u8]>) -> Backend {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki().chain_pem(leaf).as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                roots.add(c.unwrap()).unwrap();
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = state(name);
    let tasks = Arc::new(Mutex::new(JoinSet::new()));
    let conns = Arc::new(Mutex::new(JoinSet::new()));
    let (st2, tasks2) = (st.clone(), conns.clone());
    tasks.lock().unwrap().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            st2.accepted.fetch_add(1, Ordering::SeqCst);
            let (st, acceptor) = (st2.clone(), acceptor.clone());
            tasks2.lock().unwrap().spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let proto = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Proto::H2c
                } else {
                    Proto::H1
                };
                serve_io(tls, proto, st).await
            });
        }
    });
    Backend {
        addr,
        state: st,
        tasks,
        conns,
    }
}

/// An address where nothing listens (bound, then closed).
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// =============================================================================================
// Client side
// =============================================================================================

fn up(url: &str) -> UpstreamSpec {
    UpstreamSpec {
        url: url.into(),
        addr: parse_upstream_url(url).unwrap(),
        weight: 1,
        proxy_protocol: None,
        backup: false,
    }
}

fn weighted(url: &str, weight: u32) -> UpstreamSpec {
    UpstreamSpec { weight, ..up(url) }
}

fn spec(upstreams: Vec<UpstreamSpec>) -> ProxySpec {
    ProxySpec::with_upstreams(upstreams)
}

struct Group {
    group: Arc<UpstreamGroup>,
    _shutdown: watch::Sender<bool>,
}

fn group(spec: &ProxySpec) -> Group {
    let (tx, rx) = watch::channel(false);
    Group {
        group: UpstreamGroup::new(spec, rx).unwrap(),
        _shutdown: tx,
    }
}

fn client(ip: &str) -> ClientAddrs {
    ClientAddrs {
        peer: format!("{ip}:40000").parse().unwrap(),
        local: "198.51.100.1:443".parse().unwrap(),
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

impl Group {
    async fn send_as(
        &self,
        req: Request<Full<Bytes>>,
        from: ClientAddrs,
    ) -> Result<Exchange, UpstreamError> {
        let headers = req.headers().clone();
        let key = BalanceKey {
            client: from,
            headers: &headers,
        };
        tokio::time::timeout(IO_TIMEOUT, self.group.send(req, &key))
            .await
            .expect("send did not finish in time")
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Exchange, UpstreamError> {
        self.send_as(req, client("192.0.2.10")).await
    }

    /// GET `path`; the answering backend's name (body read to the end).
    async fn name(&self, path: &str) -> String {
        let ex = self.send(get(path)).await.unwrap_or_else(|e| panic!("{e}"));
        text(ex).await
    }

    /// Waits until `pred` holds for the snapshot (5 s at most).
    async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[portcullis::outbound::BackendSnapshot]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if pred(&self.group.snapshot()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}: {:?}",
                self.group.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn text(ex: Exchange) -> String {
    let b = ex.response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

// =============================================================================================
// Balancing
// =============================================================================================

#[tokio::test]
async fn round_robin_counts_follow_the_weights() {
    let (a, b, c) = (
        backend("a", Proto::H1).await,
        backend("b", Proto::H1).await,
        backend("c", Proto::H1).await,
    );
    let g = group(&spec(vec![
        weighted(&a.url("http"), 1),
        weighted(&b.url("http"), 2),
        weighted(&c.url("http"), 3),
    ]));
    let mut names = Vec::new();
    for _ in 0..60 {
        names.push(g.name("/").await);
    }
    assert_eq!(
        (count(&names, "a"), count(&names, "b"), count(&names, "c")),
        (10, 20, 30)
    );
    assert_eq!((a.requests(), b.requests(), c.requests()), (10, 20, 30));
}

#[tokio::test]
async fn least_conn_avoids_the_backend_with_a_request_in_flight() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H1).await);
    let mut s = spec(vec![up(&a.url("http")), up(&b.url("http"))]);
    s.policy = Policy::LeastConn;
    let g = group(&s);
    // The body of the first response is not read: its request stays in flight.
    let held = g.send(get("/")).await.unwrap();
    let busy = held.response.headers()["x-backend"]
        .to_str()
        .unwrap()
        .to_string();
    let snap = g.group.snapshot();
    assert_eq!(snap.iter().map(|b| b.in_flight).sum::<usize>(), 1);
    for _ in 0..10 {
        assert_ne!(g.name("/").await, busy);
    }
    drop(held);
    g.wait_for("in-flight count released", |s| {
        s.iter().all(|b| b.in_flight == 0)
    })
    .await;
    let names: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(g.name("/").await);
        }
        v
    };
    assert!(
        count(&names, "a") > 0 && count(&names, "b") > 0,
        "{names:?}"
    );
}

#[tokio::test]
async fn ip_hash_keeps_a_client_on_one_backend() {
    let (a, b, c) = (
        backend("a", Proto::H1).await,
        backend("b", Proto::H1).await,
        backend("c", Proto::H1).await,
    );
    let mut s = spec(vec![
        up(&a.url("http")),
        up(&b.url("http")),
        up(&c.url("http")),
    ]);
    s.policy = Policy::IpHash;
    let g = group(&s);
    let mut seen = std::collections::HashSet::new();
    for n in 1..=30 {
        let from = client(&format!("203.0.113.{n}"));
        let first = text(g.send_as(get("/"), from).await.unwrap()).await;
        for _ in 0..3 {
            assert_eq!(text(g.send_as(get("/"), from).await.unwrap()).await, first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "30 clients all on {seen:?}");
}

#[tokio::test]
async fn cookie_stickiness_sets_and_follows_the_cookie() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H1).await);
    let mut s = spec(vec![up(&a.url("http")), up(&b.url("http"))]);
    s.policy = Policy::Cookie("lb".into());
    let g = group(&s);
    let ex = g.send(get("/")).await.unwrap();
    let set = ex
        .set_cookie
        .clone()
        .expect("a Set-Cookie for a request without the cookie");
    let first = text(ex).await;
    let set = set.to_str().unwrap();
    assert!(set.starts_with("lb=") && set.contains("HttpOnly"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    for _ in 0..8 {
        let req = Request::get("/")
            .header("cookie", format!("theme=dark; {cookie}"))
            .body(Full::default())
            .unwrap();
        let ex = g.send(req).await.unwrap();
        assert!(ex.set_cookie.is_none());
        assert_eq!(text(ex).await, first);
    }
}

#[tokio::test]
async fn backups_only_take_traffic_when_the_primaries_are_out() {
    let (a, bk) = (
        backend("a", Proto::H1).await,
        backend("backup", Proto::H1).await,
    );
    let mut backup = up(&bk.url("http"));
    backup.backup = true;
    let g = group(&spec(vec![up(&a.url("http")), backup]));
    for _ in 0..5 {
        assert_eq!(g.name("/").await, "a");
    }
    a.kill();
    for _ in 0..5 {
        assert_eq!(g.name("/").await, "backup");
    }
}

// =============================================================================================
// Failures, retries, health
// =============================================================================================

#[tokio::test]
async fn killing_a_backend_mid_loop_loses_no_idempotent_request() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H1).await);
    let g = group(&spec(vec![up(&a.url("http")), up(&b.url("http"))]));
    let mut names = Vec::new();
    for i in 0..100 {
        if i == 30 {
            a.kill();
        }
        let ex = g
            .send(get("/"))
            .await
            .unwrap_or_else(|e| panic!("request {i} lost: {e}"));
        assert_eq!(ex.response.status(), StatusCode::OK);
        names.push(text(ex).await);
    }
    assert_eq!(count(&names, "a"), 15);
    assert_eq!(count(&names, "b"), 85);
}

/// A backend that reads a request and closes the connection without answering.
async fn closer() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    (addr, n)
}

#[tokio::test]
async fn a_request_that_reached_a_backend_is_retried_only_when_idempotent_and_bodiless() {
    let (bad, hits) = closer().await;
    let good = backend("good", Proto::H1).await;
    let mut s = spec(vec![up(&format!("http://{bad}")), up(&good.url("http"))]);
    s.policy = Policy::First;
    s.passive.max_fails = 0;
    let g = group(&s);

    let ex = g.send(get("/")).await.unwrap();
    assert_eq!(ex.retried.len(), 1);
    assert!(
        matches!(ex.retried[0], UpstreamError::ClosedEarly { .. }),
        "{}",
        ex.retried[0]
    );
    assert_eq!(text(ex).await, "good");

    let post = Request::post("/echo")
        .body(Full::new(Bytes::from_static(b"payment")))
        .unwrap();
    let e = g.send(post).await.expect_err("a POST is not resent");
    assert!(matches!(e, UpstreamError::ClosedEarly { .. }), "{e}");
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    assert!(
        e.to_string()
            .contains("closed the connection before answering"),
        "{e}"
    );

    let put = Request::put("/echo")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    assert!(
        g.send(put).await.is_err(),
        "a PUT with a body is not resent"
    );

    let empty_post = Request::post("/").body(Full::default()).unwrap();
    assert!(g.send(empty_post).await.is_err(), "POST is not idempotent");
    assert_eq!(good.requests(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 4);

    // A connect failure is retried whatever the method.
    let dead = dead_addr().await;
    let mut s = spec(vec![up(&format!("http://{dead}")), up(&good.url("http"))]);
    s.policy = Policy::First;
    let g = group(&s);
    let post = Request::post("/echo")
        .body(Full::new(Bytes::from_static(b"payment")))
        .unwrap();
    let ex = g.send(post).await.unwrap();
    assert!(matches!(
        ex.retried[0],
        UpstreamError::ConnectRefused { .. }
    ));
    assert_eq!(text(ex).await, "payment");
}

#[tokio::test]
async fn passive_ejection_takes_a_failing_backend_out() {
    let dead = dead_addr().await;
    let good = backend("good", Proto::H1).await;
    let mut s = spec(vec![up(&format!("http://{dead}")), up(&good.url("http"))]);
    s.policy = Policy::First;
    s.passive.max_fails = 2;
    let g = group(&s);
    for _ in 0..2 {
        let ex = g.send(get("/")).await.unwrap();
        assert_eq!(ex.retried.len(), 1);
    }
    let snap = g.group.snapshot();
    assert!(snap[0].ejected_for.is_some(), "{snap:?}");
    assert_eq!(snap[0].failures, 2);
    // Ejected: no more attempts on it.
    let ex = g.send(get("/")).await.unwrap();
    assert!(ex.retried.is_empty());
}

#[tokio::test]
async fn active_health_checks_remove_and_readd_a_backend() {
    let (a, b) = (backend("a", Proto::H1).await, backend("b", Proto::H1).await);
    let mut s = spec(vec![up(&a.url("http")), up(&b.url("http"))]);
    s.health = Some(HealthSpec {
        path: "/health".into(),
        status: StatusMatch::Class(2),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(50),
        rise: 2,
        fall: 2,
        host: None,
    });
    let g = group(&s);
    a.set_health(503);
    g.wait_for("a down", |s| !s[0].healthy).await;
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(g.name("/").await, "b");
    }
    // Only health checks reached a meanwhile.
    assert!(a.requests() >= before);
    assert_eq!(*a.state.health_host.lock().unwrap(), a.addr.to_string());
    a.set_health(204);
    g.wait_for("a up", |s| s[0].healthy).await;
    let mut names = Vec::new();
    for _ in 0..10 {
        names.push(g.name("/").await);
    }
    assert_eq!(count(&names, "a"), 5, "{names:?}");
}

#[tokio::test]
async fn all_backends_down_fails_fast_with_no_healthy_backend() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let mut s = spec(vec![
        up(&format!("http://{d1}")),
        up(&format!("http://{d2}")),
    ]);
    s.health = Some(HealthSpec {
        path: "/".into(),
        status: StatusMatch::Exact(200),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(50),
        rise: 1,
        fall: 1,
        host: None,
    });
    // Connecting would take forever if tried (a blackhole): the check must short-cut it.
    s.timeouts.connect = Duration::from_secs(30);
    let g = group(&s);
    g.wait_for("both down", |s| s.iter().all(|b| !b.healthy))
        .await;
    let t = Instant::now();
    let e = g.send(get("/")).await.expect_err("no backend");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(matches!(e, UpstreamError::NoHealthyBackend { .. }), "{e}");
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(e.to_string().contains("2 down by health checks"), "{e}");
}

#[tokio::test]
async fn refused_and_timeouts_in_words() {
    let dead = dead_addr().await;
    let g = group(&spec(vec![up(&format!("http://{dead}"))]));
    let e = g.send(get("/")).await.unwrap_err();
    assert_eq!(e.to_string(), format!("{dead}: connection refused"));
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);

    let slow = backend("slow", Proto::H1).await;
    let mut s = spec(vec![up(&slow.url("http"))]);
    s.timeouts.response_header = Duration::from_millis(200);
    let g = group(&s);
    let t = Instant::now();
    let e = g.send(get("/slow")).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(e, UpstreamError::ResponseHeaderTimeout { .. }),
        "{e}"
    );
    assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        e.to_string().contains("no response headers within 200ms"),
        "{e}"
    );

    // The body stalls after its first chunk: the idle timeout breaks it off.
    let mut s = spec(vec![up(&slow.url("http"))]);
    s.timeouts.idle = Duration::from_millis(200);
    let g = group(&s);
    let ex = g.send(get("/stall")).await.unwrap();
    let mut body = ex.response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    let t = Instant::now();
    let e = body.frame().await.unwrap().expect_err("idle timeout");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, UpstreamError::IdleTimeout { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("the response body stalled for 200ms"),
        "{e}"
    );
    drop(body);
    g.wait_for("in-flight released", |s| s[0].in_flight == 0)
        .await;

    // The total timeout covers headers and body.
    let mut s = spec(vec![up(&slow.url("http"))]);
    s.timeouts.total = Duration::from_millis(300);
    let g = group(&s);
    let e = g.send(get("/slow")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::TotalTimeout { .. }), "{e}");
    let ex = g.send(get("/stall")).await.unwrap();
    let e = ex
        .response
        .into_body()
        .collect()
        .await
        .expect_err("total timeout");
    assert!(
        e.to_string()
            .contains("the exchange took longer than 300ms"),
        "{e}"
    );
}

#[tokio::test]
async fn named_upstreams_resolve_and_connect_failures_are_retried_even_with_retries_0() {
    let a = backend("a", Proto::H1).await;
    let dead = dead_addr().await;
    let mut s = spec(vec![
        up(&format!("http://localhost:{}", dead.port())),
        up(&format!("http://localhost:{}", a.addr.port())),
    ]);
    s.policy = Policy::First;
    s.retries = 0;
    let g = group(&s);
    let ex = g.send(get("/")).await.unwrap();
    assert_eq!(ex.backend.as_ref(), format!("localhost:{}", a.addr.port()));
    assert_eq!(
        ex.response.headers()["x-host"],
        format!("localhost:{}", a.addr.port()).as_str()
    );
    assert_eq!(ex.retried.len(), 1);
    assert_eq!(text(ex).await, "a");
}

// =============================================================================================
// Pool
// =============================================================================================

#[tokio::test]
async fn pool_reuses_connections_and_expires_idle_ones() {
    let a = backend("a", Proto::H1).await;
    let mut s = spec(vec![up(&a.url("http"))]);
    s.pool.idle_timeout = Duration::from_millis(150);
    let g = group(&s);
    for _ in 0..20 {
        assert_eq!(g.name("/").await, "a");
    }
    assert_eq!(a.accepted(), 1, "20 sequential requests on one connection");
    let snap = g.group.snapshot();
    assert_eq!(snap[0].requests, 20);
    assert_eq!(snap[0].connections_opened, 1);
    g.wait_for("idle connection expired", |s| s[0].open_connections == 0)
        .await;
    assert_eq!(g.name("/").await, "a");
    assert_eq!(a.accepted(), 2);
}

#[tokio::test]
async fn connections_closed_by_the_backend_are_replaced() {
    for (proto, scheme) in [(Proto::H1, "http"), (Proto::H2c, "h2c")] {
        let a = backend("a", proto).await;
        // One backend, no retries: a stale pooled connection must not cost a request.
        let mut s = spec(vec![up(&a.url(scheme))]);
        s.retries = 0;
        let g = group(&s);
        for round in 1..=3 {
            assert_eq!(g.name("/").await, "a");
            assert_eq!(g.name("/").await, "a");
            assert_eq!(a.accepted(), round, "{scheme}");
            a.close_connections();
            if round == 2 {
                // The close may still be on its way when the next request goes out.
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(g.group.snapshot()[0].failures, 0, "{scheme}");
    }
}

#[tokio::test]
async fn connection_limit_per_backend() {
    let a = backend("a", Proto::H1).await;
    let mut s = spec(vec![up(&a.url("http"))]);
    s.pool.max_connections_per_backend = 1;
    s.pool.max_idle_per_backend = 1;
    s.timeouts.connect = Duration::from_millis(300);
    let g = group(&s);
    let held = g.send(get("/")).await.unwrap();
    let t = Instant::now();
    let e = g
        .send(get("/"))
        .await
        .expect_err("the only connection is busy");
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert!(
        matches!(e, UpstreamError::ConnectionLimit { limit: 1, .. }),
        "{e}"
    );
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Reading the held body frees the connection for the next request.
    assert_eq!(text(held).await, "a");
    assert_eq!(g.name("/").await, "a");
    assert_eq!(a.accepted(), 1);
}

// =============================================================================================
// Protocols
// =============================================================================================

#[tokio::test]
async fn h2c_multiplexes_on_one_connection_and_passes_trailers() {
    let a = backend("grpc", Proto::H2c).await;
    let g = group(&spec(vec![up(&a.url("h2c"))]));
    let ex = g.send(get("/trailers")).await.unwrap();
    assert_eq!(ex.response.version(), http::Version::HTTP_2);
    let collected = ex.response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");

    let mut set = JoinSet::new();
    let group = Arc::new(g);
    for _ in 0..20 {
        let g = group.clone();
        set.spawn(async move { g.name("/").await });
    }
    while let Some(n) = set.join_next().await {
        assert_eq!(n.unwrap(), "grpc");
    }
    assert_eq!(a.accepted(), 1, "HTTP/2 requests share one connection");
    // HTTP/2 has no Host header: the authority carries it.
    let ex = group
        .send(
            Request::get("/")
                .header("host", "app.example")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ex.response.headers()["x-host"], "app.example");
    // gRPC's `te: trailers` reaches the backend.
    let ex = group
        .send(
            Request::get("/")
                .header("te", "trailers")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ex.response.headers()["x-te"], "trailers");
}

#[tokio::test]
async fn unix_socket_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("app.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let st = state("unix");
    let st2 = st.clone();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            st2.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_io(s, Proto::H1, st2.clone()));
        }
    });
    let g = group(&spec(vec![up(&format!("unix:{}", path.display()))]));
    let ex = g.send(get("/")).await.unwrap();
    assert_eq!(ex.backend.as_ref(), format!("unix:{}", path.display()));
    assert_eq!(ex.response.headers()["x-host"], "localhost");
    assert_eq!(text(ex).await, "unix");
    assert_eq!(g.name("/").await, "unix");
    assert_eq!(st.accepted.load(Ordering::SeqCst), 1);
    server.abort();

    let g = group(&spec(vec![up("unix:/nonexistent/portcullis-test.sock")]));
    let e = g.send(get("/")).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test]
async fn http1_upgrade_hands_over_the_backend_connection() {
    let a = backend("ws", Proto::H1).await;
    let g = group(&spec(vec![up(&a.url("http"))]));
    let req = Request::get("/ws")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::default())
        .unwrap();
    let ex = g.send(req).await.unwrap();
    assert_eq!(ex.response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = ex.upgrade.expect("the upgrade").await.unwrap();
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // The upgraded connection is not pooled: the next request opens another.
    assert_eq!(g.name("/").await, "ws");
    assert_eq!(a.accepted(), 2);
}

/// A backend that reads a PROXY header (v1 line or v2 block), then one HTTP/1.1 request, and
/// answers; the header bytes are sent to the returned channel.
async fn proxy_header_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 16];
                s.read_exact(&mut head[..5]).await.unwrap();
                if &head[..5] == b"PROXY" {
                    head.truncate(5);
                    while !head.ends_with(b"\r\n") {
                        head.push(s.read_u8().await.unwrap());
                    }
                } else {
                    s.read_exact(&mut head[5..16]).await.unwrap();
                    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                    let mut rest = vec![0u8; len];
                    s.read_exact(&mut rest).await.unwrap();
                    head.extend_from_slice(&rest);
                }
                tx.send(head).unwrap();
                let mut req = Vec::new();
                while !req.ends_with(b"\r\n\r\n") {
                    req.push(s.read_u8().await.unwrap());
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                let _ = s.read(&mut [0u8; 1]).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_headers_arrive() {
    let (addr, mut rx) = proxy_header_backend().await;
    for (version, from, expected) in [
        (
            ProxyProtocol::V1,
            client("192.0.2.10"),
            b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n".to_vec(),
        ),
        (ProxyProtocol::V2, client("192.0.2.10"), {
            let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            v.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 10, 198, 51, 100, 1]);
            v.extend_from_slice(&40000u16.to_be_bytes());
            v.extend_from_slice(&443u16.to_be_bytes());
            v
        }),
    ] {
        let mut u = up(&format!("http://{addr}"));
        u.proxy_protocol = Some(version);
        let g = group(&spec(vec![u]));
        let ex = g.send_as(get("/"), from).await.unwrap();
        assert_eq!(text(ex).await, "ok");
        let got = tokio::time::timeout(IO_TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected, "{version:?}");
    }
    // Health checks are the proxy's own connections: v1 UNKNOWN, v2 LOCAL.
    for (version, expected) in [
        (ProxyProtocol::V1, b"PROXY UNKNOWN\r\n".to_vec()),
        (
            ProxyProtocol::V2,
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec(),
        ),
    ] {
        let mut u = up(&format!("http://{addr}"));
        u.proxy_protocol = Some(version);
        let mut s = spec(vec![u]);
        s.health = Some(HealthSpec {
            path: "/health".into(),
            status: StatusMatch::Exact(200),
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
            host: Some("checks.internal".into()),
        });
        let _g = group(&s);
        let got = tokio::time::timeout(IO_TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected, "{version:?}");
    }
}

// =============================================================================================
// TLS to backends
// =============================================================================================

fn tls_spec(url: &str, ca: Option<PathBuf>, server_name: &str) -> ProxySpec {
    let mut s = spec(vec![up(url)]);
    s.tls = UpstreamTlsSpec {
        ca,
        server_name: Some(server_name.into()),
        ..Default::default()
    };
    s
}

#[tokio::test]
async fn tls_backends_verified_with_errors_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &pki().root_pem).unwrap();

    let good = tls_backend("tls", &pki().leaf(&["backend.test"], Alg::Ecdsa), None).await;
    let g = group(&tls_spec(
        &good.url("https"),
        Some(root.clone()),
        "backend.test",
    ));
    let ex = g.send(get("/")).await.unwrap();
    assert_eq!(ex.response.version(), http::Version::HTTP_2, "h2 by ALPN");
    assert_eq!(text(ex).await, "tls");
    // An upgrade needs HTTP/1.1: offered alone by ALPN.
    let req = Request::get("/ws")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::default())
        .unwrap();
    let ex = g.send(req).await.unwrap();
    assert_eq!(ex.response.status(), StatusCode::SWITCHING_PROTOCOLS);

    let g = group(&tls_spec(
        &good.url("https"),
        Some(root.clone()),
        "other.test",
    ));
    let e = g.send(get("/")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("certificate is not valid for the name other.test, only for backend.test"),
        "{e}"
    );
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);

    let g = group(&tls_spec(&good.url("https"), None, "backend.test"));
    let e = g.send(get("/")).await.unwrap_err();
    assert!(e.to_string().contains("untrusted issuer"), "{e}");

    let expired = tls_backend("old", &pki().expired_leaf(&["backend.test"]), None).await;
    let g = group(&tls_spec(
        &expired.url("https"),
        Some(root.clone()),
        "backend.test",
    ));
    let e = g.send(get("/")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("TLS to the backend failed: the backend's certificate expired"),
        "{e}"
    );

    // Plain HTTP where TLS is expected.
    let plain = backend("plain", Proto::H1).await;
    let g = group(&tls_spec(&plain.url("https"), Some(root), "backend.test"));
    let e = g.send(get("/")).await.unwrap_err();
    assert!(matches!(e, UpstreamError::Tls { .. }), "{e}");
}

#[tokio::test]
async fn mutual_tls_to_the_backend() {
    // A client CA of its own, and a client certificate from it.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "proxy client CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut cp = rcgen::CertificateParams::new(vec!["proxy.internal".to_string()]).unwrap();
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &pki().root_pem).unwrap();
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, client_cert.pem()).unwrap();
    let key = dir.path().join("client.key");
    std::fs::write(&key, client_key.serialize_pem()).unwrap();

    let b = tls_backend(
        "mtls",
        &pki().leaf(&["backend.test"], Alg::Ecdsa),
        Some(ca_cert.pem().as_bytes()),
    )
    .await;
    let mut s = tls_spec(&b.url("https"), Some(root.clone()), "backend.test");
    s.tls.client_cert = Some((cert, key));
    let g = group(&s);
    assert_eq!(g.name("/").await, "mtls");

    // Without the client certificate the backend refuses (TLS 1.3 tells after the
    // handshake: the request fails).
    let g = group(&tls_spec(&b.url("https"), Some(root), "backend.test"));
    let e = g.send(get("/")).await.unwrap_err();
    assert!(
        e.to_string().contains("requires a client certificate"),
        "{e}"
    );
}

#[tokio::test]
async fn the_group_stops_its_tasks_on_shutdown() {
    let a = backend("a", Proto::H1).await;
    let mut s = spec(vec![up(&a.url("http"))]);
    s.health = Some(HealthSpec {
        path: "/health".into(),
        status: StatusMatch::Exact(200),
        interval: Duration::from_millis(30),
        timeout: Duration::from_millis(30),
        rise: 1,
        fall: 1,
        host: None,
    });
    let (tx, rx) = watch::channel(false);
    let g = UpstreamGroup::new(&s, rx).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.requests() >= 2, "checks run");
    tx.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = a.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.requests(), n, "no checks after shutdown");
    drop(g);

    // Dropping the group stops them too.
    let (_tx, rx) = watch::channel(false);
    let g = UpstreamGroup::new(&s, rx).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(g);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = a.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.requests(), n, "no checks after the group is dropped");
}

#[tokio::test]
async fn request_bodies_stream_to_the_backend() {
    let a = backend("a", Proto::H1).await;
    let h2 = backend("b", Proto::H2c).await;
    for url in [a.url("http"), h2.url("h2c")] {
        let g = group(&spec(vec![up(&url)]));
        let data = Bytes::from(vec![b'x'; 300_000]);
        let req = Request::post("/echo")
            .body(Full::new(data.clone()))
            .unwrap();
        let ex = g.send(req).await.unwrap();
        let got = ex.response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, data, "{url}");
    }
    // A request without Host gets the upstream's.
    let g = group(&spec(vec![up(&a.url("http"))]));
    let ex = g.send(get("/")).await.unwrap();
    assert_eq!(ex.response.headers()["x-host"], a.addr.to_string().as_str());
    let _ = TcpStream::connect(a.addr).await.unwrap();
}
