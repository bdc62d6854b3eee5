//! Where hyper runs the work of each HTTP/2 stream.
//!
//! hyper's HTTP/2 server hands every request's response future (service call, response head,
//! body) to an executor. `hyper_util`'s `TokioExecutor` makes each one a tokio task: a
//! registration in the runtime's task list, a schedule, a poll, and a wake-up of the connection
//! task when the response is queued. Most of our responses are ready at once (cached files,
//! fixed responses, redirects, error pages), so [`DeferredStreams`] queues the futures instead
//! and [`RunsStreams`], the connection's future, polls them right after each poll of the
//! connection. A future that is not finished after that poll is spawned as a task (polled
//! again at once, with its own waker).
//!
//! The connection then asks to be polled again, and it writes the queued responses in that
//! next poll, after the other ready tasks have run, as it did when the streams were tasks:
//! meanwhile more requests arrive and more responses leave in one flush. Polling the streams
//! inside the connection's poll (tried in session 4) or the connection again at once (session
//! 6) made it flush after fewer responses each time and cost more than the tasks saved.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

type Deferred = Box<dyn Future<Output = ()> + Unpin + Send>;

thread_local! {
    /// Stream futures handed over during the current poll of a [`RunsStreams`].
    static QUEUE: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
    /// A [`RunsStreams`] is being polled on this thread (and will run the queue).
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// The HTTP/2 executor: queues each stream's future for the [`RunsStreams`] being polled, or
/// spawns it when there is none.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeferredStreams;

impl<F> hyper::rt::Executor<F> for DeferredStreams
where
    F: Future<Output = ()> + Unpin + Send + 'static,
{
    fn execute(&self, fut: F) {
        if POLLING.get() {
            QUEUE.with(|q| q.borrow_mut().push(Box::new(fut)));
        } else {
            tokio::spawn(fut);
        }
    }
}

/// A connection's future that runs the stream futures its polls handed to
/// [`DeferredStreams`].
pub struct RunsStreams<F> {
    pub inner: F,
}

impl<F: Future + Unpin> Future for RunsStreams<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = {
            let _polling = Polling::start();
            Pin::new(&mut self.inner).poll(cx)
        };
        if run_queued() && polled.is_pending() {
            // The responses just queued are written by the next poll of the connection, after
            // the other tasks that are ready have run: more of their requests arrive meanwhile
            // and more responses leave in one flush (polling again at once halved the batches).
            cx.waker().wake_by_ref();
        }
        polled
    }
}

/// Marks a [`RunsStreams`] poll on this thread, until dropped (also when the poll panics).
struct Polling;

impl Polling {
    fn start() -> Self {
        POLLING.set(true);
        Polling
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.set(false);
    }
}

/// Polls each queued stream future once; spawns those not finished. Returns whether there
/// were any.
fn run_queued() -> bool {
    let mut queue = QUEUE.with(|q| std::mem::take(&mut *q.borrow_mut()));
    if queue.is_empty() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    for mut fut in queue.drain(..) {
        // A panic in one stream's work must not end the connection's other streams (as a
        // task's panic would only end that task): that stream is dropped, which resets it.
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut fut).poll(&mut cx))) {
            Ok(Poll::Ready(())) => {}
            Ok(Poll::Pending) => {
                tokio::spawn(fut);
            }
            Err(_) => tracing::error!("an HTTP/2 stream's handler panicked; stream reset"),
        }
    }
    // Keep the (now empty) allocation for the next batch.
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        if q.is_empty() {
            *q = queue;
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its polls; ready after `ready_after` of them.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready_after: usize,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.ready_after {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// A "connection" that hands two stream futures to the executor on its first poll and
    /// counts its polls.
    struct Conn {
        streams: Vec<Counted>,
        polls: usize,
        seen_after_first: Option<usize>,
        first: Arc<AtomicUsize>,
    }

    impl Future for Conn {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls == 1 {
                for s in std::mem::take(&mut self.streams) {
                    DeferredStreams.execute(s);
                }
                // Not run inside the connection's poll.
                assert_eq!(self.first.load(Ordering::SeqCst), 0);
                return Poll::Pending;
            }
            self.seen_after_first = Some(self.first.load(Ordering::SeqCst));
            Poll::Ready(self.polls)
        }
    }

    #[tokio::test]
    async fn queued_streams_run_after_the_connection_poll_then_the_connection_again() {
        let first = Arc::new(AtomicUsize::new(0));
        let slow = Arc::new(AtomicUsize::new(0));
        let conn = Conn {
            streams: vec![
                Counted {
                    polls: first.clone(),
                    ready_after: 1,
                },
                Counted {
                    polls: slow.clone(),
                    ready_after: 3,
                },
            ],
            polls: 0,
            seen_after_first: None,
            first: first.clone(),
        };
        let mut runs = RunsStreams { inner: conn };
        let polls = (&mut runs).await;
        // The connection was polled again right after its streams ran once.
        assert_eq!(polls, 2);
        assert_eq!(runs.inner.seen_after_first, Some(1));
        // The unfinished one was spawned and finished with a real waker.
        for _ in 0..50 {
            if slow.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(slow.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn outside_a_connection_poll_futures_are_spawned() {
        let polls = Arc::new(AtomicUsize::new(0));
        DeferredStreams.execute(Counted {
            polls: polls.clone(),
            ready_after: 1,
        });
        for _ in 0..50 {
            if polls.load(Ordering::SeqCst) >= 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert!(QUEUE.with(|q| q.borrow().is_empty()));
    }

    #[tokio::test]
    async fn a_panicking_stream_is_contained() {
        struct Boom;
        impl Future for Boom {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                panic!("boom")
            }
        }
        {
            let _polling = Polling::start();
            DeferredStreams.execute(Boom);
        }
        assert!(run_queued());
    }
}
