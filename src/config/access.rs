//! Configuration of who may pass: `access` (IP lists, `require_client_cert`) and
//! `basic_auth` per site and route, `client_auth` (mutual TLS) per site. The raw TOML shapes
//! and their validation into [`crate::http::access::Access`] and [`ClientAuth`].

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;
use toml::Spanned;

use super::validate::Ctx;
use super::Location;
use crate::http::access::basic::{parse_htpasswd, StoredHash};
use crate::http::access::{ip, Access, BasicAuth, IpRules};

/// `access = { allow = [...], deny = [...], require_client_cert = true }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    /// Networks (CIDR) or addresses admitted; empty or absent: everyone not denied.
    pub allow: Option<Vec<Spanned<String>>>,
    /// Networks (CIDR) or addresses refused (checked first).
    pub deny: Option<Vec<Spanned<String>>>,
    /// The connection must carry a verified client certificate (needs `client_auth`).
    pub require_client_cert: Option<Spanned<bool>>,
}

/// `basic_auth = { realm = "...", users = { alice = "$argon2id$..." }, users_file = "..." }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    /// Shown by browsers in the login prompt; default: the site's name.
    pub realm: Option<Spanned<String>>,
    /// User → bcrypt or argon2 hash.
    pub users: Option<BTreeMap<String, Spanned<String>>>,
    /// An htpasswd file of `user:hash` lines (bcrypt or argon2 hashes).
    pub users_file: Option<Spanned<String>>,
    /// Pass the `Authorization` field on to backends (default false).
    pub forward_auth: Option<bool>,
}

/// `client_auth = { mode = "required", ca = ["clients-ca.pem"], crl = ["clients.crl"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// `"required"` (default) or `"optional"`.
    pub mode: Option<Spanned<String>>,
    /// PEM files of the CAs that issue client certificates.
    pub ca: Spanned<Vec<Spanned<String>>>,
    /// PEM certificate revocation lists of those CAs.
    pub crl: Option<Vec<Spanned<String>>>,
}

/// Whether a site's handshakes insist on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// No verified certificate, no connection.
    Required,
    /// A certificate is asked for; without one the connection goes on (and
    /// `require_client_cert` routes refuse it), with an invalid one it fails.
    Optional,
}

/// A site's mutual TLS, validated: the verifier its TLS configuration uses.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub mode: ClientAuthMode,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// The rules of `access` and `basic_auth` of one site or route (`what` names it in errors).
pub(super) fn access(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawAccess>>,
    basic: Option<&Spanned<RawBasicAuth>>,
    site: &str,
    what: &str,
) -> Access {
    let mut out = Access::default();
    if let Some(raw) = raw {
        let a = raw.get_ref();
        if a.allow.is_some() || a.deny.is_some() {
            let mut rules = IpRules::default();
            for (list, key, into) in [
                (&a.allow, "allow", &mut rules.allow),
                (&a.deny, "deny", &mut rules.deny),
            ] {
                for n in list.iter().flatten() {
                    match ip::parse_net(n.get_ref()) {
                        Ok(net) => into.push(net),
                        Err(e) => {
                            let loc = cx.loc(n, "");
                            cx.err(
                                loc,
                                format!("{what}: access.{key}: {e}"),
                                "write networks like \"10.0.0.0/8\", \"2001:db8::/32\" or single addresses like \"192.0.2.7\"",
                            );
                        }
                    }
                }
            }
            if rules.allow.is_empty() && a.allow.as_ref().is_some_and(|l| l.is_empty()) {
                let loc = cx.loc(raw, "");
                cx.err(
                    loc,
                    format!(
                        "{what}: access.allow = [] admits no one and every request would get 403"
                    ),
                    "list the networks to admit, or remove allow to admit everyone not denied",
                );
            }
            out.ip = Some(Arc::new(rules));
        }
        out.require_client_cert = a.require_client_cert.as_ref().map(|r| *r.get_ref());
    }
    if let Some(b) = basic {
        out.basic_auth = basic_auth(cx, b, site, what);
    }
    out
}

fn basic_auth(
    cx: &mut Ctx<'_>,
    raw: &Spanned<RawBasicAuth>,
    site: &str,
    what: &str,
) -> Option<Arc<BasicAuth>> {
    const HOW: &str = "store a hash, not the password: run `portcullis hash-password` (it reads the password from stdin) and paste its $argon2id$… line; bcrypt hashes (htpasswd -B) work too";
    let b = raw.get_ref();
    let mut users: Vec<(String, StoredHash)> = Vec::new();
    let mut seen: BTreeMap<String, Location> = BTreeMap::new();
    let errors_before = cx.error_count();
    for (user, hash) in b.users.iter().flatten() {
        let loc = cx.loc(hash, "");
        match StoredHash::parse(hash.get_ref()) {
            Ok(h) => {
                seen.insert(user.clone(), loc);
                users.push((user.clone(), h));
            }
            Err(e) => cx.err(
                loc,
                format!("{what}: basic_auth user {user:?}: the password {e}"),
                HOW,
            ),
        }
    }
    if let Some(file) = &b.users_file {
        let loc = cx.loc(file, "");
        let path = cx.path(file.get_ref());
        match std::fs::read_to_string(&path) {
            Err(e) => cx.err(
                loc,
                format!(
                    "{what}: basic_auth.users_file {} cannot be read: {e}",
                    path.display()
                ),
                "fix the path (relative paths are relative to the config file) or the file's permissions",
            ),
            Ok(text) => match parse_htpasswd(&text) {
                Err((line, e)) => cx.err(
                    loc,
                    format!(
                        "{what}: basic_auth.users_file {} line {line} {e}",
                        path.display()
                    ),
                    "write one user:hash per line (# starts a comment)",
                ),
                Ok(entries) => {
                    for e in entries {
                        if let Some(prev) = seen.get(&e.user) {
                            cx.err(
                                loc.clone(),
                                format!(
                                    "{what}: basic_auth user {:?} is in users_file {} line {} and also at {prev}",
                                    e.user,
                                    path.display(),
                                    e.line
                                ),
                                "keep each user once",
                            );
                            continue;
                        }
                        match StoredHash::parse(&e.hash) {
                            Ok(h) => users.push((e.user, h)),
                            Err(why) => cx.err(
                                loc.clone(),
                                format!(
                                    "{what}: basic_auth.users_file {} line {}: user {:?}: the password {why}",
                                    path.display(),
                                    e.line,
                                    e.user
                                ),
                                HOW,
                            ),
                        }
                    }
                }
            },
        }
    }
    if cx.error_count() > errors_before {
        return None;
    }
    if users.is_empty() {
        let loc = cx.loc(raw, "");
        cx.err(
            loc,
            format!("{what}: basic_auth has no users: no one could log in"),
            "add users = { name = \"<hash>\" } or users_file = \"htpasswd\"",
        );
        return None;
    }
    let realm = b
        .realm
        .as_ref()
        .map_or(site, |r| r.get_ref().as_str())
        .to_string();
    match BasicAuth::new(&realm, users, b.forward_auth.unwrap_or(false)) {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            let loc = cx.loc_or(b.realm.as_ref(), "", "basic_auth.realm");
            cx.err(
                loc,
                format!("{what}: basic_auth: {e}"),
                "use printable characters without line breaks",
            );
            None
        }
    }
}

/// A site's `client_auth`: the CA and CRL files loaded and the verifier built.
pub(super) fn client_auth(
    cx: &mut Ctx<'_>,
    raw: &Spanned<RawClientAuth>,
    site: &str,
) -> Option<ClientAuth> {
    let r = raw.get_ref();
    let mode = match r.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "required")) => ClientAuthMode::Required,
        Some((_, "optional")) => ClientAuthMode::Optional,
        Some((m, other)) => {
            let loc = cx.loc(m, "");
            cx.err(
                loc,
                format!("site {site:?}: client_auth.mode = {other:?} is not a mode"),
                "use \"required\" (no certificate, no connection) or \"optional\"",
            );
            return None;
        }
    };
    let errors_before = cx.error_count();
    if r.ca.get_ref().is_empty() {
        let loc = cx.loc(&r.ca, "");
        cx.err(
            loc,
            format!(
                "site {site:?}: client_auth.ca is empty: no client certificate could be verified"
            ),
            "list the PEM files of the CAs that issue your client certificates",
        );
    }
    let mut roots = RootCertStore::empty();
    for ca in r.ca.get_ref() {
        let loc = cx.loc(ca, "");
        let path = cx.path(ca.get_ref());
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) => {
                cx.err(
                    loc,
                    format!(
                        "site {site:?}: client_auth.ca {} cannot be read: {e}",
                        path.display()
                    ),
                    "fix the path (relative paths are relative to the config file)",
                );
                continue;
            }
        };
        let certs: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_slice_iter(&pem).collect();
        match certs {
            Ok(certs) if !certs.is_empty() => {
                for (i, c) in certs.into_iter().enumerate() {
                    if let Err(e) = roots.add(c) {
                        cx.err(
                            loc.clone(),
                            format!(
                                "site {site:?}: client_auth.ca {}: certificate {} is not usable as a trust anchor: {e}",
                                path.display(),
                                i + 1
                            ),
                            "put the CA certificates (PEM) in the file",
                        );
                    }
                }
            }
            Ok(_) => cx.err(
                loc,
                format!(
                    "site {site:?}: client_auth.ca {} has no certificate (no -----BEGIN CERTIFICATE----- block)",
                    path.display()
                ),
                "put the PEM certificates of the CAs that issue client certificates in it",
            ),
            Err(e) => cx.err(
                loc,
                format!(
                    "site {site:?}: client_auth.ca {} is not PEM: {e}",
                    path.display()
                ),
                "give the CA certificates in PEM (openssl x509 -inform der -in ca.der -out ca.pem)",
            ),
        }
    }
    let mut crls = Vec::new();
    for crl in r.crl.iter().flatten() {
        let loc = cx.loc(crl, "");
        let path = cx.path(crl.get_ref());
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) => {
                cx.err(
                    loc,
                    format!(
                        "site {site:?}: client_auth.crl {} cannot be read: {e}",
                        path.display()
                    ),
                    "fix the path (relative paths are relative to the config file)",
                );
                continue;
            }
        };
        let list: Result<Vec<CertificateRevocationListDer<'static>>, _> =
            CertificateRevocationListDer::pem_slice_iter(&pem).collect();
        match list {
            Ok(l) if !l.is_empty() => crls.extend(l),
            Ok(_) => cx.err(
                loc,
                format!(
                    "site {site:?}: client_auth.crl {} has no revocation list (no -----BEGIN X509 CRL----- block)",
                    path.display()
                ),
                "give the CRL in PEM (openssl crl -inform der -in list.crl -out list.pem)",
            ),
            Err(e) => cx.err(
                loc,
                format!(
                    "site {site:?}: client_auth.crl {} is not PEM: {e}",
                    path.display()
                ),
                "give the CRL in PEM (openssl crl -inform der -in list.crl -out list.pem)",
            ),
        }
    }
    if cx.error_count() > errors_before {
        return None;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(crate::tls::provider()),
    );
    if !crls.is_empty() {
        // Revocation is checked for the client's own certificate, against the CRL of the CA
        // that issued it; a certificate whose issuer has no listed CRL is refused.
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    if mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    match builder.build() {
        Ok(verifier) => Some(ClientAuth { mode, verifier }),
        Err(e) => {
            let loc = cx.loc(raw, "");
            cx.err(
                loc,
                format!("site {site:?}: client_auth cannot be set up: {e}"),
                "check that ca lists CA certificates and crl their revocation lists (PEM)",
            );
            None
        }
    }
}

/// A site's own rules and its `client_auth`; also checks what needs `client_auth`
/// (`require_client_cert` on the site or its routes) and what cannot go with it.
pub(super) fn site(
    cx: &mut Ctx<'_>,
    rs: &super::raw::RawSite,
    name: &str,
) -> (Access, Option<ClientAuth>) {
    let what = format!("site {name:?}");
    let rules = access(cx, rs.access.as_ref(), rs.basic_auth.as_ref(), name, &what);
    let client_auth = rs
        .client_auth
        .as_ref()
        .and_then(|c| client_auth(cx, c, name));
    if let (Some(c), Some(true)) = (&rs.client_auth, rs.early_data) {
        let loc = cx.loc(c, "");
        cx.err(
            loc,
            format!("{what}: early_data and client_auth cannot be combined: requests sent as 0-RTT early data can be replayed by anyone who recorded them, with the client's certificate attached"),
            "remove early_data from the site (or client_auth)",
        );
    }
    if rs.client_auth.is_none() {
        let demands = rs
            .access
            .iter()
            .chain(rs.routes.iter().filter_map(|r| r.access.as_ref()))
            .filter_map(|a| a.get_ref().require_client_cert.as_ref())
            .find(|r| *r.get_ref());
        if let Some(r) = demands {
            let loc = cx.loc(r, "");
            cx.err(
                loc,
                format!("{what}: require_client_cert needs client_auth on the site: without it no client is asked for a certificate, and every request would get 403"),
                "add client_auth = { mode = \"optional\", ca = [\"clients-ca.pem\"] } to the site",
            );
        }
    }
    (rules, client_auth)
}
