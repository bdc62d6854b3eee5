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
pub mod h2;
pub mod hpack;
pub mod io;
pub mod listener;
pub mod placement;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioTimer;
use rustls::ServerConfig;
use tokio::sync::{watch, Notify};

use crate::acme::{self, TlsAlpnChallenges};
use crate::config::model::{Limits, OcspStapleFile, SiteCertSource, UnknownSni};
use crate::config::stream::ProxyAccept;
use crate::config::{Config, Problem};
use crate::http::Frontend;
use crate::storage::{FileStorage, Storage};
use crate::stream::StreamService;
use crate::tls::certs::LoadedCert;
use crate::tls::local_ca::{self, LocalCa};
use crate::tls::names::HostPattern;
use crate::tls::names::NameTable;
use crate::tls::resolver::{NamedCerts, SiteCerts, WithNamed};
use crate::tls::stapler::{self, RenewRequests, StapleSite, Stapler};
use crate::tls::{TlsOptions, TlsShared};

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

/// Shared by every worker and connection.
pub struct ServerState {
    pub front: Arc<Frontend>,
    pub tls: TlsFront,
    /// TLS-ALPN-01 challenge answers, consulted for `acme-tls/1` handshakes.
    pub tls_alpn: Arc<TlsAlpnChallenges>,
    pub limits: Limits,
    /// Which workers take new connections (no more than the CPUs they may run on).
    pub placement: placement::Placement,
    /// `[listen] proxy_protocol`: whose PROXY protocol headers the HTTPS and HTTP listeners
    /// read. `None`: no connection is looked at for one.
    pub proxy_accept: Option<ProxyAccept>,
    /// `[[stream]]` services, in configuration order.
    pub streams: Vec<Arc<StreamService>>,
    /// Names of the certificates in `tls.certs` after the sites' (the streams').
    pub stream_cert_names: Vec<String>,
    open: AtomicUsize,
    drained: Notify,
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
            limits,
            placement: placement::Placement::new(1).0,
            proxy_accept: None,
            streams: Vec::new(),
            stream_cert_names: Vec::new(),
            open: AtomicUsize::new(0),
            drained: Notify::new(),
        })
    }

    /// Counts a connection while the guard lives (what the accept loop does).
    #[doc(hidden)]
    pub fn count_connection(self: &Arc<Self>) -> ConnGuard {
        ConnGuard::new(self).0
    }

    /// Connections currently open (TLS and plain).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts a connection while it lives.
pub struct ConnGuard(Arc<ServerState>);

impl ConnGuard {
    fn new(state: &Arc<ServerState>) -> (Self, usize) {
        let n = state.open.fetch_add(1, Ordering::Relaxed) + 1;
        (ConnGuard(state.clone()), n)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Per-worker protocol builders (built once, used for every connection of the worker).
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

/// A started server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    state: Arc<ServerState>,
    shutdown_tx: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    https_addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    /// Per stream (configuration order): its bound addresses.
    stream_addrs: Vec<Vec<SocketAddr>>,
    shutdown_timeout: Duration,
    /// Where the local CA's root is, when a site uses it.
    pub local_ca_root: Option<std::path::PathBuf>,
    /// Things worth telling the operator at start (e.g. a skipped IPv6 listener).
    pub notes: Vec<Problem>,
}

impl Server {
    /// Binds every listener, prepares certificates and starts the workers. Nothing is served
    /// unless everything could be set up (no half-started server).
    pub fn start(config: Config) -> Result<Server, String> {
        let mut notes = Vec::new();
        // 1. Listeners first: the most common failure, and nothing else is touched yet.
        let mut https = Vec::new();
        let mut http = Vec::new();
        for (addrs, out, what) in [
            (&config.listen.https, &mut https, "https"),
            (&config.listen.http, &mut http, "http"),
        ] {
            for &addr in addrs {
                match listener::bind_group(addr, what, config.workers) {
                    Ok(group) => out.push(group),
                    Err(e) if config.listen.ipv6_optional && e.is_no_ipv6() => {
                        notes.push(Problem::warning(
                            crate::config::Location::None,
                            format!("IPv6 is not available here; not listening on {addr}"),
                        ));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        // Stream listeners: every address of every stream, remembering whose it is.
        let mut streams_l: Vec<(usize, Vec<TcpListener>)> = Vec::new();
        for (i, stream) in config.streams.iter().enumerate() {
            for &addr in &stream.listen {
                let group = listener::bind_group(
                    addr,
                    &format!("stream {:?}", stream.name),
                    config.workers,
                )
                .map_err(|e| e.to_string())?;
                streams_l.push((i, group));
            }
        }
        let first_addrs = |groups: &[Vec<TcpListener>]| -> Vec<SocketAddr> {
            groups
                .iter()
                .filter_map(|g| g.first()?.local_addr().ok())
                .collect()
        };
        let https_addrs = first_addrs(&https);
        let http_addrs = first_addrs(&http);
        let mut stream_addrs = vec![Vec::new(); config.streams.len()];
        for (i, group) in &streams_l {
            if let Some(a) = group.first().and_then(|l| l.local_addr().ok()) {
                stream_addrs[*i].push(a);
            }
        }
        let https_port = config
            .listen
            .public_https_port
            .or_else(|| https_addrs.first().map(|a| a.port()))
            .unwrap_or(443);

        // 2. Certificates: files were loaded by validation; local names get a local-CA leaf.
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::new(config.data_dir.clone()));
        let mut acme_sites = Vec::new();
        let mut local_ca: Option<LocalCa> = None;
        let mut local_ca_root = None;
        let mut site_certs: Vec<Vec<LoadedCert>> = Vec::new();
        // Sites' certificates, then streams' (same sources, renewals and monitoring).
        let owners = cert_owners(&config);
        // A stream whose ACME names are an earlier holder's exactly (a mail service beside its
        // webmail site) shares that holder's certificate: one order, one renewal.
        let mut shares: Vec<Option<usize>> = vec![None; owners.len()];
        for (i, site) in owners.iter().enumerate() {
            if matches!(site.certs, SiteCertSource::Acme) {
                shares[i] = owners[..i]
                    .iter()
                    .position(|o| matches!(o.certs, SiteCertSource::Acme) && o.hosts == site.hosts);
            }
        }
        for (i, site) in owners.iter().enumerate() {
            match site.certs {
                SiteCertSource::Files(list) => site_certs.push(list.clone()),
                SiteCertSource::LocalCa => {
                    if local_ca.is_none() {
                        local_ca = Some(LocalCa::open_or_create(&config.data_dir)?);
                        local_ca_root = Some(local_ca::root_cert_path(&config.data_dir));
                    }
                    let ca = local_ca.as_ref().ok_or("local CA unavailable")?;
                    let leaf = ca
                        .leaf_for(site.hosts)
                        .map_err(|e| format!("{}: local CA: {e}", site.name))?;
                    site_certs.push(vec![leaf]);
                }
                SiteCertSource::Acme if shares[i].is_some() => site_certs.push(Vec::new()),
                SiteCertSource::Acme => {
                    let names: Vec<String> = site.hosts.iter().map(|h| h.to_string()).collect();
                    let stored = acme::manager::stored(storage.as_ref(), &names);
                    if stored.is_none() {
                        tracing::info!(site = site.name, "no certificate yet: ordering one from the ACME CA; handshakes for it fail until then");
                    }
                    site_certs.push(stored.iter().cloned().collect());
                    acme_sites.push((site_certs.len() - 1, names, stored));
                }
            }
        }

        // 3. TLS configs.
        let shared = TlsShared::new(&TlsOptions {
            profile: config.tls.profile,
            session_tickets: config.tls.session_tickets,
            ticket_rotation_secs: config.tls.ticket_rotation.as_secs().min(u32::MAX as u64) as u32,
            session_cache_size: config.tls.session_cache_size,
            http2: config.http.http2,
            prefer_server_order: config.tls.prefer_server_order,
            early_data: config.sites.iter().any(|s| s.early_data),
        })
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
        let mut configs = Vec::new();
        let mut certs = Vec::new();
        let mut sni = NameTable::default();
        let named = config
            .on_demand
            .as_ref()
            .map(|od| (od.site, Arc::new(NamedCerts::default())));
        for (i, (site, loaded)) in config.sites.iter().zip(&site_certs).enumerate() {
            let resolver = Arc::new(SiteCerts::new(
                loaded.iter().map(|l| l.certified.clone()).collect(),
            ));
            let serving: Arc<dyn rustls::server::ResolvesServerCert> = match &named {
                Some((s, named)) if *s == i => Arc::new(WithNamed {
                    named: named.clone(),
                    site: resolver.clone(),
                }),
                _ => resolver.clone(),
            };
            configs.push(
                shared
                    .site_config(
                        serving,
                        site.early_data,
                        site.require_post_quantum,
                        site.client_auth.as_ref().map(|c| c.verifier.clone()),
                    )
                    .map_err(|e| format!("site {:?}: TLS set-up failed: {e}", site.name))?,
            );
            certs.push(resolver);
            for h in &site.hosts {
                sni.insert(h, i);
            }
        }
        // Streams: their certificates' resolvers follow the sites' in `certs`; each route
        // gets a config of its own (its ALPN), on its certificate's resolver.
        let mut stream_services = Vec::new();
        let mut next = config.sites.len();
        for stream in &config.streams {
            let base = next;
            for _ in &stream.certs {
                certs.push(match shares[next] {
                    Some(j) => certs[j].clone(),
                    None => Arc::new(SiteCerts::new(
                        site_certs[next]
                            .iter()
                            .map(|l| l.certified.clone())
                            .collect(),
                    )),
                });
                next += 1;
            }
            let svc = StreamService::new(stream, |cert, alpn| {
                let resolver = certs[base + cert].clone();
                let config = shared
                    .stream_config(resolver.clone(), alpn)
                    .map_err(|e| format!("stream {:?}: TLS set-up failed: {e}", stream.name))?;
                Ok((config, resolver))
            })?;
            stream_services.push(Arc::new(svc));
        }
        let challenges = acme::Challenges {
            dns: config.acme.dns_hook.as_ref().map(|h| {
                Arc::new(acme::dns::DnsHook {
                    command: h.command.clone(),
                    propagation: h.propagation,
                    timeout: h.timeout,
                })
            }),
            ..Default::default()
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let on_demand = match (&config.on_demand, &named) {
            (Some(settings), Some((_, named))) => Some(
                acme::on_demand::spawn(
                    settings.clone(),
                    named.clone(),
                    config.acme.clone(),
                    storage.clone(),
                    challenges.clone(),
                    shutdown_rx.clone(),
                )
                .map_err(|e| format!("cannot start the on-demand TLS thread: {e}"))?,
            ),
            _ => None,
        };
        let tls = TlsFront {
            configs,
            certs,
            sni,
            default_site: config.default_site,
            unknown_sni: config.tls.unknown_sni,
            on_demand,
        };

        // Proxy routes run their health checks and pool upkeep on a thread of their own.
        let upstreams = if config.sites.iter().any(|s| {
            s.routes
                .iter()
                .any(|r| matches!(r.handler, crate::config::model::Handler::Proxy(_)))
        }) {
            Some(upstream_runtime(shutdown_rx.clone())?)
        } else {
            None
        };
        let entered = upstreams.as_ref().map(|h| h.enter());
        let mut front = Frontend::new(
            &config,
            https_port,
            challenges.http01.clone(),
            shutdown_rx.clone(),
        )?;
        drop(entered);
        front.on_demand = named;
        let front = Arc::new(front);
        let (placement, inboxes) = placement::Placement::new(config.workers);
        let state = Arc::new(ServerState {
            front,
            tls,
            tls_alpn: challenges.tls_alpn.clone(),
            limits: config.limits.clone(),
            placement,
            proxy_accept: config.proxy_accept.clone(),
            streams: stream_services,
            stream_cert_names: owners[config.sites.len()..]
                .iter()
                .map(|o| o.name.clone())
                .collect(),
            open: AtomicUsize::new(0),
            drained: Notify::new(),
        });

        // 4. Workers.
        let mut workers = Vec::new();
        // Each worker takes its own socket of every address's group.
        let take_own = |groups: &mut Vec<Vec<TcpListener>>| -> Vec<TcpListener> {
            groups.iter_mut().filter_map(|g| g.pop()).collect()
        };
        for (n, inbox) in inboxes.into_iter().enumerate() {
            let mut listeners: Vec<(ListenerKind, TcpListener)> = Vec::new();
            listeners.extend(
                take_own(&mut https)
                    .into_iter()
                    .map(|l| (ListenerKind::Https, l)),
            );
            listeners.extend(
                take_own(&mut http)
                    .into_iter()
                    .map(|l| (ListenerKind::Http, l)),
            );
            for (i, group) in &mut streams_l {
                if let Some(l) = group.pop() {
                    listeners.push((ListenerKind::Stream(*i), l));
                }
            }
            let state = state.clone();
            let rx = shutdown_rx.clone();
            let ctx = Arc::new(WorkerCtx::new(&config));
            let shutdown_timeout = config.limits.shutdown_timeout;
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-w{n}"))
                .spawn(move || worker(n, listeners, inbox, state, ctx, rx, shutdown_timeout))
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
            workers.push(handle);
        }

        // 5. ACME: order missing certificates, renew all, swap them in as they come.
        let renew = Arc::new(RenewRequests::default());
        let acme_names: Vec<usize> = acme_sites.iter().map(|(i, _, _)| *i).collect();
        if !acme_sites.is_empty() {
            let sites = acme_sites
                .into_iter()
                .map(|(i, names, stored)| {
                    let site = acme::manager::AcmeSite {
                        name: owners[i].name.clone(),
                        names,
                        certs: state.tls.certs[i].clone(),
                        profile: owners[i].acme_profile.clone(),
                    };
                    (site, stored)
                })
                .collect();
            acme::manager::spawn(
                config.acme.clone(),
                storage.clone(),
                sites,
                challenges.clone(),
                renew.clone(),
                shutdown_rx.clone(),
            )
            .map_err(|e| format!("cannot start the ACME thread: {e}"))?;
        }

        // 6. OCSP: staple a verified response for every certificate that names a responder.
        let mut staple_sites: Vec<StapleSite> = owners
            .iter()
            .enumerate()
            .filter(|(i, _)| shares[*i].is_none())
            .map(|(i, site)| StapleSite {
                name: site.name.clone(),
                certs: state.tls.certs[i].clone(),
                staple_files: site
                    .ocsp_staples
                    .iter()
                    .map(|f| (f.leaf.clone(), f.path.clone()))
                    .collect(),
                renew: acme_names.contains(&i).then(|| renew.clone()),
            })
            .collect();
        if let Some((site, named)) = &state.front.on_demand {
            staple_sites.push(StapleSite {
                name: format!("{} (on demand)", config.sites[*site].name),
                certs: named.clone(),
                staple_files: Vec::new(),
                renew: None,
            });
        }
        // No thread when nothing can ever be stapled: only file certificates, none naming a
        // responder or requiring a staple, and no staple files (saves ~1.5 MiB of RSS).
        let may_staple = !acme_names.is_empty()
            || state.front.on_demand.is_some()
            || owners.iter().enumerate().any(|(i, site)| {
                !site.ocsp_staples.is_empty()
                    || state.tls.certs[i].current().iter().any(|ck| {
                        ck.cert.first().is_some_and(|leaf| {
                            let info = crate::tls::ocsp::leaf_ocsp(leaf);
                            info.must_staple || (info.url.is_some() && config.tls.ocsp_stapling)
                        })
                    })
            });
        if may_staple {
            stapler::spawn(
                Stapler::new(staple_sites, storage.clone(), config.tls.ocsp_stapling),
                shutdown_rx.clone(),
            )
            .map_err(|e| format!("cannot start the OCSP stapler: {e}"))?;
        }

        // 7. Warn before any served certificate expires.
        crate::ops::expiry::spawn(state.clone(), shutdown_rx.clone())
            .map_err(|e| format!("cannot start the expiry monitor: {e}"))?;

        // 8. Keep local-CA leaves fresh without a restart.
        if let Some(ca) = local_ca {
            let state = state.clone();
            let hosts: Vec<_> = owners
                .iter()
                .map(|s| matches!(s.certs, SiteCertSource::LocalCa).then(|| s.hosts.to_vec()))
                .collect();
            let rx = shutdown_rx.clone();
            std::thread::Builder::new()
                .name("portcullis-localca".into())
                .spawn(move || renew_local_leaves(ca, hosts, state, rx))
                .map_err(|e| format!("cannot start renewal thread: {e}"))?;
        }

        Ok(Server {
            state,
            shutdown_tx,
            workers,
            https_addrs,
            http_addrs,
            stream_addrs,
            shutdown_timeout: config.limits.shutdown_timeout,
            local_ca_root,
            notes,
        })
    }

    /// Bound HTTPS addresses (with the real port when 0 was configured).
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    /// Bound plain-HTTP addresses.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// Bound addresses of the `[[stream]]` named `name` (empty for no such stream).
    pub fn stream_addrs(&self, name: &str) -> &[SocketAddr] {
        self.state
            .streams
            .iter()
            .position(|s| s.name == name)
            .map_or(&[], |i| &self.stream_addrs[i])
    }

    /// Shared state (for status and tests).
    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Stops accepting, lets in-flight requests finish up to the shutdown timeout, and returns
    /// once every worker has stopped (or the deadline passed).
    pub fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let deadline = Instant::now() + self.shutdown_timeout + Duration::from_secs(1);
        for w in self.workers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
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
}

fn worker(
    me: usize,
    listeners: Vec<(ListenerKind, TcpListener)>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<placement::Handoff>,
    state: Arc<ServerState>,
    ctx: Arc<WorkerCtx>,
    mut shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start worker runtime");
            return;
        }
    };
    state.placement.register(me);
    rt.block_on(async move {
        let accept = {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            move |listener: TcpListener, kind: ListenerKind, home: usize| {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        let at = Accepting { kind, home, me };
                        tokio::spawn(accept_loop(l, at, state.clone(), ctx.clone(), shutdown.clone()));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot register listener"),
                }
            }
        };
        for (kind, l) in listeners {
            accept(l, kind, me);
        }
        // Sockets of workers that do not accept now (see `placement`).
        {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.wait_for(|stop| *stop) => return,
                        h = inbox.recv() => match h {
                            Some(h) => accept(h.listener, h.kind, h.home),
                            None => return,
                        },
                    }
                }
            });
        }
        let _ = shutdown.wait_for(|stop| *stop).await;
        // Drain: in-flight requests finish; hyper closes idle keep-alive connections.
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        loop {
            let notified = state.drained.notified();
            if state.open_connections() == 0 {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(open = state.open_connections(), "shutdown deadline reached; closing remaining connections");
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
    kind: ListenerKind,
    /// The worker the socket was bound for.
    home: usize,
    /// The worker accepting from it now.
    me: usize,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    at: Accepting,
    state: Arc<ServerState>,
    ctx: Arc<WorkerCtx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Accepting { kind, home, me } = at;
    let max = state.limits.max_connections;
    let mut last_warn: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let (guard, n) = ConnGuard::new(&state);
                // Above the limit: a 503 for a while (cheap to tell), then plain refusal.
                if n > max.saturating_mul(2) || (kind != ListenerKind::Https && n > max) {
                    drop(tcp);
                    continue;
                }
                match kind {
                    // A load balancer in front: its header says whom the connection is from.
                    ListenerKind::Https | ListenerKind::Http
                        if state
                            .proxy_accept
                            .as_ref()
                            .is_some_and(|pa| pa.trusts(peer.ip())) =>
                    {
                        tokio::spawn(serve_proxied(
                            tcp,
                            peer,
                            kind,
                            state.clone(),
                            ctx.clone(),
                            shutdown.clone(),
                            n > max,
                            guard,
                        ));
                    }
                    ListenerKind::Https => {
                        tokio::spawn(conn::serve_tls(
                            tcp,
                            peer,
                            state.clone(),
                            ctx.clone(),
                            shutdown.clone(),
                            n > max,
                            guard,
                        ));
                    }
                    ListenerKind::Http => {
                        tokio::spawn(conn::serve_http(
                            tcp,
                            peer,
                            state.clone(),
                            ctx.clone(),
                            shutdown.clone(),
                            guard,
                        ));
                    }
                    ListenerKind::Stream(i) => {
                        let Some(slot) = state.streams[i].admit() else {
                            tracing::debug!(stream = state.streams[i].name, %peer, "max_connections reached: closing");
                            drop(tcp);
                            continue;
                        };
                        let timeout = state.limits.handshake_timeout;
                        tokio::spawn(async move {
                            let _guard = guard;
                            crate::stream::serve(tcp, peer, slot, timeout).await;
                        });
                    }
                }
                // Fewer workers accept now, or this socket's own worker accepts again: move.
                let placement = &state.placement;
                placement.after_accept();
                if placement.host_of(home) != me {
                    match listener.into_std() {
                        Ok(listener) => placement.hand_over(placement::Handoff {
                            listener,
                            kind,
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
    guard: ConnGuard,
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
