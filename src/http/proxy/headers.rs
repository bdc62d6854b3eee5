//! The header policy of the reverse proxy: what a request carries to the backend and what a
//! response carries back (RFC 9110 §7.6 for intermediaries, RFC 7239 for `Forwarded`).

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::config::proxy::HeaderEdits;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Fields that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// proxy-authentication pair meant for a forward proxy (as Caddy and Go's `httputil` drop).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// The names a `Connection` field lists: hop-by-hop too (RFC 9110 §7.6.1).
fn connection_listed(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Copies a message's end-to-end fields: everything but the hop-by-hop ones and those its
/// `Connection` field names. `te: trailers` is kept (gRPC backends require it; it says the
/// client takes trailers, which the proxy passes through).
pub fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(from);
    let mut out = HeaderMap::with_capacity(from.len() + 4);
    for (name, value) in from {
        if HOP_BY_HOP.contains(name) || listed.contains(name) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let trailers = crate::http::has_token(from, &header::TE, "trailers");
    if trailers {
        out.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    out
}

/// Removes a response's hop-by-hop fields in place.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in connection_listed(h) {
        h.remove(name);
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
}

/// Whether `peer` is one of the proxies whose forwarding headers are believed.
pub fn trusted(peer: IpAddr, proxies: &[IpNet]) -> bool {
    // An IPv4-mapped address (a dual-stack socket's view of an IPv4 client) as IPv4.
    let peer = peer.to_canonical();
    proxies.iter().any(|n| n.contains(&peer))
}

/// The forwarding fields (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`): from a trusted
/// proxy, its values are kept and the client's hop appended; from anyone else, whatever the
/// client sent is replaced (it could say anything).
pub fn forwarding(
    h: &mut HeaderMap,
    client: &HeaderMap,
    peer: SocketAddr,
    host: &str,
    trusted: bool,
) {
    let ip = peer.ip().to_canonical();
    let ip_text = ip.to_string();
    let joined = |name: &HeaderName| -> Option<String> {
        let values: Vec<&str> = client
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let xff = match joined(&X_FORWARDED_FOR).filter(|_| trusted) {
        Some(prior) => format!("{prior}, {ip_text}"),
        None => ip_text.clone(),
    };
    set(h, X_FORWARDED_FOR, &xff);
    let kept = |name: &HeaderName| trusted.then(|| client.get(name).cloned()).flatten();
    match kept(&X_FORWARDED_PROTO) {
        Some(v) => h.insert(X_FORWARDED_PROTO, v),
        None => h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https")),
    };
    match kept(&X_FORWARDED_HOST) {
        Some(v) => {
            h.insert(X_FORWARDED_HOST, v);
        }
        None => set(h, X_FORWARDED_HOST, host),
    }
    // RFC 7239 §6: an IPv6 node is quoted and bracketed; §5.4: host as the client sent it.
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host_q = if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    {
        host.to_owned()
    } else {
        format!("\"{}\"", host.replace('"', ""))
    };
    let ours = format!("for={node};proto=https;host={host_q}");
    let forwarded = match joined(&FORWARDED).filter(|_| trusted) {
        Some(prior) => format!("{prior}, {ours}"),
        None => ours,
    };
    set(h, FORWARDED, &forwarded);
}

fn set(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Applies configured edits: remove, then set (replacing), then add (appending).
pub fn edit(h: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        h.remove(name);
    }
    for (name, value) in &edits.set {
        h.insert(name.clone(), value.clone());
    }
    for (name, value) in &edits.add {
        h.append(name.clone(), value.clone());
    }
}

/// Appends our hop to `Via` (RFC 9110 §7.6.3), by protocol version and pseudonym.
pub fn via(h: &mut HeaderMap, version: http::Version) {
    let ours = match version {
        http::Version::HTTP_10 => "1.0 portcullis",
        http::Version::HTTP_2 => "2 portcullis",
        http::Version::HTTP_3 => "3 portcullis",
        _ => "1.1 portcullis",
    };
    h.append(header::VIA, HeaderValue::from_static(ours));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_are_dropped() {
        let h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("upgrade", "h2c"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("accept", "*/*"),
        ]);
        let out = end_to_end(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "te"]);
        assert_eq!(out["te"], "trailers");
    }

    #[test]
    fn forwarding_from_untrusted_is_replaced_from_trusted_is_extended() {
        let client = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer: SocketAddr = "[::ffff:10.0.0.7]:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        forwarding(&mut h, &client, peer, "shop.example", false);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.example");
        assert_eq!(h[&FORWARDED], "for=10.0.0.7;proto=https;host=shop.example");
        let mut h = HeaderMap::new();
        forwarding(
            &mut h,
            &client,
            "[2001:db8::1]:1".parse().unwrap(),
            "a",
            true,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "6.6.6.6, 2001:db8::1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(
            h[&FORWARDED],
            "for=6.6.6.6, for=\"[2001:db8::1]\";proto=https;host=a"
        );
        assert!(trusted(
            "::ffff:10.1.2.3".parse().unwrap(),
            &["10.0.0.0/8".parse().unwrap()]
        ));
        assert!(!trusted(
            "11.1.2.3".parse().unwrap(),
            &["10.0.0.0/8".parse().unwrap()]
        ));
    }
}
