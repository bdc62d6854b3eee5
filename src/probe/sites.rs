//! `portcullis probe --config FILE`: every site of a config probed from the outside, as a
//! check after a deploy. Each exact name and IP of each site is one probe, at the config's
//! public HTTPS port (and its plain-HTTP port for the redirect check); wildcards are listed as
//! not probed, since no single name stands for them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::report::Report;
use super::Options;
use crate::config::model::SiteCertSource;
use crate::config::validate::{Mode, Overrides};
use crate::tls::names::HostPattern;

/// One probe to run for a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteProbe {
    /// The `[[site]]` it belongs to.
    pub site: String,
    /// `https://name:port/`.
    pub target: String,
    /// Trust for it: `--ca`, or the local CA's root for sites it issues for.
    pub ca: Option<PathBuf>,
    pub http_port: Option<u16>,
    /// The config's ACME directory (`acme.ca`), for the CAA check.
    pub acme_directory: String,
}

/// What probing a config found.
#[derive(Debug, Serialize)]
pub struct ConfigReport {
    pub config: String,
    pub reports: Vec<Report>,
    /// Names not probed, with why (wildcards).
    pub skipped: Vec<String>,
}

impl ConfigReport {
    /// The worst exit code of its probes (0 when there were none).
    pub fn exit_code(&self) -> i32 {
        self.reports
            .iter()
            .map(Report::exit_code)
            .max()
            .unwrap_or(0)
    }

    pub fn render(&self, colour: bool) -> String {
        let mut out = String::new();
        for r in &self.reports {
            out.push_str(&r.render(colour));
            out.push('\n');
        }
        for s in &self.skipped {
            out.push_str(&format!("not probed: {s}\n"));
        }
        let count = |code: i32| {
            self.reports
                .iter()
                .filter(|r| r.exit_code() == code)
                .count()
        };
        out.push_str(&format!(
            "{}: {} name(s) probed: {} good, {} with warnings, {} with errors, {} could not connect\n",
            self.config,
            self.reports.len(),
            count(0),
            count(1),
            count(2),
            count(3)
        ));
        out
    }
}

/// The probes a config asks for, and the names left out.
pub fn plan(path: &Path, ca: Option<&Path>) -> Result<(Vec<SiteProbe>, Vec<String>), String> {
    // As `serve` reads it (no listener checks: the server is expected to hold its ports; an
    // expired certificate is the probe's to report).
    let (config, _warnings) = crate::config::load(path, &Overrides::default(), Mode::Serve)
        .map_err(|problems| {
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
    let port = match config
        .listen
        .public_https_port
        .or_else(|| config.listen.https.first().map(|a| a.port()))
    {
        Some(0) | None => {
            return Err(format!(
                "{}: no fixed HTTPS port to probe (listen.https is empty or port 0); set [listen] public_https_port",
                path.display()
            ))
        }
        Some(p) => p,
    };
    let http_port = config
        .listen
        .http
        .first()
        .map(|a| a.port())
        .filter(|p| *p != 0);
    let local_root = crate::tls::local_ca::root_cert_path(&config.data_dir);
    let mut probes = Vec::new();
    let mut skipped = Vec::new();
    for site in &config.sites {
        let site_ca = match (ca, &site.certs) {
            (Some(ca), _) => Some(ca.to_path_buf()),
            (None, SiteCertSource::LocalCa) if local_root.exists() => Some(local_root.clone()),
            _ => None,
        };
        for host in &site.hosts {
            let authority = match host {
                HostPattern::Exact(name) => name.clone(),
                HostPattern::Ip(ip) if ip.is_ipv6() => format!("[{ip}]"),
                HostPattern::Ip(ip) => ip.to_string(),
                HostPattern::Wildcard(_) => {
                    skipped.push(format!(
                        "{host} (site {:?}): a wildcard; probe one of its names with portcullis probe NAME",
                        site.name
                    ));
                    continue;
                }
            };
            probes.push(SiteProbe {
                site: site.name.clone(),
                target: format!("https://{authority}:{port}/"),
                ca: site_ca.clone(),
                http_port,
                acme_directory: config.acme.directory.clone(),
            });
        }
    }
    Ok((probes, skipped))
}

/// Probes every site of the config at `path`, one after another (each probe's own steps run
/// concurrently where they can); `base` gives `--ip`, `--timeout` and the rest.
pub async fn run(path: &Path, base: &Options) -> Result<ConfigReport, String> {
    let (probes, skipped) = plan(path, base.ca.as_deref())?;
    let mut reports = Vec::with_capacity(probes.len());
    for p in probes {
        let opts = Options {
            target: p.target,
            ca: p.ca,
            http_port: p.http_port,
            acme_directory: base.acme_directory.clone().or(Some(p.acme_directory)),
            ..base.clone()
        };
        let mut report = super::run(&opts).await?;
        report.fact("site", p.site);
        reports.push(report);
    }
    Ok(ConfigReport {
        config: path.display().to_string(),
        reports,
        skipped,
    })
}
