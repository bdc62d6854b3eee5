//! Staged HSTS (`hsts.ramp`): a site's Strict-Transport-Security max-age grows stage by stage
//! (by default 5 minutes → 1 day → 1 week → 1 year) only while the site keeps serving HTTPS
//! without certificate problems, so that a mistake early on does not lock its visitors out for
//! a year.
//!
//! The rule:
//! - A stage is left for the next one once the site has been served for at least the stage's
//!   own duration (its max-age) with no certificate problem seen.
//! - A certificate problem, seen by a check (every [`CHECK_EVERY`]), puts the site back to the
//!   first stage, whose clock starts again once the problem is gone. Problems: no certificate
//!   (an ACME order still pending), one not valid yet or expired, one that does not cover all
//!   of the site's names, or one within its last week ([`RENEWAL_OVERDUE_DAYS`]; the last day
//!   for certificates of a week or less) — its renewal has failed.
//! - Time the server was not running does not count: after a gap between two checks longer
//!   than [`MAX_GAP`] (a stop, a suspended machine), the stage's clock resumes where it was.
//! - The stage and its start are stored through [`Storage`] (`hsts/<names id>.json`) on every
//!   change and every [`PERSIST_EVERY`], so they survive restarts and reloads. When the
//!   configured stages change, the stored max-age maps to the longest new stage not above it.
//!
//! The cost per request is one [`ArcSwap`] load and a header clone: the header value of each
//! stage is made once and swapped in by the check when the stage changes. The decisions are
//! pure functions of the time ([`step`], [`problem`]), which the tests drive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::hsts::HstsRamp;
use crate::server::ServerState;
use crate::storage::Storage;
use crate::tls::names::HostPattern;

/// How often every ramped site's certificates are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// The longest gap between two checks (seconds) still counted as time served.
pub const MAX_GAP: u64 = 15 * 60;
/// The check time is stored at least this often (seconds), for [`MAX_GAP`] across restarts.
pub const PERSIST_EVERY: u64 = 5 * 60;
/// A certificate with fewer days left than this (for one valid a week or less: its last day)
/// is a problem: its renewal should have replaced it by now.
pub const RENEWAL_OVERDUE_DAYS: i64 = 7;

/// Where a ramp stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RampState {
    /// Index into the stages.
    pub stage: usize,
    /// Unix time from which the stage has been served without a problem (moved forward by
    /// time not served).
    pub since: u64,
    /// Unix time of the last check.
    pub checked: u64,
}

/// One check: the new state for `now`, given the certificate `problem` seen (if any).
pub fn step(stages: &[Duration], st: RampState, now: u64, problem: Option<&str>) -> RampState {
    let last = stages.len().saturating_sub(1);
    let mut st = RampState {
        stage: st.stage.min(last),
        ..st
    };
    // A clock set back: nothing to count, start from now.
    if now < st.checked || now < st.since {
        st.checked = now;
        st.since = st.since.min(now);
    }
    let gap = now - st.checked;
    if gap > MAX_GAP {
        // Not served (or not watched) meanwhile: that time does not count.
        st.since = st.since.saturating_add(gap).min(now);
    }
    st.checked = now;
    if problem.is_some() {
        return RampState {
            stage: 0,
            since: now,
            checked: now,
        };
    }
    if st.stage < last && now - st.since >= stages[st.stage].as_secs() {
        st.stage += 1;
        st.since = now;
    }
    st
}

/// The certificate problem of a site serving `chains` for `hosts` at Unix time `now`, in
/// words, or `None`. Every chain counts: a client may be given any of them.
pub fn problem(chains: &[Arc<CertifiedKey>], hosts: &[HostPattern], now: i64) -> Option<String> {
    if chains.is_empty() {
        return Some("no certificate yet".into());
    }
    for ck in chains {
        let Some(info) = ck
            .cert
            .first()
            .and_then(|c| crate::tls::certs::leaf_info(c))
        else {
            return Some("a served certificate cannot be read".into());
        };
        let subject = &info.subject;
        if now < info.not_before {
            return Some(format!("certificate {subject} is not valid yet"));
        }
        if now >= info.not_after {
            return Some(format!("certificate {subject} has expired"));
        }
        let days_left = (info.not_after - now).div_euclid(86_400);
        let lifetime = (info.not_after - info.not_before) / 86_400;
        if crate::ops::expiry::level(days_left, lifetime).is_some_and(|l| l <= RENEWAL_OVERDUE_DAYS)
        {
            return Some(format!(
                "certificate {subject} expires in {days_left} days and has not been renewed"
            ));
        }
        let missing: Vec<String> = hosts
            .iter()
            .filter(|h| !crate::tls::certs::covers(&info, h))
            .map(|h| h.to_string())
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "certificate {subject} does not cover {}",
                missing.join(", ")
            ));
        }
    }
    None
}

/// A ramp's state for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RampStatus {
    pub site: String,
    /// Current stage, from 0.
    pub stage: usize,
    /// Number of stages.
    pub stages: usize,
    /// The max-age sent now.
    pub max_age: Duration,
    /// Unix time from which the stage counts as served without a problem.
    pub since: u64,
    /// The next stage, when there is one.
    pub next: Option<NextStage>,
    /// The certificate problem the last check found (the ramp is held at the first stage).
    pub problem: Option<String>,
}

/// The stage a ramp moves to next, and when at the earliest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextStage {
    pub max_age: Duration,
    /// Unix time, if nothing goes wrong before.
    pub at: u64,
}

/// What is stored per ramp.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    site: String,
    stage: usize,
    max_age: u64,
    since: u64,
    checked: u64,
}

#[derive(Debug)]
struct Inner {
    state: RampState,
    /// `checked` as last stored.
    stored_checked: u64,
    problem: Option<String>,
}

/// One site's ramp: the header value served now, and the state behind it.
#[derive(Debug)]
pub struct Ramp {
    site: String,
    hosts: Vec<HostPattern>,
    spec: HstsRamp,
    key: String,
    /// The header value of each stage.
    values: Vec<HeaderValue>,
    header: ArcSwap<HeaderValue>,
    inner: Mutex<Inner>,
    storage: Arc<dyn Storage>,
}

impl Ramp {
    /// The storage key of the ramp of a site with these names.
    pub fn storage_key(hosts: &[HostPattern]) -> String {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        format!("hsts/{}.json", crate::storage::names_id(&names))
    }

    /// The ramp of `site`, resumed from `storage` (or starting at the first stage at `now`).
    pub fn open(
        site: &str,
        hosts: &[HostPattern],
        spec: &HstsRamp,
        storage: Arc<dyn Storage>,
        now: u64,
    ) -> Arc<Ramp> {
        let key = Self::storage_key(hosts);
        let fresh = RampState {
            stage: 0,
            since: now,
            checked: now,
        };
        let loaded = match storage.load(&key) {
            Ok(Some(bytes)) => match serde_json::from_slice::<Stored>(&bytes) {
                Ok(s) => Some(RampState {
                    stage: spec
                        .stages
                        .iter()
                        .rposition(|d| d.as_secs() <= s.max_age)
                        .unwrap_or(0),
                    since: s.since,
                    checked: s.checked,
                }),
                Err(e) => {
                    tracing::warn!(
                        site,
                        key,
                        "HSTS ramp: stored state unreadable ({e}); starting at the first stage"
                    );
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    site,
                    key,
                    "HSTS ramp: cannot read the stored state ({e}); starting at the first stage"
                );
                None
            }
        };
        let state = loaded.unwrap_or(fresh);
        tracing::debug!(site, stage = state.stage, "HSTS ramp opened");
        let values: Vec<HeaderValue> = (0..spec.stages.len()).map(|i| spec.value(i)).collect();
        Arc::new(Ramp {
            site: site.to_string(),
            hosts: hosts.to_vec(),
            header: ArcSwap::from_pointee(spec.value(state.stage)),
            values,
            spec: spec.clone(),
            key,
            inner: Mutex::new(Inner {
                state,
                // Stored at the first check (a fresh ramp, and the time of this start).
                stored_checked: 0,
                problem: None,
            }),
            storage,
        })
    }

    /// The header value sent now.
    pub fn value(&self) -> HeaderValue {
        HeaderValue::clone(&self.header.load())
    }

    /// Puts the current header into `h` unless it has one.
    pub fn add_to(&self, h: &mut HeaderMap) {
        if let http::header::Entry::Vacant(slot) = h.entry(http::header::STRICT_TRANSPORT_SECURITY)
        {
            slot.insert(self.value());
        }
    }

    /// One check at Unix time `now` with the site's served `chains`: moves the stage, swaps
    /// the header and stores the state as needed.
    pub fn check(&self, chains: &[Arc<CertifiedKey>], now: u64) {
        let problem = problem(chains, &self.hosts, i64::try_from(now).unwrap_or(i64::MAX));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = inner.state;
        let after = step(&self.spec.stages, before, now, problem.as_deref());
        inner.state = after;
        if after.stage != before.stage {
            if let Some(v) = self.values.get(after.stage) {
                self.header.store(Arc::new(v.clone()));
            }
            let max_age = self.spec.stages[after.stage].as_secs();
            match &problem {
                Some(why) => {
                    tracing::warn!(
                        site = self.site,
                        max_age,
                        "HSTS ramp back to the first stage: {why}"
                    )
                }
                None => tracing::info!(
                    site = self.site,
                    max_age,
                    stage = after.stage + 1,
                    stages = self.spec.stages.len(),
                    "HSTS ramp: next stage"
                ),
            }
        }
        if problem.is_some() && inner.problem.is_none() && before.stage == 0 {
            tracing::warn!(
                site = self.site,
                "HSTS ramp held at the first stage: {}",
                problem.as_deref().unwrap_or_default()
            );
        }
        inner.problem = problem;
        if after.stage != before.stage
            || after.since != before.since
            || now.saturating_sub(inner.stored_checked) >= PERSIST_EVERY
        {
            let stored = Stored {
                site: self.site.clone(),
                stage: after.stage,
                max_age: self.spec.stages[after.stage].as_secs(),
                since: after.since,
                checked: after.checked,
            };
            let json = serde_json::to_vec(&stored).unwrap_or_default();
            match self.storage.store(&self.key, &json, false) {
                Ok(()) => inner.stored_checked = now,
                Err(e) => {
                    tracing::warn!(
                        site = self.site,
                        key = self.key,
                        "HSTS ramp: cannot store the state ({e}); a restart would forget it"
                    )
                }
            }
        }
    }

    /// Where the ramp stands.
    pub fn status(&self) -> RampStatus {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let st = inner.state;
        let stage = st.stage.min(self.spec.stages.len().saturating_sub(1));
        let cur = self.spec.stages.get(stage).copied().unwrap_or_default();
        RampStatus {
            site: self.site.clone(),
            stage,
            stages: self.spec.stages.len(),
            max_age: cur,
            since: st.since,
            next: self.spec.stages.get(stage + 1).map(|&next| NextStage {
                max_age: next,
                at: st.since.saturating_add(cur.as_secs()),
            }),
            problem: inner.problem.clone(),
        }
    }
}

/// Checks every ramped site's certificates every [`CHECK_EVERY`] until `shutdown`, on its own
/// thread (none when no site has a ramp).
pub fn spawn(state: Arc<ServerState>, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let ramped: Vec<(usize, Arc<Ramp>)> = state
        .front
        .sites
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.hsts_ramp.clone()?)))
        .collect();
    if ramped.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("portcullis-hsts".into())
        .spawn(move || loop {
            let now = u64::try_from(crate::tls::certs::unix_now()).unwrap_or(0);
            for (i, ramp) in &ramped {
                let chains = state.tls.certs.get(*i).map(|c| c.current());
                let chains = chains.as_deref().map_or(&[][..], |c| &c[..]);
                ramp.check(chains, now);
            }
            for _ in 0..CHECK_EVERY.as_secs() {
                if *shutdown.borrow() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn stages() -> Vec<Duration> {
        crate::config::hsts::DEFAULT_RAMP
            .iter()
            .map(|&s| Duration::from_secs(s))
            .collect()
    }

    /// Checks every minute from `from` for `secs` seconds, with `problem` throughout.
    fn run(mut st: RampState, from: u64, secs: u64, problem: Option<&str>) -> RampState {
        let mut t = from;
        while t <= from + secs {
            st = step(&stages(), st, t, problem);
            t += 60;
        }
        st
    }

    #[test]
    fn each_stage_lasts_its_own_duration() {
        let t0 = 1_000_000;
        let start = RampState {
            stage: 0,
            since: t0,
            checked: t0,
        };
        // 4 minutes: still the first stage; at 5 minutes the second.
        assert_eq!(run(start, t0, 240, None).stage, 0);
        let st = run(start, t0, 300, None);
        assert_eq!((st.stage, st.since), (1, t0 + 300));
        // One day on the second stage, then a week on the third, then the last, for good.
        let st = run(st, t0 + 360, DAY - 120, None);
        assert_eq!(st.stage, 1, "a day less a minute");
        let st = run(st, st.checked + 60, 120, None);
        assert_eq!(st.stage, 2);
        let st = run(st, st.checked + 60, 7 * DAY, None);
        assert_eq!(st.stage, 3);
        let st = run(st, st.checked + 60, 400 * DAY / 100, None);
        assert_eq!(st.stage, 3, "the last stage stays");
    }

    #[test]
    fn a_certificate_problem_drops_back_to_the_first_stage() {
        let t0 = 5_000_000;
        let st = RampState {
            stage: 2,
            since: t0 - 3 * DAY,
            checked: t0 - 60,
        };
        let st = step(&stages(), st, t0, Some("expired"));
        assert_eq!(
            st,
            RampState {
                stage: 0,
                since: t0,
                checked: t0
            }
        );
        // Held while the problem lasts, however long.
        let st = run(st, t0 + 60, 2 * DAY, Some("expired"));
        assert_eq!((st.stage, st.since), (0, st.checked));
        // Then five minutes from the last check that saw it before the second stage.
        let seen = st.checked;
        let st = run(st, seen + 60, 180, None);
        assert_eq!((st.stage, st.checked), (0, seen + 240));
        let st = step(&stages(), st, seen + 300, None);
        assert_eq!(st.stage, 1);
    }

    /// A self-signed leaf for `names`, valid from `from` to `to` (Unix times).
    fn leaf(names: &[&str], from: i64, to: i64) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
    }

    #[test]
    fn certificate_problems() {
        let now = 1_800_000_000;
        let d = 86_400;
        let hosts = [
            HostPattern::parse("example.com").unwrap(),
            HostPattern::parse("www.example.com").unwrap(),
        ];
        let both = &["example.com", "www.example.com"][..];
        let fine = leaf(both, now - 10 * d, now + 80 * d);
        assert_eq!(problem(std::slice::from_ref(&fine), &hosts, now), None);
        assert_eq!(
            problem(&[], &hosts, now).as_deref(),
            Some("no certificate yet")
        );
        let why = |certs: &[Arc<CertifiedKey>]| problem(certs, &hosts, now).unwrap_or_default();
        assert!(why(&[leaf(both, now - 90 * d, now - 1)]).ends_with("has expired"));
        assert!(why(&[leaf(both, now + 60, now + 90 * d)]).ends_with("is not valid yet"));
        // A 90-day certificate: 8 days left is fine, 6 days left means its renewal failed.
        assert_eq!(
            problem(&[leaf(both, now - 82 * d, now + 8 * d + 60)], &hosts, now),
            None
        );
        assert!(why(&[leaf(both, now - 84 * d, now + 6 * d + 60)])
            .ends_with("expires in 6 days and has not been renewed"));
        // A 7-day certificate (local CA): only its last day counts.
        assert_eq!(
            problem(&[leaf(both, now - 4 * d, now + 3 * d)], &hosts, now),
            None
        );
        assert!(why(&[leaf(both, now - 7 * d + 3600, now + 3600)]).contains("expires in 0 days"));
        // Every chain must cover every name: a client may get any of them.
        let www_only = leaf(&["www.example.com"], now - d, now + 80 * d);
        assert!(why(&[fine, www_only]).ends_with("does not cover example.com"));
        let wild = leaf(&["*.example.com", "example.com"], now - d, now + 80 * d);
        assert_eq!(problem(&[wild], &hosts, now), None);
    }

    #[test]
    fn time_not_served_does_not_count() {
        let t0 = 9_000_000;
        // Stage 2 (a week) begun 6 days ago, then the server was off for 3 days.
        let st = RampState {
            stage: 2,
            since: t0 - 6 * DAY,
            checked: t0 - 3 * DAY,
        };
        let st = step(&stages(), st, t0, None);
        assert_eq!(
            st.stage, 2,
            "three days of downtime do not complete the week"
        );
        assert_eq!(st.since, t0 - 3 * DAY);
        // A short gap (a restart) counts.
        let st2 = step(&stages(), st, t0 + 10 * 60, None);
        assert_eq!(st2.since, st.since);
        // A clock set back does not advance or panic.
        let back = step(&stages(), st, t0 - DAY, None);
        assert!(
            back.since <= t0 - DAY && back.checked == t0 - DAY,
            "{back:?}"
        );
    }
}
