//! Counts of connections and requests refused by the connection and per-client limits, by
//! kind, process-wide (they survive a reload), and the log lines about them: at most one per
//! kind every 10 seconds, with how many were refused since the last one, so that a flood
//! cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of refusal, as [`limits_dropped`] takes them and [`dropped_counts`] lists them.
pub const KINDS: [&str; 5] = [
    "max_connections",
    "concurrent_connections",
    "connection_rate",
    "handshake_rate",
    "request_rate",
];

/// What each kind refuses, for the log line.
const WHAT: [&str; 5] = [
    "connections refused: limits.max_connections reached (server full)",
    "connections refused: a client's limits.per_client.concurrent_connections reached",
    "connections refused: a client's limits.per_client.new_connections rate exceeded",
    "TLS handshakes refused: a client's limits.per_client.handshakes rate exceeded",
    "requests answered 429: a client's limits.per_client.requests rate exceeded",
];

const LOG_EVERY_SECS: u64 = 10;

#[allow(clippy::declare_interior_mutable_const)] // an array initializer, each element new
const ZERO: AtomicU64 = AtomicU64::new(0);
static DROPPED: [AtomicU64; 5] = [ZERO; 5];
/// Refused since the last log line.
static UNLOGGED: [AtomicU64; 5] = [ZERO; 5];
/// Unix time of the last log line (0: none yet).
static LOGGED_AT: [AtomicU64; 5] = [ZERO; 5];

/// Counts one refusal of `kind` (one of [`KINDS`]; another name is a bug: ignored, and a panic
/// in debug builds) and logs it, rate-limited.
///
/// Metrics: `portcullis_rate_limited_total` is [`dropped_counts`] (`ops::metrics::totals`).
pub fn limits_dropped(kind: &'static str) {
    let Some(i) = KINDS.iter().position(|k| *k == kind) else {
        debug_assert!(false, "unknown limit kind {kind:?}");
        return;
    };
    DROPPED[i].fetch_add(1, Ordering::Relaxed);
    UNLOGGED[i].fetch_add(1, Ordering::Relaxed);
    let now = crate::tls::certs::unix_now().max(0) as u64;
    let last = LOGGED_AT[i].load(Ordering::Relaxed);
    if now.saturating_sub(last) >= LOG_EVERY_SECS
        && LOGGED_AT[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let n = UNLOGGED[i].swap(0, Ordering::Relaxed);
        if last == 0 {
            tracing::warn!(kind, count = n, "{}", WHAT[i]);
        } else {
            tracing::warn!(kind, count = n, since_secs = now - last, "{}", WHAT[i]);
        }
    }
}

/// Every kind with how many were refused since the process started.
pub fn dropped_counts() -> [(&'static str, u64); 5] {
    std::array::from_fn(|i| (KINDS[i], DROPPED[i].load(Ordering::Relaxed)))
}

/// How many of `kind` were refused since the process started (0 for an unknown kind).
pub fn dropped(kind: &str) -> u64 {
    KINDS
        .iter()
        .position(|k| *k == kind)
        .map_or(0, |i| DROPPED[i].load(Ordering::Relaxed))
}
