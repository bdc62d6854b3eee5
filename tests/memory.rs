//! Heap held by idle TLS connections, counted by a global allocator (this test binary's own).
//!
//! The server runs in-process; the clients run on one thread of their own, whose allocations
//! and frees are counted apart, so that the server's share is the process's live heap minus the
//! client thread's. One test per binary: nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
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
struct Idle {
    _tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

fn open_idle(addr: SocketAddr, cfg: &std::sync::Arc<rustls::ClientConfig>) -> Idle {
    let name = rustls::pki_types::ServerName::try_from("alpha.test").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"hello from alpha") {
        let n = tls
            .read(&mut buf)
            .expect("response on a keep-alive connection");
        assert!(n > 0, "server closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    Idle { _tls: tls }
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
        // Warm up the server's lazily made state (caches, the pool itself).
        drop((0..16).map(|_| open_idle(addr, &cfg)).collect::<Vec<_>>());
        let before = settled_server_heap();
        let conns: Vec<Idle> = (0..CONNS).map(|_| open_idle(addr, &cfg)).collect();
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
