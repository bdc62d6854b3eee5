//! The `proxy` route handler's configuration: every bad key is reported with the file, the
//! line and a message naming the route and key (by `config::load` and by `portcullis check`),
//! warnings do not block, and a fully written handler becomes the expected model.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use portcullis::config::model::Handler;
use portcullis::config::proxy::{
    HostMode, Policy, ProxyProtocol, ProxySpec, StatusMatch, UpstreamAddr, UpstreamScheme,
};
use portcullis::config::validate::{Mode, Overrides};

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

fn problems(path: &Path) -> Result<(portcullis::config::Config, Vec<String>), Vec<String>> {
    match portcullis::config::load(path, &Overrides::default(), Mode::Check) {
        Ok((c, warnings)) => Ok((c, warnings.iter().map(|p| p.to_string()).collect())),
        Err(problems) => Err(problems.iter().map(|p| p.to_string()).collect()),
    }
}

/// A site whose routes are `routes` (TOML text after the site).
fn config(routes: &str) -> String {
    format!(
        r#"workers = 1
data_dir = "data"
[listen]
https = ["127.0.0.1:0"]
http = []

[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
{routes}"#
    )
}

/// The problem containing every needle, which must be an error at `line`.
fn error_at(path: &Path, problems: &[String], line: usize, needles: &[&str]) {
    let p = problems
        .iter()
        .find(|p| needles.iter().all(|n| p.contains(n)))
        .unwrap_or_else(|| panic!("no problem with {needles:?} in:\n{}", problems.join("\n")));
    let at = format!("{}:{line}: error:", path.display());
    assert!(p.starts_with(&at), "expected at line {line}: {p}");
    assert!(p.contains("(fix: "), "{p}");
}

#[test]
fn each_bad_key_is_reported_at_its_line() {
    let env = TestEnv::new();
    let text = config(
        r#"
[[site.route]]
path = "/a"
[site.route.proxy]
upstreams = [
  "ftp://files.internal",
  "unix:run/app.sock",
  { url = "http://10.0.0.1:80", weight = 0 },
  { url = "http://10.0.0.2:80", proxy_protocol = "v3" },
  "http://10.0.0.3:8080/app",
]
policy = "fastest"
retries = 40
trusted_proxies = ["10.0.0.0/33"]
host = "two words"
max_body = "ten megabytes"
tls = { ca = "missing-ca.pem" }
health = { path = "healthz", status = "6xx", interval = "1s", timeout = "5s", rise = 0 }
passive = { fail_timeout = "10s", max_eject = "1s" }
timeouts = { connect = "5 parsecs", response_header = "0s" }
pool = { max_idle_per_backend = 10, max_connections_per_backend = 2, idle_timeout = "1y" }
request_headers = { set = { "Content-Length" = "5", "Bad Name" = "x" }, remove = ["Also Bad"] }

[[site.route]]
path = "/b"
respond = { body = "x" }
proxy = { upstreams = ["http://127.0.0.1:1"] }

[[site.route]]
path = "/c"
proxy = { upstreams = [] }

[[site.route]]
path = "/d"
proxy = { upstreams = ["http://10.0.0.9", "http://10.0.0.9:80"], policy = "cookie:bad name" }

[[site.route]]
path = "/e"
proxy = { upstreams = [{ url = "http://10.0.0.7", backup = true }], tls = { client_cert = "certs/alpha.pem" } }
"#,
    );
    let path = env.write_config_raw(&text);
    let p = match problems(&path) {
        Ok((_, w)) => panic!("accepted: {w:?}"),
        Err(p) => p,
    };
    let at = |needle| line_of(&text, needle);
    let route = r#"site "alpha": route "/a": proxy."#;
    error_at(
        &path,
        &p,
        at("ftp://"),
        &[
            route,
            "upstreams: \"ftp://files.internal\" has the unsupported scheme \"ftp\"",
        ],
    );
    error_at(
        &path,
        &p,
        at("unix:run"),
        &["\"unix:run/app.sock\" is not an absolute socket path"],
    );
    error_at(&path, &p, at("weight = 0"), &["weight = 0 is out of range"]);
    error_at(
        &path,
        &p,
        at("\"v3\""),
        &["proxy_protocol = \"v3\" is not a version"],
    );
    error_at(&path, &p, at("/app\""), &["has a path or query"]);
    error_at(
        &path,
        &p,
        at("fastest"),
        &[route, "policy = \"fastest\" is not a balancing policy"],
    );
    error_at(
        &path,
        &p,
        at("retries = 40"),
        &["retries = 40 is out of range"],
    );
    error_at(
        &path,
        &p,
        at("/33"),
        &["trusted_proxies: \"10.0.0.0/33\" is not an IP address or CIDR"],
    );
    error_at(&path, &p, at("two words"), &["host = \"two words\""]);
    error_at(
        &path,
        &p,
        at("ten megabytes"),
        &["max_body = \"ten megabytes\" is not a size"],
    );
    error_at(
        &path,
        &p,
        at("missing-ca.pem"),
        &["tls.ca: cannot read", "missing-ca.pem"],
    );
    error_at(
        &path,
        &p,
        at("healthz"),
        &["health.path = \"healthz\" does not start with '/'"],
    );
    error_at(&path, &p, at("healthz"), &["health.status = \"6xx\""]);
    error_at(
        &path,
        &p,
        at("healthz"),
        &["health.timeout (5s) is longer than health.interval (1s)"],
    );
    error_at(
        &path,
        &p,
        at("healthz"),
        &["health.rise = 0 is out of range"],
    );
    error_at(
        &path,
        &p,
        at("max_eject"),
        &["passive.max_eject is shorter than passive.fail_timeout"],
    );
    error_at(
        &path,
        &p,
        at("parsecs"),
        &["timeouts.connect = \"5 parsecs\" is not a duration"],
    );
    error_at(
        &path,
        &p,
        at("parsecs"),
        &["timeouts.response_header = \"0s\" is out of range"],
    );
    error_at(
        &path,
        &p,
        at("idle_timeout = \"1y\""),
        &["pool.max_idle_per_backend = 10 is more than max_connections_per_backend = 2"],
    );
    error_at(
        &path,
        &p,
        at("idle_timeout = \"1y\""),
        &["pool.idle_timeout = \"1y\" is out of range"],
    );
    error_at(
        &path,
        &p,
        at("Content-Length"),
        &["request_headers.set: content-length frames the message"],
    );
    error_at(
        &path,
        &p,
        at("Content-Length"),
        &["request_headers.set: \"Bad Name\" is not a valid header name"],
    );
    error_at(
        &path,
        &p,
        at("Also Bad"),
        &["request_headers.remove: \"Also Bad\""],
    );
    error_at(
        &path,
        &p,
        at("path = \"/b\""),
        &["route \"/b\" needs exactly one of files, respond, redirect, proxy (has 2)"],
    );
    error_at(
        &path,
        &p,
        at("upstreams = []"),
        &["route \"/c\": proxy.upstreams is empty"],
    );
    error_at(
        &path,
        &p,
        at("http://10.0.0.9:80"),
        &["\"http://10.0.0.9:80\" is listed twice"],
    );
    error_at(
        &path,
        &p,
        at("cookie:bad name"),
        &["policy = \"cookie:bad name\" is not a balancing policy"],
    );
    error_at(
        &path,
        &p,
        at("backup = true"),
        &["every upstream is a backup"],
    );
    error_at(
        &path,
        &p,
        at("backup = true"),
        &["client_cert and client_key go together"],
    );
}

#[test]
fn unknown_keys_in_proxy_are_refused_with_their_line() {
    let env = TestEnv::new();
    let text = config(
        r#"
[[site.route]]
path = "/"
[site.route.proxy]
upstreams = ["http://127.0.0.1:8080"]
load_balancing = "round_robin"
"#,
    );
    let path = env.write_config_raw(&text);
    let p = problems(&path).expect_err("refused");
    error_at(
        &path,
        &p,
        line_of(&text, "load_balancing"),
        &["unknown field `load_balancing`"],
    );

    let text = config(
        r#"
[[site.route]]
path = "/"
proxy = { upstreams = [{ url = "http://127.0.0.1:8080", wieght = 2 }] }
"#,
    );
    let path = env.write_config_raw(&text);
    let p = problems(&path).expect_err("refused");
    error_at(
        &path,
        &p,
        line_of(&text, "wieght"),
        &["unknown field `wieght`"],
    );
}

#[test]
fn warnings_do_not_block() {
    let env = TestEnv::new();
    let text = config(
        r#"
[[site.route]]
path = "/"
proxy = { upstreams = ["http://no-such-host.invalid:8080", "http://localhost:9"], tls = { insecure_skip_verify = true } }
"#,
    );
    let path = env.write_config_raw(&text);
    let (_, w) = problems(&path).unwrap_or_else(|p| panic!("refused: {p:?}"));
    let line = line_of(&text, "no-such-host");
    let warn = |needles: &[&str]| {
        let p = w
            .iter()
            .find(|p| needles.iter().all(|n| p.contains(n)))
            .unwrap_or_else(|| panic!("no warning with {needles:?} in {w:?}"));
        assert!(
            p.starts_with(&format!("{}:{line}: warning:", path.display())),
            "{p}"
        );
    };
    warn(&["the name \"no-such-host.invalid\" does not resolve now"]);
    warn(&["tls is set but no upstream is https://"]);
    warn(&["insecure_skip_verify = true"]);
    assert!(!w.iter().any(|p| p.contains("localhost")), "{w:?}");
}

#[test]
fn portcullis_check_reports_proxy_errors() {
    let env = TestEnv::new();
    let text = config(
        r#"
[[site.route]]
path = "/"
proxy = { upstreams = ["http://127.0.0.1:8080"], health = { path = "status" } }
"#,
    );
    let path = env.write_config_raw(&text);
    let (ok, out) = check_config(&path);
    assert!(!ok, "{out}");
    let expected = format!(
        "{}:{}: error: site \"alpha\": route \"/\": proxy.health.path = \"status\" does not start with '/'",
        path.display(),
        line_of(&text, "health")
    );
    assert!(out.contains(&expected), "{out}");
}

fn the_proxy(c: &portcullis::config::Config, prefix: &str) -> ProxySpec {
    let r = c.sites[0]
        .routes
        .iter()
        .find(|r| r.prefix == prefix)
        .expect("route");
    match &r.handler {
        Handler::Proxy(p) => (**p).clone(),
        other => panic!("not a proxy: {other:?}"),
    }
}

#[test]
fn every_key_becomes_the_model() {
    let env = TestEnv::new();
    let pair = pki().leaf(&["proxy.internal"], Alg::Ecdsa);
    env.write("client.pem", &pair.cert_pem);
    env.write("client.key", &pair.key_pem);
    let text = config(
        r#"
[[site.route]]
path = "/api/"
[site.route.proxy]
upstreams = [
  "https://127.0.0.1:8443",
  { url = "h2c://[::1]:50051", weight = 3, proxy_protocol = "v2" },
  { url = "unix:/run/app.sock", backup = true },
]
policy = "header:X-Tenant"
tls = { ca = "certs/root.pem", server_name = "app.internal", client_cert = "client.pem", client_key = "client.key" }
health = { path = "/healthz?full=1", status = "2xx", interval = "500ms", timeout = "200ms", rise = 1, fall = 5, host = "app.internal" }
passive = { max_fails = 0, fail_timeout = "1s", max_eject = "1m" }
timeouts = { connect = "1s", response_header = "30s", idle = "0s", total = "2m" }
retries = 0
retry_non_idempotent = true
pool = { max_idle_per_backend = 4, idle_timeout = "10s", max_connections_per_backend = 8 }
trusted_proxies = ["10.0.0.0/8", "::1", "192.168.1.77/24"]
host = "upstream"
request_headers = { set = { "X-Env" = "prod" }, add = { "X-Tag" = "a" }, remove = ["X-Debug"] }
response_headers = { remove = ["Server"] }
via = true
backend_headers_win = true
max_body = "1MiB"
websocket = false
compress = true
strip_prefix = true

[[site.route]]
path = "/"
proxy = { upstreams = ["http://127.0.0.1:8080"], host = "www.example.com", max_body = 1000 }
"#,
    );
    let path = env.write_config_raw(&text);
    let (c, w) = problems(&path).unwrap_or_else(|p| panic!("refused: {p:?}"));
    assert!(!w.iter().any(|w| w.contains("proxy")), "{w:?}");
    let p = the_proxy(&c, "/api");
    assert_eq!(p.upstreams.len(), 3);
    assert_eq!(
        p.upstreams[0].addr,
        UpstreamAddr::Tcp {
            scheme: UpstreamScheme::Https,
            host: "127.0.0.1".into(),
            port: 8443
        }
    );
    assert_eq!(p.upstreams[1].weight, 3);
    assert_eq!(p.upstreams[1].proxy_protocol, Some(ProxyProtocol::V2));
    assert_eq!(
        p.upstreams[2].addr,
        UpstreamAddr::Unix("/run/app.sock".into())
    );
    assert!(p.upstreams[2].backup);
    assert_eq!(
        p.policy,
        Policy::Header(http::HeaderName::from_static("x-tenant"))
    );
    assert_eq!(p.tls.server_name.as_deref(), Some("app.internal"));
    assert_eq!(p.tls.ca, Some(env.path("certs/root.pem")));
    assert!(p.tls.client_cert.is_some());
    let h = p.health.expect("health");
    assert_eq!(h.path, "/healthz?full=1");
    assert_eq!(h.status, StatusMatch::Class(2));
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_millis(500), Duration::from_millis(200), 1, 5)
    );
    assert_eq!(h.host.as_deref(), Some("app.internal"));
    assert_eq!(p.passive.max_fails, 0);
    assert_eq!(p.timeouts.total, Duration::from_secs(120));
    assert_eq!(p.timeouts.idle, Duration::ZERO);
    assert_eq!(p.retries, 0);
    assert!(p.retry_non_idempotent);
    assert_eq!(p.pool.max_connections_per_backend, 8);
    assert_eq!(p.trusted_proxies.len(), 3);
    assert_eq!(p.trusted_proxies[2].to_string(), "192.168.1.0/24");
    assert_eq!(p.host, HostMode::Upstream);
    assert_eq!(p.request_headers.set.len(), 1);
    assert_eq!(p.request_headers.add.len(), 1);
    assert_eq!(
        p.request_headers.remove,
        vec![http::HeaderName::from_static("x-debug")]
    );
    assert_eq!(p.response_headers.remove.len(), 1);
    assert!(p.via && p.backend_headers_win && p.compress && p.strip_prefix && !p.websocket);
    assert_eq!(p.max_body, Some(1 << 20));

    let d = the_proxy(&c, "/");
    assert_eq!(d.policy, Policy::RoundRobin);
    assert_eq!(
        d.host,
        HostMode::Literal(http::HeaderValue::from_static("www.example.com"))
    );
    assert_eq!(d.max_body, Some(1000));
    assert_eq!(d.retries, 2);
    assert!(d.websocket && !d.via && d.health.is_none());
    assert_eq!(d.passive.max_fails, 3);
    assert_eq!(d.timeouts.connect, Duration::from_secs(5));
    assert_eq!(d.pool.max_idle_per_backend, 1024);
}

#[test]
fn a_client_key_that_does_not_fit_its_certificate_is_an_error() {
    let env = TestEnv::new();
    let a = pki().leaf(&["proxy.internal"], Alg::Ecdsa);
    let b = pki().leaf(&["other.internal"], Alg::Ecdsa);
    env.write("client.pem", &a.cert_pem);
    env.write("client.key", &b.key_pem);
    let text = config(
        r#"
[[site.route]]
path = "/"
proxy = { upstreams = ["https://127.0.0.1:8443"], tls = { client_cert = "client.pem", client_key = "client.key" } }
"#,
    );
    let path = env.write_config_raw(&text);
    let p = problems(&path).expect_err("refused");
    error_at(
        &path,
        &p,
        line_of(&text, "client.pem"),
        &["do not go together"],
    );
}
