//! Fixed-bucket histograms of durations: [`LocalHistogram`] for one thread's shard (plain
//! loads and stores, one writer), [`SharedHistogram`] for values recorded by any thread
//! (relaxed atomic adds: used where each observation already costs a network round trip).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (1 ms to 10 s); one more bucket counts
/// what is above the last.
pub const BOUNDS_US: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Number of buckets, the open-ended one included.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

fn bucket_of(us: u64) -> usize {
    BOUNDS_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(BOUNDS_US.len())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The values of a histogram at one moment: per-bucket counts (not cumulative) and the sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn add(&mut self, other: &Snapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// `(upper bound in seconds, count)` per bucket, as prometheus-client's encoder takes them.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets)
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }
}

/// A histogram written by one thread only and read by any. Writes are a relaxed load and store
/// (plain moves on every platform): no read-modify-write, no cache-line ping-pong between
/// workers. A reader may see a bucket and the sum from slightly different moments, which
/// Prometheus tolerates between scrapes.
#[derive(Debug, Default)]
pub struct LocalHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl LocalHistogram {
    /// Only the owning thread may call this.
    pub(super) fn observe(&self, d: Duration) {
        let us = micros(d);
        super::bump(&self.buckets[bucket_of(us)], 1);
        super::bump(&self.sum_us, us);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (o, b) in s.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        s.sum_us = self.sum_us.load(Ordering::Relaxed);
        s
    }
}

/// A histogram any thread may record into.
#[derive(Debug, Default)]
pub struct SharedHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl SharedHistogram {
    pub fn observe(&self, d: Duration) {
        let us = micros(d);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (o, b) in s.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        s.sum_us = self.sum_us.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_the_first_bound_at_or_above() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(10_000_000), 12);
        assert_eq!(bucket_of(10_000_001), 13);
        let h = SharedHistogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count(), 2);
        assert_eq!(s.buckets[2], 1);
        assert_eq!(s.buckets[13], 1);
        assert_eq!(s.sum_us, 60_003_000);
        assert_eq!(s.prometheus_buckets().last(), Some(&(f64::INFINITY, 1)));
    }
}
