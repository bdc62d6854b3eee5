//! Port 80: every request for a configured host is redirected to HTTPS (no HSTS here, RFC 6797
//! §7.2); unknown hosts get 400 (no open redirect); an HTTP/1.0 request without `Host` goes to
//! the default site's own name; ACME HTTP-01 challenges are answered.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use super::body::Body;
use super::{pages, ActiveGuard, ConnState, Frontend, TrackedBody};
use crate::config::model::RedirectKind;
use crate::tls::names::{host_from_authority, normalize};

/// Where HTTP-01 challenge requests arrive.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The service of one plain-HTTP connection.
#[derive(Clone)]
pub struct RedirectService {
    pub front: Arc<Frontend>,
    pub conn: Arc<ConnState>,
    /// The client's address (for the access log).
    pub peer: std::net::SocketAddr,
}

/// What a port-80 request gets: an answer now, or (an HTTP-01 token another instance placed)
/// one from the shared store.
enum Answer {
    Now(Response<Body>),
    Shared(crate::acme::SharedAnswer),
}

type Answered = Result<Response<TrackedBody>, Infallible>;

impl<B: Send + 'static> hyper::service::Service<Request<B>> for RedirectService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        Ready<Answered>,
        std::pin::Pin<Box<dyn std::future::Future<Output = Answered> + Send>>,
    >;

    fn call(&self, req: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        let guard = ActiveGuard::new(&self.conn);
        let start = std::time::Instant::now();
        match self.respond(&req) {
            Answer::Now(resp) => Either::Left(ready(Ok(self.complete(&req, start, guard, resp)))),
            Answer::Shared(lookup) => {
                let me = self.clone();
                Either::Right(Box::pin(async move {
                    let resp = challenge_answer(lookup.await);
                    Ok(me.complete(&req, start, guard, resp))
                }))
            }
        }
    }
}

/// The answer to an HTTP-01 challenge request: the key authorization, or 404.
fn challenge_answer(key_auth: Option<bytes::Bytes>) -> Response<Body> {
    match key_auth {
        Some(key_auth) => {
            let mut r = Response::new(Body::full(key_auth));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => pages::error(StatusCode::NOT_FOUND),
    }
}

impl RedirectService {
    /// Logs and counts the answer `resp` to `req`.
    fn complete<B>(
        &self,
        req: &Request<B>,
        start: std::time::Instant,
        guard: ActiveGuard,
        resp: Response<Body>,
    ) -> Response<TrackedBody> {
        // Access log (hook): port 80 requests go to the `[log]` default log.
        let log = self.front.access_record(
            None,
            start,
            req.into(),
            self.peer,
            "http",
            resp.status().as_u16(),
            None,
        );
        let resp = super::finish(req.method(), resp);
        // metrics: one port-80 response.
        crate::ops::metrics::request(
            crate::ops::metrics::SITE_PORT80,
            resp.status().as_u16(),
            crate::ops::metrics::RequestProtocol::PlainHttp,
        );
        resp.map(|inner| TrackedBody::new(inner, guard, log))
    }

    fn respond<B>(&self, req: &Request<B>) -> Answer {
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
            if let Some(key_auth) = self.front.acme.get(token) {
                return Answer::Now(challenge_answer(Some(key_auth)));
            }
            return match self.front.acme.shared_lookup(token) {
                Some(lookup) => Answer::Shared(lookup),
                None => Answer::Now(challenge_answer(None)),
            };
        }
        Answer::Now(self.redirect(req))
    }

    fn redirect<B>(&self, req: &Request<B>) -> Response<Body> {
        let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let host = match authority {
            Some(authority) => {
                let Some(host) = host_from_authority(authority) else {
                    return pages::error(StatusCode::BAD_REQUEST);
                };
                if self.front.site_of(host).is_none() {
                    // Not one of ours: redirecting would make us an open redirector.
                    return pages::error(StatusCode::BAD_REQUEST);
                }
                host
            }
            // HTTP/1.0 has no Host requirement (old clients, health checks): such a request
            // goes to the default site's own name, as nginx's `server_name` would have it.
            None if req.version() == Version::HTTP_10 => {
                let default = self.front.sites.get(self.front.default_site);
                match default.and_then(|s| s.own_name.as_deref()) {
                    Some(name) => name,
                    None => {
                        return pages::error_because(
                            StatusCode::BAD_REQUEST,
                            "The request has no Host header, and this server has no single name to redirect it to: send Host: <the site's name>.",
                        )
                    }
                }
            }
            None => return pages::error(StatusCode::BAD_REQUEST),
        };
        let host = normalize(host);
        let safe = matches!(*req.method(), Method::GET | Method::HEAD);
        let status = match (self.front.redirect, safe) {
            (RedirectKind::Permanent, true) => StatusCode::MOVED_PERMANENTLY,
            (RedirectKind::Permanent, false) => StatusCode::PERMANENT_REDIRECT,
            (RedirectKind::Temporary, true) => StatusCode::FOUND,
            (RedirectKind::Temporary, false) => StatusCode::TEMPORARY_REDIRECT,
        };
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let pq = if pq.starts_with('/') { pq } else { "/" };
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.into_owned()
        };
        let location = format!("https://{host_part}{}{pq}", self.front.https_port_suffix);
        let mut r = pages::redirect(status, &location);
        if !safe {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}
