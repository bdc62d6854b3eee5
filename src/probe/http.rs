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

/// One response: status and headers (the body is drained).
pub(super) struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
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
            let _ = body.collect().await;
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
            })
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
            let _ = body.collect().await;
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
            })
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
