//! The response body type shared by every handler.
//!
//! One concrete enum instead of a boxed trait object: fixed responses and error pages are a
//! `Bytes` clone (no allocation), files stream in bounded chunks. Only bodies made elsewhere (a
//! backend's response, a tunnel: [`Body::Stream`]) are boxed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt as _;

use super::static_files::FileStream;

/// A response body: empty, one in-memory buffer, or a file streamed in chunks.
///
/// [`Body::Ready`] also carries the response's head, for HTTP/2 only (see there).
pub enum Body {
    /// No body (HEAD, 304, redirects without a page).
    Empty,
    /// A complete in-memory body; cloning the `Bytes` shares the buffer.
    Full(Option<Bytes>),
    /// A (part of a) file read in bounded chunks.
    File(FileStream),
    /// A complete in-memory body (`None` when sent or for HEAD) whose response head is kept
    /// ready in a cache and shared, not copied: the response's own header map is empty, the
    /// fields are these, with `Date` first and to be replaced by the current date. Only HTTP/2
    /// reads it (`server::h2` encodes the shared map by reference); HTTP/1.1 and HTTP/3 get a
    /// copied map and [`Body::Full`].
    Ready(Option<Bytes>, Arc<HeaderMap>),
    /// A body produced elsewhere as it goes (a backend's response, a tunnel): data and
    /// trailers pass through as they come. Boxed: only the asynchronous handlers make one.
    Stream(UnsyncBoxBody<Bytes, io::Error>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::Empty
    }

    /// The whole body is in memory (nothing left to read or wait for).
    pub fn is_complete(&self) -> bool {
        matches!(self, Body::Empty | Body::Full(_) | Body::Ready(..))
    }

    /// The shared response head of a [`Body::Ready`].
    pub fn ready_head(&self) -> Option<&HeaderMap> {
        match self {
            Body::Ready(_, head) => Some(head),
            _ => None,
        }
    }

    /// Drops the content (a response to HEAD), keeping a ready head.
    pub fn strip(&mut self) {
        match self {
            Body::Ready(data, _) => *data = None,
            _ => *self = Body::Empty,
        }
    }

    /// A body streamed from `body`.
    pub fn stream<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = io::Error> + Send + 'static,
    {
        Body::Stream(body.boxed_unsync())
    }

    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) | Body::Ready(bytes, _) => {
                Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
            Body::File(file) => file.poll_chunk(cx).map(|c| c.map(|r| r.map(Frame::data))),
            Body::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) | Body::Ready(bytes, _) => bytes.is_none(),
            Body::File(file) => file.remaining() == 0,
            Body::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) | Body::Ready(bytes, _) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::File(file) => SizeHint::with_exact(file.remaining()),
            Body::Stream(body) => body.size_hint(),
        }
    }
}
