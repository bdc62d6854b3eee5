//! Static files end to end, through TLS and the real server: index, validators, ranges,
//! precompressed variants, and a table of hostile paths sent byte for byte.

mod common;

use common::*;

const OUTSIDE_SECRET: &str = "SECRET-OUTSIDE-ROOT-7f3a91";
const DOTFILE_SECRET: &str = "HIDDEN-DOTFILE-9c1e44";
const GIT_SECRET: &str = "HIDDEN-GIT-CONFIG-51d0";
const HELLO_TXT: &str = "hello world\n";
const INDEX_HTML: &str = "<!doctype html><h1>home page</h1>\n";
const CSS: &str = "body { color: black; }\n";
const CSS_BR: &[u8] = b"\x0b\x02\x80BROTLI-VARIANT-BYTES\x03";
const CSS_GZ: &[u8] = b"\x1f\x8bGZIP-VARIANT-BYTES";

/// `www/` is the document root; `outside.txt` sits next to it.
fn static_env() -> TestEnv {
    let env = TestEnv::new();
    env.write("outside.txt", OUTSIDE_SECRET);
    env.write("outside_dir/secret.txt", OUTSIDE_SECRET);
    env.write("www/index.html", INDEX_HTML);
    env.write("www/hello.txt", HELLO_TXT);
    env.write("www/.secret", DOTFILE_SECRET);
    env.write("www/.git/config", GIT_SECRET);
    env.write("www/style.css", CSS);
    env.write("www/style.css.br", CSS_BR);
    env.write("www/style.css.gz", CSS_GZ);
    env.write("www/sub/page.html", "<p>sub page</p>\n");
    let www = env.path("www");
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, www.join(name)).unwrap();
    };
    link(std::path::Path::new("../outside.txt"), "link_out");
    link(&env.path("outside.txt"), "link_abs");
    link(std::path::Path::new(".."), "dirlink");
    link(std::path::Path::new("../outside_dir"), "dirlink2");
    link(std::path::Path::new("hello.txt"), "inside_link");
    link(std::path::Path::new("/proc/self/root"), "proclink");
    env
}

const STATIC_SITE: &str = r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
root = "www"
[[site.route]]
path = "/assets"
files = { root = "www", strip_prefix = true }
"#;

fn start_static() -> TestServer {
    static_env().start(STATIC_SITE)
}

#[tokio::test]
async fn index_html_is_served_at_root() {
    let srv = start_static();
    for alpn in ["http/1.1", "h2"] {
        let r = get(srv.https, Some(ALPHA), "/", alpn).await;
        assert_eq!(r.status, 200, "{alpn}");
        assert_eq!(r.text(), INDEX_HTML);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{:?}",
            r.header("content-type")
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn plain_file_is_served_with_validators() {
    let srv = start_static();
    let r = get(srv.https, Some(ALPHA), "/hello.txt", "http/1.1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), HELLO_TXT);
    assert!(r.header("etag").is_some());
    assert!(r.header("last-modified").is_some());
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-length"), Some("12"));
}

#[tokio::test]
async fn etag_then_if_none_match_gives_304() {
    let srv = start_static();
    for alpn in ["http/1.1", "h2"] {
        let first = get(srv.https, Some(ALPHA), "/hello.txt", alpn).await;
        let etag = first.header("etag").expect("ETag").to_string();
        let cfg = ClientOpts::default().alpn(&[alpn]).build();
        let second = request(
            srv.https,
            cfg,
            Some(ALPHA),
            Req::get(ALPHA, "/hello.txt").header("if-none-match", &etag),
        )
        .await
        .unwrap();
        assert_eq!(second.status, 304, "{alpn}");
        assert!(second.body.is_empty(), "304 with a body ({alpn})");
        assert_eq!(second.header("etag"), Some(etag.as_str()));
    }
}

#[tokio::test]
async fn if_modified_since_gives_304() {
    let srv = start_static();
    let first = get(srv.https, Some(ALPHA), "/hello.txt", "http/1.1").await;
    let lm = first.header("last-modified").unwrap().to_string();
    let r = request(
        srv.https,
        ClientOpts::default().build(),
        Some(ALPHA),
        Req::get(ALPHA, "/hello.txt").header("if-modified-since", &lm),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 304);
}

#[tokio::test]
async fn range_bytes_0_4_gives_206() {
    let srv = start_static();
    for alpn in ["http/1.1", "h2"] {
        let cfg = ClientOpts::default().alpn(&[alpn]).build();
        let r = request(
            srv.https,
            cfg,
            Some(ALPHA),
            Req::get(ALPHA, "/hello.txt").header("range", "bytes=0-4"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 206, "{alpn}");
        assert_eq!(r.text(), "hello");
        assert_eq!(r.header("content-range"), Some("bytes 0-4/12"));
        assert_eq!(r.header("content-length"), Some("5"));
    }
}

#[tokio::test]
async fn unsatisfiable_range_gives_416() {
    let srv = start_static();
    let r = request(
        srv.https,
        ClientOpts::default().build(),
        Some(ALPHA),
        Req::get(ALPHA, "/hello.txt").header("range", "bytes=100-200"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */12"));
}

#[tokio::test]
async fn precompressed_br_is_served_with_content_encoding_and_vary() {
    let srv = start_static();
    for alpn in ["http/1.1", "h2"] {
        let cfg = ClientOpts::default().alpn(&[alpn]).build();
        let r = request(
            srv.https,
            cfg,
            Some(ALPHA),
            Req::get(ALPHA, "/style.css").header("accept-encoding", "gzip, deflate, br"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{alpn}");
        assert_eq!(r.header("content-encoding"), Some("br"), "{alpn}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert_eq!(&r.body[..], CSS_BR);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/css")),
            "content type of the original file: {:?}",
            r.header("content-type")
        );
    }
}

#[tokio::test]
async fn precompressed_gzip_and_identity_variants() {
    let srv = start_static();
    let cfg = ClientOpts::default().build();
    let gz = request(
        srv.https,
        cfg.clone(),
        Some(ALPHA),
        Req::get(ALPHA, "/style.css").header("accept-encoding", "gzip"),
    )
    .await
    .unwrap();
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(&gz.body[..], CSS_GZ);
    let plain = request(srv.https, cfg, Some(ALPHA), Req::get(ALPHA, "/style.css"))
        .await
        .unwrap();
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    assert_eq!(plain.text(), CSS);
    assert_ne!(gz.header("etag"), plain.header("etag"), "variants differ");
}

#[tokio::test]
async fn directory_without_trailing_slash_redirects() {
    let srv = start_static();
    let r = get(srv.https, Some(ALPHA), "/sub?x=1", "http/1.1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/sub/?x=1"));
    let r = get(srv.https, Some(ALPHA), "/sub/", "http/1.1").await;
    assert_eq!(r.status, 404, "no index.html and no listing by default");
}

#[tokio::test]
async fn symlink_inside_root_is_served() {
    let srv = start_static();
    let r = get(srv.https, Some(ALPHA), "/inside_link", "http/1.1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), HELLO_TXT);
}

#[tokio::test]
async fn strip_prefix_route_serves_files_under_the_prefix() {
    let srv = start_static();
    let r = get(srv.https, Some(ALPHA), "/assets/hello.txt", "http/1.1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), HELLO_TXT);
}

#[tokio::test]
async fn non_get_methods_are_405_on_files() {
    let srv = start_static();
    let r = raw_tls(
        srv.https,
        Some(ALPHA),
        b"DELETE /hello.txt HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

/// Request targets that try to leave the document root or reach hidden files. Each is sent
/// exactly as written (no client-side normalization).
const NASTY_PATHS: &[&str] = &[
    "/../outside.txt",
    "/../../../../../../etc/passwd",
    "/%2e%2e/outside.txt",
    "/%2E%2E/outside.txt",
    "/.%2e/outside.txt",
    "/%2e./outside.txt",
    "/..%2foutside.txt",
    "/..%2Foutside.txt",
    "/%2e%2e%2foutside.txt",
    "/%5c..%5coutside.txt",
    "/..%5coutside.txt",
    "/%2e%2e%5coutside.txt",
    "/sub/../../outside.txt",
    "/sub/%2e%2e/%2e%2e/outside.txt",
    "/./../outside.txt",
    "//..//outside.txt",
    "/hello.txt/../../outside.txt",
    "/%252e%252e/outside.txt",
    "/%c0%ae%c0%ae/outside.txt",
    "/%c0%af../outside.txt",
    "/..;/outside.txt",
    "/a%00b",
    "/hello.txt%00.html",
    "/%00/../outside.txt",
    "/.secret",
    "/%2esecret",
    "/.git/config",
    "/%2egit/config",
    "/sub/../.secret",
    "/link_out",
    "/link_abs",
    "/dirlink/outside.txt",
    "/dirlink/www/.secret",
    "/dirlink2/secret.txt",
    "/proclink/etc/passwd",
    "/.well-known/../../outside.txt",
    "/assets/../outside.txt",
    "/assets/..%2f..%2foutside.txt",
    "/assets/%2e%2e/outside.txt",
    "/assets/link_out",
    "/assets/.secret",
    "http://alpha.test/../outside.txt",
    "/%",
    "/%zz/outside.txt",
];

fn leaked(body: &[u8]) -> Option<&'static str> {
    let body = String::from_utf8_lossy(body);
    [OUTSIDE_SECRET, DOTFILE_SECRET, GIT_SECRET, "root:x:0:0"]
        .into_iter()
        .find(|m| body.contains(m))
}

#[tokio::test]
async fn hostile_paths_over_h1_are_all_refused() {
    let srv = start_static();
    assert!(NASTY_PATHS.len() >= 20);
    let mut failures = Vec::new();
    for path in NASTY_PATHS {
        let req = format!("GET {path} HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n");
        // A connection closed without any response also counts as refused.
        let (status, body) = match raw_tls(srv.https, Some(ALPHA), req.as_bytes()).await {
            Ok(r) => (r.status, r.body),
            Err(_) => (0, Vec::new()),
        };
        if (200..300).contains(&status) || (300..400).contains(&status) {
            failures.push(format!("{path}: status {status}"));
        }
        if let Some(m) = leaked(&body) {
            failures.push(format!("{path}: body contains {m}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hostile paths not refused:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn hostile_paths_over_h2_are_all_refused() {
    let srv = start_static();
    let cfg = ClientOpts::default().alpn(&["h2"]).build();
    let mut failures = Vec::new();
    for path in NASTY_PATHS.iter().filter(|p| p.starts_with('/')) {
        // Paths the client library itself cannot send (invalid URI) are skipped here; the
        // HTTP/1.1 table covers them byte for byte.
        if path.parse::<http::Uri>().is_err() {
            continue;
        }
        // An error (stream refused or reset) counts as refused.
        if let Ok(r) = request(srv.https, cfg.clone(), Some(ALPHA), Req::get(ALPHA, path)).await {
            if r.status < 400 {
                failures.push(format!("{path}: status {}", r.status));
            }
            if let Some(m) = leaked(&r.body) {
                failures.push(format!("{path}: body contains {m}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "hostile paths not refused over h2:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Several requests for one file on one connection (one worker thread): every response must be
// computed for its own request (encoding, conditionals, ranges, HEAD), and changes on disk
// must show up within about a second.
// ---------------------------------------------------------------------------------------------

async fn one_connection(
    srv: &TestServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_connect(srv.https, Some(ALPHA), ClientOpts::default().build())
        .await
        .unwrap()
}

/// One HTTP/1.1 request for `host` on an open connection, and its response.
async fn exchange(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: &mut Vec<u8>,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> RawResp {
    use tokio::io::AsyncWriteExt;
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    read_response(tls, buf, method == "HEAD").await.unwrap()
}

#[tokio::test]
async fn each_request_on_a_connection_gets_its_own_content_encoding() {
    let srv = start_static();
    let mut tls = one_connection(&srv).await;
    let mut buf = Vec::new();
    let cases: [(&str, Option<&str>, &[u8]); 5] = [
        ("Accept-Encoding: br\r\n", Some("br"), CSS_BR),
        ("", None, CSS.as_bytes()),
        ("Accept-Encoding: gzip\r\n", Some("gzip"), CSS_GZ),
        ("Accept-Encoding: identity\r\n", None, CSS.as_bytes()),
        ("Accept-Encoding: br, gzip\r\n", Some("br"), CSS_BR),
    ];
    for (headers, encoding, body) in cases {
        let r = exchange(&mut tls, &mut buf, ALPHA, "GET", "/style.css", headers).await;
        assert_eq!(r.status, 200, "{headers:?}");
        assert_eq!(r.header("content-encoding"), encoding, "{headers:?}");
        assert_eq!(r.body, body, "{headers:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{headers:?}");
    }
}

#[tokio::test]
async fn conditionals_ranges_and_head_after_a_plain_get_on_one_connection() {
    let srv = start_static();
    let mut tls = one_connection(&srv).await;
    let mut buf = Vec::new();
    let first = exchange(&mut tls, &mut buf, ALPHA, "GET", "/hello.txt", "").await;
    assert_eq!(first.status, 200);
    let etag = first.header("etag").unwrap().to_string();
    let lm = first.header("last-modified").unwrap().to_string();

    let r = exchange(
        &mut tls,
        &mut buf,
        ALPHA,
        "GET",
        "/hello.txt",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    let r = exchange(
        &mut tls,
        &mut buf,
        ALPHA,
        "GET",
        "/hello.txt",
        &format!("If-Modified-Since: {lm}\r\n"),
    )
    .await;
    assert_eq!(r.status, 304);

    let r = exchange(
        &mut tls,
        &mut buf,
        ALPHA,
        "GET",
        "/hello.txt",
        "Range: bytes=6-10\r\n",
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "world");
    assert_eq!(r.header("content-range"), Some("bytes 6-10/12"));

    let r = exchange(
        &mut tls,
        &mut buf,
        ALPHA,
        "GET",
        "/hello.txt",
        "If-Match: \"something-else\"\r\n",
    )
    .await;
    assert_eq!(r.status, 412);

    let r = exchange(&mut tls, &mut buf, ALPHA, "HEAD", "/hello.txt", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("12"));
    // No body was sent for HEAD: the next response parses cleanly.
    let r = exchange(&mut tls, &mut buf, ALPHA, "GET", "/hello.txt", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), HELLO_TXT);

    let r = exchange(&mut tls, &mut buf, ALPHA, "DELETE", "/hello.txt", "").await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn hidden_and_traversal_paths_stay_refused_after_real_files_were_served() {
    let srv = start_static();
    let mut tls = one_connection(&srv).await;
    let mut buf = Vec::new();
    for path in ["/hello.txt", "/", "/style.css"] {
        assert_eq!(
            exchange(&mut tls, &mut buf, ALPHA, "GET", path, "")
                .await
                .status,
            200
        );
    }
    for path in [
        "/.secret",
        "/link_out",
        "/%2e%2e/outside.txt",
        "/hello.txt/",
    ] {
        let r = exchange(&mut tls, &mut buf, ALPHA, "GET", path, "").await;
        assert!(r.status >= 400, "{path}: {}", r.status);
        assert!(leaked(&r.body).is_none(), "{path}");
    }
}

#[tokio::test]
async fn modified_file_is_served_fresh_within_about_a_second() {
    let srv = start_static();
    let mut tls = one_connection(&srv).await;
    let mut buf = Vec::new();
    let r = exchange(&mut tls, &mut buf, ALPHA, "GET", "/hello.txt", "").await;
    assert_eq!(r.text(), HELLO_TXT);
    srv.env
        .write("www/hello.txt", "changed content, longer than before\n");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = exchange(&mut tls, &mut buf, ALPHA, "GET", "/hello.txt", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "changed content, longer than before\n");
    assert_ne!(r.header("etag"), None);
}

#[tokio::test]
async fn deleted_file_is_404_within_about_a_second() {
    let srv = start_static();
    let mut tls = one_connection(&srv).await;
    let mut buf = Vec::new();
    assert_eq!(
        exchange(&mut tls, &mut buf, ALPHA, "GET", "/hello.txt", "")
            .await
            .status,
        200
    );
    std::fs::remove_file(srv.env.path("www/hello.txt")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        exchange(&mut tls, &mut buf, ALPHA, "GET", "/hello.txt", "")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn two_sites_with_the_same_path_serve_their_own_files() {
    let env = TestEnv::new();
    env.write("www-a/same.txt", "site alpha\n");
    env.write("www-b/same.txt", "site beta\n");
    // One worker: both sites' requests go through the same thread.
    let srv = env.start_with_workers(
        1,
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
root = "www-a"

[[site]]
name = "beta"
hosts = ["beta.test"]
cert = "certs/beta.pem"
key = "certs/beta.key"
root = "www-b"
"#,
    );
    for _ in 0..2 {
        let a = get(srv.https, Some(ALPHA), "/same.txt", "http/1.1").await;
        let b = get(srv.https, Some(BETA), "/same.txt", "http/1.1").await;
        assert_eq!(a.text(), "site alpha\n");
        assert_eq!(b.text(), "site beta\n");
    }
}

/// Static answers carry their own site's headers on every path: a cached file's ready header
/// map (200 and HEAD), conditionals and ranges answered from the cache, a large file read
/// from disk, and errors. Two sites share one root and one worker thread, so a header map made
/// for one site must not answer for the other. A site header the file sets itself
/// (`Content-Type`) leaves the file's value, and an overridden default is not duplicated.
#[tokio::test]
async fn site_headers_are_on_every_static_answer_cached_or_not() {
    let env = TestEnv::new();
    env.write("www/hello.txt", HELLO_TXT);
    env.write("www/big.bin", vec![b'x'; 100 * 1024]);
    let site = |name: &str, value: &str| {
        format!(
            r#"
[[site]]
name = "{name}"
hosts = ["{name}.test"]
cert = "certs/{name}.pem"
key = "certs/{name}.key"
root = "www"
[site.headers]
"X-Site" = "{value}"
"X-Frame-Options" = "DENY"
"Content-Type" = "text/x-site"
"#
        )
    };
    let srv = env.start_with_workers(
        1,
        &format!(
            "{}{}",
            site("alpha", "from-alpha"),
            site("beta", "from-beta")
        ),
    );
    for (host, value) in [
        (ALPHA, "from-alpha"),
        (BETA, "from-beta"),
        (ALPHA, "from-alpha"),
    ] {
        let mut tls = tls_connect(srv.https, Some(host), ClientOpts::default().build())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let first = exchange(&mut tls, &mut buf, host, "GET", "/hello.txt", "").await;
        let etag = first.header("etag").unwrap().to_string();
        let answers = [
            ("GET", "/hello.txt", String::new(), 200),
            ("GET", "/hello.txt", String::new(), 200),
            ("HEAD", "/hello.txt", String::new(), 200),
            (
                "GET",
                "/hello.txt",
                format!("If-None-Match: {etag}\r\n"),
                304,
            ),
            ("GET", "/hello.txt", "Range: bytes=0-4\r\n".to_string(), 206),
            ("GET", "/big.bin", String::new(), 200),
            ("GET", "/missing.txt", String::new(), 404),
        ];
        let mut seen = vec![(first.status, first)];
        for (method, path, headers, _) in &answers {
            let r = exchange(&mut tls, &mut buf, host, method, path, headers).await;
            seen.push((r.status, r));
        }
        let expected = std::iter::once(200).chain(answers.iter().map(|a| a.3));
        for ((status, r), want) in seen.iter().zip(expected) {
            let what = format!("{host}: {status} {:?}", r.headers);
            assert_eq!(*status, want, "{what}");
            assert_eq!(r.header("x-site"), Some(value), "{what}");
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{what}"
            );
            assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
            let count = |name: &str| {
                r.headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .count()
            };
            assert_eq!(count("x-frame-options"), 1, "{what}");
            if want == 200 || want == 206 {
                assert_ne!(r.header("content-type"), Some("text/x-site"), "{what}");
                assert_eq!(count("content-type"), 1, "{what}");
            }
        }
        assert_eq!(seen[1].1.text(), HELLO_TXT);
        assert_eq!(seen[3].1.header("content-length"), Some("12"), "HEAD");
        assert_eq!(seen[5].1.text(), "hello");
        assert_eq!(seen[6].1.body.len(), 100 * 1024);
    }
}
