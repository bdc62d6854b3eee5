//! `[limits.per_client]`: what one client address may do (new connections, TLS handshakes and
//! requests per period, concurrent connections), which networks are never limited, and how
//! many clients are tracked at most. The raw section, the settings it becomes, and their
//! checks; the limiter itself is `crate::server::limits`.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::validate::Ctx;

/// `[limits.per_client]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerClient {
    /// New TCP connections per client (`{ rate = "20/s", burst = 40 }`).
    pub new_connections: Option<Spanned<RawRate>>,
    /// TLS handshakes (ClientHellos) per client.
    pub handshakes: Option<Spanned<RawRate>>,
    /// HTTP requests per client, over all its connections (HTTP/1.1 and HTTP/2).
    pub requests: Option<Spanned<RawRate>>,
    /// Open connections per client at once (0: no limit; default 1000).
    pub concurrent_connections: Option<Spanned<u32>>,
    /// Addresses and networks never limited (default: loopback).
    pub trusted: Option<Spanned<Vec<Spanned<String>>>>,
    /// Most clients whose state is kept (default 65536).
    pub max_clients: Option<Spanned<usize>>,
}

/// A rate as written: `{ rate = "COUNT/PERIOD", burst = N }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate table like { rate = \"20/s\", burst = 40 }"
)]
pub struct RawRate {
    pub rate: Spanned<String>,
    pub burst: Option<Spanned<u32>>,
}

/// Per-client limits, checked (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerClient {
    /// New connections (TCP accepts) per client; excess connections are closed at once.
    pub new_connections: Option<Rate>,
    /// TLS handshakes per client; excess handshakes are closed after the ClientHello.
    pub handshakes: Option<Rate>,
    /// HTTP requests per client; excess requests get 429 with `Retry-After`.
    pub requests: Option<Rate>,
    /// Concurrent connections per client (`None`: unlimited); excess connections are closed.
    pub concurrent_connections: Option<u32>,
    /// Never limited (canonical addresses are matched: an IPv4-mapped IPv6 peer is IPv4).
    pub trusted: Vec<IpNet>,
    /// Most clients (IPv4 addresses, IPv6 /64 networks) whose state is kept; beyond it the
    /// least recently seen client without open connections is forgotten.
    pub max_clients: usize,
}

impl PerClient {
    /// Default concurrent connections per client: a tenth of the default global cap
    /// (`limits.max_connections`, 10000), far above what browsers open (6 per host over
    /// HTTP/1.1, one over HTTP/2) even behind a large NAT, and low enough that one address
    /// cannot take every slot.
    pub const DEFAULT_CONCURRENT: u32 = 1000;
    /// Default tracked clients: at most ~200 bytes each, 12.25 MiB.
    pub const DEFAULT_MAX_CLIENTS: usize = 65_536;
    const MIN_MAX_CLIENTS: usize = 1024;
    const MAX_MAX_CLIENTS: usize = 16 * 1024 * 1024;

    /// Whether any per-client limit is on.
    pub fn any(&self) -> bool {
        self.new_connections.is_some()
            || self.handshakes.is_some()
            || self.requests.is_some()
            || self.concurrent_connections.is_some()
    }
}

impl Default for PerClient {
    /// Rates off (a rate that suits one site hurts another: crawlers, NATs, API clients),
    /// concurrent connections capped, loopback trusted (local reverse proxies, health checks
    /// and test suites).
    fn default() -> Self {
        PerClient {
            new_connections: None,
            handshakes: None,
            requests: None,
            concurrent_connections: Some(Self::DEFAULT_CONCURRENT),
            trusted: default_trusted(),
            max_clients: Self::DEFAULT_MAX_CLIENTS,
        }
    }
}

fn default_trusted() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `count` events per `period`, up to `burst` at once (a token bucket / GCRA: a client may
/// spend `burst` at once, then one every `period / count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// The time one event's allowance takes to come back.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }

    /// How long an idle client takes to get its whole burst back.
    pub fn refill(&self) -> Duration {
        self.interval() * self.burst
    }
}

/// Parses `"COUNT/PERIOD"`: PERIOD is `s`, `m`, `h` or a duration (`"5/10s"`, `"1/500ms"`).
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let (count, period) = s
        .split_once('/')
        .ok_or_else(|| "no '/' between count and period".to_string())?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a whole number", count.trim()))?;
    if count == 0 {
        return Err("the count must be at least 1".into());
    }
    let period = match period.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        p => humantime::parse_duration(p).map_err(|e| format!("period {p:?}: {e}"))?,
    };
    if period < Duration::from_millis(1) || period > Duration::from_secs(86_400) {
        return Err("the period must be between 1ms and 24h".into());
    }
    if period / count < Duration::from_micros(1) {
        return Err("more than one event per microsecond".into());
    }
    Ok((count, period))
}

/// Checks `[limits.per_client]` (absent: the defaults).
pub(super) fn per_client(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawPerClient>>) -> PerClient {
    let mut out = PerClient::default();
    let Some(raw) = raw else { return out };
    let raw = raw.get_ref();
    out.new_connections = rate(cx, raw.new_connections.as_ref(), "new_connections");
    out.handshakes = rate(cx, raw.handshakes.as_ref(), "handshakes");
    out.requests = rate(cx, raw.requests.as_ref(), "requests");
    if let Some(c) = &raw.concurrent_connections {
        out.concurrent_connections = (*c.get_ref() > 0).then_some(*c.get_ref());
    }
    if let Some(list) = &raw.trusted {
        out.trusted = Vec::new();
        for t in list.get_ref() {
            let s = t.get_ref().trim();
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(n) => out.trusted.push(n.trunc()),
                Err(_) => {
                    let loc = cx.loc(t, "");
                    cx.err(
                        loc,
                        format!("limits.per_client.trusted: {s:?} is not an IP address or CIDR"),
                        "list addresses or networks, e.g. [\"10.0.0.0/8\", \"192.0.2.10\", \"2001:db8::/32\"]",
                    );
                }
            }
        }
    }
    if let Some(m) = &raw.max_clients {
        let v = *m.get_ref();
        if (PerClient::MIN_MAX_CLIENTS..=PerClient::MAX_MAX_CLIENTS).contains(&v) {
            out.max_clients = v;
        } else {
            let loc = cx.loc(m, "");
            cx.err(
                loc,
                format!("limits.per_client.max_clients = {v} is out of range"),
                format!(
                    "use {} to {} (default {}; up to 200 bytes per client)",
                    PerClient::MIN_MAX_CLIENTS,
                    PerClient::MAX_MAX_CLIENTS,
                    PerClient::DEFAULT_MAX_CLIENTS
                ),
            );
        }
    }
    out
}

fn rate(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawRate>>, key: &str) -> Option<Rate> {
    let raw = raw?.get_ref();
    let (count, period) = match parse_rate(raw.rate.get_ref()) {
        Ok(x) => x,
        Err(e) => {
            let loc = cx.loc(&raw.rate, "");
            cx.err(
                loc,
                format!(
                    "limits.per_client.{key}.rate = {:?} is not a rate: {e}",
                    raw.rate.get_ref()
                ),
                "write a count per period, e.g. \"20/s\", \"600/m\" or \"5/10s\"",
            );
            return None;
        }
    };
    let burst = match &raw.burst {
        None => count,
        Some(b) if *b.get_ref() >= 1 => *b.get_ref(),
        Some(b) => {
            let loc = cx.loc(b, "");
            cx.err(
                loc,
                format!("limits.per_client.{key}.burst must be at least 1"),
                "give how many may come at once (default: the rate's count)",
            );
            return None;
        }
    };
    Some(Rate {
        count,
        period,
        burst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20/s"), Ok((20, Duration::from_secs(1))));
        assert_eq!(parse_rate(" 600 / m "), Ok((600, Duration::from_secs(60))));
        assert_eq!(parse_rate("5/10s"), Ok((5, Duration::from_secs(10))));
        assert_eq!(parse_rate("1/500ms"), Ok((1, Duration::from_millis(500))));
        assert!(parse_rate("20").unwrap_err().contains("no '/'"));
        assert!(parse_rate("0/s").unwrap_err().contains("at least 1"));
        assert!(parse_rate("x/s").unwrap_err().contains("whole number"));
        assert!(parse_rate("5/fortnight").unwrap_err().contains("period"));
        assert!(parse_rate("5/2d").unwrap_err().contains("between"));
        assert!(parse_rate("2000000/s").unwrap_err().contains("microsecond"));
    }
}
