//! The scan's findings judged as browsers would, with the cause and the fix in plain words:
//! `tls.versions`, `tls.ciphers`, `tls.preference`, `tls.groups` and their facts.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::reply::Answer;
use super::suites::{self, Group, Version, Weakness};
use super::Scan;
use crate::probe::report::{Check, Report, Verdict};

/// nginx, Apache and portcullis settings for versions.
const FIX_VERSIONS: &str = "accept TLS 1.2 and 1.3 only: nginx `ssl_protocols TLSv1.2 TLSv1.3;`, Apache `SSLProtocol -all +TLSv1.2 +TLSv1.3`; portcullis accepts only these (`tls.profile = \"intermediate\"`, the default)";
/// nginx, Apache and portcullis settings for suites.
const FIX_SUITES: &str = "offer ECDHE with AES-GCM or ChaCha20-Poly1305 only (Mozilla's intermediate profile): nginx `ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;`, Apache `SSLCipherSuite ECDHE+AESGCM:ECDHE+CHACHA20`; portcullis offers only these";

impl Scan {
    pub(super) fn report(&self, report: &mut Report) {
        if !self.versions(report) {
            return;
        }
        self.ciphers(report);
        self.preference(report);
        self.groups(report);
    }

    /// `tls.versions`; false when nothing more can be said (no TLS at all).
    fn versions(&self, report: &mut Report) -> bool {
        let accepted = self.accepted_versions();
        let names = |vs: &[Version]| vs.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ");
        let answers: Map<String, Value> = self
            .answers
            .iter()
            .map(|(v, a)| (v.name().to_owned(), Value::from(a.describe())))
            .collect();
        report.fact(
            "versions_accepted",
            accepted.iter().map(|v| v.name()).collect::<Vec<_>>(),
        );
        report.fact("version_answers", answers);
        let untested: Vec<Version> = self
            .answers
            .iter()
            .filter(|(_, a)| a.untested())
            .map(|(v, _)| *v)
            .collect();
        let refused: Vec<Version> = Version::ALL
            .into_iter()
            .filter(|v| !accepted.contains(v) && !untested.contains(v))
            .collect();

        if accepted.is_empty() {
            let any = |f: fn(&Answer) -> bool| self.answers.values().any(f);
            let check = if any(|a| matches!(a, Answer::PlainHttp)) {
                Check::error(
                    "tls.versions",
                    "no TLS version accepted: the port answers plain HTTP",
                )
                .browser("ERR_SSL_PROTOCOL_ERROR")
                .cause("this port serves plain HTTP, not HTTPS")
                .fix("serve TLS on this port (nginx `listen 443 ssl`), or use http:// for it")
            } else if untested.len() == self.answers.len() {
                Check::warning(
                    "tls.versions",
                    format!(
                        "protocol versions not tested: {}",
                        self.answers
                            .values()
                            .next()
                            .map(Answer::describe)
                            .unwrap_or_default()
                    ),
                )
            } else if let Some(Answer::NotTls(what)) = self
                .answers
                .values()
                .find(|a| matches!(a, Answer::NotTls(_)))
            {
                Check::error(
                    "tls.versions",
                    format!("no TLS version accepted: not a TLS server ({what})"),
                )
                .browser("ERR_SSL_PROTOCOL_ERROR")
                .cause("another protocol answers on this port")
                .fix("serve TLS on this port, or probe the port that does")
            } else {
                Check::error(
                    "tls.versions",
                    format!("no TLS version accepted (SSLv3 to TLS 1.3 all refused: {})", self.answers.get(&Version::Tls12).map(Answer::describe).unwrap_or_default()),
                )
                .browser("ERR_SSL_VERSION_OR_CIPHER_MISMATCH")
                .cause("the server refuses every ClientHello: no version or cipher suite in common with any client, TLS switched off, or no certificate for this name (SNI)")
                .fix(format!("{FIX_VERSIONS}; check the server's TLS settings and error log, and that a site serves this name"))
            };
            report.push(check);
            return false;
        }

        let modern = accepted.iter().any(|v| *v >= Version::Tls12);
        let legacy: Vec<Version> = accepted
            .iter()
            .copied()
            .filter(|v| *v < Version::Tls12)
            .collect();
        let mut summary = format!("TLS versions accepted: {}", names(&accepted));
        if !refused.is_empty() {
            summary.push_str(&format!("; refused: {}", names(&refused)));
        }
        if !untested.is_empty() {
            summary.push_str(&format!("; not tested (no answer): {}", names(&untested)));
        }
        let check = if !modern {
            Check::error("tls.versions", format!("{summary}: no version current browsers speak"))
                .browser("ERR_SSL_VERSION_OR_CIPHER_MISMATCH")
                .cause(format!("browsers require TLS 1.2 or 1.3 (Chrome, Edge, Firefox and Safari dropped TLS 1.0 and 1.1 in 2020, SSLv3 in 2015); this server speaks only {}, so every browser refuses the connection (some versions say ERR_SSL_PROTOCOL_ERROR)", names(&legacy)))
                .fix(FIX_VERSIONS)
        } else if accepted.contains(&Version::Ssl3) {
            Check::error("tls.versions", format!("{summary}: SSLv3 accepted"))
                .cause("SSLv3 is broken (POODLE: an attacker who can make a client fall back to it decrypts cookies); browsers refuse it, but old clients still use it")
                .fix(FIX_VERSIONS)
        } else if !legacy.is_empty() {
            Check::warning("tls.versions", format!("{summary}: {} still accepted", names(&legacy)))
                .cause("TLS 1.0 and 1.1 are deprecated (RFC 8996): weak hashes and CBC-only ciphers; no current browser uses them, so they only serve very old clients (and PCI DSS forbids them)")
                .fix(FIX_VERSIONS)
        } else if !accepted.contains(&Version::Tls13) {
            Check::warning("tls.versions", format!("{summary}: no TLS 1.3"))
                .cause("without TLS 1.3 every connection costs an extra round trip and gets no post-quantum key exchange; TLS 1.2 alone still works in browsers")
                .fix("enable TLS 1.3: nginx `ssl_protocols TLSv1.2 TLSv1.3;` (with OpenSSL 1.1.1 or later), Apache `SSLProtocol -all +TLSv1.2 +TLSv1.3`; portcullis speaks it by default")
        } else if !untested.is_empty() {
            Check::warning("tls.versions", summary)
                .cause("some questions got no answer in time (a slow server, or one that throttles new connections): the list may be incomplete")
                .fix("probe again, or with a longer --timeout")
        } else {
            Check::ok("tls.versions", summary)
        };
        report.push(check);
        true
    }

    /// `tls.ciphers`: the suites of each accepted version, judged.
    fn ciphers(&self, report: &mut Report) {
        let mut fact = Map::new();
        let mut lines = Vec::new();
        let mut counts = Vec::new();
        for (v, list) in &self.suites {
            let names: Vec<String> = list.iter().map(|s| suites::suite_name(*s)).collect();
            lines.push(format!("{}: {}", v.name(), names.join(", ")));
            counts.push(format!("{}: {}", v.name(), names.len()));
            fact.insert(v.name().to_owned(), json!(names));
        }
        report.fact("ciphers", fact);

        // The weak suites, worst first, each named once (with the versions it was seen in).
        let mut weak: BTreeMap<Weakness, Vec<String>> = BTreeMap::new();
        for list in self.suites.values() {
            for &s in list {
                for w in suites::weaknesses(s) {
                    let name = suites::suite_name(s);
                    let entry = weak.entry(w).or_default();
                    if !entry.contains(&name) {
                        entry.push(name);
                    }
                }
            }
        }
        let tls13 = self
            .suites
            .get(&Version::Tls13)
            .is_some_and(|l| l.iter().any(|s| [0x1301, 0x1302, 0x1303].contains(s)));
        let tls12 = self
            .suites
            .get(&Version::Tls12)
            .is_some_and(|l| l.iter().any(|s| suites::browser_tls12(*s)));
        let modern = self.accepted(Version::Tls12) || self.accepted(Version::Tls13);

        let mut problems: Vec<String> = Vec::new();
        let mut causes: Vec<&str> = Vec::new();
        let mut verdict = Verdict::Ok;
        let mut browser = None;
        if modern && !tls13 && !tls12 {
            verdict = Verdict::Error;
            browser = Some("ERR_SSL_VERSION_OR_CIPHER_MISMATCH");
            problems.push("no cipher suite current browsers accept".into());
            causes.push("Chrome and Edge negotiate TLS 1.2 only with ECDHE key exchange and AES-GCM, ChaCha20-Poly1305 or AES-CBC (they dropped DHE in version 53 and static RSA key exchange in version 131), and this server offers none of those, so they refuse to connect; Firefox and Safari may still connect, without forward secrecy");
        }
        let broken: Vec<String> = weak
            .iter()
            .filter_map(|(w, names)| match w {
                Weakness::Broken(why) => Some(format!("{why}: {}", names.join(", "))),
                _ => None,
            })
            .collect();
        if !broken.is_empty() {
            verdict = Verdict::Error;
            problems.push(format!("broken suites accepted ({})", broken.join("; ")));
            causes.push("NULL and anonymous suites give no protection at all, EXPORT suites are breakable in hours (FREAK, Logjam), RC4 is broken (RFC 7465), DES and 3DES/IDEA leak plaintext after long connections (Sweet32): an attacker who makes a client pick one reads or changes the traffic");
        }
        if let Some(names) = weak.get(&Weakness::NoForwardSecrecy) {
            verdict = verdict.max(Verdict::Warning);
            problems.push(format!(
                "no forward secrecy (static RSA/DH key exchange): {}",
                names.join(", ")
            ));
            causes.push("with static RSA or DH key exchange, whoever obtains the server's private key later (a leak, a seizure) decrypts every recorded session; browsers prefer ECDHE, but clients that pick these get no forward secrecy");
        }
        if let Some(names) = weak.get(&Weakness::Cbc) {
            verdict = verdict.max(Verdict::Warning);
            problems.push(format!("CBC suites: {}", names.join(", ")));
            causes.push("CBC with HMAC (MAC-then-encrypt) is the source of padding-oracle attacks (Lucky13 and its successors); AEAD suites (GCM, ChaCha20-Poly1305) have none");
        }
        let mut summary = if problems.is_empty() {
            format!(
                "cipher suites: AEAD with forward secrecy only ({})",
                lines.join("; ")
            )
        } else {
            // The weak ones are named; every list is in the `ciphers` fact.
            format!(
                "cipher suites: {} (accepted: {})",
                problems.join("; "),
                counts.join(", ")
            )
        };
        if !self.incomplete.is_empty() {
            verdict = verdict.max(Verdict::Warning);
            summary.push_str(&format!(
                "; the list for {} may be incomplete (a question got no answer in time)",
                self.incomplete
                    .iter()
                    .map(|v| v.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut check = match verdict {
            Verdict::Ok => Check::ok("tls.ciphers", summary),
            Verdict::Warning => Check::warning("tls.ciphers", summary),
            Verdict::Error => Check::error("tls.ciphers", summary),
        };
        if let Some(b) = browser {
            check = check.browser(b);
        }
        if !causes.is_empty() {
            check = check.cause(causes.join("; ")).fix(FIX_SUITES);
        }
        report.push(check);
    }

    /// `tls.preference`: whether the server chooses the suite. Judged on TLS 1.2 when it has a
    /// choice (that is where weak suites live), else on the newest version that has one.
    fn preference(&self, report: &mut Report) {
        let judged = if self.preference.contains_key(&Version::Tls12) {
            Some(Version::Tls12)
        } else {
            self.preference.keys().next_back().copied()
        };
        let Some(v) = judged else {
            report.fact("server_preference", Value::Null);
            if !self.suites.is_empty() {
                report.push(Check::ok(
                    "tls.preference",
                    "cipher suite order: one suite per version, nothing to choose",
                ));
            }
            return;
        };
        let server = self.preference[&v];
        report.fact("server_preference", server);
        let per_version = self
            .preference
            .iter()
            .map(|(v, p)| {
                format!(
                    "{}: {}",
                    v.name(),
                    if *p {
                        "server's order"
                    } else {
                        "client's order"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let weak_here = self
            .suites
            .get(&v)
            .is_some_and(|l| l.iter().any(|s| !suites::weaknesses(*s).is_empty()));
        let check = if server {
            Check::ok(
                "tls.preference",
                format!("the server chooses the cipher suite by its own order ({per_version})"),
            )
        } else if weak_here {
            Check::warning("tls.preference", format!("the server follows the client's cipher order although it accepts weak suites ({per_version})"))
                .cause("a client that lists a weak suite first (an old or misconfigured one) gets it, although the server has better ones")
                .fix("prefer the server's order: nginx `ssl_prefer_server_ciphers on;`, Apache `SSLHonorCipherOrder on`; portcullis `tls.prefer_server_cipher_order = true` (the default) — or accept strong suites only")
        } else {
            Check::ok("tls.preference", format!("the server follows the client's cipher order; fine, every suite it accepts is strong ({per_version})"))
        };
        report.push(check);
    }

    /// `tls.groups`: the key-exchange groups accepted, and post-quantum support.
    fn groups(&self, report: &mut Report) {
        let take = |qs: &[(Group, Answer)], v: Version| -> (Vec<&'static str>, usize) {
            let ok: Vec<&'static str> = qs
                .iter()
                .filter(|(g, a)| {
                    a.hello().is_some_and(|h| {
                        h.version == v.wire()
                            && match v {
                                Version::Tls13 => h.group == Some(g.id),
                                _ => suites::is_ecdhe(h.suite),
                            }
                    })
                })
                .map(|(g, _)| g.name)
                .collect();
            let untested = qs.iter().filter(|(_, a)| a.untested()).count();
            (ok, untested)
        };
        let has13 = self.accepted(Version::Tls13);
        let has12 = self.accepted(Version::Tls12);
        if !has13 && !has12 {
            return;
        }
        let (g13, u13) = take(&self.groups13, Version::Tls13);
        let (g12, u12) = take(&self.groups12, Version::Tls12);
        let mut fact = Map::new();
        let mut lines = Vec::new();
        if has13 {
            fact.insert("TLSv1.3".into(), json!(g13));
            lines.push(format!("TLSv1.3: {}", list_or_none(&g13)));
        }
        if has12 {
            fact.insert("TLSv1.2".into(), json!(g12));
            lines.push(format!("TLSv1.2 (ECDHE): {}", list_or_none(&g12)));
        }
        let pq = g13.contains(&"X25519MLKEM768");
        report.fact("groups", fact);
        report.fact("pq_hybrid", pq);
        let browser = |names: &[&str]| {
            names.iter().any(|n| {
                suites::BROWSER_GROUPS
                    .iter()
                    .any(|id| suites::group_name(*id) == *n)
            })
        };
        let summary = format!("key exchange groups: {}", lines.join("; "));
        let check = if u13 + u12 > 0 {
            Check::warning(
                "tls.groups",
                format!(
                    "{summary}; {} question(s) got no answer in time: the list may be incomplete",
                    u13 + u12
                ),
            )
            .fix("probe again, or with a longer --timeout")
        } else if has13 && !browser(&g13) {
            Check::warning("tls.groups", format!("{summary}: TLS 1.3 without any group browsers offer"))
                .cause("browsers offer X25519MLKEM768, x25519, secp256r1 and secp384r1; with none of them TLS 1.3 fails and browsers fall back to TLS 1.2, or fail")
                .fix("enable x25519 and secp256r1: nginx `ssl_ecdh_curve X25519:prime256v1:secp384r1;`")
        } else if has12 && !has13 && g12.is_empty() {
            Check::warning("tls.groups", format!("{summary}: no ECDHE key exchange"))
                .cause(
                    "without an elliptic curve for ECDHE there is no forward secrecy with browsers",
                )
                .fix(FIX_SUITES)
        } else if pq {
            Check::ok(
                "tls.groups",
                format!("{summary} (post-quantum hybrid X25519MLKEM768 supported)"),
            )
        } else {
            // Not a warning: no browser fails without it, and most servers' TLS libraries
            // (OpenSSL before 3.5) cannot offer it yet; the fact records it for the grade.
            Check::ok("tls.groups", format!("{summary} (no post-quantum key exchange: X25519MLKEM768 not supported)"))
                .fix("to protect today's traffic from decryption by future quantum computers, enable X25519MLKEM768 (OpenSSL 3.5+ enables it by default; nginx `ssl_ecdh_curve X25519MLKEM768:X25519:prime256v1;`); portcullis offers it by default")
        };
        report.push(check);
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::super::reply::ServerHello;
    use super::*;

    /// A scan that found `versions` accepted with `suites` each (the rest refused by alert).
    fn scan(found: &[(Version, &[u16])]) -> Scan {
        let mut s = Scan::default();
        for v in Version::ALL {
            s.answers.insert(v, Answer::Alert(70));
        }
        for (v, list) in found {
            s.answers.insert(
                *v,
                Answer::Hello(ServerHello {
                    version: v.wire(),
                    suite: list[0],
                    group: None,
                    retry: false,
                }),
            );
            s.suites.insert(*v, list.to_vec());
        }
        s
    }

    fn judged(s: &Scan) -> Report {
        let mut r = Report::new("example.com:443".into());
        s.report(&mut r);
        r
    }

    fn verdict(r: &Report, id: &str) -> Verdict {
        r.checks
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no {id}: {r:?}"))
            .verdict
    }

    const MODERN12: &[u16] = &[0xc02f, 0xc030];
    const MODERN13: &[u16] = &[0x1301, 0x1302];

    #[test]
    fn legacy_versions_are_flagged_by_how_bad_they_are() {
        let r = judged(&scan(&[
            (Version::Ssl3, &[0x002f]),
            (Version::Tls12, MODERN12),
            (Version::Tls13, MODERN13),
        ]));
        assert_eq!(verdict(&r, "tls.versions"), Verdict::Error);
        assert!(r.checks[0].cause.as_deref().unwrap().contains("POODLE"));

        let r = judged(&scan(&[
            (Version::Tls11, &[0xc013]),
            (Version::Tls12, MODERN12),
            (Version::Tls13, MODERN13),
        ]));
        assert_eq!(verdict(&r, "tls.versions"), Verdict::Warning);
        assert_eq!(
            r.facts["versions_accepted"],
            json!(["TLSv1.1", "TLSv1.2", "TLSv1.3"])
        );

        let r = judged(&scan(&[
            (Version::Tls12, MODERN12),
            (Version::Tls13, MODERN13),
        ]));
        assert_eq!(verdict(&r, "tls.versions"), Verdict::Ok);
        assert_eq!(verdict(&r, "tls.ciphers"), Verdict::Ok);
    }

    #[test]
    fn broken_suites_are_errors_and_strong_ones_with_cbc_warnings() {
        // RC4 and 3DES beside good suites: errors, named.
        let r = judged(&scan(&[
            (Version::Tls12, &[0xc02f, 0x0005, 0x000a]),
            (Version::Tls13, MODERN13),
        ]));
        let c = r.checks.iter().find(|c| c.id == "tls.ciphers").unwrap();
        assert_eq!(c.verdict, Verdict::Error);
        assert!(
            c.summary.contains("RC4: TLS_RSA_WITH_RC4_128_SHA"),
            "{}",
            c.summary
        );
        assert!(
            c.summary
                .contains("3DES (Sweet32): TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
            "{}",
            c.summary
        );
        // Chrome still has a suite: not a mismatch.
        assert_eq!(c.browser_error, None);

        // ECDHE with CBC: a warning.
        let r = judged(&scan(&[(Version::Tls12, &[0xc02f, 0xc013])]));
        assert_eq!(verdict(&r, "tls.ciphers"), Verdict::Warning);
    }

    #[test]
    fn client_order_is_a_warning_only_with_weak_suites() {
        let mut s = scan(&[
            (Version::Tls12, &[0xc02f, 0x002f]),
            (Version::Tls13, MODERN13),
        ]);
        s.preference.insert(Version::Tls12, false);
        s.preference.insert(Version::Tls13, false);
        let r = judged(&s);
        assert_eq!(verdict(&r, "tls.preference"), Verdict::Warning);
        assert_eq!(r.facts["server_preference"], false);

        let mut s = scan(&[(Version::Tls12, MODERN12), (Version::Tls13, MODERN13)]);
        s.preference.insert(Version::Tls12, false);
        assert_eq!(verdict(&judged(&s), "tls.preference"), Verdict::Ok);
    }

    #[test]
    fn unanswered_questions_are_not_taken_for_refusals() {
        let mut s = scan(&[(Version::Tls12, MODERN12), (Version::Tls13, MODERN13)]);
        s.answers.insert(Version::Tls10, Answer::TimedOut);
        let r = judged(&s);
        let c = r.checks.iter().find(|c| c.id == "tls.versions").unwrap();
        assert_eq!(c.verdict, Verdict::Warning);
        assert!(
            c.summary.contains("not tested (no answer): TLSv1.0"),
            "{}",
            c.summary
        );
    }
}
