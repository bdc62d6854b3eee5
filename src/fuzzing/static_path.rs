//! Static files: arbitrary request paths and conditional/range/encoding headers against a root
//! with symlinks leading out of it (see [`super::fixture::tree`]).
//!
//! Promises checked: `serve` never panics; unless a handler is configured to follow symlinks
//! out of the root, nothing from outside the root reaches a response (file contents or
//! listed names); a body of a whole file is exactly one of the root's files; the
//! `content-length` is the body's; HEAD has no body; every response carries the site's
//! headers. Both root confinements run: `openat2` and the canonicalize fallback.

use std::sync::OnceLock;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};

use super::fixture::{collect, tree, SECRET};
use super::{Input, Seed};
use crate::http::static_files::{StaticConfig, StaticFiles};

/// A handler and whether it may leave the root (`follow_symlinks_outside_root`).
struct Handler {
    files: StaticFiles,
    confined: bool,
}

const SITE_HEADER: HeaderName = HeaderName::from_static("x-fuzz-site");

fn handlers() -> &'static Vec<Handler> {
    static HANDLERS: OnceLock<Vec<Handler>> = OnceLock::new();
    HANDLERS.get_or_init(|| {
        let root = &tree().root;
        let mut out = Vec::new();
        // Every combination of the settings that change resolution or listing.
        for bits in 0u8..32 {
            let mut cfg = StaticConfig::new(root);
            cfg.browse = bits & 1 != 0;
            cfg.hidden_files = bits & 2 != 0;
            cfg.precompressed = bits & 4 != 0;
            cfg.follow_symlinks_outside_root = bits & 8 != 0 && bits & 16 == 0;
            cfg.cache_validity = if bits & 2 != 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            if bits & 1 != 0 && bits & 4 == 0 {
                cfg.index = vec!["missing.html".into(), "a.txt".into()];
            }
            let files = StaticFiles::new(cfg.clone())
                .expect("the root opens")
                .with_site_headers(vec![(SITE_HEADER, HeaderValue::from_static("1"))]);
            if bits & 16 != 0 {
                files.force_fallback_resolution();
            }
            out.push(Handler {
                files,
                confined: !cfg.follow_symlinks_outside_root,
            });
        }
        out
    })
}

/// Request headers the handler reads.
const HEADERS: [HeaderName; 8] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::ACCEPT_ENCODING,
    header::HOST,
];

pub fn static_path(data: &[u8]) {
    let mut input = Input::new(data);
    let handlers = handlers();
    let handler = &handlers[input.byte() as usize % handlers.len()];
    // Several requests: later ones may be answered from the small-file cache.
    for _ in 0..4 {
        if input.is_empty() {
            break;
        }
        let method = input.pick(&[Method::GET, Method::HEAD, Method::POST]);
        let path = String::from_utf8_lossy(input.short()).into_owned();
        let mut headers = HeaderMap::new();
        for _ in 0..input.byte() % 4 {
            let name = input.pick(&HEADERS);
            if let Ok(v) = HeaderValue::from_bytes(input.short()) {
                headers.append(name, v);
            }
        }
        let uri = path
            .parse::<http::Uri>()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        let mut req = Request::new(());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let (parts, ()) = req.into_parts();
        let resp = handler.files.serve(&parts, &path);
        check(handler, &method, &path, resp);
    }
}

fn check(
    handler: &Handler,
    method: &Method,
    path: &str,
    resp: http::Response<crate::http::body::Body>,
) {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    // A cached file's head travels with its body (`Body::Ready`), the response's map is empty.
    let head = body.ready_head().cloned().unwrap_or(parts.headers);
    let body = collect(body);
    let what = || format!("{method} {path:?} → {status}");
    if handler.confined {
        assert!(
            !body.windows(SECRET.len()).any(|w| w == SECRET),
            "{}: something from outside the root was served: {:?}",
            what(),
            String::from_utf8_lossy(&body)
        );
    }
    assert!(
        head.contains_key(&SITE_HEADER),
        "{}: no site headers",
        what()
    );
    if *method == Method::HEAD {
        assert!(body.is_empty(), "{}: a body for HEAD", what());
    } else if let Some(len) = head.get(header::CONTENT_LENGTH) {
        assert_eq!(
            len.to_str().ok().and_then(|l| l.parse::<usize>().ok()),
            Some(body.len()),
            "{}: content-length",
            what()
        );
    }
    let listing = head
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/html") && body.starts_with(b"<!"));
    if status == StatusCode::OK && *method == Method::GET && handler.confined && !listing {
        assert!(
            tree().contents.contains(&body),
            "{}: a body that is none of the root's files: {:?}",
            what(),
            String::from_utf8_lossy(&body)
        );
    }
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let paths: &[&str] = &[
        "/",
        "/a.txt",
        "/big.bin",
        "/sub/",
        "/sub",
        "/sub/c.json",
        "/sub/deeper/d.txt",
        "/out",
        "/outdir/secret.txt",
        "/outdir/",
        "/sub/out",
        "/abs",
        "/abs-in",
        "/updir/outside/secret.txt",
        "/magic",
        "/inlink",
        "/subdir-link/c.json",
        "/dangling",
        "/loop",
        "/fifo",
        "/b.css",
        "/.hidden",
        "/.well-known/acme/token",
        "/with%20space.txt",
        "/%2541.txt",
        "/%C3%A9t%C3%A9.txt",
        "/empty.txt",
        "/empty/",
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/sub/..%2F..%2Foutside/secret.txt",
        "/a.txt/",
    ];
    let mut out = Vec::new();
    let mut s = Seed::default();
    for (i, path) in paths.iter().enumerate() {
        let handler = (i * 7 % 32) as u8;
        s.byte(handler).byte(0).short(path.as_bytes()).byte(0);
        // The same path again, with headers.
        s.byte(0).short(path.as_bytes()).byte(3);
        s.byte(6).short(b"br;q=0.5, gzip");
        s.byte(0).short(b"bytes=2-5");
        s.byte(3).short(b"\"nope\", *");
        out.push(s.take());
    }
    s.byte(1)
        .byte(1)
        .short(b"/big.bin")
        .byte(2)
        .byte(0)
        .short(b"bytes=65530-65600")
        .byte(1)
        .short(b"\"x\"");
    out.push(s.take());
    out
}
