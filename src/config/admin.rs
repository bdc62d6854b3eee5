//! `[admin]`: the admin listener (metrics, status page, running config, health, reload).
//!
//! ```toml
//! [admin]
//! listen = "127.0.0.1:2019"     # default; "off", or "unix:/run/portcullis/admin.sock"
//! token_file = "/etc/portcullis/admin.token"   # Bearer token for POST /reload, /upgrade over TCP
//! public = false                # required to listen on a non-loopback address
//! ```
//!
//! Raw struct, typed model and checks are all here; `raw.rs`, `model.rs` and `validate.rs`
//! only hook them in. The running configuration shown at `GET /config` is rendered here too,
//! with its secrets replaced.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Ctx;
use super::Source;

/// The admin listener's address when `[admin]` says nothing (as Caddy's).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2019";

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `HOST:PORT`, `unix:/path`, or `off`. Default `127.0.0.1:2019`.
    pub listen: Option<Spanned<String>>,
    /// A file holding the Bearer token that state-changing requests over TCP must carry.
    pub token_file: Option<Spanned<String>>,
    /// Allow a TCP address other than loopback. Default false.
    pub public: Option<Spanned<bool>>,
}

/// Where the admin listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The validated `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: AdminListen,
    /// Bearer token for `POST /reload` and `POST /upgrade` over TCP (the unix socket needs
    /// none). Without one, those routes answer 403 over TCP.
    pub token: Option<Token>,
    /// `admin.listen` was written (not the default): failing to bind it is worth a warning.
    pub explicit: bool,
    /// `admin.public`: a non-loopback address was allowed, and requests may name any `Host`.
    pub public: bool,
    /// The configuration file with its secrets replaced, as `GET /config` shows it.
    pub running_config: Arc<str>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: AdminListen::Off,
            token: None,
            explicit: false,
            public: false,
            running_config: Arc::from(""),
        }
    }
}

/// Validates `[admin]` (absent: the default listener).
pub(super) fn admin(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawAdmin>>,
    source: &Source,
) -> AdminSettings {
    let empty = RawAdmin::default();
    let r = raw.map_or(&empty, |r| r.get_ref());
    let public = r.public.as_ref().is_some_and(|p| *p.get_ref());
    let listen = match &r.listen {
        None => AdminListen::Tcp(DEFAULT_LISTEN.parse().expect("a valid constant address")),
        Some(l) => {
            let s = l.get_ref().trim();
            if s == "off" {
                AdminListen::Off
            } else if let Some(path) = s.strip_prefix("unix:") {
                if path.is_empty() {
                    let loc = cx.loc(l, "");
                    cx.err(
                        loc,
                        "admin.listen = \"unix:\" names no socket path",
                        "write the socket's path after unix:, e.g. \"unix:/run/portcullis/admin.sock\"",
                    );
                    AdminListen::Off
                } else {
                    AdminListen::Unix(cx.path(path))
                }
            } else {
                match s.parse::<SocketAddr>() {
                    Ok(a) if !a.ip().is_loopback() && !public => {
                        let loc = cx.loc(l, "");
                        cx.err(
                            loc,
                            format!("admin.listen = {s:?} is not a loopback address: metrics, the status page and the running configuration would be open to the network"),
                            "listen on 127.0.0.1 or [::1] (or a unix: socket) and reach it through SSH or a proxy, or set admin.public = true if a firewall guards it",
                        );
                        AdminListen::Off
                    }
                    Ok(a) => AdminListen::Tcp(a),
                    Err(_) => {
                        let loc = cx.loc(l, "");
                        cx.err(
                            loc,
                            format!("admin.listen = {s:?} is not an address"),
                            "write \"127.0.0.1:2019\", \"[::1]:2019\", \"unix:/path/admin.sock\" or \"off\"",
                        );
                        AdminListen::Off
                    }
                }
            }
        }
    };
    let token = r.token_file.as_ref().and_then(|f| {
        let path = cx.path(f.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() && t.trim().len() >= 16 => Some(Token(t.trim().into())),
            Ok(_) => {
                let loc = cx.loc(f, "");
                cx.err(
                    loc,
                    format!(
                        "admin.token_file {}: the token is empty or shorter than 16 characters",
                        path.display()
                    ),
                    "put a long random token in the file, e.g. `openssl rand -hex 32 > FILE`",
                );
                None
            }
            Err(e) => {
                let loc = cx.loc(f, "");
                cx.err(
                    loc,
                    format!("admin.token_file {}: cannot read it: {e}", path.display()),
                    "check the path and that the server's user may read the file",
                );
                None
            }
        }
    });
    AdminSettings {
        listen,
        token,
        explicit: r.listen.is_some(),
        public,
        running_config: running_config(source).into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The running configuration, secrets replaced.

const REDACTED: &str = "<redacted>";

/// Keys whose values are secrets wherever they appear.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "eab_hmac_key"
        // The DNS hook's command line may carry the DNS provider's credentials.
        || k == "dns_hook"
        || k.contains("password")
        || k.contains("secret")
        || (k.contains("token") && k != "token_file")
}

/// The file's text as a TOML document with every secret value replaced: basic-auth password
/// hashes (`users`), EAB keys, the DNS hook command, header values set on requests to backends
/// (often credentials), and any key that names a password, secret or token. Paths stay (the
/// files they name are never read here). From flags: a note saying so.
pub fn running_config(source: &Source) -> String {
    let Source::File { path, text } = source else {
        return "# started from command-line flags: no configuration file\n".into();
    };
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return format!("# {}: cannot be shown\n", path.display());
    };
    redact_table(&mut doc, false);
    format!(
        "# {} (secrets redacted)\n{}",
        path.display(),
        toml::to_string(&doc).unwrap_or_default()
    )
}

fn redact_table(t: &mut toml::Table, in_request_headers: bool) {
    for (k, v) in t.iter_mut() {
        if is_secret_key(k) || k == "users" || (in_request_headers && (k == "set" || k == "add")) {
            redact_all(v);
        } else {
            redact_value(v, k == "request_headers");
        }
    }
}

fn redact_value(v: &mut toml::Value, in_request_headers: bool) {
    match v {
        toml::Value::Table(t) => redact_table(t, in_request_headers),
        toml::Value::Array(a) => a
            .iter_mut()
            .for_each(|v| redact_value(v, in_request_headers)),
        _ => {}
    }
}

/// Replaces every leaf value (a table's keys, such as user names, stay).
fn redact_all(v: &mut toml::Value) {
    match v {
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| redact_all(v)),
        toml::Value::Array(a) => a.iter_mut().for_each(redact_all),
        other => *other = toml::Value::String(REDACTED.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_and_the_rest_kept() {
        let text = r#"
[acme]
email = "ops@example.com"
eab_kid = "kid-1"
eab_hmac_key = "c2VjcmV0LWhtYWMta2V5"
dns_hook = "env API_TOKEN=abc123 /usr/local/bin/dns-hook"

[admin]
token_file = "/etc/portcullis/admin.token"

[[site]]
name = "shop"
hosts = ["shop.example"]
cert = "/etc/ssl/shop.pem"
key = "/etc/ssl/shop.key"
[site.basic_auth]
users = { alice = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA" }
[[site.routes]]
path = "/api"
proxy = { upstream = "http://127.0.0.1:8080", request_headers = { set = { "X-Api-Key" = "sk_live_42" } } }
"#;
        let shown = running_config(&Source::File {
            path: "/etc/portcullis.toml".into(),
            text: text.into(),
        });
        for secret in ["c2VjcmV0LWhtYWMta2V5", "abc123", "$argon2id", "sk_live_42"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        for kept in [
            "ops@example.com",
            "kid-1",
            "/etc/ssl/shop.key",
            "alice",
            "X-Api-Key",
            "/etc/portcullis/admin.token",
        ] {
            assert!(shown.contains(kept), "{kept} missing from:\n{shown}");
        }
    }
}
