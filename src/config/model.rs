//! The validated configuration the server runs on. Every value is resolved and checked:
//! serving code never asks "is this set?".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::http::static_files::StaticConfig;
use crate::tls::certs::LoadedCert;
use crate::tls::names::HostPattern;
use crate::tls::Profile;

/// Everything `serve` needs.
#[derive(Debug)]
pub struct Config {
    pub workers: usize,
    pub data_dir: PathBuf,
    pub log_level: String,
    /// `[log]`: the default access log, the TLS event log.
    pub log: super::log::LogSettings,
    pub listen: Listen,
    pub tls: TlsSettings,
    pub http: HttpSettings,
    pub limits: Limits,
    pub acme: AcmeSettings,
    pub on_demand: Option<OnDemandSettings>,
    pub sites: Vec<Site>,
    /// Index into `sites` for clients without SNI.
    pub default_site: usize,
    /// TLS for other TCP services (`[[stream]]`).
    pub streams: Vec<super::stream::Stream>,
    /// `[listen] proxy_protocol`: load balancers whose PROXY protocol headers are believed.
    pub proxy_accept: Option<super::stream::ProxyAccept>,
    /// `[admin]`: metrics, status page, running config, health.
    pub admin: super::admin::AdminSettings,
    /// `[storage]`: the data directory (default) or Redis.
    pub storage: super::storage::StorageSettings,
}

/// On-demand TLS: which names may get a certificate at their first handshake, and the abuse
/// limits that keep a flood of random SNI from exhausting the CA's rate limits.
#[derive(Debug, Clone)]
pub struct OnDemandSettings {
    /// Index into `sites` of the site that serves approved names.
    pub site: usize,
    /// `GET <ask>?domain=<name>` approves with a 2xx answer (plain http:// on a trusted host).
    pub ask: Option<String>,
    /// Patterns approved without asking.
    pub allow: Vec<HostPattern>,
    pub max_names: usize,
    pub orders_per_minute: u32,
    pub refusal_cache: Duration,
}

/// The ACME CA for sites without certificate files.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// Directory URL.
    pub directory: String,
    /// Directory URLs tried in turn when `directory` fails.
    pub fallback: Vec<String>,
    /// External Account Binding for `directory`: key id and decoded HMAC key.
    pub eab: Option<(String, Vec<u8>)>,
    /// Contact URIs (`mailto:…`).
    pub contact: Vec<String>,
    /// Extra root to trust for the CA's HTTPS.
    pub ca_root: Option<PathBuf>,
    /// Key type of ordered certificates; a change takes effect at the next order (a stored
    /// certificate with another key type is replaced at once).
    pub key_type: AcmeKeyType,
    /// Certificate profile to order (`meta.profiles` of the CA's directory, e.g. `"shortlived"`);
    /// checked against what the CA advertises when ordering. Renewal timing follows the
    /// lifetime the CA actually issues.
    pub profile: Option<String>,
    /// DNS-01 through a hook command (wildcards need it).
    pub dns_hook: Option<DnsHookSettings>,
}

/// `acme.dns_hook`: the command that sets and removes `_acme-challenge` TXT records.
#[derive(Debug, Clone)]
pub struct DnsHookSettings {
    pub command: PathBuf,
    /// Wait after `present` before the CA validates.
    pub propagation: Duration,
    /// The longest one hook run may take before it is killed and the order fails.
    pub timeout: Duration,
}

/// Key types for ACME certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeKeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa4096,
}

impl AcmeKeyType {
    /// Every key type.
    pub const ALL: [AcmeKeyType; 4] = [
        AcmeKeyType::EcdsaP256,
        AcmeKeyType::EcdsaP384,
        AcmeKeyType::Rsa2048,
        AcmeKeyType::Rsa4096,
    ];

    /// The config spelling (`acme.key_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeKeyType::EcdsaP256 => "ecdsa-p256",
            AcmeKeyType::EcdsaP384 => "ecdsa-p384",
            AcmeKeyType::Rsa2048 => "rsa2048",
            AcmeKeyType::Rsa4096 => "rsa4096",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ecdsa-p256" => Some(AcmeKeyType::EcdsaP256),
            "ecdsa-p384" => Some(AcmeKeyType::EcdsaP384),
            "rsa2048" => Some(AcmeKeyType::Rsa2048),
            "rsa4096" => Some(AcmeKeyType::Rsa4096),
            _ => None,
        }
    }

    /// The matching [`crate::tls::certs::KeyKind`] of a loaded certificate.
    pub fn kind(self) -> crate::tls::certs::KeyKind {
        use crate::tls::certs::KeyKind;
        match self {
            AcmeKeyType::EcdsaP256 => KeyKind::EcdsaP256,
            AcmeKeyType::EcdsaP384 => KeyKind::EcdsaP384,
            AcmeKeyType::Rsa2048 => KeyKind::Rsa(2048),
            AcmeKeyType::Rsa4096 => KeyKind::Rsa(4096),
        }
    }

    /// A fresh key of this type.
    pub fn generate(self) -> Result<rcgen::KeyPair, rcgen::Error> {
        match self {
            AcmeKeyType::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            AcmeKeyType::EcdsaP384 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            AcmeKeyType::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            AcmeKeyType::Rsa4096 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
        }
    }
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Listening sockets.
#[derive(Debug, Clone)]
pub struct Listen {
    pub https: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    /// Port written into redirects; `None` → the first HTTPS listener's (actual) port.
    pub public_https_port: Option<u16>,
    /// IPv6 listeners that came from defaults may be skipped on hosts without IPv6.
    pub ipv6_optional: bool,
}

/// What to do with an SNI name no site has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    /// Answer with the default site's certificate.
    DefaultSite,
    /// Send an `unrecognized_name` alert and close.
    Reject,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub profile: Profile,
    pub unknown_sni: UnknownSni,
    pub session_tickets: bool,
    pub ticket_rotation: Duration,
    pub session_cache_size: usize,
    pub prefer_server_order: bool,
    /// Fetch and staple OCSP responses.
    pub ocsp_stapling: bool,
}

/// Port-80 redirect codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    /// 301 for GET/HEAD, 308 otherwise.
    Permanent,
    /// 302 for GET/HEAD, 307 otherwise.
    Temporary,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub http2: bool,
    pub redirect: RedirectKind,
    pub h2_max_concurrent_streams: u32,
    pub h2_stream_window: u32,
    pub h2_connection_window: u32,
    /// HTTP/3 over QUIC (see [`crate::server::quic`]).
    pub http3: bool,
    pub h3_max_concurrent_streams: u32,
    pub h3_retry: H3Retry,
    pub h3_retry_threshold: usize,
    /// One QUIC endpoint per worker, or one for the process.
    pub h3_shared_endpoint: bool,
}

/// When a new QUIC client must first prove it receives at its address (a Retry round trip):
/// the answer to spoofed-source floods (RFC 9000 §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H3Retry {
    /// When more handshakes than the threshold are in progress.
    UnderLoad,
    /// Every new connection.
    Always,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    /// The request body's minimum pace (`body_timeout`, `min_body_rate`).
    pub body_pace: BodyPace,
    /// `[limits.per_client]`.
    pub per_client: super::limits::PerClient,
}

/// How slowly a request body may arrive: while the server waits for it, every `window` of
/// waiting must bring at least `min_rate` bytes per second of it (0: any pace, but a body that
/// stalls for a whole window still ends). See [`crate::http::pace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// `limits.body_timeout` (default 10 s).
    pub window: Duration,
    /// `limits.min_body_rate` in bytes per second (default 1 KiB/s).
    pub min_rate: u64,
}

impl Default for BodyPace {
    fn default() -> Self {
        BodyPace {
            window: Duration::from_secs(10),
            min_rate: 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
            body_pace: BodyPace::default(),
            per_client: Default::default(),
        }
    }
}

/// One site: names, certificates, headers, routes.
#[derive(Debug)]
pub struct Site {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub certs: SiteCertSource,
    /// Staple files replacing OCSP fetching, each for one of the site's file certificates
    /// (the others get their responses fetched).
    pub ocsp_staples: Vec<OcspStapleFile>,
    /// ACME profile for this site's certificate (`profile` in `[[site]]`), overriding
    /// `acme.profile`; only for [`SiteCertSource::Acme`].
    pub acme_profile: Option<String>,
    /// Headers added to every HTTPS response of this site (HSTS, security headers, custom).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `hsts.ramp`: the Strict-Transport-Security header grows stage by stage (it is then not
    /// in `headers`; see [`crate::ops::hsts`]).
    pub hsts_ramp: Option<super::hsts::HstsRamp>,
    /// TLS 1.3 early data (0-RTT) is accepted, with single-use session tickets.
    pub early_data: bool,
    /// Served over HTTP/3 too (when `[http] http3` is on).
    pub http3: bool,
    /// TLS 1.3 asks a client that supports X25519MLKEM768 but sent only a classical key share
    /// for an ML-KEM share (HelloRetryRequest) instead of using the share it sent.
    pub require_post_quantum: bool,
    /// Who may pass (`access`, `basic_auth`): the rules of routes that set none of a kind.
    pub access: crate::http::access::Access,
    /// Mutual TLS: the handshake asks for a client certificate and verifies it.
    pub client_auth: Option<super::access::ClientAuth>,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
    /// This site's own access log setting (`None`: the `[log]` default).
    pub access_log: super::log::SiteAccessLog,
}

/// A DER OCSP response file kept current by the operator, and the certificate it staples.
#[derive(Debug, Clone)]
pub struct OcspStapleFile {
    /// The leaf certificate (DER) whose chain staples the file.
    pub leaf: Vec<u8>,
    pub path: PathBuf,
}

/// Where a site's certificates come from.
#[derive(Debug)]
pub enum SiteCertSource {
    /// Chains loaded from files (one or more, e.g. ECDSA + RSA).
    Files(Vec<LoadedCert>),
    /// Issued by the local CA at start-up (local names only).
    LocalCa,
    /// Obtained from the ACME CA and renewed automatically.
    Acme,
}

/// A path prefix and its handler.
#[derive(Debug, Clone)]
pub struct Route {
    /// `/` or a prefix without trailing slash (`/api`), matched on segment boundaries.
    pub prefix: String,
    pub handler: Handler,
    /// The route's own rules; each kind it leaves unset comes from the site's.
    pub access: crate::http::access::Access,
}

#[derive(Debug, Clone)]
pub enum Handler {
    Files(FilesSpec),
    Respond(RespondSpec),
    Redirect(RedirectSpec),
    Proxy(Box<ProxySpec>),
}

pub use super::proxy::ProxySpec;

/// A static-file route: the handler's own settings plus where the route's prefix goes.
#[derive(Debug, Clone)]
pub struct FilesSpec {
    pub files: StaticConfig,
    /// Remove the route's prefix before looking the file up (like nginx `alias`).
    pub strip_prefix: bool,
}

#[derive(Debug, Clone)]
pub struct RespondSpec {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
}

#[derive(Debug, Clone)]
pub struct RedirectSpec {
    /// Target; `{uri}`, `{path}`, `{query}` and `{host}` are replaced per request.
    pub to: String,
    pub status: StatusCode,
}
