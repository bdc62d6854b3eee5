//! One configuration's worth of running server: certificates, TLS configs, the request side and
//! the background tasks that keep them fresh (ACME, OCSP, expiry warnings, local-CA renewals,
//! backend health). A reload builds a new generation beside the running one and swaps it in;
//! the old one's background tasks stop, and its connections finish on it.

use std::sync::Arc;

use tokio::sync::watch;

use super::{
    renew_local_leaves, upstream_runtime, ListenerKind, Process, ServerState, TlsFront, WorkerCtx,
};
use crate::acme::{self};
use crate::config::model::SiteCertSource;
use crate::config::Config;
use crate::http::Frontend;
use crate::storage::Storage;
use crate::stream::StreamService;
use crate::tls::certs::LoadedCert;
use crate::tls::local_ca::{self, LocalCa};
use crate::tls::names::NameTable;
use crate::tls::resolver::{NamedCerts, SiteCerts, WithNamed};
use crate::tls::stapler::{self, RenewRequests, StapleSite, Stapler};
use crate::tls::{TlsOptions, TlsShared};

/// The TLS settings every site shares, and what they were made from (a reload with the same
/// settings keeps them, and with them the ticket keys and session caches).
pub type SharedTls = Arc<(TlsShared, TlsOptions)>;

/// What a generation is built from besides its configuration.
pub(super) struct Inputs<'a> {
    pub https_port: u16,
    /// The UDP port HTTP/3 is advertised on (`Alt-Svc`), when an HTTP/3 socket is bound.
    pub h3_port: Option<u16>,
    pub process: &'a Process,
    pub workers: usize,
    /// Listener id → what it serves in this generation.
    pub listeners: Vec<(u64, ListenerKind)>,
    /// The running generation's shared TLS state, if any.
    pub prev: Option<&'a SharedTls>,
    /// The running generation's per-client table, if any.
    pub prev_limits: Option<&'a Arc<crate::server::limits::ClientLimits>>,
    /// Where the local CA's root is written, when a site uses it.
    pub local_ca_root: &'a mut Option<std::path::PathBuf>,
}

/// Builds a generation and starts its background tasks. On error nothing keeps running: the
/// tasks already started are told to stop.
pub(super) fn build(config: &Config, inputs: Inputs<'_>) -> Result<Arc<ServerState>, String> {
    let (retire_tx, retire_rx) = watch::channel(false);
    let built = build_inner(config, inputs, &retire_tx, &retire_rx);
    if built.is_err() {
        let _ = retire_tx.send(true);
    }
    built
}

fn build_inner(
    config: &Config,
    inputs: Inputs<'_>,
    retire_tx: &watch::Sender<bool>,
    retire_rx: &watch::Receiver<bool>,
) -> Result<Arc<ServerState>, String> {
    let Inputs {
        https_port,
        h3_port,
        process,
        workers,
        listeners,
        prev,
        prev_limits,
        local_ca_root,
    } = inputs;
    let prev = prev.map(|p| (&p.1, p));
    // Logs: the TLS event log is opened now and installed (process-wide) once the whole
    // generation stands. Access logs open with the Frontend.
    let events = match &config.log.tls_events {
        Some(t) => Some(
            crate::ops::logfile::open(t)
                .map_err(|e| format!("cannot open the TLS event log {t}: {e}"))?,
        ),
        None => None,
    };
    // 2. Certificates: files were loaded by validation; local names get a local-CA leaf.
    let storage: Arc<dyn Storage> = crate::storage::open(config)?;
    let mut acme_sites = Vec::new();
    let mut local_ca: Option<LocalCa> = None;
    let mut site_certs: Vec<Vec<LoadedCert>> = Vec::new();
    // Sites' certificates, then streams' (same sources, renewals and monitoring).
    let owners = super::cert_owners(config);
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
                    *local_ca_root = Some(local_ca::root_cert_path(&config.data_dir));
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

    let loaded_events: Vec<_> = owners
        .iter()
        .zip(&site_certs)
        .flat_map(|(site, loaded)| {
            let source = match site.certs {
                SiteCertSource::Files(_) => crate::ops::events::CertSource::File,
                SiteCertSource::LocalCa => crate::ops::events::CertSource::LocalCa,
                SiteCertSource::Acme => crate::ops::events::CertSource::Acme,
            };
            loaded.iter().map(move |l| {
                let mut names = l.info.dns_names.clone();
                names.extend(l.info.ips.iter().map(|ip| ip.to_string()));
                (site.name.clone(), source, names, l.info.not_after)
            })
        })
        .collect();

    // 3. TLS configs.
    let options = TlsOptions {
        profile: config.tls.profile,
        session_tickets: config.tls.session_tickets,
        ticket_rotation_secs: config.tls.ticket_rotation.as_secs().min(u32::MAX as u64) as u32,
        session_cache_size: config.tls.session_cache_size,
        http2: config.http.http2,
        prefer_server_order: config.tls.prefer_server_order,
        early_data: config.sites.iter().any(|s| s.early_data),
    };
    // Same TLS settings as the running generation: its ticket keys and session caches are
    // kept, so clients resume across a reload.
    let tls_shared = match prev {
        Some((options_then, shared)) if *options_then == options => shared.clone(),
        _ => {
            let mut shared =
                TlsShared::new(&options).map_err(|e| format!("TLS set-up failed: {e}"))?;
            // Instances sharing a store share ticket keys: a ticket from any resumes on all.
            if storage.shared() && options.session_tickets {
                shared.share_tickets(crate::tls::tickets::shared_ticketer(
                    storage.clone(),
                    options.ticket_rotation_secs,
                )?);
            }
            Arc::new((shared, options))
        }
    };
    let shared_tls = &tls_shared.0;
    let mut configs = Vec::new();
    let mut certs = Vec::new();
    let mut sni = NameTable::default();
    // HTTP/3: per site, the certificates QUIC handshakes use (`None`: not served over QUIC).
    let mut quic_sites: Vec<Option<Arc<dyn rustls::server::ResolvesServerCert>>> = Vec::new();
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
        quic_sites.push((site.http3 && site.client_auth.is_none()).then(|| serving.clone()));
        configs.push(
            shared_tls
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
            let config = shared_tls
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
        shared: storage.shared().then(|| storage.clone()),
        http01: match storage.shared() {
            true => Arc::new(acme::Http01Tokens::with_shared(storage.clone())),
            false => Arc::default(),
        },
        ..Default::default()
    };
    if !acme_sites.is_empty() || config.on_demand.is_some() {
        acme::follow(challenges.clone(), retire_rx.clone())
            .map_err(|e| format!("cannot start the shared-challenge thread: {e}"))?;
    }
    let on_demand = match (&config.on_demand, &named) {
        (Some(settings), Some((_, named))) => Some(
            acme::on_demand::spawn(
                settings.clone(),
                named.clone(),
                config.acme.clone(),
                storage.clone(),
                challenges.clone(),
                retire_rx.clone(),
            )
            .map_err(|e| format!("cannot start the on-demand TLS thread: {e}"))?,
        ),
        _ => None,
    };
    let quic = match h3_port {
        Some(_) if config.http.http3 => {
            let early = config
                .sites
                .iter()
                .zip(&quic_sites)
                .any(|(s, q)| s.early_data && q.is_some());
            let certs = Arc::new(crate::tls::quic::QuicCerts {
                sni: sni.clone(),
                sites: quic_sites,
                default_site: config.default_site,
                unknown_to_default: config.tls.unknown_sni
                    == crate::config::model::UnknownSni::DefaultSite,
                on_demand: named.clone(),
            });
            let tls = shared_tls
                .quic_config(certs.clone(), early)
                .map_err(|e| format!("HTTP/3: TLS set-up failed: {e}"))?;
            Some(crate::server::quic::QuicFront::new(
                config,
                &process.quic,
                tls,
                certs,
            )?)
        }
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
        Some(upstream_runtime(retire_rx.clone())?)
    } else {
        None
    };
    let entered = upstreams.as_ref().map(|h| h.enter());
    let mut front = Frontend::new(
        config,
        https_port,
        quic.as_ref().and(h3_port),
        challenges.http01.clone(),
        retire_rx.clone(),
    )?;
    drop(entered);
    front.on_demand = named;
    front.open_hsts_ramps(config, &storage);
    let front = Arc::new(front);
    let ctxs = (0..workers)
        .map(|_| Arc::new(WorkerCtx::new(config)))
        .collect();
    let state = Arc::new(ServerState {
        front,
        tls,
        quic,
        tls_alpn: challenges.tls_alpn.clone(),
        limits: config.limits.clone(),
        placement: process.placement.clone(),
        proxy_accept: config.proxy_accept.clone(),
        streams: stream_services,
        stream_cert_names: owners[config.sites.len()..]
            .iter()
            .map(|o| o.name.clone())
            .collect(),
        storage: Some(storage.clone()),
        conns: process.conns.clone(),
        retire: retire_tx.clone(),
        listeners,
        ctxs,
        tls_shared: Some(tls_shared.clone()),
        client_limits: match prev_limits {
            Some(old) => {
                crate::server::limits::ClientLimits::carry_over(old, &config.limits.per_client)
            }
            None => crate::server::limits::ClientLimits::new(&config.limits.per_client),
        },
    });

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
            retire_rx.clone(),
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
            retire_rx.clone(),
        )
        .map_err(|e| format!("cannot start the OCSP stapler: {e}"))?;
    }

    // 7. Warn before any served certificate expires.
    crate::ops::expiry::spawn(state.clone(), retire_rx.clone())
        .map_err(|e| format!("cannot start the expiry monitor: {e}"))?;

    // 7b. Staged HSTS: advance each ramp while its site's certificates are fine.
    crate::ops::hsts::spawn(state.clone(), retire_rx.clone())
        .map_err(|e| format!("cannot start the HSTS ramp thread: {e}"))?;

    // 8. Keep local-CA leaves fresh without a restart.
    if let Some(ca) = local_ca {
        let state = state.clone();
        let hosts: Vec<_> = owners
            .iter()
            .map(|s| matches!(s.certs, SiteCertSource::LocalCa).then(|| s.hosts.to_vec()))
            .collect();
        let rx = retire_rx.clone();
        std::thread::Builder::new()
            .name("portcullis-localca".into())
            .spawn(move || renew_local_leaves(ca, hosts, state, rx))
            .map_err(|e| format!("cannot start renewal thread: {e}"))?;
    }

    crate::ops::limit::set_lines_per_second(config.log.lines_per_second);
    crate::ops::events::install(events);
    for (site, source, names, not_after) in loaded_events {
        crate::ops::events::certificate_loaded(&site, source, &names, not_after, false);
    }
    Ok(state)
}
