//! How many workers take new connections: no more than the CPUs the workers may run on.
//!
//! Thread-per-core pays only while each worker has a CPU of its own. When the workers' CPU
//! affinity allows fewer CPUs than there are workers (`taskset -a -p` on a running server, a
//! container's cpuset or systemd's `CPUAffinity=` changed while serving), the workers sharing
//! a CPU take turns, and every turn is a context switch: on one CPU, one worker serves
//! 3–15 % more per core-second than two (`bench/results/ab-workers`), and this placement gave
//! +7 % (handshakes) to +18 % (HTTP/1.1) per core on one CPU (`bench/results/ab-placement`).
//!
//! So the listening sockets of the workers beyond that number move to the first ones, and move
//! back home when the affinity widens again. A socket moves without being closed, so the
//! connections queued on it are kept; connections already open stay with their worker. The
//! affinity is re-read at most every [`CHECK_EVERY_MS`] on the accept path: an idle server does
//! no periodic work for it. (Go's runtime likewise follows the CPUs it may use while running.)
//!
//! This is mechanism only: the number of workers is the operator's (`workers`), this decides
//! how many of them accept at a time.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rustix::thread::{CpuSet, Pid};
use tokio::sync::mpsc;

/// The affinity is re-read at most this often (milliseconds), and only when connections come.
pub const CHECK_EVERY_MS: u64 = 100;

/// A listening socket on its way to the worker that is to accept from it.
pub struct Handoff {
    pub listener: std::net::TcpListener,
    /// HTTPS (TLS) or plain HTTP.
    pub tls: bool,
    /// The worker the socket was bound for, where it returns when that worker accepts again.
    pub home: usize,
}

/// Shared by the workers: which of them accept, and the way to hand sockets over.
pub struct Placement {
    /// Each worker's thread id (0 until the worker has started).
    tids: Vec<AtomicI32>,
    /// Workers `0..accepting` take new connections.
    accepting: AtomicUsize,
    /// Milliseconds since `epoch` of the last affinity check.
    last_check: AtomicU64,
    epoch: Instant,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Placement {
    /// A placement for `workers` workers, all accepting, and each worker's handoff inbox.
    pub fn new(workers: usize) -> (Placement, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let workers = workers.max(1);
        let (handoff, inboxes) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let placement = Placement {
            tids: (0..workers).map(|_| AtomicI32::new(0)).collect(),
            accepting: AtomicUsize::new(workers),
            last_check: AtomicU64::new(0),
            epoch: Instant::now(),
            handoff,
        };
        (placement, inboxes)
    }

    /// Called on worker `n`'s own thread when it starts, so that its affinity can be read.
    pub fn register(&self, n: usize) {
        if let Some(tid) = self.tids.get(n) {
            tid.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::Relaxed,
            );
        }
    }

    /// How many workers take new connections now.
    pub fn accepting(&self) -> usize {
        self.accepting.load(Ordering::Relaxed)
    }

    /// The worker that should accept from the sockets bound for worker `home`: itself while
    /// it accepts, else round robin over the accepting ones.
    pub fn host_of(&self, home: usize) -> usize {
        home % self.accepting().max(1)
    }

    /// After an accept: re-reads the workers' affinity when the last check is older than
    /// [`CHECK_EVERY_MS`] (one worker does it; the others go on).
    pub fn after_accept(&self) {
        if self.tids.len() < 2 {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_check.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CHECK_EVERY_MS
            || self
                .last_check
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(cpus) = self.allowed_cpus() else {
            return;
        };
        let workers = self.tids.len();
        let want = cpus.clamp(1, workers);
        let was = self.accepting.swap(want, Ordering::Relaxed);
        if was != want {
            tracing::info!(
                "the workers' CPU affinity changed: they may run on {cpus} CPU(s), {want} of {workers} workers take new connections"
            );
        }
    }

    /// The number of CPUs that any worker may run on, capped at the number of workers; `None`
    /// when some worker's affinity cannot be read (it keeps the current placement).
    fn allowed_cpus(&self) -> Option<usize> {
        let workers = self.tids.len();
        let mut union = CpuSet::new();
        for tid in &self.tids {
            let Some(pid) = Pid::from_raw(tid.load(Ordering::Relaxed)) else {
                return None; // not started yet
            };
            let set = rustix::thread::sched_getaffinity(Some(pid)).ok()?;
            if set.count() as usize >= workers {
                return Some(workers);
            }
            for cpu in 0..CpuSet::MAX_CPU {
                if set.is_set(cpu) {
                    union.set(cpu);
                }
            }
        }
        Some(union.count() as usize)
    }

    /// Sends a socket to the worker that is to accept from it now. When that worker has
    /// stopped (shutdown), the socket is closed.
    pub fn hand_over(&self, handoff: Handoff) {
        let to = self.host_of(handoff.home);
        if let Some(tx) = self.handoff.get(to) {
            let _ = tx.send(handoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_parked_workers_go_round_robin_to_the_accepting_ones() {
        let (p, _inboxes) = Placement::new(5);
        assert_eq!(
            (0..5).map(|h| p.host_of(h)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        p.accepting.store(2, Ordering::Relaxed);
        assert_eq!(
            (0..5).map(|h| p.host_of(h)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        p.accepting.store(1, Ordering::Relaxed);
        assert_eq!(
            (0..5).map(|h| p.host_of(h)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn affinity_is_read_from_every_registered_worker() {
        let (p, _inboxes) = Placement::new(2);
        assert_eq!(p.allowed_cpus(), None, "no worker registered yet");
        p.register(0);
        p.register(1); // the same thread twice: its own affinity
        let own = rustix::thread::sched_getaffinity(None).unwrap().count() as usize;
        assert_eq!(p.allowed_cpus(), Some(own.min(2)));
    }
}
