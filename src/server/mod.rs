//! The running server: listeners, worker threads, connection accounting, graceful shutdown.
//!
//! Thread-per-core: each worker runs a single-threaded tokio runtime and accepts from its own
//! listening socket per address (an `SO_REUSEPORT` group: the kernel spreads new connections
//! over the workers' queues, instead of waking every worker for each connection on one shared
//! socket; A/B in BENCHMARKS.md). Connections never move between threads, so nothing on the
//! request path is contended. No more workers accept than the CPUs they may run on and other
//! processes leave free ([`placement`]). A connection limit is shared by all workers.

pub mod conn;
pub mod cork;
pub mod early;
mod generation;
pub mod h2;
pub mod hpack;
pub mod io;
pub mod limits;
pub mod listener;
pub mod placement;
pub mod quic;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioTimer;
use rustls::ServerConfig;
use tokio::sync::{watch, Notify};

use crate::acme::{self, TlsAlpnChallenges};
use crate::config::model::{Limits, OcspStapleFile, SiteCertSource, UnknownSni};
use crate::config::stream::ProxyAccept;
use crate::config::{Config, Problem};
use crate::http::Frontend;
use crate::stream::StreamService;
use crate::tls::local_ca::{self, LocalCa};
use crate::tls::names::HostPattern;
use crate::tls::names::NameTable;
use crate::tls::resolver::SiteCerts;

/// The TLS side of the runtime: one rustls config per site and the SNI table.
pub struct TlsFront {
    pub configs: Vec<Arc<ServerConfig>>,
    pub certs: Vec<Arc<SiteCerts>>,
    pub sni: NameTable<usize>,
    pub default_site: usize,
    pub unknown_sni: UnknownSni,
    /// On-demand TLS, when configured: admits names no site lists.
    pub on_demand: Option<Arc<acme::on_demand::OnDemand>>,
}

/// Shared by every worker and connection of one configuration. A reload builds the next
/// generation beside the running one ([`generation`]) and swaps it in; connections keep the
/// generation they were accepted in.
pub struct ServerState {
    pub front: Arc<Frontend>,
    pub tls: TlsFront,
    /// TLS-ALPN-01 challenge answers, consulted for `acme-tls/1` handshakes.
    pub tls_alpn: Arc<TlsAlpnChallenges>,
    pub limits: Limits,
    /// Which workers take new connections (no more than the CPUs they may run on); the same
    /// for every generation.
    pub placement: Arc<placement::Placement>,
    /// `[listen] proxy_protocol`: whose PROXY protocol headers the HTTPS and HTTP listeners
    /// read. `None`: no connection is looked at for one.
    pub proxy_accept: Option<ProxyAccept>,
    /// `[[stream]]` services, in configuration order.
    pub streams: Vec<Arc<StreamService>>,
    /// Names of the certificates in `tls.certs` after the sites' (the streams').
    pub stream_cert_names: Vec<String>,
    /// Where certificates and state are kept (`[storage]`); `None` for a detached state.
    pub(crate) storage: Option<Arc<dyn crate::storage::Storage>>,
    /// Open connections of every generation.
    conns: Arc<Conns>,
    /// Set when a newer generation takes over or the server stops: the background tasks of
    /// this one end, and its HTTP/2 connections say GOAWAY (its HTTP/1.1 connections close
    /// after their next response, see `Frontend::retired`).
    retire: watch::Sender<bool>,
    /// Listener id → what it serves in this generation.
    listeners: Vec<(u64, ListenerKind)>,
    /// Per worker: its protocol builders with this generation's limits.
    ctxs: Vec<Arc<WorkerCtx>>,
    /// Ticket keys and session caches, handed to the next generation when its TLS settings
    /// are the same.
    tls_shared: Option<generation::SharedTls>,
    /// `[limits.per_client]` and its client table, carried over by a reload with the same
    /// settings (clients keep their counts).
    pub client_limits: Arc<limits::ClientLimits>,
    /// HTTP/3, when on and its UDP socket is bound.
    pub quic: Option<quic::QuicFront>,
}

impl ServerState {
    /// A state for connections handed to [`conn::serve_tls`] directly, without listeners,
    /// workers or background tasks (the fuzz harness, `crate::fuzzing`).
    #[doc(hidden)]
    pub fn detached(
        front: Arc<Frontend>,
        tls: TlsFront,
        tls_alpn: Arc<TlsAlpnChallenges>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(ServerState {
            front,
            tls,
            tls_alpn,
            client_limits: limits::ClientLimits::new(&limits.per_client),
            limits,
            placement: Arc::new(placement::Placement::new(1).0),
            proxy_accept: None,
            streams: Vec::new(),
            stream_cert_names: Vec::new(),
            storage: None,
            conns: Arc::default(),
            retire: watch::channel(false).0,
            listeners: Vec::new(),
            ctxs: Vec::new(),
            tls_shared: None,
            quic: None,
        })
    }

    /// Counts a connection while the guard lives (what the accept loop does).
    #[doc(hidden)]
    pub fn count_connection(self: &Arc<Self>) -> ConnGuard {
        ConnGuard::new(&self.conns).0
    }

    /// Connections currently open (TLS and plain, of every generation).
    pub fn open_connections(&self) -> usize {
        self.conns.open.load(Ordering::Relaxed)
    }

    /// A receiver that changes when this generation is retired (already marked changed when
    /// it has been).
    pub fn retired(&self) -> watch::Receiver<bool> {
        let mut rx = self.retire.subscribe();
        if *rx.borrow() {
            rx.mark_changed();
        }
        rx
    }

    /// What the listener `id` serves in this generation (`None`: it is gone).
    fn kind_of(&self, id: u64) -> Option<ListenerKind> {
        self.listeners
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, kind)| *kind)
    }

    /// Retires this generation (see `retire`).
    fn retire(&self) {
        self.front.retired.store(true, Ordering::Relaxed);
        let _ = self.retire.send(true);
    }
}

/// The connection count, shared by all generations.
#[derive(Default)]
pub struct Conns {
    open: AtomicUsize,
    drained: Notify,
}

/// Counts a connection while it lives (and in its client's concurrent connections, once
/// admitted by the per-client limits).
pub struct ConnGuard {
    conns: Arc<Conns>,
    client: Option<limits::ClientSlot>,
}

impl ConnGuard {
    fn new(conns: &Arc<Conns>) -> (Self, usize) {
        let n = conns.open.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = ConnGuard {
            conns: conns.clone(),
            client: None,
        };
        (guard, n)
    }

    /// The per-client limits for a connection from `client`: `false` (counted and logged)
    /// when it is to be closed.
    fn admit(&mut self, state: &ServerState, client: std::net::IpAddr) -> bool {
        match state.client_limits.admit(client) {
            Ok(slot) => {
                self.client = slot;
                true
            }
            Err(refused) => {
                tracing::debug!(%client, limit = refused.kind(), "connection refused: per-client limit");
                crate::ops::limits_dropped(refused.kind());
                false
            }
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.client = None;
        if self.conns.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conns.drained.notify_waiters();
        }
    }
}

/// Per-worker protocol builders (built once per generation, used for every connection of the
/// worker).
pub struct WorkerCtx {
    pub h1: hyper::server::conn::http1::Builder,
    /// HTTP/2 is ours (server::h2); these are its limits.
    pub h2_limits: h2::H2Limits,
}

impl WorkerCtx {
    pub(crate) fn new(config: &Config) -> Self {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(None) // ours (server::io) answers 408; hyper's would just close
            .keep_alive(true)
            .half_close(false)
            .max_buf_size(config.limits.max_header_bytes.max(8192))
            .max_headers(128);
        let h2_limits = h2::H2Limits {
            max_concurrent_streams: config.http.h2_max_concurrent_streams,
            stream_window: config.http.h2_stream_window,
            connection_window: config.http.h2_connection_window,
            max_header_list: config.limits.max_header_bytes as u32,
            send_timeout: config.limits.send_timeout,
        };
        WorkerCtx { h1, h2_limits }
    }
}

/// What outlives a configuration: which workers accept, and the connection count.
pub(crate) struct Process {
    pub(crate) placement: Arc<placement::Placement>,
    pub(crate) conns: Arc<Conns>,
    /// HTTP/3's keys and handshake count.
    pub(crate) quic: quic::QuicProcess,
}

/// A listening socket: TCP (HTTPS, HTTP, streams) or UDP (HTTP/3).
pub enum Listening {
    Tcp(TcpListener),
    Udp(std::net::UdpSocket),
}

/// A listening address with its sockets (one per worker).
struct Bound {
    id: u64,
    /// The address as configured, with its role (`https@127.0.0.1:0#0`: `127.0.0.1:0` stays
    /// that, whatever port it got): a reload or an upgrade that names it again keeps the
    /// sockets.
    key: String,
    /// The address it is bound to.
    local: SocketAddr,
    /// Duplicates of the workers' sockets, passed to a new binary on upgrade.
    dups: Vec<std::os::fd::OwnedFd>,
}

/// A group bound for a new configuration, not yet handed to the workers.
struct NewGroup {
    id: u64,
    key: String,
    local: SocketAddr,
    sockets: Vec<Listening>,
}

/// The running server's process-wide side: the current generation, the listeners and the
/// stop signal.
struct Runtime {
    current: ArcSwap<ServerState>,
    process: Process,
    stop: watch::Sender<bool>,
    /// Cleared when a new binary has taken the listening sockets over: the accept loops end.
    accepting: watch::Sender<bool>,
    /// Bumped when listeners are removed (their accept loops end).
    listeners_changed: watch::Sender<u64>,
    bound: Mutex<Vec<Bound>>,
    next_id: AtomicU64,
    /// Worker threads (fixed for the process's life).
    workers: usize,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Each worker's runtime, once started (a shared QUIC endpoint spreads its connections
    /// over them).
    handles: Mutex<Vec<Option<tokio::runtime::Handle>>>,
}

/// Listener id → what it serves, for one generation.
type Kinds = Vec<(u64, ListenerKind)>;

/// Every address a configuration listens on, with what it serves there and its key (see
/// [`Bound::key`]).
fn wanted(config: &Config) -> Vec<(SocketAddr, ListenerKind, String, String)> {
    let mut out: Vec<(SocketAddr, ListenerKind, String, String)> = Vec::new();
    let mut add = |a: SocketAddr, kind, what: String, role: &str| {
        let n = out
            .iter()
            .filter(|(b, _, _, key)| *b == a && key.starts_with(&format!("{role}@")))
            .count();
        out.push((a, kind, what, format!("{role}@{a}#{n}")));
    };
    for &a in &config.listen.https {
        add(a, ListenerKind::Https, "https".to_owned(), "https");
    }
    for &a in &config.listen.http {
        add(a, ListenerKind::Http, "http".to_owned(), "http");
    }
    if config.http.http3 {
        for &a in &config.listen.https {
            add(a, ListenerKind::Quic, "HTTP/3 (UDP)".to_owned(), "h3");
        }
    }
    for (i, stream) in config.streams.iter().enumerate() {
        for &a in &stream.listen {
            let role = format!("stream:{}", stream.name.replace(['@', '=', ';', ','], "_"));
            add(
                a,
                ListenerKind::Stream(i),
                format!("stream {:?}", stream.name),
                &role,
            );
        }
    }
    out
}

/// Which of `bound` a configuration keeps, and new groups for the addresses it adds (taken
/// from the sockets an upgrading parent passed, or bound now). Nothing is changed on error:
/// the groups bound so far close when dropped.
fn reconcile(
    config: &Config,
    bound: &[Bound],
    next_id: &AtomicU64,
    workers: usize,
    inherited: &mut listener::Inherited,
    notes: &mut Vec<Problem>,
) -> Result<(Kinds, Vec<NewGroup>), String> {
    let mut kinds = Vec::new();
    let mut groups: Vec<NewGroup> = Vec::new();
    for (addr, kind, what, key) in wanted(config) {
        if let Some(b) = bound.iter().find(|b| b.key == key) {
            kinds.push((b.id, kind));
            continue;
        }
        if kind == ListenerKind::Quic {
            // HTTP/3 on the port number its HTTPS listener got (`h3@A#n` beside `https@A#n`).
            let tcp_key = key.replacen("h3@", "https@", 1);
            let port = bound
                .iter()
                .find(|b| b.key == tcp_key)
                .map(|b| b.local.port())
                .or_else(|| {
                    groups
                        .iter()
                        .find(|g| g.key == tcp_key)
                        .map(|g| g.local.port())
                });
            let Some(port) = port else { continue };
            let at = SocketAddr::new(addr.ip(), port);
            // A binary upgrade passes the same sockets: the new process reads from them
            // beside the old one, which stops taking new connections; a packet of one of its
            // connections read here is lost (the stateless reset it draws is keyed by this
            // process and ignored), not fatal, and is sent again.
            let taken = inherited.take_udp(&key).map(|s| (s, None));
            // A shared endpoint has one socket (its worker reads every packet).
            let count = if config.http.h3_shared_endpoint {
                1
            } else {
                workers
            };
            match taken.map_or_else(|| listener::bind_udp_group(at, count), Ok) {
                Ok((sockets, note)) => {
                    if let Some(note) = note {
                        tracing::warn!("{note}");
                    }
                    let local = sockets
                        .first()
                        .and_then(|s| s.local_addr().ok())
                        .unwrap_or(at);
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    kinds.push((id, kind));
                    groups.push(NewGroup {
                        id,
                        key,
                        local,
                        sockets: sockets.into_iter().map(Listening::Udp).collect(),
                    });
                }
                // Not fatal: HTTPS serves, without `Alt-Svc` (browsers never try HTTP/3).
                Err(e) => notes.push(
                    Problem::warning(
                        crate::config::Location::None,
                        format!("{e}; HTTP/3 is not served or advertised there"),
                    )
                    .fix("free the UDP port, or set [http] http3 = false"),
                ),
            }
            continue;
        }
        let sockets = match inherited.take(&key, addr) {
            Some(s) => s,
            None => match listener::bind_group(addr, &what, workers) {
                Ok(s) => s,
                Err(e) if config.listen.ipv6_optional && e.is_no_ipv6() => {
                    notes.push(Problem::warning(
                        crate::config::Location::None,
                        format!("IPv6 is not available here; not listening on {addr}"),
                    ));
                    continue;
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        let local = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(addr);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        kinds.push((id, kind));
        groups.push(NewGroup {
            id,
            key,
            local,
            sockets: sockets.into_iter().map(Listening::Tcp).collect(),
        });
    }
    Ok((kinds, groups))
}

/// The port HTTPS is reached on (for redirects): configured, or the first HTTPS listener's.
fn https_port(
    config: &Config,
    kinds: &[(u64, ListenerKind)],
    local: impl Fn(u64) -> Option<SocketAddr>,
) -> u16 {
    config
        .listen
        .public_https_port
        .or_else(|| {
            kinds
                .iter()
                .find(|(_, k)| *k == ListenerKind::Https)
                .and_then(|(id, _)| local(*id))
                .map(|a| a.port())
        })
        .unwrap_or(443)
}

/// The UDP port HTTP/3 is advertised on: the public HTTPS port when configured (a port
/// mapping in front), else the first HTTP/3 socket's; `None` without one.
fn h3_port(
    config: &Config,
    kinds: &[(u64, ListenerKind)],
    local: impl Fn(u64) -> Option<SocketAddr>,
) -> Option<u16> {
    let bound = kinds
        .iter()
        .find(|(_, k)| *k == ListenerKind::Quic)
        .and_then(|(id, _)| local(*id))?;
    Some(config.listen.public_https_port.unwrap_or(bound.port()))
}

/// A started server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    rt: Arc<Runtime>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Where the local CA's root is, when a site uses it.
    pub local_ca_root: Option<std::path::PathBuf>,
    /// Things worth telling the operator at start (e.g. a skipped IPv6 listener).
    pub notes: Vec<Problem>,
    /// The admin listener (metrics, status page), unless off or its address was taken; and
    /// the settings it was started with (a reload that changes them says they wait for a
    /// restart).
    admin: Option<crate::ops::admin::AdminHandle>,
    admin_settings: String,
}

impl Server {
    /// Binds every listener (or takes them over from the process that started this one for a
    /// binary upgrade), prepares certificates and starts the workers. Nothing is served
    /// unless everything could be set up (no half-started server).
    pub fn start(config: Config) -> Result<Server, String> {
        let mut notes = Vec::new();
        let workers = config.workers.max(1);
        // 1. Listeners first: the most common failure, and nothing else is touched yet.
        let next_id = AtomicU64::new(0);
        let mut inherited = listener::Inherited::from_env();
        let (kinds, groups) =
            reconcile(&config, &[], &next_id, workers, &mut inherited, &mut notes)?;
        // Sockets passed for addresses this configuration no longer has close here.
        drop(inherited);
        let local = |id: u64| groups.iter().find(|g| g.id == id).map(|g| g.local);
        let https_port = https_port(&config, &kinds, local);
        let h3_port = h3_port(&config, &kinds, local);

        // 2. The generation: certificates, TLS, the request side, background tasks.
        let (placement, inboxes) = placement::Placement::new(workers);
        let process = Process {
            placement: Arc::new(placement),
            conns: Arc::default(),
            quic: quic::QuicProcess::new()?,
        };
        let mut local_ca_root = None;
        let state = generation::build(
            &config,
            generation::Inputs {
                https_port,
                h3_port,
                process: &process,
                workers,
                listeners: kinds,
                prev: None,
                prev_limits: None,
                local_ca_root: &mut local_ca_root,
            },
        )?;
        let (stop, _) = watch::channel(false);
        let rt = Arc::new(Runtime {
            current: ArcSwap::new(state.clone()),
            process,
            stop,
            accepting: watch::channel(true).0,
            listeners_changed: watch::channel(0).0,
            bound: Mutex::new(Vec::new()),
            next_id,
            workers,
            reloading: Mutex::new(()),
            handles: Mutex::new(vec![None; workers]),
        });

        // 3. Workers: each takes its own socket of every address's group.
        let mut own: Vec<Vec<(u64, Listening)>> = (0..workers).map(|_| Vec::new()).collect();
        let bound = bind_groups(groups, &mut |id, j, socket| {
            own[j % workers].push((id, socket))
        })
        .inspect_err(|_| state.retire())?;
        *rt.bound.lock().unwrap_or_else(|p| p.into_inner()) = bound;
        let mut threads = Vec::new();
        for (n, (inbox, listeners)) in inboxes.into_iter().zip(own).enumerate() {
            let rt = rt.clone();
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-w{n}"))
                .spawn(move || worker(n, listeners, inbox, rt))
                .map_err(|e| {
                    state.retire();
                    format!("cannot start worker thread: {e}")
                })?;
            threads.push(handle);
        }
        // 4. The admin listener: a server without one still serves (a warning says why).
        let admin = match &config.admin.listen {
            crate::config::admin::AdminListen::Off => None,
            _ => {
                let generation = crate::ops::admin::Generation::new(&config, state.clone());
                match crate::ops::admin::start(&config.admin, generation) {
                    Ok(h) => Some(h),
                    Err(e) if config.admin.explicit => {
                        notes.push(
                            Problem::warning(
                                crate::config::Location::Flag("admin.listen".into()),
                                format!("{e}; serving without metrics and status page"),
                            )
                            .fix("free the address, choose another admin.listen, or set admin.listen = \"off\""),
                        );
                        None
                    }
                    Err(e) => {
                        // The default address, taken (most often by another server on this
                        // machine): said, but not as a warning about this configuration.
                        tracing::info!("{e}; serving without metrics and status page (set [admin] listen to choose another address)");
                        None
                    }
                }
            }
        };
        Ok(Server {
            rt,
            workers: Mutex::new(threads),
            local_ca_root,
            notes,
            admin,
            admin_settings: format!("{:?}", config.admin),
        })
    }

    /// Applies a new configuration without a restart. Everything is prepared first (new
    /// listeners bound, certificates and TLS configs built, background tasks started); only
    /// then does the new generation take new connections, and the old one is retired: its
    /// connections finish what they are doing on it (HTTP/1.1: the next response closes the
    /// connection; HTTP/2: GOAWAY), its background tasks stop, listeners it alone had close.
    /// On error nothing has changed. Returns warnings (settings that need a restart).
    pub fn reload(&self, config: Config) -> Result<Vec<Problem>, String> {
        let rt = &self.rt;
        let _one = rt.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut notes = Vec::new();
        if config.workers.max(1) != rt.workers {
            notes.push(Problem::warning(
                crate::config::Location::None,
                format!(
                    "workers = {} takes effect at the next start or binary upgrade; {} workers keep serving",
                    config.workers, rt.workers
                ),
            ));
        }
        let old = rt.current.load_full();
        let (kinds, groups, https_port, h3_port) = {
            let bound = rt.bound.lock().unwrap_or_else(|p| p.into_inner());
            let (kinds, groups) = reconcile(
                &config,
                &bound,
                &rt.next_id,
                rt.workers,
                &mut listener::Inherited::default(),
                &mut notes,
            )?;
            let local = |id: u64| {
                bound
                    .iter()
                    .find(|b| b.id == id)
                    .map(|b| b.local)
                    .or_else(|| groups.iter().find(|g| g.id == id).map(|g| g.local))
            };
            let port = https_port(&config, &kinds, local);
            let h3 = h3_port(&config, &kinds, local);
            (kinds, groups, port, h3)
        };
        let mut local_ca_root = None;
        let state = generation::build(
            &config,
            generation::Inputs {
                https_port,
                h3_port,
                process: &rt.process,
                workers: rt.workers,
                listeners: kinds.clone(),
                prev: old.tls_shared.as_ref(),
                prev_limits: Some(&old.client_limits),
                local_ca_root: &mut local_ca_root,
            },
        )?;
        let mut handoffs = Vec::new();
        let added = bind_groups(groups, &mut |id, j, listener| {
            handoffs.push(placement::Handoff {
                listener,
                id,
                home: j % rt.workers,
            })
        });
        let added = match added {
            Ok(a) => a,
            Err(e) => {
                state.retire();
                return Err(e);
            }
        };
        if format!("{:?}", config.admin) != self.admin_settings {
            notes.push(Problem::warning(
                crate::config::Location::None,
                "[admin] changes take effect at the next start or binary upgrade; the admin listener keeps its settings",
            ));
        }
        // The switch: new connections get the new generation from here on.
        if let Some(admin) = &self.admin {
            admin.publish(crate::ops::admin::Generation::new(&config, state.clone()));
        }
        rt.current.store(state);
        for h in handoffs {
            rt.process.placement.hand_over(h);
        }
        {
            let mut bound = rt.bound.lock().unwrap_or_else(|p| p.into_inner());
            bound.extend(added);
            bound.retain(|b| kinds.iter().any(|(id, _)| *id == b.id));
        }
        old.retire();
        rt.listeners_changed.send_modify(|n| *n += 1);
        Ok(notes)
    }

    /// Duplicates of every listening socket, with its key (role and address as configured),
    /// for a new binary to take over (see `ops::reload`).
    pub fn listening_sockets(&self) -> Vec<(String, Vec<std::os::fd::OwnedFd>)> {
        let bound = self.rt.bound.lock().unwrap_or_else(|p| p.into_inner());
        bound
            .iter()
            .map(|b| {
                let dups = b.dups.iter().filter_map(|s| s.try_clone().ok()).collect();
                (b.key.clone(), dups)
            })
            .collect()
    }

    /// Bound addresses of the current generation's listeners of one kind.
    fn addrs_where(&self, pick: impl Fn(ListenerKind) -> bool) -> Vec<SocketAddr> {
        let state = self.rt.current.load();
        let bound = self.rt.bound.lock().unwrap_or_else(|p| p.into_inner());
        state
            .listeners
            .iter()
            .filter(|(_, k)| pick(*k))
            .filter_map(|(id, _)| bound.iter().find(|b| b.id == *id).map(|b| b.local))
            .collect()
    }

    /// Bound HTTPS addresses (with the real port when 0 was configured).
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(|k| k == ListenerKind::Https)
    }

    /// Bound HTTP/3 (UDP) addresses.
    pub fn h3_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(|k| k == ListenerKind::Quic)
    }

    /// Bound plain-HTTP addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_where(|k| k == ListenerKind::Http)
    }

    /// Bound addresses of the `[[stream]]` named `name` (empty for no such stream).
    pub fn stream_addrs(&self, name: &str) -> Vec<SocketAddr> {
        let state = self.rt.current.load_full();
        let Some(i) = state.streams.iter().position(|s| s.name == name) else {
            return Vec::new();
        };
        self.addrs_where(|k| k == ListenerKind::Stream(i))
    }

    /// The current generation's shared state (for status and tests).
    pub fn state(&self) -> Arc<ServerState> {
        self.rt.current.load_full()
    }

    /// Hands over to the new binary of an upgrade, which accepts from the same sockets now:
    /// stops accepting, retires the current configuration so that every connection ends
    /// after its exchange in progress (HTTP/1.1: the next response says `Connection: close`,
    /// also on connections that have not sent their first request yet; HTTP/2: GOAWAY), waits
    /// for them up to the shutdown timeout, then shuts down.
    pub fn hand_over(&self) {
        let _ = self.rt.accepting.send(false);
        let current = self.let_go();
        let deadline = Instant::now() + current.limits.shutdown_timeout;
        while self.rt.process.conns.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.shutdown();
    }

    /// Drops the socket duplicates kept for upgrades (the addresses are free once the workers
    /// let go of theirs) and retires the current generation, which it returns.
    fn let_go(&self) -> Arc<ServerState> {
        self.rt
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let current = self.rt.current.load_full();
        current.retire();
        current
    }

    /// The admin listener, when one runs (a reload publishes its new generation there, and
    /// sets its [`crate::ops::admin::Control`]).
    pub fn admin(&self) -> Option<&crate::ops::admin::AdminHandle> {
        self.admin.as_ref()
    }

    /// Stops accepting, lets in-flight requests finish up to the shutdown timeout, and returns
    /// once every worker has stopped (or the deadline passed).
    pub fn shutdown(&self) {
        if let Some(a) = &self.admin {
            a.shutting_down();
        }
        let _ = self.rt.stop.send(true);
        let current = self.let_go();
        let deadline = Instant::now() + current.limits.shutdown_timeout + Duration::from_secs(1);
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        if let Some(a) = &self.admin {
            a.stop();
        }
    }
}

/// Turns new groups into [`Bound`] entries (keeping a duplicate of each socket for upgrades)
/// and gives each socket to `place` with its index in the group.
fn bind_groups(
    groups: Vec<NewGroup>,
    place: &mut dyn FnMut(u64, usize, Listening),
) -> Result<Vec<Bound>, String> {
    let mut out = Vec::new();
    let mut placed = Vec::new();
    for g in groups {
        let mut dups = Vec::new();
        for s in &g.sockets {
            let dup = match s {
                Listening::Tcp(s) => s.try_clone().map(Into::into),
                Listening::Udp(s) => s.try_clone().map(Into::into),
            };
            dups.push(dup.map_err(|e| format!("cannot duplicate the socket of {}: {e}", g.local))?);
        }
        placed.push((g.id, g.sockets));
        out.push(Bound {
            id: g.id,
            key: g.key,
            local: g.local,
            dups,
        });
    }
    for (id, sockets) in placed {
        for (j, s) in sockets.into_iter().enumerate() {
            place(id, j, s);
        }
    }
    Ok(out)
}

/// What a listening socket serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// HTTPS (TLS, then HTTP/1.1 or HTTP/2).
    Https,
    /// Plain HTTP (redirects, ACME HTTP-01).
    Http,
    /// The `[[stream]]` at this index of `ServerState::streams`.
    Stream(usize),
    /// HTTP/3 over QUIC (UDP), beside an HTTPS listener.
    Quic,
}

fn worker(
    me: usize,
    listeners: Vec<(u64, Listening)>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<placement::Handoff>,
    rt: Arc<Runtime>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start worker runtime");
            return;
        }
    };
    rt.process.placement.register(me);
    if let Some(h) = rt
        .handles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(me)
    {
        *h = Some(runtime.handle().clone());
    }
    runtime.block_on(async move {
        let accept = {
            let rt = rt.clone();
            move |listener: Listening, id: u64, home: usize| match listener {
                Listening::Tcp(listener) => match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let at = Accepting { id, home, me };
                        tokio::spawn(accept_loop(l, at, rt.clone()));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot register listener"),
                },
                Listening::Udp(socket) => {
                    tokio::spawn(quic::endpoint_loop(socket, id, rt.clone()));
                }
            }
        };
        for (id, l) in listeners {
            accept(l, id, me);
        }
        // Sockets of workers that do not accept now (see `placement`), and listeners a reload
        // added.
        let mut stop = rt.stop.subscribe();
        {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|stop| *stop) => return,
                        h = inbox.recv() => match h {
                            Some(h) => accept(h.listener, h.id, h.home),
                            None => return,
                        },
                    }
                }
            });
        }
        let _ = stop.wait_for(|stop| *stop).await;
        // Drain: in-flight requests finish; hyper closes idle keep-alive connections.
        let timeout = rt.current.load().limits.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let conns = &rt.process.conns;
        loop {
            let notified = conns.drained.notified();
            if conns.open.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(open = conns.open.load(Ordering::Relaxed), "shutdown deadline reached; closing remaining connections");
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
}

/// One listening socket in the worker that accepts from it.
#[derive(Clone, Copy)]
struct Accepting {
    /// The listener (what it serves is the current generation's word).
    id: u64,
    /// The worker the socket was bound for.
    home: usize,
    /// The worker accepting from it now.
    me: usize,
}

async fn accept_loop(listener: tokio::net::TcpListener, at: Accepting, rt: Arc<Runtime>) {
    let Accepting { id, home, me } = at;
    let mut stop = rt.stop.subscribe();
    let mut accepting = rt.accepting.subscribe();
    let mut changed = rt.listeners_changed.subscribe();
    let mut last_warn: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            _ = accepting.wait_for(|on| !*on) => return,
            r = changed.changed() => {
                if r.is_err() || rt.current.load().kind_of(id).is_none() {
                    return; // removed by a reload: the socket closes
                }
                continue;
            }
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let state = rt.current.load_full();
                let Some(kind) = state.kind_of(id) else {
                    return;
                };
                let Some(ctx) = state.ctxs.get(me).or(state.ctxs.last()).cloned() else {
                    return;
                };
                let max = state.limits.max_connections;
                let (mut guard, n) = ConnGuard::new(&state.conns);
                // Above the limit: a 503 for a while (cheap to tell), then plain refusal.
                if n > max.saturating_mul(2) || (kind != ListenerKind::Https && n > max) {
                    crate::ops::limits_dropped("max_connections");
                    drop(tcp);
                    continue;
                }
                // A load balancer in front: its header says whom the connection is from (the
                // per-client limits apply to that client, once the header is read).
                let proxied = matches!(kind, ListenerKind::Https | ListenerKind::Http)
                    && state
                        .proxy_accept
                        .as_ref()
                        .is_some_and(|pa| pa.trusts(peer.ip()));
                // Over a per-client limit: closed before anything is read or sent.
                if !proxied && !guard.admit(&state, peer.ip()) {
                    drop(tcp);
                    continue;
                }
                let shutdown = stop.clone();
                match kind {
                    ListenerKind::Https | ListenerKind::Http if proxied => {
                        tokio::spawn(serve_proxied(
                            tcp,
                            peer,
                            kind,
                            state.clone(),
                            ctx,
                            shutdown,
                            n > max,
                            guard,
                        ));
                    }
                    ListenerKind::Https => {
                        tokio::spawn(conn::serve_tls(
                            tcp,
                            peer,
                            state.clone(),
                            ctx,
                            shutdown,
                            n > max,
                            guard,
                        ));
                    }
                    ListenerKind::Http => {
                        tokio::spawn(conn::serve_http(
                            tcp,
                            peer,
                            state.clone(),
                            ctx,
                            shutdown,
                            guard,
                        ));
                    }
                    // (UDP sockets are never given to a TCP accept loop.)
                    ListenerKind::Quic => return,
                    ListenerKind::Stream(i) => {
                        let Some(slot) = state.streams[i].admit() else {
                            tracing::debug!(stream = state.streams[i].name, %peer, "max_connections reached: closing");
                            drop(tcp);
                            continue;
                        };
                        let timeout = state.limits.handshake_timeout;
                        tokio::spawn(async move {
                            let _guard = guard;
                            let _open = crate::ops::metrics::OpenConn::new(
                                crate::ops::metrics::ConnKind::Stream,
                            ); // metrics
                            crate::stream::serve(tcp, peer, slot, timeout).await;
                        });
                    }
                }
                // Fewer workers accept now, or this socket's own worker accepts again: move.
                let placement = &rt.process.placement;
                placement.after_accept();
                if placement.host_of(home) != me {
                    match listener.into_std() {
                        Ok(listener) => placement.hand_over(placement::Handoff {
                            listener: Listening::Tcp(listener),
                            id,
                            home,
                        }),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot move a listening socket to another worker")
                        }
                    }
                    return;
                }
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; warn at most every 10 s.
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "accept failed (out of file descriptors? raise `ulimit -n`)");
                    last_warn = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What holds a certificate: a site, or a stream (or one of its routes).
struct CertOwner<'a> {
    /// For logs: the site's name, or `stream "NAME"`.
    name: String,
    hosts: &'a [HostPattern],
    certs: &'a SiteCertSource,
    ocsp_staples: &'a [OcspStapleFile],
    acme_profile: Option<String>,
}

/// Every certificate holder: sites first (their index is the site's), then streams'.
fn cert_owners(config: &Config) -> Vec<CertOwner<'_>> {
    let sites = config.sites.iter().map(|s| CertOwner {
        name: s.name.clone(),
        hosts: &s.hosts,
        certs: &s.certs,
        ocsp_staples: &s.ocsp_staples,
        acme_profile: s.acme_profile.clone(),
    });
    let streams = config
        .streams
        .iter()
        .flat_map(|s| &s.certs)
        .map(|c| CertOwner {
            name: c.name.clone(),
            hosts: &c.hosts,
            certs: &c.certs,
            ocsp_staples: &[],
            acme_profile: None,
        });
    sites.chain(streams).collect()
}

/// A connection from a trusted load balancer: reads its PROXY protocol header, then serves
/// the connection as from the client the header names.
#[allow(clippy::too_many_arguments)]
async fn serve_proxied(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    state: Arc<ServerState>,
    ctx: Arc<WorkerCtx>,
    shutdown: watch::Receiver<bool>,
    overloaded: bool,
    mut guard: ConnGuard,
) {
    let required = state.proxy_accept.as_ref().is_some_and(|pa| pa.required);
    let read = crate::proxy_protocol::read_header(&tcp, required);
    let client = match tokio::time::timeout(state.limits.header_timeout, read).await {
        Ok(Ok(Some(header))) => header.source.unwrap_or(peer),
        Ok(Ok(None)) => peer,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection from a trusted proxy refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "connection from a trusted proxy refused: no PROXY protocol header in time");
            return;
        }
    };
    if !guard.admit(&state, client.ip()) {
        return;
    }
    if kind == ListenerKind::Https {
        conn::serve_tls(tcp, client, state, ctx, shutdown, overloaded, guard).await;
    } else {
        conn::serve_http(tcp, client, state, ctx, shutdown, guard).await;
    }
}

fn renew_local_leaves(
    ca: LocalCa,
    hosts: Vec<Option<Vec<crate::tls::names::HostPattern>>>,
    state: Arc<ServerState>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        if !hourly_wait(&shutdown) {
            return;
        }
        let now = crate::tls::certs::unix_now();
        for (i, names) in hosts.iter().enumerate() {
            let Some(names) = names else { continue };
            match ca.leaf_for(names) {
                Ok(leaf) => {
                    if local_ca::needs_renewal(&leaf, now).is_none() {
                        state.tls.certs[i].replace(vec![leaf.certified.clone()]);
                    }
                }
                Err(e) => tracing::error!(error = %e, "local CA: cannot renew leaf"),
            }
        }
    }
}

/// For housekeeping threads: waits an hour, looking at `shutdown` every second; `false` when
/// the server is stopping.
/// A thread with a tokio runtime for the reverse proxy's background tasks (active health
/// checks, idle-connection expiry, re-resolution), alive until `shutdown`.
fn upstream_runtime(mut shutdown: watch::Receiver<bool>) -> Result<tokio::runtime::Handle, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the upstream runtime: {e}"))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("portcullis-upstreams".into())
        .spawn(move || {
            rt.block_on(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
            })
        })
        .map_err(|e| format!("cannot start the upstream thread: {e}"))?;
    Ok(handle)
}

pub fn hourly_wait(shutdown: &watch::Receiver<bool>) -> bool {
    for _ in 0..3600 {
        if *shutdown.borrow() {
            return false;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    true
}
