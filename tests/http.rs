//! HTTP as a client sees it: HTTP/1.1 and HTTP/2 responses, security and per-site headers,
//! port-80 redirects, misdirected requests (421), HEAD, timeouts, size and connection limits,
//! and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// alpha: `/hello` (fixed body), `/old` (redirect), nothing at `/` (→ 404); beta: `/` fixed.
const SITES: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/hello"
respond = { status = 200, body = "hello from alpha", content_type = "text/plain; charset=utf-8" }
[[site.route]]
path = "/old"
redirect = { to = "https://www.alpha.test/new?from={uri}", status = 308 }

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = { status = 200, body = "beta" }
"#;

const HELLO: &str = "hello from alpha";

fn with(prefix: &str) -> String {
    format!("{prefix}\n{SITES}")
}

/// [`SITES`] with a fixed response of `body` at alpha's `/big`.
fn with_big_route(body: &str) -> String {
    SITES.replacen(
        "[[site.route]]\npath = \"/old\"",
        &format!("[[site.route]]\npath = \"/big\"\nrespond = {{ status = 200, body = \"{body}\" }}\n[[site.route]]\npath = \"/old\""),
        1,
    )
}

/// The four default security headers, with their default values. HSTS is sent by default to
/// sites with public names only: the `alpha.test` and `beta.test` of most tests are local
/// names and get none ([`assert_security_headers`]); `example.com` tests have it.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("strict-transport-security", "max-age=31536000"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "SAMEORIGIN"),
];

/// The default security headers of a site with local names only: no HSTS.
fn assert_security_headers(what: &str, get: impl Fn(&str) -> Option<String>) {
    assert_eq!(
        get(SECURITY_HEADERS[0].0),
        None,
        "{what}: HSTS on a local name without [site.hsts]"
    );
    for (name, value) in &SECURITY_HEADERS[1..] {
        assert_eq!(
            get(name).as_deref(),
            Some(*value),
            "{what}: header {name} missing or wrong"
        );
    }
}

/// A public name (`example.com`, a test-PKI certificate): fixed response at `/hello`, static
/// files at `/files` (`small.txt`), a redirect at `/old`; `beta.test` beside it.
const PUBLIC: &str = "example.com";

fn public_env() -> TestEnv {
    let env = TestEnv::new();
    env.write_chain("example", &pki().leaf(&[PUBLIC], Alg::Ecdsa));
    env.write("www/small.txt", "small file");
    env
}

fn public_site(hsts: &str) -> String {
    format!(
        r#"
[[site]]
name = "public"
hosts = ["{PUBLIC}"]
cert = "certs/example.pem"
key = "certs/example.key"
{hsts}
[[site.route]]
path = "/hello"
respond = {{ status = 200, body = "hello" }}
[[site.route]]
path = "/files"
files = {{ root = "www", strip_prefix = true }}
[[site.route]]
path = "/old"
redirect = {{ to = "https://{PUBLIC}/new", status = 308 }}

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[[site.route]]
path = "/"
respond = {{ status = 200, body = "beta" }}
"#
    )
}

/// A site with a public name sends HSTS by default on every kind of HTTPS response (fixed,
/// static file from the cached head, redirect, 404, 421 for another site's Host), over both
/// protocols; the local site beside it sends none, and port 80 never does.
#[tokio::test]
async fn hsts_is_on_by_default_for_public_names_and_off_for_local_ones() {
    let srv = public_env().start(&public_site(""));
    for alpn in ["http/1.1", "h2"] {
        for (path, status) in [
            ("/hello", 200),
            ("/files/small.txt", 200),
            ("/files/small.txt", 200),
            ("/old", 308),
            ("/nothing", 404),
        ] {
            let r = get(srv.https, Some(PUBLIC), path, alpn).await;
            assert_eq!(r.status, status, "{path} over {alpn}");
            for (name, value) in SECURITY_HEADERS {
                assert_eq!(
                    r.header(name),
                    Some(value),
                    "{path} over {alpn}: header {name}"
                );
            }
        }
        let cfg = ClientOpts::default().alpn(&[alpn]).build();
        let r = request(srv.https, cfg, Some(PUBLIC), Req::get(BETA, "/"))
            .await
            .unwrap();
        assert_eq!(r.status, 421);
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        let local = get(srv.https, Some(BETA), "/", alpn).await;
        assert_eq!(local.status, 200);
        assert_eq!(local.header("strict-transport-security"), None, "{alpn}");
        assert_eq!(local.header("x-content-type-options"), Some("nosniff"));
    }
    let r = raw_tcp(
        srv.http(),
        b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("strict-transport-security"), None, "port 80");
}

/// Explicit HSTS configuration wins for local names.
#[tokio::test]
async fn explicit_hsts_applies_to_local_names() {
    let srv = start(&SITES.replacen(
        "[[site.route]]",
        "[site.hsts]\nenabled = true\n[[site.route]]",
        1,
    ));
    let r = get(srv.https, Some(ALPHA), "/hello", "h2").await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let r = get(srv.https, Some(BETA), "/", "h2").await;
    assert_eq!(r.header("strict-transport-security"), None);
}

// ---------------------------------------------------------------------------------------------
// Basic responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h1_get_returns_the_respond_route_body() {
    let srv = start(SITES);
    let r = get(srv.https, Some(ALPHA), "/hello", "http/1.1").await;
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), HELLO);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("16"));
}

#[tokio::test]
async fn h2_get_returns_the_respond_route_body() {
    let srv = start(SITES);
    let r = get(srv.https, Some(ALPHA), "/hello", "h2").await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), HELLO);
}

#[tokio::test]
async fn route_prefix_matches_on_segment_boundaries() {
    let srv = start(SITES);
    assert_eq!(
        get(srv.https, Some(ALPHA), "/hello/x", "http/1.1")
            .await
            .status,
        200
    );
    assert_eq!(
        get(srv.https, Some(ALPHA), "/hellox", "http/1.1")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn redirect_route_substitutes_the_request_uri() {
    let srv = start(SITES);
    let r = get(srv.https, Some(ALPHA), "/old/page?x=1", "http/1.1").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://www.alpha.test/new?from=/old/page?x=1")
    );
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_h1_connection() {
    let srv = start(SITES);
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..3 {
        tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut tls, &mut buf, false).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), HELLO);
    }
}

/// The connection's last response (HTTP/1.1 `Connection: close`, HTTP/1.0 without keep-alive;
/// the server holds it for the close_notify that follows) arrives whole and is followed by a
/// clean TLS close, small or larger than what is held, 200 or 404; an HTTP/1.0 request that
/// asks for keep-alive gets its response without the connection closing.
#[tokio::test]
async fn last_responses_arrive_whole_before_a_clean_tls_close() {
    let big = "b".repeat(40_000);
    let srv = start(&with_big_route(&big));
    let cfg = ClientOpts::default().build();
    let cases: [(&str, u16, &str); 5] = [
        (
            "GET /hello HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
            200,
            HELLO,
        ),
        (
            "GET /hello HTTP/1.1\r\nHost: alpha.test\r\nConnection: keep-alive, Close\r\n\r\n",
            200,
            HELLO,
        ),
        (
            "GET /hello HTTP/1.0\r\nHost: alpha.test\r\n\r\n",
            200,
            HELLO,
        ),
        (
            "GET /big HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
            200,
            &big,
        ),
        (
            "GET /nothing HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
            404,
            "",
        ),
    ];
    for (req, status, body) in cases {
        let mut tls = tls_connect(srv.https, Some(ALPHA), cfg.clone())
            .await
            .unwrap();
        tls.write_all(req.as_bytes()).await.unwrap();
        let (data, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
        assert_eq!(closed, Closed::Eof, "{req:?}: no clean TLS close");
        let (r, used) = parse_response(&data, false, true).unwrap().unwrap();
        assert_eq!(used, data.len(), "{req:?}: bytes after the response");
        assert_eq!(r.status, status, "{req:?}");
        if status == 200 {
            assert_eq!(r.text(), body, "{req:?}");
        }
    }
    // HTTP/1.0 with keep-alive: answered, and the connection stays for the next request.
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let mut buf = Vec::new();
    tls.write_all(b"GET /hello HTTP/1.0\r\nHost: alpha.test\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut tls, &mut buf, false).await.unwrap();
    assert_eq!((r.status, r.text()), (200, HELLO.to_string()));
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut tls, &mut buf, false).await.unwrap();
    assert_eq!((r.status, r.text()), (200, HELLO.to_string()));
}

/// Many HTTP/2 streams on one connection: bodies larger than the client's flow-control window
/// (their sending waits for WINDOW_UPDATEs, so it continues as a task) beside small responses
/// that are ready at once. Every response arrives whole.
#[tokio::test]
async fn h2_streams_waiting_for_window_and_ready_ones_all_complete() {
    use http_body_util::{BodyExt, Empty};
    let big = "w".repeat(200_000);
    let srv = start(&with_big_route(&big));
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(64 * 1024)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..24 {
        let mut sender = sender.clone();
        let path = if i % 4 == 0 { "/big" } else { "/hello" };
        streams.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://alpha.test{path}"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (path, status, body)
        }));
    }
    for s in streams {
        let (path, status, body) = tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .expect("a stream did not complete")
            .unwrap();
        assert_eq!(status, 200, "{path}");
        let want = if path == "/big" { big.as_str() } else { HELLO };
        assert!(body == want.as_bytes(), "{path}: {} bytes", body.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Security headers and per-site headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn security_headers_are_on_200_responses_h1_and_h2() {
    let srv = start(SITES);
    for alpn in ["http/1.1", "h2"] {
        let r = get(srv.https, Some(ALPHA), "/hello", alpn).await;
        assert_eq!(r.status, 200);
        assert_security_headers(&format!("200 over {alpn}"), |n| {
            r.header(n).map(str::to_string)
        });
    }
}

#[tokio::test]
async fn security_headers_are_on_404_responses() {
    let srv = start(SITES);
    let r = get(srv.https, Some(ALPHA), "/no/such/page", "http/1.1").await;
    assert_eq!(r.status, 404);
    assert_security_headers("404", |n| r.header(n).map(str::to_string));
}

#[tokio::test]
async fn security_headers_are_on_redirect_responses() {
    let srv = start(SITES);
    let r = get(srv.https, Some(ALPHA), "/old", "http/1.1").await;
    assert_eq!(r.status, 308);
    assert_security_headers("308", |n| r.header(n).map(str::to_string));
}

#[tokio::test]
async fn security_headers_are_on_421_responses() {
    let srv = start(SITES);
    let cfg = ClientOpts::default().build();
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(BETA, "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 421);
    assert_security_headers("421 (Host of another site)", |n| {
        r.header(n).map(str::to_string)
    });
}

/// A request no site can be found for (no SNI, unknown Host) still gets the site-independent
/// protections the README promises on "every HTTPS response". HSTS is left out on purpose: it
/// is a per-site policy (and browsers ignore it for IP addresses).
#[tokio::test]
async fn site_independent_security_headers_are_on_421_without_sni() {
    let srv = start(SITES);
    let r = raw_tls(
        srv.https,
        None,
        b"GET / HTTP/1.1\r\nHost: unknown.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
    for (name, value) in &SECURITY_HEADERS[1..] {
        assert_eq!(
            r.header(name),
            Some(*value),
            "421 for an unknown host without SNI: header {name} missing or wrong (headers: {:?})",
            r.headers
        );
    }
}

#[tokio::test]
async fn site_headers_override_remove_and_add() {
    let srv = start(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
remove_headers = ["Referrer-Policy"]
[site.headers]
"X-Frame-Options" = "DENY"
"X-Custom" = "hello"
"Strict-Transport-Security" = "max-age=60"
[[site.route]]
path = "/"
respond = { body = "ok" }
"#,
    );
    for alpn in ["http/1.1", "h2"] {
        let r = get(srv.https, Some(ALPHA), "/", alpn).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{alpn}");
        assert_eq!(r.header("x-custom"), Some("hello"), "{alpn}");
        assert_eq!(r.header("strict-transport-security"), Some("max-age=60"));
        assert_eq!(r.header("referrer-policy"), None, "removed ({alpn})");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(
            r.headers.get_all("x-frame-options").iter().count(),
            1,
            "overridden, not duplicated"
        );
    }
}

#[tokio::test]
async fn site_headers_apply_per_site() {
    let srv = start(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[site.hsts]
max_age = 600
[site.headers]
"X-Site" = "alpha"
[[site.route]]
path = "/"
respond = { body = "a" }

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
[site.hsts]
enabled = false
[[site.route]]
path = "/"
respond = { body = "b" }
"#,
    );
    let a = get(srv.https, Some(ALPHA), "/", "http/1.1").await;
    let b = get(srv.https, Some(BETA), "/", "http/1.1").await;
    assert_eq!(a.header("x-site"), Some("alpha"));
    assert_eq!(a.header("strict-transport-security"), Some("max-age=600"));
    assert_eq!(b.header("x-site"), None);
    assert_eq!(
        b.header("strict-transport-security"),
        None,
        "hsts.enabled = false"
    );
    assert_eq!(b.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn hsts_options_build_the_header_value() {
    let srv = start(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[site.hsts]
max_age = 63072000
include_subdomains = true
preload = true
[[site.route]]
path = "/"
respond = { body = "ok" }
"#,
    );
    let r = get(srv.https, Some(ALPHA), "/", "http/1.1").await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains; preload")
    );
}

#[tokio::test]
async fn csp_upgrade_insecure_requests_adds_the_csp_header() {
    let srv = start(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
csp_upgrade_insecure_requests = true
[[site.route]]
path = "/"
respond = { body = "ok" }
"#,
    );
    let r = get(srv.https, Some(ALPHA), "/", "http/1.1").await;
    assert_eq!(
        r.header("content-security-policy"),
        Some("upgrade-insecure-requests")
    );
    let plain = start(SITES);
    let r = get(plain.https, Some(ALPHA), "/hello", "http/1.1").await;
    assert_eq!(r.header("content-security-policy"), None, "off by default");
}

// ---------------------------------------------------------------------------------------------
// Port 80
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn port80_get_redirects_301_keeping_path_query_and_https_port() {
    let srv = start(SITES);
    let port = srv.https.port();
    for host in ["alpha.test", "alpha.test:8080", "ALPHA.test"] {
        let req = format!("GET /a/b?c=d HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw_tcp(srv.http(), req.as_bytes()).await.unwrap();
        assert_eq!(r.status, 301, "Host: {host}");
        assert_eq!(
            r.header("location").map(str::to_string),
            Some(format!("https://alpha.test:{port}/a/b?c=d")),
            "Host: {host}"
        );
    }
}

#[tokio::test]
async fn port80_head_redirects_301() {
    let srv = start(SITES);
    let r = raw_tcp(
        srv.http(),
        b"HEAD /x HTTP/1.1\r\nHost: beta.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 301);
}

#[tokio::test]
async fn port80_post_redirects_308() {
    let srv = start(SITES);
    let port = srv.https.port();
    let r = raw_tcp(
        srv.http(),
        b"POST /form?x=1 HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 3\r\n\r\na=b",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(format!("https://alpha.test:{port}/form?x=1"))
    );
}

#[tokio::test]
async fn port80_temporary_redirects_are_302_and_307() {
    let srv = start(&with("[http]\nredirect = \"temporary\""));
    let get = raw_tcp(
        srv.http(),
        b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(get.status, 302);
    let post = raw_tcp(
        srv.http(),
        b"POST / HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(post.status, 307);
    assert!(post.header("location").is_some());
}

#[tokio::test]
async fn port80_redirect_omits_port_443() {
    // `public_https_port` lives in [listen], which the prelude opens; write it by hand.
    let env = TestEnv::new();
    let cfg = format!(
        "workers = 1\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:0\"]\npublic_https_port = 443\n{SITES}"
    );
    let path = env.write_config_raw(&cfg);
    let (config, _) = env.load(&path).map_err(|p| format!("{p:?}")).unwrap();
    let server = portcullis::server::Server::start(config).unwrap();
    let http = server.http_addrs()[0];
    let r = raw_tcp(
        http,
        b"GET /p?q HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    std::thread::spawn(move || server.shutdown());
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://alpha.test/p?q"));
}

#[tokio::test]
async fn port80_unknown_host_gets_400_and_no_location() {
    let srv = start(SITES);
    for host in ["evil.example", "alpha.test.evil.example"] {
        let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = raw_tcp(srv.http(), req.as_bytes()).await.unwrap();
        assert_eq!(r.status, 400, "Host: {host}");
        assert_eq!(r.header("location"), None, "no open redirect for {host}");
    }
    // No Host at all in HTTP/1.1.
    let r = raw_tcp(srv.http(), b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("location"), None);
}

/// HTTP/1.0 has no Host requirement (old clients, load-balancer health checks): without one,
/// port 80 redirects to the default site's first name, as nginx does with its `server_name`,
/// never to a name the client chose. HTTP/1.1 requires Host (400), and a default site with
/// wildcard names only has no name to redirect to (400 saying what to send).
#[tokio::test]
async fn port80_http10_without_host_redirects_to_the_default_sites_name() {
    let srv = start(SITES);
    let port = srv.https.port();
    let r = raw_tcp(srv.http(), b"GET /a/b?c=d HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(format!("https://alpha.test:{port}/a/b?c=d"))
    );
    let post = raw_tcp(
        srv.http(),
        b"POST /form HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(post.status, 308);
    assert_eq!(
        post.header("location").map(str::to_string),
        Some(format!("https://alpha.test:{port}/form"))
    );

    let srv = start(&with("[tls]\ndefault_site = \"beta\""));
    let port = srv.https.port();
    let r = raw_tcp(srv.http(), b"GET /x HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(format!("https://beta.test:{port}/x"))
    );

    let srv = start(
        "[[site]]\nname = \"wild\"\nhosts = [\"*.example.test\"]\ncert = \"certs/wild.pem\"\nkey = \"certs/wild.key\"\n[[site.route]]\npath = \"/\"\nrespond = { body = \"wild\" }\n",
    );
    let r = raw_tcp(srv.http(), b"GET /x HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("location"), None);
    assert!(r.text().contains("Host"), "{}", r.text());
}

#[tokio::test]
async fn port80_responses_have_no_hsts() {
    let srv = start(SITES);
    for req in [
        &b"GET / HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: unknown.test\r\nConnection: close\r\n\r\n"[..],
        &b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n"[..],
    ] {
        let r = raw_tcp(srv.http(), req).await.unwrap();
        assert_eq!(
            r.header("strict-transport-security"),
            None,
            "HSTS over plain HTTP ({} response)",
            r.status
        );
    }
}

#[tokio::test]
async fn port80_unknown_acme_challenge_is_404_not_redirected() {
    let srv = start(SITES);
    let r = raw_tcp(
        srv.http(),
        b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("location"), None);
}

// ---------------------------------------------------------------------------------------------
// Requests without Host
// ---------------------------------------------------------------------------------------------

/// HTTP/1.0 has no Host requirement: such a request is served by the site the TLS handshake
/// chose (by SNI, or the default site without SNI), with that site's headers, as nginx does.
#[tokio::test]
async fn http10_without_host_is_served_by_the_site_the_handshake_chose() {
    let srv = start(SITES);
    let r = raw_tls(srv.https, Some(ALPHA), b"GET /hello HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, HELLO));
    assert_security_headers("HTTP/1.0 without Host", |n| r.header(n).map(str::to_string));
    let r = raw_tls(srv.https, Some(BETA), b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "beta"));
    // No SNI: the default site, the first one unless tls.default_site says otherwise.
    let r = raw_tls(srv.https, None, b"GET /hello HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, HELLO));
    let srv = start(&with("[tls]\ndefault_site = \"beta\""));
    let r = raw_tls(srv.https, None, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "beta"));
}

/// Without Host, `{host}` in a redirect route is the site's first name.
#[tokio::test]
async fn http10_without_host_fills_a_redirect_route_with_the_sites_first_name() {
    let srv = start(
        r#"
[[site]]
name = "alpha"
hosts = ["www.alpha.test", "alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/"
redirect = { to = "https://{host}/new{uri}", status = 301 }
"#,
    );
    let r = raw_tls(srv.https, Some(ALPHA), b"GET /p?q HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://www.alpha.test/new/p?q"));
}

/// HTTP/1.1 requires Host (RFC 9112 §3.2): without it, 400 whatever the handshake said.
#[tokio::test]
async fn http11_without_host_is_400() {
    let srv = start(SITES);
    for sni in [Some(ALPHA), None] {
        let r = raw_tls(
            srv.https,
            sni,
            b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "SNI {sni:?}");
        assert!(!r.text().contains(HELLO), "{}", r.text());
    }
}

// ---------------------------------------------------------------------------------------------
// Misdirected requests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn host_of_another_site_on_the_connection_is_421_h1() {
    let srv = start(SITES);
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"GET / HTTP/1.1\r\nHost: beta.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
    assert!(
        !r.text().contains("beta"),
        "beta's content leaked: {}",
        r.text()
    );
}

#[tokio::test]
async fn host_of_another_site_on_the_connection_is_421_h2() {
    let srv = start(SITES);
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let r = request(srv.https, cfg, Some(ALPHA), Req::get(BETA, "/"))
        .await
        .unwrap();
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn unknown_host_with_sni_is_421() {
    let srv = start(SITES);
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"GET /hello HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn unknown_host_without_sni_is_421() {
    let srv = start(SITES);
    let r = raw_tls(
        srv.https,
        None,
        b"GET /hello HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 421);
}

#[tokio::test]
async fn known_host_without_sni_is_served() {
    let srv = start(SITES);
    let r = raw_tls(
        srv.https,
        None,
        b"GET / HTTP/1.1\r\nHost: beta.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "beta");
}

// ---------------------------------------------------------------------------------------------
// HEAD
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn head_over_h2_has_content_length_and_no_body() {
    let srv = start(SITES);
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let r = request(
        srv.https,
        cfg,
        Some(ALPHA),
        Req::get(ALPHA, "/hello").method(Method::HEAD),
    )
    .await
    .unwrap();
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("16"));
    assert!(r.body.is_empty(), "HEAD got a body: {:?}", r.body);
}

#[tokio::test]
async fn head_over_h1_has_content_length_and_no_body() {
    let srv = start(SITES);
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    tls.write_all(b"HEAD /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut tls, &mut buf, true).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("16"));
    // If a body had been sent, it would now precede the next response.
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    let next = read_response(&mut tls, &mut buf, false).await.unwrap();
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), HELLO);
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn header_timeout_sends_408_then_closes() {
    let srv = start(&with("[limits]\nheader_timeout = \"1s\""));
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (data, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    let text = text(&data);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "expected a 408 response, got {text:?} ({closed:?})"
    );
    assert_ne!(
        closed,
        Closed::StillOpen,
        "connection must be closed after the 408"
    );
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "408 after {elapsed:?}, expected about 1 s"
    );
}

#[tokio::test]
async fn header_timeout_applies_to_a_slowly_dripped_request_head() {
    let srv = start(&with("[limits]\nheader_timeout = \"1s\""));
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    tls.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    // Keep sending a header byte every 200 ms: activity must not extend the deadline.
    let mut got = Vec::new();
    for i in 0..25 {
        let line = format!("X-{i}: y\r\n");
        if tls.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        let mut b = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
    }
    let (rest, _) = read_until_close(&mut tls, Duration::from_secs(2)).await;
    got.extend_from_slice(&rest);
    assert!(
        text(&got).starts_with("HTTP/1.1 408"),
        "got {:?}",
        text(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connection_that_never_sends_a_request_is_closed_after_header_timeout() {
    let srv = start(&with("[limits]\nheader_timeout = \"1s\""));
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert_ne!(closed, Closed::StillOpen);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let srv = start(&with("[limits]\nidle_timeout = \"1s\""));
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut tls, &mut buf, false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(r.header("connection"), Some("close"), "keep-alive expected");
    let started = Instant::now();
    let (data, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert_ne!(
        closed,
        Closed::StillOpen,
        "idle connection still open after 5 s"
    );
    assert!(data.is_empty(), "unexpected data: {:?}", text(&data));
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, expected about 1 s"
    );
}

/// Twenty idle keep-alive connections at once (the load makes the server's scheduling less
/// punctual): every one of them must be closed soon after `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_keep_alive_connections_under_load_are_all_closed_after_idle_timeout() {
    let srv = start(&with("[limits]\nidle_timeout = \"1s\""));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = srv.https;
        tasks.push(tokio::spawn(async move {
            let cfg = ClientOpts::default().build();
            let mut tls = tls_connect(addr, Some(ALPHA), cfg).await.unwrap();
            tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
                .await
                .unwrap();
            let r = read_response(&mut tls, &mut Vec::new(), false)
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            let started = Instant::now();
            let (_, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
            (closed, started.elapsed())
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        let (closed, elapsed) = t.await.unwrap();
        if closed == Closed::StillOpen || elapsed > Duration::from_secs(3) {
            open.push(elapsed);
        }
    }
    assert!(
        open.is_empty(),
        "{} of 20 idle connections were not closed within 3 s of idle_timeout = 1s",
        open.len()
    );
}

#[tokio::test]
async fn idle_h2_connection_is_closed_after_idle_timeout() {
    let srv = start(&with("[limits]\nidle_timeout = \"1s\""));
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let mut tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    // The client preface and an empty SETTINGS frame; then nothing.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert_ne!(closed, Closed::StillOpen, "idle h2 connection still open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Size limits
// ---------------------------------------------------------------------------------------------

async fn big_header_status(srv: &TestServer, header_len: usize) -> u16 {
    let req = format!(
        "GET /hello HTTP/1.1\r\nHost: alpha.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(header_len)
    );
    raw_tls(srv.https, Some(ALPHA), req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{header_len}-byte header: {e}"))
        .status
}

#[tokio::test]
async fn request_headers_above_default_max_header_bytes_get_431() {
    let srv = start(SITES);
    assert_eq!(big_header_status(&srv, 10_000).await, 200, "10 KB < 16 KiB");
    assert_eq!(big_header_status(&srv, 20_000).await, 431, "20 KB > 16 KiB");
}

#[tokio::test]
async fn request_headers_above_configured_max_header_bytes_get_431() {
    let srv = start(&with("[limits]\nmax_header_bytes = 4096"));
    assert_eq!(big_header_status(&srv, 2_000).await, 200, "2 KB < 4 KiB");
    assert_eq!(
        big_header_status(&srv, 6_000).await,
        431,
        "a 6000-byte header with max_header_bytes = 4096"
    );
}

#[tokio::test]
async fn content_length_above_max_body_bytes_gets_413_h1() {
    let srv = start(&with("[limits]\nmax_body_bytes = 1000"));
    // Only the head is sent: the server must not wait for a body it will refuse.
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"POST /hello HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 2000\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    // At the limit: accepted.
    let ok = raw_tls(
        srv.https,
        Some(ALPHA),
        format!(
            "POST /hello HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{}",
            "x".repeat(1000)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn content_length_above_max_body_bytes_gets_413_h2() {
    let srv = start(&with("[limits]\nmax_body_bytes = 1000"));
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let mut req = Req::get(ALPHA, "/hello").method(Method::POST);
    req.body = bytes::Bytes::from(vec![b'x'; 2000]);
    let r = request(srv.https, cfg, Some(ALPHA), req).await.unwrap();
    assert_eq!(r.status, 413);
}

// ---------------------------------------------------------------------------------------------
// Connection limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn third_connection_over_max_connections_2_gets_503() {
    let srv = start(&with("[limits]\nmax_connections = 2"));
    let cfg = ClientOpts::default().build();
    let c1 = tls_connect(srv.https, Some(ALPHA), cfg.clone())
        .await
        .unwrap();
    let c2 = tls_connect(srv.https, Some(ALPHA), cfg.clone())
        .await
        .unwrap();
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    )
    .await
    .unwrap_or_else(|e| {
        panic!("over max_connections an HTTP/1.1 client must get a 503 response, but: {e}")
    });
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(!r.text().contains(HELLO));
    // Closing the two connections frees the slots again.
    drop((c1, c2));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = raw_tls(
            srv.https,
            Some(ALPHA),
            b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after closing",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn third_h2_connection_over_max_connections_2_gets_503() {
    let srv = start(&with("[limits]\nmax_connections = 2"));
    let cfg = ClientOpts::default().build();
    let _c1 = tls_connect(srv.https, Some(ALPHA), cfg.clone())
        .await
        .unwrap();
    let _c2 = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
    let h2 = ClientOpts::default().alpn(&["h2"]).build();
    let r = request(srv.https, h2, Some(ALPHA), Req::get(ALPHA, "/hello"))
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_download_complete() {
    const SIZE: usize = 24 * 1024 * 1024;
    let env = TestEnv::new();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    env.write("www/big.bin", &data);
    let mut srv = env.start(
        r#"
[limits]
shutdown_timeout = "20s"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
root = "www"
"#,
    );
    let addr = srv.https;
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(addr, Some(ALPHA), cfg).await.unwrap();
    tls.write_all(b"GET /big.bin HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    // Read only the start of the response, then shut down while the rest is in flight.
    let mut got = vec![0u8; 64 * 1024];
    let n = tls.read(&mut got).await.unwrap();
    got.truncate(n);
    let server = srv.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(Instant::now());
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "shutdown() returned while a download was still in flight"
    );
    let (rest, closed) = read_until_close(&mut tls, Duration::from_secs(15)).await;
    let download_done = Instant::now();
    got.extend_from_slice(&rest);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = text(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = &got[head_end..];
    assert_eq!(
        body.len(),
        SIZE,
        "in-flight download cut short by shutdown ({closed:?})"
    );
    assert!(body == &data[..], "body corrupted");
    let returned = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("shutdown() did not return after the download finished");
    assert!(
        returned.duration_since(download_done) < Duration::from_secs(3),
        "shutdown() returned {:?} after the download ended",
        returned.duration_since(download_done)
    );
    // After shutdown, nothing listens any more.
    let err = tokio::net::TcpStream::connect(addr).await;
    assert!(err.is_err(), "new connection accepted after shutdown()");
}

#[tokio::test]
async fn shutdown_returns_promptly_and_refuses_new_connections() {
    let mut srv = start(SITES);
    let (https, http) = (srv.https, srv.http());
    // An idle keep-alive connection must not hold shutdown up.
    let cfg = ClientOpts::default().build();
    let mut tls = tls_connect(https, Some(ALPHA), cfg).await.unwrap();
    tls.write_all(b"GET /hello HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut tls, &mut Vec::new(), false)
        .await
        .unwrap();
    let server = srv.take();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    let (_, closed) = read_until_close(&mut tls, Duration::from_secs(2)).await;
    assert_ne!(closed, Closed::StillOpen, "idle connection left open");
    for addr in [https, http] {
        let e = tokio::net::TcpStream::connect(addr).await;
        assert!(
            e.is_err(),
            "{addr} still accepts connections after shutdown"
        );
    }
}

/// One connection without SNI, whose requests name different sites in turn: each request is
/// answered by the site it names (the connection's remembered host/site pair must follow).
#[tokio::test]
async fn one_connection_serves_the_host_each_request_names() {
    use http_body_util::{BodyExt, Empty};
    let srv = start(TWO_SITES);
    let plan = [
        ("alpha.test", 200, "alpha"),
        ("beta.test", 200, "beta"),
        ("ALPHA.test.", 200, "alpha"),
        ("unknown.test", 421, ""),
        ("alpha.test", 200, "alpha"),
        ("alpha.test", 200, "alpha"),
        ("beta.test:443", 200, "beta"),
    ];
    for alpn in ["http/1.1", "h2"] {
        let cfg = ClientOpts::default().alpn(&[alpn]).no_name_check().build();
        let tls = tls_connect(srv.https, None, cfg).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        let results = if alpn == "h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut out = Vec::new();
            for (host, _, _) in plan {
                let req = http::Request::get(format!("https://{host}/"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                out.push((status, body));
            }
            out
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let mut out = Vec::new();
            for (host, _, _) in plan {
                let req = http::Request::get("/")
                    .header("host", host)
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                out.push((status, body));
            }
            out
        };
        for ((host, status, body), (got_status, got_body)) in plan.iter().zip(&results) {
            assert_eq!(*got_status, *status, "{alpn}: {host}");
            if *status == 200 {
                assert_eq!(&got_body[..], body.as_bytes(), "{alpn}: {host}");
            }
        }
    }
}
