//! A cluster on loopback for the shared-storage tests: instances on 127.0.0.1, 127.0.0.2 and
//! 127.0.0.3 with the same ports, one redis-server, one pebble resolving names through
//! `pebble-challtestsrv`; what pebble logged (new orders), who holds an order lock in Redis,
//! and [`Door`], the CA's way into the cluster, which can hold validation requests back.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::pebble::{ChallTestSrv, Pebble};
use super::redis_server::Redis;

/// The addresses of the three instances, A, B and C.
pub const INSTANCES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];

/// The prefix of every key the instances write (the default).
pub const PREFIX: &str = "portcullis:";

/// A key-encryption key file (32 random bytes) at `dir/name`.
pub fn kek_file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).unwrap();
    std::fs::write(&p, raw).unwrap();
    p
}

/// What the instances of one cluster share: ports, CA, Redis, key-encryption key.
pub struct Shared<'a> {
    /// pebble's `httpPort` (HTTP-01) and `tlsPort` (TLS-ALPN-01): the HTTP and HTTPS ports of
    /// every instance.
    pub http_port: u16,
    pub tls_port: u16,
    pub pebble: &'a Pebble,
    /// The root that certifies pebble's HTTPS listener.
    pub test_ca: &'a Path,
    pub redis: &'a Redis,
    pub kek: &'a Path,
    /// `lock_lease` (None: the default).
    pub lease: Option<&'a str>,
}

impl Shared<'_> {
    /// The config of the instance on `ip`: one ACME site per name (site `s0` for the first,
    /// answering "s0", and so on), Redis storage, no admin listener.
    pub fn config(&self, ip: Ipv4Addr, names: &[&str]) -> String {
        let lease = self
            .lease
            .map(|l| format!("lock_lease = \"{l}\"\n"))
            .unwrap_or_default();
        let mut c = format!(
            "workers = 1\ndata_dir = \"data\"\n\
             [listen]\nhttps = [\"{ip}:{}\"]\nhttp = [\"{ip}:{}\"]\n\
             [admin]\nlisten = \"off\"\n\
             [storage]\nkind = \"redis\"\nurl = \"{}\"\nkey_encryption_key_file = \"{}\"\n{lease}\
             [acme]\nca = \"{}\"\nca_root = \"{}\"\n",
            self.tls_port,
            self.http_port,
            self.redis.url(),
            self.kek.display(),
            self.pebble.directory,
            self.test_ca.display(),
        );
        for (i, name) in names.iter().enumerate() {
            c.push_str(&format!(
                "[[site]]\nname = \"s{i}\"\nhosts = [\"{name}\"]\nissuer = \"acme\"\n\
                 [[site.route]]\npath = \"/\"\nrespond = {{ body = \"s{i}\" }}\n"
            ));
        }
        c
    }
}

/// How many orders pebble was asked to create (its log has a line for each
/// `POST /order-plz`, the newOrder resource).
pub fn new_orders(pebble_dir: &Path) -> usize {
    std::fs::read_to_string(pebble_dir.join("pebble.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("POST /order-plz -> calling handler()"))
        .count()
}

/// The end of pebble's log, for failure messages.
pub fn pebble_log_tail(pebble_dir: &Path) -> String {
    let log = std::fs::read_to_string(pebble_dir.join("pebble.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Makes `pebble-challtestsrv` answer `ip` for `host` (every other name keeps 127.0.0.1).
pub fn resolve(dns: &ChallTestSrv, host: &str, ip: Ipv4Addr) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "-X", "POST", "-d"])
        .arg(format!(r#"{{"host":"{host}.","addresses":["{ip}"]}}"#))
        .arg(format!("{}/add-a", dns.management))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "pebble-challtestsrv refused the A record for {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Redis key of the order lock for `names`.
pub fn order_lock_key(names: &[String]) -> String {
    format!(
        "{PREFIX}.lock:{}",
        portcullis::acme::manager::order_lock(names)
    )
}

/// The Redis key of the stored chain for `names`.
pub fn chain_key(names: &[String]) -> String {
    format!(
        "{PREFIX}{}/chain.pem",
        portcullis::acme::manager::cert_dir(names)
    )
}

/// The value of `key` as text (`None`: absent), read over a new connection to `url`.
pub fn get_text(url: &str, key: &str) -> Option<String> {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(&mut c).unwrap();
    v.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Milliseconds `key` has left to live (Redis `PTTL`: -2 absent, -1 no expiry).
pub fn pttl(redis: &Redis, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut redis.conn())
        .unwrap()
}

/// The process id in a lock's value, `HOST:PID SINCE RANDOM FENCE`.
pub fn holder_pid(lock_value: &str) -> u32 {
    lock_value
        .split_whitespace()
        .next()
        .and_then(|instance| instance.rsplit(':').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("not a lock value: {lock_value:?}"))
}

/// The first certificate of a PEM chain.
pub fn pem_leaf(chain: &[u8]) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(chain)
        .next()
        .expect("a certificate in the chain")
        .expect("a readable certificate")
}

/// Where a [`Door`] sends a connection: an address, or `None` to close it.
pub type Route = Box<dyn Fn() -> Option<SocketAddr> + Send + Sync>;

/// A TCP front on one address, standing for the CA's path to the cluster (a load balancer):
/// it first holds every connection open without answering (a validation that hangs), then,
/// after [`Door::open`], closes the held ones and forwards new ones where its route says.
pub struct Door {
    pub addr: SocketAddr,
    inner: Arc<DoorInner>,
}

struct DoorInner {
    accepted: AtomicUsize,
    held: Mutex<Vec<TcpStream>>,
    route: Mutex<Option<Arc<Route>>>,
    stop: AtomicBool,
}

impl Door {
    /// Listens on `addr`, holding connections.
    pub fn hold(addr: SocketAddr) -> Door {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let inner = Arc::new(DoorInner {
            accepted: AtomicUsize::new(0),
            held: Mutex::new(Vec::new()),
            route: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let i = inner.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                i.accepted.fetch_add(1, Ordering::SeqCst);
                let route = i.route.lock().unwrap().clone();
                match route {
                    None => i.held.lock().unwrap().push(conn),
                    Some(route) => match route() {
                        Some(to) => forward(conn, to),
                        None => drop(conn),
                    },
                }
            }
        });
        Door { addr, inner }
    }

    /// Connections accepted so far (held, forwarded or closed).
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Closes the held connections and forwards every new one to where `route` says.
    pub fn open(&self, route: Route) {
        *self.inner.route.lock().unwrap() = Some(Arc::new(route));
        for c in self.inner.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Copies bytes both ways between `client` and a new connection to `to`.
fn forward(client: TcpStream, to: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
        return;
    };
    let pipe = |mut from: TcpStream, mut into: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            let _ = from.set_read_timeout(Some(Duration::from_secs(30)));
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || into.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = into.shutdown(Shutdown::Write);
        });
    };
    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
    pipe(server, client);
}
