//! Certificate choice inside one site: the first chain whose key can sign with a scheme the
//! client offers (ECDSA before Ed25519 before RSA), swappable at run time without a restart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;

/// A site's chains, in preference order.
#[derive(Debug)]
pub struct SiteCerts {
    certs: ArcSwap<Vec<Arc<CertifiedKey>>>,
    /// Told when the chains are replaced (the OCSP stapler staples new ones at once).
    on_change: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

fn rank(ck: &CertifiedKey) -> u8 {
    match ck.key.algorithm() {
        SignatureAlgorithm::ECDSA => 0,
        SignatureAlgorithm::ED25519 => 1,
        SignatureAlgorithm::RSA => 2,
        _ => 3,
    }
}

fn sorted(mut certs: Vec<Arc<CertifiedKey>>) -> Vec<Arc<CertifiedKey>> {
    certs.sort_by_key(|c| rank(c));
    certs
}

impl SiteCerts {
    pub fn new(certs: Vec<Arc<CertifiedKey>>) -> Self {
        SiteCerts {
            certs: ArcSwap::from_pointee(sorted(certs)),
            on_change: std::sync::OnceLock::new(),
        }
    }

    /// Replaces the chains; handshakes already under way finish with the old ones.
    pub fn replace(&self, certs: Vec<Arc<CertifiedKey>>) {
        self.certs.store(Arc::new(sorted(certs)));
        if let Some(n) = self.on_change.get() {
            n.notify_one();
        }
    }

    /// Has `notify` told whenever [`SiteCerts::replace`] runs (one listener per site).
    pub fn notify_changes(&self, notify: Arc<tokio::sync::Notify>) {
        let _ = self.on_change.set(notify);
    }

    /// The chains served now.
    pub fn current(&self) -> Arc<Vec<Arc<CertifiedKey>>> {
        self.certs.load_full()
    }

    /// Staples `ocsp` (or removes the staple, with `None`) on the chain whose leaf is `leaf`.
    /// Returns false when no served chain has that leaf any more (it was replaced meanwhile).
    pub fn set_ocsp(&self, leaf: &[u8], ocsp: Option<&[u8]>) -> bool {
        let mut found = false;
        self.certs.rcu(|certs| {
            found = false;
            let mut out = Vec::with_capacity(certs.len());
            for ck in certs.iter() {
                if ck.cert.first().map(|c| c.as_ref()) == Some(leaf) {
                    found = true;
                    if ck.ocsp.as_deref() != ocsp {
                        let mut new = CertifiedKey::clone(ck);
                        new.ocsp = ocsp.map(|o| o.to_vec());
                        out.push(Arc::new(new));
                        continue;
                    }
                }
                out.push(ck.clone());
            }
            out
        });
        found
    }

    /// True when the site has at least one chain.
    pub fn is_empty(&self) -> bool {
        self.certs.load().is_empty()
    }
}

impl ResolvesServerCert for SiteCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let schemes = hello.signature_schemes();
        certs
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .or_else(|| certs.first())
            .cloned()
    }
}
