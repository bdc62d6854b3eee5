//! The resolver every lookup of a probe goes through (the target's A/AAAA, redirect hops, the
//! ACME readiness checks): the system's settings (`/etc/resolv.conf` and the hosts file), or
//! the nameservers given with `--dns`. Built once per probe, so that all lookups agree.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::Options;

/// The probe's resolver, or why there is none (the system's settings could not be read).
pub(super) type Resolver = Result<hickory_resolver::TokioResolver, String>;

/// Parses one `--dns` value: `ADDR` or `ADDR:PORT` (`[v6]:PORT` for IPv6), port 53 by default.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            "not a nameserver address: give an IP address, optionally with a port (192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:5353)".to_owned()
        })
}

/// The resolver for `opts`: `opts.dns` (UDP, then TCP for long answers; no hosts file, so the
/// answers are the nameservers'), else the system's settings. IPv4 and IPv6 are both asked for.
pub(super) fn resolver(opts: &Options) -> Resolver {
    let mut builder = if opts.dns.is_empty() {
        hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's DNS settings: {e}"))?
    } else {
        let servers = opts
            .dns
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        let mut b = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let o = builder.options_mut();
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    o.timeout = opts.timeout;
    builder
        .build()
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

/// Where to look names up, for messages: the `--dns` servers or the system's resolver.
pub(super) fn source(opts: &Options) -> String {
    if opts.dns.is_empty() {
        "the system's resolver (/etc/resolv.conf)".to_owned()
    } else {
        let list: Vec<String> = opts.dns.iter().map(|a| a.to_string()).collect();
        format!("--dns {}", list.join(","))
    }
}

/// The first address of `host` (a redirect hop), within the probe's timeout.
pub(super) async fn first_address(
    resolver: &Resolver,
    host: &str,
    port: u16,
    opts: &Options,
) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let resolver = resolver.as_ref().map_err(|e| e.clone())?;
    let lookup = tokio::time::timeout(opts.timeout, resolver.lookup_ip(host))
        .await
        .map_err(|_| format!("no DNS answer for {host} within {:?}", opts.timeout))?
        .map_err(|e| format!("{host} does not resolve: {e}"))?;
    lookup
        .iter()
        .next()
        .map(|ip| SocketAddr::new(ip, port))
        .ok_or_else(|| format!("{host} does not resolve"))
}

#[cfg(test)]
mod tests {
    use super::parse_nameserver;

    #[test]
    fn nameservers_parse_with_and_without_a_port() {
        assert_eq!(
            parse_nameserver("192.0.2.53").unwrap(),
            "192.0.2.53:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("::1").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[2001:db8::53]").unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        let e = parse_nameserver("ns1.example.com").unwrap_err();
        assert!(e.starts_with("not a nameserver address"), "{e}");
        assert!(parse_nameserver("127.0.0.1:99999").is_err());
    }
}
