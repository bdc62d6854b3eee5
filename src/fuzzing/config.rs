//! TOML text → the validated model, as `portcullis check` and `serve` read a config file.
//!
//! Promises checked: parsing and validation never panic; a config is either valid or comes
//! with at least one error; every problem is one non-empty line naming an existing line of the
//! file; a valid model keeps the invariants the server relies on without checking again, and
//! the request side builds from it. Relative paths resolve below a directory that does not
//! exist; absolute ones are only read (validation never writes, runs or connects anything).

use std::path::Path;

use super::fixture::NOWHERE;
use crate::config::model::{Config, Handler};
use crate::config::validate::{self, Mode, Overrides};
use crate::config::{Location, Problem};
use crate::http::Frontend;

pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(NOWHERE).join("portcullis.toml");
    let lines = text.lines().count().max(1);
    let (raw, source) = match crate::config::parse_text(&path, text.to_owned()) {
        Ok(parsed) => parsed,
        Err(problem) => {
            assert!(problem.is_error(), "a parse failure is an error: {problem}");
            check_problem(&problem, lines);
            return;
        }
    };
    let overrides = Overrides {
        data_dir: Some(Path::new(NOWHERE).join("data")),
        ..Default::default()
    };
    match validate::validate(raw, &source, &overrides, Mode::Check) {
        Err(problems) => {
            assert!(
                problems.iter().any(Problem::is_error),
                "rejected without an error: {problems:?}"
            );
            for p in &problems {
                check_problem(p, lines);
            }
        }
        Ok((config, warnings)) => {
            for p in &warnings {
                assert!(!p.is_error(), "accepted with an error: {p}");
                check_problem(p, lines);
            }
            check_model(&config);
            // Proxy routes start their background tasks on the current runtime (not driven
            // here: only the building is checked).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let _entered = rt.enter();
            if let Err(e) = Frontend::new(
                &config,
                443,
                None,
                Default::default(),
                tokio::sync::watch::channel(false).1,
            ) {
                panic!("a validated config's request side does not build: {e}");
            }
        }
    }
}

/// One line, not empty, pointing into the file.
fn check_problem(p: &Problem, lines: usize) {
    assert!(!p.message.trim().is_empty(), "empty message: {p:?}");
    let shown = p.to_string();
    assert!(
        !shown.contains(['\n', '\r']),
        "a problem is shown on one line: {shown:?}"
    );
    if let Location::File { line, .. } = p.location {
        assert!(
            (1..=lines + 1).contains(&line),
            "line {line} of a {lines}-line file: {shown}"
        );
    }
}

/// What serving code takes for granted.
fn check_model(c: &Config) {
    assert!((1..=1024).contains(&c.workers), "workers {}", c.workers);
    assert!(!c.sites.is_empty(), "a config without sites");
    assert!(c.default_site < c.sites.len(), "default_site out of range");
    if let Some(od) = &c.on_demand {
        assert!(od.site < c.sites.len(), "on_demand.site out of range");
    }
    let h = &c.http;
    assert!(h.h2_max_concurrent_streams >= 1);
    for w in [h.h2_stream_window, h.h2_connection_window] {
        assert!((65_535..=(1 << 31) - 1).contains(&w), "HTTP/2 window {w}");
    }
    assert!((1024..=1 << 20).contains(&c.limits.max_header_bytes));
    for stream in &c.streams {
        assert!(
            !stream.listen.is_empty(),
            "stream {:?} without listeners",
            stream.name
        );
        assert!(
            !stream.routes.is_empty(),
            "stream {:?} without routes",
            stream.name
        );
        for route in &stream.routes {
            if let crate::config::stream::StreamMode::Terminate { cert, .. } = route.mode {
                assert!(
                    cert < stream.certs.len(),
                    "stream {:?}: certificate index",
                    stream.name
                );
            }
        }
        for cert in &stream.certs {
            assert!(!cert.hosts.is_empty(), "{} without names", cert.name);
        }
    }
    for site in &c.sites {
        assert!(!site.hosts.is_empty(), "site {:?} without hosts", site.name);
        for (name, _) in &site.headers {
            // The server frames each message: a configured framing field would misframe
            // every body it is added to.
            assert!(
                *name != http::header::CONTENT_LENGTH && *name != http::header::TRANSFER_ENCODING,
                "site {:?} adds the header {name} to every response",
                site.name
            );
        }
        let mut last = usize::MAX;
        for route in &site.routes {
            let p = &route.prefix;
            assert!(
                p == "/" || (p.starts_with('/') && !p.ends_with('/')),
                "route prefix {p:?}"
            );
            assert!(p.len() <= last, "routes are longest prefix first");
            last = p.len();
            match &route.handler {
                Handler::Redirect(r) => assert!(r.status.is_redirection(), "{:?}", r.status),
                Handler::Respond(_) | Handler::Files(_) | Handler::Proxy(_) => {}
            }
        }
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        include_str!("../../portcullis.example.toml").to_string(),
        super::fixture::config_text(Path::new("/srv/www")),
    ];
    seeds.push(
        r#"[[site]]
name = "a"
hosts = ["a.test", "*.b.test", "127.0.0.1", "[::1]"]
root = "/"
headers = { x-a = "1" }
remove_headers = ["x-frame-options"]
hsts = { max_age = 10, include_subdomains = true }
[[site.route]]
path = "/api/"
redirect = { to = "https://{host}{uri}", status = 308 }
"#
        .to_string(),
    );
    seeds.push(
        r#"workers = 3
log_level = "debug,h2=off"
[listen]
https = ["0.0.0.0:8443", "[::]:8443"]
http = []
public_https_port = 443
[tls]
profile = "modern"
unknown_sni = "reject"
session_cache_size = 0
ticket_key_rotation = "6h"
[http]
h2_max_concurrent_streams = 10
h2_stream_window = 65535
[limits]
idle_timeout = "1m"
max_connections = 5
[acme]
email = "a@b.example"
ca = "letsencrypt-staging"
dns_hook = "/bin/true"
[on_demand]
site = "s"
allow = ["*.shop.test"]
[[site]]
name = "s"
hosts = ["shop.test"]
early_data = true
[[site.route]]
path = "/"
respond = { status = 404, body = "no", content_type = "text/plain" }
"#
        .to_string(),
    );
    seeds.into_iter().map(String::into_bytes).collect()
}
