//! [`Storage`] in Redis: one store shared by several instances that serve as one front door.
//!
//! # Keys
//! Every value lives at `PREFIX + key` (default prefix `portcullis:`), so several clusters can
//! share one Redis. Names that [`check_key`] refuses (such as those starting with `.`) never
//! come from callers, which leaves the project's own bookkeeping room beside the values:
//!
//! - `PREFIX.kek-id`: hex key id of the key-encryption key the secret values were sealed with,
//!   written by the first instance that stores under the prefix and checked by every later
//!   one at open, so a wrong KEK is an error at start rather than at the first renewal;
//! - `PREFIX.lock:NAME`: a held lock; its value is the holder's token, `INSTANCE SINCE RANDOM
//!   FENCE`, and it expires after the lease unless renewed;
//! - `PREFIX.fence:NAME`: the lock's fence counter (INCR at each acquisition);
//! - `PREFIX.cluster`: set by the first instance that reaches an empty Redis (which instance,
//!   when). Its absence on a Redis that answers means Redis lost what it held (restarted without
//!   persistence, flushed): see *Local copy* below.
//!
//! # Changes reach every instance at once
//! Every write and delete also publishes `ORIGIN KEY` (the instance and a random tag) on the channel `PREFIX.changes` (in the
//! same round trip). [`Storage::changes`] starts a thread that subscribes to it and hands other
//! instances' changes to the certificate machinery (a renewed certificate, rotated ticket keys,
//! a pending ACME challenge), which reacts within milliseconds; each of those also polls, so a
//! lost message costs seconds, not correctness. When the subscription breaks, the thread
//! reconnects every second and, once back, reports [`Change::All`]: whatever was published
//! meanwhile is read again.
//!
//! # Local copy
//! Opened with [`RedisStorage::open_with_copy`] (as the server and the CLI do), the store keeps
//! a copy of every value it reads or writes in a private directory of this machine (the data
//! directory's `shared-copy/`, files of mode 0600 as the file store writes them; values that
//! are sealed in Redis are kept in clear there, as the file store keeps them). The copy serves
//! two failures:
//! - **Redis unreachable** (refused, timed out, dropped): reads answer from the copy, so an
//!   instance starts and reloads without Redis and serves what it held; writes still fail (no
//!   order is placed without the cluster's lock). The instance catches up when Redis answers.
//! - **Redis empty** (restarted without persistence, flushed): the first instance to notice
//!   (the subscriber's heartbeat every five seconds, or any read that finds nothing) writes its
//!   copy back with `SET NX` (never over a value another instance restored first), so no
//!   instance orders certificates the cluster already has.
//!
//! Values are written with one `SET` (atomic). Secret values are sealed ([`super::crypt`])
//! with the full Redis key name as associated data; other values (certificates, OCSP
//! responses, JSON metadata) are stored as they are. [`Storage::list`] walks the prefix with
//! `SCAN` (never `KEYS`, which blocks Redis while it runs).
//!
//! # Locks
//! [`Storage::try_lock`] takes a lease: a Lua script sets the lock key only if it is absent, for
//! `lock_lease` (default 30 s), and takes the next fence number. While the guard lives, a thread
//! renews the lease every third of it (compare-and-`PEXPIRE`: only while the key still holds
//! this guard's token); dropping the guard deletes the key, again only if it still holds the
//! token. A holder that dies stops renewing and its lease runs out. [`Storage::store_fenced`]
//! writes in one Lua script only while the lock key holds the writer's token, so a holder whose
//! lease ran out (paused, partitioned) cannot overwrite a newer holder's result.
//!
//! # Threads and timeouts
//! The [`Storage`] trait is synchronous and is called at start and reload, from the CLI, and
//! from the certificate machinery's dedicated threads (ACME manager, on-demand issuer, OCSP
//! stapler, HSTS ramp, admin listener, each a thread of its own with, where it has one, its own
//! current-thread runtime); never from the workers' runtime that serves connections. Calls
//! there already block (the file store's fsync), so this store uses redis-rs's *blocking*
//! connection: no runtime to bridge into (`Handle::block_on` panics inside a runtime, which the
//! start-up path can be), and each call is bounded by socket timeouts: 2 s to connect (TCP and
//! TLS), 2 s for each command's write and read. An unreachable Redis fails a call within those
//! bounds with an error naming the URL. Connections are kept in a small pool and a connection
//! that failed is dropped; a pooled connection that turns out dead (Redis restarted) is
//! replaced once, transparently.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use redis::{Client, Connection, IntoConnectionInfo, RedisError, Script};
use tokio::sync::broadcast;

use super::crypt::{self, Kek, OpenError};
use super::{check_key, instance_id, Change, FileStorage, LockHolder, Storage, StorageLock};
use crate::config::storage::RedisSettings;

/// Bound on connecting (TCP, then TLS and AUTH).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on writing a command and on reading its answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept for the next call.
const POOL_SIZE: usize = 4;
/// How often the subscriber checks that its connection and Redis' contents are still there.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Wait before the subscriber reconnects.
const RECONNECT: Duration = Duration::from_secs(1);

/// Takes the lock if nobody has it: KEYS = lock, fence counter; ARGV = token without the
/// fence, lease in ms. Returns the fence number, or nil.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence
";
/// Extends the lease while the lock holds the token: KEYS = lock; ARGV = token, lease in ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
/// Deletes the lock while it holds the token: KEYS = lock; ARGV = token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
/// Stores while the lock holds the token, and publishes the change: KEYS = lock, value key;
/// ARGV = token, value, channel, message.
const STORE_FENCED: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
";

/// [`Storage`] in Redis (see the module's documentation).
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// With Redis Sentinel: where to ask for the master (`client` is then unused).
    sentinels: Option<Sentinels>,
    /// The URL as configured (never holds a password), for errors.
    url: String,
    prefix: String,
    kek: Option<Arc<Kek>>,
    lease: Duration,
    instance: String,
    idle: Mutex<Vec<Connection>>,
    scripts: Scripts,
    /// This machine's copy of the values (see *Local copy*).
    copy: Option<FileStorage>,
    /// `PREFIX.changes`, where writes are announced.
    channel: String,
    /// This store's name in the announcements: the instance and a random tag (two stores in
    /// one process are two writers).
    origin: String,
    changes: broadcast::Sender<Change>,
    /// The subscriber thread runs.
    watching: AtomicBool,
    /// The KEK was checked against Redis (at open, or later when Redis was unreachable then).
    verified: AtomicBool,
    /// Held while verifying or restoring, so that happens once at a time.
    verifying: Mutex<()>,
}

struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    store_fenced: Script,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("kek", &self.inner.kek)
            .field("lease", &self.inner.lease)
            .finish()
    }
}

impl RedisStorage {
    /// Connects to Redis as `settings` say and checks the key-encryption key against the one
    /// the values under the prefix were stored with (recording it when it is the first).
    /// Without a local copy: an unreachable Redis is an error.
    pub fn open(settings: RedisSettings) -> io::Result<RedisStorage> {
        RedisStorage::open_inner(settings, None)
    }

    /// [`RedisStorage::open`] keeping this machine's copy of the values in `dir` (see
    /// *Local copy*): when Redis cannot be reached and the copy holds values, the store opens
    /// anyway (logged) and checks the key-encryption key once Redis answers.
    pub fn open_with_copy(settings: RedisSettings, dir: PathBuf) -> io::Result<RedisStorage> {
        // One copy per Redis and prefix: a changed URL or prefix starts from nothing.
        let dir = dir.join(super::short_id(&format!(
            "{} {}",
            settings.url, settings.prefix
        )));
        RedisStorage::open_inner(settings, Some(FileStorage::new(dir)))
    }

    fn open_inner(settings: RedisSettings, copy: Option<FileStorage>) -> io::Result<RedisStorage> {
        let url = settings.url.clone();
        let bad =
            |e: RedisError| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}"));
        let info = settings.url.as_str().into_connection_info().map_err(bad)?;
        let info = with_credentials(info, &settings.username, &settings.password);
        let ca = settings.ca.as_ref().map(|(_, pem)| pem.clone());
        let client = client_for(info.clone(), ca.clone()).map_err(bad)?;
        let sentinels = match settings.sentinels.is_empty() {
            true => None,
            false => {
                let tls = settings.url.starts_with("rediss:");
                let nodes = settings
                    .sentinels
                    .iter()
                    .map(|(host, port)| {
                        let scheme = if tls { "rediss" } else { "redis" };
                        let host = match host.contains(':') {
                            true => format!("[{host}]"),
                            false => host.clone(),
                        };
                        let node = with_credentials(
                            format!("{scheme}://{host}:{port}").into_connection_info()?,
                            &settings.sentinel_username,
                            &settings.sentinel_password,
                        );
                        Ok((format!("{host}:{port}"), client_for(node, ca.clone())?))
                    })
                    .collect::<Result<Vec<_>, RedisError>>()
                    .map_err(bad)?;
                Some(Sentinels {
                    // With sentinels, the URL's host is the name they know the master by.
                    master: match info.addr() {
                        redis::ConnectionAddr::Tcp(host, _)
                        | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                        other => other.to_string(),
                    },
                    nodes,
                    info,
                    ca,
                })
            }
        };
        let channel = format!("{}.changes", settings.prefix);
        let storage = RedisStorage {
            inner: Arc::new(Inner {
                client,
                sentinels,
                // Errors name the sentinels asked too.
                url: match settings.sentinels.is_empty() {
                    true => settings.url,
                    false => format!(
                        "{} (sentinels {})",
                        settings.url,
                        settings
                            .sentinels
                            .iter()
                            .map(|(h, p)| format!("{h}:{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                prefix: settings.prefix,
                kek: settings.kek,
                lease: settings.lock_lease,
                instance: instance_id(),
                idle: Mutex::new(Vec::new()),
                scripts: Scripts {
                    acquire: Script::new(ACQUIRE),
                    renew: Script::new(RENEW),
                    release: Script::new(RELEASE),
                    store_fenced: Script::new(STORE_FENCED),
                },
                copy,
                channel,
                origin: format!(
                    "{}/{}",
                    instance_id(),
                    super::hex(&crate::tls::local_ca::random_bytes::<4>())
                ),
                changes: broadcast::channel(256).0,
                watching: AtomicBool::new(false),
                verified: AtomicBool::new(false),
                verifying: Mutex::new(()),
            }),
        };
        match storage.inner.verify() {
            Ok(()) => {}
            Err(e) if unreachable(&e) && storage.inner.copy_holds_values() => {
                tracing::warn!(
                    error = %e,
                    "shared storage: Redis cannot be reached; serving from this machine's copy until it answers"
                );
            }
            Err(e) => return Err(e),
        }
        Ok(storage)
    }
}

/// `info` logging in as `username` with `password`, when given.
fn with_credentials(
    info: redis::ConnectionInfo,
    username: &Option<String>,
    password: &Option<crate::config::admin::Token>,
) -> redis::ConnectionInfo {
    let mut auth = info.redis_settings().clone();
    if let Some(user) = username {
        auth = auth.set_username(user);
    }
    if let Some(password) = password {
        auth = auth.set_password(&*password.0);
    }
    info.set_redis_settings(auth)
}

/// A client for `info`, trusting `ca` (PEM) for TLS instead of the public roots when given.
fn client_for(info: redis::ConnectionInfo, ca: Option<Vec<u8>>) -> redis::RedisResult<Client> {
    match ca {
        Some(pem) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
        None => Client::open(info),
    }
}

/// A connection to `client` within [`CONNECT_TIMEOUT`], whose commands are bounded by
/// [`COMMAND_TIMEOUT`].
fn timed_connection(client: &Client) -> redis::RedisResult<Connection> {
    let c = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    c.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(c)
}

/// Redis Sentinel: the sentinels to ask, and how to reach the master they name.
///
/// Not redis-rs's `SentinelClient`: it connects to sentinels and masters without a timeout,
/// so one unreachable sentinel (a dropped SYN) would stall a call for minutes. This asks each
/// sentinel in turn with the same bounds as every other call (`SENTINEL
/// get-master-addr-by-name`), connects to the address it names with the configured
/// credentials and TLS, and takes the connection only when that server says (`ROLE`) it is
/// the master: during a failover a sentinel may still name the old one. Every new connection
/// asks again, so after a failover the pool's broken connections are replaced by connections
/// to the new master.
struct Sentinels {
    /// The master's name as the sentinels know it.
    master: String,
    /// `HOST:PORT` and a client for each sentinel.
    nodes: Vec<(String, Client)>,
    /// The master's connection settings (database, credentials, TLS) without its address.
    info: redis::ConnectionInfo,
    ca: Option<Vec<u8>>,
}

impl Sentinels {
    fn master(&self) -> redis::RedisResult<Connection> {
        let mut last = None;
        for (node, sentinel) in &self.nodes {
            match self.master_from(sentinel) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(format!("sentinel {node}: {e}")),
            }
        }
        Err(RedisError::from((
            redis::ErrorKind::Io,
            "no sentinel named a reachable master",
            last.unwrap_or_default(),
        )))
    }

    fn master_from(&self, sentinel: &Client) -> redis::RedisResult<Connection> {
        let mut ask = timed_connection(sentinel)?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query(&mut ask)?;
        let Some((host, port)) = addr else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "unknown master name",
                format!("it monitors no master named {:?}", self.master),
            )));
        };
        let addr = match self.info.addr() {
            redis::ConnectionAddr::TcpTls { .. } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            _ => redis::ConnectionAddr::Tcp(host, port),
        };
        let client = client_for(self.info.clone().set_addr(addr), self.ca.clone())?;
        let mut c = timed_connection(&client)?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c)?;
        match role.first().map(redis::from_redis_value_ref::<String>) {
            Some(Ok(r)) if r == "master" => Ok(c),
            _ => Err(RedisError::from((
                redis::ErrorKind::Io,
                "the server the sentinel named is not (or no longer) the master",
            ))),
        }
    }
}

/// What [`Inner::restore_if_empty`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Redis holds the cluster's values.
    Yes,
    /// It held none; this machine's copy was written back.
    Restored,
    /// It holds none, and neither does this machine.
    Empty,
}

/// Redis did not answer (as opposed to answering with an error).
fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut | io::ErrorKind::NotConnected
    )
}

impl Inner {
    /// Once: the KEK matches the one recorded under the prefix, and Redis still holds what the
    /// cluster stored (else the copy is written back).
    fn verify(&self) -> io::Result<()> {
        if self.verified.load(Ordering::Acquire) {
            return Ok(());
        }
        let _once = self.verifying.lock().unwrap_or_else(|p| p.into_inner());
        if self.verified.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_kek()?;
        self.restore_if_empty()?;
        self.verified.store(true, Ordering::Release);
        Ok(())
    }

    fn copy_holds_values(&self) -> bool {
        self.copy
            .as_ref()
            .is_some_and(|c| c.list("").is_ok_and(|l| !l.is_empty()))
    }

    /// Whether Redis still holds the cluster's values (`PREFIX.cluster` is there, set by the
    /// first write). When it is not and this machine's copy holds values, marks it and writes
    /// the copy back (`SET NX`: values another instance restored first stay).
    fn restore_if_empty(&self) -> io::Result<Held> {
        let marker = format!("{}.cluster", self.prefix);
        let present: bool = self.with_conn_raw(|c| redis::cmd("EXISTS").arg(&marker).query(c))?;
        if present {
            return Ok(Held::Yes);
        }
        // Listed once: an unreadable copy counts as an empty one.
        let Some((copy, keys)) = self
            .copy
            .as_ref()
            .map(|c| (c, c.list("").unwrap_or_default()))
            .filter(|(_, keys)| !keys.is_empty())
        else {
            return Ok(Held::Empty);
        };
        let mark = format!("{} {}", self.instance, crate::tls::certs::unix_now());
        let won: Option<String> =
            self.with_conn_raw(|c| redis::cmd("SET").arg(&marker).arg(&mark).arg("NX").query(c))?;
        if won.is_none() {
            return Ok(Held::Yes); // another instance is restoring it
        }
        // Redis lost the KEK id with the rest: record ours again.
        self.check_kek()?;
        let mut restored = 0;
        for key in &keys {
            let Some(value) = copy.load(key)? else {
                continue;
            };
            let name = format!("{}{key}", self.prefix);
            let value = self.at_rest(&name, &value, copy.is_secret(key));
            let set: Option<String> = self.with_conn_raw(|c| {
                redis::cmd("SET")
                    .arg(&name)
                    .arg(&value[..])
                    .arg("NX")
                    .query(c)
            })?;
            restored += usize::from(set.is_some());
        }
        tracing::warn!(
            restored,
            of = keys.len(),
            url = %self.url,
            "shared storage: Redis held none of the cluster's values (restarted empty?); wrote back this machine's copy"
        );
        Ok(Held::Restored)
    }

    /// The KEK matches the one recorded under the prefix; the first instance records its own.
    fn check_kek(&self) -> io::Result<()> {
        let inner = self;
        let meta = format!("{}.kek-id", inner.prefix);
        let recorded: Option<String> = match &inner.kek {
            Some(kek) => {
                let id = kek.id_hex();
                inner.with_conn_raw(|c| {
                    let set: bool = redis::cmd("SET")
                        .arg(&meta)
                        .arg(&id)
                        .arg("NX")
                        .query::<Option<String>>(c)?
                        .is_some();
                    if set {
                        Ok(None)
                    } else {
                        redis::cmd("GET").arg(&meta).query(c)
                    }
                })?
            }
            None => inner.with_conn_raw(|c| redis::cmd("GET").arg(&meta).query(c))?,
        };
        match (&inner.kek, recorded) {
            (Some(kek), Some(id)) if id != kek.id_hex() => Err(wrong_kek(kek)),
            (None, Some(id)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the private keys under {:?} in {} are encrypted (key id {id}), but [storage] has no key_encryption_key_file: set the key file the other instances use",
                    inner.prefix, inner.url
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `value` as it is written to Redis under `name`: sealed when secret and a KEK is set.
    fn at_rest(&self, name: &str, value: &[u8], secret: bool) -> Vec<u8> {
        match (&self.kek, secret) {
            (Some(kek), true) => kek.seal(name, value),
            _ => value.to_vec(),
        }
    }
}

impl RedisStorage {
    fn name(&self, key: &str) -> io::Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.inner.prefix))
    }
}

fn wrong_kek(kek: &Kek) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "key-encryption key does not match the one these values were stored with ({}): use the same key file on every instance sharing the prefix",
            kek.path().display()
        ),
    )
}

impl Inner {
    /// Runs `f` on a pooled connection (or a new one), once the store is verified
    /// ([`Inner::verify`]: an instance that opened while Redis was away checks the KEK before
    /// its first write); a connection that fails is dropped, and a pooled one that turns out
    /// dead is replaced once.
    fn with_conn<T>(
        &self,
        f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> io::Result<T> {
        self.verify()?;
        self.with_conn_raw(f)
    }

    /// [`Inner::with_conn`] without the verification.
    fn with_conn_raw<T>(
        &self,
        f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> io::Result<T> {
        let r = self.with_conn_inner(f);
        let unreachable = r.as_ref().err().is_some_and(unreachable);
        if r.is_ok() || unreachable {
            crate::ops::metrics::storage_reached(r.is_ok(), &self.url);
        }
        r
    }

    fn with_conn_inner<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> io::Result<T> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(mut c) = pooled {
            match f(&mut c) {
                Ok(v) => {
                    self.put_back(c);
                    return Ok(v);
                }
                Err(e) if !(e.is_io_error() || e.is_connection_dropped()) => {
                    return Err(self.error(e));
                }
                Err(_) => {} // stale: Redis restarted or closed it; try a fresh one
            }
        }
        let mut c = self.connect()?;
        let v = f(&mut c).map_err(|e| self.error(e))?;
        self.put_back(c);
        Ok(v)
    }

    fn connect(&self) -> io::Result<Connection> {
        match &self.sentinels {
            None => timed_connection(&self.client).map_err(|e| self.error(e)),
            Some(s) => s.master().map_err(|e| self.error(e)),
        }
    }

    fn put_back(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(c);
        }
    }

    /// `e` as an `io::Error` naming the Redis URL.
    fn error(&self, e: RedisError) -> io::Error {
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else if e.is_connection_refusal() {
            io::ErrorKind::ConnectionRefused
        } else if e.is_io_error() || e.is_connection_dropped() {
            io::ErrorKind::NotConnected
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, format!("Redis {}: {e}", self.url))
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}.lock:{name}", self.prefix)
    }

    /// Every key matching the glob `pattern` (SCAN, duplicates removed).
    fn scan(&self, pattern: &str) -> io::Result<Vec<Vec<u8>>> {
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = self.with_conn(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)
            })?;
            out.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// `s` with the glob characters of Redis' MATCH escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

impl Storage for RedisStorage {
    fn shared(&self) -> bool {
        true
    }

    fn load(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let name = self.name(key)?;
        let get = || -> io::Result<Option<Vec<u8>>> {
            self.inner
                .with_conn(|c| redis::cmd("GET").arg(&name).query(c))
        };
        let raw = match get() {
            // Nothing there: Redis may have lost everything (then the copy is written back
            // first), or the key was deleted (then from the copy too).
            Ok(None) => match self.inner.restore_if_empty()? {
                Held::Restored => get()?,
                Held::Yes => {
                    if let Some(copy) = &self.inner.copy {
                        copy.delete(key)?;
                    }
                    None
                }
                Held::Empty => None,
            },
            Ok(v) => v,
            Err(e) if unreachable(&e) && self.inner.copy.is_some() => {
                return self.inner.copy.as_ref().map_or(Ok(None), |c| c.load(key));
            }
            Err(e) => return Err(e),
        };
        let Some(raw) = raw else { return Ok(None) };
        // Sealed values are secrets; without a KEK nothing says, so all are kept as secrets.
        let secret = crypt::is_sealed(&raw) || self.inner.kek.is_none();
        let plain = self.open_value(&name, raw)?;
        self.inner.keep_copy(key, &plain, secret);
        Ok(Some(plain))
    }

    fn store(&self, key: &str, value: &[u8], secret: bool) -> io::Result<()> {
        let name = self.name(key)?;
        let sealed = self.inner.at_rest(&name, value, secret);
        let note = self.inner.note(key);
        let marker = format!("{}.cluster", self.inner.prefix);
        let mut write = redis::pipe();
        write.cmd("SET").arg(&name).arg(&sealed[..]).ignore();
        write.cmd("SET").arg(&marker).arg(&note).arg("NX").ignore();
        self.inner.announced(write, &note)?;
        // What this instance stored survives a Redis that goes away (a failed write is not
        // kept: the caller knows it failed).
        self.inner.copy_store(key, value, secret);
        Ok(())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let name = self.name(key)?;
        let note = self.inner.note(key);
        let mut write = redis::pipe();
        write.cmd("DEL").arg(&name).ignore();
        self.inner.announced(write, &note)?;
        if let Some(copy) = &self.inner.copy {
            copy.delete(key)?;
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let pattern = if prefix.is_empty() {
            format!("{}*", glob_escape(&self.inner.prefix))
        } else {
            format!("{}/*", glob_escape(&self.name(prefix)?))
        };
        let keys = match self.inner.scan(&pattern) {
            Ok(keys) => keys,
            Err(e) if unreachable(&e) && self.inner.copy.is_some() => {
                return self
                    .inner
                    .copy
                    .as_ref()
                    .map_or(Ok(Vec::new()), |c| c.list(prefix));
            }
            Err(e) => return Err(e),
        };
        Ok(keys
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter_map(|k| k.strip_prefix(self.inner.prefix.as_str()))
            .filter(|k| check_key(k).is_ok())
            .map(str::to_string)
            .collect())
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        let rx = self.inner.changes.subscribe();
        if !self.inner.watching.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(&self.inner);
            let spawned = std::thread::Builder::new()
                .name("storage-changes".into())
                .spawn(move || watch(&weak));
            if let Err(e) = spawned {
                self.inner.watching.store(false, Ordering::Release);
                tracing::error!(error = %e, "shared storage: cannot start the change subscriber; changes are polled");
            }
        }
        Some(rx)
    }

    fn try_lock(&self, name: &str) -> io::Result<Option<Box<dyn StorageLock>>> {
        check_key(name)?;
        let inner = &self.inner;
        let since = crate::tls::certs::unix_now();
        let base = format!(
            "{} {since} {}",
            inner.instance,
            super::hex(&crate::tls::local_ca::random_bytes::<8>())
        );
        let lock_key = inner.lock_key(name);
        let fence_key = format!("{}.fence:{name}", inner.prefix);
        let lease_ms = inner.lease.as_millis() as u64;
        let fence: Option<u64> = inner.with_conn(|c| {
            inner
                .scripts
                .acquire
                .key(&lock_key)
                .key(&fence_key)
                .arg(&base)
                .arg(lease_ms)
                .invoke(c)
        })?;
        let Some(fence) = fence else { return Ok(None) };
        Ok(Some(Box::new(RedisLock::held(
            inner.clone(),
            lock_key,
            format!("{base} {fence}"),
            fence,
        )?)))
    }

    fn store_fenced(
        &self,
        lock: &dyn StorageLock,
        key: &str,
        value: &[u8],
        secret: bool,
    ) -> io::Result<()> {
        let Some(lock) = lock.as_any().downcast_ref::<RedisLock>() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a fenced write needs a lock taken from the same Redis storage",
            ));
        };
        let name = self.name(key)?;
        let sealed = self.inner.at_rest(&name, value, secret);
        let inner = &self.inner;
        let written: i64 = inner.with_conn(|c| {
            inner
                .scripts
                .store_fenced
                .key(&lock.key)
                .key(&name)
                .arg(&lock.token)
                .arg(&sealed[..])
                .arg(&inner.channel)
                .arg(inner.note(key))
                .invoke(c)
        })?;
        if written == 1 {
            inner.copy_store(key, value, secret);
            Ok(())
        } else {
            lock.shared.lost.store(true, Ordering::Relaxed);
            Err(io::Error::other(format!(
                "{key} not stored: lock lost ({} expired or was taken by another instance)",
                lock.key
            )))
        }
    }

    fn lock_holders(&self) -> io::Result<Vec<LockHolder>> {
        let inner = &self.inner;
        let marker = format!("{}.lock:", inner.prefix);
        let keys = inner.scan(&format!("{}*", glob_escape(&marker)))?;
        let mut out = Vec::new();
        for key in keys {
            let value: Option<String> =
                inner.with_conn(|c| redis::cmd("GET").arg(&key).query(c))?;
            let (Some(value), Ok(key)) = (value, String::from_utf8(key)) else {
                continue; // released meanwhile
            };
            let mut parts = value.rsplitn(4, ' ');
            let (Some(fence), Some(_random), Some(since), Some(instance)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            out.push(LockHolder {
                name: key[marker.len()..].to_string(),
                instance: instance.to_string(),
                since: since.parse().unwrap_or(0),
                fence: fence.parse().unwrap_or(0),
            });
        }
        Ok(out)
    }
}

impl RedisStorage {
    /// A value as read from Redis under `name`, opened when it is sealed.
    fn open_value(&self, name: &str, value: Vec<u8>) -> io::Result<Vec<u8>> {
        if !crypt::is_sealed(&value) {
            return Ok(value);
        }
        let Some(kek) = &self.inner.kek else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name} in {} is encrypted (key id {}), but [storage] has no key_encryption_key_file",
                    self.inner.url,
                    crypt::sealed_key_id(&value).unwrap_or_default()
                ),
            ));
        };
        match kek.open(name, &value) {
            Ok(plain) => Ok(plain),
            Err(OpenError::WrongKek) => Err(wrong_kek(kek)),
            Err(OpenError::Corrupt) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name} in {} does not decrypt: it was altered or copied from another key",
                    self.inner.url
                ),
            )),
        }
    }
}

impl Inner {
    /// Runs `write` and publishes `note` on the change channel, in one round trip.
    fn announced(&self, mut write: redis::Pipeline, note: &str) -> io::Result<()> {
        write.cmd("PUBLISH").arg(&self.channel).arg(note).ignore();
        self.with_conn(|c| write.query::<()>(c))
    }

    /// The change note published for `key`: `ORIGIN KEY`.
    fn note(&self, key: &str) -> String {
        format!("{} {key}", self.origin)
    }

    /// Keeps `value` in the local copy.
    fn copy_store(&self, key: &str, value: &[u8], secret: bool) {
        if let Some(copy) = &self.copy {
            if let Err(e) = copy.store(key, value, secret) {
                tracing::warn!(key, error = %e, "shared storage: cannot update this machine's copy");
            }
        }
    }

    /// [`Inner::copy_store`] unless the copy already holds `value` (reads repeat often).
    fn keep_copy(&self, key: &str, value: &[u8], secret: bool) {
        if let Some(copy) = &self.copy {
            if !matches!(copy.load(key), Ok(Some(v)) if v == value) {
                self.copy_store(key, value, secret);
            }
        }
    }
}

/// The subscriber thread: passes other instances' changes on, keeps the local copy current,
/// and notices a Redis that lost its contents. Ends when the store is dropped.
fn watch(weak: &Weak<Inner>) {
    let mut away = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match inner.connect() {
            Ok(mut conn) => {
                let lost = subscribed(&inner, weak, &mut conn, &mut away);
                drop(inner);
                if !lost {
                    return;
                }
            }
            Err(e) => {
                if !away {
                    tracing::warn!(error = %e, "shared storage: change subscription lost; retrying every second");
                    away = true;
                }
                drop(inner);
            }
        }
        std::thread::sleep(RECONNECT);
    }
}

/// Follows the change channel on `conn` until the connection breaks (returns true) or the
/// store is dropped (false).
fn subscribed(
    inner: &Arc<Inner>,
    weak: &Weak<Inner>,
    conn: &mut Connection,
    away: &mut bool,
) -> bool {
    // Reads through the store keep the local copy current with other instances' writes.
    let store = RedisStorage {
        inner: inner.clone(),
    };
    let mut sub = conn.as_pubsub();
    if sub.subscribe(&inner.channel).is_err() || sub.set_read_timeout(Some(HEARTBEAT)).is_err() {
        return true;
    }
    if std::mem::take(away) {
        tracing::info!("shared storage: change subscription restored");
    }
    // Whatever was published while this instance was not listening is read again.
    let _ = inner.restore_if_empty();
    let _ = inner.changes.send(Change::All);
    loop {
        match sub.get_message() {
            Ok(msg) => {
                let Some((from, key)) = std::str::from_utf8(msg.get_payload_bytes())
                    .ok()
                    .and_then(|p| p.split_once(' '))
                else {
                    continue;
                };
                if from != inner.origin && check_key(key).is_ok() {
                    if inner.copy.is_some() {
                        let _ = store.load(key);
                    }
                    let _ = inner.changes.send(Change::Key(key.to_string()));
                }
            }
            Err(e) if e.is_timeout() => {
                if weak.strong_count() <= 2 {
                    return false; // only this thread's references are left
                }
                // The heartbeat: the connection is alive and Redis still holds the cluster's
                // values (a flushed Redis keeps connections).
                if sub.ping::<String>().is_err() {
                    return true;
                }
                let _ = inner.restore_if_empty();
            }
            Err(_) => return true,
        }
    }
}

/// A held Redis lock: its lease is renewed by a thread of its own while the guard lives, and
/// the lock is released (if still this guard's) when it is dropped.
pub struct RedisLock {
    key: String,
    token: String,
    fence: u64,
    shared: Arc<LockShared>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

struct LockShared {
    inner: Arc<Inner>,
    /// Set to stop the renewer; the condvar wakes it.
    stop: Mutex<bool>,
    wake: Condvar,
    /// A renewal or a fenced write found the lease gone.
    lost: AtomicBool,
    /// Neither renew nor release: as if the holder had died.
    abandoned: AtomicBool,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("key", &self.key)
            .field("fence", &self.fence)
            .finish()
    }
}

impl RedisLock {
    fn held(inner: Arc<Inner>, key: String, token: String, fence: u64) -> io::Result<RedisLock> {
        let shared = Arc::new(LockShared {
            inner,
            stop: Mutex::new(false),
            wake: Condvar::new(),
            lost: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        });
        let renewer = {
            let (shared, key, token) = (shared.clone(), key.clone(), token.clone());
            std::thread::Builder::new()
                .name("portcullis-lease".into())
                .spawn(move || renew_until_stopped(&shared, &key, &token))
        };
        let renewer = match renewer {
            Ok(r) => r,
            Err(e) => {
                // Without a renewer the lease would run out under the holder: give it back.
                let _ = release(&shared, &key, &token);
                return Err(e);
            }
        };
        Ok(RedisLock {
            key,
            token,
            fence,
            shared,
            renewer: Some(renewer),
        })
    }

    /// Stops renewing without releasing, as a holder that died would (the lease runs out).
    /// For tests of lease expiry and fencing; a live process has no use for it.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        self.shared.abandoned.store(true, Ordering::Relaxed);
        self.stop_renewer();
    }

    fn stop_renewer(&self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
    }
}

fn renew_until_stopped(shared: &LockShared, key: &str, token: &str) {
    let inner = &shared.inner;
    let every = inner.lease / 3;
    let lease_ms = inner.lease.as_millis() as u64;
    let mut stopped = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        stopped = shared
            .wake
            .wait_timeout_while(stopped, every, |s| !*s)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if *stopped {
            return;
        }
        drop(stopped);
        let renewed: io::Result<i64> = inner.with_conn(|c| {
            inner
                .scripts
                .renew
                .key(key)
                .arg(token)
                .arg(lease_ms)
                .invoke(c)
        });
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(
                    lock = key,
                    "storage lock lost: its lease ran out before it was renewed"
                );
                shared.lost.store(true, Ordering::Relaxed);
                return;
            }
            // The lease may still be valid: try again at the next tick.
            Err(e) => {
                tracing::warn!(lock = key, error = %e, "storage lock: cannot renew the lease")
            }
        }
        stopped = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
    }
}

fn release(shared: &LockShared, key: &str, token: &str) -> io::Result<()> {
    let inner = &shared.inner;
    inner.with_conn(|c| {
        inner
            .scripts
            .release
            .key(key)
            .arg(token)
            .invoke::<i64>(c)
            .map(drop)
    })
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        self.stop_renewer();
        if let Some(r) = self.renewer.take() {
            let _ = r.join();
        }
        if self.shared.abandoned.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = release(&self.shared, &self.key, &self.token) {
            // The lease runs out by itself.
            tracing::warn!(lock = %self.key, error = %e, "storage lock: cannot release it");
        }
    }
}

impl StorageLock for RedisLock {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn fence(&self) -> u64 {
        self.fence
    }
    fn is_held(&self) -> bool {
        !self.shared.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_prefixes_and_keys_match_literally() {
        assert_eq!(glob_escape("p:certs/*.a"), "p:certs/\\*.a");
        assert_eq!(glob_escape("a[b]?\\^"), "a\\[b\\]\\?\\\\\\^");
    }
}
