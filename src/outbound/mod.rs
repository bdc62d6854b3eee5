//! Upstream side of the reverse proxy: connections to backends, pools, load balancing,
//! health, retries and timeouts.
//!
//! An [`UpstreamGroup`] is built from one route's [`ProxySpec`] and sends requests that the
//! caller has already rewritten (headers, origin-form URI) to one of its backends:
//!
//! * [`connector`]: TCP, Unix sockets, TLS (rustls, ALPN h2/http/1.1) and the PROXY header;
//! * [`pool`]: HTTP/1.1 keep-alive connections and shared HTTP/2 connections per backend;
//! * [`balance`]: the balancing policies;
//! * [`health`]: active checks and passive ejection;
//! * [`error`]: what failed, in words, and the status for the client.
//!
//! Retries: a request that never reached a backend (connect failure, TLS failure, busy pool)
//! is always tried on another backend (each backend once), whatever `retries` says. One that
//! reached a backend is retried only when its method is idempotent (or `retry_non_idempotent`)
//! and its body was empty from the start (the retry sends an empty body), on at most
//! `retries` other backends. Never after response headers arrived. A pooled connection that
//! turns out closed by the backend is not the backend's fault: the request goes again to the
//! same backend on another connection (up to 3 times, not counted as retries) when nothing
//! was written yet, or when it was and the request could be resent anyway.
//!
//! Not here: the header policy, request body limits, WebSocket tunnelling and error pages are
//! the HTTP request path's.

mod balance;
mod connector;
mod error;
mod health;
mod pool;

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::Sleep;

pub use balance::sticky_cookie;
pub use connector::{encode_proxy_header, tls_client_config, Io, NoVerify, RESOLVE_EVERY};
pub use error::{TlsFailure, UpstreamError};
pub use health::ejection_length;
pub use pool::H2_STREAMS_PER_CONN;

use balance::{Balancer, PickInput};
use connector::{Connector, Target};
use health::Health;
use pool::{Pool, ReqBody, Sender};

use crate::config::proxy::{Policy, ProxySpec, TimeoutSpec, UpstreamAddr, UpstreamScheme};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client connection a request came on: its peer and our local address (for PROXY
/// headers and the `ip_hash` policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddrs {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// What the balancing policies may look at.
pub struct BalanceKey<'a> {
    pub client: ClientAddrs,
    /// The client's request headers (for `header:` and `cookie:` policies).
    pub headers: &'a HeaderMap,
}

/// A response from a backend and how it was obtained.
pub struct Exchange {
    /// The backend's response. Its body carries the idle and total timeouts and keeps the
    /// backend's in-flight count (`least_conn`) until it ends or is dropped; trailers pass
    /// through as they came.
    pub response: Response<UpstreamBody>,
    /// The backend that answered (`host:port` or `unix:/path`), for the log.
    pub backend: Arc<str>,
    /// Time to open the connection (zero when a pooled one was reused).
    pub connect_time: Duration,
    /// From sending the request until the response headers arrived.
    pub upstream_time: Duration,
    /// For `policy = "cookie:<name>"`: the `Set-Cookie` value to add to the response (the
    /// request had no cookie for an available backend).
    pub set_cookie: Option<HeaderValue>,
    /// For a `101 Switching Protocols` over HTTP/1.1: the backend side of the upgraded
    /// connection (`.await` it after answering the client). The connection never returns to
    /// the pool.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Earlier attempts that failed (each on another backend), for the log.
    pub retried: Vec<UpstreamError>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("status", &self.response.status())
            .field("backend", &self.backend)
            .field("connect_time", &self.connect_time)
            .field("upstream_time", &self.upstream_time)
            .field("set_cookie", &self.set_cookie)
            .field("upgrade", &self.upgrade.is_some())
            .field("retried", &self.retried)
            .finish()
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// The state of one backend, for metrics and the status page.
#[derive(Debug, Clone)]
pub struct BackendSnapshot {
    pub backend: Arc<str>,
    pub weight: u32,
    pub backup: bool,
    /// Up by the active health checks (always true without them).
    pub healthy: bool,
    /// Passively ejected for this much longer.
    pub ejected_for: Option<Duration>,
    /// Requests in flight (until their response body ends).
    pub in_flight: usize,
    /// Requests sent since start.
    pub requests: u64,
    /// Failed requests since start.
    pub failures: u64,
    /// Connections open now, and of those idle in the pool (HTTP/1.1).
    pub open_connections: usize,
    pub idle_connections: usize,
    /// Connections opened since start.
    pub connections_opened: u64,
}

/// One backend of a group.
struct Backend {
    label: Arc<str>,
    target: Target,
    weight: u32,
    backup: bool,
    health: Health,
    pool: Pool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Time from sending a request to its response head (the admin listener's metrics).
    latency: crate::ops::metrics::hist::SharedHistogram,
}

impl Backend {
    /// `Host` for requests without one and for health checks: the upstream's host, with the
    /// port unless it is the scheme's default; `localhost` for Unix sockets.
    fn host_header(&self) -> String {
        match &self.target.addr {
            UpstreamAddr::Tcp { scheme, host, port } => {
                let default = match scheme {
                    UpstreamScheme::Https => 443,
                    _ => 80,
                };
                if *port == default {
                    crate::config::proxy::authority(host, *port)
                        .rsplit_once(':')
                        .map_or_else(|| host.clone(), |(h, _)| h.to_string())
                } else {
                    crate::config::proxy::authority(host, *port)
                }
            }
            UpstreamAddr::Unix(_) => "localhost".into(),
        }
    }

    fn uri_scheme(&self) -> &'static str {
        match &self.target.addr {
            UpstreamAddr::Tcp {
                scheme: UpstreamScheme::Https,
                ..
            } => "https",
            _ => "http",
        }
    }
}

/// The backends of one proxy route, with their pools, health and balancing.
pub struct UpstreamGroup {
    backends: Vec<Arc<Backend>>,
    balancer: Balancer,
    connector: Connector,
    timeouts: TimeoutSpec,
    passive: crate::config::proxy::PassiveSpec,
    retries: u32,
    retry_non_idempotent: bool,
    /// The clock of passive ejections.
    epoch: Instant,
}

impl UpstreamGroup {
    /// Builds the group and starts its tasks (active health checks, idle-connection expiry,
    /// re-resolution of names), which end when the group is dropped or `shutdown` turns true.
    /// Must run inside a tokio runtime. Fails when the TLS files cannot be loaded (they were
    /// checked at load, so this is a race with the file system).
    pub fn new(spec: &ProxySpec, shutdown: watch::Receiver<bool>) -> Result<Arc<Self>, String> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| "upstream groups need a tokio runtime".to_string())?;
        let any_https = spec.upstreams.iter().any(|u| {
            matches!(
                u.addr,
                UpstreamAddr::Tcp {
                    scheme: UpstreamScheme::Https,
                    ..
                }
            )
        });
        let connector = Connector::new(&spec.tls, any_https)?;
        let backends: Vec<Arc<Backend>> = spec
            .upstreams
            .iter()
            .map(|u| {
                let h2c = matches!(
                    u.addr,
                    UpstreamAddr::Tcp {
                        scheme: UpstreamScheme::H2c,
                        ..
                    }
                );
                Arc::new(Backend {
                    label: u.addr.label().into(),
                    target: Target::new(u.addr.clone(), u.proxy_protocol, &spec.tls),
                    weight: u.weight,
                    backup: u.backup,
                    health: Health::default(),
                    pool: Pool::new(spec.pool, h2c),
                    in_flight: AtomicUsize::new(0),
                    requests: AtomicU64::new(0),
                    latency: Default::default(),
                })
            })
            .collect();
        let labels: Vec<&str> = backends.iter().map(|b| &*b.label).collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let group = Arc::new(UpstreamGroup {
            balancer: Balancer::new(spec.policy.clone(), &labels, &weights),
            backends,
            connector,
            timeouts: spec.timeouts,
            passive: spec.passive,
            retries: spec.retries,
            retry_non_idempotent: spec.retry_non_idempotent,
            epoch: Instant::now(),
        });
        if let Some(h) = &spec.health {
            for i in 0..group.backends.len() {
                rt.spawn(health::active_loop(
                    Arc::downgrade(&group),
                    i,
                    h.clone(),
                    shutdown.clone(),
                ));
            }
        }
        rt.spawn(maintain(
            Arc::downgrade(&group),
            spec.pool.idle_timeout,
            shutdown,
        ));
        Ok(group)
    }

    /// Sends `req` (headers already rewritten, URI in origin form `/path?q`) to a backend
    /// chosen by the policy, with retries as described in the module docs. The URI and
    /// version are set for the backend's protocol; a request without `Host` gets the
    /// upstream's. A request that upgrades (`Connection: upgrade`) goes over HTTP/1.1.
    pub async fn send<B>(
        &self,
        req: Request<B>,
        key: &BalanceKey<'_>,
    ) -> Result<Exchange, UpstreamError>
    where
        B: Body<Data = Bytes> + Default + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let body_empty = body.is_end_stream();
        let resend_ok = body_empty && (is_idempotent(&parts.method) || self.retry_non_idempotent);
        let upgrade = wants_upgrade(&parts.headers);
        let total_deadline = (!self.timeouts.total.is_zero()).then(|| start + self.timeouts.total);
        let mut parts = Some(parts);
        let mut body: Option<ReqBody> = Some(body.map_err(Into::into).boxed_unsync());
        let mut tried: Vec<usize> = Vec::new();
        let mut failed: Vec<UpstreamError> = Vec::new();
        let mut stale_retries = 0;
        loop {
            if let Some(d) = total_deadline {
                if Instant::now() >= d {
                    return Err(self.give_up(failed, None));
                }
            }
            let Some((index, set_cookie)) = self.choose(key, &tried) else {
                return Err(self.give_up(failed, Some(&tried)));
            };
            let b = &self.backends[index];
            let client = b.target.proxy_protocol.map(|_| key.client);
            let lease = b
                .pool
                .lease(
                    &self.connector,
                    &b.target,
                    &b.label,
                    client.as_ref(),
                    upgrade,
                    self.timeouts.connect,
                )
                .await;
            let mut lease = match lease {
                Ok(l) => l,
                Err(e) => {
                    // Nothing was sent: always worth another backend (each is tried once).
                    self.failed(b, &e);
                    tried.push(index);
                    failed.push(e);
                    continue;
                }
            };
            // The last attempt (or one that cannot be repeated) takes the request itself;
            // others send a copy.
            let resent = failed.iter().filter(|e| !e.never_reached_backend()).count();
            let may_resend = resend_ok
                && ((resent as u32) < self.retries || (lease.reused && stale_retries < 3));
            let p = match (&parts, may_resend) {
                (Some(p), true) => copy_parts(p),
                _ => parts.take().unwrap_or_else(|| {
                    // Only reached after a resend used the last copy; `may_resend` was true
                    // then, so `parts` is still there: this branch cannot run.
                    Request::new(()).into_parts().0
                }),
            };
            let req_body = body
                .take()
                .unwrap_or_else(|| B::default().map_err(Into::into).boxed_unsync());
            let req = self.prepare(b, Request::from_parts(p, req_body), lease.sender.is_h2());
            b.requests.fetch_add(1, Ordering::Relaxed);
            b.in_flight.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight(b.clone());
            let sent_at = Instant::now();
            let mut wait = self.timeouts.response_header;
            let mut total_limits = false;
            if let Some(d) = total_deadline {
                let left = d.saturating_duration_since(sent_at);
                if left < wait {
                    wait = left;
                    total_limits = true;
                }
            }
            let outcome = tokio::time::timeout(wait, lease.sender.send(req)).await;
            let e = match outcome {
                Ok(Ok(mut response)) => {
                    b.health.record_success();
                    let upstream_time = sent_at.elapsed();
                    b.latency.observe(upstream_time); // metrics
                    let upgrade = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| hyper::upgrade::on(&mut response));
                    let stream = match lease.sender {
                        Sender::H1(s) => {
                            if upgrade.is_none() {
                                b.pool.release_h1(s, client);
                            }
                            None
                        }
                        Sender::H2(_, g) => Some(g),
                    };
                    let set_cookie = match (set_cookie, self.balancer.policy()) {
                        (true, Policy::Cookie(name)) => {
                            Some(sticky_cookie(name, &self.balancer.cookie_token(index)))
                        }
                        _ => None,
                    };
                    let response = response.map(|inner| UpstreamBody {
                        inner,
                        backend: b.label.clone(),
                        idle: self.timeouts.idle,
                        idle_deadline: Instant::now() + self.timeouts.idle,
                        idle_timer: None,
                        total: total_deadline.map(|d| {
                            (
                                Box::pin(tokio::time::sleep_until(d.into())),
                                self.timeouts.total,
                            )
                        }),
                        guards: Some((in_flight, stream)),
                    });
                    return Ok(Exchange {
                        response,
                        backend: b.label.clone(),
                        connect_time: lease.connect_time,
                        upstream_time,
                        set_cookie,
                        upgrade,
                        retried: failed,
                    });
                }
                Ok(Err(mut e)) => {
                    if let Some(req) = e.take_message() {
                        // Nothing was written: the connection was found closed. Send the same
                        // request again (a pooled connection closed by the backend while idle
                        // is normal; a backend that went away fails at connect next time).
                        drop(in_flight);
                        b.requests.fetch_sub(1, Ordering::Relaxed);
                        let (p, bd) = req.into_parts();
                        parts = Some(p);
                        body = Some(bd);
                        stale_retries += 1;
                        if stale_retries <= 3 && lease.reused {
                            continue;
                        }
                        let e = UpstreamError::ClosedEarly {
                            backend: b.label.clone(),
                        };
                        self.failed(b, &e);
                        tried.push(index);
                        failed.push(e);
                        continue;
                    }
                    classify(&b.label, e.into_error())
                }
                Err(_) if total_limits => UpstreamError::TotalTimeout {
                    backend: b.label.clone(),
                    after: self.timeouts.total,
                },
                Err(_) => UpstreamError::ResponseHeaderTimeout {
                    backend: b.label.clone(),
                    after: self.timeouts.response_header,
                },
            };
            drop(in_flight);
            if lease.reused
                && may_resend
                && stale_retries < 3
                && matches!(e, UpstreamError::ClosedEarly { .. })
            {
                // A pooled connection the backend closed just as the request went out (the
                // race every keep-alive client has): the backend is not at fault; the same
                // backend gets the request again on another connection.
                stale_retries += 1;
                continue;
            }
            self.failed(b, &e);
            tried.push(index);
            let retry = may_resend
                && (resent as u32) < self.retries
                && !matches!(e, UpstreamError::RequestBody { .. });
            failed.push(e);
            if !retry {
                let last = failed.pop();
                return Err(last.unwrap_or_else(|| self.give_up(failed, None)));
            }
        }
    }

    /// The state of every backend, in config order.
    pub fn snapshot(&self) -> Vec<BackendSnapshot> {
        let now = health::now_ms(self.epoch);
        self.backends
            .iter()
            .map(|b| {
                let (open, idle) = b.pool.counts();
                BackendSnapshot {
                    backend: b.label.clone(),
                    weight: b.weight,
                    backup: b.backup,
                    healthy: b.health.active_up(),
                    ejected_for: b.health.ejected_for(now),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    requests: b.requests.load(Ordering::Relaxed),
                    failures: b.health.failures.load(Ordering::Relaxed),
                    open_connections: open,
                    idle_connections: idle,
                    connections_opened: b.pool.opened.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Each backend's response-time histogram, in config order (as [`Self::snapshot`]).
    pub fn latencies(&self) -> Vec<crate::ops::metrics::hist::Snapshot> {
        self.backends.iter().map(|b| b.latency.snapshot()).collect()
    }

    /// A backend for the request: primaries first, backups when no primary is available.
    /// `(index, the response should set the sticky cookie)`.
    fn choose(&self, key: &BalanceKey<'_>, tried: &[usize]) -> Option<(usize, bool)> {
        let now = health::now_ms(self.epoch);
        let input = PickInput {
            client_ip: key.client.peer.ip(),
            headers: key.headers,
        };
        let load = |i: usize| self.backends[i].in_flight.load(Ordering::Relaxed);
        let usable = |i: usize, backup: bool| {
            let b = &self.backends[i];
            b.backup == backup && !tried.contains(&i) && b.health.available(now)
        };
        self.balancer
            .pick(&input, &|i| usable(i, false), &load)
            .or_else(|| self.balancer.pick(&input, &|i| usable(i, true), &load))
            .map(|p| (p.index, p.set_cookie))
    }

    fn failed(&self, b: &Backend, e: &UpstreamError) {
        if !e.backend_fault() {
            return;
        }
        if let Some(d) = b
            .health
            .record_failure(&self.passive, health::now_ms(self.epoch))
        {
            tracing::warn!(
                backend = %b.label,
                "backend ejected for {} after {} failed requests in a row, the last: {e}",
                humantime::format_duration(d),
                self.passive.max_fails
            );
        }
    }

    /// The error when no (further) backend can be tried: the last failure when there was one
    /// and no backend is left untried... otherwise why none was available.
    fn give_up(&self, mut failed: Vec<UpstreamError>, tried: Option<&[usize]>) -> UpstreamError {
        if let Some(last) = failed.pop() {
            return last;
        }
        let now = health::now_ms(self.epoch);
        let down = self
            .backends
            .iter()
            .filter(|b| !b.health.active_up())
            .count();
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.health.active_up() && b.health.ejected_for(now).is_some())
            .count();
        let n = self.backends.len();
        let detail = match tried {
            Some(t) if !t.is_empty() => format!("all {} upstreams tried", t.len()),
            _ => format!(
                "{n} upstream{}: {down} down by health checks, {ejected} ejected after failed requests",
                if n == 1 { "" } else { "s" }
            ),
        };
        UpstreamError::NoHealthyBackend { detail }
    }

    /// Sets what the backend's protocol needs: HTTP/1.1 in origin form with a `Host`;
    /// HTTP/2 with scheme and authority in the URI (from `Host`, which HTTP/2 does not carry).
    fn prepare(&self, b: &Backend, mut req: Request<ReqBody>, h2: bool) -> Request<ReqBody> {
        if !h2 {
            *req.version_mut() = Version::HTTP_11;
            if req.uri().scheme().is_some() || req.uri().authority().is_some() {
                let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Ok(uri) = origin.parse::<Uri>() {
                    *req.uri_mut() = uri;
                }
            }
            if !req.headers().contains_key(http::header::HOST) {
                if let Ok(v) = HeaderValue::from_str(&b.host_header()) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
        } else {
            *req.version_mut() = Version::HTTP_2;
            let authority = req
                .headers_mut()
                .remove(http::header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_else(|| b.host_header());
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            if let Ok(uri) = Uri::builder()
                .scheme(b.uri_scheme())
                .authority(authority.as_str())
                .path_and_query(path)
                .build()
            {
                *req.uri_mut() = uri;
            }
        }
        req
    }
}

/// Expires idle connections and re-resolves names, until the group is gone or shut down.
async fn maintain(
    group: std::sync::Weak<UpstreamGroup>,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = (idle_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    // Names are resolved at once, then every RESOLVE_EVERY.
    let mut last_resolve: Option<Instant> = None;
    loop {
        if last_resolve.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY) {
            last_resolve = Some(Instant::now());
            let Some(g) = group.upgrade() else { return };
            for b in &g.backends {
                if b.target.is_name() {
                    if let Err(e) = b.target.resolve().await {
                        tracing::warn!(backend = %b.label, "cannot resolve the upstream's name (keeping its last addresses, if any): {e}");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let Some(g) = group.upgrade() else { return };
        for b in &g.backends {
            b.pool.sweep();
        }
    }
}

/// Keeps a backend's in-flight count up while an exchange lasts.
struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's response body: passes frames (data and trailers) through, fails with
/// [`UpstreamError::IdleTimeout`] when no frame comes for `timeouts.idle` and with
/// [`UpstreamError::TotalTimeout`] past `timeouts.total`, and releases the backend's
/// in-flight count when it ends or is dropped.
pub struct UpstreamBody {
    inner: Incoming,
    backend: Arc<str>,
    idle: Duration,
    /// Moved forward on every frame; the timer is only reset when it fires early.
    idle_deadline: Instant,
    idle_timer: Option<Pin<Box<Sleep>>>,
    total: Option<(Pin<Box<Sleep>>, Duration)>,
    guards: Option<(InFlight, Option<pool::StreamGuard>)>,
}

impl UpstreamBody {
    /// The backend's body as hyper gives it (for callers that do their own timing).
    pub fn into_inner(self) -> Incoming {
        self.inner
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        if let Some((timer, after)) = &mut this.total {
            if timer.as_mut().poll(cx).is_ready() {
                this.guards = None;
                return Poll::Ready(Some(Err(UpstreamError::TotalTimeout {
                    backend: this.backend.clone(),
                    after: *after,
                })));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if !this.idle.is_zero() {
                    this.idle_deadline = Instant::now() + this.idle;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.guards = None;
                Poll::Ready(Some(Err(UpstreamError::BodyBroken {
                    backend: this.backend.clone(),
                    detail: error_chain(&e),
                })))
            }
            Poll::Ready(None) => {
                this.guards = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.is_zero() {
                    return Poll::Pending;
                }
                let deadline = tokio::time::Instant::from_std(this.idle_deadline);
                let timer = this
                    .idle_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.guards = None;
                    return Poll::Ready(Some(Err(UpstreamError::IdleTimeout {
                        backend: this.backend.clone(),
                        after: this.idle,
                    })));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// `Connection: upgrade` with an `Upgrade` header: needs an HTTP/1.1 connection.
fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(http::header::UPGRADE)
        && h.get_all(http::header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

fn copy_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    if let Some(proto) = p.extensions.get::<hyper::ext::Protocol>() {
        r.extensions_mut().insert(proto.clone());
    }
    r.into_parts().0
}

/// An error from sending a request (after it started) in words.
fn classify(backend: &Arc<str>, e: hyper::Error) -> UpstreamError {
    let backend = backend.clone();
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return UpstreamError::BadResponse {
            backend,
            detail: error_chain(&e),
        };
    }
    if e.is_user() {
        // The request body (the client's) failed, not the backend.
        return UpstreamError::RequestBody {
            backend,
            detail: error_chain(&e),
        };
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return UpstreamError::ClosedEarly { backend };
    }
    let detail = error_chain(&e);
    if let Some(reason) = error::TlsFailure::from_alert_text(&detail) {
        return UpstreamError::Tls { backend, reason };
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = src {
        // TLS 1.3 clients finish their handshake before the server has checked their
        // certificate: a refusal (no or unaccepted client certificate) arrives as an alert on
        // the first read, i.e. here.
        if let Some(tls) = rustls_error_in(s) {
            return UpstreamError::Tls {
                backend,
                reason: error::TlsFailure::from_rustls(tls),
            };
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            ) {
                return UpstreamError::ClosedEarly { backend };
            }
        }
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.is_go_away() || h2.is_io() || h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return UpstreamError::ClosedEarly { backend };
            }
        }
        src = s.source();
    }
    UpstreamError::BadResponse {
        backend,
        detail: error_chain(&e),
    }
}

/// The TLS error inside an I/O error (tokio-rustls) or an HTTP/2 error (h2 keeps the I/O
/// error out of its `source()`).
fn rustls_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let io = match e.downcast_ref::<h2::Error>() {
        Some(h2) => h2.get_io(),
        None => e.downcast_ref::<std::io::Error>(),
    }?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&h));
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
