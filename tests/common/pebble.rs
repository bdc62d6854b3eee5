//! pebble (Debian's ACME test CA) on loopback for the integration tests, with its HTTPS
//! listener certified by the test PKI.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{pki, Alg};

///
/// Picked at random below the kernel's ephemeral range (32768 and up by default) and checked by
/// binding it: a port from `bind(:0)` is released before its user binds it, and in that gap
/// another test's outgoing connection or `bind(:0)` can take it, as happened once in ten runs.
/// Ports below the ephemeral range are only ever taken by another caller of this function.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(SEQ.fetch_add(7919, Ordering::Relaxed))
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    for i in 0..200u32 {
        let port = 20_000 + (seed.wrapping_add(i.wrapping_mul(104_729)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble, killed on drop.
pub struct Pebble {
    pub child: Child,
    pub directory: String,
    pub mgmt: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts pebble with its HTTPS listener certified by the test PKI, validating HTTP-01 on
/// `http_port`.
pub fn start_pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    start_pebble_with(dir, http_port, tls_port, 0)
}

/// [`start_pebble`] issuing certificates valid for `validity_secs` (0: pebble's default, 5 years).
pub fn start_pebble_with(dir: &Path, http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
    let mut extra = ", \"externalAccountBindingRequired\": false".to_string();
    if validity_secs > 0 {
        extra.push_str(&format!(", \"certificateValidityPeriod\": {validity_secs}"));
    }
    start_pebble_extra(dir, http_port, tls_port, &extra)
}

/// [`start_pebble`] with `extra` JSON members (starting with a comma) in pebble's config.
pub fn start_pebble_extra(dir: &Path, http_port: u16, tls_port: u16, extra: &str) -> Pebble {
    start_pebble_ports(dir, free_port(), free_port(), http_port, tls_port, extra)
}

/// [`start_pebble_extra`] on given directory and management ports.
pub fn start_pebble_ports(
    dir: &Path,
    port: u16,
    mgmt: u16,
    http_port: u16,
    tls_port: u16,
    extra: &str,
) -> Pebble {
    start_pebble_args(dir, port, mgmt, http_port, tls_port, extra, &[])
}

/// pebble resolving every name to 127.0.0.1 through `pebble-challtestsrv` (for names other
/// than `localhost`).
pub fn start_pebble_resolving(dir: &Path, http_port: u16, tls_port: u16) -> (Pebble, ChallTestSrv) {
    let dns = ChallTestSrv::start();
    let pebble = start_pebble_args(
        dir,
        free_port(),
        free_port(),
        http_port,
        tls_port,
        ", \"externalAccountBindingRequired\": false",
        &["-dnsserver", &dns.dns],
    );
    (pebble, dns)
}

/// `pebble-challtestsrv` as a DNS server answering 127.0.0.1 for every A query (and nothing
/// for AAAA); killed on drop.
pub struct ChallTestSrv {
    child: Child,
    /// `127.0.0.1:PORT` of its DNS listener.
    pub dns: String,
    /// Its management API, `http://127.0.0.1:PORT`.
    pub management: String,
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChallTestSrv {
    pub fn start() -> ChallTestSrv {
        let (dns_port, mgmt_port) = (free_port(), free_port());
        let child = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{mgmt_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv must be installed (Debian package `pebble`)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], mgmt_port))).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble-challtestsrv did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ChallTestSrv {
            child,
            dns: format!("127.0.0.1:{dns_port}"),
            management: format!("http://127.0.0.1:{mgmt_port}"),
        }
    }
}

/// [`start_pebble_ports`] with extra command-line arguments.
pub fn start_pebble_args(
    dir: &Path,
    port: u16,
    mgmt: u16,
    http_port: u16,
    tls_port: u16,
    extra: &str,
    args: &[&str],
) -> Pebble {
    let leaf = pki().leaf(&["localhost"], Alg::Ecdsa);
    std::fs::write(dir.join("pebble-chain.pem"), pki().chain_pem(&leaf)).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), &leaf.key_pem).unwrap();
    let tls = tls_port;
    let config = format!(
        r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{mgmt}",
        "certificate": "{}", "privateKey": "{}", "httpPort": {http_port}, "tlsPort": {tls},
        "ocspResponderURL": ""{extra}}}}}"#,
        dir.join("pebble-chain.pem").display(),
        dir.join("pebble-key.pem").display()
    );
    std::fs::write(dir.join("pebble.json"), config).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let child = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(args)
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("pebble must be installed (Debian package `pebble`; .ci/run installs it)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        assert!(
            Instant::now() < deadline,
            "pebble did not start: {}",
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Pebble {
        child,
        directory: format!("https://localhost:{port}/dir"),
        mgmt,
    }
}

/// `curl https://localhost:PORT/` to 127.0.0.1, trusting only `root`.
pub fn curl_localhost(root: &Path, port: u16) -> std::process::Output {
    curl_name(root, "localhost", port, 3)
}

/// `curl https://NAME:PORT/` to 127.0.0.1, trusting only `root`, within `secs`.
pub fn curl_name(root: &Path, name: &str, port: u16, secs: u32) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", &secs.to_string(), "--cacert"])
        .arg(root)
        .args([
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// pebble's (per-start) root, fetched from its management interface.
pub fn pebble_root(dir: &Path, pebble: &Pebble, ca: &Path) -> std::path::PathBuf {
    let out = dir.join("pebble-root.pem");
    let st = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(ca)
        .arg(format!("https://localhost:{}/roots/0", pebble.mgmt))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "could not fetch pebble's root");
    out
}

/// A config with one ACME site, "pebbled" for `localhost` answering "ok", ordering from
/// `directory` (pebble, or a proxy in front of it) whose HTTPS `ca_root` vouches for, with port
/// 80 on `http_port` for HTTP-01 and `acme_extra` lines (each ending in `\n`) in `[acme]`.
pub fn pebbled_config(
    workers: usize,
    http_port: u16,
    directory: &str,
    ca_root: &Path,
    acme_extra: &str,
) -> String {
    format!(
        "workers = {workers}\ndata_dir = \"data\"\n[listen]\nhttps = [\"127.0.0.1:0\"]\nhttp = [\"127.0.0.1:{http_port}\"]\n\
         [acme]\nca = \"{directory}\"\nca_root = \"{}\"\n{acme_extra}\
         [[site]]\nname = \"pebbled\"\nhosts = [\"localhost\"]\nissuer = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n",
        ca_root.display()
    )
}

/// A test directory with pebble running: HTTP-01 validated on `http_port`, pebble's HTTPS
/// certified by the test PKI whose root is `test_ca`, pebble's files under `dir`.
pub struct PebbleEnv {
    pub env: super::TestEnv,
    pub dir: std::path::PathBuf,
    pub test_ca: std::path::PathBuf,
    pub http_port: u16,
    pub pebble: Pebble,
}

impl PebbleEnv {
    /// pebble with its default certificate validity.
    pub fn start() -> PebbleEnv {
        PebbleEnv::start_with(0)
    }

    /// pebble issuing certificates valid for `validity_secs` (0: pebble's default).
    pub fn start_with(validity_secs: u64) -> PebbleEnv {
        let env = super::TestEnv::new();
        let dir = env.path("acme");
        std::fs::create_dir_all(&dir).unwrap();
        let test_ca = env.write("test-root.pem", &pki().root_pem);
        let http_port = free_port();
        let pebble = start_pebble_with(&dir, http_port, free_port(), validity_secs);
        PebbleEnv {
            env,
            dir,
            test_ca,
            http_port,
            pebble,
        }
    }
}
