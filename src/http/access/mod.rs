//! Who may pass: the access rules of a site or route, checked after the site and route are
//! chosen and before the handler runs.
//!
//! Three kinds of rules, checked in this order, the first that refuses answering:
//! 1. IP allow/deny lists ([`ip`]) → `403 Forbidden`;
//! 2. `require_client_cert`: the connection must carry a verified client certificate (a site
//!    with `client_auth.mode = "optional"` can demand one on some paths) → `403 Forbidden`;
//! 3. HTTP basic authentication ([`basic`]) → `401 Unauthorized` with `WWW-Authenticate`.
//!
//! A route's rules are its site's, with each kind the route sets replacing the site's of the
//! same kind (as nginx's `allow`/`deny` and `auth_basic` in a `location` replace the
//! `server`'s). The kinds: the IP lists (`allow` and `deny` together), `require_client_cert`,
//! `basic_auth`. So a route with its own `allow` list keeps the site's `basic_auth`, and the
//! other way round. Rules are merged once at start ([`Access::within`]); a route without any rule
//! costs one branch per request.
//!
//! Mutual TLS itself (the handshake asking for and verifying a certificate) is the site's
//! `client_auth`, set up in [`crate::tls`]; [`client_cert`] is what request handling learns
//! from it.

pub mod basic;
pub mod client_cert;
pub mod ip;

use std::net::IpAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Response, StatusCode};

pub use basic::BasicAuth;
pub use client_cert::{forward_headers, ClientCert, CLIENT_CERT_HEADERS};
pub use ip::IpRules;

use super::body::Body;
use super::pages;

/// The rules of one site or route (each kind optional), as configured.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub ip: Option<Arc<IpRules>>,
    /// The connection must carry a verified client certificate.
    pub require_client_cert: Option<bool>,
    pub basic_auth: Option<Arc<BasicAuth>>,
}

impl Access {
    /// Whether no rule is set (requests pass without a check).
    pub fn is_empty(&self) -> bool {
        self.ip.is_none() && self.require_client_cert != Some(true) && self.basic_auth.is_none()
    }

    /// A route's effective rules: each kind it sets, else its site's.
    pub fn within(&self, site: &Access) -> Access {
        Access {
            ip: self.ip.clone().or_else(|| site.ip.clone()),
            require_client_cert: self.require_client_cert.or(site.require_client_cert),
            basic_auth: self.basic_auth.clone().or_else(|| site.basic_auth.clone()),
        }
    }

    /// The compiled form, `None` when nothing is to be checked.
    pub fn compile(&self) -> Option<Box<Access>> {
        (!self.is_empty()).then(|| Box::new(self.clone()))
    }

    /// Lets the request pass, or gives the refusal to send: 403 for an address not admitted
    /// or a missing client certificate, 401 with the realm's challenge for missing or wrong
    /// credentials. `peer` is the client's address (IPv4-mapped IPv6 is compared as IPv4).
    /// The site's headers are added by the caller, as for every response.
    // The refusal is the response itself, returned to the caller that sends it: boxing it
    // would only add an allocation on the refusal path.
    #[allow(clippy::result_large_err)]
    pub fn check(
        &self,
        peer: IpAddr,
        client_cert: Option<&ClientCert>,
        headers: &HeaderMap,
    ) -> Result<(), Response<Body>> {
        if let Some(ip) = &self.ip {
            if !ip.admits(peer) {
                return Err(pages::error(StatusCode::FORBIDDEN));
            }
        }
        if self.require_client_cert == Some(true) && client_cert.is_none() {
            return Err(pages::error_because(
                StatusCode::FORBIDDEN,
                "A client certificate is required.",
            ));
        }
        if let Some(auth) = &self.basic_auth {
            if !auth.verify(headers.get(header::AUTHORIZATION)) {
                let mut r = pages::error(StatusCode::UNAUTHORIZED);
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, auth.challenge.clone());
                return Err(r);
            }
        }
        Ok(())
    }

    /// Whether the request's `Authorization` field may go on to a backend: yes, unless this
    /// route checks basic auth itself and `forward_auth` is off (the credentials were meant
    /// for this server).
    pub fn forwards_authorization(&self) -> bool {
        self.basic_auth.as_ref().is_none_or(|b| b.forward_auth)
    }
}

/// [`Access::forwards_authorization`] for a route's compiled rules (`None`: no rules).
pub fn forwards_authorization(rules: Option<&Access>) -> bool {
    rules.is_none_or(Access::forwards_authorization)
}
