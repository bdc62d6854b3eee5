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
        }
    }

    /// Replaces the chains; handshakes already under way finish with the old ones.
    pub fn replace(&self, certs: Vec<Arc<CertifiedKey>>) {
        self.certs.store(Arc::new(sorted(certs)));
    }

    /// The chains served now.
    pub fn current(&self) -> Arc<Vec<Arc<CertifiedKey>>> {
        self.certs.load_full()
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
