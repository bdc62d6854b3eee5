//! Turns a [`RawConfig`] into the typed [`Config`], collecting every problem on the way.
//!
//! Certificates are loaded and checked here, so `portcullis check` reports exactly what
//! `portcullis serve` would refuse or warn about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::model::*;
use super::raw::*;
use super::{Location, Problem, Severity, Source};
use crate::http::static_files::StaticConfig;
use crate::tls::certs::{self, LoadedCert};
use crate::tls::names::HostPattern;
use crate::tls::Profile;

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub https_port: Option<u16>,
    pub http_port: Option<u16>,
    pub https_listen: Vec<SocketAddr>,
    pub http_listen: Vec<SocketAddr>,
    pub no_http: bool,
    pub workers: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
}

/// Why we validate: `check` treats an expired certificate as an error, `serve` warns loudly
/// (a stale certificate beats no site at all while a renewal is on its way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Check,
    Serve,
}

/// The result: a config plus warnings, or every problem found (errors and warnings).
pub type Validated = Result<(Config, Vec<Problem>), Vec<Problem>>;

pub(super) struct Ctx<'a> {
    source: &'a Source,
    base: PathBuf,
    pub(super) problems: Vec<Problem>,
    pub(super) mode: Mode,
    extra_roots: Vec<Vec<u8>>,
    /// `acme.dns_hook` is set: wildcard names can get ACME certificates (DNS-01).
    dns01: bool,
}

impl Ctx<'_> {
    pub(super) fn error_count(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }
    pub(super) fn loc<T>(&self, s: &Spanned<T>, flag: &str) -> Location {
        self.source.locate(s.span(), flag)
    }
    /// Where an optional setting is: its place in the file (or `flag`) when it was given,
    /// otherwise `absent` (the flag or key that would set it).
    pub(super) fn loc_or<T>(&self, s: Option<&Spanned<T>>, flag: &str, absent: &str) -> Location {
        s.map(|s| self.loc(s, flag))
            .unwrap_or_else(|| Location::Flag(absent.into()))
    }
    pub(super) fn err(&mut self, loc: Location, msg: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem::error(loc, msg).fix(fix));
    }
    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                let loc = self.loc(s, "");
                self.err(
                    loc,
                    format!("{key} = {:?} is out of range", s.get_ref()),
                    format!(
                        "use a value between {} and {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                default
            }
            Err(e) => {
                let loc = self.loc(s, "");
                self.err(
                    loc,
                    format!("{key} = {:?} is not a duration: {e}", s.get_ref()),
                    "write durations like \"10s\", \"5m\" or \"12h\"",
                );
                default
            }
        }
    }
}

/// Validates `raw` (read from `source`) with command-line `overrides` applied.
pub fn validate(raw: RawConfig, source: &Source, overrides: &Overrides, mode: Mode) -> Validated {
    let mut cx = Ctx {
        source,
        base: source.base_dir(),
        problems: Vec::new(),
        mode,
        extra_roots: Vec::new(),
        dns01: false,
    };

    let workers = match (overrides.workers, &raw.workers) {
        (Some(n), _) => n,
        (None, Some(w)) => *w.get_ref(),
        (None, None) => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    if workers == 0 || workers > 1024 {
        let loc = cx.loc_or(raw.workers.as_ref(), "--workers", "--workers");
        cx.err(
            loc,
            format!("workers = {workers} is out of range"),
            "use 1 to 1024 (default: the number of CPUs)",
        );
    }

    let data_dir = match (&overrides.data_dir, &raw.data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => cx.path(d.get_ref()),
        (None, None) => crate::storage::default_data_dir(),
    };
    if let Ok(root) = crate::tls::local_ca::LocalCa::open(&data_dir) {
        if let Some(subject) = root.and_then(|ca| ca.root_subject()) {
            cx.extra_roots.push(subject);
        }
    }

    let log_level = overrides
        .log_level
        .clone()
        .or_else(|| raw.log_level.as_ref().map(|l| l.get_ref().clone()))
        .unwrap_or_else(|| "info".into());
    if crate::ops::env_filter(&log_level).is_err() {
        let loc = cx.loc_or(raw.log_level.as_ref(), "--log-level", "--log-level");
        cx.err(
            loc,
            format!("log_level = {log_level:?} is not a valid level or filter"),
            "use error, warn, info, debug or trace",
        );
    }

    let log = super::log::settings(&mut cx, raw.log.as_ref(), raw.access_log.as_ref());
    let listen = listen(&mut cx, &raw.listen, overrides);
    let tls = tls_settings(&mut cx, &raw.tls);
    let http = http_settings(&mut cx, &raw.http);
    let limits = limits(&mut cx, &raw.limits);
    let acme = acme_settings(&mut cx, &raw.acme);
    cx.dns01 = acme.dns_hook.is_some();
    let (sites, default_site) = sites(&mut cx, raw.sites, &raw.tls.default_site);
    let proxy_accept = super::stream::proxy_accept(&mut cx, raw.listen.proxy_protocol.as_ref());
    let streams = super::stream::streams(&mut cx, raw.streams, &listen);
    let admin = super::admin::admin(&mut cx, raw.admin.as_ref(), source);
    let storage = super::storage::storage(&mut cx, raw.storage.as_ref());
    let on_demand = raw
        .on_demand
        .as_ref()
        .and_then(|od| on_demand(&mut cx, od, &sites));
    if let Some(site) = sites.iter().find(|s| s.early_data) {
        if tls.session_cache_size == 0 {
            let loc = cx.loc_or(
                raw.tls.session_cache_size.as_ref(),
                "",
                "tls.session_cache_size",
            );
            cx.err(
                loc,
                format!(
                    "site {:?}: early_data needs the server-side session cache, and tls.session_cache_size = 0 turns it off",
                    site.name
                ),
                "0-RTT is only accepted with single-use sessions kept by the server: set tls.session_cache_size > 0 (default 10000) or remove early_data",
            );
        }
    }

    let errors = cx.problems.iter().any(Problem::is_error);
    if errors {
        return Err(cx.problems);
    }
    let config = Config {
        workers,
        data_dir,
        log_level,
        log,
        listen,
        tls,
        http,
        limits,
        acme,
        on_demand,
        sites,
        default_site,
        streams,
        proxy_accept,
        admin,
        storage,
    };
    Ok((config, cx.problems))
}

fn on_demand(cx: &mut Ctx<'_>, raw: &RawOnDemand, sites: &[Site]) -> Option<OnDemandSettings> {
    let Some(site) = sites.iter().position(|s| s.name == *raw.site.get_ref()) else {
        let loc = cx.loc(&raw.site, "");
        cx.err(
            loc,
            format!(
                "on_demand.site = {:?} is not the name of any site",
                raw.site.get_ref()
            ),
            "use the name of the [[site]] that should serve names approved on demand",
        );
        return None;
    };
    let ask = raw.ask.as_ref().and_then(|a| {
        let url = a.get_ref();
        match url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => Some(url.clone()),
            _ => {
                let loc = cx.loc(a, "");
                cx.err(
                    loc,
                    format!("on_demand.ask = {url:?} is not an http:// URL"),
                    "point it at your approval endpoint, e.g. \"http://127.0.0.1:9000/allowed\" (it is called with ?domain=NAME)",
                );
                None
            }
        }
    });
    let mut allow = Vec::new();
    for p in raw.allow.iter().flat_map(|l| l.get_ref()) {
        match HostPattern::parse(p.get_ref()) {
            Ok(h) if !matches!(h, HostPattern::Ip(_)) => allow.push(h),
            Ok(_) => {
                let loc = cx.loc(p, "");
                cx.err(loc, format!("on_demand.allow: {:?} is an IP address", p.get_ref()), "list DNS names or *.patterns; ACME CAs do not issue for IP addresses on demand");
            }
            Err(e) => {
                let loc = cx.loc(p, "");
                cx.err(
                    loc,
                    format!("on_demand.allow: {e}"),
                    "list DNS names or *.patterns",
                );
            }
        }
    }
    if raw.ask.is_none() && allow.is_empty() {
        let loc = cx.loc(&raw.site, "");
        cx.err(
            loc,
            "on_demand needs ask or allow: without them any name a client sends would be ordered, and a flood of random names would exhaust the CA's rate limits",
            "add ask = \"http://127.0.0.1:PORT/check\" or allow = [\"*.customers.example.com\"]",
        );
    }
    let max_names = raw.max_names.as_ref().map_or(1000, |m| *m.get_ref());
    let orders_per_minute = raw.orders_per_minute.as_ref().map_or(10, |m| *m.get_ref());
    if orders_per_minute == 0 {
        if let Some(m) = &raw.orders_per_minute {
            let loc = cx.loc(m, "");
            cx.err(
                loc,
                "on_demand.orders_per_minute = 0 would never order",
                "use at least 1, or remove [on_demand]",
            );
        }
    }
    let refusal_cache = cx.duration(
        &raw.refusal_cache,
        "on_demand.refusal_cache",
        Duration::from_secs(600),
        Duration::from_secs(1),
        Duration::from_secs(7 * 86400),
    );
    Some(OnDemandSettings {
        site,
        ask,
        allow,
        max_names,
        orders_per_minute,
        refusal_cache,
    })
}

fn parse_addrs(
    cx: &mut Ctx<'_>,
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for a in list.get_ref() {
        match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => out.push(addr),
            Err(_) => {
                let loc = cx.loc(a, "");
                cx.err(
                    loc,
                    format!("listen.{key}: {:?} is not an IP:PORT address", a.get_ref()),
                    "write addresses like \"0.0.0.0:443\", \"127.0.0.1:8443\" or \"[::]:443\"",
                );
            }
        }
    }
    out
}

fn defaults(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([0u16; 8], port)),
    ]
}

fn listen(cx: &mut Ctx<'_>, raw: &RawListen, ov: &Overrides) -> Listen {
    let errors_before = cx.problems.iter().filter(|p| p.is_error()).count();
    let mut ipv6_optional = false;
    let mut https = if !ov.https_listen.is_empty() {
        ov.https_listen.clone()
    } else if let Some(list) = &raw.https {
        parse_addrs(cx, list, "https")
    } else {
        ipv6_optional = true;
        defaults(443)
    };
    let mut http = if ov.no_http {
        Vec::new()
    } else if !ov.http_listen.is_empty() {
        ov.http_listen.clone()
    } else if let Some(list) = &raw.http {
        parse_addrs(cx, list, "http")
    } else if !ov.https_listen.is_empty() && ov.http_port.is_none() {
        // --listen given without any HTTP setting: only what was asked for.
        Vec::new()
    } else {
        ipv6_optional = true;
        defaults(80)
    };
    if let Some(p) = ov.https_port {
        https.iter_mut().for_each(|a| a.set_port(p));
    }
    if let Some(p) = ov.http_port {
        http.iter_mut().for_each(|a| a.set_port(p));
    }
    if https.is_empty() && !cx.problems.iter().any(Problem::is_error) {
        let loc = raw
            .https
            .as_ref()
            .map(|l| cx.loc(l, "--listen"))
            .unwrap_or(Location::None);
        cx.err(
            loc,
            "listen.https is empty: nothing would serve HTTPS",
            "list at least one address, e.g. https = [\"0.0.0.0:443\"]",
        );
    }
    // Two listeners overlap when they share a port and one address covers the other.
    let all: Vec<(SocketAddr, &str)> = https
        .iter()
        .map(|a| (*a, "https"))
        .chain(http.iter().map(|a| (*a, "http")))
        .collect();
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            let ((a, ka), (b, kb)) = (all[i], all[j]);
            if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
                continue;
            }
            if a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified() {
                let loc = cx.loc_or(
                    raw.https.as_ref().or(raw.http.as_ref()),
                    "--listen",
                    "--https-port/--http-port",
                );
                cx.err(
                    loc,
                    format!(
                        "listeners overlap: {ka} {a} and {kb} {b} share port {}",
                        a.port()
                    ),
                    "give each listener its own port, or list the address only once",
                );
            }
        }
    }
    let public_https_port = raw.public_https_port.as_ref().map(|p| *p.get_ref());
    let listen = Listen {
        https,
        http,
        public_https_port,
        ipv6_optional,
    };
    // Addresses that are wrong already (unparsable, overlapping) are not probed.
    let errors = cx.problems.iter().filter(|p| p.is_error()).count();
    if cx.mode == Mode::Check && errors == errors_before {
        probe_listeners(cx, raw, ov, &listen);
    }
    listen
}

/// `check`: binds each listener for a moment, as `serve` will, and reports a port another
/// process holds (one line per address). A privileged port this user may not bind cannot be
/// tested; `check` often runs as another user than the service, so that is one warning for
/// all such ports, not an error.
fn probe_listeners(cx: &mut Ctx<'_>, raw: &RawListen, ov: &Overrides, listen: &Listen) {
    let mut denied: Vec<String> = Vec::new();
    let mut denied_at = None;
    for (addrs, what) in [(&listen.https, "https"), (&listen.http, "http")] {
        for &addr in addrs {
            if addr.port() == 0 {
                continue;
            }
            let Err(e) = crate::server::listener::probe(addr, what) else {
                continue;
            };
            if listen.ipv6_optional && e.is_no_ipv6() {
                // `serve` skips default IPv6 listeners on hosts without IPv6, with a note.
                continue;
            }
            let (loc, setting) = listen_source(cx, raw, ov, addr, what);
            let (ip, port) = (addr.ip(), addr.port());
            match e.err.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    let p = format!("{port} ({what})");
                    if !denied.contains(&p) {
                        denied.push(p);
                    }
                    denied_at.get_or_insert(loc);
                }
                std::io::ErrorKind::AddrInUse => cx.err(
                    loc,
                    format!("port {port} ({what}) on {ip} is in use by another process (see: ss -ltnp 'sport = :{port}')"),
                    format!("stop it or choose another port with {setting}"),
                ),
                std::io::ErrorKind::AddrNotAvailable => cx.err(
                    loc,
                    format!("cannot listen on {addr} ({what}): this machine has no such address"),
                    format!("use one of its addresses, or 0.0.0.0 / [::], in {setting}"),
                ),
                _ => cx.err(
                    loc,
                    format!("cannot listen on {addr} ({what}): {}", e.err),
                    format!("fix the cause, or choose another address with {setting}"),
                ),
            }
        }
    }
    if let Some(loc) = denied_at {
        let s = if denied.len() > 1 { "s" } else { "" };
        cx.problems.push(
            Problem::warning(
                loc,
                format!(
                    "port{s} {}: permission denied for this user, so check could not test whether {} free; ports below 1024 need root or the CAP_NET_BIND_SERVICE capability",
                    denied.join(", "),
                    if denied.len() > 1 { "they are" } else { "it is" }
                ),
            )
            .fix("run check as the user portcullis serves as, or give portcullis the capability: sudo setcap cap_net_bind_service=+ep $(command -v portcullis)"),
        );
    }
}

/// Where a listener address was set (its line, or the flag), and the setting that changes it.
fn listen_source(
    cx: &Ctx<'_>,
    raw: &RawListen,
    ov: &Overrides,
    addr: SocketAddr,
    what: &str,
) -> (Location, String) {
    let (list, from_flag, port_flag, list_flag) = if what == "https" {
        (
            raw.https.as_ref(),
            !ov.https_listen.is_empty(),
            ov.https_port.is_some(),
            "--listen",
        )
    } else {
        (
            raw.http.as_ref(),
            !ov.http_listen.is_empty(),
            ov.http_port.is_some(),
            "--http-listen",
        )
    };
    let port_name = format!("--{what}-port");
    if port_flag {
        return (Location::Flag(port_name.clone()), port_name);
    }
    if from_flag {
        return (Location::Flag(list_flag.into()), list_flag.into());
    }
    let key = format!("listen.{what}");
    match list {
        Some(list) => {
            let entry = list
                .get_ref()
                .iter()
                .find(|a| a.get_ref().parse::<SocketAddr>() == Ok(addr));
            let loc = match entry {
                Some(e) => cx.loc(e, ""),
                None => cx.loc(list, ""),
            };
            (loc, key)
        }
        // The default listeners: the file (or the command line) as a whole.
        None => (
            cx.source.locate(0..0, &port_name),
            format!("{key} (or {port_name})"),
        ),
    }
}

fn acme_settings(cx: &mut Ctx<'_>, raw: &RawAcme) -> AcmeSettings {
    let mut directory_of = |c: &Spanned<String>, key: &str| match c.get_ref().as_str() {
        "production" => LETS_ENCRYPT.to_string(),
        "staging" => LETS_ENCRYPT_STAGING.to_string(),
        url if url.starts_with("https://") => url.to_string(),
        other => {
            let loc = cx.loc(c, "");
            cx.err(loc, format!("acme.{key} = {other:?} is neither \"production\", \"staging\" nor an https:// directory URL"), "use \"production\", \"staging\" or the CA's directory URL");
            LETS_ENCRYPT.to_string()
        }
    };
    let directory = raw
        .ca
        .as_ref()
        .map(|c| directory_of(c, "ca"))
        .unwrap_or_else(|| LETS_ENCRYPT.to_string());
    let fallback: Vec<String> = raw
        .fallback
        .iter()
        .flatten()
        .map(|c| directory_of(c, "fallback"))
        .collect();
    let mut contact = Vec::new();
    if let Some(e) = &raw.email {
        let mail = e.get_ref();
        if mail.contains('@') && !mail.contains([' ', ',', ':']) {
            contact.push(format!("mailto:{mail}"));
        } else {
            let loc = cx.loc(e, "");
            cx.err(
                loc,
                format!("acme.email = {mail:?} is not an e-mail address"),
                "write a plain address such as \"admin@example.com\"",
            );
        }
    }
    let ca_root = raw.ca_root.as_ref().map(|r| {
        let p = cx.path(r.get_ref());
        if !p.is_file() {
            let loc = cx.loc(r, "");
            cx.err(
                loc,
                format!("acme.ca_root {} is not a readable file", p.display()),
                "point it at the PEM root certificate of your CA's HTTPS endpoint",
            );
        }
        p
    });
    let key_type = match &raw.key_type {
        None => AcmeKeyType::EcdsaP256,
        Some(k) => AcmeKeyType::parse(k.get_ref()).unwrap_or_else(|| {
            let loc = cx.loc(k, "");
            cx.err(
                loc,
                format!("acme.key_type = {:?} is unknown", k.get_ref()),
                "use \"ecdsa-p256\" (default), \"ecdsa-p384\", \"rsa2048\" or \"rsa4096\"",
            );
            AcmeKeyType::EcdsaP256
        }),
    };
    let eab = match (&raw.eab_kid, &raw.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            use base64::Engine;
            let k = key.get_ref().trim_end_matches('=');
            match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k) {
                Ok(bytes) if !bytes.is_empty() => Some((kid.get_ref().clone(), bytes)),
                _ => {
                    let loc = cx.loc(key, "");
                    cx.err(
                        loc,
                        "acme.eab_hmac_key is not base64url",
                        "paste the HMAC key exactly as your CA shows it",
                    );
                    None
                }
            }
        }
        (Some(s), None) | (None, Some(s)) => {
            let loc = cx.loc(s, "");
            cx.err(
                loc,
                "acme.eab_kid and acme.eab_hmac_key go together",
                "set both (your CA's EAB key id and HMAC key) or neither",
            );
            None
        }
    };
    let profile = raw
        .profile
        .as_ref()
        .and_then(|p| profile_name(cx, p, "acme.profile"));
    let dns_hook = raw.dns_hook.as_ref().and_then(|h| {
        let command = cx.path(h.get_ref());
        use std::os::unix::fs::PermissionsExt;
        let problem = match std::fs::metadata(&command) {
            Err(e) => Some(format!("cannot use acme.dns_hook {}: {e}", command.display())),
            Ok(m) if !m.is_file() => Some(format!("acme.dns_hook {} is not a file", command.display())),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                Some(format!("acme.dns_hook {} is not executable", command.display()))
            }
            Ok(_) => None,
        };
        if let Some(msg) = problem {
            let loc = cx.loc(h, "");
            cx.err(loc, msg, "point it at an executable that takes `present|cleanup NAME VALUE` and sets/removes the TXT record _acme-challenge.NAME (chmod +x)");
            return None;
        }
        Some(command)
    });
    let timeout = cx.duration(
        &raw.dns_hook_timeout,
        "acme.dns_hook_timeout",
        crate::acme::dns::HOOK_TIMEOUT,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let propagation = cx.duration(
        &raw.dns_propagation,
        "acme.dns_propagation",
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    AcmeSettings {
        directory,
        fallback,
        eab,
        contact,
        ca_root,
        key_type,
        profile,
        dns_hook: dns_hook.map(|command| DnsHookSettings {
            command,
            propagation,
            timeout,
        }),
    }
}

/// An ACME profile name (`key` names the setting in the error): a short token.
fn profile_name(cx: &mut Ctx<'_>, p: &Spanned<String>, key: &str) -> Option<String> {
    let name = p.get_ref();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        let loc = cx.loc(p, "");
        cx.err(
            loc,
            format!("{key} = {name:?} is not a profile name"),
            "use a name the CA lists in its directory's meta.profiles, e.g. \"classic\" or \"shortlived\"",
        );
    }
    ok.then(|| name.clone())
}

fn tls_settings(cx: &mut Ctx<'_>, raw: &RawTls) -> TlsSettings {
    let profile = match &raw.profile {
        None => Profile::Intermediate,
        Some(p) => Profile::parse(p.get_ref()).unwrap_or_else(|| {
            let loc = cx.loc(p, "");
            cx.err(
                loc,
                format!("tls.profile = {:?} is unknown", p.get_ref()),
                "use \"intermediate\" (TLS 1.2 + 1.3) or \"modern\" (TLS 1.3 only)",
            );
            Profile::Intermediate
        }),
    };
    let unknown_sni = match raw.unknown_sni.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "default")) => UnknownSni::DefaultSite,
        Some((_, "reject")) => UnknownSni::Reject,
        Some((s, other)) => {
            let loc = cx.loc(s, "");
            cx.err(
                loc,
                format!("tls.unknown_sni = {other:?} is unknown"),
                "use \"default\" (serve the default site) or \"reject\" (unrecognized_name alert)",
            );
            UnknownSni::DefaultSite
        }
    };
    let rotation = cx.duration(
        &raw.ticket_key_rotation,
        "tls.ticket_key_rotation",
        Duration::from_secs(12 * 3600),
        Duration::from_secs(60),
        Duration::from_secs(7 * 86400),
    );
    let session_cache_size = raw
        .session_cache_size
        .as_ref()
        .map(|s| *s.get_ref())
        .unwrap_or(10_000);
    TlsSettings {
        profile,
        unknown_sni,
        session_tickets: raw.session_tickets.unwrap_or(true),
        ticket_rotation: rotation,
        session_cache_size,
        prefer_server_order: raw.prefer_server_cipher_order.unwrap_or(true),
        ocsp_stapling: raw.ocsp_stapling.unwrap_or(true),
    }
}

fn http_settings(cx: &mut Ctx<'_>, raw: &RawHttp) -> HttpSettings {
    let redirect = match raw.redirect.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "permanent")) => RedirectKind::Permanent,
        Some((_, "temporary")) => RedirectKind::Temporary,
        Some((s, other)) => {
            let loc = cx.loc(s, "");
            cx.err(
                loc,
                format!("http.redirect = {other:?} is unknown"),
                "use \"permanent\" (301/308) or \"temporary\" (302/307)",
            );
            RedirectKind::Permanent
        }
    };
    let h3_retry = match raw.h3_retry.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "under_load")) => H3Retry::UnderLoad,
        Some((_, "always")) => H3Retry::Always,
        Some((s, other)) => {
            let loc = cx.loc(s, "");
            cx.err(
                loc,
                format!("http.h3_retry = {other:?} is unknown"),
                "use \"under_load\" (Retry above h3_retry_threshold handshakes in progress) or \"always\"",
            );
            H3Retry::UnderLoad
        }
    };
    let h3_shared_endpoint = match raw.h3_endpoints.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "per_worker")) => false,
        Some((_, "shared")) => true,
        Some((s, other)) => {
            let loc = cx.loc(s, "");
            cx.err(
                loc,
                format!("http.h3_endpoints = {other:?} is unknown"),
                "use \"per_worker\" (one QUIC endpoint per worker) or \"shared\" (one for the process; clients may migrate)",
            );
            false
        }
    };
    let mut ranged =
        |v: &Option<Spanned<u32>>, key: &str, default: u32, min: u32, max: u32| -> u32 {
            match v {
                None => default,
                Some(s) if (min..=max).contains(s.get_ref()) => *s.get_ref(),
                Some(s) => {
                    let loc = cx.loc(s, "");
                    cx.err(
                        loc,
                        format!("http.{key} = {} is out of range", s.get_ref()),
                        format!("use {min} to {max}"),
                    );
                    default
                }
            }
        };
    HttpSettings {
        http3: raw.http3.unwrap_or(true),
        h3_shared_endpoint,
        h3_retry,
        h3_max_concurrent_streams: ranged(
            &raw.h3_max_concurrent_streams,
            "h3_max_concurrent_streams",
            100,
            1,
            10_000,
        ),
        h3_retry_threshold: ranged(
            &raw.h3_retry_threshold,
            "h3_retry_threshold",
            256,
            0,
            1_000_000,
        ) as usize,
        http2: raw.http2.unwrap_or(true),
        redirect,
        h2_max_concurrent_streams: ranged(
            &raw.h2_max_concurrent_streams,
            "h2_max_concurrent_streams",
            128,
            1,
            10_000,
        ),
        h2_stream_window: ranged(
            &raw.h2_stream_window,
            "h2_stream_window",
            256 * 1024,
            65_535,
            (1 << 31) - 1,
        ),
        h2_connection_window: ranged(
            &raw.h2_connection_window,
            "h2_connection_window",
            1024 * 1024,
            65_535,
            (1 << 31) - 1,
        ),
    }
}

fn limits(cx: &mut Ctx<'_>, raw: &RawLimits) -> Limits {
    let d = Limits::default();
    let s = Duration::from_secs;
    let mut l = Limits {
        handshake_timeout: cx.duration(
            &raw.handshake_timeout,
            "limits.handshake_timeout",
            d.handshake_timeout,
            Duration::from_millis(100),
            s(300),
        ),
        header_timeout: cx.duration(
            &raw.header_timeout,
            "limits.header_timeout",
            d.header_timeout,
            Duration::from_millis(100),
            s(300),
        ),
        idle_timeout: cx.duration(
            &raw.idle_timeout,
            "limits.idle_timeout",
            d.idle_timeout,
            Duration::from_millis(100),
            s(3600),
        ),
        send_timeout: cx.duration(
            &raw.send_timeout,
            "limits.send_timeout",
            d.send_timeout,
            Duration::from_millis(100),
            s(3600),
        ),
        shutdown_timeout: cx.duration(
            &raw.shutdown_timeout,
            "limits.shutdown_timeout",
            d.shutdown_timeout,
            Duration::ZERO,
            s(3600),
        ),
        ..d
    };
    l.per_client = super::limits::per_client(cx, raw.per_client.as_ref());
    if let Some(v) = &raw.max_header_bytes {
        if (1024..=1024 * 1024).contains(v.get_ref()) {
            l.max_header_bytes = *v.get_ref();
        } else {
            let loc = cx.loc(v, "");
            cx.err(
                loc,
                format!("limits.max_header_bytes = {} is out of range", v.get_ref()),
                "use 1024 to 1048576 (default 16384)",
            );
        }
    }
    if let Some(v) = &raw.max_body_bytes {
        l.max_body_bytes = *v.get_ref();
    }
    l.body_pace = super::slow::body_pace(cx, &raw.body_timeout, &raw.min_body_rate);
    if let Some(v) = &raw.max_connections {
        if *v.get_ref() >= 1 {
            l.max_connections = *v.get_ref();
        } else {
            let loc = cx.loc(v, "");
            cx.err(
                loc,
                "limits.max_connections must be at least 1",
                "use e.g. 10000",
            );
        }
    }
    l
}

fn sites(
    cx: &mut Ctx<'_>,
    raw: Vec<RawSite>,
    default_site: &Option<Spanned<String>>,
) -> (Vec<Site>, usize) {
    if raw.is_empty() {
        cx.err(
            Location::None,
            "no [[site]] is configured",
            "add a [[site]] with name, hosts and cert/key or root (see portcullis.example.toml)",
        );
        return (Vec::new(), 0);
    }
    let mut names: HashMap<String, Location> = HashMap::new();
    let mut hosts_seen: HashMap<HostPattern, (String, Location)> = HashMap::new();
    let mut out = Vec::new();
    for rs in raw {
        let name = rs.name.get_ref().clone();
        let name_loc = cx.loc(&rs.name, "");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            cx.err(
                name_loc.clone(),
                format!("site name {name:?} is not valid"),
                "use letters, digits, '-', '_' and '.'",
            );
        }
        if let Some(prev) = names.insert(name.clone(), name_loc.clone()) {
            cx.err(
                name_loc.clone(),
                format!("duplicate site name {name:?} (also at {prev})"),
                "give every [[site]] its own name",
            );
        }
        if let Some(site) = site(cx, rs, &name, &mut hosts_seen) {
            out.push(site);
        }
    }
    let default = match default_site {
        None => 0,
        Some(d) => out
            .iter()
            .position(|s| s.name == *d.get_ref())
            .unwrap_or_else(|| {
                let loc = cx.loc(d, "");
                cx.err(
                    loc,
                    format!(
                        "tls.default_site = {:?} is not the name of any site",
                        d.get_ref()
                    ),
                    "use the name of one of the [[site]] entries",
                );
                0
            }),
    };
    (out, default)
}

fn site(
    cx: &mut Ctx<'_>,
    rs: RawSite,
    name: &str,
    seen: &mut HashMap<HostPattern, (String, Location)>,
) -> Option<Site> {
    let before = cx.problems.iter().filter(|p| p.is_error()).count();
    let mut hosts = Vec::new();
    if rs.hosts.get_ref().is_empty() {
        let loc = cx.loc(&rs.hosts, "--domain");
        cx.err(loc, format!("site {name:?}: hosts is empty"), "list the names this site answers for, e.g. hosts = [\"example.com\", \"www.example.com\"]");
    }
    for h in rs.hosts.get_ref() {
        let loc = cx.loc(h, "--domain");
        match HostPattern::parse(h.get_ref()) {
            Ok(p) => {
                if let Some((other, at)) = seen.get(&p) {
                    cx.err(
                        loc.clone(),
                        format!(
                            "site {name:?}: host {p} is already claimed by site {other:?} ({at})"
                        ),
                        "each host name may belong to one site only",
                    );
                } else {
                    seen.insert(p.clone(), (name.to_string(), loc));
                }
                if !hosts.contains(&p) {
                    hosts.push(p);
                }
            }
            Err(e) => cx.err(
                loc,
                format!("site {name:?}: bad host: {e}"),
                "fix the host name",
            ),
        }
    }

    let certs = site_certs(cx, &rs, name, &hosts);
    let ocsp_staples = ocsp_staples(cx, &rs, name, certs.as_ref());
    let acme_profile = rs.profile.as_ref().and_then(|p| {
        if !matches!(certs, Some(SiteCertSource::Acme)) {
            let loc = cx.loc(p, "");
            cx.err(
                loc,
                format!("site {name:?}: profile only applies to certificates from the ACME CA"),
                "remove profile, or let the site get its certificate from ACME (no cert/key, issuer = \"acme\" or public names)",
            );
            return None;
        }
        profile_name(cx, p, &format!("site {name:?}: profile"))
    });
    let hsts = super::hsts::policy(cx, &rs, name, &hosts);
    let headers = headers(cx, &rs, name, &hsts);
    let early_data = rs.early_data.unwrap_or(false);
    let http3 = rs.http3.unwrap_or(true);
    let require_post_quantum = rs.require_post_quantum.unwrap_or(false);
    let (access, client_auth) = super::access::site(cx, &rs, name);
    let access_log = super::log::site(cx, rs.access_log.as_ref(), name);
    let routes = routes(cx, rs.routes, rs.root, name);

    let after = cx.problems.iter().filter(|p| p.is_error()).count();
    if after != before {
        return None;
    }
    Some(Site {
        name: name.to_string(),
        hosts,
        certs: certs?,
        ocsp_staples,
        acme_profile,
        headers,
        hsts_ramp: match hsts {
            super::hsts::HstsPolicy::Ramp(r) => Some(r),
            _ => None,
        },
        early_data,
        http3,
        require_post_quantum,
        access,
        client_auth,
        routes,
        access_log,
    })
}

pub(super) fn site_certs(
    cx: &mut Ctx<'_>,
    rs: &RawSite,
    name: &str,
    hosts: &[HostPattern],
) -> Option<SiteCertSource> {
    let mut pairs: Vec<(&Spanned<String>, &Spanned<String>)> = Vec::new();
    match (&rs.cert, &rs.key) {
        (Some(c), Some(k)) => pairs.push((c, k)),
        (Some(c), None) => {
            let loc = cx.loc(c, "--cert");
            cx.err(
                loc,
                format!("site {name:?}: cert is set but key is not"),
                "add key = \"path/to/key.pem\" (or --key)",
            );
            return None;
        }
        (None, Some(k)) => {
            let loc = cx.loc(k, "--key");
            cx.err(
                loc,
                format!("site {name:?}: key is set but cert is not"),
                "add cert = \"path/to/fullchain.pem\" (or --cert)",
            );
            return None;
        }
        (None, None) => {}
    }
    pairs.extend(rs.certs.iter().map(|p| (&p.cert, &p.key)));
    if pairs.is_empty() {
        let issuer = rs
            .issuer
            .as_ref()
            .map(|i| i.get_ref().as_str())
            .unwrap_or("auto");
        let all_local = hosts.iter().all(HostPattern::is_local);
        let acme = match issuer {
            "auto" => !all_local,
            "acme" => true,
            "local" => false,
            other => {
                let loc = rs
                    .issuer
                    .as_ref()
                    .map(|i| cx.loc(i, ""))
                    .unwrap_or(Location::None);
                cx.err(
                    loc,
                    format!("site {name:?}: issuer = {other:?} is unknown"),
                    "use \"auto\", \"acme\" or \"local\"",
                );
                return None;
            }
        };
        if !acme {
            return Some(SiteCertSource::LocalCa);
        }
        let ips: Vec<String> = hosts
            .iter()
            .filter(|h| matches!(h, HostPattern::Ip(_)))
            .map(|h| h.to_string())
            .collect();
        if !ips.is_empty() {
            let loc = cx.loc(&rs.hosts, "--domain");
            cx.err(
                loc,
                format!("site {name:?}: {} cannot get an ACME certificate here (IP addresses are not supported by most CAs)", ips.join(", ")),
                "give the site cert/key files, or issuer = \"local\" for internal use",
            );
            return None;
        }
        let wildcards: Vec<String> = hosts
            .iter()
            .filter(|h| matches!(h, HostPattern::Wildcard(_)))
            .map(|h| h.to_string())
            .collect();
        if !wildcards.is_empty() && !cx.dns01 {
            let loc = cx.loc(&rs.hosts, "--domain");
            cx.err(
                loc,
                format!("site {name:?}: {} needs a DNS-01 challenge, and acme.dns_hook is not set", wildcards.join(", ")),
                "set acme.dns_hook to a command that manages _acme-challenge TXT records, or give the site cert/key files",
            );
            return None;
        }
        return Some(SiteCertSource::Acme);
    }
    let now = certs::unix_now();
    let mut loaded: Vec<LoadedCert> = Vec::new();
    for (c, k) in pairs {
        let loc = cx.loc(c, "--cert");
        let (cp, kp) = (cx.path(c.get_ref()), cx.path(k.get_ref()));
        match certs::load_pair(&cp, &kp, now, &cx.extra_roots) {
            Err(f) => cx.err(loc, format!("site {name:?}: {}", f.message), f.fix),
            Ok((lc, findings)) => {
                if let Some((wrong, fix)) = certs::key_file_exposure(&kp) {
                    let kloc = cx.loc(k, "--key");
                    cx.problems
                        .push(Problem::warning(kloc, format!("site {name:?}: {wrong}")).fix(fix));
                }
                for f in findings {
                    let expiry =
                        f.message.contains("expired") || f.message.contains("not valid before");
                    let severity = if expiry && cx.mode == Mode::Serve {
                        Severity::Warning
                    } else {
                        f.severity
                    };
                    let msg = if expiry && cx.mode == Mode::Serve {
                        format!(
                            "site {name:?}: {} — SERVING IT ANYWAY, clients will refuse it",
                            f.message
                        )
                    } else {
                        format!("site {name:?}: {}", f.message)
                    };
                    cx.problems.push(Problem {
                        severity,
                        location: loc.clone(),
                        message: msg,
                        fix: Some(f.fix),
                    });
                }
                let missing: Vec<String> = hosts
                    .iter()
                    .filter(|h| !certs::covers(&lc.info, h))
                    .map(|h| h.to_string())
                    .collect();
                if !missing.is_empty() {
                    let sans: Vec<String> = lc
                        .info
                        .dns_names
                        .iter()
                        .cloned()
                        .chain(lc.info.ips.iter().map(|i| i.to_string()))
                        .collect();
                    cx.err(
                        loc,
                        format!(
                            "site {name:?}: {} does not cover {} (its names: {})",
                            cp.display(),
                            missing.join(", "),
                            if sans.is_empty() {
                                "none".to_string()
                            } else {
                                sans.join(", ")
                            }
                        ),
                        "get a certificate that includes these names, or remove them from hosts",
                    );
                }
                loaded.push(lc);
            }
        }
    }
    Some(SiteCertSource::Files(loaded))
}

/// OCSP staple files. A `certs` entry's own `ocsp_staple` must be for that entry's
/// certificate. The site's `ocsp_staple` is for whichever of the site's chains without a file
/// of their own it is about (with one chain: that chain); the chains it is not about are left
/// to fetching. A file for none of them is an error naming the file and the certificates.
fn ocsp_staples(
    cx: &mut Ctx<'_>,
    rs: &RawSite,
    name: &str,
    certs: Option<&SiteCertSource>,
) -> Vec<OcspStapleFile> {
    let Some(SiteCertSource::Files(chains)) = certs else {
        if let (Some(_), Some(raw)) = (certs, &rs.ocsp_staple) {
            let loc = cx.loc(raw, "");
            cx.err(
                loc,
                format!("site {name:?}: ocsp_staple needs cert/key files"),
                "automatic certificates get their OCSP responses fetched; remove ocsp_staple",
            );
        }
        return Vec::new();
    };
    // Each chain's own file, in the order the chains were listed: `cert`/`key` first.
    let own: Vec<Option<&Spanned<String>>> = rs
        .cert
        .iter()
        .map(|_| None)
        .chain(rs.certs.iter().map(|p| p.ocsp_staple.as_ref()))
        .collect();
    if own.len() != chains.len() {
        // A pair did not load; that is reported already.
        return Vec::new();
    }
    let mut out = Vec::new();
    for (lc, raw) in chains.iter().zip(&own) {
        let Some(raw) = raw else { continue };
        let loc = cx.loc(raw, "");
        let path = cx.path(raw.get_ref());
        let Some(der) = read_staple(cx, &loc, name, &path) else {
            continue;
        };
        if let Some(leaf) = staple_verifies(cx, &loc, name, &path, &der, lc) {
            out.push(OcspStapleFile { leaf, path });
        }
    }
    let Some(raw) = &rs.ocsp_staple else {
        return out;
    };
    let loc = cx.loc(raw, "");
    let path = cx.path(raw.get_ref());
    let Some(der) = read_staple(cx, &loc, name, &path) else {
        return out;
    };
    let free: Vec<&LoadedCert> = chains
        .iter()
        .zip(&own)
        .filter(|(_, own)| own.is_none())
        .map(|(lc, _)| lc)
        .collect();
    let about = |lc: &LoadedCert| -> Result<bool, crate::tls::ocsp::OcspError> {
        match (lc.certified.cert.first(), lc.certified.cert.get(1)) {
            (Some(leaf), Some(issuer)) => crate::tls::ocsp::is_for(&der, leaf, issuer),
            _ => Ok(false),
        }
    };
    let mut targets = Vec::new();
    let mut unreadable = None;
    for lc in &free {
        match about(lc) {
            Ok(true) => targets.push(*lc),
            Ok(false) => {}
            Err(e) => {
                unreadable.get_or_insert(e);
            }
        }
    }
    if targets.is_empty() {
        let taken = chains
            .iter()
            .zip(&own)
            .find(|(lc, own)| own.is_some() && about(lc).unwrap_or(false));
        if let Some((lc, _)) = taken {
            cx.err(
                loc,
                format!(
                    "site {name:?}: ocsp_staple {} is for {}, which has its own ocsp_staple in certs",
                    path.display(),
                    lc.info.cert_path.display()
                ),
                "remove one of the two",
            );
            return out;
        }
    }
    if targets.is_empty() && free.len() == 1 {
        // One candidate: the checks below say what is wrong with the file for it.
        targets = free.clone();
    }
    if targets.is_empty() {
        let (message, fix) = if let Some(e) = unreadable {
            (
                format!("site {name:?}: ocsp_staple {} cannot be stapled: {e}", path.display()),
                "write a current DER response for one of the site's certificates there (e.g. openssl ocsp -respout)",
            )
        } else if free.is_empty() {
            (
                format!("site {name:?}: ocsp_staple {} has no certificate left to staple: every entry of certs has its own ocsp_staple", path.display()),
                "remove the site's ocsp_staple",
            )
        } else {
            let certs: Vec<String> = free
                .iter()
                .map(|lc| lc.info.cert_path.display().to_string())
                .collect();
            (
                format!(
                    "site {name:?}: ocsp_staple {} is for none of the site's certificates ({})",
                    path.display(),
                    certs.join(", ")
                ),
                "write the DER OCSP response of one of them there (e.g. openssl ocsp -respout), or give each entry of certs its own ocsp_staple",
            )
        };
        cx.err(loc, message, fix);
        return out;
    }
    for lc in targets {
        if let Some(leaf) = staple_verifies(cx, &loc, name, &path, &der, lc) {
            out.push(OcspStapleFile {
                leaf,
                path: path.clone(),
            });
        }
    }
    out
}

fn read_staple(cx: &mut Ctx<'_>, loc: &Location, name: &str, path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(
                loc.clone(),
                format!(
                    "site {name:?}: cannot read ocsp_staple {}: {e}",
                    path.display()
                ),
                "fix the path, or remove ocsp_staple to fetch responses from the CA",
            );
            None
        }
    }
}

/// Checks the staple file `der` against the chain `lc`: the leaf (DER) to staple it on when it
/// verifies and says good, or (serving) has merely expired, which is a warning; otherwise an
/// error and `None`.
fn staple_verifies(
    cx: &mut Ctx<'_>,
    loc: &Location,
    name: &str,
    path: &Path,
    der: &[u8],
    lc: &LoadedCert,
) -> Option<Vec<u8>> {
    let cert = lc.info.cert_path.display();
    let (Some(leaf), Some(issuer)) = (lc.certified.cert.first(), lc.certified.cert.get(1)) else {
        cx.err(
            loc.clone(),
            format!(
                "site {name:?}: ocsp_staple {} cannot be checked: {cert} has no issuer certificate after the leaf",
                path.display()
            ),
            "append the intermediate certificate to the cert file",
        );
        return None;
    };
    let why = match crate::tls::ocsp::verify(der, leaf, issuer, certs::unix_now()) {
        Ok(v) if v.state == crate::tls::ocsp::CertState::Good => {
            return Some(leaf.as_ref().to_vec())
        }
        Ok(v) => {
            cx.err(
                loc.clone(),
                format!(
                    "site {name:?}: ocsp_staple {} says {cert} is {:?}",
                    path.display(),
                    v.state
                ),
                "replace the certificate; a revoked one must not be served",
            );
            return None;
        }
        Err(e) => e.to_string(),
    };
    let expired = why.contains("expired");
    let severity = if expired && cx.mode == Mode::Serve {
        Severity::Warning
    } else {
        Severity::Error
    };
    cx.problems.push(Problem {
        severity,
        location: loc.clone(),
        message: format!(
            "site {name:?}: ocsp_staple {} cannot be stapled on {cert}: {why}",
            path.display()
        ),
        fix: Some(format!(
            "write a current DER response for {cert} there (e.g. openssl ocsp -respout)"
        )),
    });
    (severity == Severity::Warning).then(|| leaf.as_ref().to_vec())
}

fn header_value(cx: &mut Ctx<'_>, v: &Spanned<String>, what: &str) -> Option<HeaderValue> {
    match HeaderValue::from_str(v.get_ref()) {
        Ok(h) => Some(h),
        Err(_) => {
            let loc = cx.loc(v, "");
            cx.err(
                loc,
                format!(
                    "{what}: value {:?} is not a valid header value",
                    v.get_ref()
                ),
                "use visible ASCII without line breaks",
            );
            None
        }
    }
}

fn headers(
    cx: &mut Ctx<'_>,
    rs: &RawSite,
    name: &str,
    hsts: &super::hsts::HstsPolicy,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
    if let super::hsts::HstsPolicy::Fixed(v) = hsts {
        out.push((http::header::STRICT_TRANSPORT_SECURITY, v.clone()));
    }
    out.push((
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ));
    out.push((
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    ));
    out.push((
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    ));
    if rs.csp_upgrade_insecure_requests.unwrap_or(false) {
        out.push((
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("upgrade-insecure-requests"),
        ));
    }
    for (k, v) in &rs.headers {
        let Ok(hn) = HeaderName::from_bytes(k.as_bytes()) else {
            let loc = cx.loc(v, "");
            cx.err(
                loc,
                format!("site {name:?}: {k:?} is not a valid header name"),
                "use letters, digits and '-'",
            );
            continue;
        };
        if hn == http::header::CONTENT_LENGTH || hn == http::header::TRANSFER_ENCODING {
            // Added to every response, these would misframe its body: HTTP/1.1 sends what
            // follows as the next response, HTTP/2 clients reset the stream.
            let loc = cx.loc(v, "");
            cx.err(
                loc,
                format!(
                    "site {name:?}: header {hn} frames the message, which the server does for each response"
                ),
                "remove it from headers",
            );
            continue;
        }
        if let Some(hv) = header_value(cx, v, &format!("site {name:?}: header {k}")) {
            out.retain(|(n, _)| *n != hn);
            out.push((hn, hv));
        }
    }
    for r in &rs.remove_headers {
        match HeaderName::from_bytes(r.get_ref().as_bytes()) {
            Ok(hn) => out.retain(|(n, _)| *n != hn),
            Err(_) => {
                let loc = cx.loc(r, "");
                cx.err(
                    loc,
                    format!(
                        "site {name:?}: remove_headers: {:?} is not a valid header name",
                        r.get_ref()
                    ),
                    "use letters, digits and '-'",
                );
            }
        }
    }
    if let (super::hsts::HstsPolicy::Ramp(_), Some(r)) = (hsts, &rs.hsts.ramp) {
        if out
            .iter()
            .any(|(n, _)| *n == http::header::STRICT_TRANSPORT_SECURITY)
        {
            let loc = cx.loc(r, "");
            cx.err(
                loc,
                format!("site {name:?}: hsts.ramp and a Strict-Transport-Security entry in headers both set the header"),
                "remove one of them",
            );
        }
    }
    out
}

fn routes(
    cx: &mut Ctx<'_>,
    raw: Vec<RawRoute>,
    root: Option<Spanned<String>>,
    name: &str,
) -> Vec<Route> {
    let mut out: Vec<(Route, Location)> = Vec::new();
    if let Some(r) = &root {
        let loc = cx.loc(r, "--root");
        let spec = files_spec(
            cx,
            &RawFiles {
                root: r.clone(),
                ..Default::default()
            },
            loc.clone(),
            name,
        );
        if let Some(spec) = spec {
            out.push((
                Route {
                    prefix: "/".into(),
                    handler: Handler::Files(spec),
                    access: Default::default(),
                },
                loc,
            ));
        }
    }
    for rr in raw {
        let loc = cx.loc(&rr.path, "");
        let p = rr.path.get_ref();
        if !p.starts_with('/')
            || p.contains(['?', '#', '\\'])
            || p.split('/').any(|s| s == ".." || s == ".")
        {
            cx.err(
                loc,
                format!("site {name:?}: route path {p:?} is not a clean path prefix"),
                "start it with '/', e.g. \"/api\"; no '?', '#', '.' or '..' segments",
            );
            continue;
        }
        let prefix = if p.len() > 1 {
            p.trim_end_matches('/').to_string()
        } else {
            p.clone()
        };
        let prefix = if prefix.is_empty() {
            "/".to_string()
        } else {
            prefix
        };
        if let Some((_, prev)) = out.iter().find(|(r, _)| r.prefix == prefix) {
            let prev = prev.clone();
            cx.err(
                loc,
                format!("site {name:?}: two routes for {prefix:?} (the other at {prev})"),
                "merge them; each prefix may appear once (root = \"…\" is a route for \"/\")",
            );
            continue;
        }
        let count = rr.files.is_some() as u8
            + rr.respond.is_some() as u8
            + rr.redirect.is_some() as u8
            + rr.proxy.is_some() as u8;
        if count != 1 {
            cx.err(loc, format!("site {name:?}: route {prefix:?} needs exactly one of files, respond, redirect, proxy (has {count})"), "keep one handler per [[site.route]]");
            continue;
        }
        let handler = if let Some(f) = &rr.files {
            let floc = cx.loc(f, "");
            files_spec(cx, f.get_ref(), floc, name).map(Handler::Files)
        } else if let Some(r) = &rr.respond {
            respond_spec(cx, r, name).map(Handler::Respond)
        } else if let Some(r) = &rr.redirect {
            redirect_spec(cx, r, name).map(Handler::Redirect)
        } else if let Some(p) = &rr.proxy {
            let mut pcx = super::proxy::Cx {
                ctx: cx,
                site: name,
                route: &prefix,
            };
            super::proxy::spec(&mut pcx, p).map(|s| Handler::Proxy(Box::new(s)))
        } else {
            None
        };
        let what = format!("site {name:?}: route {prefix:?}");
        let access =
            super::access::access(cx, rr.access.as_ref(), rr.basic_auth.as_ref(), name, &what);
        if let Some(handler) = handler {
            out.push((
                Route {
                    prefix,
                    handler,
                    access,
                },
                loc,
            ));
        }
    }
    if out.is_empty() && !cx.problems.iter().any(Problem::is_error) {
        cx.err(
            Location::None,
            format!("site {name:?} has nothing to serve"),
            "set root = \"/path/to/site\" or add a [[site.route]]",
        );
    }
    let mut routes: Vec<Route> = out.into_iter().map(|(r, _)| r).collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    routes
}

fn files_spec(cx: &mut Ctx<'_>, f: &RawFiles, loc: Location, name: &str) -> Option<FilesSpec> {
    let root = cx.path(f.root.get_ref());
    match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            cx.err(
                loc,
                format!("site {name:?}: root {} is not a directory", root.display()),
                "point root at the directory holding the site's files",
            );
            return None;
        }
        Err(e) => {
            cx.err(loc, format!("site {name:?}: root {}: {e}", root.display()), "create the directory or fix the path (relative paths are relative to the config file)");
            return None;
        }
    }
    let cache_validity = cx.duration(
        &f.cache,
        "files.cache",
        Duration::from_secs(1),
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    Some(FilesSpec {
        files: StaticConfig {
            root,
            index: f.index.clone().unwrap_or_else(|| vec!["index.html".into()]),
            browse: f.browse.unwrap_or(false),
            precompressed: f.precompressed.unwrap_or(true),
            follow_symlinks_outside_root: f.follow_symlinks_outside_root.unwrap_or(false),
            hidden_files: f.hidden_files.unwrap_or(false),
            cache_validity,
        },
        strip_prefix: f.strip_prefix.unwrap_or(false),
    })
}

fn respond_spec(cx: &mut Ctx<'_>, r: &Spanned<RawRespond>, name: &str) -> Option<RespondSpec> {
    let raw = r.get_ref();
    let status = match &raw.status {
        None => StatusCode::OK,
        Some(s) => match StatusCode::from_u16(*s.get_ref()) {
            Ok(st) if (200..600).contains(&st.as_u16()) => st,
            _ => {
                let loc = cx.loc(s, "");
                cx.err(
                    loc,
                    format!(
                        "site {name:?}: respond.status = {} is not a valid status",
                        s.get_ref()
                    ),
                    "use 200 to 599",
                );
                return None;
            }
        },
    };
    let content_type = match &raw.content_type {
        None => HeaderValue::from_static("text/plain; charset=utf-8"),
        Some(ct) => header_value(cx, ct, &format!("site {name:?}: respond.content_type"))?,
    };
    Some(RespondSpec {
        status,
        body: Bytes::from(raw.body.clone().unwrap_or_default()),
        content_type,
    })
}

fn redirect_spec(cx: &mut Ctx<'_>, r: &Spanned<RawRedirect>, name: &str) -> Option<RedirectSpec> {
    let raw = r.get_ref();
    let loc = cx.loc(&raw.to, "");
    if raw.to.get_ref().is_empty() || raw.to.get_ref().contains(['\r', '\n']) {
        cx.err(
            loc,
            format!("site {name:?}: redirect.to is empty or has line breaks"),
            "use a URL such as \"https://example.com{uri}\"",
        );
        return None;
    }
    let status = match &raw.status {
        None => StatusCode::FOUND,
        Some(s) if [301, 302, 303, 307, 308].contains(s.get_ref()) => {
            StatusCode::from_u16(*s.get_ref()).ok()?
        }
        Some(s) => {
            let loc = cx.loc(s, "");
            cx.err(
                loc,
                format!(
                    "site {name:?}: redirect.status = {} is not a redirect status",
                    s.get_ref()
                ),
                "use 301, 302, 303, 307 or 308",
            );
            return None;
        }
    };
    Some(RedirectSpec {
        to: raw.to.get_ref().clone(),
        status,
    })
}
