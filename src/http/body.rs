//! The response body type shared by every handler.
//!
//! One concrete enum instead of a boxed trait object: fixed responses and error pages are a
//! `Bytes` clone (no allocation), files stream in bounded chunks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::static_files::FileStream;

/// A response body: empty, one in-memory buffer, or a file streamed in chunks.
pub enum Body {
    /// No body (HEAD, 304, redirects without a page).
    Empty,
    /// A complete in-memory body; cloning the `Bytes` shares the buffer.
    Full(Option<Bytes>),
    /// A (part of a) file read in bounded chunks.
    File(FileStream),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::Empty
    }

    /// The whole body is in memory (nothing left to read or wait for).
    pub fn is_complete(&self) -> bool {
        matches!(self, Body::Empty | Body::Full(_))
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
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::File(file) => file.poll_chunk(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::File(file) => file.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File(file) => SizeHint::with_exact(file.remaining()),
        }
    }
}
