//! Host names: parsing the names a site answers for, and looking names up (SNI, `Host`).
//!
//! A [`HostPattern`] is an exact DNS name, a one-label wildcard (`*.example.com`), or an IP
//! address. A [`NameTable`] maps patterns to values and answers lookups without allocating for
//! the common case (an already lower-case name).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// One name a site answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `shop.example.com` (stored lower-case, no trailing dot).
    Exact(String),
    /// `*.example.com`: any single label in front of the suffix (stored as `example.com`).
    Wildcard(String),
    /// An IP address (matched against `Host` and the certificate's IP SANs; never sent as SNI).
    Ip(IpAddr),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl HostPattern {
    /// Parses a configured host name. Errors say what is wrong in words a user can act on.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty host name".into());
        }
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(HostPattern::Ip(ip));
        }
        if s.contains("://") || s.contains('/') {
            return Err(format!(
                "{s:?} is a URL, not a host name; write just the name, e.g. \"example.com\""
            ));
        }
        if s.contains(':') {
            return Err(format!(
                "{s:?} has a port; host names have no port (ports go in [listen])"
            ));
        }
        if !s.is_ascii() {
            return Err(format!(
                "{s:?} is not ASCII; write internationalised names in punycode (xn--…)"
            ));
        }
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (wild, rest) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        if rest.len() > 253 {
            return Err(format!("{s:?} is longer than 253 characters"));
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(format!("{s:?} has an empty label (two dots in a row?)"));
            }
            if label.len() > 63 {
                return Err(format!("{s:?} has a label longer than 63 characters"));
            }
            if label.contains('*') {
                return Err(format!(
                    "{s:?}: a wildcard must be the whole leftmost label, as in \"*.example.com\""
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "{s:?} has characters not allowed in a host name (letters, digits, '-')"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("{s:?}: a label may not start or end with '-'"));
            }
        }
        if wild {
            if !rest.contains('.') {
                return Err(format!(
                    "{s:?}: a wildcard needs at least two labels after \"*.\""
                ));
            }
            Ok(HostPattern::Wildcard(rest))
        } else {
            Ok(HostPattern::Exact(rest))
        }
    }

    /// Whether this name can only be served by a locally trusted certificate (the local CA):
    /// `localhost`, `*.localhost`, IP addresses, and the reserved `.test`/`.internal`/`.home.arpa`.
    pub fn is_local(&self) -> bool {
        let name = match self {
            HostPattern::Ip(_) => return true,
            HostPattern::Exact(n) | HostPattern::Wildcard(n) => n.as_str(),
        };
        let local_suffixes = [
            "localhost",
            "test",
            "internal",
            "home.arpa",
            "local",
            "invalid",
        ];
        local_suffixes
            .iter()
            .any(|s| name == *s || name.ends_with(&format!(".{s}")))
    }
}

/// Lower-cases and strips one trailing dot, borrowing when nothing changes.
pub fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Splits a `Host` header / `:authority` value into the host part (brackets kept off IPv6).
/// Returns `None` for values that are not a plain `host[:port]`.
pub fn host_from_authority(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty()
            || (after.starts_with(':') && after[1..].bytes().all(|b| b.is_ascii_digit())))
        {
            return None;
        }
        return Some(&rest[..end]);
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return None,
        None => authority,
    };
    if host.is_empty() || host.contains(['@', '/', ' ', '\\']) {
        return None;
    }
    Some(host)
}

/// Maps host patterns to values; exact names win over wildcards.
#[derive(Debug, Clone)]
pub struct NameTable<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
    ips: Vec<(IpAddr, T)>,
}

impl<T> Default for NameTable<T> {
    fn default() -> Self {
        NameTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            ips: Vec::new(),
        }
    }
}

impl<T: Clone> NameTable<T> {
    /// Adds a pattern; returns the previous value when the same pattern was already present.
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> Option<T> {
        match pattern {
            HostPattern::Exact(n) => self.exact.insert(n.clone(), value),
            HostPattern::Wildcard(s) => self.wildcard.insert(s.clone(), value),
            HostPattern::Ip(ip) => {
                if let Some(slot) = self.ips.iter_mut().find(|(i, _)| i == ip) {
                    return Some(std::mem::replace(&mut slot.1, value));
                }
                self.ips.push((*ip, value));
                None
            }
        }
    }

    /// Looks a DNS name or IP literal up.
    pub fn get(&self, name: &str) -> Option<&T> {
        let name = normalize(name);
        if let Some(v) = self.exact.get(name.as_ref()) {
            return Some(v);
        }
        if !self.ips.is_empty() {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return self.ips.iter().find(|(i, _)| *i == ip).map(|(_, v)| v);
            }
        }
        let (first, rest) = name.split_once('.')?;
        if first.is_empty() {
            return None;
        }
        self.wildcard.get(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let w = HostPattern::parse("*.Example.COM").unwrap();
        assert_eq!(w, HostPattern::Wildcard("example.com".into()));
        let mut t = NameTable::default();
        t.insert(&w, ());
        assert!(t.get("a.example.com").is_some());
        assert!(t.get("A.EXAMPLE.com.").is_some());
        assert!(t.get("example.com").is_none());
        assert!(t.get("a.b.example.com").is_none());
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Ip("::1".parse().unwrap())
        );
        assert!(HostPattern::parse("https://x.com").is_err());
        assert!(HostPattern::parse("x.com:443").is_err());
        assert!(HostPattern::parse("a*.x.com").is_err());
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("bad..name").is_err());
        assert!(HostPattern::parse("bücher.de").is_err());
    }

    #[test]
    fn table_lookup() {
        let mut t = NameTable::default();
        t.insert(&HostPattern::parse("*.example.com").unwrap(), 1);
        t.insert(&HostPattern::parse("www.example.com").unwrap(), 2);
        t.insert(&HostPattern::parse("127.0.0.1").unwrap(), 3);
        assert_eq!(t.get("www.example.com"), Some(&2));
        assert_eq!(t.get("WWW.example.com."), Some(&2));
        assert_eq!(t.get("shop.example.com"), Some(&1));
        assert_eq!(t.get("example.com"), None);
        assert_eq!(t.get("127.0.0.1"), Some(&3));
        assert_eq!(t.get(".example.com"), None);
    }

    #[test]
    fn authority_split() {
        assert_eq!(host_from_authority("a.com:8443"), Some("a.com"));
        assert_eq!(host_from_authority("a.com"), Some("a.com"));
        assert_eq!(host_from_authority("[::1]:443"), Some("::1"));
        assert_eq!(host_from_authority("[::1]"), Some("::1"));
        assert_eq!(host_from_authority("a.com:x"), None);
        assert_eq!(host_from_authority("user@a.com"), None);
        assert_eq!(host_from_authority(""), None);
    }
}
