//! Readiness for automatic certificates (ACME): could the CA portcullis is configured with
//! validate and issue a certificate for the probed name?
//!
//! - `acme.dns`: HTTP-01 and TLS-ALPN-01 validation connects to the addresses the name's A/AAAA
//!   records give, so with `--ip` (a server probed before or after a DNS switch) they must
//!   include the probed address.
//! - `acme.caa`: the CAA records (RFC 8659) that apply to the name must let the CA issue.
//!
//! Both are advisory: they say nothing about whether the site works today. Names that no
//! public CA issues for (IP addresses, special-use names such as `*.test`) are not checked.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::rdata::caa::{read_issuer, KeyValue, CAA};
use hickory_resolver::proto::rr::{RData, RecordType};

use super::dns::Resolver;
use super::report::{Check, Report};
use super::{Options, Target};
use crate::config::model::{LETS_ENCRYPT, LETS_ENCRYPT_STAGING};

/// The ACME directory the probe checks against: `--acme-ca`, or portcullis's default
/// (Let's Encrypt's production directory, as `acme.ca` defaults to).
pub fn directory(opts: &Options) -> &str {
    opts.acme_directory.as_deref().unwrap_or(LETS_ENCRYPT)
}

/// Parses `--acme-ca` as `acme.ca` in the config: `production`, `staging` or an https:// URL.
pub fn parse_directory(s: &str) -> Result<String, String> {
    match s {
        "production" => Ok(LETS_ENCRYPT.to_owned()),
        "staging" => Ok(LETS_ENCRYPT_STAGING.to_owned()),
        url if url.starts_with("https://") && url.len() > "https://".len() => Ok(url.to_owned()),
        _ => Err(
            "not an ACME directory: give \"production\", \"staging\" or the CA's https:// directory URL (as acme.ca in the config)".to_owned(),
        ),
    }
}

/// The domain a CA recognises itself by in CAA `issue` records (its "issuer domain name",
/// RFC 8659 §4.2), from its ACME directory's host; `None` for a CA not known here.
pub fn caa_identity(directory: &str) -> Option<&'static str> {
    let rest = directory.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_ascii_lowercase();
    // Directory host's domain → the CA's CAA domain, as each CA documents it. ZeroSSL issues
    // through Sectigo, whose CAA domain it names.
    const CAS: &[(&str, &str)] = &[
        ("letsencrypt.org", "letsencrypt.org"),
        ("zerossl.com", "sectigo.com"),
        ("sectigo.com", "sectigo.com"),
        ("pki.goog", "pki.goog"),
        ("buypass.com", "buypass.com"),
        ("buypass.no", "buypass.com"),
        ("ssl.com", "ssl.com"),
    ];
    CAS.iter()
        .find(|(domain, _)| host == *domain || host.ends_with(&format!(".{domain}")))
        .map(|(_, caa)| *caa)
}

/// Top-level domains reserved for special use (RFC 6761, 6762, 7686, 8375, 9476; ICANN's
/// `internal`): no public CA issues certificates for names under them.
const SPECIAL_USE: &[&str] = &[
    "test",
    "localhost",
    "invalid",
    "example",
    "local",
    "onion",
    "alt",
    "internal",
    "home.arpa",
];

/// Why a public CA would not issue for `host` at all (so readiness is not checked), if so.
fn not_public(host: &str) -> Option<String> {
    if host.parse::<IpAddr>().is_ok() {
        return Some(format!(
            "{host} is an IP address (no A/AAAA or CAA records apply)"
        ));
    }
    let name = host.trim_end_matches('.');
    if !name.contains('.') {
        return Some(format!(
            "{name} is a single-label name, which public CAs do not issue for"
        ));
    }
    SPECIAL_USE
        .iter()
        .find(|tld| name == **tld || name.ends_with(&format!(".{tld}")))
        .map(|tld| {
            format!("{name} is under .{tld}, a special-use name that public CAs do not issue for")
        })
}

/// The `acme.dns` and `acme.caa` checks for the probed name; `addr` is the address probed.
pub(super) async fn acme(
    target: &Target,
    addr: SocketAddr,
    opts: &Options,
    resolver: &Resolver,
    report: &mut Report,
) {
    let directory = directory(opts);
    let ca = caa_identity(directory);
    // A private ACME CA (unknown here) may well issue for internal names: check those too.
    if let Some(why) =
        not_public(&target.host).filter(|_| ca.is_some() || target.host.parse::<IpAddr>().is_ok())
    {
        for id in ["acme.dns", "acme.caa"] {
            report.push(Check::ok(id, not_checked(id, &why)));
        }
        return;
    }
    let resolver = match resolver {
        Ok(r) => r,
        Err(e) => {
            for id in ["acme.dns", "acme.caa"] {
                report.push(Check::warning(id, not_checked(id, e)));
            }
            return;
        }
    };
    let issued = issued_name(&target.host, report);
    let (dns, caa) = tokio::join!(
        dns_check(&target.host, addr.ip(), opts, resolver),
        caa_check(&issued, ca, directory, opts, resolver)
    );
    report.push(dns);
    let (mut check, found, allows) = caa;
    if issued != target.host {
        check.summary.push_str(&format!(
            " (the certificate served covers {} by the wildcard {issued}, whose renewal needs DNS-01)",
            target.host
        ));
    }
    report.push(check);
    report.fact(
        "caa",
        found.map_or(
            serde_json::Value::Null,
            |(name, records)| serde_json::json!({ "name": name, "records": records }),
        ),
    );
    report.fact("caa_allows", allows);
}

/// The name a certificate for `host` is issued for: the wildcard `*.parent` when the
/// certificate the server sent (fact `cert_names`) covers `host` only by that wildcard, so
/// that CAA is judged as for its renewal (`issuewild`); else `host`.
fn issued_name(host: &str, report: &Report) -> String {
    let names: Vec<&str> = report
        .facts
        .get("cert_names")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    if names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        return host.to_owned();
    }
    let Some((_, parent)) = host.split_once('.') else {
        return host.to_owned();
    };
    names
        .iter()
        .find(|n| {
            n.strip_prefix("*.")
                .is_some_and(|p| p.eq_ignore_ascii_case(parent))
        })
        .map_or_else(|| host.to_owned(), |n| n.to_ascii_lowercase())
}

/// The summary of a readiness check that was not made.
fn not_checked(id: &str, why: &str) -> String {
    let what = if id == "acme.caa" {
        "CAA (RFC 8659) for automatic certificates"
    } else {
        "A/AAAA for automatic certificates"
    };
    format!("{what}: not checked: {why}")
}

/// `acme.dns`: with `--ip`, the name's A/AAAA records must include the probed address.
async fn dns_check(
    host: &str,
    probed: IpAddr,
    opts: &Options,
    resolver: &hickory_resolver::TokioResolver,
) -> Check {
    if opts.ip.is_none() {
        return Check::ok(
            "acme.dns",
            format!("{host} resolves to the probed address {probed}: HTTP-01/TLS-ALPN-01 validation reaches this server"),
        );
    }
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let (a, aaaa) = tokio::join!(
        tokio::time::timeout(opts.timeout, resolver.ipv4_lookup(fqdn.as_str())),
        tokio::time::timeout(opts.timeout, resolver.ipv6_lookup(fqdn.as_str()))
    );
    let mut found: Vec<IpAddr> = Vec::new();
    for (answer, rtype) in [(a, "A"), (aaaa, "AAAA")] {
        match answer {
            Ok(Ok(lookup)) => found.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Ok(Err(e)) if e.is_no_records_found() => {}
            Ok(Err(e)) => {
                return Check::warning(
                    "acme.dns",
                    format!("automatic certificates: the {rtype} lookup for {host} failed ({e}): not checked"),
                )
                .fix(format!("check the DNS at {}", super::dns::source(opts)))
            }
            Err(_) => {
                return Check::warning(
                    "acme.dns",
                    format!("automatic certificates: no answer to the {rtype} lookup for {host} within {:?}: not checked", opts.timeout),
                )
                .fix(format!("check the DNS at {}", super::dns::source(opts)))
            }
        }
    }
    let record = |ip: IpAddr| match ip {
        IpAddr::V4(_) => format!("{host}. A {ip}"),
        IpAddr::V6(_) => format!("{host}. AAAA {ip}"),
    };
    if found.contains(&probed) {
        let others: Vec<String> = found
            .iter()
            .filter(|ip| **ip != probed)
            .map(|ip| ip.to_string())
            .collect();
        let also = if others.is_empty() {
            String::new()
        } else {
            format!(
                " (and {}: the CA may validate through any of them)",
                others.join(", ")
            )
        };
        return Check::ok(
            "acme.dns",
            format!("{host}'s A/AAAA records point at the probed address {probed}{also}"),
        );
    }
    let summary = if found.is_empty() {
        format!("{host} has no A/AAAA record: HTTP-01/TLS-ALPN-01 validation cannot reach this server ({probed})")
    } else {
        let list: Vec<String> = found.iter().map(|ip| ip.to_string()).collect();
        format!(
            "the name points elsewhere: HTTP-01/TLS-ALPN-01 validation would reach another machine ({host} resolves to {}, not to the probed {probed})",
            list.join(", ")
        )
    };
    let stale: Vec<String> = found.iter().map(|ip| record(*ip)).collect();
    let fix = if stale.is_empty() {
        format!("add the DNS record: {}", record(probed))
    } else {
        format!(
            "set the DNS record: {} (replacing {})",
            record(probed),
            stale.join(", ")
        )
    };
    Check::warning("acme.dns", summary)
        .cause("an ACME CA validates HTTP-01 and TLS-ALPN-01 challenges at the addresses the name resolves to, so this server cannot get or renew its certificate automatically until the name points at it")
        .fix(fix)
}

/// `acme.caa`'s check, the relevant RRset found (owner name, records in presentation form)
/// and whether the CA may issue (`None`: not decided).
type CaaOutcome = (Check, Option<(String, Vec<String>)>, Option<bool>);

/// `acme.caa`: the relevant CAA RRset (RFC 8659 §3) and whether it lets `ca` issue for `host`.
async fn caa_check(
    host: &str,
    ca: Option<&str>,
    directory: &str,
    opts: &Options,
    resolver: &hickory_resolver::TokioResolver,
) -> CaaOutcome {
    let relevant = match relevant_rrset(host, opts, resolver).await {
        Ok(r) => r,
        Err(e) => {
            return (
                Check::warning("acme.caa", format!("CAA for {host}: {e}"))
                    .cause("CAs must not issue while a CAA lookup fails (Let's Encrypt refuses on SERVFAIL or timeouts)")
                    .fix(format!("make the name's nameservers answer CAA queries (an empty answer is fine); checked through {}", super::dns::source(opts))),
                None,
                None,
            )
        }
    };
    let Some((owner, records)) = relevant else {
        return (
            Check::ok(
                "acme.caa",
                format!("no CAA records for {host} or its parent domains: any CA may issue"),
            ),
            None,
            Some(true),
        );
    };
    let shown: Vec<String> = records.iter().map(present).collect();
    let found = Some((owner.clone(), shown.clone()));
    let listed = shown.join(", ");
    let Some(ca) = ca else {
        return (
            Check::ok(
                "acme.caa",
                format!("CAA at {owner}: {listed}; the CAA domain of the configured CA ({directory}) is not known here, so whether it may issue is not checked"),
            )
            .fix("compare the records with the CAA domain your CA documents"),
            found,
            None,
        );
    };
    let wildcard = host.starts_with("*.");
    match decide(&records, ca, wildcard) {
        Decision::Allows { params } => {
            let mut summary = if records.iter().all(|r| !restricts(r, wildcard)) {
                format!("CAA at {owner} ({listed}) does not restrict issuance: {ca} may issue for {host}")
            } else {
                format!("CAA at {owner} allows {ca} to issue for {host} ({listed})")
            };
            for p in params {
                summary.push_str(&format!("; {p}"));
            }
            (Check::ok("acme.caa", summary), found, Some(true))
        }
        Decision::Forbids { why, fix } => {
            let fix = fix.unwrap_or_else(|| {
                let tag = if wildcard && records.iter().any(|r| tag_is(r, "issuewild")) {
                    "issuewild"
                } else {
                    "issue"
                };
                format!(
                    "add the DNS record: {}. CAA 0 {tag} \"{ca}\"",
                    owner.trim_end_matches('.')
                )
            });
            (
                Check::warning(
                    "acme.caa",
                    format!("CAA at {owner} does not allow {ca} (the configured CA) to issue for {host}: {why}"),
                )
                .cause("CAA records (RFC 8659) name the CAs that may issue for a domain; the CA will refuse to issue or renew the certificate")
                .fix(fix),
                found,
                Some(false),
            )
        }
    }
}

/// The relevant CAA RRset for `host` (RFC 8659 §3): the CAA records of the name, else of its
/// parent, and so on up to the top-level domain; the first non-empty set counts. The lookups
/// follow CNAMEs as the resolver does; the owner is the name the records were found at.
/// All levels are asked at once (a CA asks in turn; the answer is the same).
async fn relevant_rrset(
    host: &str,
    opts: &Options,
    resolver: &hickory_resolver::TokioResolver,
) -> Result<Option<(String, Vec<CAA>)>, String> {
    // A wildcard's records are those of its base domain.
    let name = host.trim_start_matches("*.").trim_end_matches('.');
    let labels: Vec<&str> = name.split('.').collect();
    let levels: Vec<String> = (0..labels.len())
        .map(|i| format!("{}.", labels[i..].join(".")))
        .collect();
    let answers = futures_util::future::join_all(levels.iter().map(|level| {
        tokio::time::timeout(
            opts.timeout,
            resolver.lookup(level.as_str(), RecordType::CAA),
        )
    }))
    .await;
    for (level, answer) in levels.iter().zip(answers) {
        let level = level.trim_end_matches('.');
        let lookup = match answer {
            Ok(Ok(l)) => l,
            Ok(Err(e)) if e.is_no_records_found() => continue,
            Ok(Err(e)) => return Err(format!("the CAA lookup for {level} failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "no answer to the CAA lookup for {level} within {:?}",
                    opts.timeout
                ))
            }
        };
        let mut owner = level.to_owned();
        let records: Vec<CAA> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::CAA(caa) => {
                    owner = r.name.to_ascii().trim_end_matches('.').to_owned();
                    Some(caa.clone())
                }
                _ => None,
            })
            .collect();
        if !records.is_empty() {
            return Ok(Some((owner, records)));
        }
    }
    Ok(None)
}

/// A CAA record as written in a zone file (`0 issue "letsencrypt.org"`).
fn present(r: &CAA) -> String {
    let value = String::from_utf8_lossy(&r.value)
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("{} {} \"{value}\"", r.flags(), r.tag)
}

fn tag_is(r: &CAA, tag: &str) -> bool {
    r.tag.eq_ignore_ascii_case(tag)
}

/// Property tags a CA understands (RFC 8659 §4, RFC 9495 `issuemail`, the BIMI group's
/// `issuevmc`, the CA/Browser Forum's contact tags); an unknown one flagged critical forbids
/// issuance (RFC 8659 §4.1).
const KNOWN_TAGS: &[&str] = &[
    "issue",
    "issuewild",
    "iodef",
    "issuemail",
    "issuevmc",
    "contactemail",
    "contactphone",
];

/// Whether `r` is a property that restricts who may issue for the name (wildcard or not).
fn restricts(r: &CAA, wildcard: bool) -> bool {
    tag_is(r, "issue") || (wildcard && tag_is(r, "issuewild"))
}

/// What the relevant RRset says about a CA.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// May issue; the conditions attached (RFC 8657 `accounturi`, `validationmethods`…).
    Allows { params: Vec<String> },
    /// May not: why, and the fix when it is not "add an issue record".
    Forbids { why: String, fix: Option<String> },
}

/// RFC 8659 §4.2–4.3 for the CA whose issuer domain name is `ca`: `issuewild` properties
/// govern wildcard names when there are any (else `issue` does), an empty issuer (`";"`)
/// authorizes nobody, and an unknown critical property forbids issuance outright.
fn decide(records: &[CAA], ca: &str, wildcard: bool) -> Decision {
    if let Some(r) = records
        .iter()
        .find(|r| r.issuer_critical && !KNOWN_TAGS.iter().any(|t| tag_is(r, t)))
    {
        return Decision::Forbids {
            why: format!(
                "the record {} has the critical flag on a property ({}) CAs do not know, which forbids issuance",
                present(r),
                r.tag
            ),
            fix: Some(format!(
                "remove the record {} or clear its critical flag (flags 0)",
                present(r)
            )),
        };
    }
    let wild: Vec<&CAA> = records.iter().filter(|r| tag_is(r, "issuewild")).collect();
    let governing: Vec<&CAA> = if wildcard && !wild.is_empty() {
        wild
    } else {
        records.iter().filter(|r| tag_is(r, "issue")).collect()
    };
    if governing.is_empty() {
        // Only iodef or other properties: no restriction on issuance (RFC 8659 §3).
        return Decision::Allows { params: Vec::new() };
    }
    let mut named = Vec::new();
    for r in &governing {
        match issuer(r) {
            Ok((Some(name), params)) if name.eq_ignore_ascii_case(ca) => {
                let params = params
                    .into_iter()
                    .map(|kv| (kv.key().to_ascii_lowercase(), kv.value().to_owned()))
                    .map(|(k, v)| match k.as_str() {
                        "accounturi" => format!("only for the ACME account {v} (accounturi, RFC 8657)"),
                        "validationmethods" => format!(
                            "only with the validation methods {v} (validationmethods, RFC 8657; portcullis uses tls-alpn-01 and http-01, dns-01 with acme.dns_hook)"
                        ),
                        _ => format!("with the parameter {k}={v}"),
                    })
                    .collect();
                return Decision::Allows { params };
            }
            Ok((Some(name), _)) => named.push(name),
            Ok((None, _)) => named.push("no CA (\";\")".to_owned()),
            Err(e) => named.push(format!("nothing (unreadable value: {e})")),
        }
    }
    Decision::Forbids {
        why: format!(
            "the {} records there allow {}",
            governing[0].tag.to_ascii_lowercase(),
            named.join(", ")
        ),
        fix: None,
    }
}

/// An `issue`/`issuewild` value: the issuer domain name (none for `";"`) and the parameters.
/// Whitespace around the name is allowed (RFC 8659 §4.2) though hickory's parser wants none.
fn issuer(r: &CAA) -> Result<(Option<String>, Vec<KeyValue>), String> {
    let text = String::from_utf8_lossy(&r.value);
    let (name, rest) = text.split_once(';').unwrap_or((&text, ""));
    let name = name.trim();
    let value = if rest.is_empty() {
        name.to_owned()
    } else {
        format!("{name};{}", rest.trim())
    };
    let (name, params) = read_issuer(value.as_bytes()).map_err(|e| e.to_string())?;
    Ok((
        name.map(|n| n.to_ascii().trim_end_matches('.').to_owned()),
        params,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::Name;

    fn issue(ca: &str) -> CAA {
        CAA::new_issue(false, Some(Name::from_ascii(ca).unwrap()), vec![])
    }

    fn issuewild(ca: &str) -> CAA {
        CAA::new_issuewild(false, Some(Name::from_ascii(ca).unwrap()), vec![])
    }

    fn allows(d: Decision) -> bool {
        matches!(d, Decision::Allows { .. })
    }

    #[test]
    fn directories_map_to_their_cas_caa_domain() {
        assert_eq!(caa_identity(LETS_ENCRYPT), Some("letsencrypt.org"));
        assert_eq!(caa_identity(LETS_ENCRYPT_STAGING), Some("letsencrypt.org"));
        assert_eq!(
            caa_identity("https://acme.zerossl.com/v2/DV90"),
            Some("sectigo.com")
        );
        assert_eq!(
            caa_identity("https://dv.acme-v02.api.pki.goog/directory"),
            Some("pki.goog")
        );
        assert_eq!(
            caa_identity("https://api.buypass.com/acme/directory"),
            Some("buypass.com")
        );
        assert_eq!(
            caa_identity("https://acme.ssl.com/sslcom-dv-ecc"),
            Some("ssl.com")
        );
        assert_eq!(caa_identity("https://127.0.0.1:14000/dir"), None);
        assert_eq!(caa_identity("https://notssl.com/dir"), None);
        assert_eq!(parse_directory("staging").unwrap(), LETS_ENCRYPT_STAGING);
        assert!(parse_directory("letsencrypt").is_err());
    }

    #[test]
    fn issue_names_the_cas_that_may_issue() {
        let le = "letsencrypt.org";
        assert!(allows(decide(&[issue(le)], le, false)));
        assert!(allows(decide(&[issue("pki.goog"), issue(le)], le, false)));
        assert!(!allows(decide(&[issue("pki.goog")], le, false)));
        // issue ";" alone: nobody.
        assert!(!allows(decide(
            &[CAA::new_issue(false, None, vec![])],
            le,
            false
        )));
        // Only iodef: no restriction.
        let iodef = CAA::new_iodef(false, "mailto:a@example.com".parse().unwrap());
        assert!(allows(decide(&[iodef], le, false)));
    }

    #[test]
    fn wildcards_follow_issuewild_and_fall_back_to_issue() {
        let le = "letsencrypt.org";
        let set = [issue(le), issuewild("pki.goog")];
        assert!(allows(decide(&set, le, false)));
        assert!(!allows(decide(&set, le, true)));
        assert!(allows(decide(&set, "pki.goog", true)));
        // No issuewild: issue governs wildcards too.
        assert!(allows(decide(&[issue(le)], le, true)));
        // issuewild does not govern plain names.
        assert!(allows(decide(&[issuewild("pki.goog")], le, false)));
    }

    #[test]
    fn an_unknown_critical_property_forbids_and_known_ones_do_not() {
        let le = "letsencrypt.org";
        let mut unknown = issue(le);
        unknown.tag = "tbs".into();
        unknown.issuer_critical = true;
        let d = decide(&[issue(le), unknown.clone()], le, false);
        assert!(
            matches!(&d, Decision::Forbids { fix: Some(f), .. } if f.contains("128 tbs")),
            "{d:?}"
        );
        unknown.issuer_critical = false;
        assert!(allows(decide(&[issue(le), unknown], le, false)));
        let mut critical_issue = issue(le);
        critical_issue.issuer_critical = true;
        assert!(allows(decide(&[critical_issue], le, false)));
    }

    #[test]
    fn account_and_method_restrictions_are_reported() {
        let le = "letsencrypt.org";
        let r = CAA::new_issue(
            false,
            Some(Name::from_ascii(le).unwrap()),
            vec![
                KeyValue::new(
                    "accounturi",
                    "https://acme-v02.api.letsencrypt.org/acme/acct/1",
                ),
                KeyValue::new("validationmethods", "dns-01"),
            ],
        );
        let Decision::Allows { params } = decide(&[r], le, false) else {
            panic!("not allowed")
        };
        assert!(params[0].contains("acct/1"), "{params:?}");
        assert!(params[1].contains("dns-01"), "{params:?}");
        // Whitespace around the issuer domain name.
        let mut spaced = issue(le);
        spaced.value = b" letsencrypt.org ; validationmethods=http-01".to_vec();
        assert!(allows(decide(&[spaced], le, false)));
    }

    #[test]
    fn reserved_names_and_addresses_are_not_checked() {
        assert!(not_public("alpha.test").is_some());
        assert!(not_public("127.0.0.1").is_some());
        assert!(not_public("::1").is_some());
        assert!(not_public("intranet").is_some());
        assert!(not_public("router.home.arpa").is_some());
        assert!(not_public("shop.example.com").is_none());
    }
}
