//! redis-server (Debian's `redis-server`) on loopback for the storage tests: a private instance
//! on a free port with its files in a temporary directory, no persistence; killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pebble::free_port;

/// A running redis-server.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// Serves TLS only (on `port`).
    tls: bool,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Redis {
    /// Starts redis-server on a free loopback port, its working files under `dir`.
    pub fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, &[])
    }

    /// [`Redis::start`] with extra `redis-server` arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Redis {
        let dir = dir.join(format!("redis-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
        };
        r.restart();
        r
    }

    /// redis-server serving TLS only, with `cert` (chain) and `key`, on a free loopback port.
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path, extra: &[&str]) -> Redis {
        let dir = dir.join(format!("redis-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = vec![
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            extra: args,
            tls: true,
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty), after [`Redis::stop`].
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(ports)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning", "--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (Debian package `redis-server`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {} (see {}/redis.log)",
                self.port,
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Whether something on the port answers PING (an answer that asks for AUTH counts).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            return true; // listening is all a plain client can see
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && (buf[0] == b'+' || buf[0] == b'-'))
    }

    /// A direct connection (plain TCP only), for looking at what the storage wrote.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// The raw value at `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET").arg(key).query(&mut self.conn()).unwrap()
    }

    /// Every key in the database, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut self.conn()).unwrap();
        k.sort();
        k
    }
}

/// A Redis Sentinel (`redis-server --sentinel`) watching one master as `mymaster`, quick to
/// fail over: the master counts as down after 1 s, quorum 1.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    /// Its `requirepass`, if any.
    password: Option<String>,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sentinel {
    /// Starts a sentinel on a free loopback port watching the master on `master_port`.
    pub fn start(dir: &Path, master_port: u16) -> Sentinel {
        Sentinel::start_with(dir, master_port, None)
    }

    /// [`Sentinel::start`] asking its clients for `password` (Sentinel's `requirepass`).
    pub fn start_with(dir: &Path, master_port: u16, password: Option<&str>) -> Sentinel {
        let port = free_port();
        let dir = dir.join(format!("sentinel-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 4000\n{}",
                dir.display(),
                password.map_or(String::new(), |p| format!("requirepass {p}\n"))
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (Debian package `redis-server`)");
        let s = Sentinel {
            child,
            port,
            password: password.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while s.master().is_none() {
            assert!(
                Instant::now() < deadline,
                "the sentinel did not start (see {}/sentinel.log)",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The master's address as the sentinel knows it now.
    pub fn master(&self) -> Option<(String, u16)> {
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        let mut c = redis::Client::open(format!("redis://{auth}127.0.0.1:{}", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut c)
            .ok()?
    }
}
