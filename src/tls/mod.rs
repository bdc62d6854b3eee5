//! TLS mechanism: certificates, the per-site certificate choice, ticket keys, the local CA, and
//! the rustls configuration every site's handshakes run with.
//!
//! Policy is fixed here, secure by default: TLS 1.2 + 1.3 (`intermediate`) or 1.3 only
//! (`modern`), ECDHE + AEAD suites only, X25519MLKEM768 preferred, then X25519, P-256, P-384.

pub mod certs;
mod hkdf;
pub mod local_ca;
pub mod names;
pub mod nss;
pub mod ocsp;
pub mod quic;
pub mod resolver;
pub mod stapler;
pub mod tickets;

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

/// Roots for verifying servers: the PEM certificates of `ca`, or Mozilla's (as browsers have
/// them). `what` names the setting in errors (`ca`, `--ca`).
pub fn server_roots(
    ca: Option<&std::path::Path>,
    what: &str,
) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{what} {}: malformed PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{what} {} holds no certificate (PEM \"BEGIN CERTIFICATE\" blocks)",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{what} {}: unusable certificate: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// A Mozilla-style TLS profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// TLS 1.2 and 1.3 (ECDHE + AEAD only). The default.
    Intermediate,
    /// TLS 1.3 only.
    Modern,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "intermediate" => Some(Profile::Intermediate),
            "modern" => Some(Profile::Modern),
            _ => None,
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static INTERMEDIATE: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static MODERN: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Profile::Intermediate => &INTERMEDIATE,
            Profile::Modern => &MODERN,
        }
    }
}

/// The crypto provider: aws-lc-rs with our suite order and groups (PQ hybrid first).
pub fn provider() -> CryptoProvider {
    use aws_lc_rs::cipher_suite as cs;
    use aws_lc_rs::kx_group as kx;
    CryptoProvider {
        cipher_suites: hkdf::with_prepared_hmac(&[
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]),
        kx_groups: vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1, kx::SECP384R1],
        ..aws_lc_rs::default_provider()
    }
}

/// What all sites' TLS configs share: provider, versions, resumption state, ALPN.
pub struct TlsShared {
    provider: Arc<CryptoProvider>,
    profile: Profile,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    session_cache: Arc<dyn StoresServerSessions>,
    /// Sessions of the sites that accept 0-RTT: stateful, and taken out when used (single-use
    /// tickets are what keeps early data from being replayed).
    early_cache: Option<Arc<dyn StoresServerSessions>>,
    alpn: Vec<Vec<u8>>,
    server_order: bool,
    /// For the resumption state of sites with client authentication (see `site_config`).
    ticket_rotation_secs: u32,
    session_cache_size: usize,
}

/// Settings for [`TlsShared::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub profile: Profile,
    pub session_tickets: bool,
    pub ticket_rotation_secs: u32,
    pub session_cache_size: usize,
    pub http2: bool,
    pub prefer_server_order: bool,
    /// Some site accepts early data (its sessions need their own cache).
    pub early_data: bool,
}

/// Most early data accepted per connection: room for a few requests, as nginx and Cloudflare
/// allow (16 KiB, one TLS record).
pub const MAX_EARLY_DATA: u32 = 16 * 1024;

impl TlsShared {
    pub fn new(opts: &TlsOptions) -> Result<Self, rustls::Error> {
        let ticketer = if opts.session_tickets {
            Some(tickets::rotating_ticketer(opts.ticket_rotation_secs)?)
        } else {
            None
        };
        let session_cache: Arc<dyn StoresServerSessions> = if opts.session_cache_size > 0 {
            ServerSessionMemoryCache::new(opts.session_cache_size)
        } else {
            Arc::new(rustls::server::NoServerSessionStorage {})
        };
        let mut alpn = Vec::new();
        if opts.http2 {
            alpn.push(b"h2".to_vec());
        }
        alpn.push(b"http/1.1".to_vec());
        Ok(TlsShared {
            provider: Arc::new(provider()),
            profile: opts.profile,
            ticketer,
            session_cache,
            early_cache: (opts.early_data && opts.session_cache_size > 0).then(|| {
                ServerSessionMemoryCache::new(opts.session_cache_size)
                    as Arc<dyn StoresServerSessions>
            }),
            alpn,
            server_order: opts.prefer_server_order,
            ticket_rotation_secs: opts.ticket_rotation_secs,
            session_cache_size: opts.session_cache_size,
        })
    }

    /// Seals session tickets with `ticketer` (keys shared by a cluster) instead of this
    /// process's own rotating keys; nothing changes when session tickets are off.
    pub fn share_tickets(&mut self, ticketer: Arc<dyn ProducesTickets>) {
        if self.ticketer.is_some() {
            self.ticketer = Some(ticketer);
        }
    }

    /// A server config for a `[[stream]]` route: as a site's (same versions, suites, tickets
    /// and session cache), offering `alpn` only (no HTTP protocols unless configured), no
    /// early data.
    pub fn stream_config(
        &self,
        certs: Arc<dyn rustls::server::ResolvesServerCert>,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut cfg = Arc::unwrap_or_clone(self.site_config(certs, false, false, None)?);
        cfg.alpn_protocols = alpn.to_vec();
        Ok(Arc::new(cfg))
    }

    /// The configuration of every QUIC handshake (see [`quic`]): TLS 1.3 only (QUIC has no
    /// other), ALPN `h3`, the same suites, groups, ticket keys and session cache as TCP.
    ///
    /// With `early_data` (some site served over HTTP/3 accepts 0-RTT), sessions are kept by
    /// the server and single-use, as for TCP early data; QUIC requires the early-data limit to
    /// be unbounded (`u32::MAX`: QUIC's own flow control bounds 0-RTT data).
    pub fn quic_config(
        &self,
        certs: Arc<dyn rustls::server::ResolvesServerCert>,
        early_data: bool,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        cfg.alpn_protocols = vec![b"h3".to_vec()];
        cfg.ignore_client_order = self.server_order;
        cfg.prefer_sent_key_share = true;
        cfg.session_storage = self.session_cache.clone();
        cfg.send_tls13_tickets = 1;
        cfg.max_tls13_tickets = 4;
        cfg.max_early_data_size = 0;
        match (&self.early_cache, early_data) {
            (Some(cache), true) => {
                cfg.session_storage = cache.clone();
                cfg.max_early_data_size = u32::MAX;
            }
            (None, true) => {
                return Err(rustls::Error::General(
                    "early data needs the session cache (tls.session_cache_size > 0)".into(),
                ))
            }
            (_, false) => {
                if let Some(t) = &self.ticketer {
                    cfg.ticketer = t.clone();
                }
            }
        }
        Ok(Arc::new(cfg))
    }

    /// A server config answering with `certs` (one per site; all share tickets and cache).
    ///
    /// With `early_data`, the site accepts 0-RTT: rustls does so only with stateful resumption,
    /// so its sessions live in the early-data cache (never in tickets) and are single-use.
    ///
    /// With `client_auth`, handshakes ask for a client certificate and verify it. Such a site
    /// gets resumption state of its own (ticket keys and session cache): a session carries
    /// the client certificate of its full handshake, and one made with another site's
    /// configuration (another CA, or none) cannot be resumed here, whatever the client sends.
    /// rustls refuses a session whose SNI differs already; this also covers names that change
    /// sites (on-demand names) and clients without SNI.
    pub fn site_config(
        &self,
        certs: Arc<dyn rustls::server::ResolvesServerCert>,
        early_data: bool,
        require_post_quantum: bool,
        client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(self.profile.versions())?;
        let own_sessions = client_auth.is_some();
        let mut cfg = match client_auth {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(certs);
        cfg.alpn_protocols = self.alpn.clone();
        cfg.ignore_client_order = self.server_order;
        // A TLS 1.3 client that lists X25519MLKEM768 first but sent only an X25519 (or P-256)
        // share gets that share used, as Go and BoringSSL do, instead of a HelloRetryRequest;
        // `require_post_quantum` keeps the retry for ML-KEM.
        cfg.prefer_sent_key_share = !require_post_quantum;
        cfg.session_storage = self.session_cache.clone();
        match &self.ticketer {
            // Early-data sites keep rustls's default: no tickets (stateful sessions only).
            Some(t) if !early_data => cfg.ticketer = t.clone(),
            _ => {}
        }
        cfg.max_early_data_size = 0;
        // One TLS 1.3 ticket per handshake, as Go's crypto/tls (Caddy) sends: each resumed
        // connection brings the next one. Clients that want more for parallel connections ask
        // with RFC 9149 `ticket_request` and get up to 4. (rustls's default of 2 costs a
        // second ticket encryption and record on every full handshake.)
        cfg.send_tls13_tickets = 1;
        cfg.max_tls13_tickets = 4;
        if early_data {
            let Some(cache) = &self.early_cache else {
                return Err(rustls::Error::General(
                    "early data needs the session cache (tls.session_cache_size > 0)".into(),
                ));
            };
            cfg.session_storage = cache.clone();
            cfg.max_early_data_size = MAX_EARLY_DATA;
            // Answers to early requests go out right after the server's Finished.
            cfg.send_half_rtt_data = true;
        }
        // (The configuration refuses early data with client authentication.)
        if own_sessions && !early_data {
            cfg.session_storage = if self.session_cache_size > 0 {
                ServerSessionMemoryCache::new(self.session_cache_size)
            } else {
                Arc::new(rustls::server::NoServerSessionStorage {})
            };
            if self.ticketer.is_some() {
                cfg.ticketer = tickets::rotating_ticketer(self.ticket_rotation_secs)?;
            }
        }
        Ok(Arc::new(cfg))
    }
}
