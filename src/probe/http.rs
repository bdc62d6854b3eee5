//! The HTTP side: what the page answers over the handshake just made (HTTP/2 or HTTP/1.1 by
//! ALPN), the HSTS and security headers, and where redirects lead (loops, HTTPS → HTTP).

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::report::{Check, Report};
use super::Options;

/// Redirects followed before the chain counts as a loop (Chromium gives up after 20).
pub(super) const MAX_REDIRECTS: usize = 20;

/// HSTS max-age browsers' preload list asks for (one year).
const HSTS_YEAR: u64 = 31_536_000;

/// HTML bodies are kept up to this size for the page's checks (mixed content); the rest is
/// not read.
pub(super) const MAX_PAGE: usize = 2 * 1024 * 1024;

/// One response: status, headers, and the body when it is HTML (other bodies are read up to
/// [`MAX_PAGE`] and dropped).
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    /// The first [`MAX_PAGE`] bytes of a `text/html` body.
    pub html: Option<Bytes>,
    /// The body was longer than [`MAX_PAGE`].
    pub truncated: bool,
}

/// Whether `headers` announce an HTML body.
fn is_html(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
}

/// Reads a response's body up to [`MAX_PAGE`]: kept when `keep`, dropped otherwise. An error
/// mid-body ends it (what arrived is judged).
async fn read_body(parts: http::response::Parts, mut body: hyper::body::Incoming) -> Answer {
    let keep = is_html(&parts.headers);
    let mut buf = bytes::BytesMut::new();
    let mut read = 0usize;
    let mut truncated = false;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if keep {
            let room = MAX_PAGE.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
        read += data.len();
        if read > MAX_PAGE {
            truncated = true;
            break;
        }
    }
    Answer {
        status: parts.status,
        headers: parts.headers,
        html: keep.then(|| buf.freeze()),
        truncated,
    }
}

/// Sends `GET path` for `host` over an established TLS stream.
pub(super) async fn get<S>(
    stream: S,
    h2: bool,
    host: &str,
    path: &str,
    opts: &Options,
) -> Result<Answer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let req = |uri: Uri| {
        Request::get(uri)
            .header(
                header::USER_AGENT,
                concat!("portcullis-probe/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "text/html,*/*")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))
    };
    let work = async {
        if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2: {e}"))?;
            tokio::spawn(conn);
            let uri: Uri = format!("https://{host}{path}")
                .parse()
                .map_err(|e| format!("bad path {path}: {e}"))?;
            let resp = send
                .send_request(req(uri)?)
                .await
                .map_err(|e| format!("HTTP/2: {e}"))?;
            let (parts, body) = resp.into_parts();
            Ok(read_body(parts, body).await)
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1: {e}"))?;
            tokio::spawn(conn);
            let uri: Uri = path.parse().map_err(|e| format!("bad path {path}: {e}"))?;
            let mut r = req(uri)?;
            r.headers_mut().insert(
                header::HOST,
                http::HeaderValue::from_str(host).map_err(|e| format!("bad host: {e}"))?,
            );
            let resp = send
                .send_request(r)
                .await
                .map_err(|e| format!("HTTP/1.1: {e}"))?;
            let (parts, body) = resp.into_parts();
            Ok(read_body(parts, body).await)
        }
    };
    tokio::time::timeout(opts.timeout, work)
        .await
        .map_err(|_| format!("no HTTP answer within {:?}", opts.timeout))?
}

/// The checks of the first answer: status, HSTS, security headers.
pub(super) fn answer_checks(a: &Answer, report: &mut Report) {
    report.fact("http_status", a.status.as_u16());
    let hsts = a
        .headers
        .get(header::STRICT_TRANSPORT_SECURITY)
        .and_then(|v| v.to_str().ok());
    match hsts {
        None => report.push(
            Check::warning("http.hsts", "no Strict-Transport-Security (HSTS) header")
                .cause("browsers may still try http:// first, where an attacker on the network can intercept")
                .fix("send Strict-Transport-Security: max-age=31536000 (portcullis does by default)"),
        ),
        Some(v) => {
            let lower = v.to_ascii_lowercase();
            let max_age = lower
                .split(';')
                .filter_map(|d| d.trim().strip_prefix("max-age="))
                .find_map(|n| n.trim_matches('"').parse::<u64>().ok())
                .unwrap_or(0);
            let subdomains = lower.split(';').any(|d| d.trim() == "includesubdomains");
            let preload = lower.split(';').any(|d| d.trim() == "preload");
            report.fact("hsts", v);
            report.fact("hsts_preload_ready", max_age >= HSTS_YEAR && subdomains && preload);
            if max_age >= HSTS_YEAR {
                report.push(Check::ok(
                    "http.hsts",
                    format!(
                        "HSTS: {v}{}",
                        if subdomains && preload { " (preload-ready)" } else { "" }
                    ),
                ));
            } else {
                report.push(
                    Check::warning("http.hsts", format!("HSTS max-age is {max_age} s, under a year: {v}"))
                        .fix("raise max-age to 31536000 once HTTPS works everywhere on the site"),
                );
            }
        }
    }
    let missing: Vec<&str> = [
        ("x-content-type-options", "X-Content-Type-Options"),
        ("referrer-policy", "Referrer-Policy"),
    ]
    .iter()
    .filter(|(n, _)| !a.headers.contains_key(*n))
    .map(|(_, shown)| *shown)
    .collect();
    if missing.is_empty() {
        report.push(Check::ok("http.headers", "security headers present"));
    } else {
        report.push(
            Check::warning("http.headers", format!("missing security headers: {}", missing.join(", ")))
                .fix("send X-Content-Type-Options: nosniff and a Referrer-Policy (portcullis does by default)"),
        );
    }
}
