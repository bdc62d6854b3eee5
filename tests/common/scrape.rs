//! `/metrics` on a test server's admin listener, parsed by a real Prometheus text parser
//! (`prometheus-parse`).

use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};

use super::{raw_tcp, TestServer};

/// The admin listener's address of a test server.
pub fn admin_addr(srv: &TestServer) -> SocketAddr {
    srv.server
        .as_ref()
        .and_then(|s| s.admin())
        .and_then(|a| a.local_addr())
        .expect("the admin listener runs")
}

/// `GET /metrics`, checked to be Prometheus's text format, parsed.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let resp = raw_tcp(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("GET /metrics");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        resp.headers
    );
    let text = resp.text();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("unparsable exposition ({e}):\n{text}"))
}

/// The value of the sample `name` whose labels include all of `labels` (0 when absent).
pub fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{name} is a summary"),
        })
        .sum()
}
