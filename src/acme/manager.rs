//! Keeping ACME certificates: stored ones are served at start, missing ones are ordered in the
//! background while the server runs, and every certificate is renewed inside the renewal window
//! its CA suggests (ARI, RFC 9773, see [`super::ari`]) or, without a usable ARI answer, when
//! about a third of its lifetime is left (randomly jittered). Failures are retried with
//! exponential backoff (1 min doubling to 6 h) and logged with the CA's detail; the current
//! certificate keeps being served meanwhile, and a renewed one is swapped in without a restart.
//!
//! Tests shorten the first retry with the environment variable `PORTCULLIS_ACME_RETRY_MIN`
//! (a duration such as `1s`); it is meant for tests only, production keeps the 1-minute start.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;

use super::ari::{self, AriHttp};
use super::client::{forget_account, AcmeClient, OrderOptions};
use super::pins;
use super::Challenges;
use crate::config::model::{AcmeKeyType, AcmeSettings};
use crate::ops::events::{self, CertSource};
use crate::storage::Storage;
use crate::tls::certs::{self, LoadedCert};
use crate::tls::resolver::SiteCerts;
use crate::tls::stapler::RenewRequests;

/// A site whose certificate comes from ACME.
pub struct AcmeSite {
    pub name: String,
    /// DNS names to order, in config order.
    pub names: Vec<String>,
    /// Where the certificate is served from (replaced on issuance/renewal).
    pub certs: Arc<SiteCerts>,
    /// The site's own ACME profile (`profile` in `[[site]]`); `None`: `acme.profile`.
    pub profile: Option<String>,
}

/// How often the stored certificates are compared with the served ones (a certificate removed
/// by `portcullis revoke` is replaced within this time).
const STORAGE_CHECK_SECS: i64 = 10;

/// The longest one order may take before it counts as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a process waiting for another one's order looks for its certificate.
const LOCK_POLL_SECS: i64 = 2;

/// The storage lock held while ordering the certificate for `names`: two processes sharing a
/// storage never order the same certificate at once.
pub fn order_lock(names: &[String]) -> String {
    format!("order-{}", cert_dir(names).trim_start_matches("certs/"))
}

/// Storage directory of the certificate for `names` (`chain.pem`, `key.pem`).
pub fn cert_dir(names: &[String]) -> String {
    let first = names.iter().min().map_or("", String::as_str);
    format!(
        "certs/{}-{}",
        first.replace('*', "_"),
        crate::storage::names_id(names)
    )
}

/// The stored certificate for `names`, if it is there, parses, matches its key and is not
/// expired. A corrupt or stale file is reported and treated as missing (it will be re-ordered).
pub fn stored(storage: &dyn Storage, names: &[String]) -> Option<LoadedCert> {
    let dir = cert_dir(names);
    let (chain, key) = match (
        storage.load(&format!("{dir}/chain.pem")),
        storage.load(&format!("{dir}/key.pem")),
    ) {
        (Ok(Some(c)), Ok(Some(k))) => (c, k),
        (Ok(None), _) | (_, Ok(None)) => return None,
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(dir, error = %e, "cannot read the stored certificate; ordering a new one");
            return None;
        }
    };
    let now = certs::unix_now();
    let label = std::path::Path::new(&dir);
    match certs::load_pem(
        &chain,
        &key,
        &label.join("chain.pem"),
        &label.join("key.pem"),
        now,
        &[],
    ) {
        Ok((loaded, _)) if loaded.info.not_after > now => Some(loaded),
        Ok(_) => None,
        Err(f) => {
            tracing::error!(dir, problem = %f.message, "stored certificate is corrupt; ordering a new one");
            None
        }
    }
}

/// Seconds from now until `cert` is due by the lifetime rule without jitter (0: now).
fn renew_in(cert: &LoadedCert, now: i64) -> i64 {
    (renewal_time(cert) - now).max(0)
}

/// When and why the current certificate of a site is renewed.
#[derive(Debug, Clone)]
struct Plan {
    /// The leaf this plan is for (a new certificate gets a new plan).
    leaf: Vec<u8>,
    /// Unix time the renewal is due.
    at: i64,
    /// The lifetime rule's time (jitter drawn once per certificate), used when ARI fails.
    lifetime_at: i64,
    /// When to ask the CA's ARI (again).
    ari_check_at: i64,
    /// The ARI window `at` was drawn from (kept while the CA's window does not change).
    window: Option<(i64, i64)>,
    /// Where `at` comes from, for the log and `portcullis certs`.
    basis: String,
    /// The CA that told us about this certificate through ARI, and its ARI id: an order at
    /// that CA names it in `replaces`.
    replaces: Option<(String, String)>,
}

impl Plan {
    fn lifetime(cert: &LoadedCert, now: i64) -> Plan {
        let at = ari::lifetime_time(cert.info.not_before, cert.info.not_after);
        Plan {
            leaf: leaf_der(cert),
            at,
            lifetime_at: at,
            ari_check_at: now,
            window: None,
            basis: LIFETIME_BASIS.to_string(),
            replaces: None,
        }
    }
}

const LIFETIME_BASIS: &str = "lifetime rule (2/3 of the lifetime, jittered)";

fn leaf_der(cert: &LoadedCert) -> Vec<u8> {
    cert.certified
        .cert
        .first()
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

struct SiteState {
    site: AcmeSite,
    current: Option<LoadedCert>,
    /// The renewal plan of `current`.
    plan: Option<Plan>,
    /// The CA whose certificate `current` is (for ARI); `None`: the primary CA.
    issuer_ca: Option<String>,
    /// Unix time of the last order attempt (shown by `portcullis certs`).
    last_attempt: i64,
    /// Unix time of the next attempt after a failure, and the backoff used.
    retry_at: i64,
    backoff: i64,
    /// The backoff after a success (1 min; shorter in tests).
    first_backoff: i64,
    /// The last failure, until a success (shown by `portcullis certs`).
    last_error: Option<String>,
    /// The leaf of a certificate found revoked (OCSP): never installed again, replaced now.
    revoked: Option<Vec<u8>>,
}

fn leaf_of(cert: &LoadedCert) -> Option<&[u8]> {
    cert.certified.cert.first().map(|c| c.as_ref())
}

fn is_revoked(st: &SiteState, cert: &LoadedCert) -> bool {
    st.revoked.is_some() && st.revoked.as_deref() == leaf_of(cert)
}

const DEFAULT_MIN_BACKOFF: i64 = 60;
const MAX_BACKOFF: i64 = 6 * 3600;

/// The first retry delay: 1 minute, or `PORTCULLIS_ACME_RETRY_MIN` (for tests only, e.g. `1s`).
fn min_backoff() -> i64 {
    let v = std::env::var("PORTCULLIS_ACME_RETRY_MIN").ok();
    parse_min_backoff(v.as_deref()).unwrap_or_else(|| {
        tracing::warn!(
            value = v,
            "PORTCULLIS_ACME_RETRY_MIN is not a duration of at least 1s (e.g. \"5s\"); using 1 min"
        );
        DEFAULT_MIN_BACKOFF
    })
}

/// The first retry delay for the value of `PORTCULLIS_ACME_RETRY_MIN` (`None`: unset → 1 min);
/// `None` when the value is unusable. At most the 6-hour cap.
fn parse_min_backoff(v: Option<&str>) -> Option<i64> {
    match v {
        None => Some(DEFAULT_MIN_BACKOFF),
        Some(v) => match humantime::parse_duration(v.trim()) {
            Ok(d) if d.as_secs() >= 1 => Some((d.as_secs() as i64).min(MAX_BACKOFF)),
            _ => None,
        },
    }
}

/// Runs the certificate manager on its own thread until `shutdown`.
pub fn spawn(
    settings: AcmeSettings,
    storage: Arc<dyn Storage>,
    sites: Vec<(AcmeSite, Option<LoadedCert>)>,
    challenges: Challenges,
    renew: Arc<RenewRequests>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    super::spawn_task("portcullis-acme", move || {
        run(settings, storage, sites, challenges, renew, shutdown)
    })
}

async fn run(
    settings: AcmeSettings,
    storage: Arc<dyn Storage>,
    sites: Vec<(AcmeSite, Option<LoadedCert>)>,
    challenges: Challenges,
    renew: Arc<RenewRequests>,
    mut shutdown: watch::Receiver<bool>,
) {
    let first_backoff = min_backoff();
    let mut states: Vec<SiteState> = sites
        .into_iter()
        .map(|(site, current)| {
            let recorded = status(storage.as_ref(), &site.names);
            SiteState {
                site,
                current,
                plan: None,
                issuer_ca: recorded.as_ref().and_then(|r| r.ca.clone()),
                last_attempt: recorded.as_ref().map_or(0, |r| r.last_attempt),
                retry_at: 0,
                backoff: first_backoff,
                first_backoff,
                last_error: None,
                revoked: None,
            }
        })
        .collect();
    // ARI requests; without this client, renewal follows the lifetime rule only.
    let mut ari_http = match AriHttp::new(settings.ca_root.as_deref()) {
        Ok(http) => Some(Ari {
            http,
            directories: std::collections::HashMap::new(),
        }),
        Err(e) => {
            tracing::error!(error = %e, "ACME: cannot make the HTTPS client for ARI; renewing by the lifetime rule");
            None
        }
    };
    // The primary CA first, then each fallback in turn (each with its own account).
    let directories: Vec<String> = std::iter::once(settings.directory.clone())
        .chain(settings.fallback.iter().cloned())
        .collect();
    let mut clients: Vec<Option<AcmeClient>> = directories.iter().map(|_| None).collect();
    // Another instance's writes, announced as they happen (shared stores only).
    let mut changes = storage.changes();
    loop {
        let now = certs::unix_now();
        let mut next_wake = now + 3600;
        for st in &mut states {
            // A revoked certificate (OCSP said so, or `portcullis revoke` removed it from
            // storage) is replaced now, failures or not.
            let dir = cert_dir(&st.site.names);
            let stored_chain = storage.load(&format!("{dir}/chain.pem"));
            let removed =
                st.current.is_some() && st.revoked.is_none() && matches!(stored_chain, Ok(None));
            // Another instance sharing the store renewed it: serve the newer certificate
            // (within STORAGE_CHECK_SECS of its being stored).
            if let (Ok(Some(chain)), Some(current)) = (&stored_chain, &st.current) {
                let stored_leaf = rustls::pki_types::CertificateDer::pem_slice_iter(chain)
                    .next()
                    .and_then(Result::ok);
                if stored_leaf.as_deref() != leaf_of(current) {
                    let newer = stored(storage.as_ref(), &st.site.names).filter(|c| {
                        c.info.not_after > current.info.not_after && !is_revoked(st, c)
                    });
                    if let Some(cert) = newer {
                        tracing::info!(
                            site = st.site.name,
                            not_after = cert.info.not_after,
                            "ACME: serving the certificate another instance stored"
                        );
                        install(st, cert);
                    }
                }
            }
            if removed {
                tracing::warn!(
                    site = st.site.name,
                    "ACME: the stored certificate was removed (revoked with `portcullis revoke`?): ordering a new one now"
                );
            }
            next_wake = next_wake.min(now + STORAGE_CHECK_SECS);
            if renew.take(&st.site.name) || removed {
                st.revoked = st.current.as_ref().and_then(leaf_of).map(<[u8]>::to_vec);
                st.retry_at = 0;
                st.backoff = st.first_backoff;
            }
            // A changed key type takes effect now, not at the next regular renewal.
            let keep = st
                .current
                .as_ref()
                .is_some_and(|c| c.info.key == settings.key_type.kind() && !is_revoked(st, c));
            if keep {
                refresh_plan(st, ari_http.as_mut(), &directories[0], storage.as_ref()).await;
                if let Some(plan) = &st.plan {
                    next_wake = next_wake.min(plan.ari_check_at);
                    if plan.at > now {
                        next_wake = next_wake.min(plan.at);
                        continue;
                    }
                }
            }
            if st.retry_at > now {
                next_wake = next_wake.min(st.retry_at);
                continue;
            }
            st.last_attempt = now;
            let mut errors = Vec::new();
            'cas: for (i, directory) in directories.iter().enumerate() {
                let mut registered_again = false;
                loop {
                    if clients[i].is_none() {
                        // EAB credentials belong to the primary CA only.
                        let eab = if i == 0 { settings.eab.as_ref() } else { None };
                        match AcmeClient::open_with_eab(
                            storage.as_ref(),
                            directory,
                            settings.ca_root.as_deref(),
                            &settings.contact,
                            eab,
                        )
                        .await
                        {
                            Ok(c) => clients[i] = Some(c),
                            Err(e) => {
                                tracing::error!(site = st.site.name, error = %e, "ACME: no account at this CA");
                                errors.push(e.to_string());
                                break;
                            }
                        }
                    }
                    let Some(c) = &clients[i] else { break };
                    // `replaces` only for the CA that told us about the certificate.
                    // The key whose pin `portcullis pins` has been announcing as "next".
                    let key_pem = match pins::next_key(
                        storage.as_ref(),
                        &st.site.names,
                        settings.key_type,
                    ) {
                        Ok(k) => Some(k),
                        Err(e) => {
                            tracing::warn!(site = st.site.name, error = %e, "ACME: no pre-generated next key; the order uses a fresh key");
                            None
                        }
                    };
                    let options = OrderOptions {
                        profile: st.site.profile.clone().or_else(|| settings.profile.clone()),
                        replaces: st
                            .plan
                            .as_ref()
                            .and_then(|p| p.replaces.as_ref())
                            .filter(|(ca, _)| ca == directory)
                            .map(|(_, id)| id.clone()),
                        key_pem,
                    };
                    match obtain(
                        c,
                        storage.as_ref(),
                        st,
                        &challenges,
                        settings.key_type,
                        &options,
                    )
                    .await
                    {
                        Outcome::UnknownAccount if !registered_again => {
                            tracing::warn!(
                                site = st.site.name,
                                ca = directory,
                                "ACME: the CA no longer knows our account; registering a new one"
                            );
                            if let Err(e) = forget_account(storage.as_ref(), directory) {
                                tracing::error!(error = %e, "ACME: cannot drop the stored account");
                            }
                            clients[i] = None;
                            registered_again = true;
                        }
                        Outcome::Failed | Outcome::UnknownAccount => {
                            errors.extend(st.last_error.clone());
                            if i + 1 < directories.len() {
                                tracing::warn!(
                                    site = st.site.name,
                                    next = directories[i + 1],
                                    "ACME: trying the fallback CA"
                                );
                            }
                            break;
                        }
                        Outcome::Done | Outcome::Waiting => {
                            errors.clear();
                            break 'cas;
                        }
                    }
                }
            }
            if !errors.is_empty() {
                st.last_error = Some(errors.join("; then: "));
                st.retry_at = certs::unix_now() + st.backoff;
                st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                write_status(storage.as_ref(), st);
            }
            // Next: the new certificate's renewal time (after asking its CA's ARI), or the
            // retry after a failure.
            refresh_plan(st, ari_http.as_mut(), &directories[0], storage.as_ref()).await;
            let now = certs::unix_now();
            match &st.plan {
                Some(plan) if plan.at > now => {
                    next_wake = next_wake.min(plan.at).min(plan.ari_check_at)
                }
                _ => next_wake = next_wake.min(st.retry_at),
            }
        }
        let wait = Duration::from_secs((next_wake - certs::unix_now()).clamp(1, 3600) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = renew.notify.notified() => {}
            change = crate::storage::next_change(&mut changes) => {
                // A certificate another instance stored is looked at now, not at the next
                // poll; a site still waiting for its first one asks again (the order lock
                // tells whether the other instance is done). Only the certificate itself
                // counts: status records change at every attempt, anywhere.
                for st in &mut states {
                    let chain = format!("{}/chain.pem", cert_dir(&st.site.names));
                    let ours = match &change {
                        crate::storage::Change::All => true,
                        crate::storage::Change::Key(k) => *k == chain,
                    };
                    if ours && st.current.is_none() {
                        st.retry_at = 0;
                    }
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The ARI client and the directories it read (kept an hour: one read serves every site).
struct Ari {
    http: AriHttp,
    directories: std::collections::HashMap<String, (i64, ari::CaInfo)>,
}

impl Ari {
    async fn directory(&mut self, ca: &str, now: i64) -> Result<ari::CaInfo, String> {
        if let Some((at, info)) = self.directories.get(ca) {
            if now - at < 3600 {
                return Ok(info.clone());
            }
        }
        let info = self.http.directory(ca).await?;
        self.directories.insert(ca.to_string(), (now, info.clone()));
        Ok(info)
    }
}

/// Makes sure the current certificate of `st` has a renewal plan, and asks its CA's ARI when
/// that is due (the CA that issued it, else `primary`). Records a changed plan in the status.
async fn refresh_plan(
    st: &mut SiteState,
    client: Option<&mut Ari>,
    primary: &str,
    storage: &dyn Storage,
) {
    let Some(cur) = st.current.as_ref() else {
        return;
    };
    let now = certs::unix_now();
    let leaf = leaf_der(cur);
    let mut changed = false;
    if st.plan.as_ref().is_none_or(|p| p.leaf != leaf) {
        st.plan = Some(Plan::lifetime(cur, now));
        changed = true;
    }
    let (not_before, not_after) = (cur.info.not_before, cur.info.not_after);
    let Some(plan) = st.plan.as_mut() else {
        return;
    };
    if plan.ari_check_at <= now {
        let before = (plan.at, plan.basis.clone());
        match client {
            Some(client) => {
                let ca = st.issuer_ca.as_deref().unwrap_or(primary);
                check_ari(
                    client,
                    ca,
                    &st.site.name,
                    (not_before, not_after),
                    plan,
                    now,
                )
                .await;
            }
            None => plan.ari_check_at = now + ari::ARI_RECHECK_MAX,
        }
        changed |= before != (plan.at, plan.basis.clone());
    }
    if changed {
        write_status(storage, st);
    }
}

/// Puts `plan` back on the lifetime rule until `recheck_at`. An earlier time that a previous ARI
/// answer asked for stays (the CA wanted that certificate replaced early).
fn to_lifetime_rule(plan: &mut Plan, recheck_at: i64) {
    plan.at = if plan.window.is_some() {
        plan.at.min(plan.lifetime_at)
    } else {
        plan.lifetime_at
    };
    plan.window = None;
    plan.replaces = None;
    plan.ari_check_at = recheck_at;
}

/// Asks `ca` for the renewal window of the certificate `plan` is for and reschedules by it; on
/// any problem, falls back to the lifetime rule with one log line naming it.
async fn check_ari(
    client: &mut Ari,
    ca: &str,
    site: &str,
    (not_before, not_after): (i64, i64),
    plan: &mut Plan,
    now: i64,
) {
    let fallback = |plan: &mut Plan, why: String, recheck: i64| {
        to_lifetime_rule(plan, now + recheck);
        plan.basis = format!("lifetime rule; ARI: {why}");
        tracing::warn!(
            site,
            ca,
            error = why,
            renew_at = %certs::fmt_time(plan.at),
            "ACME: no usable ARI renewal window from the CA; renewing by the lifetime rule"
        );
    };
    let id = match ari::cert_id(&plan.leaf) {
        Ok(id) => id,
        Err(e) => return fallback(plan, e, ari::ARI_RECHECK_MAX),
    };
    let url = match client.directory(ca, now).await {
        Ok(info) => match info.renewal_info {
            Some(url) => url,
            None => {
                to_lifetime_rule(plan, now + ari::ARI_RECHECK_MAX);
                if !plan.basis.contains("offers no ARI") {
                    plan.basis = format!("{LIFETIME_BASIS}; the CA offers no ARI");
                    tracing::info!(
                        site,
                        ca,
                        renew_at = %certs::fmt_time(plan.at),
                        "ACME: the CA offers no ARI (no renewalInfo in its directory); renewing by the lifetime rule"
                    );
                }
                return;
            }
        },
        Err(e) => return fallback(plan, e, ari::ARI_RECHECK_DEFAULT),
    };
    match client.http.renewal_info(&url, &id).await {
        Err(e) => fallback(plan, e, ari::ARI_RECHECK_DEFAULT),
        Ok((window, retry_after)) => {
            let recheck = ari::recheck_in(retry_after);
            match ari::ari_time(&window, not_before, not_after, now) {
                Err(e) => fallback(plan, e, recheck),
                Ok(at) => {
                    // The same window as before keeps the time drawn from it.
                    let span = (window.start, window.end);
                    if plan.window != Some(span) {
                        plan.window = Some(span);
                        plan.at = at;
                    }
                    plan.replaces = Some((ca.to_string(), id));
                    plan.ari_check_at = now + recheck;
                    let basis = format!(
                        "ARI window {} - {}",
                        certs::fmt_time(window.start),
                        certs::fmt_time(window.end)
                    );
                    if plan.basis != basis {
                        tracing::info!(
                            site,
                            ca,
                            window = basis,
                            explanation = window.explanation.as_deref().unwrap_or("(none)"),
                            renew_at = %certs::fmt_time(plan.at),
                            "ACME: renewal scheduled by the CA's ARI window"
                        );
                        plan.basis = basis;
                    }
                }
            }
        }
    }
}

/// How one attempt at one CA ended.
enum Outcome {
    /// A certificate is installed.
    Done,
    /// Another process is ordering it; look again soon.
    Waiting,
    /// This CA did not deliver (`SiteState::last_error` says why).
    Failed,
    /// The CA does not know our account any more: register again and retry.
    UnknownAccount,
}

/// Orders (or picks up from storage, when another process ordered it) the certificate of one site.
async fn obtain(
    client: &AcmeClient,
    storage: &dyn Storage,
    st: &mut SiteState,
    challenges: &Challenges,
    key_type: AcmeKeyType,
    options: &OrderOptions,
) -> Outcome {
    let names = st.site.names.clone();
    let lock = match storage.try_lock(&order_lock(&names)) {
        Ok(Some(l)) => l,
        Ok(None) => {
            // Another process is ordering this certificate: use what it stores.
            tracing::info!(
                site = st.site.name,
                "ACME: another process holds the order lock; waiting for its certificate"
            );
            st.retry_at = certs::unix_now() + LOCK_POLL_SECS;
            if let Some(c) = stored(storage, &names).filter(|c| !is_revoked(st, c)) {
                install(st, c);
            }
            return Outcome::Waiting;
        }
        Err(e) => {
            tracing::error!(site = st.site.name, error = %e, "ACME: cannot take the order lock");
            st.last_error = Some(format!("cannot take the order lock: {e}"));
            return Outcome::Failed;
        }
    };
    // The other process may have finished just before we got the lock (a certificate other
    // than the one being renewed, not due yet).
    if let Some(c) = stored(storage, &names) {
        let other = st
            .current
            .as_ref()
            .is_none_or(|cur| leaf_der(cur) != leaf_der(&c));
        if other
            && renew_in(&c, certs::unix_now()) > 0
            && c.info.key == key_type.kind()
            && !is_revoked(st, &c)
        {
            install(st, c);
            return Outcome::Done;
        }
    }
    st.last_attempt = certs::unix_now();
    tracing::info!(
        site = st.site.name,
        names = names.join(", "),
        ca = client.directory(),
        profile = options.profile.as_deref().unwrap_or("(default)"),
        replaces = options.replaces.as_deref().unwrap_or("(none)"),
        "ACME: ordering a certificate"
    );
    let result = client
        .issue_trying(&names, challenges, key_type, options, ORDER_TIMEOUT)
        .await;
    let renewal = st.current.is_some(); // metrics
    let outcome = match result {
        Ok(issued) => match store_issued(storage, Some(&*lock), &names, &issued, true) {
            Ok(c) => {
                // The next key is in service now: pre-generate the one after it.
                if options.key_pem.as_deref() == Some(issued.key_pem.as_str()) {
                    if let Err(e) = pins::new_next_key(storage, &names, key_type) {
                        tracing::warn!(site = st.site.name, error = %e, "ACME: cannot pre-generate the next key");
                    }
                }
                tracing::info!(site = st.site.name, expires = %certs::fmt_time(c.info.not_after), issuer = c.info.issuer, "ACME: certificate installed");
                let replaced = st.current.is_some();
                events::certificate_loaded(
                    &st.site.name,
                    CertSource::Acme,
                    &names,
                    c.info.not_after,
                    replaced,
                );
                if replaced {
                    events::renewal(&st.site.name, CertSource::Acme, true, "renewed");
                }
                install(st, c);
                st.issuer_ca = Some(client.directory().to_string());
                st.backoff = st.first_backoff;
                st.last_error = None;
                Outcome::Done
            }
            Err(e) => {
                tracing::error!(site = st.site.name, problem = %e, "ACME: the CA's certificate is unusable");
                events::renewal(
                    &st.site.name,
                    CertSource::Acme,
                    false,
                    &format!("the CA's certificate is unusable: {e}"),
                );
                st.last_error = Some(e);
                Outcome::Failed
            }
        },
        Err(e) => {
            tracing::error!(site = st.site.name, error = %e, "ACME: order failed");
            events::renewal(
                &st.site.name,
                CertSource::Acme,
                false,
                &format!("order failed: {e}"),
            );
            st.last_error = Some(e.to_string());
            if e.is_unknown_account() {
                Outcome::UnknownAccount
            } else {
                Outcome::Failed
            }
        }
    };
    drop(lock);
    crate::ops::metrics::acme_order(renewal, matches!(outcome, Outcome::Done)); // metrics
    if let Outcome::Done = outcome {
        write_status(storage, st);
    }
    outcome
}

/// What `portcullis certs` shows of an ACME certificate besides the certificate itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Unix time of the last attempt to order.
    pub last_attempt: i64,
    /// Why the last attempt failed (none after a success).
    pub last_error: Option<String>,
    /// Unix time of the next attempt when the last one failed.
    pub retry_at: Option<i64>,
    /// Unix time at which the current certificate is renewed.
    #[serde(default)]
    pub next_renewal: Option<i64>,
    /// Where `next_renewal` comes from: the CA's ARI window or the lifetime rule (and why).
    #[serde(default)]
    pub renewal_basis: Option<String>,
    /// SHA-256 (hex) of the leaf `next_renewal` is for: a different stored certificate (a
    /// renewal whose plan is not written yet, or one from another process) has no plan yet.
    /// Its expiry alone cannot tell them apart: a renewal minutes after an order has the same.
    #[serde(default)]
    pub cert_sha256: Option<String>,
    /// Directory URL of the CA that issued the current certificate.
    #[serde(default)]
    pub ca: Option<String>,
}

fn write_status(storage: &dyn Storage, st: &SiteState) {
    let plan = st
        .plan
        .as_ref()
        .filter(|p| st.current.as_ref().is_some_and(|c| leaf_der(c) == p.leaf));
    let status = Status {
        last_attempt: st.last_attempt,
        last_error: st.last_error.clone(),
        retry_at: st.last_error.as_ref().map(|_| st.retry_at),
        next_renewal: plan.map(|p| p.at),
        renewal_basis: plan.map(|p| p.basis.clone()),
        cert_sha256: plan.map(|p| crate::storage::sha256_hex(&p.leaf, 32)),
        ca: st.issuer_ca.clone(),
    };
    let key = format!("{}/status.json", cert_dir(&st.site.names));
    if let Ok(json) = serde_json::to_vec_pretty(&status) {
        if let Err(e) = storage.store(&key, &json, false) {
            tracing::warn!(error = %e, "ACME: cannot record the order status");
        }
    }
}

/// The recorded status of the certificate for `names`, if any.
pub fn status(storage: &dyn Storage, names: &[String]) -> Option<Status> {
    let bytes = storage
        .load(&format!("{}/status.json", cert_dir(names)))
        .ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// When the certificate for `names` is renewed and why: the plan recorded in its status when
/// it is for `cert`, else the lifetime rule's time without its jitter.
pub fn next_renewal(storage: &dyn Storage, names: &[String], cert: &LoadedCert) -> (i64, String) {
    match status(storage, names) {
        Some(Status {
            next_renewal: Some(at),
            renewal_basis: Some(basis),
            cert_sha256: Some(fp),
            ..
        }) if fp == crate::storage::sha256_hex(&leaf_der(cert), 32) => (at, basis),
        _ => (
            renewal_time(cert),
            "lifetime rule (2/3 of the lifetime)".to_string(),
        ),
    }
}

/// Checks the certificate the CA issued for `names` and stores it (with `keep_previous`, the one
/// it replaces is kept under `previous/`), through [`Storage::store_fenced`] when taken under
/// `lock`. A storage failure (a lost lock too) is logged and the certificate returned anyway:
/// serving it beats not serving it.
pub fn store_issued(
    storage: &dyn Storage,
    lock: Option<&dyn crate::storage::StorageLock>,
    names: &[String],
    issued: &super::client::Issued,
    keep_previous: bool,
) -> Result<LoadedCert, String> {
    let dir = cert_dir(names);
    let label = std::path::Path::new(&dir);
    let (cert, _) = certs::load_pem(
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        &label.join("chain.pem"),
        &label.join("key.pem"),
        certs::unix_now(),
        &[],
    )
    .map_err(|f| format!("the CA's certificate is unusable: {}", f.message))?;
    if keep_previous {
        for f in ["chain.pem", "key.pem"] {
            if let Ok(Some(old)) = storage.load(&format!("{dir}/{f}")) {
                let _ = storage.store(&format!("{dir}/previous/{f}"), &old, f == "key.pem");
            }
        }
    }
    // Under the order lock, the writes are fenced: a holder whose lease ran out while it
    // ordered does not overwrite what the next holder stored.
    let store = |key: String, value: &[u8], secret: bool| match lock {
        Some(lock) => storage.store_fenced(lock, &key, value, secret),
        None => storage.store(&key, value, secret),
    };
    let saved = store(format!("{dir}/key.pem"), issued.key_pem.as_bytes(), true).and_then(|_| {
        store(
            format!("{dir}/chain.pem"),
            issued.chain_pem.as_bytes(),
            false,
        )
    });
    // Who obtained it, when: the cluster view (`portcullis certs`, the status page).
    let record = Issuance {
        by: crate::storage::instance_id(),
        at: certs::unix_now(),
        cert_sha256: crate::storage::sha256_hex(&leaf_der(&cert), 32),
    };
    let saved = saved.and_then(|()| {
        let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        store(format!("{dir}/{ISSUANCE}"), &json, false)
    });
    if let Err(e) = saved {
        tracing::error!(dir, error = %e, "ACME: cannot store the new certificate (serving it anyway)");
    }
    Ok(cert)
}

/// Where [`Issuance`] is kept beside a certificate.
const ISSUANCE: &str = "issued.json";

/// Which instance obtained the stored certificate, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issuance {
    /// The instance (`HOST:PID`, [`crate::storage::instance_id`]).
    pub by: String,
    /// Unix seconds.
    pub at: i64,
    /// SHA-256 of the leaf (hex, 32 characters): the record is for this certificate only.
    pub cert_sha256: String,
}

/// Who obtained the certificate whose leaf is `leaf` (DER) for `names`, as recorded beside it.
pub fn issuance(storage: &dyn Storage, names: &[String], leaf: &[u8]) -> Option<Issuance> {
    let bytes = storage
        .load(&format!("{}/{ISSUANCE}", cert_dir(names)))
        .ok()??;
    serde_json::from_slice::<Issuance>(&bytes)
        .ok()
        .filter(|i| i.cert_sha256 == crate::storage::sha256_hex(leaf, 32))
}

/// Unix time at which `cert` is due for renewal by the lifetime rule (two thirds into its
/// lifetime, before jitter).
pub fn renewal_time(cert: &LoadedCert) -> i64 {
    cert.info.not_after - (cert.info.not_after - cert.info.not_before) / 3
}

fn install(st: &mut SiteState, cert: LoadedCert) {
    st.site.certs.replace(vec![cert.certified.clone()]);
    st.current = Some(cert);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(at: i64, lifetime_at: i64, window: Option<(i64, i64)>) -> Plan {
        Plan {
            leaf: vec![1],
            at,
            lifetime_at,
            ari_check_at: 0,
            window,
            basis: "ARI window".into(),
            replaces: Some(("https://ca.test/dir".into(), "a.b".into())),
        }
    }

    #[test]
    fn falling_back_to_the_lifetime_rule_keeps_an_earlier_ari_time_and_drops_replaces() {
        // ARI had asked for an early renewal: that stays.
        let mut p = plan(100, 500, Some((90, 110)));
        to_lifetime_rule(&mut p, 7000);
        assert_eq!((p.at, p.ari_check_at), (100, 7000));
        assert!(p.window.is_none() && p.replaces.is_none());
        // ARI had pushed it later than the lifetime rule: back to the lifetime rule.
        let mut p = plan(900, 500, Some((800, 1000)));
        to_lifetime_rule(&mut p, 7000);
        assert_eq!(p.at, 500);
        // No ARI answer before: the lifetime rule's time.
        let mut p = plan(500, 500, None);
        to_lifetime_rule(&mut p, 7000);
        assert_eq!(p.at, 500);
    }

    #[test]
    fn the_retry_backoff_starts_at_one_minute_unless_a_test_shortens_it() {
        assert_eq!(parse_min_backoff(None), Some(60));
        assert_eq!(parse_min_backoff(Some("1s")), Some(1));
        assert_eq!(parse_min_backoff(Some(" 5s ")), Some(5));
        assert_eq!(parse_min_backoff(Some("2days")), Some(MAX_BACKOFF));
        assert_eq!(parse_min_backoff(Some("0s")), None);
        assert_eq!(parse_min_backoff(Some("500ms")), None);
        assert_eq!(parse_min_backoff(Some("soon")), None);
    }
}
