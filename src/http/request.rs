//! The request body every handler sees, whatever the protocol.
//!
//! HTTP/1.1 bodies are hyper's [`Incoming`]. Our HTTP/2 connection (and HTTP/3) hands a
//! stream's DATA to the handler through a [`BodyPipe`]: the protocol driver pushes what it
//! receives, the handler (or the upstream connection sending it on) takes it, and what is taken
//! is credited back to the driver so it can reopen its flow-control window. Flow control is
//! the back-pressure: a pipe never holds more than the window the driver announced.
//!
//! A request without a body (`GET`, or HTTP/2 HEADERS with END_STREAM) is
//! [`RequestBody::Empty`]: nothing is allocated for it.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// A request body: none, hyper's (HTTP/1.1), or a protocol driver's pipe (HTTP/2, HTTP/3).
#[derive(Default)]
pub enum RequestBody {
    #[default]
    Empty,
    H1(Incoming),
    Pipe(PipeReader),
    /// An HTTP/3 request stream's receiving half: QUIC's stream flow control is the
    /// back-pressure (what is not read is not credited back to the client).
    H3(Box<H3Body>),
}

/// The body of an HTTP/3 request: DATA frames, then trailers, from h3's request stream.
pub struct H3Body {
    stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
    /// `Content-Length`, when the request has one.
    pub length: Option<u64>,
    read: u64,
    /// DATA read before the body was handed over (see `server::quic::h3`).
    first: Option<Bytes>,
    /// DATA is over (trailers, if any, are next).
    data_done: bool,
    done: bool,
}

impl H3Body {
    pub fn new(
        stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
        length: Option<u64>,
        first: Option<Bytes>,
    ) -> Self {
        H3Body {
            stream,
            length,
            first,
            read: 0,
            data_done: false,
            done: false,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        use bytes::Buf;
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(data) = self.first.take() {
            self.read += data.len() as u64;
            crate::ops::metrics::bytes_in(data.len()); // metrics
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if !self.data_done {
            match self.stream.poll_recv_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(mut buf))) => {
                    let data = buf.copy_to_bytes(buf.remaining());
                    self.read += data.len() as u64;
                    crate::ops::metrics::bytes_in(data.len()); // metrics
                    if self.length.is_some_and(|n| self.read > n) {
                        self.done = true;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "request body: more data than its content-length",
                        ))));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Ok(None)) => {
                    self.data_done = true;
                    if self.length.is_some_and(|n| self.read != n) {
                        self.done = true;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "request body: shorter than its content-length",
                        ))));
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(io::Error::other(format!("request body: {e}")))));
                }
            }
        }
        let trailers = std::task::ready!(self.stream.poll_recv_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(io::Error::other(format!(
                "request trailers: {e}"
            ))))),
        }
    }
}

impl RequestBody {
    /// Whether the body is known to be empty before anything is read.
    pub fn is_empty(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H1(b) => http_body::Body::is_end_stream(b),
            RequestBody::Pipe(p) => p.length == Some(0),
            RequestBody::H3(b) => b.length == Some(0),
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| io::Error::other(format!("request body: {e}"))),
            RequestBody::Pipe(p) => p.poll_frame(cx),
            RequestBody::H3(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H1(b) => b.is_end_stream(),
            RequestBody::Pipe(p) => p.is_end_stream(),
            RequestBody::H3(b) => b.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::H1(b) => b.size_hint(),
            RequestBody::Pipe(p) => match p.length {
                Some(n) => SizeHint::with_exact(n.saturating_sub(p.read)),
                None => SizeHint::default(),
            },
            RequestBody::H3(b) => match b.length {
                Some(n) => SizeHint::with_exact(n.saturating_sub(b.read)),
                None => SizeHint::default(),
            },
        }
    }
}

/// Why a pipe ended without its body: the stream was reset or the connection went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeError {
    /// The client reset the stream (HTTP/2 RST_STREAM) or the connection closed mid-body.
    Aborted,
}

#[derive(Default)]
struct PipeState {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The sender has sent everything (END_STREAM).
    end: bool,
    error: Option<PipeError>,
    /// Bytes the reader took that the driver has not credited back yet.
    consumed: usize,
    /// The reader was dropped: the driver discards what still comes.
    reader_gone: bool,
    reader: Option<Waker>,
    driver: Option<Waker>,
}

/// The driver's end of a body pipe (one per request with a body).
pub struct BodyPipe(Arc<Mutex<PipeState>>);

/// The handler's end: a [`RequestBody::Pipe`].
pub struct PipeReader {
    shared: Arc<Mutex<PipeState>>,
    /// The request's `content-length`, when it has one.
    length: Option<u64>,
    read: u64,
    done: bool,
}

fn lock(m: &Mutex<PipeState>) -> MutexGuard<'_, PipeState> {
    // A panic while holding the lock cannot leave the state inconsistent (plain fields).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BodyPipe {
    /// A new pipe and its reader, for a body of `length` bytes when announced.
    pub fn new(length: Option<u64>) -> (BodyPipe, RequestBody) {
        let shared = Arc::new(Mutex::new(PipeState::default()));
        let reader = PipeReader {
            shared: shared.clone(),
            length,
            read: 0,
            done: false,
        };
        (BodyPipe(shared), RequestBody::Pipe(reader))
    }

    /// Hands on received data. Returns `false` when the reader is gone (the caller gives the
    /// window back itself then).
    pub fn push(&self, data: Bytes) -> bool {
        let mut s = lock(&self.0);
        if s.reader_gone {
            return false;
        }
        if !data.is_empty() {
            s.chunks.push_back(data);
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        true
    }

    /// The body is complete (with `trailers`, if any).
    pub fn finish(&self, trailers: Option<HeaderMap>) {
        let mut s = lock(&self.0);
        s.end = true;
        s.trailers = trailers;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// The body will not be complete.
    pub fn abort(&self) {
        let mut s = lock(&self.0);
        if !s.end {
            s.error = Some(PipeError::Aborted);
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// Bytes taken by the reader since the last call (to credit back as flow-control window),
    /// registering `cx` to be woken when more is taken. Also whether the reader is gone.
    pub fn take_consumed(&self, cx: &mut Context<'_>) -> (usize, bool) {
        let mut s = lock(&self.0);
        let n = std::mem::take(&mut s.consumed);
        if !s.reader_gone {
            match &s.driver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.driver = Some(cx.waker().clone()),
            }
        }
        // What is still queued when the reader left is credited back too.
        (n, s.reader_gone)
    }

    /// Whether the reader has been dropped.
    pub fn reader_gone(&self) -> bool {
        lock(&self.0).reader_gone
    }
}

impl Drop for BodyPipe {
    fn drop(&mut self) {
        // A driver that goes away without finishing (connection closed, stream reset).
        self.abort();
    }
}

impl PipeReader {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut s = lock(&self.shared);
        if let Some(chunk) = s.chunks.pop_front() {
            s.consumed += chunk.len();
            if let Some(w) = s.driver.take() {
                w.wake();
            }
            self.read += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(e) = s.error {
            self.done = true;
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                match e {
                    PipeError::Aborted => "the client aborted the request body",
                },
            ))));
        }
        if s.end {
            self.done = true;
            return Poll::Ready(s.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        match &s.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let s = lock(&self.shared);
        s.end && s.chunks.is_empty() && s.trailers.is_none()
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        s.reader_gone = true;
        // Unread data is given back to the sender's window.
        let queued: usize = s.chunks.iter().map(Bytes::len).sum();
        s.consumed += queued;
        s.chunks.clear();
        s.reader = None;
        if let Some(w) = s.driver.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn poll(b: &mut RequestBody) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(b).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn pipe_delivers_data_trailers_and_credits() {
        let (pipe, mut body) = BodyPipe::new(Some(5));
        assert!(poll(&mut body).is_pending());
        assert!(pipe.push(Bytes::from_static(b"hel")));
        assert!(pipe.push(Bytes::from_static(b"lo")));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        pipe.finish(Some(trailers));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(pipe.take_consumed(&mut cx), (0, false));
        let Poll::Ready(Some(Ok(f))) = poll(&mut body) else {
            panic!("no data")
        };
        assert_eq!(f.into_data().unwrap(), "hel");
        assert_eq!(body.size_hint().exact(), Some(2));
        let _ = poll(&mut body);
        assert_eq!(pipe.take_consumed(&mut cx), (5, false));
        let Poll::Ready(Some(Ok(f))) = poll(&mut body) else {
            panic!("no trailers")
        };
        assert_eq!(f.into_trailers().unwrap()["grpc-status"], "0");
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(body.is_end_stream());
    }

    #[test]
    fn aborted_pipe_is_an_error_and_dropped_reader_credits_everything() {
        let (pipe, mut body) = BodyPipe::new(None);
        pipe.push(Bytes::from_static(b"abc"));
        drop(pipe);
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));

        let (pipe, body) = BodyPipe::new(None);
        pipe.push(Bytes::from_static(b"abcd"));
        drop(body);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(pipe.take_consumed(&mut cx), (4, true));
        assert!(!pipe.push(Bytes::from_static(b"x")));
    }
}
