//! The summary grade, in the spirit of SSL Labs' rating guide: an endpoint starts at A+ and
//! each class of problem caps it. The rules are data, so the README's table
//! ("Diagnosing an HTTPS endpoint") is this list, word for word; a unit test keeps them equal.

use serde::Serialize;

use super::report::{Report, Verdict};

/// A grade, worst first (so the lowest cap wins with `min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    F,
    C,
    B,
    AMinus,
    A,
    APlus,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::F => "F",
            Grade::C => "C",
            Grade::B => "B",
            Grade::AMinus => "A-",
            Grade::A => "A",
            Grade::APlus => "A+",
        }
    }
}

impl Serialize for Grade {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One cap: the grade an endpoint gets at best when `applies`.
pub struct Rule {
    pub cap: Grade,
    /// The rule as the README states it.
    pub when: &'static str,
    applies: fn(&Report) -> bool,
}

/// Every rule, strictest first. The grade is the lowest cap that applies (A+ when none does).
pub const RULES: &[Rule] = &[
    Rule {
        cap: Grade::F,
        when: "a certificate browsers refuse: expired or not yet valid, wrong name, untrusted or self-signed, missing intermediate, weak key, SHA-1 signature, revoked, Certificate Transparency missing",
        applies: |r| errors(r, |id| id == "cert" || id.starts_with("cert.")),
    },
    Rule {
        cap: Grade::F,
        when: "no TLS handshake a browser can complete: plain HTTP on the TLS port, no protocol version or cipher suite in common with browsers",
        applies: |r| {
            let versions = accepted_versions(r);
            errors(r, |id| id == "tls")
                || (!versions.is_empty() && !versions.iter().any(|v| v == "tls12" || v == "tls13"))
        },
    },
    Rule {
        cap: Grade::F,
        when: "SSL 3.0 accepted",
        applies: |r| accepted_versions(r).iter().any(|v| v == "ssl3"),
    },
    Rule {
        cap: Grade::F,
        when: "RC4, NULL, EXPORT or anonymous cipher suites accepted",
        applies: |r| {
            suites(r).iter().any(|s| {
                s.contains("RC4") || s.contains("NULL") || s.contains("EXPORT") || s.contains("anon")
            })
        },
    },
    Rule {
        cap: Grade::C,
        when: "3DES (or DES) cipher suites accepted",
        applies: |r| suites(r).iter().any(|s| s.contains("DES")),
    },
    Rule {
        cap: Grade::C,
        when: "no cipher suite with forward secrecy (static RSA key exchange only)",
        applies: |r| {
            let s = suites(r);
            !s.is_empty() && s.iter().all(|s| !forward_secret(s))
        },
    },
    Rule {
        cap: Grade::C,
        when: "the page does not load over HTTPS: no HTTP answer, a redirect loop or a redirect to plain HTTP",
        applies: |r| errors(r, |id| id == "http" || id == "http.redirects"),
    },
    Rule {
        cap: Grade::C,
        when: "active mixed content: scripts, styles or frames loaded over http:// (browsers block them)",
        applies: |r| errors(r, |id| id == "http.mixed_content"),
    },
    Rule {
        cap: Grade::C,
        when: "any other error",
        applies: |r| r.checks.iter().any(|c| c.verdict == Verdict::Error),
    },
    Rule {
        cap: Grade::B,
        when: "TLS 1.0 or TLS 1.1 accepted (browsers dropped them in 2020)",
        applies: |r| {
            accepted_versions(r)
                .iter()
                .any(|v| v == "tls10" || v == "tls11")
        },
    },
    Rule {
        cap: Grade::B,
        when: "some cipher suites without forward secrecy (static RSA key exchange) accepted",
        applies: |r| suites(r).iter().any(|s| !forward_secret(s)),
    },
    Rule {
        cap: Grade::B,
        when: "no AEAD cipher suite (CBC only)",
        applies: |r| {
            let s = suites(r);
            !s.is_empty()
                && !s
                    .iter()
                    .any(|s| s.contains("GCM") || s.contains("CHACHA20") || s.contains("CCM"))
        },
    },
    Rule {
        cap: Grade::AMinus,
        when: "any warning about TLS or the certificate: CBC suites, no server preference, chain out of order, expiring soon, no OCSP staple, no session resumption, no HTTP/2",
        applies: |r| {
            // Not `cert.revocation`: an OCSP responder that cannot be reached is the CA's.
            warnings(r, |id| {
                id == "alpn"
                    || id.starts_with("tls")
                    || id == "cert"
                    || id.starts_with("cert.") && id != "cert.revocation"
            })
        },
    },
    Rule {
        cap: Grade::A,
        when: "no HSTS, or HSTS with max-age under a year",
        applies: |r| {
            r.checks
                .iter()
                .any(|c| c.id == "http.hsts" && c.verdict != Verdict::Ok)
        },
    },
    Rule {
        cap: Grade::A,
        when: "any other warning: security headers, port 80, HTTP/3 advertised but not served, passive mixed content, an OCSP responder that cannot be reached",
        applies: |r| r.checks.iter().any(|c| c.verdict == Verdict::Warning),
    },
];

/// The grade and the rules that capped it; none when the endpoint could not be reached or
/// nothing about its TLS is known.
pub fn grade(r: &Report) -> Option<(Grade, Vec<&'static str>)> {
    if r.unreachable
        || !r
            .checks
            .iter()
            .any(|c| c.id == "tls" || c.id == "tls.versions")
    {
        return None;
    }
    let applied: Vec<&Rule> = RULES.iter().filter(|rule| (rule.applies)(r)).collect();
    let grade = applied
        .iter()
        .map(|rule| rule.cap)
        .min()
        .unwrap_or(Grade::APlus);
    Some((
        grade,
        applied
            .iter()
            .filter(|rule| rule.cap == grade)
            .map(|rule| rule.when)
            .collect(),
    ))
}

fn errors(r: &Report, id: impl Fn(&str) -> bool) -> bool {
    r.checks
        .iter()
        .any(|c| c.verdict == Verdict::Error && id(c.id))
}

fn warnings(r: &Report, id: impl Fn(&str) -> bool) -> bool {
    r.checks
        .iter()
        .any(|c| c.verdict == Verdict::Warning && id(c.id))
}

/// The protocol versions the scan found accepted, normalised (`ssl3`, `tls10` … `tls13`).
fn accepted_versions(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = r.facts.get("versions_accepted") {
        strings(v, &mut out);
    }
    out.iter()
        .map(|v| {
            let v: String = v
                .to_ascii_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .replace('v', "");
            v
        })
        .collect()
}

/// Every cipher suite name the scan found accepted, any version.
fn suites(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = r.facts.get("ciphers") {
        strings(v, &mut out);
    }
    out
}

/// IANA names: `TLS_ECDHE_…`/`TLS_DHE_…` and the TLS 1.3 suites (`TLS_AES_…`, `TLS_CHACHA20_…`)
/// have forward secrecy; `TLS_RSA_WITH_…` and the like do not.
fn forward_secret(suite: &str) -> bool {
    suite.contains("ECDHE")
        || suite.contains("DHE_")
        || !suite.contains("_WITH_") && suite.starts_with("TLS_")
}

fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::report::Check;

    fn report(checks: Vec<Check>, facts: serde_json::Value) -> Report {
        let mut r = Report::new("example.com:443".into());
        r.checks = checks;
        if let serde_json::Value::Object(m) = facts {
            r.facts = m;
        }
        r
    }

    #[test]
    fn the_readme_states_every_rule() {
        let readme = include_str!("../../README.md");
        for rule in RULES {
            let line = format!("| {} | {} |", rule.cap.as_str(), rule.when);
            assert!(
                readme.contains(&line),
                "README lacks the rule line:\n{line}"
            );
        }
    }

    #[test]
    fn a_clean_endpoint_is_a_plus_and_each_class_caps_it() {
        let ok = || {
            vec![
                Check::ok("tls", "TLS 1.3"),
                Check::ok("cert.trust", "trusted"),
                Check::ok("http.hsts", "a year"),
            ]
        };
        let healthy = serde_json::json!({
            "versions_accepted": ["TLSv1.2", "TLSv1.3"],
            "ciphers": {"TLSv1.3": ["TLS_AES_128_GCM_SHA256"], "TLSv1.2": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]},
        });
        assert_eq!(
            grade(&report(ok(), healthy.clone())).unwrap().0,
            Grade::APlus
        );
        let with = |c: Check| {
            let mut v = ok();
            v.push(c);
            grade(&report(v, healthy.clone())).unwrap().0
        };
        assert_eq!(with(Check::error("cert.expiry", "expired")), Grade::F);
        assert_eq!(with(Check::warning("cert.expiry", "soon")), Grade::AMinus);
        assert_eq!(with(Check::warning("http.headers", "none")), Grade::A);
        assert_eq!(with(Check::error("http.redirects", "loop")), Grade::C);
        let facts = |v: serde_json::Value| grade(&report(ok(), v)).unwrap();
        let legacy = facts(serde_json::json!({
            "versions_accepted": ["TLSv1.0", "TLSv1.2"],
            "ciphers": {"TLSv1.2": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA"]},
        }));
        assert_eq!(legacy.0, Grade::B);
        assert_eq!(legacy.1.len(), 2, "{:?}", legacy.1);
        assert_eq!(
            facts(serde_json::json!({"versions_accepted": ["SSLv3", "TLSv1.2"]})).0,
            Grade::F
        );
        assert_eq!(
            facts(serde_json::json!({"ciphers": ["TLS_RSA_WITH_AES_128_GCM_SHA256"]})).0,
            Grade::C
        );
        assert_eq!(
            facts(serde_json::json!({"ciphers": ["TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]})).0,
            Grade::C
        );
        assert_eq!(
            facts(serde_json::json!({"versions_accepted": ["TLSv1.0"]})).0,
            Grade::F,
            "no version browsers speak"
        );
        let mut unreachable = report(vec![Check::error("tcp", "refused")], healthy);
        unreachable.unreachable = true;
        assert!(grade(&unreachable).is_none());
    }
}
