//! IP allow/deny lists.
//!
//! Semantics (deny, then allow): a client whose address is in any `deny` network is refused;
//! otherwise, when `allow` lists networks, the client must be in one of them; with an empty
//! `allow`, everyone not denied passes. The order in which networks are written does not
//! matter. So `allow = ["10.0.0.0/8"], deny = ["10.9.0.0/16"]` admits 10.x except 10.9.x.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports for an
//! IPv4 client) are compared as the IPv4 address they carry, both in the lists and for clients.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// Compiled allow/deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpRules {
    /// Whether `ip` may pass.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// Parses a network as written in the config: `10.0.0.0/8`, `2001:db8::/32`, or a single
/// address (a /32 or /128). Host bits must be zero (`10.0.0.1/8` is refused: it is most
/// likely a typo for a single address or a different network). IPv4-mapped IPv6 networks
/// become IPv4 networks.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = if s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not a network (address/prefix length)"))?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has bits set after the prefix length (the network is {})",
                net.trunc()
            ));
        }
        net
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        IpNet::from(ip)
    };
    Ok(canonical(net))
}

/// `::ffff:a.b.c.d/N` (N ≥ 96) as `a.b.c.d/(N-96)`.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        IpRules {
            allow: allow.iter().map(|s| parse_net(s).unwrap()).collect(),
            deny: deny.iter().map(|s| parse_net(s).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_then_allow_decides() {
        let r = rules(&["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"]);
        assert!(r.admits(ip("10.1.2.3")));
        assert!(!r.admits(ip("10.9.2.3")));
        assert!(!r.admits(ip("192.0.2.1")));
        assert!(r.admits(ip("2001:db8::1")));
        assert!(!r.admits(ip("2001:db9::1")));
    }

    #[test]
    fn empty_allow_admits_everyone_not_denied() {
        let r = rules(&[], &["192.0.2.0/24", "::1"]);
        assert!(r.admits(ip("198.51.100.1")));
        assert!(!r.admits(ip("192.0.2.7")));
        assert!(!r.admits(ip("::1")));
        assert!(r.admits(ip("::2")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_networks() {
        let r = rules(&["127.0.0.0/8"], &[]);
        assert!(r.admits(ip("::ffff:127.0.0.1")));
        assert!(!r.admits(ip("::ffff:10.0.0.1")));
        // A mapped network in the config is an IPv4 network.
        let r = rules(&["::ffff:10.0.0.0/104"], &[]);
        assert_eq!(r.allow, vec![parse_net("10.0.0.0/8").unwrap()]);
        assert!(r.admits(ip("10.1.1.1")));
        assert!(r.admits(ip("::ffff:10.1.1.1")));
    }

    #[test]
    fn bad_networks_are_refused_with_the_reason() {
        assert!(parse_net("10.0.0.0/33")
            .unwrap_err()
            .contains("not a network"));
        assert!(parse_net("10.0.0.300").unwrap_err().contains("not an IP"));
        assert!(parse_net("10.0.0.1/8")
            .unwrap_err()
            .contains("the network is 10.0.0.0/8"));
        assert_eq!(
            parse_net("::1").unwrap(),
            "::1/128".parse::<IpNet>().unwrap()
        );
    }
}
