//! Which route a ClientHello takes: by SNI name (exact names before `*.wildcards` before
//! routes without names) and, within each of those, routes whose ALPN condition the client
//! meets before routes without one; configuration order breaks ties. The stream's own
//! upstream, which has neither condition, comes last.

use crate::config::stream::StreamRoute;
use crate::tls::names::{normalize, HostPattern};

/// How a route's names match a ClientHello's SNI.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    Exact,
    Wildcard,
    Any,
}

fn tier(route: &StreamRoute, sni: Option<&str>) -> Option<Tier> {
    if route.sni.is_empty() {
        return Some(Tier::Any);
    }
    let name = sni?;
    let mut best = None;
    for p in &route.sni {
        match p {
            HostPattern::Exact(n) if n == name => return Some(Tier::Exact),
            HostPattern::Wildcard(suffix) => {
                let one_label = name
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix);
                if one_label {
                    best = Some(Tier::Wildcard);
                }
            }
            _ => {}
        }
    }
    best
}

/// The index of the route for a ClientHello with `sni` offering `alpn`, if any matches.
pub fn pick(routes: &[StreamRoute], sni: Option<&str>, alpn: &[&[u8]]) -> Option<usize> {
    let sni = sni.map(normalize);
    let sni = sni.as_deref();
    for want in [Tier::Exact, Tier::Wildcard, Tier::Any] {
        let in_tier = |r: &&StreamRoute| tier(r, sni) == Some(want);
        let with_alpn = routes.iter().enumerate().find(|(_, r)| {
            in_tier(r) && !r.alpn.is_empty() && r.alpn.iter().any(|p| alpn.contains(&&p[..]))
        });
        if let Some((i, _)) = with_alpn {
            return Some(i);
        }
        if let Some((i, _)) = routes
            .iter()
            .enumerate()
            .find(|(_, r)| in_tier(r) && r.alpn.is_empty())
        {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stream::{StreamMode, Upstream};

    fn route(sni: &[&str], alpn: &[&str]) -> StreamRoute {
        StreamRoute {
            sni: sni.iter().map(|s| HostPattern::parse(s).unwrap()).collect(),
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
            upstream: Upstream::Addr("127.0.0.1:1".parse().unwrap()),
            mode: StreamMode::Passthrough,
            proxy_protocol: None,
            at: String::new(),
        }
    }

    #[test]
    fn precedence() {
        let routes = vec![
            route(&["*.example.com"], &[]),       // 0
            route(&["a.example.com"], &["imap"]), // 1
            route(&["a.example.com"], &[]),       // 2
            route(&[], &["xmpp-client"]),         // 3
            route(&[], &[]),                      // 4: the stream's own upstream
        ];
        // SNI, ALPN offered, the route expected.
        type Case<'a> = (Option<&'a str>, &'a [&'a [u8]], Option<usize>);
        let cases: [Case; 8] = [
            (Some("a.example.com"), &[b"imap"], Some(1)),
            (Some("A.Example.COM."), &[], Some(2)),
            (Some("b.example.com"), &[b"imap"], Some(0)),
            (Some("x.b.example.com"), &[], Some(4)),
            (Some("other.net"), &[b"xmpp-client"], Some(3)),
            (None, &[b"xmpp-client"], Some(3)),
            (None, &[], Some(4)),
            (Some("example.com"), &[b"h2"], Some(4)),
        ];
        for (sni, alpn, want) in cases {
            assert_eq!(pick(&routes, sni, alpn), want, "{sni:?} {alpn:?}");
        }
        assert_eq!(pick(&routes[..3], Some("other.net"), &[]), None);
    }
}
