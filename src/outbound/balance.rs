//! Load-balancing policies: which backend a request goes to.
//!
//! Pure decisions over backend indices: the caller says which backends may be used (healthy,
//! not tried yet, primary or backup tier) and how loaded each one is; nothing here does I/O.
//! Weighted everywhere: round robin interleaves by weight (nginx's smooth weighted round robin,
//! precomputed), least-connections and random-of-two compare load per weight, and the hash
//! policies use weighted rendezvous hashing, so that a backend leaving moves only its own keys.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderValue};

use crate::config::proxy::Policy;

/// What a request brings to the choice.
pub struct PickInput<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
}

/// A choice: the backend and, for cookie stickiness, whether the response must set the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// The request had no (usable) sticky cookie: the response should set one for `index`.
    pub set_cookie: bool,
}

/// A policy with its state, over a fixed list of backends.
pub struct Balancer {
    policy: Policy,
    weights: Vec<u32>,
    /// Round-robin order: backend indices, each as often as its weight (reduced by the common
    /// divisor), interleaved.
    schedule: Vec<u32>,
    next: AtomicUsize,
    /// Stable per-backend hash of its address: the rendezvous seed and the cookie token.
    ids: Vec<u64>,
}

impl Balancer {
    /// `labels` name the backends (stable across restarts: their addresses), `weights` ≥ 1.
    pub fn new(policy: Policy, labels: &[&str], weights: &[u32]) -> Balancer {
        Balancer {
            policy,
            weights: weights.to_vec(),
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(0),
            ids: labels.iter().map(|l| hash64(l.as_bytes())).collect(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The cookie value that sends a client back to backend `index`.
    pub fn cookie_token(&self, index: usize) -> String {
        format!("{:016x}", self.ids[index])
    }

    /// Picks a backend among those where `usable(i)`; `load(i)` is its requests in flight.
    /// `None` when no backend is usable.
    pub fn pick(
        &self,
        input: &PickInput<'_>,
        usable: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> usize,
    ) -> Option<Pick> {
        let plain = |index| Pick {
            index,
            set_cookie: false,
        };
        match &self.policy {
            Policy::RoundRobin => self.round_robin(usable).map(plain),
            Policy::LeastConn => self.least_conn(usable, load).map(plain),
            Policy::RandomTwo => self.random_two(usable, load).map(plain),
            Policy::First => (0..self.weights.len()).find(|&i| usable(i)).map(plain),
            Policy::IpHash => {
                let key = match input.client_ip {
                    IpAddr::V4(v4) => hash64(&v4.octets()),
                    IpAddr::V6(v6) => hash64(&v6.octets()),
                };
                self.rendezvous(key, usable).map(plain)
            }
            Policy::Header(name) => {
                let mut values = input.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return self.round_robin(usable).map(plain);
                }
                let mut h = FNV_OFFSET;
                for v in values {
                    h = fnv_extend(h, v.as_bytes());
                    h = fnv_extend(h, b",");
                }
                self.rendezvous(h, usable).map(plain)
            }
            Policy::Cookie(name) => {
                if let Some(token) = cookie_value(input.headers, name) {
                    if let Some(i) = (0..self.ids.len())
                        .find(|&i| usable(i) && token == self.cookie_token(i).as_bytes())
                    {
                        return Some(plain(i));
                    }
                }
                self.round_robin(usable).map(|index| Pick {
                    index,
                    set_cookie: true,
                })
            }
        }
    }

    fn round_robin(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|step| self.schedule[(start + step) % len] as usize)
            .find(|&i| usable(i))
    }

    /// Fewest in flight per weight; ties are broken by a rotating start, so equal loads
    /// spread instead of all going to the first backend.
    fn least_conn(
        &self,
        usable: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        let n = self.weights.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        for step in 0..n {
            let i = (start + step) % n;
            if !usable(i) {
                continue;
            }
            let l = load(i);
            match best {
                Some((b, bl)) if !self.lighter(l, i, bl, b) => {}
                _ => best = Some((i, l)),
            }
        }
        best.map(|(i, _)| i)
    }

    /// `load_a / weight[a] < load_b / weight[b]`, without division.
    fn lighter(&self, load_a: usize, a: usize, load_b: usize, b: usize) -> bool {
        (load_a as u64) * u64::from(self.weights[b]) < (load_b as u64) * u64::from(self.weights[a])
    }

    fn random_two(
        &self,
        usable: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        let total: u64 = (0..self.weights.len())
            .filter(|&i| usable(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if total == 0 {
            return None;
        }
        let draw = || {
            let mut r = fastrand::u64(..total);
            for i in 0..self.weights.len() {
                if !usable(i) {
                    continue;
                }
                let w = u64::from(self.weights[i]);
                if r < w {
                    return i;
                }
                r -= w;
            }
            unreachable!("r < total, the sum of the usable weights")
        };
        let (a, b) = (draw(), draw());
        let (la, lb) = (load(a), load(b));
        Some(if self.lighter(lb, b, la, a) { b } else { a })
    }

    /// Weighted rendezvous (highest random weight): each backend scores
    /// `-weight / ln(u)` with `u` uniform in (0, 1) from hash(key, backend); the highest wins.
    fn rendezvous(&self, key: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, &id) in self.ids.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            let h = mix64(key ^ id);
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(self.weights[i]) / u.ln();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// The `Set-Cookie` value that makes a client sticky to a backend (the token from
/// [`Balancer::cookie_token`]): session cookie, whole site, not readable by scripts, HTTPS only.
pub fn sticky_cookie(name: &str, token: &str) -> HeaderValue {
    let v = format!("{name}={token}; Path=/; HttpOnly; Secure; SameSite=Lax");
    // Both parts are checked: the name at config load, the token is hex.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for h in headers.get_all(http::header::COOKIE) {
        for pair in h.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name.as_bytes()) {
                if let Some(v) = rest.strip_prefix(b"=") {
                    return Some(v.trim_ascii());
                }
            }
        }
    }
    None
}

/// Smooth weighted round robin (nginx): each round every backend gains its weight, the
/// highest current value is chosen and loses the total. Weights are first divided by their
/// greatest common divisor, so `[2, 2]` is `[0, 1]`, `[3, 1]` is `[0, 0, 1, 0]`-like.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

// Hashing for the hash policies and cookie tokens must give the same answer in every process
// and release (stickiness survives restarts, several instances agree), which std's
// `DefaultHasher` does not promise. FNV-1a (a fixed, published function) folds the key;
// splitmix64's finalizer spreads it per backend.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn hash64(bytes: &[u8]) -> u64 {
    mix64(fnv_extend(FNV_OFFSET, bytes))
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        let l = labels(weights.len());
        let refs: Vec<&str> = l.iter().map(String::as_str).collect();
        Balancer::new(policy, &refs, weights)
    }

    fn input(ip: IpAddr, headers: &HeaderMap) -> PickInput<'_> {
        PickInput {
            client_ip: ip,
            headers,
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn round_robin_follows_weights_and_interleaves() {
        let b = balancer(Policy::RoundRobin, &[3, 1]);
        let h = HeaderMap::new();
        let picks: Vec<usize> = (0..8)
            .map(|_| b.pick(&input(ip(1), &h), &|_| true, &|_| 0).unwrap().index)
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2);
        // Smooth: never the light one twice in a row, never four heavy ones in a row.
        assert!(!picks.windows(2).any(|w| w == [1, 1]), "{picks:?}");
        assert!(
            !picks.windows(4).any(|w| w.iter().all(|&i| i == 0)),
            "{picks:?}"
        );
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let b = balancer(Policy::RoundRobin, &[1, 1, 1]);
        let h = HeaderMap::new();
        for _ in 0..10 {
            let p = b.pick(&input(ip(1), &h), &|i| i != 1, &|_| 0).unwrap();
            assert_ne!(p.index, 1);
        }
        assert_eq!(b.pick(&input(ip(1), &h), &|_| false, &|_| 0), None);
    }

    #[test]
    fn least_conn_per_weight() {
        let b = balancer(Policy::LeastConn, &[1, 2]);
        let h = HeaderMap::new();
        // 3 in flight on a weight-2 backend is lighter than 2 on a weight-1 one.
        let loads = [2usize, 3];
        let p = b.pick(&input(ip(1), &h), &|_| true, &|i| loads[i]).unwrap();
        assert_eq!(p.index, 1);
        // Equal loads spread.
        let mut seen = [0; 2];
        for _ in 0..10 {
            seen[b.pick(&input(ip(1), &h), &|_| true, &|_| 0).unwrap().index] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn random_two_by_weight() {
        let b = balancer(Policy::RandomTwo, &[1, 9]);
        let h = HeaderMap::new();
        let mut seen = [0usize; 2];
        for _ in 0..2000 {
            seen[b.pick(&input(ip(1), &h), &|_| true, &|_| 0).unwrap().index] += 1;
        }
        // Equal loads: the first draw wins, so the split follows the weights (10% / 90%).
        assert!((100..=320).contains(&seen[0]), "{seen:?}");
        // The lighter of two draws wins.
        let loads = [0usize, 50];
        let mut light = 0;
        for _ in 0..2000 {
            if b.pick(&input(ip(1), &h), &|_| true, &|i| loads[i])
                .unwrap()
                .index
                == 0
            {
                light += 1;
            }
        }
        assert!(light > 250, "{light}");
    }

    #[test]
    fn first_available() {
        let b = balancer(Policy::First, &[1, 1, 1]);
        let h = HeaderMap::new();
        assert_eq!(
            b.pick(&input(ip(1), &h), &|_| true, &|_| 0).unwrap().index,
            0
        );
        assert_eq!(
            b.pick(&input(ip(1), &h), &|i| i > 0, &|_| 0).unwrap().index,
            1
        );
    }

    #[test]
    fn ip_hash_is_stable_and_weighted() {
        let b = balancer(Policy::IpHash, &[1, 1, 2]);
        let h = HeaderMap::new();
        let mut counts = [0usize; 3];
        let mut first = Vec::new();
        for n in 0..4000 {
            let p = b.pick(&input(ip(n), &h), &|_| true, &|_| 0).unwrap().index;
            assert_eq!(
                p,
                b.pick(&input(ip(n), &h), &|_| true, &|_| 0).unwrap().index
            );
            counts[p] += 1;
            first.push(p);
        }
        // Weight 2 gets about half.
        assert!((1700..=2300).contains(&counts[2]), "{counts:?}");
        // Backend 1 leaves: only its clients move.
        for n in 0..4000 {
            let p = b
                .pick(&input(ip(n), &h), &|i| i != 1, &|_| 0)
                .unwrap()
                .index;
            if first[n as usize] != 1 {
                assert_eq!(p, first[n as usize], "client {n} moved");
            } else {
                assert_ne!(p, 1);
            }
        }
    }

    #[test]
    fn header_hash_and_fallback() {
        let b = balancer(
            Policy::Header(http::HeaderName::from_static("x-user")),
            &[1, 1, 1, 1],
        );
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        let a = b.pick(&input(ip(1), &h), &|_| true, &|_| 0).unwrap().index;
        for n in 0..20 {
            assert_eq!(
                b.pick(&input(ip(n), &h), &|_| true, &|_| 0).unwrap().index,
                a
            );
        }
        // Without the header: round robin.
        let empty = HeaderMap::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            seen.insert(
                b.pick(&input(ip(1), &empty), &|_| true, &|_| 0)
                    .unwrap()
                    .index,
            );
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn cookie_sticks_and_sets() {
        let b = balancer(Policy::Cookie("lb".into()), &[1, 1, 1]);
        let empty = HeaderMap::new();
        let p = b.pick(&input(ip(1), &empty), &|_| true, &|_| 0).unwrap();
        assert!(p.set_cookie);
        let mut h = HeaderMap::new();
        let v = format!("a=1; lb={}; z=2", b.cookie_token(2));
        h.insert(http::header::COOKIE, HeaderValue::from_str(&v).unwrap());
        for _ in 0..5 {
            let p = b.pick(&input(ip(1), &h), &|_| true, &|_| 0).unwrap();
            assert_eq!(
                p,
                Pick {
                    index: 2,
                    set_cookie: false
                }
            );
        }
        // Its backend unusable: another one, and a new cookie.
        let p = b.pick(&input(ip(1), &h), &|i| i != 2, &|_| 0).unwrap();
        assert!(p.set_cookie && p.index != 2);
        let c = sticky_cookie("lb", &b.cookie_token(0));
        assert!(c.to_str().unwrap().starts_with("lb="));
    }
}
