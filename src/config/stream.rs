//! `[[stream]]`: TLS for any TCP service, and `[listen] proxy_protocol`: which load balancers
//! may tell us the client's address.
//!
//! A stream listens on its own ports, reads the ClientHello, picks a route by SNI and ALPN,
//! and either terminates TLS (with certificates obtained like a site's: files, local CA or
//! ACME) and pipes the plaintext to a TCP or Unix-socket backend, or passes the TLS bytes
//! through untouched to a backend that keeps its own TLS. Raw structs, the typed model and
//! the checks are all here; `raw.rs`, `model.rs` and `validate.rs` only hook them in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::model::{Listen, SiteCertSource};
use super::raw::RawSite;
use super::validate::{site_certs, Ctx, Mode};
use super::Location;
use crate::proxy_protocol::Version as ProxyVersion;
use crate::tls::names::HostPattern;

// ---------------------------------------------------------------------------------------------
// As written.

/// `[listen] proxy_protocol = { from = [...], required = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyAccept {
    /// Addresses or CIDRs of the load balancers whose headers are believed.
    pub from: Spanned<Vec<Spanned<String>>>,
    /// A connection from `from` without a header is refused (default true).
    pub required: Option<bool>,
}

/// One `[[stream]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: Spanned<String>,
    pub listen: Spanned<Vec<Spanned<String>>>,
    /// Names of the stream's own certificate (as a site's `hosts`).
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    /// Where connections that match no route go.
    pub upstream: Option<Spanned<String>>,
    /// Forward those connections' TLS untouched instead of terminating it.
    pub passthrough: Option<Spanned<bool>>,
    /// `"v1"` or `"v2"`: send a PROXY protocol header to the backend.
    pub proxy_protocol: Option<Spanned<String>>,
    /// ALPN protocols offered when terminating (default: none).
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawStreamRoute>,
}

/// One `[[stream.route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreamRoute {
    pub sni: Option<Spanned<Vec<Spanned<String>>>>,
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    pub upstream: Spanned<String>,
    pub passthrough: Option<Spanned<bool>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Typed.

/// Which peers may put a PROXY protocol header in front of their connections.
#[derive(Debug, Clone)]
pub struct ProxyAccept {
    pub from: Vec<IpNet>,
    /// Refuse a connection from `from` that has no valid header.
    pub required: bool,
}

impl ProxyAccept {
    /// Whether headers from `ip` are believed (IPv4-mapped IPv6 counts as IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|n| n.contains(&ip))
    }
}

/// One stream service.
#[derive(Debug)]
pub struct Stream {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    /// In configuration order; the stream's own `upstream` last, matching everything.
    pub routes: Vec<StreamRoute>,
    /// Certificates of the terminating routes (routes refer to them by index).
    pub certs: Vec<StreamCert>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// A certificate a stream terminates TLS with; obtained and renewed as a site's.
#[derive(Debug)]
pub struct StreamCert {
    /// For logs: `stream "imaps"` or `stream "imaps" route 2`.
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub certs: SiteCertSource,
}

/// Where a route's connections go and how.
#[derive(Debug, Clone)]
pub struct StreamRoute {
    /// SNI names (exact or `*.wildcard`); empty: any name, or none.
    pub sni: Vec<HostPattern>,
    /// ALPN protocols of which the client must offer one; empty: no condition.
    pub alpn: Vec<Vec<u8>>,
    pub upstream: Upstream,
    pub mode: StreamMode,
    pub proxy_protocol: Option<ProxyVersion>,
    /// `file:line` of the route (for logs).
    pub at: String,
}

#[derive(Debug, Clone)]
pub enum StreamMode {
    /// Terminate TLS with `certs[cert]`, offering `alpn`.
    Terminate { cert: usize, alpn: Vec<Vec<u8>> },
    /// Forward the ClientHello and everything after it untouched.
    Passthrough,
}

/// A backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Addr(SocketAddr),
    /// A DNS name, resolved at each connection.
    Host(String, u16),
    Unix(PathBuf),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Addr(a) => write!(f, "{a}"),
            Upstream::Host(h, p) => write!(f, "{h}:{p}"),
            Upstream::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses a backend address: `IP:PORT`, `[IPv6]:PORT`, `host:PORT` or `unix:/path`.
pub fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("{s:?}: a Unix socket path must be absolute"));
        }
        return Ok(Upstream::Unix(path));
    }
    if s.contains("://") {
        return Err(format!(
            "{s:?} is a URL; a stream's backend is a TCP address such as \"127.0.0.1:143\""
        ));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("{s:?} has port 0"));
        }
        return Ok(Upstream::Addr(a));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("{s:?}: {port:?} is not a port (1-65535)")),
    };
    match HostPattern::parse(host) {
        Ok(HostPattern::Exact(h)) => Ok(Upstream::Host(h, port)),
        Ok(_) => Err(format!("{s:?}: {host:?} is not a host name")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

pub(super) fn proxy_accept(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawProxyAccept>>,
) -> Option<ProxyAccept> {
    let raw = raw?;
    let mut from = Vec::new();
    for f in raw.get_ref().from.get_ref() {
        let s = f.get_ref().trim();
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => from.push(n.trunc()),
            Err(_) => {
                let loc = cx.loc(f, "");
                cx.err(
                    loc,
                    format!("listen.proxy_protocol.from: {s:?} is not an IP address or CIDR"),
                    "list your load balancers as addresses or networks, e.g. [\"10.0.0.0/8\", \"192.0.2.10\", \"2001:db8::/32\"]",
                );
            }
        }
    }
    if raw.get_ref().from.get_ref().is_empty() {
        let loc = cx.loc(&raw.get_ref().from, "");
        cx.err(
            loc,
            "listen.proxy_protocol.from is empty: no header would ever be read",
            "list the load balancers' addresses, or remove proxy_protocol",
        );
    }
    Some(ProxyAccept {
        from,
        required: raw.get_ref().required.unwrap_or(true),
    })
}

/// Validates every `[[stream]]`; `listen` is what HTTPS and HTTP listen on (ports may not be
/// shared).
pub(super) fn streams(cx: &mut Ctx<'_>, raw: Vec<RawStream>, listen: &Listen) -> Vec<Stream> {
    let mut names: HashMap<String, Location> = HashMap::new();
    // Every address listened on so far, with what listens there.
    let mut taken: Vec<(SocketAddr, String)> = listen
        .https
        .iter()
        .map(|a| (*a, "listen.https".to_string()))
        .chain(listen.http.iter().map(|a| (*a, "listen.http".to_string())))
        .collect();
    let mut out = Vec::new();
    for rs in raw {
        let name = rs.name.get_ref().clone();
        let loc = cx.loc(&rs.name, "");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            cx.err(
                loc.clone(),
                format!("stream name {name:?} is not valid"),
                "use letters, digits, '-', '_' and '.'",
            );
        }
        if let Some(prev) = names.insert(name.clone(), loc.clone()) {
            cx.err(
                loc,
                format!("duplicate stream name {name:?} (also at {prev})"),
                "give every [[stream]] its own name",
            );
        }
        if let Some(s) = stream(cx, rs, &name, &mut taken) {
            out.push(s);
        }
    }
    out
}

fn errors(cx: &Ctx<'_>) -> usize {
    cx.problems.iter().filter(|p| p.is_error()).count()
}

fn stream(
    cx: &mut Ctx<'_>,
    rs: RawStream,
    name: &str,
    taken: &mut Vec<(SocketAddr, String)>,
) -> Option<Stream> {
    let before = errors(cx);
    let what = format!("stream {name:?}");

    // Listeners: parsed, and no port shared with another listener.
    let mut listen = Vec::new();
    if rs.listen.get_ref().is_empty() {
        let loc = cx.loc(&rs.listen, "");
        cx.err(
            loc,
            format!("{what}: listen is empty"),
            "list the addresses to listen on, e.g. listen = [\"0.0.0.0:993\", \"[::]:993\"]",
        );
    }
    for a in rs.listen.get_ref() {
        let loc = cx.loc(a, "");
        let Ok(addr) = a.get_ref().parse::<SocketAddr>() else {
            cx.err(
                loc,
                format!("{what}: listen {:?} is not an IP:PORT address", a.get_ref()),
                "write addresses like \"0.0.0.0:993\" or \"[::]:993\"",
            );
            continue;
        };
        let clash = taken.iter().find(|(b, _)| overlap(addr, *b)).cloned();
        if let Some((b, other)) = clash {
            cx.err(
                loc,
                format!(
                    "{what}: listen {addr} collides with {other} {b} (port {})",
                    addr.port()
                ),
                "give the stream a port of its own",
            );
            continue;
        }
        taken.push((addr, what.clone()));
        if cx.mode == Mode::Check && addr.port() != 0 {
            probe(cx, addr, loc, &what);
        }
        listen.push(addr);
    }

    let default_pp = proxy_version(cx, rs.proxy_protocol.as_ref(), &what);
    let offered = alpn_list(cx, rs.alpn.as_ref(), &what, "alpn");
    let passthrough = rs.passthrough.as_ref().is_some_and(|p| *p.get_ref());
    let mut certs: Vec<StreamCert> = Vec::new();

    // The stream's own certificate (for its upstream, and routes whose names it covers).
    let has_cert_settings =
        rs.hosts.is_some() || rs.cert.is_some() || rs.key.is_some() || rs.issuer.is_some();
    if passthrough && has_cert_settings {
        let at = rs
            .hosts
            .as_ref()
            .map(|h| cx.loc(h, ""))
            .or(rs.cert.as_ref().map(|c| cx.loc(c, "")))
            .or(rs.issuer.as_ref().map(|c| cx.loc(c, "")))
            .unwrap_or(Location::None);
        cx.err(
            at,
            format!("{what}: passthrough forwards TLS untouched, so hosts, cert, key and issuer have no use"),
            "remove them, or set passthrough = false to terminate TLS here",
        );
    } else if let Some(hosts) = &rs.hosts {
        let hs = host_list(cx, hosts, &what);
        if let Some(source) = cert_source(cx, &what, hosts, &hs, &rs.cert, &rs.key, &rs.issuer) {
            certs.push(StreamCert {
                name: what.clone(),
                hosts: hs,
                certs: source,
            });
        }
    } else if rs.cert.is_some() || rs.key.is_some() || rs.issuer.is_some() {
        let at = rs
            .cert
            .as_ref()
            .or(rs.key.as_ref())
            .or(rs.issuer.as_ref())
            .map(|c| cx.loc(c, ""))
            .unwrap_or(Location::None);
        cx.err(
            at,
            format!("{what}: a certificate needs hosts, the names it is for"),
            "add hosts = [\"mail.example.com\"]",
        );
    }

    let mut routes: Vec<StreamRoute> = Vec::new();
    // (pattern or None, alpn, route number, where) for the overlap check.
    let mut claims: Vec<(Option<HostPattern>, Vec<Vec<u8>>, Location)> = Vec::new();
    for (n, rr) in rs.routes.iter().enumerate() {
        let rname = format!("{what} route {}", n + 1);
        let rloc = cx.loc(&rr.upstream, "");
        let sni = rr
            .sni
            .as_ref()
            .map(|s| host_list(cx, s, &rname))
            .unwrap_or_default();
        let alpn = alpn_list(cx, rr.alpn.as_ref(), &rname, "alpn");
        if sni.is_empty() && alpn.is_empty() {
            let at = rr
                .sni
                .as_ref()
                .map(|s| cx.loc(s, ""))
                .unwrap_or(rloc.clone());
            cx.err(
                at,
                format!("{rname}: matches every connection (no sni, no alpn)"),
                "give it sni = [...] or alpn = [...], or make it the stream's own upstream",
            );
            continue;
        }
        // Overlap: the same pattern (or none) with ALPN conditions that can both hold.
        let patterns: Vec<Option<HostPattern>> = if sni.is_empty() {
            vec![None]
        } else {
            sni.iter().cloned().map(Some).collect()
        };
        for p in patterns {
            let clash = claims.iter().find(|(q, a, _)| {
                *q == p
                    && (a.is_empty() == alpn.is_empty())
                    && (alpn.is_empty() || a.iter().any(|x| alpn.contains(x)))
            });
            if let Some((_, _, at)) = clash {
                let shown = p
                    .as_ref()
                    .map_or("(any name)".to_string(), |p| p.to_string());
                let at = at.clone();
                cx.err(
                    rloc.clone(),
                    format!("{rname}: sni {shown} overlaps the route at {at} (same name, same ALPN condition)"),
                    "list each name once per ALPN condition, or merge the routes",
                );
            } else {
                claims.push((p, alpn.clone(), rloc.clone()));
            }
        }
        let upstream = match parse_upstream(rr.upstream.get_ref()) {
            Ok(u) => u,
            Err(e) => {
                cx.err(
                    rloc.clone(),
                    format!("{rname}: bad upstream {e}"),
                    "use \"IP:PORT\", \"host:PORT\" or \"unix:/path/to.sock\"",
                );
                continue;
            }
        };
        let proxy_protocol = match &rr.proxy_protocol {
            Some(p) => proxy_version(cx, Some(p), &rname),
            None => default_pp,
        };
        let route_passthrough = rr.passthrough.as_ref().is_some_and(|p| *p.get_ref());
        let mode = if route_passthrough {
            if let Some(c) = rr.cert.as_ref().or(rr.key.as_ref()).or(rr.issuer.as_ref()) {
                let at = cx.loc(c, "");
                cx.err(
                    at,
                    format!("{rname}: passthrough forwards TLS untouched, so cert, key and issuer have no use"),
                    "remove them (the backend presents its own certificate), or set passthrough = false",
                );
                continue;
            }
            StreamMode::Passthrough
        } else {
            let own = rr.cert.is_some() || rr.key.is_some() || rr.issuer.is_some();
            // Without settings of its own, the stream's certificate serves the route when it
            // covers the route's names.
            let shared = if own {
                None
            } else {
                certs
                    .first()
                    .filter(|c| c.name == what && sni.iter().all(|p| covered(&c.hosts, p)))
                    .map(|_| 0)
            };
            let cert = match shared {
                Some(i) => i,
                None if sni.is_empty() => {
                    cx.err(
                        rloc.clone(),
                        format!("{rname}: terminates TLS but has no certificate: it has no sni names to get one for, and the stream has no hosts"),
                        "give the stream hosts (and cert/key or an issuer), or the route sni names",
                    );
                    continue;
                }
                None => {
                    let Some(sni_list) = &rr.sni else { continue };
                    let Some(source) =
                        cert_source(cx, &rname, sni_list, &sni, &rr.cert, &rr.key, &rr.issuer)
                    else {
                        continue;
                    };
                    certs.push(StreamCert {
                        name: rname.clone(),
                        hosts: sni.clone(),
                        certs: source,
                    });
                    certs.len() - 1
                }
            };
            let offer = if alpn.is_empty() {
                offered.clone()
            } else {
                alpn.clone()
            };
            StreamMode::Terminate { cert, alpn: offer }
        };
        routes.push(StreamRoute {
            sni,
            alpn,
            upstream,
            mode,
            proxy_protocol,
            at: rloc.to_string(),
        });
    }

    // The stream's own upstream: what no route takes.
    match &rs.upstream {
        Some(u) => {
            let loc = cx.loc(u, "");
            match parse_upstream(u.get_ref()) {
                Ok(upstream) => {
                    let mode = if passthrough {
                        Some(StreamMode::Passthrough)
                    } else if certs.first().is_some_and(|c| c.name == what) {
                        Some(StreamMode::Terminate {
                            cert: 0,
                            alpn: offered.clone(),
                        })
                    } else {
                        if rs.hosts.is_none() {
                            cx.err(
                                loc.clone(),
                                format!("{what}: terminates TLS for its upstream but has no hosts to get a certificate for"),
                                "add hosts = [\"mail.example.com\"] (and cert/key, or let the issuer provide one), or passthrough = true",
                            );
                        }
                        None
                    };
                    if let Some(mode) = mode {
                        routes.push(StreamRoute {
                            sni: Vec::new(),
                            alpn: Vec::new(),
                            upstream,
                            mode,
                            proxy_protocol: default_pp,
                            at: loc.to_string(),
                        });
                    }
                }
                Err(e) => cx.err(
                    loc,
                    format!("{what}: bad upstream {e}"),
                    "use \"IP:PORT\", \"host:PORT\" or \"unix:/path/to.sock\"",
                ),
            }
        }
        None if rs.routes.is_empty() => {
            let loc = cx.loc(&rs.name, "");
            cx.err(
                loc,
                format!("{what} has nowhere to send connections"),
                "set upstream = \"127.0.0.1:143\" or add a [[stream.route]]",
            );
        }
        None => {}
    }

    let connect_timeout = cx.duration(
        &rs.connect_timeout,
        &format!("{what}: connect_timeout"),
        Duration::from_secs(5),
        Duration::from_millis(10),
        Duration::from_secs(300),
    );
    let idle_timeout = cx.duration(
        &rs.idle_timeout,
        &format!("{what}: idle_timeout"),
        Duration::from_secs(600),
        Duration::from_millis(10),
        Duration::from_secs(7 * 86400),
    );
    let max_connections = match &rs.max_connections {
        None => 10_000,
        Some(m) if *m.get_ref() >= 1 => *m.get_ref(),
        Some(m) => {
            let loc = cx.loc(m, "");
            cx.err(
                loc,
                format!("{what}: max_connections must be at least 1"),
                "use e.g. 10000",
            );
            1
        }
    };
    if errors(cx) != before {
        return None;
    }
    Some(Stream {
        name: name.to_string(),
        listen,
        routes,
        certs,
        connect_timeout,
        idle_timeout,
        max_connections,
    })
}

/// `check`: binds the address for a moment, as `serve` will, and reports a port another
/// process holds. A privileged port this user may not bind is a warning (`check` often runs
/// as another user than the service).
fn probe(cx: &mut Ctx<'_>, addr: SocketAddr, loc: Location, what: &str) {
    let Err(e) = crate::server::listener::probe(addr, what) else {
        return;
    };
    let port = addr.port();
    match e.err.kind() {
        std::io::ErrorKind::PermissionDenied => cx.problems.push(
            super::Problem::warning(
                loc,
                format!("{what}: port {port}: permission denied for this user, so check could not test whether it is free"),
            )
            .fix("run check as the user portcullis serves as, or give portcullis the capability: sudo setcap cap_net_bind_service=+ep $(command -v portcullis)"),
        ),
        std::io::ErrorKind::AddrInUse => cx.err(
            loc,
            format!("{what}: port {port} on {} is in use by another process (see: ss -ltnp 'sport = :{port}')", addr.ip()),
            "stop it or give the stream another port",
        ),
        _ => cx.err(
            loc,
            format!("{what}: cannot listen on {addr}: {}", e.err),
            "fix the cause, or give the stream another address",
        ),
    }
}

/// Two listen addresses that cannot both be bound: same port, and the same address or a
/// wildcard of the same family.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Whether a certificate for `hosts` serves the name(s) of `p`.
fn covered(hosts: &[HostPattern], p: &HostPattern) -> bool {
    hosts.iter().any(|h| match (h, p) {
        (a, b) if a == b => true,
        (HostPattern::Wildcard(suffix), HostPattern::Exact(name)) => name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        _ => false,
    })
}

fn host_list(
    cx: &mut Ctx<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
    what: &str,
) -> Vec<HostPattern> {
    let mut out = Vec::new();
    if list.get_ref().is_empty() {
        let loc = cx.loc(list, "");
        cx.err(
            loc,
            format!("{what}: the name list is empty"),
            "list names such as \"mail.example.com\" or \"*.example.com\"",
        );
    }
    for h in list.get_ref() {
        let loc = cx.loc(h, "");
        match HostPattern::parse(h.get_ref()) {
            Ok(HostPattern::Ip(ip)) => cx.err(
                loc,
                format!("{what}: {ip} is an IP address, which clients never send as SNI"),
                "list DNS names or *.patterns",
            ),
            Ok(p) if out.contains(&p) => cx.err(
                loc,
                format!("{what}: {p} is listed twice"),
                "list each name once",
            ),
            Ok(p) => out.push(p),
            Err(e) => cx.err(loc, format!("{what}: bad name: {e}"), "fix the name"),
        }
    }
    out
}

fn alpn_list(
    cx: &mut Ctx<'_>,
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    what: &str,
    key: &str,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
        let v = p.get_ref();
        if v.is_empty() || v.len() > 255 || !v.is_ascii() {
            let loc = cx.loc(p, "");
            cx.err(
                loc,
                format!("{what}: {key} {v:?} is not an ALPN protocol id"),
                "use 1 to 255 ASCII characters, e.g. \"imap\" or \"h2\"",
            );
        } else if !out.contains(&v.as_bytes().to_vec()) {
            out.push(v.as_bytes().to_vec());
        }
    }
    out
}

fn proxy_version(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<String>>,
    what: &str,
) -> Option<ProxyVersion> {
    let raw = raw?;
    let v = ProxyVersion::parse(raw.get_ref());
    if v.is_none() {
        let loc = cx.loc(raw, "");
        cx.err(
            loc,
            format!(
                "{what}: proxy_protocol = {:?} is not a PROXY protocol version",
                raw.get_ref()
            ),
            "use \"v1\" (text) or \"v2\" (binary), as the backend expects",
        );
    }
    v
}

/// A certificate source for `hosts`, checked as a site's (files loaded and matched against the
/// names, issuer chosen); problems are reported under `what`.
fn cert_source(
    cx: &mut Ctx<'_>,
    what: &str,
    hosts_raw: &Spanned<Vec<Spanned<String>>>,
    hosts: &[HostPattern],
    cert: &Option<Spanned<String>>,
    key: &Option<Spanned<String>>,
    issuer: &Option<Spanned<String>>,
) -> Option<SiteCertSource> {
    if hosts.is_empty() {
        return None;
    }
    let as_site = RawSite {
        name: Spanned::new(0..0, what.to_string()),
        hosts: hosts_raw.clone(),
        cert: cert.clone(),
        key: key.clone(),
        issuer: issuer.clone(),
        ..Default::default()
    };
    // The site checks word their messages `site "NAME": ...`; ours name the stream instead.
    let first = cx.problems.len();
    let source = site_certs(cx, &as_site, what, hosts);
    let site_prefix = format!("site {what:?}");
    for p in &mut cx.problems[first..] {
        if let Some(rest) = p.message.strip_prefix(&site_prefix) {
            p.message = format!("{what}{rest}");
        }
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams() {
        assert_eq!(
            parse_upstream("127.0.0.1:143"),
            Ok(Upstream::Addr("127.0.0.1:143".parse().unwrap()))
        );
        assert_eq!(
            parse_upstream("[::1]:143"),
            Ok(Upstream::Addr("[::1]:143".parse().unwrap()))
        );
        assert_eq!(
            parse_upstream("Mail.Example.com:143"),
            Ok(Upstream::Host("mail.example.com".into(), 143))
        );
        assert_eq!(
            parse_upstream("unix:/run/dovecot.sock"),
            Ok(Upstream::Unix("/run/dovecot.sock".into()))
        );
        for bad in [
            "127.0.0.1",
            "mail:0",
            "mail:x",
            "unix:rel.sock",
            "tcp://1.2.3.4:5",
            "*.example.com:1",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage() {
        let hosts = vec![
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::parse("mail.example.net").unwrap(),
        ];
        for (name, want) in [
            ("a.example.com", true),
            ("*.example.com", true),
            ("a.b.example.com", false),
            ("mail.example.net", true),
            ("*.example.net", false),
        ] {
            assert_eq!(
                covered(&hosts, &HostPattern::parse(name).unwrap()),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn trusted_sources() {
        let pa = ProxyAccept {
            from: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            required: true,
        };
        assert!(pa.trusts("10.1.2.3".parse().unwrap()));
        assert!(pa.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(pa.trusts("2001:db8::5".parse().unwrap()));
        assert!(!pa.trusts("11.0.0.1".parse().unwrap()));
    }
}
