//! `portcullis probe`: diagnose an HTTPS endpoint the way an admin troubleshoots one — name
//! resolution, the TCP connection, the TLS handshake, the certificate chain — each check with
//! the browser error a user would see, the likely cause and the fix.
//!
//! The steps run in the order a browser takes them and stop where a browser would: nothing
//! after a refused connection, no certificate checks without a handshake.

mod content;
pub mod dns;
mod early_data;
mod extra;
pub mod grade;
mod http;
pub mod readiness;
pub mod report;
mod revocation;
mod scan;
pub mod sites;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use report::{Check, Report};

/// What a probe prints: a report, or one per site of a config.
pub trait Outcome {
    /// For people; `colour` on a terminal.
    fn render(&self, colour: bool) -> String;
    /// Every check and fact.
    fn json(&self) -> serde_json::Result<String>;
    /// 0: good, 1: warnings, 2: errors, 3: could not connect.
    fn exit_code(&self) -> i32;
}

impl Outcome for Report {
    fn render(&self, colour: bool) -> String {
        Report::render(self, colour)
    }
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
    fn exit_code(&self) -> i32 {
        Report::exit_code(self)
    }
}

impl Outcome for sites::ConfigReport {
    fn render(&self, colour: bool) -> String {
        sites::ConfigReport::render(self, colour)
    }
    fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
    fn exit_code(&self) -> i32 {
        sites::ConfigReport::exit_code(self)
    }
}

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// `https://host[:port][/path]`, `host` or `host:port`.
    pub target: String,
    /// Connect to this address instead of resolving the name.
    pub ip: Option<IpAddr>,
    /// The SNI name to send (default: the host, unless it is an IP address).
    pub sni: Option<String>,
    /// Trust these roots (PEM) instead of the built-in public ones (Mozilla's, as browsers).
    pub ca: Option<PathBuf>,
    /// Per step.
    pub timeout: Duration,
    /// The plain-HTTP port whose redirects are checked (default: 80 when the target is on
    /// 443; none otherwise).
    pub http_port: Option<u16>,
    /// Show what runs on a progress line (stderr, a terminal).
    pub progress: bool,
    /// Nameservers for every lookup (`--dns`) instead of the system's resolver settings.
    pub dns: Vec<SocketAddr>,
    /// The ACME directory whose CA the CAA records must allow (default: portcullis's
    /// default, Let's Encrypt production).
    pub acme_directory: Option<String>,
}

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Target {
    /// `https://host[:port][/path]`, `host`, `host:port`, `[v6]:port`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let rest = match s.split_once("://") {
            Some(("https", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{s}: only https:// targets can be probed (not {scheme}://)"
                ))
            }
            None => s,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let uri: ::http::uri::Authority = authority
            .parse()
            .map_err(|e| format!("{s}: not a host name or host:port ({e})"))?;
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s}: no host name"));
        }
        Ok(Target {
            host: host.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(443),
            path: path.to_owned(),
        })
    }
}

/// Probes one endpoint.
pub async fn run(opts: &Options) -> Result<Report, String> {
    let started = Instant::now();
    let target = Target::parse(&opts.target)?;
    let mut report = Report::new(format!("{}:{}", target.host, target.port));
    steps(&target, opts, &mut report).await;
    if opts.progress {
        // Clears the progress line.
        eprint!("\r\x1b[2K");
    }
    report.finish(started.elapsed());
    Ok(report)
}

/// Every step, in the order a browser takes them; returns where a browser would stop.
async fn steps(target: &Target, opts: &Options, report: &mut Report) {
    let step = |what: &str| {
        if opts.progress {
            eprint!("\r\x1b[2K{}:{} … {what}", target.host, target.port);
        }
    };
    step("resolving the name");
    let resolver = dns::resolver(opts);
    let Some(addrs) = resolve(target, opts, &resolver, report).await else {
        report.unreachable = true;
        return;
    };
    report.addresses = addrs.iter().map(|a| a.to_string()).collect();
    step("connecting");
    let Some((tcp, addr)) = connect(&addrs, opts, report).await else {
        report.unreachable = true;
        return;
    };
    report.fact("address", addr.to_string());
    let sni = opts.sni.clone().or_else(|| {
        target
            .host
            .parse::<IpAddr>()
            .is_err()
            .then(|| target.host.clone())
    });
    step("TLS handshake");
    let session = tls::probe(tcp, target, sni.as_deref(), opts, report).await;
    let mut scan_at = report.checks.len();
    if let Some(session) = session {
        step("revocation");
        revocation::checks(&session.chain, &session.ocsp, opts, report).await;
        scan_at = report.checks.len();
        step("the page");
        let alt_svc = http_checks(session.established, target, opts, &resolver, report).await;
        // After the page was read: the first connection's session ticket has arrived.
        step("session resumption");
        extra::resumption(session.config, addr, session.name, opts, report).await;
        step("0-RTT");
        early_data::check(addr, sni.as_deref(), target, opts, report).await;
        let http_port = opts.http_port.or((target.port == 443).then_some(80));
        if let Some(port) = http_port {
            step("plain HTTP");
            port80(SocketAddr::new(addr.ip(), port), target, opts, report).await;
        }
        if let Some(port) = alt_svc.as_deref().and_then(extra::h3_port) {
            step("HTTP/3");
            let name = sni.as_deref().unwrap_or(target.host.as_str());
            extra::h3_reachable(SocketAddr::new(addr.ip(), port), name, opts, report).await;
        }
    }
    // Whether or not rustls could shake hands (the scan is what explains a failure); last, when
    // the other connections are closed (a server may serve one at a time), its checks listed
    // after the handshake's.
    step("protocol versions, cipher suites and groups");
    scan::run(addr, sni.as_deref(), opts, report, scan_at).await;
    step("readiness for automatic certificates");
    readiness::acme(target, addr, opts, &resolver, report).await;
}

/// The plain-HTTP port: it should redirect to the same URL over HTTPS.
async fn port80(addr: SocketAddr, target: &Target, opts: &Options, report: &mut Report) {
    let tcp = match tokio::time::timeout(opts.timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(_)) | Err(_) => {
            report.push(
                Check::warning("http80", format!("nothing answers plain HTTP on {addr}"))
                    .cause("users who type the name without https:// (and whose browser has no HSTS for it yet) get an error instead of the site")
                    .fix(format!("listen on port {} and redirect to https:// (portcullis does by default)", addr.port())),
            );
            return;
        }
    };
    let host = match addr.port() {
        80 => authority(&target.host, 443),
        p => format!("{}:{p}", authority(&target.host, 443)),
    };
    let answer = match http::get(tcp, false, &host, &target.path, opts).await {
        Ok(a) => a,
        Err(e) => {
            report.push(Check::warning(
                "http80",
                format!("plain HTTP on {addr}: {e}"),
            ));
            return;
        }
    };
    let want = format!(
        "https://{}{}",
        authority(&target.host, target.port),
        target.path
    );
    let location = answer
        .headers
        .get(::http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    report.fact("http80_status", answer.status.as_u16());
    if !answer.status.is_redirection() {
        report.push(
            Check::warning(
                "http80",
                format!(
                    "plain HTTP on {addr} answers {} instead of redirecting to HTTPS",
                    answer.status
                ),
            )
            .cause("the site is served unencrypted on port 80 too")
            .fix("redirect every plain-HTTP request to https:// (301/308)"),
        );
    } else if location.starts_with("http://") {
        report.push(
            Check::error(
                "http80",
                format!("plain HTTP on {addr} redirects to plain HTTP: {location}"),
            )
            .fix("redirect to the https:// URL"),
        );
    } else if location != want {
        report.push(
            Check::warning("http80", format!("plain HTTP on {addr} redirects to {location}, not to the same page ({want})"))
                .cause("the redirect drops the path or query (or goes elsewhere): links to inner pages land on the wrong page")
                .fix("redirect to https://HOST plus the request's path and query"),
        );
    } else {
        report.push(Check::ok(
            "http80",
            format!("plain HTTP on {addr}: {} to {location}", answer.status),
        ));
    }
}

/// `host` or `host:port` (443 left out), as a Host header and in URLs.
fn authority(host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Where a `Location` leads from `base` (absolute, or relative to its origin).
fn next_url(base: &Target, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin = format!("https://{}", authority(&base.host, base.port));
    if location.starts_with('/') {
        format!("{origin}{location}")
    } else {
        let dir = base.path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{origin}{dir}/{location}")
    }
}

/// The page's answer (HSTS, headers), then its redirects: loops and HTTPS → HTTP downgrades.
/// Returns the first answer's `Alt-Svc`.
async fn http_checks(
    first: tls::Established,
    target: &Target,
    opts: &Options,
    resolver: &dns::Resolver,
    report: &mut Report,
) -> Option<String> {
    let (stream, h2) = first;
    let mut answer = match http::get(
        stream,
        h2,
        &authority(&target.host, target.port),
        &target.path,
        opts,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            report.push(
                Check::error("http", format!("GET {}: {e}", target.path))
                    .browser("ERR_EMPTY_RESPONSE"),
            );
            return None;
        }
    };
    report.push(Check::ok(
        "http",
        format!("GET {}: {}", target.path, answer.status),
    ));
    let alt_svc = answer
        .headers
        .get(::http::header::ALT_SVC)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    http::answer_checks(&answer, report);
    let mut here = target.clone();
    let mut chain = vec![format!(
        "https://{}{}",
        authority(&here.host, here.port),
        here.path
    )];
    while answer.status.is_redirection() {
        let Some(location) = answer
            .headers
            .get(::http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
        else {
            break;
        };
        let next = next_url(&here, location);
        if next.starts_with("http://") {
            chain.push(next.clone());
            report.push(
                Check::error("http.redirects", format!("redirect from HTTPS to plain HTTP: {}", chain.join(" → ")))
                    .cause("the redirect target is written with http://, so the visit leaves HTTPS (and HSTS browsers refuse it)")
                    .fix("redirect to the https:// URL"),
            );
            return alt_svc;
        }
        if chain.contains(&next) || chain.len() > http::MAX_REDIRECTS {
            chain.push(next);
            report.push(
                Check::error("http.redirects", format!("redirect loop: {}", chain.join(" → ")))
                    .browser("ERR_TOO_MANY_REDIRECTS")
                    .cause("the redirects lead back to a page already visited (often: a proxy in front sends http:// to the server, which redirects to https:// again)")
                    .fix("make the last redirect lead to a page that answers; behind a proxy, trust its X-Forwarded-Proto"),
            );
            return alt_svc;
        }
        chain.push(next.clone());
        let Ok(t) = Target::parse(&next) else { break };
        let addr = match (opts.ip, t.host == target.host) {
            (Some(ip), true) => Ok(SocketAddr::new(ip, t.port)),
            _ => dns::first_address(resolver, &t.host, t.port, opts).await,
        };
        let hop = async {
            let addr = addr?;
            let tcp = tokio::time::timeout(opts.timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("{addr}: no answer"))?
                .map_err(|e| format!("{addr}: {e}"))?;
            let (s, h2) = tls::open(tcp, &t.host, opts).await?;
            http::get(s, h2, &authority(&t.host, t.port), &t.path, opts).await
        };
        match hop.await {
            Ok(a) => answer = a,
            Err(e) => {
                report.push(Check::error(
                    "http.redirects",
                    format!("redirect to {next} fails: {e}"),
                ));
                return alt_svc;
            }
        }
        here = t;
    }
    if chain.len() > 1 {
        report.fact("redirects", chain.clone());
        report.push(Check::ok(
            "http.redirects",
            format!(
                "{} redirect(s), ending with {}: {}",
                chain.len() - 1,
                answer.status,
                chain.join(" → ")
            ),
        ));
    }
    content::mixed_content(&answer, chain.last().map_or("", |u| u.as_str()), report);
    alt_svc
}

/// The addresses to try: `--ip`, an IP literal, or the name's A and AAAA records (with the
/// system's resolver settings and hosts file).
async fn resolve(
    target: &Target,
    opts: &Options,
    resolver: &dns::Resolver,
    report: &mut Report,
) -> Option<Vec<SocketAddr>> {
    if let Some(ip) = opts.ip {
        report.push(Check::ok("dns", format!("connecting to {ip} (--ip)")));
        return Some(vec![SocketAddr::new(ip, target.port)]);
    }
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Some(vec![SocketAddr::new(ip, target.port)]);
    }
    let resolver = match resolver {
        Ok(r) => r,
        Err(e) => {
            report.push(
                Check::error("dns", e.clone())
                    .fix("check /etc/resolv.conf, give nameservers with --dns, or give the address with --ip"),
            );
            return None;
        }
    };
    let lookup = tokio::time::timeout(opts.timeout, resolver.lookup_ip(target.host.as_str())).await;
    let ips: Vec<IpAddr> = match lookup {
        Ok(Ok(l)) => l.iter().collect(),
        Ok(Err(e)) => {
            report.push(
                Check::error("dns", format!("{} does not resolve: {e}", target.host))
                    .browser("DNS_PROBE_FINISHED_NXDOMAIN")
                    .cause("no A or AAAA record for the name (a typo, or the record is missing or not propagated yet)")
                    .fix(format!("add an A (IPv4) and/or AAAA (IPv6) record for {} at your DNS provider", target.host)),
            );
            return None;
        }
        Err(_) => {
            report.push(
                Check::error(
                    "dns",
                    format!(
                        "no DNS answer for {} within {:?}",
                        target.host, opts.timeout
                    ),
                )
                .browser("DNS_PROBE_FINISHED_NO_INTERNET")
                .fix(format!(
                    "check the resolver ({}), or give the address with --ip",
                    dns::source(opts)
                )),
            );
            return None;
        }
    };
    let v4 = ips.iter().filter(|i| i.is_ipv4()).count();
    let v6 = ips.len() - v4;
    report.fact("dns_ipv4", v4);
    report.fact("dns_ipv6", v6);
    report.push(Check::ok(
        "dns",
        format!(
            "{} resolves to {} ({v4} IPv4, {v6} IPv6)",
            target.host,
            ips.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    Some(
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, target.port))
            .collect(),
    )
}

/// Connects to the first address that answers; one check per address tried. Once one
/// answers, the remaining addresses of the other family (IPv6 when it was IPv4, and the other
/// way round) are tried too: clients that prefer that family meet them first.
async fn connect(
    addrs: &[SocketAddr],
    opts: &Options,
    report: &mut Report,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let mut failed: Vec<Check> = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        let t = Instant::now();
        match tcp(addr, opts).await {
            Ok(stream) => {
                // Addresses that failed before this one cost browsers time (they fall back),
                // not the connection: warnings.
                for mut c in failed {
                    c.verdict = report::Verdict::Warning;
                    c.summary
                        .push_str(" (browsers fall back to the next address, after a delay)");
                    report.push(c);
                }
                report.push(Check::ok(
                    "tcp",
                    format!("TCP {addr}: open ({} ms)", t.elapsed().as_millis()),
                ));
                let others: Vec<SocketAddr> = addrs[i + 1..]
                    .iter()
                    .filter(|a| a.is_ipv4() != addr.is_ipv4())
                    .copied()
                    .collect();
                let mut tries = tokio::task::JoinSet::new();
                for &other in &others {
                    let opts = opts.clone();
                    tries.spawn(async move { (other, tcp(other, &opts).await) });
                }
                let mut answers = tries.join_all().await;
                answers.sort_by_key(|(a, _)| others.iter().position(|o| o == a));
                for (other, answer) in answers {
                    let family = if other.is_ipv4() { "IPv4" } else { "IPv6" };
                    match answer {
                        Ok(_) => report.push(Check::ok(
                            "tcp",
                            format!("TCP {other}: open too ({family})"),
                        )),
                        Err(mut c) => {
                            c.verdict = report::Verdict::Warning;
                            c.summary.push_str(&format!(
                                " ({family} clients that try it first wait, then fall back; some never do)"
                            ));
                            report.push(c);
                        }
                    }
                }
                return Some((stream, addr));
            }
            Err(c) => failed.push(c),
        }
    }
    for c in failed {
        report.push(c);
    }
    None
}

/// One TCP connection, or the error check that explains why there is none.
async fn tcp(addr: SocketAddr, opts: &Options) -> Result<tokio::net::TcpStream, Check> {
    match tokio::time::timeout(opts.timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(
            Check::error("tcp", format!("TCP {addr}: connection refused"))
                .browser("ERR_CONNECTION_REFUSED")
                .cause("nothing listening there: the server is not running, or listens on another port or address")
                .fix(format!("start the server, or check that it listens on port {} of {} (ss -ltnp 'sport = :{}')", addr.port(), addr.ip(), addr.port())),
        ),
        Ok(Err(e)) => Err(
            Check::error("tcp", format!("TCP {addr}: {e}"))
                .browser("ERR_CONNECTION_FAILED")
                .fix("check the route to the address (ip route get) and the server's network settings"),
        ),
        Err(_) => Err(
            Check::error("tcp", format!("TCP {addr}: no answer within {:?} (filtered)", opts.timeout))
                .browser("ERR_CONNECTION_TIMED_OUT")
                .cause("a firewall or security group drops the packets (nothing answers, not even a refusal), or the server's accept queue is full")
                .fix(format!("open TCP port {} in the firewall / security group, and check the server is not overloaded", addr.port())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn targets_parse_in_every_written_form() {
        let t = |s: &str| Target::parse(s).unwrap();
        assert_eq!(
            t("https://Example.com:8443/a?b"),
            Target {
                host: "example.com".into(),
                port: 8443,
                path: "/a?b".into()
            }
        );
        assert_eq!(t("example.com").port, 443);
        assert_eq!(t("example.com:444").port, 444);
        assert_eq!(t("[::1]:8443").host, "::1");
        assert_eq!(t("127.0.0.1").host, "127.0.0.1");
        assert!(Target::parse("http://example.com").is_err());
        assert!(Target::parse("https://").is_err());
        assert!(Target::parse("exa mple.com").is_err());
    }
}
