//! `[storage]`: where certificates, keys and ACME state are kept.
//!
//! ```toml
//! [storage]
//! kind = "redis"                          # default "file": the data directory
//! url = "rediss://redis.internal:6379/0"  # redis:// or rediss:// (TLS), HOST:PORT/DB
//! ca = "/etc/portcullis/redis-ca.pem"     # rediss: the Redis server's CA (default: public roots)
//! username = "portcullis"                 # Redis ACL user (optional)
//! password_file = "/etc/portcullis/redis.password"   # or password_env = "REDIS_PASSWORD"
//! prefix = "portcullis:"                  # default; several clusters can share one Redis
//! key_encryption_key_file = "/etc/portcullis/storage.kek"   # `head -c 32 /dev/urandom > FILE`
//! # insecure_plaintext_keys = true        # the explicit waiver: private keys stored in clear
//! lock_lease = "30s"                      # default; how long a dead holder's lock lasts
//! # Redis Sentinel: the URL's host is the master's name as the sentinels know it
//! # url = "redis://mymaster/0"
//! # sentinels = ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3"]   # port 26379 by default
//! # sentinel_password_file = "/etc/portcullis/sentinel.password"  # or sentinel_password_env;
//! #                                        # sentinel_username for ACL users
//! ```
//!
//! Raw struct, typed settings and checks are all here; `raw.rs`, `model.rs` and `validate.rs`
//! only hook them in. Nothing here connects to Redis: `check` works without it, and serving
//! connects at start (`crate::storage::open`), where an unreachable Redis or a key-encryption
//! key that does not match the stored values is an error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::admin::Token;
use super::validate::Ctx;
use crate::storage::crypt::Kek;

/// The key prefix when `[storage] prefix` says nothing.
pub const DEFAULT_PREFIX: &str = "portcullis:";
/// How long a lock lasts without renewal when `[storage] lock_lease` says nothing.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);

/// `[storage]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `file` (default) or `redis`.
    pub kind: Option<Spanned<String>>,
    /// `redis://HOST:PORT/DB` or `rediss://HOST:PORT/DB` (TLS).
    pub url: Option<Spanned<String>>,
    /// PEM file with the CA that certifies the Redis server (rediss only).
    pub ca: Option<Spanned<String>>,
    /// Redis ACL user name.
    pub username: Option<Spanned<String>>,
    /// A file holding the Redis password.
    pub password_file: Option<Spanned<String>>,
    /// An environment variable holding the Redis password.
    pub password_env: Option<Spanned<String>>,
    /// Prefix of every key; must end with `:`. Default `portcullis:`.
    pub prefix: Option<Spanned<String>>,
    /// A file with the 32-byte key that encrypts private keys before they are stored.
    pub key_encryption_key_file: Option<Spanned<String>>,
    /// Store private keys unencrypted (no key-encryption key). Default false.
    pub insecure_plaintext_keys: Option<Spanned<bool>>,
    /// How long a lock lasts unless renewed (its holder renews it every third of this while
    /// alive). Default 30s.
    pub lock_lease: Option<Spanned<String>>,
    /// Redis Sentinel: `HOST[:PORT]` of each sentinel; the URL's host is then the master's name.
    pub sentinels: Option<Spanned<Vec<String>>>,
    /// The sentinels' own ACL user and password (Sentinel's `requirepass`), when they have one.
    pub sentinel_username: Option<Spanned<String>>,
    pub sentinel_password_file: Option<Spanned<String>>,
    pub sentinel_password_env: Option<Spanned<String>>,
}

/// The validated `[storage]` section.
#[derive(Debug, Clone, Default)]
pub enum StorageSettings {
    /// The data directory (`crate::storage::FileStorage`).
    #[default]
    File,
    /// A Redis server shared by the instances (`crate::storage::RedisStorage`).
    Redis(Box<RedisSettings>),
}

/// How to reach and use Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The URL as written (it holds no password: those come from a file or the environment).
    pub url: String,
    /// rediss: the CA file and its PEM text; `None`: Mozilla's roots.
    pub ca: Option<(PathBuf, Vec<u8>)>,
    pub username: Option<String>,
    pub password: Option<Token>,
    /// Prefix of every key, ending with `:`.
    pub prefix: String,
    /// Encrypts secret values; `None` only with `insecure_plaintext_keys = true`.
    pub kek: Option<Arc<Kek>>,
    /// How long a lock lasts unless renewed.
    pub lock_lease: Duration,
    /// Redis Sentinel: the sentinels to ask for the master (empty: `url` is the server).
    pub sentinels: Vec<(String, u16)>,
    /// The sentinels' own credentials, when they ask for them.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<Token>,
}

/// Validates `[storage]` (absent: the data directory).
pub(super) fn storage(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawStorage>>) -> StorageSettings {
    let Some(raw) = raw else {
        return StorageSettings::File;
    };
    let r = raw.get_ref();
    let kind_loc = match &r.kind {
        Some(k) => cx.loc(k, ""),
        None => cx.loc(raw, ""),
    };
    match r.kind.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("file") => {
            let redis_only = [
                ("url", &r.url),
                ("ca", &r.ca),
                ("username", &r.username),
                ("password_file", &r.password_file),
                ("password_env", &r.password_env),
                ("prefix", &r.prefix),
                ("key_encryption_key_file", &r.key_encryption_key_file),
                ("lock_lease", &r.lock_lease),
                ("sentinel_username", &r.sentinel_username),
                ("sentinel_password_file", &r.sentinel_password_file),
                ("sentinel_password_env", &r.sentinel_password_env),
            ];
            if let Some(s) = &r.sentinels {
                let loc = cx.loc(s, "");
                cx.err(
                    loc,
                    "storage.sentinels is a Redis setting, but storage.kind is \"file\"",
                    "set kind = \"redis\" to keep state in Redis, or remove the Redis settings",
                );
            }
            if let Some((key, Some(v))) = redis_only.iter().find(|(_, v)| v.is_some()) {
                let loc = cx.loc(v, "");
                cx.err(
                    loc,
                    format!("storage.{key} is a Redis setting, but storage.kind is \"file\""),
                    "set kind = \"redis\" to keep state in Redis, or remove the Redis settings",
                );
            }
            StorageSettings::File
        }
        Some("redis") => match redis(cx, r, kind_loc) {
            Some(s) => StorageSettings::Redis(Box::new(s)),
            None => StorageSettings::File,
        },
        Some(other) => {
            cx.err(
                kind_loc,
                format!("storage.kind = {other:?} is not a kind of storage"),
                "write \"file\" (the data directory, default) or \"redis\"",
            );
            StorageSettings::File
        }
    }
}

fn redis(cx: &mut Ctx<'_>, r: &RawStorage, kind_loc: super::Location) -> Option<RedisSettings> {
    let errors = cx.error_count();
    let url = match &r.url {
        None => {
            cx.err(
                kind_loc.clone(),
                "storage.kind = \"redis\" needs storage.url",
                "add url = \"redis://HOST:6379/0\" (or rediss:// for TLS)",
            );
            None
        }
        Some(u) => check_url(cx, u),
    };
    let ca = r.ca.as_ref().and_then(|c| {
        let path = cx.path(c.get_ref());
        let loc = cx.loc(c, "");
        if url.as_ref().is_some_and(|u| u.starts_with("redis://")) {
            cx.err(
                loc,
                "storage.ca is for TLS, but storage.url is redis:// (plain TCP)",
                "use a rediss:// URL to connect with TLS, or remove ca",
            );
            return None;
        }
        match std::fs::read(&path) {
            Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                Some((path, pem))
            }
            Ok(_) => {
                cx.err(
                    loc,
                    format!("storage.ca {}: no PEM certificate in it", path.display()),
                    "name a PEM file with the CA certificate that issued the Redis server's certificate",
                );
                None
            }
            Err(e) => {
                cx.err(
                    loc,
                    format!("storage.ca {}: cannot read it: {e}", path.display()),
                    "check the path and that the server's user may read the file",
                );
                None
            }
        }
    });
    let password = read_password(cx, &r.password_file, &r.password_env, "");
    let sentinel_password = read_password(
        cx,
        &r.sentinel_password_file,
        &r.sentinel_password_env,
        "sentinel_",
    );
    if let (None, Some(p)) = (
        &r.sentinels,
        r.sentinel_password_file
            .as_ref()
            .or(r.sentinel_password_env.as_ref()),
    ) {
        let loc = cx.loc(p, "");
        cx.err(
            loc,
            "storage.sentinel_password_* is set, but storage.sentinels is not",
            "list the sentinels, or remove the sentinel password",
        );
    }
    let prefix = match &r.prefix {
        None => DEFAULT_PREFIX.to_string(),
        Some(p) => {
            let s = p.get_ref();
            let ok = s.len() > 1
                && s.ends_with(':')
                && s.bytes().all(|b| b.is_ascii_graphic() && b != b'*');
            if !ok {
                let loc = cx.loc(p, "");
                cx.err(
                    loc,
                    format!("storage.prefix = {s:?} must be printable ASCII without '*' or spaces, ending with ':'"),
                    "write a prefix such as \"portcullis:\" or \"portcullis:eu-west:\"; each cluster sharing the Redis gets its own",
                );
            }
            s.clone()
        }
    };
    let waived = r
        .insecure_plaintext_keys
        .as_ref()
        .is_some_and(|w| *w.get_ref());
    let kek = match &r.key_encryption_key_file {
        Some(f) => {
            let path = cx.path(f.get_ref());
            let loc = cx.loc(f, "");
            match std::fs::read(&path) {
                Ok(bytes) => match Kek::parse(&bytes, &path) {
                    Ok(k) => Some(Arc::new(k)),
                    Err(e) => {
                        cx.err(
                            loc,
                            format!("storage.key_encryption_key_file {e}"),
                            "make one with `head -c 32 /dev/urandom > FILE` (or 64 hex digits: `openssl rand -hex 32 > FILE`)",
                        );
                        None
                    }
                },
                Err(e) => {
                    cx.err(
                        loc,
                        format!(
                            "storage.key_encryption_key_file {}: cannot read it: {e}",
                            path.display()
                        ),
                        "check the path and that the server's user may read it; make one with `head -c 32 /dev/urandom > FILE`",
                    );
                    None
                }
            }
        }
        None if waived => None,
        None => {
            cx.err(
                kind_loc,
                "storage.kind = \"redis\" without key_encryption_key_file: private keys would be readable by anyone who can read Redis",
                "make a key with `head -c 32 /dev/urandom > /etc/portcullis/storage.kek` (mode 0600, the same file on every instance) and set key_encryption_key_file, or set insecure_plaintext_keys = true to accept keys in clear",
            );
            None
        }
    };
    let sentinels = sentinels(cx, r.sentinels.as_ref());
    let lock_lease = cx.duration(
        &r.lock_lease,
        "storage.lock_lease",
        DEFAULT_LOCK_LEASE,
        Duration::from_secs(3),
        Duration::from_secs(3600),
    );
    if cx.error_count() > errors {
        return None;
    }
    Some(RedisSettings {
        url: url?,
        ca,
        username: r.username.as_ref().map(|u| u.get_ref().clone()),
        password,
        prefix,
        kek,
        lock_lease,
        sentinels,
        sentinel_username: r.sentinel_username.as_ref().map(|u| u.get_ref().clone()),
        sentinel_password,
    })
}

/// A password from `{what}password_file` or `{what}password_env` (at most one of them).
fn read_password(
    cx: &mut Ctx<'_>,
    file: &Option<Spanned<String>>,
    env: &Option<Spanned<String>>,
    what: &str,
) -> Option<Token> {
    match (file, env) {
        (Some(_), Some(env)) => {
            let loc = cx.loc(env, "");
            cx.err(
                loc,
                format!("storage.{what}password_file and storage.{what}password_env are both set"),
                "keep one of them",
            );
            None
        }
        (Some(f), None) => {
            let path = cx.path(f.get_ref());
            let loc = cx.loc(f, "");
            match std::fs::read_to_string(&path) {
                Ok(p) if !p.trim().is_empty() => Some(Token(p.trim().into())),
                Ok(_) => {
                    cx.err(
                        loc,
                        format!(
                            "storage.{what}password_file {}: the file is empty",
                            path.display()
                        ),
                        "put the Redis password in the file",
                    );
                    None
                }
                Err(e) => {
                    cx.err(
                        loc,
                        format!(
                            "storage.{what}password_file {}: cannot read it: {e}",
                            path.display()
                        ),
                        "check the path and that the server's user may read the file",
                    );
                    None
                }
            }
        }
        (None, Some(env)) => {
            let loc = cx.loc(env, "");
            match std::env::var(env.get_ref()) {
                Ok(p) if !p.trim().is_empty() => Some(Token(p.trim().into())),
                Ok(_) | Err(std::env::VarError::NotPresent) => {
                    cx.err(
                        loc,
                        format!(
                            "storage.{what}password_env: the environment variable {} is not set or empty",
                            env.get_ref()
                        ),
                        format!("set it in the server's environment (e.g. the systemd unit's EnvironmentFile), or use {what}password_file"),
                    );
                    None
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    cx.err(
                        loc,
                        format!(
                            "storage.{what}password_env: the environment variable {} is not UTF-8",
                            env.get_ref()
                        ),
                        "Redis passwords are text: set a UTF-8 value",
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

/// `storage.sentinels`: `HOST[:PORT]` each (port 26379 when left out), at least one.
fn sentinels(cx: &mut Ctx<'_>, raw: Option<&Spanned<Vec<String>>>) -> Vec<(String, u16)> {
    let Some(raw) = raw else { return Vec::new() };
    let loc = cx.loc(raw, "");
    if raw.get_ref().is_empty() {
        cx.err(
            loc,
            "storage.sentinels is empty",
            "list the sentinels as \"HOST:PORT\" (e.g. [\"10.0.0.1:26379\"]), or remove sentinels to connect to url directly",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for s in raw.get_ref() {
        // "[::1]:26379", "host:26379", "host"
        let parsed = match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                port.parse::<u16>().ok().map(|p| (host, p))
            }
            _ => Some((s.as_str(), 26379)),
        };
        let host = parsed.map(|(h, p)| (h.trim_start_matches('[').trim_end_matches(']'), p));
        match host {
            Some((h, p)) if !h.is_empty() && p != 0 && !h.contains(['/', ' ', '@']) => {
                out.push((h.to_string(), p))
            }
            _ => {
                cx.err(
                    loc.clone(),
                    format!("storage.sentinels: {s:?} is not HOST:PORT"),
                    "write each sentinel as \"HOST:PORT\", e.g. \"10.0.0.1:26379\" (26379 when the port is left out)",
                );
            }
        }
    }
    out
}

/// The URL if it is one Redis can be reached at: `redis://` or `rediss://`, a host, an
/// optional port and database number, and no password.
fn check_url(cx: &mut Ctx<'_>, u: &Spanned<String>) -> Option<String> {
    let text = u.get_ref().trim();
    let loc = cx.loc(u, "");
    let fix = "write redis://HOST:PORT/DB, or rediss://HOST:PORT/DB for TLS, e.g. \"redis://127.0.0.1:6379/0\"";
    let parsed = match url::Url::parse(text) {
        Ok(p) => p,
        Err(e) => {
            cx.err(
                loc,
                format!("storage.url = {text:?} is not a URL: {e}"),
                fix,
            );
            return None;
        }
    };
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        cx.err(
            loc,
            format!(
                "storage.url = {text:?}: the scheme {:?} is not redis or rediss",
                parsed.scheme()
            ),
            fix,
        );
        return None;
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        cx.err(loc, format!("storage.url = {text:?} names no host"), fix);
        return None;
    }
    if parsed.password().is_some() {
        cx.err(
            loc,
            "storage.url holds a password: it would show wherever the configuration does",
            "remove it from the URL and put it in password_file or password_env",
        );
        return None;
    }
    let db = parsed.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        cx.err(
            loc,
            format!("storage.url = {text:?}: the path {db:?} is not a database number"),
            fix,
        );
        return None;
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        cx.err(
            loc,
            format!("storage.url = {text:?}: query and fragment are not used"),
            "remove what follows '?' or '#'; TLS is chosen with rediss://, the CA with storage.ca",
        );
        return None;
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(text) {
        cx.err(loc, format!("storage.url = {text:?}: {e}"), fix);
        return None;
    }
    Some(text.to_string())
}
