//! Per-client limits (`[limits.per_client]`): new connections, TLS handshakes and requests per
//! period, and concurrent connections, per client: an IPv4 address, or an IPv6 /64 (one
//! subscriber's network: a client that owns a /64 could otherwise take a fresh address for
//! every connection).
//!
//! The rates are GCRA rate limiters from `governor` (a token bucket in one timestamp per client:
//! `burst` at once, then one per `period / count`). Their state lives in [`Table`], a store of
//! our own, because governor's keyed stores grow with every key: an attacker with many
//! addresses (governor#171) would grow them without bound. The table is
//!
//! - bounded: at most `max_clients` entries, split over [`SHARDS`] shards of a fixed capacity.
//!   A new client in a full shard first sweeps the shard's idle entries (every rate bucket full
//!   again, no connection open: forgetting them changes nothing), then forgets the least
//!   recently seen client without open connections (as nginx's `limit_req` zone and HAProxy's
//!   stick tables do). A shard whose every client has connections open does not track one
//!   more: that client is let through unlimited (fail open; the global
//!   `limits.max_connections` still holds). An entry is 48 bytes; with the room hash tables keep
//!   for removals, the table holds at most ~200 bytes per client: 12.25 MiB for the default
//!   65536, whatever the number of addresses (measured by a test below). Without rates (the
//!   default), only clients with open connections have an entry;
//! - cheap across threads: one short critical section per check on one of 64 mutexes picked by
//!   a keyed hash (SipHash with a random key: clients cannot aim at one shard), and the check
//!   happens once per connection, handshake or request, never per read;
//! - one entry per client for every kind (the three rate states and the open-connection count),
//!   so a client costs one entry, not four.
//!
//! Trusted networks are looked at before the table: their clients cost no entry at all.
//!
//! This is not where connections are refused: the server's accept loop, the TLS handshake and
//! the HTTPS service call [`ClientLimits`] and act on its answer.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use crate::config::limits::{PerClient, Rate};

/// Shards of the client table (a power of two).
pub const SHARDS: usize = 64;

/// Whom limits count: an IPv4 address, or an IPv6 /64 (IPv4-mapped IPv6 addresses count as
/// IPv4). IPv4 keys are IPv4-mapped IPv6 addresses, whose low 64 bits are never all zero, so they
/// never equal a /64 key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => ClientKey(u128::from(v6) & !u128::from(u64::MAX)),
        }
    }
}

/// What a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many connections open at once.
    ConcurrentConnections,
    /// Too many new connections.
    ConnectionRate,
    /// Too many TLS handshakes.
    HandshakeRate,
    /// Too many requests; may try again after the duration.
    RequestRate(Duration),
}

impl Refused {
    /// The kind, as `crate::ops::limits_dropped` counts it.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::ConcurrentConnections => "concurrent_connections",
            Refused::ConnectionRate => "connection_rate",
            Refused::HandshakeRate => "handshake_rate",
            Refused::RequestRate(_) => "request_rate",
        }
    }
}

/// The rate kinds, as indices into [`Entry::tat`].
const NEW_CONNECTION: usize = 0;
const HANDSHAKE: usize = 1;
const REQUEST: usize = 2;

/// One client's state.
#[derive(Debug)]
struct Entry {
    /// Per rate kind: governor's "theoretical arrival time" in nanoseconds from its limiter's
    /// start, or 0 for never counted (a stored time is never 0: it is at least one interval
    /// after the first event). Not `Option<Nanos>`: 8 bytes instead of 16, 48 per entry.
    tat: [u64; 3],
    /// Connections open now.
    open: u32,
    /// When a rate state last changed (or the entry was made), in table seconds.
    seen: u32,
}

/// The bounded client table (see the module docs).
pub struct Table {
    shards: Box<[Mutex<HashMap<ClientKey, Entry>>]>,
    per_shard: usize,
    pick: RandomState,
    epoch: Instant,
    /// An entry whose rates have not changed for this long has every bucket full again.
    idle_after: u32,
}

impl Table {
    fn new(max_clients: usize, idle_after: Duration) -> Table {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_clients.div_ceil(SHARDS).max(1),
            pick: RandomState::new(),
            epoch: Instant::now(),
            // Rounded up, plus one: `seen` is in whole seconds.
            idle_after: u32::try_from(idle_after.as_secs() + 2).unwrap_or(u32::MAX),
        }
    }

    fn now(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn shard(&self, key: &ClientKey) -> MutexGuard<'_, HashMap<ClientKey, Entry>> {
        let i = self.pick.hash_one(key) as usize & (SHARDS - 1);
        // A panic while holding a shard lock leaves counts, not broken invariants: go on.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client's entry, made if needed; `None` when its shard is full of clients with
    /// open connections.
    fn entry<'a>(
        &self,
        shard: &'a mut HashMap<ClientKey, Entry>,
        key: ClientKey,
        now: u32,
    ) -> Option<&'a mut Entry> {
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            self.make_room(shard, now);
            if shard.len() >= self.per_shard {
                return None;
            }
        }
        Some(shard.entry(key).or_insert(Entry {
            tat: [0; 3],
            open: 0,
            seen: now,
        }))
    }

    /// Forgets the idle clients of a full shard, or else its least recently seen eighth
    /// among those without open connections: a scan of one shard (`max_clients / 64`
    /// entries) when it is full, so that the next new clients (an eighth of the shard) are
    /// inserted without one.
    fn make_room(&self, shard: &mut HashMap<ClientKey, Entry>, now: u32) {
        let idle_after = self.idle_after;
        shard.retain(|_, e| e.open > 0 || now.saturating_sub(e.seen) < idle_after);
        if shard.len() < self.per_shard {
            return;
        }
        let mut closed: Vec<(u32, ClientKey)> = shard
            .iter()
            .filter(|(_, e)| e.open == 0)
            .map(|(k, e)| (e.seen, *k))
            .collect();
        let n = (self.per_shard / 8).clamp(1, closed.len().max(1));
        if closed.len() > n {
            closed.select_nth_unstable_by_key(n, |c| c.0);
        }
        for (_, k) in closed.iter().take(n) {
            shard.remove(k);
        }
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most clients ever tracked at once.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    /// The heap the table holds now, in bytes (its hash tables' buckets: an entry and a
    /// control byte each, for up to 8/7 of the entries they may hold).
    pub fn heap_bytes(&self) -> usize {
        let bucket = std::mem::size_of::<(ClientKey, Entry)>() + 1;
        self.shards
            .iter()
            .map(|s| {
                let held = s.lock().unwrap_or_else(|e| e.into_inner()).capacity();
                (held * 8 / 7).next_power_of_two() * bucket
            })
            .sum()
    }
}

/// One rate kind's view of the table, as governor's state store.
struct View {
    table: Arc<Table>,
    kind: usize,
}

impl StateStore for View {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let now = self.table.now();
        let mut shard = self.table.shard(key);
        match self.table.entry(&mut shard, *key, now) {
            Some(e) => {
                let old = e.tat[self.kind];
                let (t, tat) = f((old != 0).then(|| Nanos::new(old)))?;
                e.tat[self.kind] = tat.as_u64();
                e.seen = now;
                Ok(t)
            }
            // No room (see the module docs): as a client never seen.
            None => f(None).map(|(t, _)| t),
        }
    }
}

type Limiter = RateLimiter<ClientKey, View, MonotonicClock, NoOpMiddleware<Instant>>;

/// A connection counted in its client's concurrent connections while this lives.
pub struct ClientSlot {
    table: Arc<Table>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut shard = self.table.shard(&self.key);
        if let Some(e) = shard.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.tat == [0; 3] {
                shard.remove(&self.key);
            }
        }
    }
}

/// The per-client limits of a running server: settings, limiters and their client table.
///
/// Reload: one `Arc<ClientLimits>` lives in the `ServerState`; [`ClientLimits::carry_over`]
/// gives a new generation the old one when its settings are unchanged, so clients keep their
/// counts (and connections in flight their slots).
pub struct ClientLimits {
    settings: PerClient,
    table: Arc<Table>,
    new_connections: Option<Limiter>,
    handshakes: Option<Limiter>,
    requests: Option<Limiter>,
    clock: MonotonicClock,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClientLimits {
    /// Limits with `settings` and an empty table.
    pub fn new(settings: &PerClient) -> Arc<ClientLimits> {
        let idle_after = [
            settings.new_connections,
            settings.handshakes,
            settings.requests,
        ]
        .iter()
        .flatten()
        .map(Rate::refill)
        .max()
        .unwrap_or_default();
        let table = Arc::new(Table::new(settings.max_clients, idle_after));
        let limiter = |rate: Option<Rate>, kind| {
            let rate = rate?;
            // Checked by the configuration: count >= 1, interval >= 1 µs, burst >= 1.
            let quota = Quota::with_period(rate.interval())?
                .allow_burst(std::num::NonZeroU32::new(rate.burst)?);
            let view = View {
                table: table.clone(),
                kind,
            };
            Some(RateLimiter::new(quota, view, MonotonicClock))
        };
        Arc::new(ClientLimits {
            new_connections: limiter(settings.new_connections, NEW_CONNECTION),
            handshakes: limiter(settings.handshakes, HANDSHAKE),
            requests: limiter(settings.requests, REQUEST),
            settings: settings.clone(),
            table,
            clock: MonotonicClock,
        })
    }

    /// For a new server generation (reload): `old` itself when `settings` are unchanged (the
    /// clients' counts carry over), else new limits.
    pub fn carry_over(old: &Arc<ClientLimits>, settings: &PerClient) -> Arc<ClientLimits> {
        if old.settings == *settings {
            old.clone()
        } else {
            ClientLimits::new(settings)
        }
    }

    /// The settings these limits enforce.
    pub fn settings(&self) -> &PerClient {
        &self.settings
    }

    /// The client table (its size, for status and tests).
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Whether `ip` is in a trusted network (never limited).
    pub fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.settings.trusted.iter().any(|n| n.contains(&ip))
    }

    /// A new connection from `ip`: counts it against the connection rate and, while the
    /// returned slot lives, the concurrent connections. `Ok(None)`: not counted (no
    /// connection limit, or a trusted client).
    pub fn admit(&self, ip: IpAddr) -> Result<Option<ClientSlot>, Refused> {
        if (self.new_connections.is_none() && self.settings.concurrent_connections.is_none())
            || self.trusted(ip)
        {
            return Ok(None);
        }
        let key = ClientKey::of(ip);
        if let Some(l) = &self.new_connections {
            if let Some(max) = self.settings.concurrent_connections {
                // Looked at before the rate, so that a refused connection uses up no rate.
                let shard = self.table.shard(&key);
                if shard.get(&key).is_some_and(|e| e.open >= max) {
                    return Err(Refused::ConcurrentConnections);
                }
            }
            if l.check_key(&key).is_err() {
                return Err(Refused::ConnectionRate);
            }
        }
        let Some(max) = self.settings.concurrent_connections else {
            return Ok(None);
        };
        let now = self.table.now();
        let mut shard = self.table.shard(&key);
        let Some(e) = self.table.entry(&mut shard, key, now) else {
            return Ok(None); // no room: not counted (fail open)
        };
        if e.open >= max {
            // Another connection of the client got the last slot meanwhile.
            return Err(Refused::ConcurrentConnections);
        }
        e.open += 1;
        Ok(Some(ClientSlot {
            table: self.table.clone(),
            key,
        }))
    }

    /// A TLS handshake (a ClientHello) from `ip`: `Err` when over the handshake rate.
    pub fn handshake(&self, ip: IpAddr) -> Result<(), Refused> {
        match &self.handshakes {
            Some(l) if !self.trusted(ip) => l
                .check_key(&ClientKey::of(ip))
                .map_err(|_| Refused::HandshakeRate),
            _ => Ok(()),
        }
    }

    /// Whether requests from `ip` are limited: the limits to consult for each of its requests
    /// (looked up once per connection).
    pub fn for_requests(self: &Arc<Self>, ip: IpAddr) -> Option<Arc<ClientLimits>> {
        (self.requests.is_some() && !self.trusted(ip)).then(|| self.clone())
    }

    /// A request from `ip`: `Err(RequestRate(wait))` when over the request rate.
    pub fn request(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(l) = &self.requests else {
            return Ok(());
        };
        l.check_key(&ClientKey::of(ip))
            .map_err(|not_until| Refused::RequestRate(not_until.wait_time_from(self.clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_aggregate_ipv6_per_64_and_keep_ipv4_per_address() {
        let k = |s| ClientKey::of(ip(s));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:a:b:c:d"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
        // IPv4-mapped IPv6 is the IPv4 client (dual-stack sockets report it that way).
        assert_eq!(k("::ffff:192.0.2.1"), k("192.0.2.1"));
        // No IPv4 key equals a /64 key, not even that of ::/64.
        assert_ne!(k("::"), k("0.0.0.0"));
        assert_ne!(
            ClientKey::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            ClientKey::of(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
    }

    fn settings() -> PerClient {
        PerClient {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            max_clients: 1024,
            ..PerClient::default()
        }
    }

    fn rate(count: u32, burst: u32) -> Option<Rate> {
        Some(Rate {
            count,
            period: Duration::from_secs(60),
            burst,
        })
    }

    #[test]
    fn concurrent_connections_are_counted_per_client_and_released() {
        let limits = ClientLimits::new(&PerClient {
            concurrent_connections: Some(2),
            ..settings()
        });
        let a = ip("192.0.2.1");
        let s1 = limits.admit(a).unwrap();
        let s2 = limits.admit(a).unwrap();
        assert!(s1.is_some() && s2.is_some());
        assert_eq!(limits.admit(a).err(), Some(Refused::ConcurrentConnections));
        assert!(limits.admit(ip("192.0.2.2")).unwrap().is_some());
        drop(s1);
        let s3 = limits.admit(a).unwrap();
        assert!(s3.is_some());
        drop((s2, s3));
        // No rate state: a client without connections costs nothing.
        assert_eq!(limits.table().len(), 0);
        // Trusted: never limited, never tracked.
        let held: Vec<_> = (0..10)
            .map(|_| limits.admit(ip("10.1.2.3")).unwrap())
            .collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(limits.table().len(), 0);
    }

    #[test]
    fn rates_refuse_over_the_burst_and_tell_when_to_come_back() {
        let limits = ClientLimits::new(&PerClient {
            new_connections: rate(5, 5),
            handshakes: rate(3, 3),
            requests: rate(60, 4),
            concurrent_connections: None,
            ..settings()
        });
        let a = ip("2001:db8::1");
        for _ in 0..5 {
            assert!(limits.admit(a).is_ok());
        }
        assert_eq!(limits.admit(a).err(), Some(Refused::ConnectionRate));
        // Same /64, other address: the same client.
        assert_eq!(
            limits.admit(ip("2001:db8::2")).err(),
            Some(Refused::ConnectionRate)
        );
        assert!(limits.admit(ip("2001:db8:0:1::1")).is_ok());
        for _ in 0..3 {
            assert!(limits.handshake(a).is_ok());
        }
        assert_eq!(limits.handshake(a), Err(Refused::HandshakeRate));
        for _ in 0..4 {
            assert!(limits.request(a).is_ok());
        }
        match limits.request(a) {
            Err(Refused::RequestRate(wait)) => {
                assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        // The kinds have their own state in the one entry per client.
        assert_eq!(limits.table().len(), 2);
        assert!(limits.for_requests(ip("10.0.0.1")).is_none());
        assert!(limits.for_requests(a).is_some());
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let limits = ClientLimits::new(&PerClient {
            new_connections: rate(1, 1),
            concurrent_connections: Some(1),
            ..settings()
        });
        let cap = limits.table().capacity();
        assert_eq!(cap, 1024);
        // A client holding a connection, then a flood of one connection per address.
        let victim = ip("198.51.100.7");
        let slot = limits.admit(victim).unwrap();
        for i in 0..50_000u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            let _ = limits.admit(a);
        }
        assert!(limits.table().len() <= cap, "{}", limits.table().len());
        let bytes = limits.table().heap_bytes();
        assert!(bytes <= 200 * 1024, "{bytes}");
        // The client with an open connection was not forgotten: still at its limit.
        assert_eq!(
            limits.admit(victim).err(),
            Some(Refused::ConcurrentConnections)
        );
        drop(slot);
    }

    #[test]
    fn the_default_table_holds_at_most_12_5_mib() {
        let limits = ClientLimits::new(&PerClient {
            new_connections: rate(1, 1),
            ..PerClient::default()
        });
        for i in 0..300_000u32 {
            let _ = limits.admit(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)));
        }
        let len = limits.table().len();
        assert!((65_536 * 7 / 8..=65_536).contains(&len), "{len}");
        let bytes = limits.table().heap_bytes();
        assert!(bytes <= 12_800 << 10, "{bytes}");
    }

    #[test]
    fn unchanged_settings_carry_over() {
        let old = ClientLimits::new(&settings());
        assert!(Arc::ptr_eq(
            &old,
            &ClientLimits::carry_over(&old, &settings())
        ));
        let changed = PerClient {
            concurrent_connections: Some(5),
            ..settings()
        };
        assert!(!Arc::ptr_eq(
            &old,
            &ClientLimits::carry_over(&old, &changed)
        ));
    }
}
