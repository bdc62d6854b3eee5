//! Live reload and binary upgrade: the policy around `Server::reload` (what triggers it, what
//! is reported, when certificate files count as changed) and the hand-over of the listening
//! sockets to a new binary.
//!
//! A reload re-reads the configuration exactly as `serve` did at start (the same file or
//! flags), validates it completely and applies it only when it has no error; otherwise the
//! running configuration goes on and every problem is reported (log, and the answer to
//! `portcullis reload`). Certificate and key files are watched: a change triggers the same
//! reload, so a broken new pair is refused and the old one kept.
//!
//! A binary upgrade starts the binary the server was started from (the new one, when the file
//! was replaced) with the same arguments, passing it every listening socket (systemd's
//! `LISTEN_FDS` protocol; [`crate::server::listener::INHERITED_ENV`] names their addresses).
//! The new process builds its configuration on those sockets and says when it serves; only
//! then does this one stop accepting and finish its connections. Connections waiting in the
//! sockets' queues are never lost: the sockets are never closed, they change hands.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{Config, Problem};
use crate::server::Server;

/// Loads and validates the configuration (the same way `serve` did): the config and its
/// warnings, or every problem.
pub type Load = dyn Fn() -> Result<(Config, Vec<Problem>), Vec<Problem>> + Send + Sync;

/// The environment variable through which a new binary reports back to the process that
/// started it (an abstract unix datagram socket's name).
pub const UPGRADE_NOTIFY_ENV: &str = "PORTCULLIS_UPGRADE_NOTIFY";

/// How long an upgrade waits for the new process to serve.
const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// How often certificate and key files are looked at.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What a reload did.
#[derive(Debug)]
pub struct Outcome {
    pub applied: bool,
    /// Errors (when refused) or warnings (when applied), one line each.
    pub lines: Vec<String>,
}

impl Outcome {
    /// The report as `portcullis reload` prints it.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        if self.applied {
            out.push_str("portcullis: configuration reloaded\n");
        } else {
            let n = self.lines.len();
            out.push_str(&format!(
                "portcullis: reload refused ({n} problem(s)); the running configuration keeps serving\n"
            ));
        }
        out
    }
}

/// The running server with the means to reload and upgrade it.
pub struct Reloader {
    server: Arc<Server>,
    load: Box<Load>,
    /// Certificate and key files of the applied configuration, as last seen.
    watched: Mutex<Vec<(PathBuf, Option<Stamp>)>>,
    /// The binary and arguments the server was started with (for upgrades).
    exe: Option<PathBuf>,
    args: Vec<OsString>,
    /// One upgrade at a time.
    upgrading: Mutex<()>,
    /// Notified once an upgrade has handed the server over: this process is to stop.
    pub handed_over: tokio::sync::Notify,
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Each file with what it looks like now.
fn stamped(files: Vec<PathBuf>) -> Vec<(PathBuf, Option<Stamp>)> {
    files
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// The certificate, key and staple files a configuration loads (watched for changes).
pub fn cert_files(config: &Config) -> Vec<PathBuf> {
    use crate::config::model::SiteCertSource;
    let mut out = Vec::new();
    let sources = config.sites.iter().map(|s| &s.certs).chain(
        config
            .streams
            .iter()
            .flat_map(|s| s.certs.iter().map(|c| &c.certs)),
    );
    for source in sources {
        if let SiteCertSource::Files(list) = source {
            for c in list {
                out.push(c.info.cert_path.clone());
                out.push(c.info.key_path.clone());
            }
        }
    }
    for site in &config.sites {
        for f in &site.ocsp_staples {
            out.push(f.path.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Reloader {
    /// `files`: [`cert_files`] of the configuration the server was started with.
    pub fn new(server: Arc<Server>, files: Vec<PathBuf>, load: Box<Load>) -> Arc<Reloader> {
        let watched = stamped(files);
        Arc::new(Reloader {
            server,
            load,
            watched: Mutex::new(watched),
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
            upgrading: Mutex::new(()),
            handed_over: tokio::sync::Notify::new(),
        })
    }

    /// [`Reloader::upgrade`]; on success, [`Reloader::hand_over_soon`] is to be called once
    /// the answer is out. The answer in words.
    pub fn upgrade_and_hand_over(&self) -> Result<String, String> {
        let pid = self.upgrade()?;
        Ok(format!(
            "portcullis: upgraded: process {pid} serves now; process {} finishes its connections and exits\n",
            std::process::id()
        ))
    }

    /// Tells whoever waits on `handed_over` (the process then stops), after `delay` for the
    /// answer to the request that asked for the upgrade to go out.
    pub fn hand_over_soon(self: &Arc<Self>, delay: Duration) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-handover".into())
            .spawn(move || {
                std::thread::sleep(delay);
                me.handed_over.notify_one();
            });
        if spawned.is_err() {
            self.handed_over.notify_one();
        }
    }

    /// The admin listener's way in (`POST /reload`, `POST /upgrade` there).
    pub fn control(self: &Arc<Self>) -> Box<dyn crate::ops::admin::Control> {
        Box::new(AdminControl(Arc::downgrade(self)))
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Re-reads, validates and applies the configuration; `cause` is for the log.
    pub fn reload(&self, cause: &str) -> Outcome {
        tracing::info!(cause, "reloading the configuration");
        crate::ops::systemd::reloading();
        let outcome = match (self.load)() {
            Err(problems) => Outcome {
                applied: false,
                lines: problems
                    .iter()
                    .filter(|p| p.is_error())
                    .map(|p| p.to_string())
                    .collect(),
            },
            Ok((config, warnings)) => {
                let files = cert_files(&config);
                match self.server.reload(config) {
                    Ok(notes) => {
                        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = stamped(files);
                        Outcome {
                            applied: true,
                            lines: warnings
                                .iter()
                                .chain(&notes)
                                .map(|p| p.to_string())
                                .collect(),
                        }
                    }
                    Err(e) => Outcome {
                        applied: false,
                        lines: vec![format!("error: {e}")],
                    },
                }
            }
        };
        crate::ops::events::reload_event(
            outcome.applied,
            &format!("{cause}: {}", outcome.lines.join("; ")),
        );
        if outcome.applied {
            for l in &outcome.lines {
                tracing::warn!("{l}");
            }
            tracing::info!(cause, "configuration reloaded: new connections use it; connections in flight finish on the old one");
        } else {
            for l in &outcome.lines {
                tracing::error!("{l}");
            }
            tracing::error!(
                cause,
                problems = outcome.lines.len(),
                "reload refused: the running configuration keeps serving"
            );
        }
        outcome
    }

    /// Whether a watched certificate or key file changed since last looked at (remembering
    /// what it saw, so a change that leads to a refused reload is not retried until the files
    /// change again). Returns the changed files.
    fn changed_files(&self) -> Vec<PathBuf> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        for (path, seen) in watched.iter_mut() {
            let now = stamp(path);
            if now != *seen {
                *seen = now;
                changed.push(path.clone());
            }
        }
        changed
    }

    /// Looks at the certificate and key files every [`WATCH_EVERY`] and reloads when one
    /// changed, until `stop` is set. A file caught half-written makes a refused reload; the
    /// rest of the write changes it again and the next look reloads.
    pub fn watch_files(self: &Arc<Self>, stop: Arc<std::sync::atomic::AtomicBool>) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-watch".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(WATCH_EVERY);
                    let changed = me.changed_files();
                    if changed.is_empty() {
                        continue;
                    }
                    // Let a writer finish (cert and key are often written one after the other).
                    std::thread::sleep(Duration::from_millis(200));
                    me.changed_files();
                    let names: Vec<String> =
                        changed.iter().map(|p| p.display().to_string()).collect();
                    me.reload(&format!("changed on disk: {}", names.join(", ")));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the certificate file watcher; changed certificate files need `portcullis reload`");
        }
    }

    /// Starts the new binary on this server's listening sockets and waits until it serves.
    /// `Ok`: the new process (its PID) serves; this one should now stop. `Err`: nothing
    /// changed, this one goes on serving.
    pub fn upgrade(&self) -> Result<u32, String> {
        use command_fds::{CommandFdExt, FdMapping};
        let _one = self
            .upgrading
            .try_lock()
            .map_err(|_| "an upgrade is already under way".to_string())?;
        let exe = self
            .exe
            .clone()
            .ok_or("cannot tell which binary this process runs (no /proc?)")?;
        let exe = strip_deleted(exe);
        let name = format!(
            "portcullis-upgrade-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        );
        let addr = UnixAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| format!("cannot make the upgrade socket: {e}"))?;
        let notify = UnixDatagram::bind_addr(&addr)
            .map_err(|e| format!("cannot make the upgrade socket: {e}"))?;
        let mut mappings = Vec::new();
        let mut inherited = Vec::new();
        for (configured, sockets) in self.server.listening_sockets() {
            let mut idx = Vec::new();
            for s in sockets {
                idx.push(mappings.len().to_string());
                mappings.push(FdMapping {
                    parent_fd: s,
                    child_fd: 3 + mappings.len() as i32,
                });
            }
            inherited.push(format!("{configured}={}", idx.join(",")));
        }
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&self.args)
            .env("LISTEN_FDS", mappings.len().to_string())
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env(crate::server::listener::INHERITED_ENV, inherited.join(";"))
            .env(UPGRADE_NOTIFY_ENV, &name);
        cmd.fd_mappings(mappings)
            .map_err(|e| format!("cannot pass the listening sockets: {e}"))?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let pid = child.id();
        tracing::info!(pid, binary = %exe.display(), "binary upgrade: new process started, waiting until it serves");
        let _ = notify.set_read_timeout(Some(Duration::from_millis(200)));
        let deadline = std::time::Instant::now() + UPGRADE_WAIT;
        let mut buf = [0u8; 512];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        tracing::info!(pid, "binary upgrade: the new process serves; this one stops accepting and finishes its connections");
                        return Ok(pid);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("upgrade socket: {e}")),
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the new process exited ({status}) before serving; its errors are in the log above; this process keeps serving"
                ));
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new process did not serve within {}s; stopped it; this process keeps serving",
                    UPGRADE_WAIT.as_secs()
                ));
            }
        }
    }
}

/// `/proc/self/exe` of a binary replaced on disk reads `PATH (deleted)`: the new binary is at
/// `PATH`.
fn strip_deleted(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => exe,
    }
}

/// In a process started by an upgrade: tells the old process that this one serves (it then
/// stops). Nothing without [`UPGRADE_NOTIFY_ENV`].
pub fn notify_upgraded() {
    let Ok(name) = std::env::var(UPGRADE_NOTIFY_ENV) else {
        return;
    };
    let sent = UnixAddr::from_abstract_name(name.as_bytes()).and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(
            format!("READY=1\nMAINPID={}\n", std::process::id()).as_bytes(),
            &addr,
        )
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot tell the previous process that this one serves; it keeps serving too");
    }
}

/// [`crate::ops::admin::Control`] over a reloader (weak: the admin listener outlives nothing).
struct AdminControl(std::sync::Weak<Reloader>);

impl crate::ops::admin::Control for AdminControl {
    fn reload(&self) -> Result<String, String> {
        let r = self.0.upgrade().ok_or("the server is stopping")?;
        let outcome = r.reload("POST /reload (admin listener)");
        if outcome.applied {
            Ok(outcome.report())
        } else {
            Err(outcome.report())
        }
    }

    fn upgrade(&self) -> Result<String, String> {
        let r = self.0.upgrade().ok_or("the server is stopping")?;
        let answer = r.upgrade_and_hand_over()?;
        r.hand_over_soon(Duration::from_millis(300));
        Ok(answer)
    }
}
