//! Backends for the reverse proxy's tests: real servers on `127.0.0.1:0` (or a Unix socket)
//! started inside a test, on the test's runtime.
//!
//! [`Backend`] is a hyper server in one of several shapes ([`Backend::h1`], [`Backend::tls`],
//! [`Backend::unix`], [`Backend::h2c`]) with the same routes everywhere:
//!
//! | path | answer |
//! |---|---|
//! | `/name` | the backend's name |
//! | `/headers` | `:path: /headers?...` (as received), `:authority` over HTTP/2, then the request's headers, one `name: value` line each |
//! | `/echo` | the request body, streamed back as it comes |
//! | `/sink` | reads the request body to its end and answers with its length in bytes |
//! | `/size/N` | N bytes (`x`), streamed in 64 KiB chunks, with a Content-Length |
//! | `/text/N?type=T` | N bytes of repeated English text as `T` (default `text/plain`) |
//! | `/sink?pause_ms=MS` | the same, pausing MS milliseconds after the first MiB |
//! | `/drip/N/MS` | N chunks of `drip\n`, MS milliseconds apart (no Content-Length) |
//! | `/status/N` | status N |
//! | `/slow/MS` | "slow" after MS milliseconds |
//! | `/trailers` | `body` then the trailers `grpc-status: 0` and `x-trailer: yes` (announced in `Trailer`) |
//! | `/request-trailers` | the request's trailers, one `name: value` line each |
//! | `/set?Name=value&...` | 200 with those response headers (percent-decoded) |
//! | `/hop` | 200 with hop-by-hop response headers a proxy must not pass on |
//! | `/ws` | a WebSocket echo (text and binary frames) after an RFC 6455 handshake |
//! | `/health` | the status in [`Backend::health`] (200 at first), `ok` |
//! | anything else | 200, the backend's name |
//!
//! Each counts accepted connections and requests ([`Counters`]). Dropping a backend stops it
//! at once: the listener closes (new connections are refused) and every open connection,
//! WebSocket included, is dropped mid-way, as when the process behind it dies.
//!
//! [`GrpcBackend`] is a tonic server with the standard health service (`grpc.health.v1`) on
//! h2c.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

use super::{pki, Alg, Leaf};

/// What a backend has seen so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Requests answered, health checks (`/health`) apart.
    pub requests: AtomicUsize,
    /// Health checks answered.
    pub health_checks: AtomicUsize,
    /// WebSocket messages echoed.
    pub ws_messages: AtomicUsize,
}

/// How a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 over TCP (with upgrades).
    H1,
    /// HTTP/2 with prior knowledge over TCP.
    H2c,
    /// TLS, then HTTP/2 or HTTP/1.1 by ALPN (`h2` offered when `h2` is true).
    Tls { h2: bool },
    /// HTTP/1.1 over a Unix domain socket.
    Unix,
}

/// A running backend. Dropping it stops it (see the module docs).
pub struct Backend {
    pub name: String,
    pub proto: Proto,
    /// The TCP address (`None` for a Unix socket).
    pub addr: Option<SocketAddr>,
    /// The socket path of a Unix backend.
    pub path: Option<PathBuf>,
    pub counters: Arc<Counters>,
    /// The status `/health` answers with.
    pub health: Arc<AtomicU16>,
    stop: watch::Sender<bool>,
    _dir: Option<tempfile::TempDir>,
}

/// The state every connection of a backend shares.
struct Shared {
    name: String,
    counters: Arc<Counters>,
    health: Arc<AtomicU16>,
    stop: watch::Receiver<bool>,
}

type RespBody = BoxBody<Bytes, io::Error>;

impl Backend {
    /// Plain HTTP/1.1 on 127.0.0.1.
    pub fn h1(name: &str) -> Backend {
        Self::tcp(name, Proto::H1)
    }

    /// h2c (HTTP/2 with prior knowledge) on 127.0.0.1.
    pub fn h2c(name: &str) -> Backend {
        Self::tcp(name, Proto::H2c)
    }

    /// TLS on 127.0.0.1 with a certificate from the test PKI for `backend.test` and
    /// `127.0.0.1`, chained to [`pki`]'s root; HTTP/2 by ALPN when `h2`, else HTTP/1.1.
    pub fn tls(name: &str, h2: bool) -> Backend {
        Self::tcp_with(
            name,
            Proto::Tls { h2 },
            Some(tls_acceptor(&backend_leaf(), h2, None)),
        )
    }

    /// [`Backend::tls`] (HTTP/1.1) that requires a client certificate issued by `client_ca`
    /// (DER); a handshake without one fails (its connection is still counted).
    pub fn tls_mutual(
        name: &str,
        client_ca: rustls::pki_types::CertificateDer<'static>,
    ) -> Backend {
        let acceptor = tls_acceptor(&backend_leaf(), false, Some(client_ca));
        Self::tcp_with(name, Proto::Tls { h2: false }, Some(acceptor))
    }

    /// HTTP/1.1 on a Unix socket in a temporary directory.
    pub fn unix(name: &str) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.sock"));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let b = Backend {
            name: name.to_string(),
            proto: Proto::Unix,
            addr: None,
            path: Some(path),
            counters: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
            stop,
            _dir: Some(dir),
        };
        let shared = b.shared(stop_rx);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped(shared.stop.clone()) => return,
                };
                let Ok((io, _)) = accepted else { continue };
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(shared.clone(), Proto::Unix, io));
            }
        });
        b
    }

    fn tcp(name: &str, proto: Proto) -> Backend {
        Self::tcp_with(name, proto, None)
    }

    fn tcp_with(name: &str, proto: Proto, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let b = Backend {
            name: name.to_string(),
            proto,
            addr: Some(addr),
            path: None,
            counters: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
            stop,
            _dir: None,
        };
        let shared = b.shared(stop_rx);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped(shared.stop.clone()) => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                match &acceptor {
                    None => {
                        tokio::spawn(serve(shared, proto, tcp));
                    }
                    Some(acc) => {
                        let acc = acc.clone();
                        tokio::spawn(async move {
                            if let Ok(Ok(tls)) =
                                tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await
                            {
                                serve(shared, proto, tls).await;
                            }
                        });
                    }
                }
            }
        });
        b
    }

    fn shared(&self, stop: watch::Receiver<bool>) -> Arc<Shared> {
        Arc::new(Shared {
            name: self.name.clone(),
            counters: self.counters.clone(),
            health: self.health.clone(),
            stop,
        })
    }

    /// The backend as an entry of `upstreams`: `http://127.0.0.1:PORT`, `h2c://...`,
    /// `https://...`, `unix:/path`.
    pub fn url(&self) -> String {
        match self.proto {
            Proto::H1 => format!("http://{}", self.addr.unwrap()),
            Proto::H2c => format!("h2c://{}", self.addr.unwrap()),
            Proto::Tls { .. } => format!("https://{}", self.addr.unwrap()),
            Proto::Unix => format!("unix:{}", self.path.as_ref().unwrap().display()),
        }
    }

    /// Requests answered so far (health checks apart).
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Health checks answered so far.
    pub fn health_checks(&self) -> usize {
        self.counters.health_checks.load(Ordering::Relaxed)
    }

    /// Makes `/health` answer `status` from now on.
    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The TLS backends' certificate: `backend.test` and `127.0.0.1`, issued by the test PKI.
pub fn backend_leaf() -> Leaf {
    static LEAF: std::sync::OnceLock<Leaf> = std::sync::OnceLock::new();
    LEAF.get_or_init(|| pki().leaf(&["backend.test", "127.0.0.1"], Alg::Ecdsa))
        .clone()
}

/// A TLS acceptor serving `leaf` + the test intermediate, offering `h2` (when asked) and
/// `http/1.1` by ALPN; with `client_ca`, clients must present a certificate it issued.
pub fn tls_acceptor(
    leaf: &Leaf,
    h2: bool,
    client_ca: Option<rustls::pki_types::CertificateDer<'static>>,
) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
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
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Serves one connection until it ends or the backend stops (then drops it mid-way).
async fn serve<I>(shared: Arc<Shared>, proto: Proto, io: I)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stop = shared.stop.clone();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| route(shared.clone(), req))
    };
    let io = TokioIo::new(io);
    match proto {
        Proto::H1 | Proto::Unix => {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = stopped(stop) => {}
            }
        }
        Proto::H2c => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = stopped(stop) => {}
            }
        }
        Proto::Tls { .. } => {
            // HTTP/2 when the client sends its preface (it does after ALPN h2), else HTTP/1.1.
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = stopped(stop) => {}
            }
        }
    }
}

fn text(status: u16, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    r
}

fn header_lines(h: &HeaderMap) -> String {
    h.iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

async fn route(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        shared
            .counters
            .health_checks
            .fetch_add(1, Ordering::Relaxed);
        return Ok(text(shared.health.load(Ordering::Relaxed), "ok"));
    }
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let (first, rest) = match path[1..].split_once('/') {
        Some((a, b)) => (a, b),
        None => (&path[1..], ""),
    };
    let resp = match first {
        "name" => text(200, shared.name.clone()),
        "headers" => {
            let mut out = format!(
                ":path: {}\n",
                req.uri().path_and_query().map_or("", |p| p.as_str())
            );
            if req.version() == http::Version::HTTP_2 {
                if let Some(a) = req.uri().authority() {
                    out.push_str(&format!(":authority: {a}\n"));
                }
            }
            out.push_str(&header_lines(req.headers()));
            text(200, out)
        }
        "echo" => {
            let mut r = Response::new(req.into_body().map_err(io::Error::other).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        "sink" => {
            let pause = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("pause_ms="))
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis);
            let mut body = req.into_body();
            let mut n: u64 = 0;
            let mut paused = false;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return Ok(text(400, format!("body error: {e}"))),
                }
                if let Some(p) = pause.filter(|_| !paused && n >= 1 << 20) {
                    paused = true;
                    tokio::time::sleep(p).await;
                }
            }
            text(200, n.to_string())
        }
        "drip" => {
            // /drip/N/MS: N chunks of "drip\n", MS milliseconds apart (no Content-Length).
            let (n, ms) = rest.split_once('/').unwrap_or((rest, "0"));
            let (n, ms): (usize, u64) = (n.parse().unwrap_or(0), ms.parse().unwrap_or(0));
            let chunks = futures_util::stream::unfold(0, move |i| async move {
                if i == n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let frame: Result<Frame<Bytes>, io::Error> =
                    Ok(Frame::data(Bytes::from_static(b"drip\n")));
                Some((frame, i + 1))
            });
            Response::new(BodyExt::boxed(http_body_util::StreamBody::new(chunks)))
        }
        "size" => {
            let n: u64 = rest.parse().unwrap_or(0);
            let mut r = Response::new(Repeat::new(n).boxed());
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        "text" => {
            let n: usize = rest.parse().unwrap_or(0);
            let words = "The quick brown fox jumps over the lazy dog. ".repeat(n / 45 + 1);
            let mut r = text(200, Bytes::from(words).slice(..n));
            let ty = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("type="))
                .map(|t| {
                    percent_encoding::percent_decode_str(t)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .unwrap_or_else(|| "text/plain; charset=utf-8".into());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(&ty).unwrap(),
            );
            r
        }
        "status" => {
            let code: u16 = rest.parse().unwrap_or(500);
            text(code, format!("status {code}"))
        }
        "slow" => {
            let ms: u64 = rest.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(200, "slow")
        }
        "trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("x-trailer", HeaderValue::from_static("yes"));
            let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b"body"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(
                futures_util::stream::iter(frames),
            )));
            // HTTP/1.1 (hyper) sends only the trailer fields the head announces.
            r.headers_mut().insert(
                http::header::TRAILER,
                HeaderValue::from_static("grpc-status, x-trailer"),
            );
            r
        }
        "request-trailers" => match req.into_body().collect().await {
            Ok(c) => text(200, c.trailers().map(header_lines).unwrap_or_default()),
            Err(e) => text(400, format!("body error: {e}")),
        },
        "set" => {
            let mut r = text(200, "set");
            for pair in req.uri().query().unwrap_or("").split('&') {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                r.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            r
        }
        "hop" => {
            let mut r = text(200, "hop");
            let h = r.headers_mut();
            h.insert("connection", HeaderValue::from_static("x-backend-conn"));
            h.insert("x-backend-conn", HeaderValue::from_static("secret"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
            h.insert("x-end-to-end", HeaderValue::from_static("kept"));
            r
        }
        "ws" => ws_handshake(shared, req),
        _ => text(200, shared.name.clone()),
    };
    Ok(resp)
}

/// Answers an RFC 6455 upgrade with 101 and echoes the connection's frames on a task.
fn ws_handshake(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<RespBody> {
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(400, "no Sec-WebSocket-Key");
    };
    if !upgrade {
        return text(400, "not a WebSocket upgrade");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let echo = async {
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        shared.counters.ws_messages.fetch_add(1, Ordering::Relaxed);
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => {
                        let _ = ws.flush().await;
                        return;
                    }
                    _ => {}
                }
            }
        };
        tokio::select! {
            _ = echo => {}
            _ = stopped(stop) => {}
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).unwrap(),
    );
    r
}

/// `left` bytes of `chunk`'s content, a chunk (or less, at the end) per frame: the same
/// `Bytes` handed out each time, so whoever sends it holds 64 KiB whatever the size.
pub struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl Repeat {
    /// `n` bytes of `x`.
    pub fn new(n: u64) -> Repeat {
        Repeat {
            left: n,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A tonic gRPC server with the `grpc.health.v1.Health` service (overall status SERVING) on
/// h2c at 127.0.0.1. Dropping it stops it.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    pub reporter: tonic_health::server::HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GrpcBackend {
    pub fn start() -> GrpcBackend {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        GrpcBackend {
            addr,
            reporter,
            stop: Some(stop),
        }
    }

    /// `h2c://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("h2c://{}", self.addr)
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
