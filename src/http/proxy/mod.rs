//! The reverse proxy handler: a route that passes requests to a group of backends.
//!
//! Policy lives here (what a request carries upstream and what comes back: [`headers`],
//! WebSockets: [`tunnel`], error pages, the body limit); the mechanism of reaching backends
//! (connections, pools, balancing, health, retries, timeouts) is [`crate::outbound`].

pub mod headers;
pub mod tunnel;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};

use super::body::Body;
use super::compress;
use super::pace::PacedBody;
use super::RequestBody;
use crate::config::model::BodyPace;
use crate::config::proxy::{HostMode, ProxySpec};
use crate::outbound::{BalanceKey, ClientAddrs, UpstreamError, UpstreamGroup};

/// A `proxy` route, ready to serve.
pub struct Proxy {
    group: Arc<UpstreamGroup>,
    spec: ProxySpec,
    /// The route's path prefix (removed from the path sent upstream with `strip_prefix`).
    prefix: String,
    /// Request body limit.
    max_body: u64,
    /// How slowly a request body may come (`limits.body_timeout`, `limits.min_body_rate`).
    body_pace: BodyPace,
}

/// What the proxy needs to know of the request's connection and site.
pub struct Context<'a> {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The host the request named (no port).
    pub host: String,
    /// The site's security headers.
    pub site_headers: &'a [(HeaderName, HeaderValue)],
    /// The site's Strict-Transport-Security value of the moment, with `hsts.ramp` (then it is
    /// not among `site_headers`).
    pub hsts: Option<HeaderValue>,
    /// The request came in TLS 1.3 early data (only safe methods get here then).
    pub early: bool,
    /// The site verifies client certificates: the backend is told who the client is.
    pub client_auth: bool,
    /// The connection's verified client certificate.
    pub client_cert: Option<&'a crate::http::access::ClientCert>,
    /// The `Authorization` field goes on to the backend (see
    /// [`crate::http::access::Access::forwards_authorization`]).
    pub forward_authorization: bool,
    /// The request's id when the access log gave it one (else the proxy makes one).
    pub request_id: Option<HeaderValue>,
    /// Access log (hook): where the backend and its time go, when the log is on.
    pub upstream: Option<&'a mut crate::ops::access::Upstream>,
}

impl Proxy {
    pub fn new(
        spec: &ProxySpec,
        prefix: &str,
        default_max_body: u64,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Proxy, String> {
        Ok(Proxy {
            group: UpstreamGroup::new(spec, shutdown)?,
            spec: spec.clone(),
            prefix: prefix.to_owned(),
            max_body: spec.max_body.unwrap_or(default_max_body),
            body_pace: BodyPace::default(),
        })
    }

    /// The pace request bodies must keep (default: [`BodyPace::default`]).
    pub fn with_body_pace(mut self, pace: BodyPace) -> Self {
        self.body_pace = pace;
        self
    }

    /// The request body limit of this route.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The backends (for the status page and metrics).
    pub fn group(&self) -> &Arc<UpstreamGroup> {
        &self.group
    }

    /// Passes one request to a backend and its answer back.
    pub async fn serve(
        &self,
        mut parts: http::request::Parts,
        body: RequestBody,
        mut ctx: Context<'_>,
    ) -> Response<Body> {
        let id = ctx.request_id.take().unwrap_or_else(request_id);
        // `Some` on a compressing route: the coding this client takes, if any.
        let coding = self
            .spec
            .compress
            .then(|| compress::negotiate(&parts.headers));
        let h1_ws = tunnel::is_h1_websocket(&parts);
        let h2_ws = tunnel::is_h2_websocket(&parts);
        if h2_ws && !self.spec.websocket {
            return page(
                StatusCode::NOT_IMPLEMENTED,
                "WebSockets are not enabled for this path.",
                &id,
            );
        }
        // With WebSockets off, an HTTP/1.1 upgrade request goes on as a plain request (its
        // Upgrade is hop-by-hop).
        let ws = (h1_ws || h2_ws) && self.spec.websocket;
        let client_upgrade = if h1_ws && ws {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };

        // The request as the backend gets it.
        let mut headers = headers::end_to_end(&parts.headers);
        let trusted = headers::trusted(ctx.peer.ip(), &self.spec.trusted_proxies);
        // The host as the client named it, with its port (`Host` or `:authority`).
        let named = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or(&ctx.host)
            .to_owned();
        headers::forwarding(&mut headers, &parts.headers, ctx.peer, &named, trusted);
        // Who the client is, as verified here; fields of these names from the client never
        // get through.
        for name in &crate::http::access::CLIENT_CERT_HEADERS {
            headers.remove(name);
        }
        if ctx.client_auth {
            headers.extend(crate::http::access::forward_headers(ctx.client_cert));
        }
        if !ctx.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        match &self.spec.host {
            HostMode::Pass => {
                // HTTP/2 carries the host in `:authority`; HTTP/1.1 backends need `Host`.
                if let Some(a) = parts.uri.authority() {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        headers.insert(header::HOST, v);
                    }
                }
            }
            HostMode::Upstream => {
                // outbound names the backend when the request has no Host.
                headers.remove(header::HOST);
            }
            HostMode::Literal(v) => {
                headers.insert(header::HOST, v.clone());
            }
        }
        if ctx.early {
            // RFC 8470 §5.1: the backend learns that the request may be a replay.
            headers.insert(EARLY_DATA, HeaderValue::from_static("1"));
        }
        if self.spec.via {
            headers::via(&mut headers, parts.version);
        }
        headers::edit(&mut headers, &self.spec.request_headers);
        headers.insert(headers::X_REQUEST_ID, id.clone());
        let mut ws_key = None;
        if ws {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if h2_ws {
                // RFC 8441 §5: the backend speaks RFC 6455 over HTTP/1.1, which has a key.
                let key = tunnel::new_key();
                headers.insert(SEC_WEBSOCKET_KEY, key.clone());
                ws_key = Some(key);
            }
        }
        let path = self.upstream_path(&parts.uri);
        let method = if h2_ws {
            Method::GET
        } else {
            parts.method.clone()
        };
        let mut req = Request::new(LimitedBody::default());
        *req.method_mut() = method;
        *req.uri_mut() = path;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        let mut tunnel_body = None;
        let limit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if h2_ws && ws {
            // The stream's DATA is the tunnel's, not the upgrade request's body.
            tunnel_body = Some(body);
        } else {
            *req.body_mut() = LimitedBody {
                inner: PacedBody::new(body, self.body_pace),
                left: self.max_body,
                over: Some(limit.clone()),
                slow: Some(slow.clone()),
            };
        }

        let key = BalanceKey {
            client: ClientAddrs {
                peer: ctx.peer,
                local: ctx.local,
            },
            headers: &parts.headers,
        };
        let exchange = match self.group.send(req, &key).await {
            Ok(x) => x,
            Err(e) => {
                if let Some(u) = ctx.upstream.as_deref_mut() {
                    // Access log (hook): the backend that failed, if one was tried.
                    u.backend = e.backend().map(Arc::from);
                }
                if limit.load(Ordering::Relaxed) {
                    crate::limited!(OVER_LIMIT, info, request_id = %id.to_str().unwrap_or(""), limit = self.max_body, "request body over the proxy's limit: 413");
                    let mut r = page(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "The request body is larger than this site accepts.",
                        &id,
                    );
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
                if slow.load(Ordering::Relaxed) {
                    tracing::info!(request_id = %id.to_str().unwrap_or(""), "request body too slow (limits.body_timeout, limits.min_body_rate): 408");
                    let mut r = page(
                        StatusCode::REQUEST_TIMEOUT,
                        "The request body did not arrive in time.",
                        &id,
                    );
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
                return self.failed(&e, &id, &parts.method, &parts.uri);
            }
        };
        for earlier in &exchange.retried {
            tracing::info!(request_id = %id.to_str().unwrap_or(""), error = %earlier, "proxy: retried on another backend");
        }
        let (mut rparts, rbody) = exchange.response.into_parts();
        let backend = exchange.backend.clone();
        if let Some(u) = ctx.upstream.as_deref_mut() {
            // Access log (hook).
            u.backend = Some(backend.clone());
            u.time = Some(exchange.connect_time + exchange.upstream_time);
        }

        if ws && rparts.status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(backend_upgrade) = exchange.upgrade else {
                return self.failed(
                    &UpstreamError::BadResponse {
                        backend: backend.clone(),
                        detail: "101 without an upgradable connection".into(),
                    },
                    &id,
                    &parts.method,
                    &parts.uri,
                );
            };
            if let Some(key) = &ws_key {
                let ok = rparts
                    .headers
                    .get(SEC_WEBSOCKET_ACCEPT)
                    .is_some_and(|v| v.as_bytes() == tunnel::accept_for(key).as_bytes());
                if !ok {
                    return self.failed(
                        &UpstreamError::BadResponse {
                            backend: backend.clone(),
                            detail: "WebSocket handshake answer with a wrong Sec-WebSocket-Accept"
                                .into(),
                        },
                        &id,
                        &parts.method,
                        &parts.uri,
                    );
                }
            }
            if let Some(client) = client_upgrade {
                // HTTP/1.1: the 101 goes back with the backend's handshake fields.
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let mut h = rparts.headers;
                headers::strip_hop_by_hop(&mut h);
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                *r.headers_mut() = h;
                tunnel::splice_h1(client, backend_upgrade, backend);
                return r;
            }
            if let Some(client_body) = tunnel_body {
                // HTTP/2: 200 opens the tunnel (RFC 8441 §5); no RFC 6455 handshake fields.
                let body = match tunnel::join_h2(client_body, backend_upgrade).await {
                    Ok(b) => b,
                    Err(e) => {
                        return self.failed(
                            &UpstreamError::BadResponse {
                                backend: backend.clone(),
                                detail: format!("WebSocket upgrade failed: {e}"),
                            },
                            &id,
                            &parts.method,
                            &parts.uri,
                        );
                    }
                };
                let mut h = rparts.headers;
                headers::strip_hop_by_hop(&mut h);
                h.remove(SEC_WEBSOCKET_ACCEPT);
                h.remove(header::CONTENT_LENGTH);
                let mut r = Response::new(Body::stream(body));
                *r.headers_mut() = h;
                return r;
            }
        }
        if h2_ws {
            // The backend refused the upgrade: its answer goes back as it is (not a tunnel).
            tracing::debug!(request_id = %id.to_str().unwrap_or(""), status = rparts.status.as_u16(), "backend refused the WebSocket upgrade");
        }

        headers::strip_hop_by_hop(&mut rparts.headers);
        if self.spec.via {
            headers::via(&mut rparts.headers, rparts.version);
        }
        headers::edit(&mut rparts.headers, &self.spec.response_headers);
        if let Some(cookie) = exchange.set_cookie {
            rparts.headers.append(header::SET_COOKIE, cookie);
        }
        if !self.spec.backend_headers_win {
            // The site's security headers win over the backend's (the default).
            for (name, value) in ctx.site_headers {
                rparts.headers.insert(name.clone(), value.clone());
            }
            if let Some(hsts) = ctx.hsts {
                rparts
                    .headers
                    .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
            }
        }
        rparts.version = Version::HTTP_11;
        let body = Body::stream(BackendBody {
            inner: rbody,
            id: id.clone(),
        });
        let resp = Response::from_parts(rparts, body);
        match coding {
            Some(coding) => compress::apply(&parts.method, resp, coding),
            None => resp,
        }
    }

    /// The path and query sent upstream (origin form), without the route's prefix when so
    /// configured.
    fn upstream_path(&self, uri: &Uri) -> Uri {
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        if !self.spec.strip_prefix || self.prefix == "/" {
            return Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
        }
        let rest = pq.get(self.prefix.len().min(pq.len())..).unwrap_or("");
        let rest = if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest.to_owned()
        };
        Uri::try_from(rest).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// A failure's page for the client (status and request id only: nothing internal) and its
    /// log line (what failed, in plain words).
    fn failed(
        &self,
        e: &UpstreamError,
        id: &HeaderValue,
        method: &Method,
        uri: &Uri,
    ) -> Response<Body> {
        let status = e.status();
        crate::limited!(FAILED, warn, request_id = %id.to_str().unwrap_or(""), %method, %uri, status = status.as_u16(), "proxy: {e}");
        let why = match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                "No server behind this site is available right now. Try again shortly."
            }
            StatusCode::GATEWAY_TIMEOUT => "The server behind this site did not answer in time.",
            _ => "The server behind this site could not be reached or gave a bad answer.",
        };
        let mut r = page(status, why, id);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        r
    }
}

/// Budgets of the lines clients can cause by their requests (see [`crate::ops::limit`]).
static OVER_LIMIT: crate::ops::limit::LineLimit = crate::ops::limit::LineLimit::new(
    "proxy: request body over the limit",
    crate::ops::limit::report_to_log,
);
static FAILED: crate::ops::limit::LineLimit =
    crate::ops::limit::LineLimit::new("proxy: backend failure", crate::ops::limit::report_to_log);

const EARLY_DATA: HeaderName = HeaderName::from_static("early-data");
const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// A short error page naming the request id (which the log line has too).
fn page(status: StatusCode, why: &str, id: &HeaderValue) -> Response<Body> {
    let text = format!(
        "{} {}\n{why}\nRequest id: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        id.to_str().unwrap_or("")
    );
    let mut r = Response::new(Body::full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(headers::X_REQUEST_ID, id.clone());
    r
}

/// A request id (see [`crate::ops::access::new_request_id`]): 16 hex digits.
pub fn request_id() -> HeaderValue {
    crate::ops::access::new_request_id()
}

/// The client's request body on its way upstream, cut off with an error past the limit or
/// when it comes too slowly.
pub struct LimitedBody {
    inner: PacedBody<RequestBody>,
    left: u64,
    /// Set when the limit was hit (the proxy answers 413 then).
    over: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Set when the body came too slowly (the proxy answers 408 then).
    slow: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for LimitedBody {
    fn default() -> Self {
        LimitedBody {
            inner: PacedBody::new(RequestBody::Empty, BodyPace::default()),
            left: 0,
            over: None,
            slow: None,
        }
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let (Some(Err(e)), Some(slow)) = (&frame, &this.slow) {
            if e.kind() == io::ErrorKind::TimedOut {
                slow.store(true, Ordering::Relaxed);
            }
        }
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let n = data.len() as u64;
                if n > this.left {
                    if let Some(over) = &this.over {
                        over.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Err(io::Error::other("request body over the limit"))));
                }
                this.left -= n;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The backend's response body on its way to the client: a failure mid-body (the backend
/// closed, a timeout) is logged with the request id and ends the client's response abruptly
/// (HTTP/2 RST_STREAM, HTTP/1.1 connection closed), so the client knows it is incomplete.
struct BackendBody {
    inner: crate::outbound::UpstreamBody,
    id: HeaderValue,
}

impl http_body::Body for BackendBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Err(e)) => {
                tracing::warn!(request_id = %this.id.to_str().unwrap_or(""), "proxy: response body cut short: {e}");
                Poll::Ready(Some(Err(io::Error::other(e.to_string()))))
            }
            other => Poll::Ready(other.map(|r| r.map_err(|e| io::Error::other(e.to_string())))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
