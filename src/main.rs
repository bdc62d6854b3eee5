#![forbid(unsafe_code)]

// The global allocator: jemalloc with its background purging thread, so that the memory a flood
// of connections took goes back to the system once they close. glibc's malloc (the default)
// keeps it: 5,000 stalled TLS connections raise the RSS by ~90 MiB, and 10 s after they closed
// it is still all held (freed chunks stay in the worker threads' arenas, between live ones;
// only `malloc_trim`, which needs unsafe code and no maintained crate wraps safely, gives them
// back). Measured with tests/flood.rs (debug build; RSS start → flooded → after the close):
//   glibc                         27.4 → 118.6 → 118.4 MiB 10 s later (nothing returned)
//   glibc + malloc_trim(0)        27.4 → 118.6 →  29.0 MiB (trim called from outside, by gdb)
//   jemalloc, default 10 s decay  32.5 → 125.6 →  40.4 MiB after 7.8 s
//   jemalloc, 3 s decay (this)    29.5 → 122.4 →  43.0 MiB after 2.5 s
// Release build, one worker, quick loop on a loaded 2-core machine (3 rounds, median):
// RSS after start glibc 7.6–7.9 MiB, jemalloc 11.3 MiB; HTTP/1.1 keep-alive (wrk -c32)
// 48.6k vs 48.0k req/s, HTTP/2 (h2load -c8 -m16) 259k vs 272k req/s: within the noise.
// mimalloc: RSS after start 8.1 → 28.6 MiB (BENCHMARKS.md). jemalloc is the one that returns
// the memory with no unsafe code here and no hook on the connection path; its price is
// ~3.7 MiB more at start.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed pages stay with jemalloc before its background thread gives them back (its
/// default is 10 s): short enough that a flood's memory is back within seconds, long enough
/// that the steady churn of requests reuses pages instead of faulting them in again.
#[cfg(not(target_env = "msvc"))]
const DIRTY_DECAY_MS: isize = 3000;

fn main() {
    #[cfg(not(target_env = "msvc"))]
    {
        use tikv_jemalloc_ctl::{Access, AsName};
        // Before any other thread starts: the arenas made later take the new default; arena 0
        // (this thread's) exists already and is set by itself. Best effort: jemalloc's
        // defaults still return the memory, only later.
        let _ = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
        let _ = b"arena.0.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
    }
    std::process::exit(portcullis::cli::main());
}
