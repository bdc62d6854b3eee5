//! The Prometheus side: a `prometheus-client` [`Collector`] that sums the shards at each
//! scrape ([`super::totals`]) and adds what is read from the running server at that moment
//! (certificates, OCSP staples, backends), encoded as Prometheus text (format 0.0.4) by the
//! crate's encoder.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::hist::Snapshot;
use super::{site_name, ConnKind, RequestProtocol, Totals, HANDSHAKE_KINDS, STATUS_CLASSES};

/// A certificate served now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertFact {
    /// The site (or stream) holding it.
    pub site: String,
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
    /// Unix times.
    pub not_before: i64,
    pub not_after: i64,
    /// Where it comes from: `files`, `acme`, `local_ca`, `on_demand`.
    pub source: &'static str,
    /// When it is renewed (Unix time), for certificates portcullis renews.
    pub next_renewal: Option<i64>,
    /// The OCSP response stapled to it, if any.
    pub staple: Option<StapleFact>,
    /// Which instance obtained it and when (ACME certificates, as recorded in the store).
    pub obtained: Option<crate::acme::manager::Issuance>,
}

/// An OCSP response as stapled.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StapleFact {
    /// `good`, `revoked`, `unknown`, or `invalid` (does not verify against the issuer).
    pub status: &'static str,
    /// Unix times of the response's validity.
    pub this_update: i64,
    pub next_update: i64,
}

/// A reverse-proxy backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendFact {
    pub site: String,
    pub route: String,
    pub backend: String,
    /// Available for new requests: up by active checks and not passively ejected.
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: usize,
    pub requests: u64,
    pub failures: u64,
    pub open_connections: usize,
    #[serde(skip)]
    pub latency: Snapshot,
}

/// What the running server shows at a scrape.
#[derive(Debug, Clone, Default)]
pub struct StateFacts {
    pub certs: Vec<CertFact>,
    pub backends: Vec<BackendFact>,
}

/// Reads [`StateFacts`] from whichever configuration runs now.
pub type FactSource = Arc<dyn Fn() -> StateFacts + Send + Sync>;

/// The collector registered in the admin listener's registry.
pub struct Exporter {
    facts: FactSource,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exporter")
    }
}

/// A registry (prefix `portcullis_`) with every metric of the process.
pub fn registry(facts: FactSource) -> Registry {
    let mut r = Registry::with_prefix("portcullis");
    r.register_collector(Box::new(Exporter { facts }));
    r
}

/// The registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String does not fail; an encoder error would be a bug in the labels.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn histogram(m: &mut prometheus_client::encoding::MetricEncoder<'_>, s: &Snapshot) -> fmt::Result {
    m.encode_histogram::<NoLabelSet>(s.sum_seconds(), s.count(), &s.prometheus_buckets(), None)
}

/// A constant value under a metric type (prometheus-client's `ConstCounter`/`ConstGauge` need
/// owned values per family; these encode borrowed ones).
struct Counter(u64);
impl EncodeMetric for Counter {
    fn encode(&self, mut e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        e.encode_counter::<NoLabelSet, _, u64>(&self.0, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}
struct Gauge(i64);
impl EncodeMetric for Gauge {
    fn encode(&self, mut e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        e.encode_gauge(&self.0)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

impl Collector for Exporter {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let t: Totals = super::totals();
        let facts = (self.facts)();
        let now = crate::tls::certs::unix_now();
        let seconds = Unit::Seconds;
        let bytes = Unit::Bytes;

        let mut m = enc.encode_descriptor(
            "tls_handshake_duration",
            "Completed TLS handshakes: time from the accepted connection to the end of the handshake.",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for ((version, kind), s) in HANDSHAKE_KINDS.iter().zip(&t.handshakes) {
            let labels = [("version", *version), ("kind", *kind)];
            histogram(&mut m.encode_family(&labels)?, s)?;
        }

        let mut m = enc.encode_descriptor(
            "tls_handshake_failures",
            "Failed TLS handshakes by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &t.handshake_failures {
            Counter(*n).encode(m.encode_family(&[("reason", *reason)])?)?;
        }

        let mut m = enc.encode_descriptor(
            "connections_open",
            "Connections open now, by what they are doing.",
            None,
            MetricType::Gauge,
        )?;
        for kind in ConnKind::ALL {
            let n = t.conns[kind as usize].max(0);
            Gauge(n).encode(m.encode_family(&[("protocol", kind.label())])?)?;
        }

        let mut m = enc.encode_descriptor(
            "http_requests",
            "Responses sent, by site, status class and protocol.",
            None,
            MetricType::Counter,
        )?;
        for (site, row) in &t.requests {
            let name = site_name(*site);
            for (class, per_proto) in STATUS_CLASSES.iter().zip(row) {
                for (proto, n) in RequestProtocol::ALL.iter().zip(per_proto) {
                    if *n == 0 {
                        continue;
                    }
                    let labels = [
                        ("site", &*name),
                        ("code", class),
                        ("protocol", proto.label()),
                    ];
                    Counter(*n).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        let m = enc.encode_descriptor(
            "received",
            "Application bytes received from clients (after TLS decryption).",
            Some(&bytes),
            MetricType::Counter,
        )?;
        Counter(t.bytes_in).encode(m)?;
        let m = enc.encode_descriptor(
            "sent",
            "Application bytes sent to clients (before TLS encryption).",
            Some(&bytes),
            MetricType::Counter,
        )?;
        Counter(t.bytes_out).encode(m)?;

        let mut m = enc.encode_descriptor(
            "certificate_expiry",
            "Seconds until each served certificate expires (negative: expired).",
            Some(&seconds),
            MetricType::Gauge,
        )?;
        for c in &facts.certs {
            let labels = [
                ("site", c.site.as_str()),
                ("subject", c.subject.as_str()),
                ("source", c.source),
            ];
            Gauge(c.not_after - now).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "ocsp_staple_age",
            "Age of the stapled OCSP response of each certificate (since its thisUpdate).",
            Some(&seconds),
            MetricType::Gauge,
        )?;
        for c in &facts.certs {
            let Some(s) = &c.staple else { continue };
            let labels = [
                ("site", c.site.as_str()),
                ("subject", c.subject.as_str()),
                ("status", s.status),
            ];
            Gauge(now - s.this_update).encode(m.encode_family(&labels)?)?;
        }

        let mut m = enc.encode_descriptor(
            "acme_orders",
            "Finished ACME orders: first certificates and renewals, issued or failed.",
            None,
            MetricType::Counter,
        )?;
        for (kind, row) in ["new", "renewal"].iter().zip(&t.acme_orders) {
            for (result, n) in ["issued", "failed"].iter().zip(row) {
                Counter(*n).encode(m.encode_family(&[("kind", *kind), ("result", *result)])?)?;
            }
        }

        let mut m = enc.encode_descriptor(
            "rate_limited",
            "Connections, handshakes or requests refused by a rate limit, by limit.",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in &t.rate_limited {
            Counter(*n).encode(m.encode_family(&[("kind", *kind)])?)?;
        }

        let m = enc.encode_descriptor(
            "quic_retries",
            "QUIC Retry packets sent: new HTTP/3 clients asked to prove their address (h3_retry).",
            None,
            MetricType::Counter,
        )?;
        Counter(super::QUIC_RETRIES.load(std::sync::atomic::Ordering::Relaxed)).encode(m)?;

        let up = super::STORAGE_UP.load(std::sync::atomic::Ordering::Relaxed);
        if up >= 0 {
            let m = enc.encode_descriptor(
                "storage_up",
                "1 while the shared storage (Redis) answers, 0 while it is unreachable (instances serve what they hold).",
                None,
                MetricType::Gauge,
            )?;
            Gauge(up).encode(m)?;
            let m = enc.encode_descriptor(
                "storage_errors",
                "Calls to the shared storage that could not reach it.",
                None,
                MetricType::Counter,
            )?;
            Counter(super::STORAGE_ERRORS.load(std::sync::atomic::Ordering::Relaxed)).encode(m)?;
        }

        let backend_labels = |b: &BackendFact| {
            [
                ("site", b.site.clone()),
                ("route", b.route.clone()),
                ("backend", b.backend.clone()),
            ]
        };
        let mut m = enc.encode_descriptor(
            "backend_up",
            "1 while a reverse-proxy backend takes requests (healthy, not ejected), else 0.",
            None,
            MetricType::Gauge,
        )?;
        for b in &facts.backends {
            Gauge(i64::from(b.healthy && !b.ejected))
                .encode(m.encode_family(&backend_labels(b))?)?;
        }
        let mut m = enc.encode_descriptor(
            "backend_requests",
            "Requests sent to each backend.",
            None,
            MetricType::Counter,
        )?;
        for b in &facts.backends {
            Counter(b.requests).encode(m.encode_family(&backend_labels(b))?)?;
        }
        let mut m = enc.encode_descriptor(
            "backend_failures",
            "Failed requests to each backend (connect errors, timeouts, broken responses).",
            None,
            MetricType::Counter,
        )?;
        for b in &facts.backends {
            Counter(b.failures).encode(m.encode_family(&backend_labels(b))?)?;
        }
        let mut m = enc.encode_descriptor(
            "backend_in_flight",
            "Requests in flight to each backend.",
            None,
            MetricType::Gauge,
        )?;
        for b in &facts.backends {
            Gauge(b.in_flight as i64).encode(m.encode_family(&backend_labels(b))?)?;
        }
        let mut m = enc.encode_descriptor(
            "backend_response_duration",
            "Time from sending a request to a backend to its response head.",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for b in &facts.backends {
            histogram(&mut m.encode_family(&backend_labels(b))?, &b.latency)?;
        }

        let mut m = enc.encode_descriptor(
            "build",
            "The running portcullis version.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        Ok(())
    }
}
