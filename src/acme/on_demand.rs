//! On-demand TLS (opt-in, `[on_demand]`): a certificate is obtained at the first handshake for
//! a name no site lists, when the name is approved by the `allow` list or the `ask` endpoint.
//!
//! Abuse limits, so that a flood of random SNI cannot exhaust the CA's rate limits or this
//! server: names must be plausible DNS names; at most [`MAX_PENDING`] names are being decided
//! at once (further ones are refused without asking); refusals and failures are cached for
//! `refusal_cache`; orders are capped per minute for all names together; and at most
//! `max_names` certificates are obtained. Certificates are stored like every ACME certificate
//! and picked up from storage on the next first handshake, and renewed in the background.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::client::{AcmeClient, AcmeError, OrderOptions};
use super::manager::{store_issued, stored};
use super::Challenges;
use crate::config::model::{AcmeSettings, OnDemandSettings};
use crate::storage::Storage;
use crate::tls::certs::{fmt_time, unix_now, LoadedCert};
use crate::tls::names::HostPattern;
use crate::tls::resolver::NamedCerts;

/// Names being decided or ordered at once; more are refused at once (not cached).
pub const MAX_PENDING: usize = 32;
/// The longest a handshake waits for its name's certificate.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);
/// The `ask` endpoint's deadline.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// One order's deadline.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Working,
    Ready,
    Refused,
}

#[derive(Default)]
struct Gate {
    /// Names being decided, with the outcome's channel.
    pending: HashMap<String, watch::Receiver<Phase>>,
    /// Refused or failed names and until when (Unix time).
    refused: HashMap<String, i64>,
    /// Unix times of the orders of the last minute.
    orders: VecDeque<i64>,
}

/// The handshake side of on-demand TLS: which names are admitted, and the certificates.
pub struct OnDemand {
    pub settings: OnDemandSettings,
    /// Certificates obtained on demand; the on-demand site's resolver serves them.
    pub certs: Arc<NamedCerts>,
    gate: Mutex<Gate>,
    jobs: mpsc::UnboundedSender<(String, watch::Sender<Phase>)>,
}

/// A plausible DNS name for a certificate: lower-case LDH labels, at least two, 253 bytes at
/// most, not an IP address. Anything else is refused before any lookup.
pub fn plausible_name(name: &str) -> bool {
    if name.len() > 253 || name.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn allowed(patterns: &[HostPattern], name: &str) -> bool {
    patterns.iter().any(|p| match p {
        HostPattern::Exact(n) => n == name,
        HostPattern::Wildcard(suffix) => name
            .strip_suffix(suffix.as_str())
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        HostPattern::Ip(_) => false,
    })
}

impl OnDemand {
    /// True when `name` (as sent in SNI) has a certificate, waiting up to `wait` for one to be
    /// obtained when the name is approved.
    pub async fn admit(&self, name: &str, wait: Duration) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.certs.contains(&name) {
            return true;
        }
        if !plausible_name(&name) {
            return false;
        }
        let mut rx = {
            let Ok(mut g) = self.gate.lock() else {
                return false;
            };
            let now = unix_now();
            match g.refused.get(&name) {
                Some(&until) if until > now => return false,
                Some(_) => {
                    g.refused.remove(&name);
                }
                None => {}
            }
            if let Some(rx) = g.pending.get(&name) {
                rx.clone()
            } else {
                if g.pending.len() >= MAX_PENDING {
                    tracing::debug!(name, "on-demand: too many names pending; refused");
                    return false;
                }
                let (tx, rx) = watch::channel(Phase::Working);
                g.pending.insert(name.clone(), rx.clone());
                if self.jobs.send((name.clone(), tx)).is_err() {
                    g.pending.remove(&name);
                    return false;
                }
                rx
            }
        };
        let outcome = tokio::time::timeout(wait, rx.wait_for(|p| *p != Phase::Working))
            .await
            .ok()
            .and_then(|r| r.ok().map(|p| *p));
        match outcome {
            Some(p) => p == Phase::Ready,
            None => self.certs.contains(&name),
        }
    }

    fn finish(&self, name: &str, phase: Phase, tx: &watch::Sender<Phase>, refuse_for: i64) {
        if let Ok(mut g) = self.gate.lock() {
            g.pending.remove(name);
            if phase == Phase::Refused {
                g.refused.insert(name.to_string(), unix_now() + refuse_for);
                // Keep the cache bounded under a flood of random names.
                if g.refused.len() > 100_000 {
                    let now = unix_now();
                    g.refused.retain(|_, until| *until > now);
                }
            }
        }
        let _ = tx.send(phase);
    }

    /// Takes an order slot when the per-minute cap allows one.
    fn take_order_slot(&self) -> bool {
        let Ok(mut g) = self.gate.lock() else {
            return false;
        };
        let now = unix_now();
        while g.orders.front().is_some_and(|&t| t <= now - 60) {
            g.orders.pop_front();
        }
        if g.orders.len() >= self.settings.orders_per_minute as usize {
            return false;
        }
        g.orders.push_back(now);
        true
    }
}

/// Starts the on-demand issuer on its own thread; the returned handle admits names.
pub fn spawn(
    settings: OnDemandSettings,
    certs: Arc<NamedCerts>,
    acme: AcmeSettings,
    storage: Arc<dyn Storage>,
    challenges: Challenges,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Arc<OnDemand>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let od = Arc::new(OnDemand {
        settings,
        certs,
        gate: Mutex::new(Gate::default()),
        jobs: tx,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = od.clone();
    std::thread::Builder::new()
        .name("portcullis-ondemand".into())
        .spawn(move || {
            let issuer = Arc::new(Issuer {
                od: handle,
                acme,
                storage,
                challenges,
                client: tokio::sync::Mutex::new(None),
            });
            rt.block_on(issuer.run(rx, shutdown));
        })?;
    Ok(od)
}

/// The issuing side, on its own runtime.
struct Issuer {
    od: Arc<OnDemand>,
    acme: AcmeSettings,
    storage: Arc<dyn Storage>,
    challenges: Challenges,
    /// The ACME account, opened at the first order.
    client: tokio::sync::Mutex<Option<Arc<AcmeClient>>>,
}

impl Issuer {
    async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::UnboundedReceiver<(String, watch::Sender<Phase>)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut renewals = tokio::time::interval(Duration::from_secs(3600));
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = jobs.recv() => {
                    let Some((name, tx)) = job else { return };
                    let me = self.clone();
                    tokio::spawn(async move { me.decide(name, tx).await });
                }
                _ = renewals.tick() => {
                    let me = self.clone();
                    tokio::spawn(async move { me.renew_due().await });
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn decide(&self, name: String, tx: watch::Sender<Phase>) {
        let od = &self.od;
        let refuse_for = od.settings.refusal_cache.as_secs() as i64;
        let names = vec![name.clone()];
        // Obtained earlier (by this or another process): no approval or order needed.
        if let Some(c) = stored(self.storage.as_ref(), &names) {
            od.certs.insert(&name, c.certified.clone());
            tracing::info!(name, expires = %fmt_time(c.info.not_after), "on-demand: certificate loaded from storage");
            od.finish(&name, Phase::Ready, &tx, 0);
            return;
        }
        if let Err(why) = self.approve(&name).await {
            tracing::info!(
                name,
                reason = why,
                "on-demand: name not approved; refusing its handshakes for {}s",
                refuse_for
            );
            od.finish(&name, Phase::Refused, &tx, refuse_for);
            return;
        }
        if od.certs.len() >= od.settings.max_names {
            tracing::warn!(name, max_names = od.settings.max_names, "on-demand: max_names reached; not ordering (raise on_demand.max_names if this is expected)");
            od.finish(&name, Phase::Refused, &tx, refuse_for);
            return;
        }
        if !od.take_order_slot() {
            tracing::warn!(
                name,
                orders_per_minute = od.settings.orders_per_minute,
                "on-demand: order rate limit reached; refusing this name for a minute"
            );
            od.finish(&name, Phase::Refused, &tx, refuse_for.min(60));
            return;
        }
        match self.order(&names).await {
            Ok(c) => {
                od.certs.insert(&name, c.certified.clone());
                tracing::info!(name, expires = %fmt_time(c.info.not_after), issuer = c.info.issuer, "on-demand: certificate obtained");
                crate::ops::events::certificate_loaded(
                    &name,
                    crate::ops::events::CertSource::OnDemand,
                    &names,
                    c.info.not_after,
                    false,
                );
                od.finish(&name, Phase::Ready, &tx, 0);
            }
            Err(e) => {
                tracing::error!(name, error = %e, "on-demand: order failed; refusing this name for {}s", refuse_for);
                od.finish(&name, Phase::Refused, &tx, refuse_for);
            }
        }
    }

    /// `Ok` when the allow list or the `ask` endpoint approves `name`.
    async fn approve(&self, name: &str) -> Result<(), String> {
        let s = &self.od.settings;
        if allowed(&s.allow, name) {
            return Ok(());
        }
        let Some(ask) = &s.ask else {
            return Err("not in on_demand.allow".into());
        };
        let sep = if ask.contains('?') { '&' } else { '?' };
        let url = format!("{ask}{sep}domain={name}");
        match crate::http::client::request(
            http::Method::GET,
            &url,
            None,
            Vec::new(),
            4096,
            ASK_TIMEOUT,
        )
        .await
        {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, _)) => Err(format!("ask endpoint answered {status}")),
            Err(e) => Err(format!("ask endpoint failed: {e}")),
        }
    }

    async fn account(&self) -> Result<Arc<AcmeClient>, AcmeError> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let client = Arc::new(
            AcmeClient::open_with_eab(
                self.storage.as_ref(),
                &self.acme.directory,
                self.acme.ca_root.as_deref(),
                &self.acme.contact,
                self.acme.eab.as_ref(),
            )
            .await?,
        );
        *c = Some(client.clone());
        Ok(client)
    }

    /// Orders, checks and stores the certificate for `names` (HTTP-01, then TLS-ALPN-01),
    /// under the store's order lock: when another process (an instance sharing the store) is
    /// ordering it already, waits for its certificate instead of ordering a second one.
    async fn order(&self, names: &[String]) -> Result<LoadedCert, String> {
        let lock_name = super::manager::order_lock(names);
        let deadline = tokio::time::Instant::now() + ORDER_TIMEOUT;
        let lock = loop {
            match self.storage.try_lock(&lock_name) {
                Ok(Some(lock)) => break lock,
                Ok(None) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err("another instance held the order lock too long".into());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(format!("cannot take the order lock: {e}")),
            }
        };
        // The other holder may have finished meanwhile (a certificate not yet due).
        if let Some(c) = stored(self.storage.as_ref(), names) {
            let (from, until) = (c.info.not_before, c.info.not_after);
            if unix_now() < until - (until - from) / 3 {
                return Ok(c);
            }
        }
        let client = self.account().await.map_err(|e| e.to_string())?;
        let options = OrderOptions {
            profile: self.acme.profile.clone(),
            ..Default::default()
        };
        let issued = client
            .issue_trying(
                names,
                &self.challenges,
                self.acme.key_type,
                &options,
                ORDER_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        store_issued(self.storage.as_ref(), Some(&*lock), names, &issued, false)
    }

    /// Renews on-demand certificates past two thirds of their lifetime (the old one is served
    /// until the new one is in hand).
    async fn renew_due(&self) {
        let now = unix_now();
        for (name, ck) in self.od.certs.all() {
            use x509_parser::prelude::FromDer;
            let Some((_, leaf)) = ck
                .cert
                .first()
                .and_then(|c| x509_parser::certificate::X509Certificate::from_der(c).ok())
            else {
                continue;
            };
            let (from, until) = (
                leaf.validity().not_before.timestamp(),
                leaf.validity().not_after.timestamp(),
            );
            if now < until - (until - from) / 3 {
                continue;
            }
            match self.order(std::slice::from_ref(&name)).await {
                Ok(c) if c.certified.cert.first() == ck.cert.first() => {} // nothing newer
                Ok(c) => {
                    self.od.certs.insert(&name, c.certified.clone());
                    tracing::info!(name, expires = %fmt_time(c.info.not_after), "on-demand: certificate renewed");
                    let source = crate::ops::events::CertSource::OnDemand;
                    crate::ops::events::certificate_loaded(
                        &name,
                        source,
                        std::slice::from_ref(&name),
                        c.info.not_after,
                        true,
                    );
                    crate::ops::events::renewal(&name, source, true, "renewed");
                }
                Err(e) => {
                    tracing::error!(name, error = %e, "on-demand: renewal failed; retrying within the hour");
                    crate::ops::events::renewal(
                        &name,
                        crate::ops::events::CertSource::OnDemand,
                        false,
                        &e.to_string(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_dns_names_get_anywhere() {
        for ok in ["shop.example.com", "a-b.c.example", "x1.example"] {
            assert!(plausible_name(ok), "{ok}");
        }
        for bad in [
            "localhost",
            "127.0.0.1",
            "Shop.example.com",
            "-a.example",
            "a..example",
            "a_b.example",
            "",
            &format!("{}.example", "a".repeat(64)),
        ] {
            assert!(!plausible_name(bad), "{bad}");
        }
    }

    #[test]
    fn allow_patterns_match_one_label_under_a_wildcard() {
        let p = vec![
            HostPattern::parse("*.shops.example").unwrap(),
            HostPattern::parse("exact.example").unwrap(),
        ];
        assert!(allowed(&p, "a.shops.example"));
        assert!(allowed(&p, "exact.example"));
        assert!(!allowed(&p, "shops.example"));
        assert!(!allowed(&p, "a.b.shops.example"));
        assert!(!allowed(&p, "xshops.example"));
        assert!(!allowed(&p, "other.example"));
    }
}
