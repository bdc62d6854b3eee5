//! The minimum pace of a request body a handler reads (the reverse proxy's uploads):
//! `limits.body_timeout` and `limits.min_body_rate`, as Apache's `mod_reqtimeout` `MinRate`,
//! nginx's `client_body_timeout` and HAProxy's `timeout http-request` bound slow uploads.
//!
//! Only the time the server spends *waiting* for the client counts: a body read while its data
//! is already there (the backend was the slow one, and the client's data waited in buffers)
//! adds bytes but no time. Once the waiting adds up to a window (`body_timeout`), the bytes
//! received meanwhile must average `min_rate` per second of it; then the count starts again.
//! A body that stalls completely fails after one window of waiting, whatever the rate; one
//! trickled a few bytes at a time fails at the end of its first window below the rate.
//!
//! [`Pace`] is the pure bookkeeping on millisecond timestamps; [`PacedBody`] applies it to a
//! body with one timer, made when the body first has to wait (never for a body that is
//! complete or arrives as fast as it is read).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::model::BodyPace;

/// The error a body too slow ends with (`io::ErrorKind::TimedOut`).
pub const TOO_SLOW: &str = "request body too slow (limits.body_timeout / limits.min_body_rate)";

/// Bookkeeping of one body's pace; times are milliseconds on any monotonic clock.
#[derive(Debug, Clone)]
pub struct Pace {
    window: u64,
    min_rate: u64,
    /// Waiting time counted in the current window (ms), and the bytes received in it.
    waited: u64,
    bytes: u64,
    /// Since when the body is waiting for the client (a read found nothing).
    waiting_since: Option<u64>,
}

/// What [`Pace::wait`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting; look again at this time (ms) unless data comes first.
    Until(u64),
    /// Too slow: the body fails.
    TooSlow,
}

impl Pace {
    pub fn new(settings: BodyPace) -> Self {
        Pace {
            window: settings.window.as_millis().clamp(1, u64::MAX as u128) as u64,
            min_rate: settings.min_rate,
            waited: 0,
            bytes: 0,
            waiting_since: None,
        }
    }

    /// `n` bytes of the body were read at `now`.
    pub fn data(&mut self, n: usize, now: u64) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_sub(since);
        }
        self.bytes += n as u64;
        self.settle();
    }

    /// A read at `now` found nothing: the body waits for the client.
    pub fn wait(&mut self, now: u64) -> Verdict {
        let since = *self.waiting_since.get_or_insert(now);
        let waited = self.waited + now.saturating_sub(since);
        if waited >= self.window {
            if self.bytes.saturating_mul(1000) < self.min_rate.saturating_mul(waited)
                || self.bytes == 0
            {
                return Verdict::TooSlow;
            }
            // The window is complete and was fast enough: a new one starts now.
            self.waited = 0;
            self.bytes = 0;
            self.waiting_since = Some(now);
            return Verdict::Until(now + self.window);
        }
        Verdict::Until(since + (self.window - self.waited))
    }

    /// Starts a new window once the current one is complete and fast enough.
    fn settle(&mut self) {
        if self.waited >= self.window
            && self.bytes.saturating_mul(1000) >= self.min_rate.saturating_mul(self.waited)
        {
            self.waited = 0;
            self.bytes = 0;
        }
    }
}

/// A body read under a [`Pace`]; fails with [`TOO_SLOW`] (`TimedOut`) when the client is too
/// slow.
pub struct PacedBody<B> {
    inner: B,
    pace: Pace,
    /// Made at the first wait, re-armed as the deadline moves.
    timer: Option<Pin<Box<Sleep>>>,
    origin: Instant,
    failed: bool,
}

impl<B> PacedBody<B> {
    pub fn new(inner: B, settings: BodyPace) -> Self {
        PacedBody {
            inner,
            pace: Pace::new(settings),
            timer: None,
            origin: Instant::now(),
            failed: false,
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body<Data = Bytes, Error = io::Error> + Unpin,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(Ok(f)) = &frame {
                        let n = f.data_ref().map_or(0, Bytes::len);
                        let now = this.now();
                        this.pace.data(n, now);
                    }
                    return Poll::Ready(frame);
                }
                Poll::Pending => {}
            }
            let now = this.now();
            match this.pace.wait(now) {
                Verdict::TooSlow => {
                    this.failed = true;
                    this.timer = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        TOO_SLOW,
                    ))));
                }
                Verdict::Until(at) => {
                    let deadline = this.origin + Duration::from_millis(at);
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The deadline passed: look at the body (and the pace) again.
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(window_ms: u64, rate: u64) -> Pace {
        Pace::new(BodyPace {
            window: Duration::from_millis(window_ms),
            min_rate: rate,
        })
    }

    #[test]
    fn a_stalled_body_fails_after_one_window_of_waiting() {
        let mut p = pace(10_000, 0);
        assert_eq!(p.wait(0), Verdict::Until(10_000));
        assert_eq!(p.wait(9_999), Verdict::Until(10_000));
        assert_eq!(p.wait(10_000), Verdict::TooSlow);
    }

    #[test]
    fn a_trickle_below_the_rate_fails_at_the_end_of_its_window() {
        let mut p = pace(10_000, 1024);
        let mut t = 0;
        loop {
            match p.wait(t) {
                Verdict::TooSlow => break,
                Verdict::Until(_) => {}
            }
            t += 1000;
            p.data(100, t); // 100 B/s
            assert!(t <= 11_000, "still going at {t} ms");
        }
        assert!(t >= 10_000, "failed early, at {t} ms");
    }

    #[test]
    fn a_body_at_the_rate_goes_on_window_after_window() {
        let mut p = pace(1000, 1024);
        for s in 0..100u64 {
            assert!(matches!(p.wait(s * 1000), Verdict::Until(_)));
            p.data(1100, s * 1000 + 1000);
        }
    }

    #[test]
    fn data_read_without_waiting_adds_no_time() {
        // The backend was slow: the body is read in bursts from buffers, never waiting.
        let mut p = pace(1000, 1024);
        for s in 0..100u64 {
            p.data(10, s * 60_000);
        }
        assert!(matches!(p.wait(6_000_000), Verdict::Until(_)));
    }
}
