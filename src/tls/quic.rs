//! The TLS side of QUIC (HTTP/3).
//!
//! quinn takes one rustls configuration when a connection's first packet arrives, before the
//! ClientHello has been read, so the per-site configurations of the TCP side (chosen after the
//! ClientHello) cannot be used as they are. Every QUIC handshake runs with one configuration
//! whose certificate resolver makes the same choice as the TCP side does: the site by SNI
//! (exact names over wildcards, IP literals, then on-demand names), the default site for
//! clients without SNI, and `tls.unknown_sni` for names no site lists. Sites that verify
//! client certificates, and sites with `http3 = false`, are not served over QUIC: their names
//! are refused here, and their TCP responses carry no `Alt-Svc`, so browsers never try.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::names::NameTable;
use super::resolver::NamedCerts;

/// Picks a QUIC handshake's site and its certificate.
pub struct QuicCerts {
    /// Host name → site (as `TlsFront::sni`).
    pub sni: NameTable<usize>,
    /// Per site: its certificates, `None` when the site is not served over HTTP/3.
    pub sites: Vec<Option<Arc<dyn ResolvesServerCert>>>,
    /// The site answering clients without SNI.
    pub default_site: usize,
    /// Names no site lists get the default site (`tls.unknown_sni = "default_site"`).
    pub unknown_to_default: bool,
    /// On-demand TLS: the site serving names obtained on demand, and those names (a name not
    /// obtained yet is refused over QUIC; the client's TCP connection obtains it).
    pub on_demand: Option<(usize, Arc<NamedCerts>)>,
}

impl std::fmt::Debug for QuicCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicCerts")
            .field("sites", &self.sites.len())
            .finish_non_exhaustive()
    }
}

impl QuicCerts {
    /// The site serving `sni` over QUIC, if any.
    pub fn site_of(&self, sni: Option<&str>) -> Option<usize> {
        let site = match sni {
            None => Some(self.default_site),
            Some(name) => self.sni.get(name).copied().or_else(|| {
                let named = self.on_demand.as_ref().and_then(|(site, named)| {
                    named.contains(&name.to_ascii_lowercase()).then_some(*site)
                });
                named.or(self.unknown_to_default.then_some(self.default_site))
            }),
        }?;
        self.sites.get(site)?.as_ref().map(|_| site)
    }
}

impl ResolvesServerCert for QuicCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let site = self.site_of(hello.server_name())?;
        self.sites[site].as_ref()?.resolve(hello)
    }
}
