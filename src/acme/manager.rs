//! Keeping ACME certificates: stored ones are served at start, missing ones are ordered in the
//! background while the server runs, and every certificate is renewed when a third of its
//! lifetime is left. Failures are retried with exponential backoff (1 min doubling to 6 h) and
//! logged with the CA's detail; the current certificate keeps being served meanwhile, and a
//! renewed one is swapped in without a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::{forget_account, AcmeClient, AcmeError, ChallengeKind};
use super::Challenges;
use crate::config::model::{AcmeKeyType, AcmeSettings};
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
}

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

/// Seconds from now until `cert` should be renewed (0: now).
fn renew_in(cert: &LoadedCert, now: i64) -> i64 {
    let life = cert.info.not_after - cert.info.not_before;
    (cert.info.not_after - life / 3 - now).max(0)
}

struct SiteState {
    site: AcmeSite,
    current: Option<LoadedCert>,
    /// Unix time of the next attempt after a failure, and the backoff used.
    retry_at: i64,
    backoff: i64,
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

const MIN_BACKOFF: i64 = 60;
const MAX_BACKOFF: i64 = 6 * 3600;

/// Runs the certificate manager on its own thread until `shutdown`.
pub fn spawn(
    settings: AcmeSettings,
    storage: Arc<dyn Storage>,
    sites: Vec<(AcmeSite, Option<LoadedCert>)>,
    challenges: Challenges,
    renew: Arc<RenewRequests>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("portcullis-acme".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "ACME: cannot start");
                    return;
                }
            };
            rt.block_on(run(settings, storage, sites, challenges, renew, shutdown));
        })?;
    Ok(())
}

async fn run(
    settings: AcmeSettings,
    storage: Arc<dyn Storage>,
    sites: Vec<(AcmeSite, Option<LoadedCert>)>,
    challenges: Challenges,
    renew: Arc<RenewRequests>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut states: Vec<SiteState> = sites
        .into_iter()
        .map(|(site, current)| SiteState {
            site,
            current,
            retry_at: 0,
            backoff: MIN_BACKOFF,
            last_error: None,
            revoked: None,
        })
        .collect();
    // The primary CA first, then each fallback in turn (each with its own account).
    let directories: Vec<String> = std::iter::once(settings.directory.clone())
        .chain(settings.fallback.iter().cloned())
        .collect();
    let mut clients: Vec<Option<AcmeClient>> = directories.iter().map(|_| None).collect();
    loop {
        let now = certs::unix_now();
        let mut next_wake = now + 3600;
        for st in &mut states {
            // A revoked certificate (OCSP said so) is replaced now, failures or not.
            if renew.take(&st.site.name) {
                st.revoked = st.current.as_ref().and_then(leaf_of).map(<[u8]>::to_vec);
                st.retry_at = 0;
                st.backoff = MIN_BACKOFF;
            }
            // A changed key type takes effect now, not at the next regular renewal.
            let due = st
                .current
                .as_ref()
                .filter(|c| c.info.key == settings.key_type.kind() && !is_revoked(st, c))
                .map_or(0, |c| renew_in(c, now));
            if due > 0 {
                next_wake = next_wake.min(now + due);
                continue;
            }
            if st.retry_at > now {
                next_wake = next_wake.min(st.retry_at);
                continue;
            }
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
                    match obtain(c, storage.as_ref(), st, &challenges, settings.key_type).await {
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
            // Next: the new certificate's renewal time, or the retry after a failure.
            let now = certs::unix_now();
            match st.current.as_ref().map(|cur| renew_in(cur, now)) {
                Some(due) if due > 0 => next_wake = next_wake.min(now + due),
                _ => next_wake = next_wake.min(st.retry_at),
            }
        }
        let wait = Duration::from_secs((next_wake - certs::unix_now()).clamp(1, 3600) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = renew.notify.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
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
    // The other process may have finished just before we got the lock.
    if let Some(c) = stored(storage, &names) {
        if renew_in(&c, certs::unix_now()) > 0
            && c.info.key == key_type.kind()
            && !is_revoked(st, &c)
        {
            install(st, c);
            return Outcome::Done;
        }
    }
    tracing::info!(
        site = st.site.name,
        names = names.join(", "),
        ca = client.directory(),
        "ACME: ordering a certificate"
    );
    // HTTP-01 first (port 80); when the CA cannot validate it, TLS-ALPN-01 (port 443).
    // A CA that stops answering must not stall renewals of every other site: each attempt has
    // a deadline.
    let names_ref = &names;
    let attempt = |kind| async move {
        match tokio::time::timeout(
            ORDER_TIMEOUT,
            client.issue(names_ref, challenges, kind, key_type),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(AcmeError::Timeout {
                directory: client.directory().to_string(),
                secs: ORDER_TIMEOUT.as_secs(),
            }),
        }
    };
    let result = match attempt(ChallengeKind::Http01).await {
        Err(e @ (AcmeError::Challenge { .. } | AcmeError::NoChallenge { .. })) => {
            tracing::warn!(site = st.site.name, error = %e, "ACME: http-01 failed; trying tls-alpn-01");
            attempt(ChallengeKind::TlsAlpn01).await
        }
        other => other,
    };
    let outcome = match result {
        Ok(issued) => {
            let dir = cert_dir(&names);
            let label = std::path::Path::new(&dir);
            match certs::load_pem(
                issued.chain_pem.as_bytes(),
                issued.key_pem.as_bytes(),
                &label.join("chain.pem"),
                &label.join("key.pem"),
                certs::unix_now(),
                &[],
            ) {
                Ok((c, _)) => {
                    // Keep the certificate being replaced as a backup, then store the new one.
                    for f in ["chain.pem", "key.pem"] {
                        if let Ok(Some(old)) = storage.load(&format!("{dir}/{f}")) {
                            let _ =
                                storage.store(&format!("{dir}/previous/{f}"), &old, f == "key.pem");
                        }
                    }
                    let saved = storage
                        .store(&format!("{dir}/key.pem"), issued.key_pem.as_bytes(), true)
                        .and_then(|_| {
                            storage.store(
                                &format!("{dir}/chain.pem"),
                                issued.chain_pem.as_bytes(),
                                false,
                            )
                        });
                    if let Err(e) = saved {
                        tracing::error!(site = st.site.name, error = %e, "ACME: cannot store the new certificate (serving it anyway)");
                    }
                    tracing::info!(site = st.site.name, expires = %certs::fmt_time(c.info.not_after), issuer = c.info.issuer, "ACME: certificate installed");
                    install(st, c);
                    st.backoff = MIN_BACKOFF;
                    st.last_error = None;
                    Outcome::Done
                }
                Err(f) => {
                    tracing::error!(site = st.site.name, problem = %f.message, "ACME: the CA's certificate is unusable");
                    st.last_error =
                        Some(format!("the CA's certificate is unusable: {}", f.message));
                    Outcome::Failed
                }
            }
        }
        Err(e) => {
            tracing::error!(site = st.site.name, error = %e, "ACME: order failed");
            st.last_error = Some(e.to_string());
            if e.is_unknown_account() {
                Outcome::UnknownAccount
            } else {
                Outcome::Failed
            }
        }
    };
    drop(lock);
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
}

fn write_status(storage: &dyn Storage, st: &SiteState) {
    let status = Status {
        last_attempt: certs::unix_now(),
        last_error: st.last_error.clone(),
        retry_at: st.last_error.as_ref().map(|_| st.retry_at),
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

/// Unix time at which `cert` is due for renewal (two thirds into its lifetime).
pub fn renewal_time(cert: &LoadedCert) -> i64 {
    cert.info.not_after - (cert.info.not_after - cert.info.not_before) / 3
}

fn install(st: &mut SiteState, cert: LoadedCert) {
    st.site.certs.replace(vec![cert.certified.clone()]);
    st.current = Some(cert);
}
