//! Rate-limited log lines: lines that clients can cause (a failed handshake, a broken
//! connection) are limited per cause, not per client, so that no client — or crowd of clients
//! — can flood the log. Each cause ([`LineLimit`], a `static` beside the line it guards) lets
//! [`lines_per_second`] lines through in each second; the others are counted and reported in
//! one summary line per cause at most every [`SUMMARY_EVERY`]: "1234 similar lines suppressed
//! in the last 10 s".
//!
//! Cost: two relaxed atomic operations and a clock read per line that would be written; only
//! lines that are written anyway pay them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How often, at most, a cause's suppressed lines are summed up in a line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Default of `[log] lines_per_second`.
pub const DEFAULT_LINES_PER_SECOND: u32 = 10;

static LINES_PER_SECOND: AtomicU32 = AtomicU32::new(DEFAULT_LINES_PER_SECOND);

/// Lines per second let through per cause (`[log] lines_per_second`).
pub fn lines_per_second() -> u32 {
    LINES_PER_SECOND.load(Ordering::Relaxed)
}

/// Sets [`lines_per_second`] (at start, and by a reload).
pub fn set_lines_per_second(n: u32) {
    LINES_PER_SECOND.store(n.max(1), Ordering::Relaxed);
}

/// How a cause's summary line is written: its cause, the lines suppressed and over how many
/// seconds.
pub type Report = fn(&'static str, u64, u64);

/// Writes a summary as a warning in the server's log.
pub fn report_to_log(cause: &'static str, count: u64, seconds: u64) {
    tracing::warn!("{count} similar lines suppressed in the last {seconds} s ({cause})");
}

/// One cause's line budget (see the module documentation). Meant to live in a `static`.
pub struct LineLimit {
    cause: &'static str,
    report: Report,
    /// The Unix second the budget is counted in.
    second: AtomicI64,
    /// Lines let through in that second.
    used: AtomicU32,
    /// Lines suppressed since the last summary.
    suppressed: AtomicU64,
    /// Unix time of the last summary (or of the first suppression after a quiet time).
    summary_at: AtomicI64,
    /// Listed for the summary sweep.
    listed: AtomicBool,
}

impl LineLimit {
    /// A cause (a short stable name, shown in the summary line) and how to report it.
    pub const fn new(cause: &'static str, report: Report) -> Self {
        LineLimit {
            cause,
            report,
            second: AtomicI64::new(0),
            used: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
            summary_at: AtomicI64::new(0),
            listed: AtomicBool::new(false),
        }
    }

    /// The cause's name.
    pub fn cause(&self) -> &'static str {
        self.cause
    }

    /// Whether a line may be written now. A line that may not is counted for the summary.
    pub fn admit(&'static self) -> bool {
        let now = now_secs();
        let second = self.second.load(Ordering::Relaxed);
        if second != now
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < lines_per_second() {
            return true;
        }
        if self.suppressed.fetch_add(1, Ordering::Relaxed) == 0 {
            // The first suppressed line since the last summary: the summary's period starts
            // now at the latest.
            let at = self.summary_at.load(Ordering::Relaxed);
            if now - at > SUMMARY_EVERY.as_secs() as i64 {
                self.summary_at.store(now, Ordering::Relaxed);
            }
            if !self.listed.swap(true, Ordering::Relaxed) {
                sweeper()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(self);
            }
        }
        false
    }

    /// Writes the summary when one is due (called by the sweep).
    fn sweep(&self, now: i64) {
        let at = self.summary_at.load(Ordering::Relaxed);
        if now - at < SUMMARY_EVERY.as_secs() as i64 {
            return;
        }
        let n = self.suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            self.summary_at.store(now, Ordering::Relaxed);
            (self.report)(self.cause, n, (now - at).max(1) as u64);
        }
    }

    /// Lines suppressed and not summed up yet.
    pub fn pending(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

fn now_secs() -> i64 {
    crate::tls::certs::unix_now()
}

/// The causes that suppressed lines, swept every second by a thread of their own (started
/// with the first suppressed line).
fn sweeper() -> &'static Mutex<Vec<&'static LineLimit>> {
    static LIST: OnceLock<Mutex<Vec<&'static LineLimit>>> = OnceLock::new();
    LIST.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("portcullis-log-summary".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                let list: Vec<&'static LineLimit> =
                    sweeper().lock().unwrap_or_else(|e| e.into_inner()).clone();
                let now = now_secs();
                for l in list {
                    l.sweep(now);
                }
            });
        Mutex::new(Vec::new())
    })
}

/// Logs through `tracing` when the level is on and the cause's budget allows:
/// `limited!(CAUSE, debug, %peer, "...")` (levels `debug`, `info`, `warn`).
#[macro_export]
macro_rules! limited {
    ($limit:expr, debug, $($arg:tt)*) => {
        if ::tracing::enabled!(::tracing::Level::DEBUG) && $limit.admit() {
            ::tracing::debug!($($arg)*);
        }
    };
    ($limit:expr, info, $($arg:tt)*) => {
        if ::tracing::enabled!(::tracing::Level::INFO) && $limit.admit() {
            ::tracing::info!($($arg)*);
        }
    };
    ($limit:expr, warn, $($arg:tt)*) => {
        if ::tracing::enabled!(::tracing::Level::WARN) && $limit.admit() {
            ::tracing::warn!($($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    static SEEN: AtomicU64 = AtomicU64::new(0);
    fn count(_: &'static str, n: u64, _: u64) {
        SEEN.fetch_add(n, Ordering::Relaxed);
    }
    static L: LineLimit = LineLimit::new("test", count);

    #[test]
    fn bounded_and_counted() {
        let admitted = (0..1000).filter(|_| L.admit()).count() as u64;
        // Two seconds at most were crossed by 1000 calls.
        assert!(admitted <= 2 * u64::from(lines_per_second()), "{admitted}");
        assert_eq!(admitted + L.pending(), 1000);
    }
}
