//! Bytes both ways between a client and its backend until both directions are done.
//!
//! Each direction has its own buffer and ends on its own: when one side sends its FIN (or TLS
//! `close_notify`), the other side's write half is shut down and the opposite direction keeps
//! running, so a client that half-closes after its request still gets the whole answer. No
//! bytes in either direction for `idle` ends the pipe. (tokio's `copy_bidirectional` does the
//! half-close but has no idle timeout; this is the same loop with one shared timer.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Per direction: enough for a TLS record's plaintext.
const BUF: usize = 16 * 1024;

/// How a pipe ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their sending direction; bytes moved client→backend, backend→client.
    Closed(u64, u64),
    /// Nothing moved for the idle timeout.
    Idle(u64, u64),
}

/// Pipes `a` and `b` until both directions have ended, one side failed, or nothing moved for
/// `idle`.
pub async fn pipe<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<Ended>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Pipe {
        a,
        b,
        ab: Half::new(),
        ba: Half::new(),
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
    }
    .await
}

struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reader sent EOF.
    eof: bool,
    /// EOF passed on: the writer's sending side is shut down.
    done: bool,
    moved: u64,
}

impl Half {
    fn new() -> Self {
        Half {
            buf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves what can be moved now; `Ready(Ok(()))` once EOF has been passed on.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start == self.end && !self.eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                ready!(r.as_mut().poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    self.eof = true;
                } else {
                    self.start = 0;
                    self.end = n;
                }
            }
            while self.start < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.moved += n as u64;
            }
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            // Everything read is written: flush it (TLS buffers records) before reading more.
            ready!(w.as_mut().poll_flush(cx))?;
        }
    }
}

struct Pipe<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    ab: Half,
    ba: Half,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<A, B> Future for Pipe<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let before = (me.ab.moved, me.ab.eof, me.ba.moved, me.ba.eof);
        let ab = me
            .ab
            .poll_copy(cx, Pin::new(&mut *me.a), Pin::new(&mut *me.b))?;
        let ba = me
            .ba
            .poll_copy(cx, Pin::new(&mut *me.b), Pin::new(&mut *me.a))?;
        if ab.is_ready() && ba.is_ready() {
            return Poll::Ready(Ok(Ended::Closed(me.ab.moved, me.ba.moved)));
        }
        if before != (me.ab.moved, me.ab.eof, me.ba.moved, me.ba.eof) {
            me.timer.as_mut().reset(Instant::now() + me.idle);
        }
        if me.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(Ended::Idle(me.ab.moved, me.ba.moved)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One side half-closes; the other still sends, and its bytes arrive.
    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut backend) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { pipe(&mut a, &mut b, Duration::from_secs(5)).await });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        backend.write_all(b"answer after FIN").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"answer after FIN");
        assert_eq!(task.await.unwrap().unwrap(), Ended::Closed(7, 16));
    }

    #[tokio::test]
    async fn idle_ends_it() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, _backend) = tokio::io::duplex(64);
        let task =
            tokio::spawn(async move { pipe(&mut a, &mut b, Duration::from_millis(200)).await });
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
        }
        let started = std::time::Instant::now();
        assert_eq!(task.await.unwrap().unwrap(), Ended::Idle(4, 0));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
    }
}
