//! Metrics end to end: traffic through the real server, then `/metrics` on the admin listener
//! parsed by a real Prometheus text parser (the `prometheus-parse` crate): values change as
//! handshakes, requests, bytes and failures happen; certificate expiry is plausible; a proxy
//! route's backends show their health and response times.

mod common;

use std::time::Duration;

use common::backends::Backend;
use common::scrape::{admin_addr, scrape, value};
use common::*;
use prometheus_parse::{Scrape, Value};
use tokio::io::AsyncWriteExt as _;

const ADMIN: &str = "\n[admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_change_as_traffic_flows() {
    let srv = start(&format!(
        "[tls]\nunknown_sni = \"reject\"\n{TWO_SITES}{ADMIN}"
    ));
    let admin = admin_addr(&srv);
    let before = scrape(admin).await;

    // 3 HTTP/1.1 requests to alpha (one of them over TLS 1.2), 2 HTTP/2 to beta.
    for _ in 0..2 {
        assert_eq!(
            get(srv.https, Some("alpha.test"), "/", "http/1.1")
                .await
                .status,
            200
        );
    }
    let tls12 = ClientOpts::default()
        .tls12()
        .alpn(&["http/1.1"])
        .no_name_check()
        .build();
    let r = request(
        srv.https,
        tls12,
        Some("alpha.test"),
        Req::get("alpha.test", "/"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    for _ in 0..2 {
        assert_eq!(
            get(srv.https, Some("beta.test"), "/", "h2").await.status,
            200
        );
    }
    // A Host no site has on alpha's connection: 421, counted for alpha as 4xx.
    let r = raw_tls(
        srv.https,
        Some("alpha.test"),
        b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
    // Port 80: a redirect.
    let r = raw_tcp(
        srv.http(),
        b"GET /x HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status / 100, 3);
    // Failed handshakes: an unknown name (refused), and plain HTTP sent to the TLS port.
    let cfg = ClientOpts::default().no_name_check().build();
    assert!(tls_connect(srv.https, Some("nobody.test"), cfg)
        .await
        .is_err());
    let mut tcp = tokio::net::TcpStream::connect(srv.https).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    let _ = read_until_close(&mut tcp, Duration::from_secs(5)).await;

    // The server counts a response once it is handed over: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = scrape(admin).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };

    let req = "portcullis_http_requests_total";
    assert_eq!(
        delta(
            req,
            &[("site", "alpha"), ("code", "2xx"), ("protocol", "http1")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            req,
            &[("site", "beta"), ("code", "2xx"), ("protocol", "h2")]
        ),
        2.0
    );
    assert_eq!(delta(req, &[("site", "alpha"), ("code", "4xx")]), 1.0);
    assert_eq!(
        delta(
            req,
            &[
                ("site", "_port80"),
                ("code", "3xx"),
                ("protocol", "plain_http")
            ]
        ),
        1.0
    );

    let hs = "portcullis_tls_handshake_duration_seconds_count";
    assert_eq!(delta(hs, &[("version", "TLSv1.3"), ("kind", "full")]), 5.0);
    assert_eq!(delta(hs, &[("version", "TLSv1.2"), ("kind", "full")]), 1.0);
    // The histogram's buckets are there and add up (the +Inf bucket is the count).
    assert_eq!(
        value(
            &after,
            "portcullis_tls_handshake_duration_seconds",
            &[("version", "TLSv1.3"), ("kind", "full")]
        ),
        value(&after, hs, &[("version", "TLSv1.3"), ("kind", "full")]),
    );
    let sum = value(
        &after,
        "portcullis_tls_handshake_duration_seconds_sum",
        &[("version", "TLSv1.3"), ("kind", "full")],
    );
    assert!(sum > 0.0 && sum < 5.0 * 10.0, "handshake time sum {sum}");

    let fail = "portcullis_tls_handshake_failures_total";
    assert_eq!(delta(fail, &[("reason", "unknown_sni")]), 1.0);
    assert_eq!(delta(fail, &[("reason", "plain_http")]), 1.0);

    assert!(delta("portcullis_received_bytes_total", &[]) >= 6.0 * 30.0);
    assert!(delta("portcullis_sent_bytes_total", &[]) >= 7.0 * 100.0);

    // Certificates: every site's, with a plausible expiry (the test PKI issues for a year or so).
    for site in ["alpha", "beta"] {
        let left = value(
            &after,
            "portcullis_certificate_expiry_seconds",
            &[("site", site), ("source", "files")],
        );
        assert!(
            left > 86400.0 && left < 5.0 * 365.0 * 86400.0,
            "{site}: {left} s left"
        );
    }
    // Open connections by protocol: every kind is exported, none negative.
    for p in ["tls_handshaking", "http1", "h2", "plain_http", "stream"] {
        let open = after
            .samples
            .iter()
            .find(|s| {
                s.metric == "portcullis_connections_open" && s.labels.get("protocol") == Some(p)
            })
            .unwrap_or_else(|| panic!("no connections_open for {p}"));
        assert!(matches!(open.value, Value::Gauge(v) if v >= 0.0));
    }
    assert_eq!(
        value(
            &after,
            "portcullis_acme_orders_total",
            &[("kind", "new"), ("result", "issued")]
        ),
        0.0
    );
    assert!(after.docs.contains_key("portcullis_rate_limited_total"));
}

/// An open HTTP/2 connection counts as `h2` while it lives, and no more once it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_follow_the_connection() {
    let srv = start(&format!("{ONE_SITE}{ADMIN}"));
    let admin = admin_addr(&srv);
    let open = |s: &Scrape, p: &str| value(s, "portcullis_connections_open", &[("protocol", p)]);
    let cfg = ClientOpts::default().alpn(&["h2"]).no_name_check().build();
    let tls = tls_connect(srv.https, Some("alpha.test"), cfg)
        .await
        .unwrap();
    let mut during = 0.0;
    for _ in 0..50 {
        during = open(&scrape(admin).await, "h2");
        if during == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(during, 1.0);
    drop(tls);
    let mut after = 1.0;
    for _ in 0..100 {
        after = open(&scrape(admin).await, "h2");
        if after == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(after, 0.0);
}

/// A proxy route: the live backend is up with requests and response times, the dead one
/// (nothing listens) is down by the active health checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_health_and_latency_for_a_proxy_route() {
    let live = Backend::h1("live");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let srv = start(&format!(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
proxy = {{ upstreams = ["{}", "http://{dead}"], health = {{ path = "/health", interval = "100ms", timeout = "80ms", rise = 1, fall = 1 }} }}
{ADMIN}"#,
        live.url()
    ));
    let admin = admin_addr(&srv);
    // Backends are labelled `host:port`.
    let live_label = live.addr.unwrap().to_string();
    let dead_label = dead.to_string();
    // The health checks find the dead backend down.
    let mut s = scrape(admin).await;
    for _ in 0..100 {
        if value(&s, "portcullis_backend_up", &[("backend", &dead_label)]) == 0.0
            && s.samples.iter().any(|x| {
                x.metric == "portcullis_backend_up"
                    && x.labels.get("backend") == Some(dead_label.as_str())
            })
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = scrape(admin).await;
    }
    fn labels_of(b: &str) -> [(&'static str, &str); 3] {
        [("site", "alpha"), ("route", "/"), ("backend", b)]
    }
    assert_eq!(
        value(&s, "portcullis_backend_up", &labels_of(&dead_label)),
        0.0,
        "dead backend still up"
    );
    assert_eq!(
        value(&s, "portcullis_backend_up", &labels_of(&live_label)),
        1.0
    );
    for _ in 0..4 {
        assert_eq!(
            get(srv.https, Some("alpha.test"), "/name", "h2")
                .await
                .status,
            200
        );
    }
    let s = scrape(admin).await;
    assert_eq!(
        value(
            &s,
            "portcullis_backend_requests_total",
            &labels_of(&live_label)
        ),
        4.0
    );
    assert_eq!(
        value(
            &s,
            "portcullis_backend_response_duration_seconds_count",
            &labels_of(&live_label)
        ),
        4.0
    );
    let sum = value(
        &s,
        "portcullis_backend_response_duration_seconds_sum",
        &labels_of(&live_label),
    );
    assert!(sum > 0.0 && sum < 4.0, "backend time sum {sum}");
    assert_eq!(
        value(
            &s,
            "portcullis_backend_requests_total",
            &labels_of(&dead_label)
        ),
        0.0
    );
}
