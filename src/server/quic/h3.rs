//! The HTTP/3 protocol driver: requests from h3 (RFC 9114 framing, QPACK) to the one request
//! path every protocol shares ([`HttpsService::handle`]), and its answers back, head, body
//! and trailers, through QUIC's flow control.
//!
//! A request whose answer is ready in memory is written at once; an answer that arrives later
//! (the reverse proxy) is awaited on the request's own task. Response bodies are sent a frame
//! at a time: h3 takes the next frame only when QUIC's send buffer for the stream has room,
//! so a client that stops reading holds the body where it is (in the file, or at the backend),
//! not in server memory.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{header, Method, Response};
use http_body::Body as _;
use tokio::sync::{watch, Notify};

use crate::config::model::Limits;
use crate::http::request::H3Body;
use crate::http::{drop_connection_specific, HttpsService, RequestBody, TrackedBody};
use crate::limited;
use crate::ops::limit::{report_to_log, LineLimit};

static H3_ERROR: LineLimit = LineLimit::new("HTTP/3 error", report_to_log);

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Serves HTTP/3 on an established QUIC connection until it ends. `stop` (the server stops)
/// and `retire` (the connection's configuration is retired) send GOAWAY: the requests already
/// accepted finish, then the connection closes with `H3_NO_ERROR`.
pub async fn serve(
    conn: quinn::Connection,
    svc: HttpsService,
    max_field_section: u64,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
    mut retire: watch::Receiver<bool>,
) {
    let peer = svc.peer;
    let built = h3::server::builder()
        .max_field_section_size(max_field_section)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await;
    let mut h3c = match built {
        Ok(c) => c,
        Err(e) => {
            limited!(H3_ERROR, debug, %peer, error = %e, "HTTP/3 connection not set up");
            return;
        }
    };
    let header_timeout = limits.header_timeout;
    let mut closing = false;
    let tasks = Arc::new(Tasks::default());
    loop {
        // After our GOAWAY, the connection closes once the requests it let in are done (h3's
        // `accept` ends only after the client's GOAWAY).
        let drained = tasks.drained.notified();
        if closing && tasks.open.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; }, if !closing => {
                closing = true;
                let _ = h3c.shutdown(0).await;
            }
            _ = async { let _ = retire.wait_for(|r| *r).await; }, if !closing => {
                closing = true;
                let _ = h3c.shutdown(0).await;
            }
            _ = drained, if closing => {}
            accepted = h3c.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let open = TaskGuard::new(&tasks);
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let _open = open;
                        request(resolver, svc, header_timeout).await;
                    });
                }
                // The client said GOAWAY, and every accepted request has finished.
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        limited!(H3_ERROR, debug, %peer, error = %e, "HTTP/3 connection ended with an error");
                    }
                    return;
                }
            },
        }
    }
    conn.close(quinn::VarInt::from_u32(super::H3_NO_ERROR), b"");
}

/// The connection's request tasks still running.
#[derive(Default)]
struct Tasks {
    open: AtomicUsize,
    /// Told when the last one ends.
    drained: Notify,
}

/// Counts a request task while it lives.
struct TaskGuard(Arc<Tasks>);

impl TaskGuard {
    fn new(tasks: &Arc<Tasks>) -> Self {
        tasks.open.fetch_add(1, Ordering::AcqRel);
        TaskGuard(tasks.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// One request stream: its head, the handler's answer, the answer sent.
async fn request(resolver: Resolver, svc: HttpsService, header_timeout: std::time::Duration) {
    let resolved = tokio::time::timeout(header_timeout, resolver.resolve_request()).await;
    let (req, stream) = match resolved {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            limited!(H3_ERROR, debug, peer = %svc.peer, error = %e, "HTTP/3 request refused");
            return;
        }
        Err(_) => return, // the stream is reset when dropped
    };
    let (mut send, mut recv) = stream.split();
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A request without a body (most: the FIN came with its HEADERS) gets an empty one, as on
    // the other protocols; the stream is looked at once, without waiting.
    let first = if length == Some(0) {
        Peek::Ended
    } else {
        poll_fn(|cx| {
            use bytes::Buf;
            Poll::Ready(match recv.poll_recv_data(cx) {
                Poll::Ready(Ok(None)) => Peek::Ended,
                Poll::Ready(Ok(Some(mut b))) => Peek::Data(b.copy_to_bytes(b.remaining())),
                Poll::Ready(Err(_)) | Poll::Pending => Peek::Later,
            })
        })
        .await
    };
    let body = match first {
        Peek::Ended => RequestBody::Empty,
        Peek::Data(data) => RequestBody::H3(Box::new(H3Body::new(recv, length, Some(data)))),
        Peek::Later => RequestBody::H3(Box::new(H3Body::new(recv, length, None))),
    };
    let head = req.method() == Method::HEAD;
    let reply = svc.handle(req.map(|()| body));
    let resp = match reply.now() {
        Ok(r) => r,
        Err(later) => later.await,
    };
    if let Err(e) = respond(&mut send, resp, head).await {
        limited!(H3_ERROR, debug, peer = %svc.peer, error = %e, "HTTP/3 response not sent");
    }
}

/// What a request stream had right after its head.
enum Peek {
    Ended,
    Data(Bytes),
    Later,
}

/// Sends a response: head, body frames as the client's flow control lets them go, trailers.
async fn respond(
    send: &mut SendHalf,
    resp: Response<TrackedBody>,
    head: bool,
) -> Result<(), h3::error::StreamError> {
    let (mut parts, mut body) = resp.into_parts();
    if let Some(fields) = body.ready_head() {
        // A cached head shared with HTTP/2's encoder: h3 takes a map of its own.
        parts.headers = fields.clone();
        parts.headers.insert(header::DATE, crate::http::date::now());
    }
    crate::server::h2::clean_response_headers(&mut parts.headers, parts.status, head, &body);
    send.send_response(Response::from_parts(parts, ())).await?;
    loop {
        let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        crate::ops::metrics::bytes_out(data.len()); // metrics
                        send.send_data(data).await?;
                    }
                }
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        drop_connection_specific(&mut trailers);
                        send.send_trailers(trailers).await?;
                        return Ok(());
                    }
                }
            },
            Some(Err(_)) => {
                // The body failed midway (a backend went away): the client must not take
                // what it got for the whole answer.
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    send.finish().await
}
