//! The executor hyper runs HTTP/2 streams on.
//!
//! hyper hands every HTTP/2 request's stream future to an executor; `TokioExecutor` spawns a
//! task for each. Our handlers answer synchronously, so that future almost always finishes in
//! its first poll (response headers and a small body queued in h2's send buffer): a task per
//! request is an allocation, a trip through the run queue and a second context switch into
//! the connection for nothing. [`InlineFirst`] polls the future once where hyper accepted the
//! stream and spawns a task only for what is left (a body waiting for flow-control window or
//! the disk), which tokio polls again at once with a real waker.

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Polls a stream's future once in place; spawns it on the current runtime if unfinished.
#[derive(Debug, Clone, Copy, Default)]
pub struct InlineFirst;

impl<F> hyper::rt::Executor<F> for InlineFirst
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut fut = Box::pin(fut);
        // A no-op waker is enough: a future left pending is spawned, and a new task is always
        // polled once, which registers the task's own waker.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Pending = fut.as_mut().poll(&mut cx) {
            tokio::spawn(fut);
        }
    }
}
