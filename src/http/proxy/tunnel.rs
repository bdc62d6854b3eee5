//! WebSockets through the proxy: an HTTP/1.1 `Upgrade` spliced to the backend's upgraded
//! connection, and an HTTP/2 extended CONNECT (RFC 8441) turned into an HTTP/1.1 upgrade to
//! the backend, its stream's DATA carrying the bytes both ways.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf, ReadHalf};

use crate::http::{has_token, RequestBody};

/// The GUID of RFC 6455 §1.3.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether an HTTP/1.1 request asks to become a WebSocket (RFC 6455 §4.1).
pub fn is_h1_websocket(parts: &http::request::Parts) -> bool {
    parts.method == http::Method::GET
        && parts.version == http::Version::HTTP_11
        && has_token(&parts.headers, &http::header::CONNECTION, "upgrade")
        && has_token(&parts.headers, &http::header::UPGRADE, "websocket")
}

/// Whether an HTTP/2 request is an extended CONNECT for a WebSocket (RFC 8441 §4).
pub fn is_h2_websocket(parts: &http::request::Parts) -> bool {
    parts.method == http::Method::CONNECT
        && parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64) for the upgrade to the backend that
/// an extended CONNECT becomes.
pub fn new_key() -> HeaderValue {
    let mut raw = [0u8; 16];
    // aws-lc's DRBG does not fail on this platform; a zero key would still be a valid nonce.
    let _ = aws_lc_rs::rand::fill(&mut raw);
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

/// The `Sec-WebSocket-Accept` a backend must answer `key` with (RFC 6455 §4.2.2).
pub fn accept_for(key: &HeaderValue) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Splices a client's upgraded HTTP/1.1 connection to the backend's, both ways, until both
/// sides have closed (a half-close is passed on). Runs on its own task.
pub fn splice_h1(client: OnUpgrade, backend: OnUpgrade, backend_name: std::sync::Arc<str>) {
    tokio::spawn(async move {
        let (client, backend) = match (client.await, backend.await) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(backend = %backend_name, error = %e, "WebSocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(backend = %backend_name, error = %e, "WebSocket tunnel ended with an error");
        }
    });
}

/// Joins an HTTP/2 extended CONNECT stream to the backend's upgraded connection: the request
/// body (the client's DATA) is written to the backend on a task of its own, and the returned
/// body reads the backend's bytes for the response's DATA.
pub async fn join_h2(
    client_body: RequestBody,
    backend: OnUpgrade,
) -> Result<TunnelBody, hyper::Error> {
    let upgraded = backend.await?;
    let (rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
    tokio::spawn(async move {
        let mut body = client_body;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                if wr.write_all(&data).await.is_err() {
                    return;
                }
            }
        }
        // The client ended its stream: half-close toward the backend.
        let _ = wr.shutdown().await;
    });
    Ok(TunnelBody {
        rd,
        buf: BytesMut::new(),
        done: false,
    })
}

/// The backend's side of a tunnel as a response body.
pub struct TunnelBody {
    rd: ReadHalf<TokioIo<Upgraded>>,
    buf: BytesMut,
    done: bool,
}

/// How much of the backend's bytes one DATA frame carries at most.
const CHUNK: usize = 16 * 1024;

impl http_body::Body for TunnelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // Zeroed, not uninitialised: the crate has no unsafe code (a memset of 16 KiB per read).
        this.buf.resize(CHUNK, 0);
        let mut read = ReadBuf::new(&mut this.buf[..]);
        match Pin::new(&mut this.rd).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    this.done = true;
                    return Poll::Ready(None);
                }
                this.buf.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
            }
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        let key = http::HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(super::accept_for(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
