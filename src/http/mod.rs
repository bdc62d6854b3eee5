//! HTTP: what a request meets once TLS (or plain TCP on port 80) is done, whatever the version.
//!
//! [`Frontend`] is the request-serving half of the runtime: the sites' routes and header
//! policies, resolved once at start. [`HttpsService`] routes each HTTPS request by `Host` to a
//! site and a handler and applies the site's headers; [`redirect::RedirectService`] answers
//! port 80.
//!
//! One request path for every protocol: hyper's HTTP/1.1 connection calls the service as a
//! [`hyper::service::Service`], our HTTP/2 connection (and HTTP/3) calls
//! [`HttpsService::handle`] with the same [`RequestBody`]; both get a [`Reply`]. Most handlers
//! answer at once from memory or the page cache (fixed responses, redirects, static files,
//! whose blocking reads are page-cache reads, as in nginx): their reply is
//! [`Reply::Ready`], with no future allocated. Handlers that wait (the reverse proxy) return
//! [`Reply::Later`], one boxed future per request.

pub mod access;
pub mod body;
pub mod client;
pub mod compress;
pub mod date;
pub mod pace;
pub mod pages;
pub mod proxy;
pub mod redirect;
pub mod request;
pub mod static_files;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};

use crate::acme::Http01Tokens;
use crate::config::model::{Handler, RedirectKind, RedirectSpec, RespondSpec};
use crate::config::Config;
use crate::ops::access::{new_request_id, with_request_id, AccessLog, Record, TlsFacts};
use crate::tls::names::{host_from_authority, HostPattern, NameTable};
use body::Body;
pub use request::RequestBody;
use static_files::StaticFiles;

/// A route ready to serve.
pub struct RouteHandler {
    prefix: String,
    kind: RouteKind,
    /// Who may pass (the site's rules merged in); `None`: everyone.
    access: Option<Box<access::Access>>,
}

enum RouteKind {
    Files {
        files: StaticFiles,
        strip_prefix: bool,
    },
    Respond(RespondSpec),
    Redirect(RedirectSpec),
    Proxy(Arc<proxy::Proxy>),
}

/// A site's request side: routes and the headers added to every response.
pub struct SiteHandler {
    pub name: String,
    /// The site's first exact name or IP address (a wildcard names no single host): where
    /// port 80 redirects an HTTP/1.0 request without `Host` when this is the default site.
    pub own_name: Option<String>,
    /// The host an HTTP/1.0 request without `Host` is taken to name (`{host}` in redirect
    /// routes): [`SiteHandler::own_name`], or for a site with wildcards only the domain under
    /// the first one.
    host_less: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    routes: Vec<RouteHandler>,
    /// The site's own access rules: for requests no route matches.
    access: Option<Box<access::Access>>,
    /// The site verifies client certificates (`client_auth`): it is served only over
    /// connections whose handshake used its TLS configuration.
    client_auth: bool,
    /// The site's access log, if on.
    access_log: Option<Arc<AccessLog>>,
    /// The site's name as access-log records share it.
    log_name: Arc<str>,
    /// The site's number in the metrics (by name: the same across reloads).
    pub metrics_id: crate::ops::metrics::SiteId,
    /// `hsts.ramp`: the Strict-Transport-Security header, which is then not in `headers`.
    pub hsts_ramp: Option<Arc<crate::ops::hsts::Ramp>>,
}

/// Everything request handling needs, shared by all connections and workers.
pub struct Frontend {
    pub sites: Vec<SiteHandler>,
    /// Host name → index into `sites`.
    pub hosts: NameTable<usize>,
    pub max_body: u64,
    /// Largest request head accepted (431 beyond).
    pub max_header_bytes: usize,
    /// The site answering clients without SNI; its headers go on site-less error responses.
    pub default_site: usize,
    /// The access log of requests no site answers, and of port 80 (`[log] access_log`).
    pub access_log: Option<Arc<AccessLog>>,
    /// Some access log is on: requests get an id and connections their TLS facts.
    pub logs_on: bool,
    pub redirect: RedirectKind,
    /// `""` when HTTPS is on 443, else `":PORT"`, for port-80 redirects.
    pub https_port_suffix: String,
    /// ACME HTTP-01 answers (filled by the ACME client; empty until then).
    pub acme: Arc<Http01Tokens>,
    /// On-demand TLS: the site serving names obtained on demand, and those names.
    pub on_demand: Option<(usize, Arc<crate::tls::resolver::NamedCerts>)>,
    /// A newer configuration serves new connections: HTTP/1.x connections of this one close
    /// after their next response (`Connection: close`), so a keep-alive client moves to the
    /// new configuration without ever finding its idle connection closed under a request it
    /// just sent (HAProxy's `idle-close-on-response`).
    pub retired: std::sync::atomic::AtomicBool,
}

impl Frontend {
    /// Builds the request side from the validated config. Fails only when a static root cannot
    /// be opened (it was checked during validation, so this is a race with the file system).
    ///
    /// Proxy routes start their tasks (health checks, pool expiry) on the current tokio
    /// runtime; they end with `shutdown`.
    pub fn new(
        config: &Config,
        https_port: u16,
        h3_port: Option<u16>,
        acme: Arc<Http01Tokens>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, String> {
        let mut sites = Vec::new();
        let mut hosts = NameTable::default();
        let default_log = open_access_log(config.log.access_log.as_ref())?;
        // HTTP/3 is advertised (RFC 7838) by the sites served over it, once its socket is bound.
        let alt_svc = h3_port
            .and_then(|port| HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400")).ok());
        for (i, site) in config.sites.iter().enumerate() {
            for h in &site.hosts {
                hosts.insert(h, i);
            }
            let mut site_headers = site.headers.clone();
            if let Some(v) = &alt_svc {
                if site.http3 && site.client_auth.is_none() {
                    site_headers.push((header::ALT_SVC, v.clone()));
                }
            }
            let mut routes = Vec::new();
            for r in &site.routes {
                let kind = match &r.handler {
                    Handler::Files(f) => {
                        let files = StaticFiles::new(f.files.clone())
                            .map_err(|e| {
                                format!(
                                    "site {:?}: cannot open root {}: {e}",
                                    site.name,
                                    f.files.root.display()
                                )
                            })?
                            .with_site_headers(site_headers.clone());
                        RouteKind::Files {
                            files,
                            strip_prefix: f.strip_prefix,
                        }
                    }
                    Handler::Respond(r) => RouteKind::Respond(r.clone()),
                    Handler::Redirect(r) => RouteKind::Redirect(r.clone()),
                    Handler::Proxy(p) => RouteKind::Proxy(Arc::new(
                        proxy::Proxy::new(
                            p,
                            &r.prefix,
                            config.limits.max_body_bytes,
                            shutdown.clone(),
                        )
                        .map(|p| p.with_body_pace(config.limits.body_pace))
                        .map_err(|e| format!("site {:?}, route {}: {e}", site.name, r.prefix))?,
                    )),
                };
                routes.push(RouteHandler {
                    prefix: r.prefix.clone(),
                    kind,
                    access: r.access.within(&site.access).compile(),
                });
            }
            let own_name = site.hosts.iter().find_map(|h| match h {
                HostPattern::Exact(n) => Some(n.clone()),
                HostPattern::Ip(ip) => Some(ip.to_string()),
                HostPattern::Wildcard(_) => None,
            });
            let host_less = own_name.clone().unwrap_or_else(|| {
                site.hosts
                    .iter()
                    .find_map(|h| match h {
                        HostPattern::Wildcard(base) => Some(base.clone()),
                        _ => None,
                    })
                    .unwrap_or_default()
            });
            sites.push(SiteHandler {
                name: site.name.clone(),
                own_name,
                host_less,
                headers: site_headers,
                routes,
                access: site.access.compile(),
                client_auth: site.client_auth.is_some(),
                access_log: match &site.access_log {
                    None => default_log.clone(),
                    Some(own) => open_access_log(own.as_ref())
                        .map_err(|e| format!("site {:?}: {e}", site.name))?,
                },
                log_name: site.name.as_str().into(),
                metrics_id: crate::ops::metrics::site_id(&site.name),
                hsts_ramp: None,
            });
        }
        let logs_on = default_log.is_some() || sites.iter().any(|s| s.access_log.is_some());
        Ok(Frontend {
            logs_on,
            sites,
            hosts,
            max_body: config.limits.max_body_bytes,
            max_header_bytes: config.limits.max_header_bytes,
            default_site: config.default_site,
            access_log: default_log,
            redirect: config.http.redirect,
            https_port_suffix: if https_port == 443 {
                String::new()
            } else {
                format!(":{https_port}")
            },
            acme,
            on_demand: None,
            retired: Default::default(),
        })
    }

    /// A record for the access log of a request answered by `site` (`None`: no site), if
    /// that log is on.
    #[allow(clippy::too_many_arguments)]
    pub fn access_record(
        &self,
        site: Option<usize>,
        start: std::time::Instant,
        head: crate::ops::access::Head<'_>,
        client: SocketAddr,
        scheme: &'static str,
        status: u16,
        request_id: Option<HeaderValue>,
    ) -> Option<Box<Record>> {
        let (log, name) = match site {
            Some(s) => (
                self.sites[s].access_log.as_ref()?,
                self.sites[s].log_name.clone(),
            ),
            None => (self.access_log.as_ref()?, Arc::from("-")),
        };
        Some(Record::new(
            log.clone(),
            start,
            head,
            client,
            scheme,
            name,
            status,
            request_id,
        ))
    }

    /// Gives the sites with `hsts.ramp` their ramps, resumed from `storage` (see
    /// [`crate::ops::hsts`]).
    pub fn open_hsts_ramps(&mut self, config: &Config, storage: &Arc<dyn crate::storage::Storage>) {
        let now = u64::try_from(crate::tls::certs::unix_now()).unwrap_or(0);
        for (handler, site) in self.sites.iter_mut().zip(&config.sites) {
            handler.hsts_ramp = site.hsts_ramp.as_ref().map(|spec| {
                crate::ops::hsts::Ramp::open(&site.name, &site.hosts, spec, storage.clone(), now)
            });
        }
    }

    /// Where each ramped site's HSTS stands (for the status page).
    pub fn hsts_ramps(&self) -> Vec<crate::ops::hsts::RampStatus> {
        self.sites
            .iter()
            .filter_map(|s| Some(s.hsts_ramp.as_ref()?.status()))
            .collect()
    }

    /// The site answering for `host` (a `Host` header's name): the configured ones, then names
    /// that got a certificate on demand.
    pub fn site_of(&self, host: &str) -> Option<usize> {
        if let Some(&s) = self.hosts.get(host) {
            return Some(s);
        }
        self.on_demand_site(host)
    }

    /// Every reverse-proxy route: its site's name, its path prefix and the proxy (for the
    /// admin listener's backend health and latency).
    pub fn proxies(&self) -> Vec<(&str, &str, &Arc<proxy::Proxy>)> {
        let mut out = Vec::new();
        for site in &self.sites {
            for r in &site.routes {
                if let RouteKind::Proxy(p) = &r.kind {
                    out.push((site.name.as_str(), r.prefix.as_str(), p));
                }
            }
        }
        out
    }

    /// The on-demand site, when `host` got a certificate on demand.
    fn on_demand_site(&self, host: &str) -> Option<usize> {
        let (site, names) = self.on_demand.as_ref()?;
        names
            .contains(&crate::tls::names::normalize(host))
            .then_some(*site)
    }
}

/// Opens an access log's file (shared with every other log of the same destination).
fn open_access_log(
    spec: Option<&crate::config::log::AccessLogSpec>,
) -> Result<Option<Arc<AccessLog>>, String> {
    let Some(spec) = spec else { return Ok(None) };
    let file = crate::ops::logfile::open(&spec.target)
        .map_err(|e| format!("cannot open the access log {}: {e}", spec.target))?;
    Ok(Some(Arc::new(AccessLog {
        format: spec.format,
        file,
    })))
}

/// Per-connection counters shared between the service and the connection's I/O timer.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests whose response has not been fully sent yet.
    pub active: AtomicUsize,
    /// Requests started on this connection (changes → a request head has been read).
    pub started: AtomicU64,
    /// The TLS handshake is not complete: requests read now came as 0-RTT early data, which
    /// an attacker may replay (set by [`crate::server::early::EarlyTls`]).
    pub early: std::sync::atomic::AtomicBool,
    /// The response being written is the connection's last (HTTP/1.x, the connection closes
    /// after it) and its body is complete in memory: its TLS records can wait for the
    /// `close_notify` that follows and leave with it in one send (see
    /// `server::cork::CorkIo`). Set or cleared by the service for every response, and set
    /// when the connection shuts down (only the `close_notify` follows then).
    pub closing: std::sync::atomic::AtomicBool,
}

/// Decrements [`ConnState::active`] when the response body is done (dropped).
pub struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    fn new(state: &Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        state.started.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(state.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The body hyper sends: our [`Body`] plus the guard that marks the request finished, and the
/// request's access-log record (written when the body is done or dropped).
pub struct TrackedBody {
    inner: Body,
    _guard: ActiveGuard,
    log: Option<Box<Record>>,
}

impl TrackedBody {
    /// A body with its guard and access-log record.
    pub(crate) fn new(inner: Body, guard: ActiveGuard, log: Option<Box<Record>>) -> Self {
        TrackedBody {
            inner,
            _guard: guard,
            log,
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // Access log (hook): the line, with the bytes sent, once the body is done.
        if let Some(record) = self.log.take() {
            record.finish();
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Some(record), Poll::Ready(Some(Ok(f)))) = (&mut this.log, &frame) {
            if let Some(data) = f.data_ref() {
                record.bytes += data.len() as u64;
            }
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl TrackedBody {
    /// See [`Body::Ready`].
    pub fn ready_head(&self) -> Option<&http::HeaderMap> {
        self.inner.ready_head()
    }
}

/// The HTTPS service of one connection.
#[derive(Clone)]
pub struct HttpsService {
    pub front: Arc<Frontend>,
    /// The site chosen by SNI (`None`: the client sent no SNI).
    pub sni_site: Option<usize>,
    pub conn: Arc<ConnState>,
    /// The client's address (after a PROXY protocol header, the one it names).
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Over the connection limit: answer 503 to everything.
    pub overloaded: bool,
    /// The last host looked up and its site (see [`HostMemo`]).
    pub host_memo: std::cell::Cell<HostMemo>,
    /// The verified client certificate of a mutual-TLS connection.
    pub client_cert: Option<Arc<access::ClientCert>>,
    /// The per-client limits that count this connection's requests (`None`: requests are not
    /// limited, or the client is trusted).
    pub client_limits: Option<Arc<crate::server::limits::ClientLimits>>,
    /// What the connection's handshake settled, for the access log (`None` when it is off).
    pub tls: Option<Arc<TlsFacts>>,
}

/// A connection's last `Host`/`:authority` host and the site it names: the requests of one
/// connection almost always name the same host, so the lookup (a SipHash of the name, and for
/// an IP address a parse) is done once. Hosts up to [`HostMemo::MAX`] octets; only names of
/// the configuration's fixed host table are kept (on-demand names can come and go).
#[derive(Debug, Clone, Copy)]
pub struct HostMemo {
    len: u8,
    host: [u8; HostMemo::MAX],
    site: usize,
}

impl HostMemo {
    /// The longest host kept.
    pub const MAX: usize = 64;

    fn get(&self, host: &str) -> Option<usize> {
        (self.len != 0 && &self.host[..usize::from(self.len)] == host.as_bytes())
            .then_some(self.site)
    }

    fn set(host: &str, site: usize) -> Option<Self> {
        let len = host.len();
        if len == 0 || len > Self::MAX {
            return None;
        }
        let mut memo = HostMemo::default();
        memo.host[..len].copy_from_slice(host.as_bytes());
        memo.len = len as u8;
        memo.site = site;
        Some(memo)
    }
}

impl Default for HostMemo {
    fn default() -> Self {
        HostMemo {
            len: 0,
            host: [0; Self::MAX],
            site: 0,
        }
    }
}

/// A response on its way: one boxed future per request of a waiting handler.
pub type Later = Pin<Box<dyn Future<Output = Response<TrackedBody>> + Send>>;

/// A handler's answer: at once ([`Reply::Ready`], no allocation), or later (a boxed future,
/// for handlers that wait on something: the reverse proxy). A future itself, for hyper;
/// [`Reply::now`] takes a ready answer without polling.
pub enum Reply {
    Ready(Option<Response<TrackedBody>>),
    Later(Later),
}

impl Reply {
    /// The answer when it is ready, else the future that will produce it.
    pub fn now(self) -> Result<Response<TrackedBody>, Later> {
        match self {
            Reply::Ready(r) => Ok(r.expect("a ready reply is taken once")),
            Reply::Later(f) => Err(f),
        }
    }
}

impl Future for Reply {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Ready(r) => Poll::Ready(Ok(r.take().expect("a ready reply is polled once"))),
            Reply::Later(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for HttpsService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Reply;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Reply {
        self.handle(req.map(RequestBody::H1))
    }
}

/// What routing decided: an answer, or a handler that answers later.
enum Routed {
    /// The response, and whether it has the site's headers already (static files add them).
    Answer(Response<Body>, bool),
    /// The reverse proxy of this route, the request's host, and whether its `Authorization`
    /// goes on to the backend.
    Proxy(Arc<proxy::Proxy>, String, bool),
}

/// What finishing a response needs to know of its request.
struct Exchange {
    method: Method,
    version: Version,
    /// The request asked for the connection to close after it (HTTP/1.x).
    request_closes: bool,
}

impl HttpsService {
    /// Serves one request, whatever its protocol.
    pub fn handle(&self, req: Request<RequestBody>) -> Reply {
        let guard = ActiveGuard::new(&self.conn);
        let (parts, body) = req.into_parts();
        // Access log (hook): when a log is on, the request gets an id, which error pages made
        // while routing show too.
        let log_id = self
            .front
            .logs_on
            .then(|| (std::time::Instant::now(), new_request_id()));
        let (site, routed) = match &log_id {
            None => self.route(&parts),
            Some((_, id)) => with_request_id(id, || self.route(&parts)),
        };
        let exchange = Exchange {
            request_closes: parts.version <= Version::HTTP_11 && request_closes(&parts),
            method: parts.method.clone(),
            version: parts.version,
        };
        match routed {
            Routed::Answer(resp, headed) => {
                let log = log_id.and_then(|(start, id)| {
                    self.record(site, start, &parts, resp.status().as_u16(), id)
                });
                Reply::Ready(Some(self.finish(&exchange, site, resp, headed, guard, log)))
            }
            Routed::Proxy(proxy, host, forward_authorization) => {
                let svc = self.clone();
                let site = site.expect("a proxy route belongs to a site");
                Reply::Later(Box::pin(async move {
                    let mut log =
                        log_id.and_then(|(start, id)| svc.record(Some(site), start, &parts, 0, id));
                    let ctx = proxy::Context {
                        peer: svc.peer,
                        local: svc.local,
                        host,
                        site_headers: &svc.front.sites[site].headers,
                        hsts: svc.front.sites[site].hsts_ramp.as_ref().map(|r| r.value()),
                        early: svc.conn.early.load(Ordering::Relaxed),
                        client_auth: svc.front.sites[site].client_auth,
                        client_cert: svc.client_cert.as_deref(),
                        forward_authorization,
                        request_id: log.as_ref().and_then(|r| r.request_id.clone()),
                        upstream: log.as_mut().map(|r| &mut r.upstream),
                    };
                    let resp = proxy.serve(parts, body, ctx).await;
                    if let Some(r) = &mut log {
                        r.status = resp.status().as_u16();
                    }
                    svc.finish(&exchange, Some(site), resp, false, guard, log)
                }))
            }
        }
    }

    /// The access-log record of a request of this connection, if its site's log is on.
    fn record(
        &self,
        site: Option<usize>,
        start: std::time::Instant,
        parts: &http::request::Parts,
        status: u16,
        id: HeaderValue,
    ) -> Option<Box<Record>> {
        let mut r = self.front.access_record(
            site,
            start,
            parts.into(),
            self.peer,
            "https",
            status,
            Some(id),
        )?;
        r.tls = self.tls.clone();
        r.early_data = self.conn.early.load(Ordering::Relaxed);
        Some(r)
    }

    /// The site's headers (errors before a site is known, such as an unknown Host or no SNI,
    /// get those of the site whose certificate the connection uses: every HTTPS response
    /// carries the protections; static files add them themselves, kept ready in their cached
    /// header maps), HEAD, and whether the connection closes after this response.
    fn finish(
        &self,
        exchange: &Exchange,
        site: Option<usize>,
        mut resp: Response<Body>,
        headed: bool,
        guard: ActiveGuard,
        log: Option<Box<Record>>,
    ) -> Response<TrackedBody> {
        let policy = &self.front.sites[site.or(self.sni_site).unwrap_or(self.front.default_site)];
        if !headed {
            add_missing(resp.headers_mut(), &policy.headers);
        }
        if let Some(ramp) = &policy.hsts_ramp {
            // A cached head shared with HTTP/2's encoder cannot take the header: such a
            // response gets a copy (what HTTP/1.1 always gets).
            if resp.body().ready_head().is_some() {
                resp = unshare_head(resp);
            }
            ramp.add_to(resp.headers_mut());
        }
        let mut resp = finish(&exchange.method, resp);
        if exchange.version <= Version::HTTP_11 && self.front.retired.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // metrics: one response (site, status class, protocol).
        crate::ops::metrics::request(
            site.map_or(crate::ops::metrics::SITE_NONE, |s| {
                self.front.sites[s].metrics_id
            }),
            resp.status().as_u16(),
            match exchange.version {
                Version::HTTP_2 => crate::ops::metrics::RequestProtocol::H2,
                Version::HTTP_3 => crate::ops::metrics::RequestProtocol::H3,
                _ => crate::ops::metrics::RequestProtocol::Http1,
            },
        );
        let closing = exchange.version <= Version::HTTP_11
            && resp.body().is_complete()
            && (exchange.request_closes || has_token(resp.headers(), &header::CONNECTION, "close"));
        self.conn.closing.store(closing, Ordering::Relaxed);
        resp.map(|inner| TrackedBody::new(inner, guard, log))
    }
}

/// A response with a shared cached head ([`Body::Ready`]) as one with its own header map.
fn unshare_head(resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let Body::Ready(data, head) = body else {
        return Response::from_parts(parts, body);
    };
    parts.headers = http::HeaderMap::clone(&head);
    if let Some((name, date)) = parts.headers.iter_mut().next() {
        if name == header::DATE {
            *date = date::now();
        }
    }
    Response::from_parts(parts, data.map_or(Body::Empty, Body::full))
}

/// Whether a comma-separated field (`Connection`, `Upgrade`, `TE`) lists `token`, in any of its
/// lines, ignoring case.
pub(crate) fn has_token(h: &http::HeaderMap, name: &HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether an HTTP/1.x request closes its connection after the exchange: it says
/// `Connection: close`, or as HTTP/1.0 did not ask for keep-alive (RFC 9112 §9.3). With the
/// response's `Connection: close`, this mirrors hyper's decision; a wrong answer only costs the
/// coalescing (the cork sends what it holds before the connection waits for another request).
fn request_closes(parts: &http::request::Parts) -> bool {
    has_token(&parts.headers, &header::CONNECTION, "close")
        || (parts.version < Version::HTTP_11
            && !has_token(&parts.headers, &header::CONNECTION, "keep-alive"))
}

/// A request over its client's request rate: 429 with `Retry-After` in whole seconds (at
/// least 1), counted and logged rate-limited. The connection stays open (as nginx's
/// `limit_req`): closing it would only make the client reconnect, which costs more.
fn too_many(refused: crate::server::limits::Refused) -> Response<Body> {
    crate::ops::limits_dropped(refused.kind());
    let wait = match refused {
        crate::server::limits::Refused::RequestRate(wait) => wait,
        _ => std::time::Duration::ZERO,
    };
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = pages::error(StatusCode::TOO_MANY_REQUESTS);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// RFC 8470's `Early-Data` request field (a constant: no name parsing per request).
const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// Methods whose repetition is harmless (RFC 9110 §9.2.1): the only ones served from early data.
fn is_safe(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::OPTIONS
}

/// The size of a request head as sent in HTTP/1.1 (request line and `Name: value` lines).
fn head_size(parts: &http::request::Parts) -> usize {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    parts
        .headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// HEAD: keep the headers (with the length the GET body would have), drop the body.
fn finish(method: &Method, mut resp: Response<Body>) -> Response<Body> {
    if method == Method::HEAD {
        // A ready head (`Body::Ready`) has its content-length already.
        let len = http_body::Body::size_hint(resp.body())
            .exact()
            .filter(|_| resp.body().ready_head().is_none());
        if let Some(len) = len {
            if !resp.headers().contains_key(header::CONTENT_LENGTH)
                && resp.status() != StatusCode::NOT_MODIFIED
            {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        resp.body_mut().strip();
    }
    resp
}

impl HttpsService {
    /// [`Frontend::site_of`], remembering a fixed host's site for the next request.
    fn site_of(&self, host: &str) -> Option<usize> {
        if let Some(&site) = self.front.hosts.get(host) {
            if let Some(memo) = HostMemo::set(host, site) {
                self.host_memo.set(memo);
            }
            return Some(site);
        }
        self.front.on_demand_site(host)
    }

    /// Picks the site and produces the response, and whether it already has the site's
    /// headers (static files add them).
    fn route(&self, parts: &http::request::Parts) -> (Option<usize>, Routed) {
        if self.overloaded {
            let mut r = pages::error(StatusCode::SERVICE_UNAVAILABLE);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (self.sni_site, Routed::Answer(r, false));
        }
        if let Some(limits) = &self.client_limits {
            if let Err(refused) = limits.request(self.peer.ip()) {
                return (self.sni_site, Routed::Answer(too_many(refused), false));
            }
        }
        if !is_safe(&parts.method)
            && (self.conn.early.load(Ordering::Relaxed)
                || parts.headers.get(&EARLY_DATA).is_some_and(|v| v == "1"))
        {
            // RFC 8470: a request that may have been replayed (it came in 0-RTT early data,
            // here or, per `Early-Data: 1`, at a proxy in front) is only served when repeating
            // it is harmless. The client retries after its handshake.
            return (
                self.sni_site,
                Routed::Answer(pages::error(StatusCode::TOO_EARLY), false),
            );
        }
        if head_size(parts) > self.front.max_header_bytes {
            // hyper's HTTP/1.1 buffer cannot be set below 8 KiB; smaller limits are enforced here.
            let mut r = pages::error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (self.sni_site, Routed::Answer(r, false));
        }
        let authority = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let (site, host) = match authority {
            Some(authority) => {
                let Some(host) = host_from_authority(authority) else {
                    return (
                        self.sni_site,
                        Routed::Answer(pages::error(StatusCode::BAD_REQUEST), false),
                    );
                };
                let memo = self.host_memo.get();
                let site = match memo.get(host).or_else(|| self.site_of(host)) {
                    Some(s) => s,
                    None => {
                        return (
                            self.sni_site,
                            Routed::Answer(pages::error(StatusCode::MISDIRECTED_REQUEST), false),
                        )
                    }
                };
                if let Some(sni) = self.sni_site {
                    // Host must belong to the site whose certificate this connection was made
                    // with (no domain fronting across sites).
                    if sni != site {
                        return (
                            Some(sni),
                            Routed::Answer(pages::error(StatusCode::MISDIRECTED_REQUEST), false),
                        );
                    }
                } else if site != self.front.default_site && self.front.sites[site].client_auth {
                    // Without SNI the default site's TLS configuration made the handshake: a
                    // site that verifies client certificates did not see this client's.
                    return (
                        None,
                        Routed::Answer(pages::error(StatusCode::MISDIRECTED_REQUEST), false),
                    );
                }
                (site, host)
            }
            // HTTP/1.0 has no Host requirement: the site the TLS handshake chose answers (by
            // SNI, or the default site), as in nginx. HTTP/1.1 and HTTP/2 must name the host.
            None if parts.version == Version::HTTP_10 => {
                let site = self.sni_site.unwrap_or(self.front.default_site);
                (site, self.front.sites[site].host_less.as_str())
            }
            None => {
                return (
                    self.sni_site,
                    Routed::Answer(pages::error(StatusCode::BAD_REQUEST), false),
                )
            }
        };
        (
            Some(site),
            serve_site(&self.front.sites[site], parts, host, self),
        )
    }
}

/// A site's answer, and whether it has the site's headers already.
fn serve_site(
    site: &SiteHandler,
    parts: &http::request::Parts,
    host: &str,
    svc: &HttpsService,
) -> Routed {
    let path = parts.uri.path();
    let route = site.routes.iter().find(|r| prefix_matches(&r.prefix, path));
    // Who may pass, before any handler (a refused client does not learn what exists).
    if let Some(rules) = route.map_or(&site.access, |r| &r.access) {
        let cert = svc.client_cert.as_deref();
        if let Err(refusal) = rules.check(svc.peer.ip(), cert, &parts.headers) {
            return Routed::Answer(refusal, false);
        }
    }
    let Some(route) = route else {
        return Routed::Answer(pages::error(StatusCode::NOT_FOUND), false);
    };
    let limit = match &route.kind {
        RouteKind::Proxy(p) => p.max_body(),
        _ => svc.front.max_body,
    };
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            let mut r = pages::error(StatusCode::PAYLOAD_TOO_LARGE);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Routed::Answer(r, false);
        }
    }
    let resp = match &route.kind {
        RouteKind::Respond(spec) => {
            let mut r = Response::new(Body::full(spec.body.clone()));
            *r.status_mut() = spec.status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, spec.content_type.clone());
            r
        }
        RouteKind::Redirect(spec) => {
            let query = parts.uri.query().unwrap_or("");
            let uri = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let to = spec
                .to
                .replace("{uri}", uri)
                .replace("{path}", path)
                .replace("{query}", query)
                .replace("{host}", host);
            pages::redirect(spec.status, &to)
        }
        RouteKind::Files {
            files,
            strip_prefix,
        } => {
            let lookup = if *strip_prefix && route.prefix != "/" {
                let rest = &path[route.prefix.len().min(path.len())..];
                if rest.is_empty() {
                    "/"
                } else {
                    rest
                }
            } else {
                path
            };
            return Routed::Answer(files.serve(parts, lookup), true);
        }
        RouteKind::Proxy(proxy) => {
            let forward_authorization = access::forwards_authorization(route.access.as_deref());
            return Routed::Proxy(proxy.clone(), host.to_owned(), forward_authorization);
        }
    };
    Routed::Answer(resp, false)
}

/// Adds each of a site's `headers` that `h` does not have yet (the response's own headers win).
pub(crate) fn add_missing(h: &mut http::HeaderMap, headers: &[(HeaderName, HeaderValue)]) {
    for (name, value) in headers {
        if let header::Entry::Vacant(slot) = h.entry(name.clone()) {
            slot.insert(value.clone());
        }
    }
}

/// Fields that HTTP/2 forbids in a message (RFC 9113 §8.2.2).
pub(crate) const CONNECTION_SPECIFIC: [HeaderName; 6] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

pub(crate) fn is_connection_specific(name: &HeaderName) -> bool {
    CONNECTION_SPECIFIC.iter().any(|c| c == name)
}

/// Removes the [`CONNECTION_SPECIFIC`] fields from the head or trailers of an HTTP/2 or
/// HTTP/3 message. One pass of name comparisons first (no hashing): handlers rarely add any.
#[inline]
pub(crate) fn drop_connection_specific(h: &mut http::HeaderMap) {
    if h.keys().any(is_connection_specific) {
        for name in CONNECTION_SPECIFIC {
            h.remove(name);
        }
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`; `/` matches everything.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}
