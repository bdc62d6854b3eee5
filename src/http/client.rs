//! A minimal plain-HTTP/1.1 client for the few requests the server itself makes to trusted
//! endpoints: OCSP responders (RFC 6960 responders are http://) and the on-demand TLS `ask`
//! endpoint. One request per connection, a deadline, and a cap on the body.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

/// Sends one request to an `http://` URL and returns the status and body. Errors are one line
/// naming the URL.
pub async fn request(
    method: Method,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    max_body: usize,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    match tokio::time::timeout(timeout, send(method, url, content_type, body, max_body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url} did not answer within {timeout:?}")),
    }
}

async fn send(
    method: Method,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    max_body: usize,
) -> Result<(StatusCode, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url} is not an http:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let host_port = format!(
        "{}:{port}",
        host.trim_start_matches('[').trim_end_matches(']')
    );
    let stream = tokio::net::TcpStream::connect(&host_port)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| format!("{url}: reading the response: {e}"))?;
    Ok((status, body.to_bytes()))
}
