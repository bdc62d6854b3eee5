//! The status page in a real browser (Debian chromium driven by playwright-core,
//! tests/browser/status-page.cjs): it lists the sites with their certificates and days left,
//! draws its charts, shows a failed handshake among the recent TLS errors and a proxy
//! backend's health, loads nothing from elsewhere, and the browser reports no CSP violation.
//!
//! Needs `chromium`, `node` and playwright-core in tests/browser/node_modules (`.ci/run`
//! installs them; `PLAYWRIGHT_CORE` may point at another copy). Set
//! `PORTCULLIS_STATUS_SCREENSHOT=docs/status-page.png` to refresh the README's screenshot.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::backends::Backend;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium() {
    let chromium = browser::chromium();
    let node = require_tool("node");
    let playwright = browser::playwright_core();
    let api = Backend::h1("api");
    let srv = start(&format!(
        r#"
[tls]
unknown_sni = "reject"

[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/api"
proxy = {{ upstreams = ["{}"], strip_prefix = true }}
[[site.route]]
path = "/"
respond = {{ status = 200, body = "alpha" }}

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = {{ status = 200, body = "beta" }}

[admin]
listen = "127.0.0.1:0"
"#,
        api.url()
    ));
    let admin = srv
        .server
        .as_ref()
        .and_then(|s| s.admin())
        .and_then(|a| a.local_addr())
        .expect("admin listener");
    // Traffic of every kind, and one refused handshake.
    for alpn in ["h2", "http/1.1"] {
        assert_eq!(
            get(srv.https, Some("alpha.test"), "/", alpn).await.status,
            200
        );
        assert_eq!(
            get(srv.https, Some("beta.test"), "/", alpn).await.status,
            200
        );
        assert_eq!(
            get(srv.https, Some("alpha.test"), "/api/name", alpn)
                .await
                .status,
            200
        );
    }
    let r = raw_tcp(
        srv.http(),
        b"GET / HTTP/1.1\r\nHost: beta.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status / 100, 3);
    let cfg = ClientOpts::default().no_name_check().build();
    assert!(tls_connect(srv.https, Some("intruder.test"), cfg)
        .await
        .is_err());

    let screenshot = std::env::var_os("PORTCULLIS_STATUS_SCREENSHOT")
        .map(|p| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|| srv.env.path("status-page.png"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status-page.cjs");
    let mut cmd = Command::new(node);
    cmd.arg(script)
        .env("URL", format!("http://{admin}/"))
        .env("EXPECT_SITES", "alpha,beta")
        .env("EXPECT_SNI", "intruder.test")
        .env("EXPECT_BACKEND", api.addr.unwrap().to_string())
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", chromium)
        .env("PLAYWRIGHT_CORE", playwright);
    let out =
        tokio::task::spawn_blocking(move || run_with_timeout(&mut cmd, Duration::from_secs(90)))
            .await
            .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "the browser check failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot of {} bytes",
        png.len()
    );
}
