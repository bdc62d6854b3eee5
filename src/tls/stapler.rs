//! OCSP stapling policy: which response each served certificate staples, and when it is
//! refreshed.
//!
//! - A certificate whose Authority Information Access names an OCSP responder gets a response
//!   fetched at start (or taken from the storage cache when still fresh), refreshed half-way
//!   through its validity, and stapled only while it verifies, says `good` and has not expired.
//! - Responder unreachable or answering garbage: the last good response stays stapled until it
//!   expires, and fetching is retried with backoff (1 min doubling to 1 h).
//! - `revoked`: logged as an error, the staple is dropped, and an ACME site is renewed at once.
//! - A staple file replaces fetching for the certificate it is for (each of a site's chains can
//!   have its own; validation decided which); it is re-read when it changes. A site's other
//!   chains are fetched for as usual.
//! - Certificates without a responder URL (Let's Encrypt since 2025, the local CA) get nothing,
//!   silently. Must-Staple certificates without a valid staple are reported loudly, since
//!   browsers refuse them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};

use crate::ops::events;
use crate::storage::Storage;
use crate::tls::certs::{fmt_time, unix_now};
use crate::tls::ocsp::{self, CertState, Verified};
use crate::tls::resolver::{NamedCerts, SiteCerts};
use rustls::sign::CertifiedKey;

const MIN_BACKOFF: i64 = 60;
const MAX_BACKOFF: i64 = 3600;
/// The longest wait between two looks at the served certificates (new ones after a renewal,
/// a changed staple file).
const MAX_WAIT: i64 = 60;
/// One responder request's deadline.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A refresh is never scheduled sooner than this after a success (a responder handing out
/// nearly-expired responses must not be hammered).
const MIN_REFRESH: i64 = 30;

/// Sites whose certificate must be replaced now (revoked), by site name; the ACME manager
/// takes them.
#[derive(Default)]
pub struct RenewRequests {
    names: Mutex<HashSet<String>>,
    /// Woken when a name is added.
    pub notify: Notify,
}

impl RenewRequests {
    /// Asks for `site`'s certificate to be renewed now.
    pub fn request(&self, site: &str) {
        if let Ok(mut n) = self.names.lock() {
            n.insert(site.to_string());
        }
        self.notify.notify_one();
    }

    /// True (once) when `site`'s renewal was requested.
    pub fn take(&self, site: &str) -> bool {
        self.names
            .lock()
            .map(|mut n| n.remove(site))
            .unwrap_or(false)
    }
}

/// Where a site's certificates are served from: its own chains, or the names obtained on
/// demand.
pub trait Served: Send + Sync {
    /// The certificates served now.
    fn chains(&self) -> Vec<Arc<CertifiedKey>>;
    /// Staples `ocsp` (or removes it) on the certificate whose leaf is `leaf`.
    fn set_ocsp(&self, leaf: &[u8], ocsp: Option<&[u8]>);
    /// Has `notify` told when certificates are replaced or added.
    fn notify_changes(&self, notify: Arc<Notify>);
}

impl Served for SiteCerts {
    fn chains(&self) -> Vec<Arc<CertifiedKey>> {
        self.current().to_vec()
    }
    fn set_ocsp(&self, leaf: &[u8], ocsp: Option<&[u8]>) {
        SiteCerts::set_ocsp(self, leaf, ocsp);
    }
    fn notify_changes(&self, notify: Arc<Notify>) {
        SiteCerts::notify_changes(self, notify);
    }
}

impl Served for NamedCerts {
    fn chains(&self) -> Vec<Arc<CertifiedKey>> {
        self.all().into_iter().map(|(_, c)| c).collect()
    }
    fn set_ocsp(&self, leaf: &[u8], ocsp: Option<&[u8]>) {
        NamedCerts::set_ocsp(self, leaf, ocsp);
    }
    fn notify_changes(&self, notify: Arc<Notify>) {
        NamedCerts::notify_changes(self, notify);
    }
}

/// One site as the stapler sees it.
pub struct StapleSite {
    pub name: String,
    pub certs: Arc<dyn Served>,
    /// DER OCSP response files kept current by someone else, by the leaf (DER) they are for;
    /// each replaces fetching for its certificate.
    pub staple_files: Vec<(Vec<u8>, PathBuf)>,
    /// The ACME manager's renewal requests, for sites it manages.
    pub renew: Option<Arc<RenewRequests>>,
}

impl StapleSite {
    /// The staple file for the certificate whose leaf is `leaf`.
    fn staple_file(&self, leaf: &[u8]) -> Option<&Path> {
        self.staple_files
            .iter()
            .find(|(l, _)| l.as_slice() == leaf)
            .map(|(_, p)| p.as_path())
    }
}

/// Per served leaf certificate.
struct Entry {
    /// The certificate's key type (which of a site's chains, in logs).
    key: String,
    url: Option<String>,
    must_staple: bool,
    /// The last response that verified (any status) and its DER.
    last: Option<(Verified, Vec<u8>)>,
    next_try: i64,
    backoff: i64,
    /// The staple file's modification time when last read.
    file_stamp: Option<SystemTime>,
    /// Problems already logged (each once until the state changes).
    told: HashSet<&'static str>,
}

impl Entry {
    /// The response to staple now: fresh and `good`, nothing else.
    fn staple(&self, now: i64) -> Option<&[u8]> {
        self.last
            .as_ref()
            .filter(|(v, _)| v.state == CertState::Good && v.is_fresh(now))
            .map(|(_, der)| der.as_slice())
    }

    fn tell_once(&mut self, what: &'static str) -> bool {
        self.told.insert(what)
    }
}

/// The stapler's state across rounds.
pub struct Stapler {
    sites: Vec<StapleSite>,
    storage: Arc<dyn Storage>,
    /// Fetch from responders (`tls.ocsp_stapling`); staple files work either way.
    fetch: bool,
    entries: HashMap<Vec<u8>, Entry>,
    /// Told when any site's chains are replaced (renewal), to staple the new ones at once.
    changed: Arc<Notify>,
}

fn cache_key(leaf: &[u8]) -> String {
    format!("ocsp/{}.der", crate::storage::sha256_hex(leaf, 12))
}

impl Stapler {
    pub fn new(sites: Vec<StapleSite>, storage: Arc<dyn Storage>, fetch: bool) -> Self {
        let changed = Arc::new(Notify::new());
        for s in &sites {
            s.certs.notify_changes(changed.clone());
        }
        Stapler {
            sites,
            storage,
            fetch,
            entries: HashMap::new(),
            changed,
        }
    }

    /// One round over every served certificate; returns when the next round is due. Without
    /// `network` only staple files and the cache are looked at.
    pub async fn round(&mut self, network: bool) -> i64 {
        let mut seen = HashSet::new();
        let mut wake = unix_now() + MAX_WAIT;
        for si in 0..self.sites.len() {
            let chains = self.sites[si].certs.chains();
            for ck in chains.iter() {
                let Some(leaf) = ck.cert.first() else {
                    continue;
                };
                let leaf = leaf.as_ref().to_vec();
                let issuer = ck.cert.get(1).map(|c| c.as_ref().to_vec());
                seen.insert(leaf.clone());
                let mut entry = match self.entries.remove(&leaf) {
                    Some(e) => e,
                    None => self.new_entry(
                        &leaf,
                        issuer.as_deref(),
                        format!("{:?}", ck.key.algorithm()),
                    ),
                };
                self.update(si, &leaf, issuer.as_deref(), &mut entry, network)
                    .await;
                let now = unix_now();
                let staple = entry.staple(now);
                if ck.ocsp.as_deref() != staple {
                    self.sites[si].certs.set_ocsp(&leaf, staple);
                }
                if entry.must_staple && staple.is_none() {
                    if entry.tell_once("must-staple") {
                        tracing::error!(
                            site = self.sites[si].name,
                            key = entry.key,
                            "certificate is Must-Staple but has no valid OCSP response to staple: browsers refuse it until one is available"
                        );
                    }
                } else {
                    entry.told.remove("must-staple");
                }
                if entry.url.is_some() || self.sites[si].staple_file(&leaf).is_some() {
                    wake = wake.min(entry.next_try.max(now + 1));
                    if let Some((v, _)) = &entry.last {
                        if v.is_fresh(now) {
                            wake = wake.min(v.next_update);
                        }
                    }
                }
                self.entries.insert(leaf, entry);
            }
        }
        self.entries.retain(|leaf, _| seen.contains(leaf));
        wake
    }

    fn new_entry(&self, leaf: &[u8], issuer: Option<&[u8]>, key: String) -> Entry {
        let info = ocsp::leaf_ocsp(leaf);
        let mut e = Entry {
            key,
            url: info.url,
            must_staple: info.must_staple,
            last: None,
            next_try: 0,
            backoff: MIN_BACKOFF,
            file_stamp: None,
            told: HashSet::new(),
        };
        // A response cached by an earlier run is used at once if it still verifies.
        if let (true, Some(_), Some(issuer)) = (self.fetch, &e.url, issuer) {
            if let Ok(Some(der)) = self.storage.load(&cache_key(leaf)) {
                let now = unix_now();
                if let Ok(v) = ocsp::verify(&der, leaf, issuer, now) {
                    if v.state == CertState::Good {
                        e.next_try = v.refresh_at();
                        e.last = Some((v, der));
                    }
                }
            }
        }
        e
    }

    async fn update(
        &self,
        si: usize,
        leaf: &[u8],
        issuer: Option<&[u8]>,
        e: &mut Entry,
        network: bool,
    ) {
        let site = &self.sites[si];
        let now = unix_now();
        if let Some(path) = site.staple_file(leaf) {
            self.read_file(&site.name, path, leaf, issuer, e, now);
            return;
        }
        if !network || !self.fetch || e.url.is_none() || now < e.next_try {
            return;
        }
        let url = e.url.clone().unwrap_or_default();
        let Some(issuer) = issuer else {
            if e.tell_once("no-issuer") {
                tracing::warn!(
                    site = site.name, key = e.key,
                    "OCSP: the chain has no issuer certificate, so no OCSP request can be made: add the intermediate to the cert file"
                );
            }
            e.next_try = i64::MAX;
            return;
        };
        let result = match ocsp::request(leaf, issuer) {
            Ok(req) => match ocsp::fetch(&url, req, FETCH_TIMEOUT).await {
                Ok(der) => ocsp::verify(&der, leaf, issuer, unix_now()).map(|v| (v, der)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let now = unix_now();
        match result {
            Ok((v, der)) => match &v.state {
                CertState::Good => {
                    let first = e.staple(now).is_none();
                    if let Err(err) = self.storage.store(&cache_key(leaf), &der, false) {
                        tracing::warn!(site = site.name, key = e.key, error = %err, "OCSP: cannot cache the response");
                    }
                    e.next_try = v.refresh_at().max(now + MIN_REFRESH);
                    e.backoff = MIN_BACKOFF;
                    e.told.clear();
                    if first {
                        tracing::info!(site = site.name, key = e.key, responder = url, valid_until = %fmt_time(v.next_update), "OCSP: stapling a good response");
                    } else {
                        tracing::debug!(site = site.name, key = e.key, responder = url, valid_until = %fmt_time(v.next_update), "OCSP: response refreshed");
                    }
                    events::ocsp_refresh(&site.name, &e.key, true, "good");
                    e.last = Some((v, der));
                }
                CertState::Revoked { at, reason } => {
                    events::ocsp_refresh(&site.name, &e.key, false, "the certificate is revoked");
                    tracing::error!(
                        site = site.name, key = e.key,
                        responder = url,
                        revoked_at = %fmt_time(*at),
                        reason = reason.as_deref().unwrap_or("unspecified"),
                        "OCSP: the certificate is REVOKED: not stapling; {}",
                        if site.renew.is_some() { "ordering a new certificate now" } else { "replace the certificate" }
                    );
                    if let Some(r) = &site.renew {
                        r.request(&site.name);
                    }
                    let _ = self.storage.delete(&cache_key(leaf));
                    e.next_try = now + MAX_BACKOFF;
                    e.last = Some((v, der));
                }
                CertState::Unknown => {
                    events::ocsp_refresh(
                        &site.name,
                        &e.key,
                        false,
                        "the responder does not know this certificate",
                    );
                    tracing::warn!(
                        site = site.name,
                        key = e.key,
                        responder = url,
                        retry_in_s = e.backoff,
                        "OCSP: the responder does not know this certificate; not stapling it"
                    );
                    e.next_try = now + e.backoff;
                    e.backoff = (e.backoff * 2).min(MAX_BACKOFF);
                }
            },
            Err(err) => {
                let kept = e.staple(now).is_some();
                events::ocsp_refresh(&site.name, &e.key, false, &err.to_string());
                tracing::warn!(
                    site = site.name, key = e.key,
                    responder = url,
                    error = %err,
                    retry_in_s = e.backoff,
                    "OCSP: cannot refresh the staple; {}",
                    if kept { "keeping the last good response until it expires" } else { "no staple until it works" }
                );
                e.next_try = now + e.backoff;
                e.backoff = (e.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// (Re-)reads a certificate's staple file when it changed, and checks it against the leaf.
    fn read_file(
        &self,
        site: &str,
        path: &std::path::Path,
        leaf: &[u8],
        issuer: Option<&[u8]>,
        e: &mut Entry,
        now: i64,
    ) {
        e.next_try = now + MAX_WAIT;
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if stamp.is_some() && stamp == e.file_stamp {
            if let Some((v, _)) = &e.last {
                if !v.is_fresh(now) && e.tell_once("file-expired") {
                    tracing::error!(site, key = e.key, file = %path.display(), "OCSP: the staple file's response has expired: no longer stapled; refresh the file");
                }
            }
            return;
        }
        e.file_stamp = stamp;
        e.last = None;
        e.told.clear();
        let Some(issuer) = issuer else {
            tracing::error!(site, key = e.key, file = %path.display(), "OCSP: cannot check the staple file: the chain has no issuer certificate");
            return;
        };
        let der = match std::fs::read(path) {
            Ok(d) => d,
            Err(err) => {
                tracing::error!(site, key = e.key, file = %path.display(), error = %err, "OCSP: cannot read the staple file: not stapling");
                return;
            }
        };
        match ocsp::verify(&der, leaf, issuer, now) {
            Ok(v) if v.state == CertState::Good => {
                tracing::info!(site, key = e.key, file = %path.display(), valid_until = %fmt_time(v.next_update), "OCSP: stapling the response from the staple file");
                e.last = Some((v, der));
            }
            Ok(v) => {
                tracing::error!(site, key = e.key, file = %path.display(), status = ?v.state, "OCSP: the staple file does not say good: not stapling it");
                e.last = Some((v, der));
            }
            Err(err) => {
                tracing::error!(site, key = e.key, file = %path.display(), error = %err, "OCSP: the staple file is not usable: not stapling it");
            }
        }
    }
}

/// Runs the stapler on its own thread until `shutdown`. A first round without network runs
/// before this returns, so certificates with a staple file or a fresh cached response staple
/// it from the first handshake; responders are asked right after.
pub fn spawn(mut stapler: Stapler, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The first round runs on the stapler's thread (the caller may itself be inside a tokio
    // runtime, where blocking on another one panics); the caller waits for it.
    let (first_done, first) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("portcullis-ocsp".into())
        .spawn(move || {
            rt.block_on(stapler.round(false));
            let _ = first_done.send(());
            rt.block_on(async move {
                loop {
                    let wake = stapler.round(true).await;
                    let wait = (wake - unix_now()).clamp(1, MAX_WAIT) as u64;
                    let changed = stapler.changed.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
                        _ = changed.notified() => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                }
            })
        })?;
    // An error here means the thread ended early; the stapler logs its own failures.
    let _ = first.recv();
    Ok(())
}
