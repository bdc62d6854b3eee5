//! The status page: one HTML page with its own CSS and script (served by the admin listener
//! itself, so a strict Content-Security-Policy holds: no inline code, nothing external), drawing
//! what `/status.json` says every two seconds. The same facts feed `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use serde_json::json;
use x509_parser::prelude::FromDer;

use super::Generation;
use crate::config::model::SiteCertSource;
use crate::config::Config;
use crate::ops::metrics::collect::{BackendFact, CertFact, StapleFact, StateFacts};
use crate::ops::metrics::{self, ConnKind, RequestProtocol, HANDSHAKE_KINDS, STATUS_CLASSES};
use crate::storage::Storage;

pub const PAGE_HTML: &str = include_str!("assets/status.html");
pub const PAGE_CSS: &str = include_str!("assets/status.css");
pub const PAGE_JS: &str = include_str!("assets/status.js");
pub const FAVICON: &str = include_str!("assets/favicon.svg");

/// A certificate holder (site, or stream) of one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub name: String,
    pub hosts: Vec<String>,
    /// `files`, `acme`, `local_ca`.
    pub source: &'static str,
    /// A site (not a stream's certificate).
    pub site: bool,
}

/// Every certificate holder in the order of `ServerState::tls.certs`: sites, then streams'.
pub(crate) fn owners(config: &Config) -> Vec<Owner> {
    let source = |s: &SiteCertSource| match s {
        SiteCertSource::Files(_) => "files",
        SiteCertSource::Acme => "acme",
        SiteCertSource::LocalCa => "local_ca",
    };
    let sites = config.sites.iter().map(|s| Owner {
        name: s.name.clone(),
        hosts: s.hosts.iter().map(|h| h.to_string()).collect(),
        source: source(&s.certs),
        site: true,
    });
    let streams = config.streams.iter().flat_map(|s| &s.certs).map(|c| Owner {
        name: c.name.clone(),
        hosts: c.hosts.iter().map(|h| h.to_string()).collect(),
        source: source(&c.certs),
        site: false,
    });
    sites.chain(streams).collect()
}

/// Certificates and backends of the running configuration, now.
pub fn facts(g: &Generation) -> StateFacts {
    let now = crate::tls::certs::unix_now();
    let state = &g.state;
    let mut certs = Vec::new();
    for (i, held) in state.tls.certs.iter().enumerate() {
        let Some(owner) = g.owners.get(i) else {
            continue;
        };
        for ck in held.current().iter() {
            if let Some(f) = cert_fact(
                &owner.name,
                owner.source,
                &owner.hosts,
                ck,
                now,
                &*g.storage,
            ) {
                certs.push(f);
            }
        }
    }
    if let Some((site, named)) = &state.front.on_demand {
        let name = state.front.sites.get(*site).map_or("", |s| s.name.as_str());
        for (_, ck) in named.all() {
            if let Some(f) = cert_fact(name, "on_demand", &[], &ck, now, &*g.storage) {
                certs.push(f);
            }
        }
    }
    let mut backends = Vec::new();
    for (site, route, proxy) in state.front.proxies() {
        let group = proxy.group();
        for (b, latency) in group.snapshot().into_iter().zip(group.latencies()) {
            backends.push(BackendFact {
                site: site.to_string(),
                route: route.to_string(),
                backend: b.backend.to_string(),
                healthy: b.healthy,
                ejected: b.ejected_for.is_some(),
                in_flight: b.in_flight,
                requests: b.requests,
                failures: b.failures,
                open_connections: b.open_connections,
                latency,
            });
        }
    }
    StateFacts { certs, backends }
}

fn cert_fact(
    site: &str,
    source: &'static str,
    hosts: &[String],
    ck: &Arc<CertifiedKey>,
    now: i64,
    storage: &dyn Storage,
) -> Option<CertFact> {
    let leaf = ck.cert.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let (dns, ips) = crate::tls::certs::sans(&cert);
    let names = dns
        .into_iter()
        .chain(ips.iter().map(|i| i.to_string()))
        .collect();
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let lifetime_rule = not_after - (not_after - not_before) / 3;
    let obtained = match source {
        "acme" => crate::acme::manager::issuance(storage, hosts, leaf),
        _ => None,
    };
    let next_renewal = match source {
        "acme" => {
            let names: Vec<String> = hosts.to_vec();
            let planned = crate::acme::manager::status(storage, &names).and_then(|s| {
                let fp = crate::storage::sha256_hex(leaf, 32);
                (s.cert_sha256.as_deref() == Some(fp.as_str()))
                    .then_some(s.next_renewal)
                    .flatten()
            });
            Some(planned.unwrap_or(lifetime_rule))
        }
        "local_ca" => Some(lifetime_rule),
        _ => None,
    };
    let staple = ck.ocsp.as_deref().map(|resp| {
        let issuer = ck.cert.get(1).map(|c| c.as_ref()).unwrap_or_default();
        match crate::tls::ocsp::verify(resp, leaf, issuer, now) {
            Ok(v) => StapleFact {
                status: match v.state {
                    crate::tls::ocsp::CertState::Good => "good",
                    crate::tls::ocsp::CertState::Revoked { .. } => "revoked",
                    crate::tls::ocsp::CertState::Unknown => "unknown",
                },
                this_update: v.this_update,
                next_update: v.next_update,
            },
            Err(_) => StapleFact {
                status: "invalid",
                this_update: 0,
                next_update: 0,
            },
        }
    });
    Some(CertFact {
        site: site.to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before,
        not_after,
        source,
        next_renewal,
        staple,
        obtained,
    })
}

/// `/status.json`: everything the page draws.
pub fn json(g: &Generation, uptime: Duration, shutting_down: bool) -> String {
    let t = metrics::totals();
    let f = facts(g);
    let now = crate::tls::certs::unix_now();
    let sites: Vec<_> = g
        .owners
        .iter()
        .map(|o| {
            let certs: Vec<&CertFact> = f.certs.iter().filter(|c| c.site == o.name).collect();
            json!({ "name": o.name, "hosts": o.hosts, "source": o.source, "stream": !o.site, "certs": certs })
        })
        .collect();
    let on_demand: Vec<&CertFact> = f.certs.iter().filter(|c| c.source == "on_demand").collect();
    let handshakes: Vec<_> = HANDSHAKE_KINDS
        .iter()
        .zip(&t.handshakes)
        .map(|((v, k), s)| {
            let n = s.count();
            json!({ "version": v, "kind": k, "count": n,
                    "avg_ms": if n > 0 { s.sum_us as f64 / n as f64 / 1000.0 } else { 0.0 } })
        })
        .collect();
    let mut requests = Vec::new();
    let mut by_protocol = [0u64; 4];
    for (site, row) in &t.requests {
        let name = metrics::site_name(*site);
        for (class, per) in STATUS_CLASSES.iter().zip(row) {
            for (p, n) in RequestProtocol::ALL.iter().zip(per) {
                if *n > 0 {
                    by_protocol[*p as usize] += n;
                    requests.push(
                        json!({ "site": &*name, "code": class, "protocol": p.label(), "count": n }),
                    );
                }
            }
        }
    }
    let connections: Vec<_> = ConnKind::ALL
        .iter()
        .map(|k| json!({ "protocol": k.label(), "open": t.conns[*k as usize].max(0) }))
        .collect();
    let failures: Vec<_> = t
        .handshake_failures
        .iter()
        .map(|(r, n)| json!({ "reason": r, "count": n }))
        .collect();
    let rate_limited: Vec<_> = t
        .rate_limited
        .iter()
        .map(|(k, n)| json!({ "kind": k, "count": n }))
        .collect();
    let backends: Vec<_> = f
        .backends
        .iter()
        .map(|b| {
            let n = b.latency.count();
            json!({ "site": b.site, "route": b.route, "backend": b.backend,
                    "up": b.healthy && !b.ejected, "ejected": b.ejected,
                    "in_flight": b.in_flight, "requests": b.requests, "failures": b.failures,
                    "open_connections": b.open_connections,
                    "avg_ms": if n > 0 { b.latency.sum_us as f64 / n as f64 / 1000.0 } else { 0.0 } })
        })
        .collect();
    // The shared store: whether it answers, and who holds which lock (asked only while it
    // answers, so an unreachable Redis does not hold the page up).
    let up = metrics::STORAGE_UP.load(std::sync::atomic::Ordering::Relaxed);
    let storage = if g.storage.shared() {
        let locks: Vec<_> = if up != 0 {
            g.storage
                .lock_holders()
                .unwrap_or_default()
                .into_iter()
                .map(|h| json!({ "lock": h.name, "instance": h.instance, "since": h.since, "fence": h.fence }))
                .collect()
        } else {
            Vec::new()
        };
        json!({ "kind": "redis", "up": up != 0,
                "errors": metrics::STORAGE_ERRORS.load(std::sync::atomic::Ordering::Relaxed),
                "instance": crate::storage::instance_id(), "locks": locks })
    } else {
        json!({ "kind": "file" })
    };
    let v = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "storage": storage,
        "now": now,
        "uptime_seconds": uptime.as_secs(),
        "shutting_down": shutting_down,
        "sites": sites,
        "on_demand_certs": on_demand,
        "handshakes": { "total": t.handshakes_total(), "by_kind": handshakes },
        "handshake_failures": failures,
        "recent_failures": metrics::recent_failures(),
        "connections": connections,
        "requests": requests,
        "requests_by_protocol": RequestProtocol::ALL.iter().map(|p| json!({ "protocol": p.label(), "count": by_protocol[*p as usize] })).collect::<Vec<_>>(),
        "bytes": { "in": t.bytes_in, "out": t.bytes_out },
        "acme_orders": { "new": { "issued": t.acme_orders[0][0], "failed": t.acme_orders[0][1] },
                          "renewal": { "issued": t.acme_orders[1][0], "failed": t.acme_orders[1][1] } },
        "rate_limited": rate_limited,
        "backends": backends,
    });
    v.to_string()
}
