//! Response compression on a proxy route (`compress = true`), end to end: a client over TLS
//! (HTTP/1.1 and HTTP/2) in front of the in-process server, a hyper backend behind it. Each
//! coding decodes to the backend's bytes; what must not be compressed (an image, a range, a
//! body the backend encoded itself, a route without `compress`, HEAD) arrives untouched; a
//! streamed response is not held back by the encoder.

mod common;

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

// =============================================================================================
// The backend
// =============================================================================================

/// 200 KiB of JSON (compresses well, but not trivially).
fn json_doc() -> Bytes {
    let mut out = String::from("[");
    let mut i = 0u64;
    while out.len() < 200 * 1024 {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(&format!(
            "{{\"id\":{},\"name\":\"user{}\",\"score\":{},\"active\":{}}},",
            i % 1_000_000,
            i % 977,
            (i >> 20) % 10_000,
            i % 3 == 0
        ));
    }
    out.pop();
    out.push(']');
    Bytes::from(out)
}

/// A PNG signature followed by bytes that do not compress.
fn png() -> Bytes {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x = 0x2545f4914f6cdd1du64;
    while out.len() < 50_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    Bytes::from(out)
}

type RespBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).boxed()
}

/// The backend: `/data.json` (with `ETag` and byte ranges), `/small.json`, `/image.png`,
/// `/encoded` (gzip by the backend itself), `/events` (server-sent events: the second only once
/// `next` is notified).
struct Backend {
    addr: SocketAddr,
    next: Arc<Notify>,
}

async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(Notify::new());
    let json = json_doc();
    let image = png();
    let n = next.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (json, image, next) = (json.clone(), image.clone(), n.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (json, image, next) = (json.clone(), image.clone(), next.clone());
                    async move { Ok::<_, Infallible>(serve(req, json, image, next)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Backend { addr, next }
}

fn serve(
    req: Request<Incoming>,
    json: Bytes,
    image: Bytes,
    next: Arc<Notify>,
) -> Response<RespBody> {
    let b = Response::builder();
    match req.uri().path() {
        "/data.json" => {
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            let b = b
                .header("content-type", "application/json")
                .header("etag", "\"v1\"")
                .header("accept-ranges", "bytes");
            match range {
                Some((first, last)) if first <= last && last < json.len() => b
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(
                        "content-range",
                        format!("bytes {first}-{last}/{}", json.len()),
                    )
                    .body(full(json.slice(first..=last)))
                    .unwrap(),
                _ => b.body(full(json)).unwrap(),
            }
        }
        "/small.json" => b
            .header("content-type", "application/json")
            .body(full("{\"ok\": true}"))
            .unwrap(),
        "/image.png" => b
            .header("content-type", "image/png")
            .body(full(image))
            .unwrap(),
        "/encoded" => b
            .header("content-type", "text/plain")
            .header("content-encoding", "gzip")
            .body(full(gzip(&json)))
            .unwrap(),
        "/events" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(EVENT_1)))).await;
                next.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(EVENT_2)))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            b.header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        _ => b.status(404).body(full("not here")).unwrap(),
    }
}

const EVENT_1: &str = "event: tick\ndata: {\"n\": 1, \"text\": \"the first event\"}\n\n";
const EVENT_2: &str = "event: tick\ndata: {\"n\": 2, \"text\": \"the second event\"}\n\n";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

// =============================================================================================
// Server and client
// =============================================================================================

/// Site alpha: `/c/...` proxied with compression, `/plain/...` without (both strip the
/// prefix).
fn start_proxy(backend: &Backend) -> TestServer {
    let up = format!("upstreams = [\"http://{}\"]", backend.addr);
    start(&format!(
        r#"
[[site]]
name = "alpha"
hosts = ["alpha.test"]
cert = "certs/alpha.pem"
key = "certs/alpha.key"
[[site.route]]
path = "/c"
proxy = {{ {up}, compress = true, strip_prefix = true }}
[[site.route]]
path = "/plain"
proxy = {{ {up}, strip_prefix = true }}
"#
    ))
}

const ALPNS: [&str; 2] = ["http/1.1", "h2"];

async fn fetch(srv: &TestServer, alpn: &'static str, req: Req) -> Resp {
    let cfg = ClientOpts::default().alpn(&[alpn]).build();
    let what = format!("{alpn} {} {}", req.method, req.path);
    let r = request(srv.https, cfg, Some(ALPHA), req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r.version, expected_version(alpn), "{what}");
    r
}

fn expected_version(alpn: &str) -> http::Version {
    if alpn == "h2" {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    }
}

fn get_with(path: &str, accept: &str) -> Req {
    Req::get(ALPHA, path).header("accept-encoding", accept)
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gzip decodes");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("brotli decodes");
        }
        "zstd" => out = zstd::stream::decode_all(body).expect("zstd decodes"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

// =============================================================================================
// Tests
// =============================================================================================

#[tokio::test]
async fn each_coding_decodes_to_the_original() {
    let be = backend().await;
    let srv = start_proxy(&be);
    let original = json_doc();
    for alpn in ALPNS {
        for (accept, coding) in [
            ("gzip", "gzip"),
            ("br", "br"),
            ("zstd", "zstd"),
            ("gzip, deflate, br, zstd", "zstd"),
            ("gzip, br;q=0.9", "gzip"),
        ] {
            let r = fetch(&srv, alpn, get_with("/c/data.json", accept)).await;
            let what = format!("{alpn} Accept-Encoding: {accept}");
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.header("content-encoding"), Some(coding), "{what}");
            assert_eq!(r.header("content-length"), None, "{what}");
            assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{what}");
            assert_eq!(r.header("etag"), Some("W/\"v1\""), "{what}");
            assert_eq!(r.header("accept-ranges"), None, "{what}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
            assert!(
                r.body.len() < original.len() / 3,
                "{what}: {} compressed bytes for {}",
                r.body.len(),
                original.len()
            );
            assert!(
                decode(coding, &r.body) == original,
                "{what}: decoded body differs from the backend's"
            );
        }
    }
}

#[tokio::test]
async fn without_an_accepted_coding_the_body_is_plain_but_varies() {
    let be = backend().await;
    let srv = start_proxy(&be);
    let original = json_doc();
    for alpn in ALPNS {
        for accept in [
            None,
            Some("identity"),
            Some("deflate"),
            Some("gzip;q=0, *;q=0"),
        ] {
            let mut req = Req::get(ALPHA, "/c/data.json");
            if let Some(a) = accept {
                req = req.header("accept-encoding", a);
            }
            let r = fetch(&srv, alpn, req).await;
            let what = format!("{alpn} Accept-Encoding: {accept:?}");
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.header("content-encoding"), None, "{what}");
            assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{what}");
            assert_eq!(r.header("etag"), Some("\"v1\""), "{what}");
            assert!(r.body == original, "{what}: body differs");
        }
    }
}

#[tokio::test]
async fn what_must_not_be_compressed_passes_untouched() {
    let be = backend().await;
    let srv = start_proxy(&be);
    let original = json_doc();
    let image = png();
    let all = "gzip, br, zstd";
    for alpn in ALPNS {
        // An image: already compressed.
        let r = fetch(&srv, alpn, get_with("/c/image.png", all)).await;
        assert_eq!(r.status, 200, "{alpn} png");
        assert_eq!(r.header("content-encoding"), None, "{alpn} png");
        assert_eq!(r.header("vary"), None, "{alpn} png");
        assert_eq!(r.header("content-type"), Some("image/png"), "{alpn} png");
        assert!(r.body == image, "{alpn}: png body differs");

        // Too small to be worth it.
        let r = fetch(&srv, alpn, get_with("/c/small.json", all)).await;
        assert_eq!(r.header("content-encoding"), None, "{alpn} small");
        assert_eq!(r.header("content-length"), Some("12"), "{alpn} small");
        assert_eq!(r.text(), "{\"ok\": true}", "{alpn} small");

        // A range: the backend's 206 with its bytes, as they are.
        let r = fetch(
            &srv,
            alpn,
            get_with("/c/data.json", all).header("range", "bytes=100-4195"),
        )
        .await;
        assert_eq!(r.status, 206, "{alpn} range");
        assert_eq!(r.header("content-encoding"), None, "{alpn} range");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 100-4195/{}", original.len()).as_str()),
            "{alpn} range"
        );
        assert_eq!(r.header("etag"), Some("\"v1\""), "{alpn} range");
        assert!(r.body == original[100..=4195], "{alpn}: range body differs");

        // Encoded by the backend: not encoded twice.
        let r = fetch(&srv, alpn, get_with("/c/encoded", all)).await;
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{alpn} encoded");
        assert!(
            decode("gzip", &r.body) == original,
            "{alpn}: the backend's gzip body was changed"
        );

        // A route without `compress`.
        let r = fetch(&srv, alpn, get_with("/plain/data.json", all)).await;
        assert_eq!(r.status, 200, "{alpn} plain route");
        assert_eq!(r.header("content-encoding"), None, "{alpn} plain route");
        assert_eq!(r.header("vary"), None, "{alpn} plain route");
        assert_eq!(
            r.header("content-length"),
            Some(original.len().to_string().as_str()),
            "{alpn} plain route"
        );
        assert!(r.body == original, "{alpn}: plain route body differs");

        // The request asks that nothing on the way transforms the content.
        let r = fetch(
            &srv,
            alpn,
            get_with("/c/data.json", all).header("cache-control", "no-transform"),
        )
        .await;
        assert_eq!(r.header("content-encoding"), None, "{alpn} no-transform");
        assert!(r.body == original, "{alpn}: no-transform body differs");
    }
}

#[tokio::test]
async fn head_is_answered_with_the_backends_fields() {
    let be = backend().await;
    let srv = start_proxy(&be);
    let original = json_doc();
    for alpn in ALPNS {
        let r = fetch(
            &srv,
            alpn,
            get_with("/c/data.json", "gzip, br, zstd").method(Method::HEAD),
        )
        .await;
        assert_eq!(r.status, 200, "{alpn} HEAD");
        assert_eq!(r.header("content-encoding"), None, "{alpn} HEAD");
        assert_eq!(
            r.header("content-length"),
            Some(original.len().to_string().as_str()),
            "{alpn} HEAD"
        );
        assert!(r.body.is_empty(), "{alpn} HEAD has no body");
    }
}

/// Server-sent events through a compressing route: the first event arrives, decoded, while
/// the backend holds the second back; the second follows once released.
#[tokio::test]
async fn a_streamed_response_is_not_held_back() {
    let be = backend().await;
    let srv = start_proxy(&be);
    for alpn in ALPNS {
        for coding in ["gzip", "br", "zstd"] {
            let what = format!("{alpn} {coding}");
            let cfg = ClientOpts::default().alpn(&[alpn]).build();
            let tls = tls_connect(srv.https, Some(ALPHA), cfg).await.unwrap();
            let io = TokioIo::new(tls);
            let req = Request::builder()
                .uri(if alpn == "h2" {
                    "https://alpha.test/c/events"
                } else {
                    "/c/events"
                })
                .header("host", ALPHA)
                .header("accept-encoding", coding)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = if alpn == "h2" {
                let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                s.send_request(req).await.unwrap()
            } else {
                let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                s.send_request(req).await.unwrap()
            };
            assert_eq!(resp.status(), 200, "{what}");
            assert_eq!(
                resp.headers()
                    .get("content-encoding")
                    .and_then(|v| v.to_str().ok()),
                Some(coding),
                "{what}"
            );
            let mut body = resp.into_body();
            let mut decoder = Decoder::new(coding);
            // Only the first event is out; it must arrive and decode on its own.
            let first = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let frame = body
                        .frame()
                        .await
                        .expect("body ended before the first event")
                        .expect("body error");
                    if let Ok(d) = frame.into_data() {
                        let got = decoder.feed(&d);
                        if got.len() >= EVENT_1.len() {
                            return got.to_vec();
                        }
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{what}: the first event was held back"));
            assert_eq!(first, EVENT_1.as_bytes(), "{what}");
            be.next.notify_one();
            let rest = tokio::time::timeout(IO_TIMEOUT, body.collect())
                .await
                .unwrap_or_else(|_| panic!("{what}: the rest never came"))
                .unwrap()
                .to_bytes();
            decoder.feed(&rest);
            let mut both = EVENT_1.as_bytes().to_vec();
            both.extend_from_slice(EVENT_2.as_bytes());
            assert_eq!(decoder.finish(), both, "{what}");
        }
    }
}

/// A decoder fed piece by piece (what a browser does with a stream).
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    /// Also every byte fed, to check the whole frame at the end.
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>, Vec<u8>),
}

impl Decoder {
    fn new(coding: &str) -> Self {
        match coding {
            "gzip" => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            "br" => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            "zstd" => Decoder::Zstd(
                zstd::stream::write::Decoder::new(Vec::new()).unwrap(),
                Vec::new(),
            ),
            other => panic!("unexpected coding {other}"),
        }
    }

    /// Everything decoded so far.
    fn feed(&mut self, data: &[u8]) -> &[u8] {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Decoder::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Decoder::Zstd(d, fed) => {
                fed.extend_from_slice(data);
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }

    /// The whole content; fails unless the stream ended properly.
    fn finish(self) -> Vec<u8> {
        match self {
            Decoder::Gzip(d) => d.finish().unwrap(),
            Decoder::Br(d) => d.into_inner().expect("brotli stream complete"),
            Decoder::Zstd(_, fed) => {
                zstd::stream::decode_all(&fed[..]).expect("zstd frame complete")
            }
        }
    }
}
