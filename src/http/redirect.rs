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

impl<B> hyper::service::Service<Request<B>> for RedirectService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<TrackedBody>, Infallible>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let guard = ActiveGuard::new(&self.conn);
        let start = std::time::Instant::now();
        let resp = self.respond(&req);
        // Access log (hook): port 80 requests go to the `[log]` default log.
        let log = self.front.access_record(
            None,
            start,
            (&req).into(),
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
        ready(Ok(resp.map(|inner| TrackedBody::new(inner, guard, log))))
    }
}

impl RedirectService {
    fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
            return match self.front.acme.get(token) {
                Some(key_auth) => {
                    let mut r = Response::new(Body::full(key_auth));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    r
                }
                None => pages::error(StatusCode::NOT_FOUND),
            };
        }
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
