//! Connections per backend: idle HTTP/1.1 keep-alive connections, shared HTTP/2 connections,
//! and the per-backend connection limit.
//!
//! * HTTP/1.1: one request at a time per connection. After a response the connection goes back
//!   to the idle list once hyper says it is ready again (the body was read to its end); an
//!   upgraded connection (101) never does. Idle connections are reused newest first, checked
//!   with `is_ready` (a backend that closed one is noticed by hyper's connection task), and
//!   dropped after `pool.idle_timeout` or beyond `pool.max_idle_per_backend` (oldest first).
//! * HTTP/2: requests share one connection per backend; another one is opened only when it
//!   is closed (GOAWAY, error) or carries [`H2_STREAMS_PER_CONN`] streams already. One dial at
//!   a time, so a burst of requests does not open a connection each.
//! * `pool.max_connections_per_backend`: a request that finds every connection busy waits for
//!   one to close, up to `timeouts.connect`, then fails with
//!   [`UpstreamError::ConnectionLimit`] (503), which is retried on another backend like any
//!   failure before sending. An HTTP/2 connection counts once however many streams it carries;
//!   a WebSocket tunnel stops counting once upgraded.
//! * With `proxy_protocol`, a connection carries one client's address in its PROXY header, so
//!   it is only reused for requests from that same client connection.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connector::{Connected, Connector, Target};
use super::error::UpstreamError;
use super::ClientAddrs;
use crate::config::proxy::PoolSpec;

/// Request bodies toward backends: the caller's body type, boxed so that one pool serves
/// every body type.
pub type ReqBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Streams one HTTP/2 connection carries before another is opened (the usual
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; a backend allowing fewer makes hyper queue the rest).
pub const H2_STREAMS_PER_CONN: usize = 100;

/// HTTP/2 connections are pinged this often (busy or idle), and closed when a ping is not
/// answered within [`H2_PING_TIMEOUT`]: every request to the backend shares the connection,
/// so one that died silently (a backend host gone without closing) must not hold them all
/// until their response-header timeouts.
pub const H2_PING_EVERY: Duration = Duration::from_secs(20);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections of one backend.
pub struct Pool {
    spec: PoolSpec,
    idle: Arc<Mutex<Vec<IdleH1>>>,
    h2: Mutex<Vec<H2Conn>>,
    /// One HTTP/2 dial at a time.
    dial_h2: tokio::sync::Mutex<()>,
    /// The backend spoke HTTP/2 last time (h2c, or ALPN chose h2): dial under `dial_h2`.
    h2_hint: AtomicBool,
    limit: Option<Arc<Semaphore>>,
    /// Open connections (HTTP/1.1 and HTTP/2), for the snapshot.
    open: Arc<AtomicUsize>,
    /// Connections opened so far.
    pub(crate) opened: AtomicU64,
}

struct IdleH1 {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
    client: Option<ClientAddrs>,
    /// The thread whose runtime drives the connection (see [`thread_key`]).
    thread: u64,
}

/// This thread's key. A connection's task runs on the worker that opened it (each worker has
/// a runtime of its own), so a request reuses only idle connections of its own worker: one of
/// another worker would be driven across threads, every read and write of it a cross-thread
/// wake-up. Each worker keeps its own idle connections (up to `max_idle_per_backend` in all).
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    KEY.with(|k| *k)
}

struct H2Conn {
    sender: http2::SendRequest<ReqBody>,
    client: Option<ClientAddrs>,
    streams: Arc<AtomicUsize>,
    last_used: Instant,
}

/// Held by a connection's driver task: counts the connection open and holds its slot under
/// the per-backend limit until the connection ends.
struct ConnToken {
    open: Arc<AtomicUsize>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for ConnToken {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One HTTP/2 stream counted on its connection while the exchange lasts.
pub struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection ready for one request.
pub enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>, StreamGuard),
}

/// What [`Pool::lease`] hands out.
pub struct Lease {
    pub sender: Sender,
    /// The connection served a request before.
    pub reused: bool,
    /// Time spent opening it (zero when reused).
    pub connect_time: Duration,
}

impl Sender {
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(..))
    }

    /// Sends `req`; when the connection turned out unusable before anything was written,
    /// the request comes back inside the error.
    pub async fn send(
        &mut self,
        req: http::Request<ReqBody>,
    ) -> Result<http::Response<Incoming>, TrySendError<http::Request<ReqBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s, _) => s.try_send_request(req).await,
        }
    }
}

impl Pool {
    pub fn new(spec: PoolSpec, h2_known: bool) -> Pool {
        Pool {
            spec,
            idle: Arc::new(Mutex::new(Vec::new())),
            h2: Mutex::new(Vec::new()),
            dial_h2: tokio::sync::Mutex::new(()),
            h2_hint: AtomicBool::new(h2_known),
            limit: (spec.max_connections_per_backend > 0)
                .then(|| Arc::new(Semaphore::new(spec.max_connections_per_backend))),
            open: Arc::new(AtomicUsize::new(0)),
            opened: AtomicU64::new(0),
        }
    }

    /// Open connections and idle HTTP/1.1 connections.
    pub fn counts(&self) -> (usize, usize) {
        (self.open.load(Ordering::Relaxed), lock(&self.idle).len())
    }

    /// A connection for one request: a shared HTTP/2 one, an idle HTTP/1.1 one, or a new one.
    /// `h1_only`: the request upgrades (WebSocket) and needs HTTP/1.1. `client`: the client
    /// connection's addresses when the backend gets PROXY headers.
    pub async fn lease(
        &self,
        connector: &Connector,
        target: &Target,
        backend: &Arc<str>,
        client: Option<&ClientAddrs>,
        h1_only: bool,
        connect_timeout: Duration,
    ) -> Result<Lease, UpstreamError> {
        if !h1_only {
            if let Some(l) = self.shared_h2(client) {
                return Ok(l);
            }
        }
        if let Some(s) = self.idle_h1(client) {
            return Ok(Lease {
                sender: Sender::H1(s),
                reused: true,
                connect_time: Duration::ZERO,
            });
        }
        if !h1_only && self.h2_hint.load(Ordering::Relaxed) {
            // Waiting for another request's dial counts against this one's connect timeout,
            // so requests queued behind a dial that hangs fail together, not one after another.
            let start = Instant::now();
            let Ok(_dialing) = tokio::time::timeout(connect_timeout, self.dial_h2.lock()).await
            else {
                return Err(UpstreamError::ConnectTimeout {
                    backend: backend.clone(),
                    after: connect_timeout,
                });
            };
            if let Some(l) = self.shared_h2(client) {
                return Ok(l);
            }
            let left = connect_timeout.saturating_sub(start.elapsed());
            return self
                .dial(connector, target, backend, client, h1_only, left)
                .await
                .map_err(|e| match e {
                    UpstreamError::ConnectTimeout { backend, .. } => {
                        UpstreamError::ConnectTimeout {
                            backend,
                            after: connect_timeout,
                        }
                    }
                    e => e,
                });
        }
        self.dial(connector, target, backend, client, h1_only, connect_timeout)
            .await
    }

    fn shared_h2(&self, client: Option<&ClientAddrs>) -> Option<Lease> {
        let mut list = lock(&self.h2);
        list.retain(|c| !c.sender.is_closed());
        let c = list.iter_mut().find(|c| {
            c.client.as_ref() == client
                && c.sender.is_ready()
                && c.streams.load(Ordering::Relaxed) < H2_STREAMS_PER_CONN
        })?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        c.last_used = Instant::now();
        Some(Lease {
            sender: Sender::H2(c.sender.clone(), StreamGuard(c.streams.clone())),
            reused: true,
            connect_time: Duration::ZERO,
        })
    }

    fn idle_h1(&self, client: Option<&ClientAddrs>) -> Option<http1::SendRequest<ReqBody>> {
        let me = thread_key();
        let mut list = lock(&self.idle);
        while let Some(pos) = list
            .iter()
            .rposition(|c| c.client.as_ref() == client && c.thread == me)
        {
            let c = list.remove(pos);
            if c.since.elapsed() < self.spec.idle_timeout && c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    }

    async fn dial(
        &self,
        connector: &Connector,
        target: &Target,
        backend: &Arc<str>,
        client: Option<&ClientAddrs>,
        h1_only: bool,
        connect_timeout: Duration,
    ) -> Result<Lease, UpstreamError> {
        let start = Instant::now();
        let permit = match &self.limit {
            None => None,
            Some(sem) => {
                match tokio::time::timeout(connect_timeout, sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    _ => {
                        return Err(UpstreamError::ConnectionLimit {
                            backend: backend.clone(),
                            limit: self.spec.max_connections_per_backend,
                        })
                    }
                }
            }
        };
        let timed_out = || UpstreamError::ConnectTimeout {
            backend: backend.clone(),
            after: connect_timeout,
        };
        let connect = async {
            let Connected { io, h2 } = connector.connect(target, backend, client, h1_only).await?;
            self.open.fetch_add(1, Ordering::Relaxed);
            self.opened.fetch_add(1, Ordering::Relaxed);
            let token = ConnToken {
                open: self.open.clone(),
                _permit: permit,
            };
            let io = TokioIo::new(io);
            let handshake_err = |e: hyper::Error| UpstreamError::BadResponse {
                backend: backend.clone(),
                detail: format!("HTTP handshake failed: {e}"),
            };
            if h2 {
                self.h2_hint.store(true, Ordering::Relaxed);
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(H2_PING_EVERY)
                    .keep_alive_timeout(H2_PING_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .handshake(io)
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(async move {
                    let _token = token;
                    let _ = conn.await;
                });
                let streams = Arc::new(AtomicUsize::new(1));
                lock(&self.h2).push(H2Conn {
                    sender: sender.clone(),
                    client: client.copied(),
                    streams: streams.clone(),
                    last_used: Instant::now(),
                });
                Ok(Sender::H2(sender, StreamGuard(streams)))
            } else {
                let (mut sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(handshake_err)?;
                tokio::spawn(async move {
                    let _token = token;
                    let _ = conn.with_upgrades().await;
                });
                sender
                    .ready()
                    .await
                    .map_err(|_| UpstreamError::ClosedEarly {
                        backend: backend.clone(),
                    })?;
                Ok(Sender::H1(sender))
            }
        };
        let remaining = connect_timeout.saturating_sub(start.elapsed());
        let sender = tokio::time::timeout(remaining, connect)
            .await
            .map_err(|_| timed_out())??;
        Ok(Lease {
            sender,
            reused: false,
            connect_time: start.elapsed(),
        })
    }

    /// Puts an HTTP/1.1 connection back once its response is read to the end (spawned: hyper
    /// says "ready" only then). Dropped instead when it closes or the idle list is full.
    pub fn release_h1(&self, mut sender: http1::SendRequest<ReqBody>, client: Option<ClientAddrs>) {
        if self.spec.max_idle_per_backend == 0 {
            return;
        }
        let idle = self.idle.clone();
        let max = self.spec.max_idle_per_backend;
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let thread = thread_key();
            let mut list = lock(&idle);
            if list.len() >= max {
                list.remove(0);
            }
            list.push(IdleH1 {
                sender,
                since: Instant::now(),
                client,
                thread,
            });
        });
    }

    /// Drops idle connections past `pool.idle_timeout` (closing them) and HTTP/2 connections
    /// that are closed, or idle without streams for as long.
    pub fn sweep(&self) {
        let t = self.spec.idle_timeout;
        lock(&self.idle).retain(|c| c.since.elapsed() < t && !c.sender.is_closed());
        lock(&self.h2).retain(|c| {
            !c.sender.is_closed()
                && (c.streams.load(Ordering::Relaxed) > 0 || c.last_used.elapsed() < t)
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The lists stay consistent if a holder panicked (each edit is one push/remove).
    m.lock().unwrap_or_else(|p| p.into_inner())
}
