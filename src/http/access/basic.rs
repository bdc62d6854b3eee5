//! HTTP basic authentication (RFC 7617) against bcrypt or argon2 password hashes.
//!
//! - Hashes only: a plain-text password in the config is refused when the config is loaded
//!   (`portcullis hash-password` makes an argon2id hash).
//! - No timing leak between an unknown user and a wrong password: an unknown user's password
//!   is verified against a configured user's hash (same algorithm and cost), and the answer
//!   thrown away.
//! - Verification cost: a bcrypt or argon2 verification takes tens of milliseconds of CPU on
//!   purpose. Successful verifications are remembered for [`CACHE_TTL`] in a small map
//!   ([`CACHE_ENTRIES`] entries per `basic_auth` block, shared by all connections), keyed by
//!   SHA-256 of a per-process random salt and the `Authorization` value, so a client that
//!   sends the same credentials with each request pays the cost once. Failures are not
//!   remembered (each wrong guess costs the guesser a full verification's time). The map
//!   holds no password, only salted digests.
//! - Handlers are synchronous: a verification runs on the worker thread that serves the
//!   request (as in nginx, whose `auth_basic` calls `crypt()` in the worker).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use http::HeaderValue;
use sha2::{Digest, Sha256};

/// How long a successful verification is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Most remembered verifications per `basic_auth` block (the oldest goes when full).
pub const CACHE_ENTRIES: usize = 256;

/// A stored password hash.
#[derive(Clone)]
pub enum StoredHash {
    /// `$2a$`, `$2b$`, `$2x$` or `$2y$` (htpasswd -B).
    Bcrypt(String),
    /// A PHC string: `$argon2id$v=19$m=…,t=…,p=…$salt$hash` (or argon2i/argon2d).
    /// Boxed: a parsed PHC string is ten times the size of the bcrypt variant.
    Argon2(Box<PasswordHash>),
}

impl std::fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes stay out of logs and debug output.
        match self {
            StoredHash::Bcrypt(_) => f.write_str("Bcrypt(..)"),
            StoredHash::Argon2(_) => f.write_str("Argon2(..)"),
        }
    }
}

impl StoredHash {
    /// Parses a configured hash; the error says what is wrong and is meant to be followed by
    /// how to make a hash (`portcullis hash-password`).
    pub fn parse(s: &str) -> Result<StoredHash, String> {
        if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return s
                .parse::<bcrypt::HashParts>()
                .map(|_| StoredHash::Bcrypt(s.to_string()))
                .map_err(|e| format!("is not a valid bcrypt hash ({e})"));
        }
        if s.starts_with("$argon2") {
            let hash = PasswordHash::new(s)
                .map_err(|e| format!("is not a valid argon2 PHC string ({e})"))?;
            if !["argon2id", "argon2i", "argon2d"].contains(&hash.algorithm.as_str()) {
                return Err(format!(
                    "names the unknown algorithm {:?}",
                    hash.algorithm.as_str()
                ));
            }
            // Checks the parameters now rather than at the first login.
            argon2::Params::try_from(&hash)
                .map_err(|e| format!("has unusable argon2 parameters ({e})"))?;
            return Ok(StoredHash::Argon2(Box::new(hash)));
        }
        let kind = if s.starts_with("$apr1$") || s.starts_with("$1$") {
            Some("MD5-crypt")
        } else if s.starts_with("{SHA}") {
            Some("unsalted SHA-1")
        } else if s.starts_with("$5$") || s.starts_with("$6$") {
            Some("SHA-crypt")
        } else {
            None
        };
        Err(match kind {
            Some(k) => format!("is a {k} hash, which is too weak to accept: only bcrypt and argon2 hashes are"),
            None => "is not a password hash (a plain-text password?): only bcrypt ($2b$…) and argon2 ($argon2id$…) hashes are accepted".to_string(),
        })
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            StoredHash::Argon2(h) => argon2::Argon2::default()
                .verify_password(password, &**h)
                .is_ok(),
        }
    }
}

/// An argon2id PHC string for `password` (argon2's default parameters: 19 MiB, 2 passes,
/// 1 lane, OWASP's recommendation), with a random salt.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    argon2::Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// A `basic_auth` block, ready to check requests.
#[derive(Debug)]
pub struct BasicAuth {
    /// `Basic realm="…", charset="UTF-8"`.
    pub challenge: HeaderValue,
    users: HashMap<String, StoredHash>,
    /// Verified for unknown users (see the module docs).
    dummy: StoredHash,
    /// The `Authorization` field goes on to backends.
    pub forward_auth: bool,
    salt: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Instant>>,
}

impl BasicAuth {
    /// `users` in the order configured (the first user's hash serves as the dummy); none
    /// empty. Fails when the realm cannot be a header value or there is no user.
    pub fn new(
        realm: &str,
        users: Vec<(String, StoredHash)>,
        forward_auth: bool,
    ) -> Result<BasicAuth, String> {
        let dummy = users
            .first()
            .map(|(_, h)| h.clone())
            .ok_or_else(|| "no users".to_string())?;
        let quoted = realm.replace('\\', "\\\\").replace('"', "\\\"");
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{quoted}\", charset=\"UTF-8\""))
                .map_err(|_| format!("realm {realm:?} has characters a header cannot carry"))?;
        let mut salt = [0u8; 32];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no random numbers".to_string())?;
        Ok(BasicAuth {
            challenge,
            users: users.into_iter().collect(),
            dummy,
            forward_auth,
            salt,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `authorization` (the request's field) carries a configured user's password.
    pub fn verify(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(self.salt)
            .chain_update(value.as_bytes())
            .finalize()
            .into();
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock() {
            if cache
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < CACHE_TTL)
            {
                return true;
            }
        }
        let Some((user, password)) = credentials(value.as_bytes()) else {
            return false;
        };
        let ok = match self.users.get(&user) {
            Some(hash) => hash.verify(&password),
            None => {
                let _ = self.dummy.verify(&password);
                false
            }
        };
        if ok {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_ENTRIES {
                    cache.retain(|_, t| now.duration_since(*t) < CACHE_TTL);
                }
                if cache.len() >= CACHE_ENTRIES {
                    if let Some(oldest) = cache.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                        cache.remove(&oldest);
                    }
                }
                cache.insert(key, now);
            }
        }
        ok
    }
}

/// `Basic base64(user:password)` → (user, password). The scheme is case-insensitive; the
/// user must be UTF-8 (RFC 7617 with `charset="UTF-8"`), the password is compared as bytes.
fn credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let rest = rest.trim_ascii();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// One `user:hash` line of an htpasswd file, with its 1-based line number.
pub struct HtpasswdEntry {
    pub line: usize,
    pub user: String,
    pub hash: String,
}

/// Splits an htpasswd file into entries; blank lines and `#` comments are skipped. A line
/// without `:` is an error (its line number and the reason).
pub fn parse_htpasswd(text: &str) -> Result<Vec<HtpasswdEntry>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = l.split_once(':') else {
            return Err((line_no, "is not user:hash".to_string()));
        };
        if user.is_empty() {
            return Err((line_no, "has an empty user name".to_string()));
        }
        out.push(HtpasswdEntry {
            line: line_no,
            user: user.to_string(),
            hash: hash.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pw: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    fn auth() -> BasicAuth {
        let argon = hash_password(b"correct horse").unwrap();
        let bc = bcrypt::hash("battery staple", 4).unwrap();
        BasicAuth::new(
            "Staff \"only\"",
            vec![
                ("alice".into(), StoredHash::parse(&argon).unwrap()),
                ("bob".into(), StoredHash::parse(&bc).unwrap()),
            ],
            false,
        )
        .unwrap()
    }

    #[test]
    fn right_passwords_pass_and_others_do_not() {
        let a = auth();
        assert!(a.verify(Some(&header("alice", "correct horse"))));
        assert!(a.verify(Some(&header("bob", "battery staple"))));
        assert!(!a.verify(Some(&header("alice", "battery staple"))));
        assert!(!a.verify(Some(&header("carol", "correct horse"))));
        assert!(!a.verify(None));
        assert!(!a.verify(Some(&HeaderValue::from_static("Bearer abc"))));
        assert!(!a.verify(Some(&HeaderValue::from_static("Basic !!!"))));
        // Scheme is case-insensitive.
        let lower = header("alice", "correct horse")
            .to_str()
            .unwrap()
            .replace("Basic", "bAsIc");
        assert!(a.verify(Some(&HeaderValue::from_str(&lower).unwrap())));
    }

    #[test]
    fn successes_are_cached_failures_are_not() {
        let a = auth();
        let good = header("alice", "correct horse");
        assert!(a.verify(Some(&good)));
        let t = Instant::now();
        for _ in 0..50 {
            assert!(a.verify(Some(&good)));
        }
        // 50 argon2 verifications take seconds; cached ones microseconds.
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(a.cache.lock().unwrap().len(), 1);
        assert!(!a.verify(Some(&header("alice", "wrong"))));
        assert_eq!(a.cache.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let a = BasicAuth::new(
            "r",
            vec![(
                "u".into(),
                StoredHash::parse(&bcrypt::hash("p", 4).unwrap()).unwrap(),
            )],
            false,
        )
        .unwrap();
        // Different spellings of the same credentials are different keys.
        let b = base64::engine::general_purpose::STANDARD.encode("u:p");
        for i in 0..CACHE_ENTRIES + 10 {
            let v = HeaderValue::from_str(&format!("Basic {b}{}", " ".repeat(i))).unwrap();
            assert!(a.verify(Some(&v)));
        }
        assert_eq!(a.cache.lock().unwrap().len(), CACHE_ENTRIES);
    }

    #[test]
    fn unknown_users_cost_as_much_as_wrong_passwords() {
        let bc = bcrypt::hash("pw", 10).unwrap();
        let a = BasicAuth::new(
            "r",
            vec![("alice".into(), StoredHash::parse(&bc).unwrap())],
            false,
        )
        .unwrap();
        let time = |h: &HeaderValue| {
            let t = Instant::now();
            assert!(!a.verify(Some(h)));
            t.elapsed()
        };
        let wrong = header("alice", "nope");
        let unknown = header("mallory", "nope");
        let (mut w, mut u) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            w = w.min(time(&wrong));
            u = u.min(time(&unknown));
        }
        // bcrypt cost 10 takes tens of ms; an unknown user that skipped it would take µs.
        assert!(
            u * 2 > w && w * 2 > u,
            "wrong password {w:?}, unknown user {u:?}"
        );
    }

    #[test]
    fn the_challenge_quotes_the_realm() {
        assert_eq!(
            auth().challenge,
            "Basic realm=\"Staff \\\"only\\\"\", charset=\"UTF-8\""
        );
    }

    #[test]
    fn plain_and_weak_hashes_are_refused() {
        assert!(StoredHash::parse("hunter2")
            .unwrap_err()
            .contains("plain-text"));
        assert!(StoredHash::parse("$apr1$abc$def")
            .unwrap_err()
            .contains("MD5-crypt"));
        assert!(StoredHash::parse("{SHA}abc").unwrap_err().contains("SHA-1"));
        assert!(StoredHash::parse("$2b$12$short")
            .unwrap_err()
            .contains("not a valid bcrypt"));
        assert!(StoredHash::parse("$argon2id$v=19$garbage")
            .unwrap_err()
            .contains("argon2"));
    }

    #[test]
    fn htpasswd_lines() {
        let e = parse_htpasswd("# users\n\nalice:$2b$x\nbob:$argon2id$y\n").unwrap();
        assert_eq!(
            e.iter()
                .map(|e| (e.line, e.user.as_str()))
                .collect::<Vec<_>>(),
            vec![(3, "alice"), (4, "bob")]
        );
        assert_eq!(parse_htpasswd("alice\n").err().unwrap().0, 1);
    }
}
