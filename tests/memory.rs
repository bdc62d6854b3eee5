//! Heap held by idle TLS connections, counted by a global allocator (this test binary's own).
//!
//! The server runs in-process; the clients run on one thread of their own (with their own
//! current-thread runtime), whose allocations
//! and frees are counted apart, so that the server's share is the process's live heap minus the
//! client thread's. One test per binary: nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// Counts the bytes live in the whole process and, per thread, the bytes that thread allocated
/// minus those it freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Live allocations of exactly [`RECV_BUF`] bytes: the size of a TLS receive buffer.
static LIVE_RECV_SIZED: AtomicIsize = AtomicIsize::new(0);
/// The size of vendored rustls's receive buffer (`prepare_read`'s `READ_SIZE`).
const RECV_BUF: usize = 4096;

thread_local! {
    static THREAD_NET: Cell<isize> = const { Cell::new(0) };
    static THREAD_RECV_SIZED: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    LIVE.fetch_add(delta, Ordering::Relaxed);
    if delta.unsigned_abs() == RECV_BUF {
        LIVE_RECV_SIZED.fetch_add(delta.signum(), Ordering::Relaxed);
        let _ = THREAD_RECV_SIZED.try_with(|c| c.set(c.get() + delta.signum()));
    }
    // `try_with`: allocations during a thread's teardown are counted only globally.
    let _ = THREAD_NET.try_with(|c| c.set(c.get() + delta));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counting
// touches only atomics and a thread-local `Cell` (const-initialised, no destructor), neither of
// which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(-(layout.size() as isize));
            count(new_size as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The server's live heap: the process's minus what the calling (client) thread holds, in bytes
/// and in allocations of [`RECV_BUF`] bytes.
fn server_heap() -> (isize, isize) {
    (
        LIVE.load(Ordering::Relaxed) - THREAD_NET.with(Cell::get),
        LIVE_RECV_SIZED.load(Ordering::Relaxed) - THREAD_RECV_SIZED.with(Cell::get),
    )
}

/// A TLS connection that has had one keep-alive request answered and is now idle.
type Idle = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn open_idle(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Idle {
    let mut tls = tls_connect(addr, Some("alpha.test"), cfg.clone())
        .await
        .expect("TLS handshake");
    let resp = raw_exchange(&mut tls, b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .await
        .expect("response on a keep-alive connection");
    assert_eq!(
        (resp.status, &resp.body[..]),
        (200, &b"hello from alpha"[..])
    );
    tls
}

async fn open_many(n: isize, addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Vec<Idle> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(open_idle(addr, cfg).await);
    }
    conns
}

/// Waits until the server's heap stops changing (its workers have finished with the last
/// connections: reads that found nothing, closes) and returns it.
fn settled_server_heap() -> (isize, isize) {
    let mut last = server_heap();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = server_heap();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// An idle HTTP/1.1 TLS connection holds no TLS receive buffer (4 KiB; vendored rustls gives it
/// up to a small per-thread pool when a read finds nothing, and the next connection that reads
/// takes it from there), and once the connections close the server's heap is back within 64 KiB
/// of where it started.
#[test]
fn idle_tls_connections_hold_no_receive_buffer() {
    const CONNS: isize = 200;
    let srv = TestEnv::new().start_with_workers(1, ONE_SITE);
    let addr = srv.https;
    let cfg = ClientOpts::default().build();
    let (before, idle, closed) = std::thread::spawn(move || {
        // The clients' own runtime runs on this thread, so that all their allocations are
        // counted as this thread's.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Warm up the server's lazily made state (caches, the pool itself).
        drop(rt.block_on(open_many(16, addr, &cfg)));
        let before = settled_server_heap();
        let conns = rt.block_on(open_many(CONNS, addr, &cfg));
        let idle = settled_server_heap();
        drop(conns);
        (before, idle, settled_server_heap())
    })
    .join()
    .unwrap();
    let per_conn = (idle.0 - before.0) / CONNS;
    let bufs_idle = idle.1 - before.1;
    eprintln!(
        "server heap per idle TLS connection: {per_conn} bytes; 4 KiB allocations held by \
         {CONNS} idle connections: {bufs_idle}; after they closed: {} bytes, {} 4 KiB allocations",
        closed.0 - before.0,
        closed.1 - before.1
    );
    assert!(
        bufs_idle <= 8,
        "{CONNS} idle TLS connections hold {bufs_idle} more 4 KiB allocations than none: \
         receive buffers kept by idle connections"
    );
    assert!(
        (closed.0 - before.0).abs() < 64 * 1024,
        "the server's heap is {} bytes off its start after the connections closed (a leak)",
        closed.0 - before.0
    );
    drop(srv);
}
