//! The configuration file as written: plain serde structs that mirror the TOML.
//!
//! Everything here is optional or defaulted, keeps its source span (so errors can name the
//! line), and rejects unknown keys. Nothing here is interpreted: [`super::validate`] turns a
//! [`RawConfig`] into the typed [`super::model::Config`] that the server runs on.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Worker threads; default: number of CPUs.
    pub workers: Option<Spanned<usize>>,
    /// Where the local CA (and later ACME state) lives.
    pub data_dir: Option<Spanned<String>>,
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter).
    pub log_level: Option<Spanned<String>>,
    /// Older spelling of `[log] access_log = "json"` (true) or `"off"` (false).
    pub access_log: Option<Spanned<bool>>,
    /// `[log]`: access log default, TLS event log (see `super::log`).
    pub log: Option<super::log::RawLog>,
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub acme: RawAcme,
    /// On-demand TLS: certificates obtained at the first handshake for approved names.
    pub on_demand: Option<RawOnDemand>,
    #[serde(default, rename = "site")]
    pub sites: Vec<RawSite>,
    /// TLS for other TCP services (`[[stream]]`, see `super::stream`).
    #[serde(default, rename = "stream")]
    pub streams: Vec<super::stream::RawStream>,
    /// The admin listener (`[admin]`, see `super::admin`).
    pub admin: Option<Spanned<super::admin::RawAdmin>>,
    /// Where state is kept (`[storage]`, see `super::storage`).
    pub storage: Option<Spanned<super::storage::RawStorage>>,
}

/// `[listen]`: socket addresses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// HTTPS listeners, e.g. `["0.0.0.0:443", "[::]:443"]`.
    pub https: Option<Spanned<Vec<Spanned<String>>>>,
    /// Plain-HTTP listeners (redirect to HTTPS, ACME HTTP-01); `[]` disables port 80.
    pub http: Option<Spanned<Vec<Spanned<String>>>>,
    /// HTTPS port to put into redirects when it differs from the listener's (e.g. behind NAT).
    pub public_https_port: Option<Spanned<u16>>,
    /// PROXY protocol headers accepted from these load balancers (see `super::stream`).
    pub proxy_protocol: Option<Spanned<super::stream::RawProxyAccept>>,
}

/// `[tls]`: handshake policy shared by all sites.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// `intermediate` (TLS 1.2 + 1.3, default) or `modern` (TLS 1.3 only).
    pub profile: Option<Spanned<String>>,
    /// What to do with an SNI name no site has: `default` (serve the default site) or `reject`.
    pub unknown_sni: Option<Spanned<String>>,
    /// The site whose certificate answers clients without SNI; default: the first site.
    pub default_site: Option<Spanned<String>>,
    /// Stateless session tickets (TLS 1.2 and 1.3). Default true.
    pub session_tickets: Option<bool>,
    /// How often ticket keys rotate; the previous key stays valid as long again. Default 12h.
    pub ticket_key_rotation: Option<Spanned<String>>,
    /// Server-side session cache entries (TLS 1.2 session IDs). Default 10000, 0 disables.
    pub session_cache_size: Option<Spanned<usize>>,
    /// Pick the cipher suite by the server's order (AES-GCM first) instead of the client's.
    pub prefer_server_cipher_order: Option<bool>,
    /// Fetch OCSP responses from the responders certificates name and staple them. Default true.
    pub ocsp_stapling: Option<bool>,
}

/// `[http]`: protocol behaviour shared by all sites.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Offer HTTP/2 via ALPN. Default true.
    pub http2: Option<bool>,
    /// Port-80 redirects: `permanent` (301/308, default) or `temporary` (302/307).
    pub redirect: Option<Spanned<String>>,
    /// HTTP/2: concurrent streams per connection (default 128).
    pub h2_max_concurrent_streams: Option<Spanned<u32>>,
    /// HTTP/2: per-stream receive window in bytes (default 256 KiB).
    pub h2_stream_window: Option<Spanned<u32>>,
    /// HTTP/2: per-connection receive window in bytes (default 1 MiB).
    pub h2_connection_window: Option<Spanned<u32>>,
    /// HTTP/3 over QUIC on UDP at every HTTPS listener's port, advertised with `Alt-Svc`.
    /// Default true.
    pub http3: Option<bool>,
    /// HTTP/3: concurrent request streams per connection (default 100).
    pub h3_max_concurrent_streams: Option<Spanned<u32>>,
    /// HTTP/3: when new clients must prove their address with a QUIC Retry first:
    /// `"under_load"` (default: above `h3_retry_threshold` handshakes in progress) or
    /// `"always"`.
    pub h3_retry: Option<Spanned<String>>,
    /// HTTP/3: QUIC handshakes in progress above which Retry is used (default 256).
    pub h3_retry_threshold: Option<Spanned<u32>>,
    /// HTTP/3 endpoints: `"per_worker"` (default: one UDP socket and QUIC endpoint per
    /// worker, no connection migration) or `"shared"` (one socket and endpoint for the
    /// process, connections spread over the workers; clients may migrate).
    pub h3_endpoints: Option<Spanned<String>>,
}

/// `[limits]`: timeouts and sizes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub handshake_timeout: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<usize>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<usize>>,
    pub body_timeout: Option<Spanned<String>>,
    pub min_body_rate: Option<Spanned<String>>,
    /// `[limits.per_client]` (see `config::limits`).
    pub per_client: Option<Spanned<super::limits::RawPerClient>>,
}

/// `[on_demand]`: obtain a certificate at the first handshake for a name no site lists, when
/// the name is approved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnDemand {
    /// The site that serves approved names.
    pub site: Spanned<String>,
    /// `GET <ask>?domain=<name>`: a 2xx answer approves the name.
    pub ask: Option<Spanned<String>>,
    /// Names or `*.patterns` approved without asking.
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    /// Most certificates obtained on demand (default 1000).
    pub max_names: Option<Spanned<usize>>,
    /// Most new orders per minute, all names together (default 10).
    pub orders_per_minute: Option<Spanned<u32>>,
    /// How long a refused or failed name is not asked about / ordered again (default 10m).
    pub refusal_cache: Option<Spanned<String>>,
}

/// `[acme]`: the CA that issues certificates for sites without `cert`/`key`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// `"production"` (Let's Encrypt, default), `"staging"` (Let's Encrypt staging) or a directory URL.
    pub ca: Option<Spanned<String>>,
    /// Contact e-mail for the ACME account (expiry notices).
    pub email: Option<Spanned<String>>,
    /// An extra root certificate to trust for the CA's own HTTPS (private or test CAs).
    pub ca_root: Option<Spanned<String>>,
    /// External Account Binding for `ca` (required by some CAs): key id and base64url HMAC key.
    pub eab_kid: Option<Spanned<String>>,
    pub eab_hmac_key: Option<Spanned<String>>,
    /// CAs to try, in order, when `ca` does not deliver (same values as `ca`).
    pub fallback: Option<Vec<Spanned<String>>>,
    /// Key of ordered certificates: `"ecdsa-p256"` (default), `"ecdsa-p384"`, `"rsa2048"`, `"rsa4096"`.
    pub key_type: Option<Spanned<String>>,
    /// Certificate profile to order (ACME profiles, e.g. `"shortlived"`), when the CA offers it.
    pub profile: Option<Spanned<String>>,
    /// DNS-01 through a command: `HOOK present|cleanup NAME VALUE` sets/removes the TXT record
    /// `_acme-challenge.NAME`. Required for wildcard names.
    pub dns_hook: Option<Spanned<String>>,
    /// How long to wait after `present` before asking the CA to validate (DNS propagation).
    pub dns_propagation: Option<Spanned<String>>,
    /// The longest one hook run may take before it is killed (default "2m").
    pub dns_hook_timeout: Option<Spanned<String>>,
}

/// One `[[site]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// A short unique name used in logs and errors.
    pub name: Spanned<String>,
    /// Host names (exact, `*.wildcard`, or IP addresses) this site answers for.
    pub hosts: Spanned<Vec<Spanned<String>>>,
    /// Certificate chain (leaf first), PEM.
    pub cert: Option<Spanned<String>>,
    /// Private key for `cert`, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: Option<Spanned<String>>,
    /// Who issues the certificate when there is no cert/key: `"auto"` (local CA for local
    /// names, ACME otherwise), `"acme"` or `"local"`.
    pub issuer: Option<Spanned<String>>,
    /// Further chains for the same names, e.g. an RSA chain beside an ECDSA one.
    #[serde(default)]
    pub certs: Vec<RawCertPair>,
    /// A DER OCSP response file to staple instead of fetching one (kept current by you), for
    /// the site's chain whose certificate it is about (with several chains, the others that
    /// have no `ocsp_staple` of their own get theirs fetched).
    pub ocsp_staple: Option<Spanned<String>>,
    /// Shorthand for a static-file route at `/`.
    pub root: Option<Spanned<String>>,
    /// ACME profile for this site's certificate (overrides `acme.profile`).
    pub profile: Option<Spanned<String>>,
    #[serde(default)]
    pub hsts: RawHsts,
    /// Response headers to add or override on every HTTPS response of this site.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Response headers to remove (e.g. a default security header you do not want).
    #[serde(default)]
    pub remove_headers: Vec<Spanned<String>>,
    /// Send `Content-Security-Policy: upgrade-insecure-requests` (fixes mixed content).
    pub csp_upgrade_insecure_requests: Option<bool>,
    /// Accept TLS 1.3 early data (0-RTT) from resuming clients: GET/HEAD/OPTIONS requests are
    /// answered one round trip sooner; other methods get 425 Too Early. Off by default.
    pub early_data: Option<bool>,
    /// Serve this site over HTTP/3 too (when `[http] http3` is on): `Alt-Svc` on its TCP
    /// responses, its names accepted over QUIC. Default true.
    pub http3: Option<bool>,
    /// Insist on the post-quantum X25519MLKEM768 key exchange with every client that supports
    /// it: one that sent only a classical key share is asked for an ML-KEM one (a
    /// HelloRetryRequest, one more round trip). Off by default: such a client's share is used.
    pub require_post_quantum: Option<bool>,
    /// Who may pass, for every route that sets no rule of its own of the same kind.
    pub access: Option<Spanned<super::access::RawAccess>>,
    pub basic_auth: Option<Spanned<super::access::RawBasicAuth>>,
    /// Mutual TLS: ask clients for a certificate and verify it.
    pub client_auth: Option<Spanned<super::access::RawClientAuth>>,
    /// This site's access log (see `super::log`); default: `[log] access_log`.
    pub access_log: Option<Spanned<super::log::RawAccessLog>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

/// A `{ cert, key, ocsp_staple }` entry in `certs = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    /// A DER OCSP response file for this pair's certificate, stapled instead of fetching one.
    pub ocsp_staple: Option<Spanned<String>>,
}

/// `[site.hsts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    pub enabled: Option<bool>,
    pub max_age: Option<Spanned<u64>>,
    pub include_subdomains: Option<bool>,
    pub preload: Option<Spanned<bool>>,
    /// Staged max-age (`true`, or a list of durations): see [`super::hsts`].
    pub ramp: Option<Spanned<toml::Value>>,
}

/// One `[[site.route]]`: a path prefix and exactly one handler.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Path prefix, matched on segment boundaries (`/api` matches `/api` and `/api/x`).
    pub path: Spanned<String>,
    pub files: Option<Spanned<RawFiles>>,
    pub respond: Option<Spanned<RawRespond>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    /// Reverse proxy to upstream servers (see [`super::proxy`]).
    pub proxy: Option<Spanned<super::proxy::RawProxy>>,
    /// Who may pass on this route (replaces the site's rules of the same kind).
    pub access: Option<Spanned<super::access::RawAccess>>,
    pub basic_auth: Option<Spanned<super::access::RawBasicAuth>>,
}

/// `files = { root = "...", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub root: Spanned<String>,
    pub index: Option<Vec<String>>,
    pub browse: Option<bool>,
    pub precompressed: Option<bool>,
    pub follow_symlinks_outside_root: Option<bool>,
    pub hidden_files: Option<bool>,
    /// Remove the route's path prefix before looking up the file (like nginx `alias`).
    pub strip_prefix: Option<bool>,
    /// Small files are served from memory for this long before the disk is checked again
    /// (default "1s"; "0s" disables).
    pub cache: Option<Spanned<String>>,
}

/// `respond = { status = 200, body = "...", content_type = "..." }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<Spanned<u16>>,
    pub body: Option<String>,
    pub content_type: Option<Spanned<String>>,
}

/// `redirect = { to = "https://example.com{uri}", status = 308 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub to: Spanned<String>,
    pub status: Option<Spanned<u16>>,
}

fn blank<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

impl Default for RawSite {
    fn default() -> Self {
        RawSite {
            name: blank(),
            hosts: blank(),
            cert: None,
            key: None,
            issuer: None,
            certs: Vec::new(),
            ocsp_staple: None,
            root: None,
            profile: None,
            hsts: RawHsts::default(),
            headers: BTreeMap::new(),
            remove_headers: Vec::new(),
            csp_upgrade_insecure_requests: None,
            early_data: None,
            http3: None,
            require_post_quantum: None,
            access: None,
            basic_auth: None,
            client_auth: None,
            access_log: None,
            routes: Vec::new(),
        }
    }
}

impl Default for RawRoute {
    fn default() -> Self {
        RawRoute {
            path: blank(),
            files: None,
            respond: None,
            redirect: None,
            proxy: None,
            access: None,
            basic_auth: None,
        }
    }
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            root: blank(),
            index: None,
            browse: None,
            precompressed: None,
            follow_symlinks_outside_root: None,
            hidden_files: None,
            strip_prefix: None,
            cache: None,
        }
    }
}
