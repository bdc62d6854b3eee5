//! Cheap clocks for per-request bookkeeping.
//!
//! The coarse clocks are read from the vDSO without the time-stamp counter: a few nanoseconds
//! instead of about twenty, at the resolution of the kernel tick (1–10 ms). Per request that
//! mattered: two precise clock reads were 2.5 % of the CPU of HTTP/2 `/hello` (BENCHMARKS.md,
//! the HTTP/2 profile of 2026-11-23). Timeouts, cache validity and the `Date` header need no better.

use rustix::time::{clock_gettime, ClockId};

/// Milliseconds on the coarse monotonic clock (arbitrary epoch; never goes back).
pub fn coarse_ms() -> u64 {
    let t = clock_gettime(ClockId::MonotonicCoarse);
    (t.tv_sec as u64).saturating_mul(1000) + (t.tv_nsec as u64) / 1_000_000
}

/// Seconds since the Unix epoch on the coarse wall clock (0 before 1970).
pub fn coarse_unix_secs() -> u64 {
    let t = clock_gettime(ClockId::RealtimeCoarse);
    u64::try_from(t.tv_sec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn coarse_clocks_follow_the_precise_ones() {
        let precise = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let coarse = super::coarse_unix_secs();
        assert!(coarse.abs_diff(precise) <= 1, "{coarse} vs {precise}");
        let a = super::coarse_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = super::coarse_ms();
        assert!((40..1000).contains(&(b - a)), "{a} then {b}");
    }
}
