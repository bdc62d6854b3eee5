//! Backend health: active checks (a `GET` every interval, `rise`/`fall` consecutive results
//! flip the state) and passive ejection (consecutive failed requests take a backend out for
//! `fail_timeout`, doubling with each ejection in a row up to `max_eject`).
//!
//! States are explicit from the start: every backend begins up (so that the first requests
//! are not refused), and the first active check runs at once. A backend is available when it
//! is up by the active checks (or has none) and not passively ejected. When no backend is
//! available the request fails at once with `NoHealthyBackend` (503): no request waits for a
//! backend to come back, and none is sent to an ejected one to probe it (an ejection ends by
//! itself after its time, and the next failure ejects again for twice as long).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use super::connector::Connected;
use super::pool::ReqBody;
use super::UpstreamGroup;
use crate::config::proxy::{HealthSpec, PassiveSpec};

/// The health of one backend. Times are milliseconds since the group's epoch.
pub struct Health {
    active_up: AtomicBool,
    consecutive_fails: AtomicU32,
    /// Ejections in a row without a success between (the doubling exponent).
    ejections: AtomicU32,
    /// Ejected until this time (ms since the epoch); 0: not ejected.
    ejected_until: AtomicU64,
    /// Failed requests since start (for the snapshot).
    pub(crate) failures: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            active_up: AtomicBool::new(true),
            consecutive_fails: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Up by the active checks (always, without them).
    pub fn active_up(&self) -> bool {
        self.active_up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_active(&self, up: bool) {
        self.active_up.store(up, Ordering::Relaxed);
    }

    /// How much longer a passive ejection lasts at `now_ms`, if one does.
    pub fn ejected_for(&self, now_ms: u64) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    pub fn available(&self, now_ms: u64) -> bool {
        self.active_up() && self.ejected_until.load(Ordering::Relaxed) <= now_ms
    }

    /// A request succeeded: the failure run and the backoff start over.
    pub fn record_success(&self) {
        // Read first: the common case writes nothing (no cache-line traffic between workers).
        if self.consecutive_fails.load(Ordering::Relaxed) != 0 {
            self.consecutive_fails.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed at `now_ms`; returns the ejection it caused, if any.
    pub fn record_failure(&self, spec: &PassiveSpec, now_ms: u64) -> Option<Duration> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if spec.max_fails == 0 {
            return None;
        }
        let fails = self.consecutive_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails < spec.max_fails {
            return None;
        }
        self.consecutive_fails.store(0, Ordering::Relaxed);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let d = ejection_length(spec, n);
        self.ejected_until.store(
            now_ms + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2),
            Ordering::Relaxed,
        );
        Some(d)
    }
}

/// The length of ejection number `n` (0 = the first in a row): `fail_timeout · 2ⁿ`, at most
/// `max_eject`.
pub fn ejection_length(spec: &PassiveSpec, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
    spec.fail_timeout
        .checked_mul(factor)
        .unwrap_or(spec.max_eject)
        .min(spec.max_eject)
}

/// Rise/fall bookkeeping of one backend's active checks (pure: feeds results, says when the
/// state flips).
#[derive(Debug, Default)]
pub struct Streak {
    ok: u32,
    fail: u32,
}

impl Streak {
    /// Takes one check result; returns the new state when it changes.
    pub fn observe(&mut self, up: bool, ok: bool, spec: &HealthSpec) -> Option<bool> {
        if ok {
            self.ok += 1;
            self.fail = 0;
            (!up && self.ok >= spec.rise).then_some(true)
        } else {
            self.fail += 1;
            self.ok = 0;
            (up && self.fail >= spec.fall).then_some(false)
        }
    }
}

/// Checks backend `index` of `group` until the group is dropped or `shutdown` turns true.
pub async fn active_loop(
    group: Weak<UpstreamGroup>,
    index: usize,
    spec: HealthSpec,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut streak = Streak::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(g) = group.upgrade() else { return };
        let result = match tokio::time::timeout(spec.timeout, check_once(&g, index, &spec)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(spec.timeout)
            )),
        };
        let b = &g.backends[index];
        let up = b.health.active_up();
        if let Some(now_up) = streak.observe(up, result.is_ok(), &spec) {
            b.health.set_active(now_up);
            if now_up {
                tracing::info!(backend = %b.label, "backend is up again: {} health checks passed", spec.rise);
            } else {
                tracing::warn!(
                    backend = %b.label,
                    "backend is down: {} health checks failed, the last: {}",
                    spec.fall,
                    result.as_ref().err().map_or("", String::as_str)
                );
            }
        }
        drop(g);
        tokio::select! {
            _ = tokio::time::sleep(spec.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One check on a connection of its own (never a pooled one: a check says whether new
/// connections work): `GET path` with the check's Host, the status compared, the body read.
async fn check_once(g: &Arc<UpstreamGroup>, index: usize, spec: &HealthSpec) -> Result<(), String> {
    let b = &g.backends[index];
    let Connected { io, h2 } = g
        .connector
        .connect(&b.target, &b.label, None, false)
        .await
        .map_err(|e| e.to_string())?;
    let host = spec.host.clone().unwrap_or_else(|| b.host_header());
    let io = TokioIo::new(io);
    let empty = || -> ReqBody {
        http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync()
    };
    let response = if h2 {
        let uri = format!("{}://{host}{}", b.uri_scheme(), spec.path);
        let req = http::Request::get(uri)
            .version(http::Version::HTTP_2)
            .body(empty())
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    } else {
        let req = http::Request::get(spec.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::CONNECTION, "close")
            .body(empty())
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await
    }
    .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    // Read the body so that the backend sees a complete exchange (bounded by the timeout).
    let _ = response.into_body().collect().await;
    if spec.status.matches(status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}", spec.status))
    }
}

/// The group's clock: milliseconds since `epoch` (never 0, so 0 can mean "not set").
pub fn now_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passive(max_fails: u32) -> PassiveSpec {
        PassiveSpec {
            max_fails,
            fail_timeout: Duration::from_secs(10),
            max_eject: Duration::from_secs(300),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = passive(3);
        let secs: Vec<u64> = (0..8).map(|n| ejection_length(&p, n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(ejection_length(&p, 200), Duration::from_secs(300));
    }

    #[test]
    fn ejection_after_consecutive_failures() {
        let p = passive(3);
        let h = Health::default();
        assert_eq!(h.record_failure(&p, 1000), None);
        assert_eq!(h.record_failure(&p, 1000), None);
        h.record_success();
        assert_eq!(h.record_failure(&p, 1000), None);
        assert_eq!(h.record_failure(&p, 1000), None);
        assert_eq!(h.record_failure(&p, 1000), Some(Duration::from_secs(10)));
        assert!(!h.available(1000));
        assert!(!h.available(10_999));
        assert!(h.available(11_000));
        // Failing again right after: twice as long.
        for _ in 0..2 {
            assert_eq!(h.record_failure(&p, 11_000), None);
        }
        assert_eq!(h.record_failure(&p, 11_000), Some(Duration::from_secs(20)));
        // A success resets the doubling.
        h.record_success();
        for _ in 0..2 {
            h.record_failure(&p, 40_000);
        }
        assert_eq!(h.record_failure(&p, 40_000), Some(Duration::from_secs(10)));
        assert_eq!(h.failures.load(Ordering::Relaxed), 11);
    }

    #[test]
    fn passive_off() {
        let h = Health::default();
        for _ in 0..100 {
            assert_eq!(h.record_failure(&passive(0), 5), None);
        }
        assert!(h.available(5));
    }

    #[test]
    fn rise_and_fall() {
        let spec = HealthSpec {
            path: "/".into(),
            status: crate::config::proxy::StatusMatch::Exact(200),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            host: None,
        };
        let mut s = Streak::default();
        assert_eq!(s.observe(true, false, &spec), None);
        assert_eq!(s.observe(true, false, &spec), None);
        assert_eq!(s.observe(true, true, &spec), None);
        assert_eq!(s.observe(true, false, &spec), None);
        assert_eq!(s.observe(true, false, &spec), None);
        assert_eq!(s.observe(true, false, &spec), Some(false));
        assert_eq!(s.observe(false, true, &spec), None);
        assert_eq!(s.observe(false, true, &spec), Some(true));
    }
}
