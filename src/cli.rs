//! The `portcullis` command: `serve`, `check`, `trust`.
//!
//! Every way of configuring (file, quick-mode flags, zero-config) builds one [`RawConfig`] that
//! goes through the same validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use toml::Spanned;

use crate::config::raw::{RawConfig, RawRespond, RawRoute, RawSite};
use crate::config::validate::{self, Mode, Overrides};
use crate::config::{self, Problem, Severity, Source};
use crate::server::Server;
use crate::tls::local_ca::{self, LocalCa};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "A secure-by-default HTTPS front door: TLS, HTTP/1.1 + HTTP/2, redirects, static files."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve HTTPS (zero-config: https://localhost with a local CA).
    Serve(ServeArgs),
    /// Validate everything `serve` would load, print each problem with a fix; exit 0 when clean.
    Check(ServeArgs),
    /// Install the local CA's root into the system trust store and the browsers' own
    /// (Firefox, Chromium/Chrome; needs certutil), or remove it, or print it.
    Trust(TrustArgs),
    /// List every site's certificates: names, issuer, expiry, next renewal, last ACME error.
    Certs(ServeArgs),
    /// Revoke a site's ACME certificate at its CA; the next start orders a new one.
    Revoke(RevokeArgs),
    /// Print each site's SPKI pins (RFC 7469): the current key's, and for ACME sites the
    /// pre-generated key the next renewal will use.
    Pins(ServeArgs),
    /// Read a password from stdin (its first line) and print its argon2id hash, for
    /// `basic_auth` users and htpasswd files.
    HashPassword,
    /// Tell the running server to re-read its configuration (as SIGHUP does) and print what
    /// it found: applied, or refused with every problem (the old configuration keeps serving).
    Reload(ServeArgs),
    /// Replace the running server by the binary on disk without dropping a connection: the
    /// new process takes over the listening sockets, the old one finishes its connections.
    Upgrade(ServeArgs),
    /// Diagnose an HTTPS endpoint: DNS, TCP, the TLS handshake and the certificate chain, each
    /// with the browser error it causes, the likely cause and the fix. Exit code 0: good,
    /// 1: warnings, 2: errors, 3: could not connect.
    Probe(ProbeArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// `https://host[:port]`, `host` or `host:port`.
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    target: Option<String>,
    /// Probe every site of this config (each name at the config's HTTPS port), as a check
    /// after a deploy.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Connect to this address instead of resolving the name.
    #[arg(long, value_name = "ADDR")]
    ip: Option<std::net::IpAddr>,
    /// The name to send as SNI (default: the target's host).
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// Trust the roots in this PEM file instead of the public ones (a private CA).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Every fact and check as JSON.
    #[arg(long)]
    json: bool,
    /// Time allowed for each step (DNS, connect, handshake).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    timeout: humantime::Duration,
    /// The plain-HTTP port whose redirects to HTTPS are checked (default: 80 when the target
    /// is on port 443).
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    /// Look names up at these nameservers (UDP and TCP; port 53 unless given) instead of the
    /// system's (/etc/resolv.conf); repeatable or comma-separated.
    #[arg(long, value_name = "ADDR[:PORT]", value_delimiter = ',', value_parser = crate::probe::dns::parse_nameserver)]
    dns: Vec<SocketAddr>,
    /// The ACME CA whose issuance the CAA records must allow: "production", "staging" (Let's
    /// Encrypt) or a directory URL, as acme.ca in the config (default: production).
    #[arg(long, value_name = "URL", value_parser = crate::probe::readiness::parse_directory)]
    acme_ca: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    /// Config file (TOML). Without it, quick mode: the flags below, or zero-config localhost.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Quick mode: a host name to serve (repeatable). Default: the certificate's names, or localhost.
    #[arg(long, value_name = "NAME")]
    domain: Vec<String>,
    /// Quick mode: certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Quick mode: private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Quick mode: serve static files from this directory (default: a welcome page).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Quick mode: pass requests under PREFIX to a backend, PREFIX removed
    /// (`/api=http://127.0.0.1:8080`; repeatable; any upstream URL a config takes).
    #[arg(long, value_name = "PREFIX=URL")]
    proxy: Vec<String>,
    /// HTTPS port for every HTTPS listener (default 443).
    #[arg(long, value_name = "PORT")]
    https_port: Option<u16>,
    /// Plain-HTTP (redirect) port (default 80).
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    /// HTTPS listen address IP:PORT (repeatable); replaces the config's.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Plain-HTTP listen address IP:PORT (repeatable).
    #[arg(long, value_name = "ADDR")]
    http_listen: Vec<SocketAddr>,
    /// Do not listen for plain HTTP at all.
    #[arg(long)]
    no_http: bool,
    /// Worker threads (default: number of CPUs; no more of them take new connections than
    /// the CPUs their affinity allows).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Data directory (local CA, state).
    #[arg(long, value_name = "DIR", env = "PORTCULLIS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// check: treat warnings as errors.
    #[arg(long)]
    strict: bool,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// The site whose certificate to revoke.
    #[arg(long, value_name = "NAME")]
    site: String,
    /// unspecified, key-compromise, superseded, cessation-of-operation, affiliation-changed.
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
}

#[derive(Args, Debug)]
struct TrustArgs {
    /// Only print the root certificate (PEM) to stdout.
    #[arg(long)]
    print: bool,
    /// Remove the root from the system trust store and the browsers' instead.
    #[arg(long, conflicts_with = "print")]
    uninstall: bool,
    /// Only the browsers' stores (Firefox profiles, Chromium/Chrome) of this user ($HOME), not
    /// the system store (which needs root).
    #[arg(long, conflicts_with = "print")]
    browsers_only: bool,
    /// Data directory holding the local CA.
    #[arg(long, value_name = "DIR", env = "PORTCULLIS_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Check(a) => check(a),
        Command::Trust(a) => trust(a),
        Command::Certs(a) => certs(a),
        Command::Revoke(a) => revoke(a),
        Command::Pins(a) => pins(a),
        Command::HashPassword => hash_password(),
        Command::Reload(a) => control(a, "/reload"),
        Command::Upgrade(a) => control(a, "/upgrade"),
        Command::Probe(a) => probe(a),
    }
}

/// `portcullis probe`: one endpoint, or every site of a config.
fn probe(a: ProbeArgs) -> i32 {
    use std::io::IsTerminal;
    let opts = crate::probe::Options {
        target: a.target.unwrap_or_default(),
        ip: a.ip,
        sni: a.sni,
        ca: a.ca,
        timeout: a.timeout.into(),
        http_port: a.http_port,
        progress: !a.json && std::io::stderr().is_terminal(),
        dns: a.dns,
        acme_directory: a.acme_ca,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis probe: cannot start: {e}");
            return 3;
        }
    };
    let outcome: Result<Box<dyn crate::probe::Outcome>, String> = match &a.config {
        Some(path) => rt
            .block_on(crate::probe::sites::run(path, &opts))
            .map(|r| Box::new(r) as Box<dyn crate::probe::Outcome>),
        None => rt
            .block_on(crate::probe::run(&opts))
            .map(|r| Box::new(r) as Box<dyn crate::probe::Outcome>),
    };
    match outcome {
        Ok(o) => {
            if a.json {
                match o.json() {
                    Ok(j) => println!("{j}"),
                    Err(e) => eprintln!("portcullis probe: {e}"),
                }
            } else {
                print!("{}", o.render(std::io::stdout().is_terminal()));
            }
            o.exit_code()
        }
        Err(e) => {
            eprintln!("portcullis probe: {e}");
            3
        }
    }
}

fn hash_password() -> i32 {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    // From a terminal: a prompt, and the typing not echoed (restored afterwards).
    let echo = stdin
        .is_terminal()
        .then(|| rustix::termios::tcgetattr(&stdin).ok())
        .flatten();
    if let Some(t) = &echo {
        let mut quiet = t.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
        eprint!("Password: ");
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &echo {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, t);
        eprintln!();
    }
    if let Err(e) = read {
        eprintln!("error: cannot read the password from stdin: {e}");
        return 1;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("error: the password is empty\n  fix: give the password on stdin, e.g. `printf '%s' \"$PASSWORD\" | portcullis hash-password`");
        return 1;
    }
    match crate::http::access::basic::hash_password(password.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

const WELCOME: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>portcullis</title></head>\n<body style=\"font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto\">\n<h1>portcullis is running</h1>\n<p>This page is served over HTTPS with a certificate from portcullis's local CA.\nServe your own files with <code>portcullis serve --root DIR</code>, or write a config file\n(see <code>portcullis.example.toml</code>).</p>\n</body></html>\n";

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

/// Builds the raw config: from the file, or from quick-mode flags.
fn load_raw(a: &ServeArgs) -> Result<(RawConfig, Source), Problem> {
    if let Some(path) = &a.config {
        if !a.domain.is_empty()
            || a.cert.is_some()
            || a.key.is_some()
            || a.root.is_some()
            || !a.proxy.is_empty()
        {
            return Err(Problem::error(
                config::Location::Flag("--config".into()),
                "--config cannot be combined with --domain/--cert/--key/--root/--proxy",
            )
            .fix("put the site into the config file, or drop --config"));
        }
        return config::parse_file(path);
    }
    let mut hosts: Vec<String> = a.domain.clone();
    if hosts.is_empty() {
        match &a.cert {
            // An unreadable certificate is reported by validation; "localhost" only keeps a
            // second, misleading "no hosts" error out of that report.
            Some(cert) => {
                hosts = crate::tls::certs::names_in_pem_file(cert)
                    .unwrap_or_else(|| vec!["localhost".into()])
            }
            None => hosts = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
    let name = hosts
        .first()
        .map(|h| h.trim_start_matches("*.").to_string())
        .unwrap_or_else(|| "default".into());
    let path_str = |p: &Path| p.to_string_lossy().into_owned();
    let mut site = RawSite {
        name: sp(name),
        hosts: sp(hosts.into_iter().map(sp).collect()),
        cert: a.cert.as_deref().map(|p| sp(path_str(p))),
        key: a.key.as_deref().map(|p| sp(path_str(p))),
        root: a.root.as_deref().map(|p| sp(path_str(p))),
        ..Default::default()
    };
    for p in &a.proxy {
        let Some((prefix, url)) = p.split_once('=') else {
            return Err(Problem::error(
                config::Location::Flag("--proxy".into()),
                format!("--proxy {p:?} is not PREFIX=URL"),
            )
            .fix("write it as --proxy /api=http://127.0.0.1:8080"));
        };
        site.routes.push(RawRoute {
            path: sp(prefix.to_string()),
            proxy: Some(sp(crate::config::proxy::RawProxy {
                upstreams: sp(vec![sp(crate::config::proxy::RawUpstream::Url(
                    url.to_string(),
                ))]),
                policy: None,
                tls: None,
                health: None,
                passive: None,
                timeouts: None,
                retries: None,
                retry_non_idempotent: None,
                pool: None,
                trusted_proxies: None,
                host: None,
                request_headers: None,
                response_headers: None,
                via: None,
                backend_headers_win: None,
                max_body: None,
                websocket: None,
                compress: None,
                strip_prefix: Some(true),
            })),
            ..Default::default()
        });
    }
    if a.root.is_none() {
        site.routes.push(RawRoute {
            path: sp("/".into()),
            respond: Some(sp(RawRespond {
                status: None,
                body: Some(WELCOME.into()),
                content_type: Some(sp("text/html; charset=utf-8".into())),
            })),
            ..Default::default()
        });
    }
    Ok((
        RawConfig {
            sites: vec![site],
            ..Default::default()
        },
        Source::Flags,
    ))
}

fn overrides(a: &ServeArgs) -> Overrides {
    Overrides {
        https_port: a.https_port,
        http_port: a.http_port,
        https_listen: a.listen.clone(),
        http_listen: a.http_listen.clone(),
        no_http: a.no_http,
        workers: a.workers,
        data_dir: a.data_dir.clone(),
        log_level: a.log_level.clone(),
    }
}

fn print_problems(problems: &[Problem]) {
    for p in problems {
        eprintln!("{p}");
    }
}

fn serve(a: ServeArgs) -> i32 {
    let (raw, source) = match load_raw(&a) {
        Ok(x) => x,
        Err(p) => {
            eprintln!("{p}");
            return 1;
        }
    };
    let (config, warnings) = match validate::validate(raw, &source, &overrides(&a), Mode::Serve) {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&problems);
            let n = problems.iter().filter(|p| p.is_error()).count();
            eprintln!("portcullis: not starting: {n} error(s) in the configuration (run `portcullis check` for the same report)");
            return 1;
        }
    };
    crate::ops::init_logging(&config.log_level);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let sites: Vec<String> = config
        .sites
        .iter()
        .map(|s| {
            format!(
                "{} ({})",
                s.name,
                s.hosts
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let first_host = config
        .sites
        .get(config.default_site)
        .and_then(|s| s.hosts.first())
        .map(|h| h.to_string())
        .unwrap_or_else(|| "localhost".into());
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return 1;
        }
    };
    let watched = crate::ops::reload::cert_files(&config);
    let data_dir = config.data_dir.clone();
    let server = match Server::start(config) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("portcullis: {e}");
            return 1;
        }
    };
    let load_args = a.clone();
    let reloader = crate::ops::reload::Reloader::new(
        server.clone(),
        watched,
        Box::new(move || {
            let (raw, source) = load_raw(&load_args).map_err(|p| vec![p])?;
            validate::validate(raw, &source, &overrides(&load_args), Mode::Serve)
        }),
    );
    for n in &server.notes {
        tracing::warn!("{n}");
    }
    for addr in server.https_addrs() {
        eprintln!("portcullis: listening on https://{addr}");
    }
    for addr in server.http_addrs() {
        eprintln!("portcullis: listening on http://{addr} (redirects to HTTPS)");
    }
    eprintln!("portcullis: serving {}", sites.join("; "));
    if let Some(port) = server.https_addrs().first().map(|a| a.port()) {
        let host = if first_host.contains(':') {
            format!("[{first_host}]")
        } else {
            first_host
        };
        let suffix = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        eprintln!("portcullis: open https://{host}{suffix}/");
    }
    if let Some(root) = &server.local_ca_root {
        eprintln!(
            "portcullis: certificates for local names come from the local CA; its root is {}",
            root.display()
        );
        eprintln!(
            "portcullis: trust it with `portcullis trust` (system store) or `curl --cacert {}`",
            root.display()
        );
    }
    if let Some(admin) = server.admin() {
        admin.set_control(reloader.control());
    }
    // A process started by `portcullis upgrade` tells its predecessor that it serves now.
    crate::ops::reload::notify_upgraded();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    reloader.watch_files(watching.clone());
    crate::ops::systemd::ready();
    let handed_over = signals.run(&reloader, &data_dir);
    watching.store(true, std::sync::atomic::Ordering::Relaxed);
    if handed_over {
        tracing::info!("handed over to the new process: finishing in-flight requests");
        server.hand_over();
    } else {
        crate::ops::systemd::stopping();
        tracing::info!("shutting down: finishing in-flight requests");
        server.shutdown();
    }
    crate::ops::logfile::flush_all(std::time::Duration::from_secs(5));
    tracing::info!("stopped");
    0
}

/// `portcullis reload` / `portcullis upgrade`: asks the running server through its control
/// socket and prints its answer. Exit codes: 0 done, 1 refused or failed, 3 no server answered.
fn control(a: ServeArgs, path: &str) -> i32 {
    let data_dir = data_dir_of(&a);
    match crate::ops::control::request(&data_dir, path) {
        Ok((status, report)) => {
            eprint!("{report}");
            if status.is_success() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            3
        }
    }
}

/// The data directory `serve` with these arguments uses (flag, the config's `data_dir`
/// relative to the config file, or the default), without validating the rest: a reload must
/// reach the server even when the config on disk is broken (the server reports why).
fn data_dir_of(a: &ServeArgs) -> PathBuf {
    if let Some(d) = &a.data_dir {
        return d.clone();
    }
    if let Some(path) = &a.config {
        // Only `data_dir` is read, leniently: the rest may be what the server will refuse.
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let from_toml = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("data_dir")?.as_str().map(str::to_owned));
        let from_line = || {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "data_dir").then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        if let Some(d) = from_toml.or_else(from_line) {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                return d;
            }
            return path.parent().unwrap_or(Path::new(".")).join(d);
        }
    }
    crate::storage::default_data_dir()
}

/// SIGTERM/SIGINT/SIGHUP/SIGUSR1/SIGUSR2 handlers, installed before the server starts so that a
/// signal that arrives during start-up is a graceful stop, not the default "killed".
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    /// Reopen the log files (logrotate).
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the signal handler: {e}"))?;
        let _guard = rt.enter();
        let err = |e: std::io::Error| format!("cannot install signal handlers: {e}");
        let term = signal(SignalKind::terminate()).map_err(err)?;
        let int = signal(SignalKind::interrupt()).map_err(err)?;
        let hup = signal(SignalKind::hangup()).map_err(err)?;
        let usr2 = signal(SignalKind::user_defined2()).map_err(err)?;
        let usr1 = signal(SignalKind::user_defined1()).map_err(err)?;
        drop(_guard);
        Ok(Signals {
            rt,
            term,
            int,
            hup,
            usr2,
            usr1,
        })
    }

    /// Serves the control socket and the signals until the server is to stop: SIGTERM or
    /// SIGINT (`false`), or a binary upgrade (SIGUSR2 or `portcullis upgrade`) whose new
    /// process serves (`true`). SIGHUP reloads.
    fn run(
        mut self,
        reloader: &std::sync::Arc<crate::ops::reload::Reloader>,
        data_dir: &Path,
    ) -> bool {
        self.rt.block_on(async {
            crate::ops::control::serve(reloader.clone(), data_dir).await;
            loop {
                tokio::select! {
                    _ = self.term.recv() => { tracing::info!("SIGTERM received"); return false; }
                    _ = self.int.recv() => { tracing::info!("SIGINT received"); return false; }
                    _ = reloader.handed_over.notified() => return true,
                    _ = self.hup.recv() => {
                        let r = reloader.clone();
                        let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                    }
                    _ = self.usr2.recv() => {
                        tracing::info!("SIGUSR2 received: binary upgrade");
                        let r = reloader.clone();
                        match tokio::task::spawn_blocking(move || r.upgrade()).await {
                            Ok(Ok(_)) => return true,
                            Ok(Err(e)) => tracing::error!("binary upgrade failed: {e}"),
                            Err(e) => tracing::error!("binary upgrade failed: {e}"),
                        }
                    }
                    _ = self.usr1.recv() => {
                        tracing::info!("SIGUSR1 received: reopening the log files");
                        crate::ops::logfile::reopen_all();
                    }
                }
            }
        })
    }
}

fn check(a: ServeArgs) -> i32 {
    let (raw, source) = match load_raw(&a) {
        Ok(x) => x,
        Err(p) => {
            eprintln!("{p}");
            return 1;
        }
    };
    let label = match &source {
        Source::File { path, .. } => path.display().to_string(),
        Source::Flags => "command line".into(),
    };
    match validate::validate(raw, &source, &overrides(&a), Mode::Check) {
        Ok((config, warnings)) => {
            print_problems(&warnings);
            for s in &config.sites {
                match s.certs {
                    crate::config::model::SiteCertSource::LocalCa => {
                        eprintln!("{label}: note: site {:?}: its certificate will be issued by the local CA ({})", s.name, local_ca::root_cert_path(&config.data_dir).display());
                    }
                    crate::config::model::SiteCertSource::Acme => {
                        eprintln!("{label}: note: site {:?}: its certificate will be obtained from the ACME CA {} (HTTP-01 on port 80)", s.name, config.acme.directory);
                    }
                    crate::config::model::SiteCertSource::Files(_) => {}
                }
            }
            for c in config.streams.iter().flat_map(|s| &s.certs) {
                match c.certs {
                    crate::config::model::SiteCertSource::LocalCa => {
                        eprintln!("{label}: note: {}: its certificate will be issued by the local CA ({})", c.name, local_ca::root_cert_path(&config.data_dir).display());
                    }
                    crate::config::model::SiteCertSource::Acme => {
                        eprintln!("{label}: note: {}: its certificate will be obtained from the ACME CA {} (HTTP-01 on port 80)", c.name, config.acme.directory);
                    }
                    crate::config::model::SiteCertSource::Files(_) => {}
                }
            }
            let certs: usize = config
                .sites
                .iter()
                .map(|s| {
                    if let crate::config::model::SiteCertSource::Files(f) = &s.certs {
                        f.len()
                    } else {
                        0
                    }
                })
                .sum();
            if a.strict && !warnings.is_empty() {
                eprintln!("{label}: {} warning(s) (--strict)", warnings.len());
                return 1;
            }
            println!(
                "{label}: OK ({} site(s), {certs} certificate(s), {} warning(s))",
                config.sites.len(),
                warnings.len()
            );
            0
        }
        Err(problems) => {
            print_problems(&problems);
            let errors = problems
                .iter()
                .filter(|p| p.severity == Severity::Error)
                .count();
            eprintln!(
                "{label}: {errors} error(s), {} warning(s)",
                problems.len() - errors
            );
            1
        }
    }
}

fn trust(a: TrustArgs) -> i32 {
    let data_dir = a.data_dir.unwrap_or_else(crate::storage::default_data_dir);
    let ca = if a.uninstall {
        match LocalCa::open(&data_dir) {
            Ok(Some(ca)) => ca,
            Ok(None) => {
                eprintln!(
                    "portcullis: no local CA in {}: nothing to remove",
                    data_dir.display()
                );
                return 0;
            }
            Err(e) => {
                eprintln!("portcullis: {e}");
                return 1;
            }
        }
    } else {
        match LocalCa::open_or_create(&data_dir) {
            Ok(ca) => ca,
            Err(e) => {
                eprintln!("portcullis: {e}");
                return 1;
            }
        }
    };
    let root = local_ca::root_cert_path(&data_dir);
    if a.print {
        print!("{}", ca.root_pem());
        return 0;
    }
    eprintln!("portcullis: local CA root: {}", root.display());
    let mut ok = true;
    if !a.browsers_only {
        ok &= trust_system(ca.root_pem(), &root, a.uninstall);
    }
    ok &= trust_browsers(ca.root_pem(), &root, a.uninstall);
    i32::from(!ok)
}

/// The system trust store (Debian/Ubuntu, Fedora/RHEL): copies the root in (or removes it)
/// and runs the store's update command. Says what it did; false on failure.
fn trust_system(pem: &str, root: &Path, uninstall: bool) -> bool {
    let stores: [(&str, &str, &[&str]); 2] = [
        (
            "/usr/local/share/ca-certificates",
            "portcullis-local-ca.crt",
            &["update-ca-certificates"],
        ),
        (
            "/etc/pki/ca-trust/source/anchors",
            "portcullis-local-ca.pem",
            &["update-ca-trust", "extract"],
        ),
    ];
    for (dir, file, cmd) in stores {
        if !Path::new(dir).is_dir() {
            continue;
        }
        let target = Path::new(dir).join(file);
        let done = if uninstall {
            if !target.exists() {
                eprintln!(
                    "portcullis: system trust store: not installed ({} absent)",
                    target.display()
                );
                return true;
            }
            if let Err(e) = std::fs::remove_file(&target) {
                eprintln!("portcullis: system trust store: cannot remove {}: {e}; run `sudo portcullis trust --uninstall`", target.display());
                return false;
            }
            format!("removed from the system trust store ({})", target.display())
        } else {
            if let Err(e) = std::fs::write(&target, pem) {
                eprintln!("portcullis: system trust store: cannot write {}: {e}; run `sudo portcullis trust`, or trust {} by hand", target.display(), root.display());
                return false;
            }
            format!(
                "installed into the system trust store ({})",
                target.display()
            )
        };
        return match std::process::Command::new(cmd[0]).args(&cmd[1..]).status() {
            Ok(s) if s.success() => {
                eprintln!("portcullis: {done}");
                true
            }
            Ok(s) => {
                eprintln!(
                    "portcullis: system trust store: {} failed ({s}) after {}",
                    cmd[0],
                    target.display()
                );
                false
            }
            Err(e) => {
                eprintln!(
                    "portcullis: system trust store: cannot run {}: {e} after {}",
                    cmd[0],
                    target.display()
                );
                false
            }
        };
    }
    if uninstall {
        eprintln!("portcullis: no known system trust store here: nothing to remove");
        return true;
    }
    eprintln!("portcullis: no known system trust store here; trust {} by hand (e.g. curl --cacert {}), or print it with `portcullis trust --print`", root.display(), root.display());
    false
}

/// The browsers' NSS databases under `$HOME` (see [`crate::tls::nss`]): one line per database
/// saying what was done. False when one failed.
fn trust_browsers(pem: &str, root: &Path, uninstall: bool) -> bool {
    use crate::tls::nss::{self, Outcome};
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        eprintln!(
            "portcullis: browsers: HOME is not set; their certificate stores were not looked for"
        );
        return !uninstall;
    };
    let dbs = nss::databases(&home);
    if dbs.is_empty() {
        eprintln!(
            "portcullis: browsers: no Firefox or Chromium/Chrome certificate database under {} (a browser never started has none yet)",
            home.display()
        );
        return true;
    }
    let Some(certutil) = nss::certutil() else {
        eprintln!(
            "portcullis: browsers: {} certificate database(s) under {} ({}), but no certutil to {} them: install libnss3-tools (Debian/Ubuntu) or nss-tools (Fedora) and run this again",
            dbs.len(),
            home.display(),
            dbs.iter().map(|d| d.owner).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(", "),
            if uninstall { "update" } else { "fill" }
        );
        return false;
    };
    if rustix::process::geteuid().is_root() && std::env::var_os("SUDO_USER").is_some() {
        eprintln!("portcullis: browsers: looking under {} (root's HOME); for your own browsers run `portcullis trust --browsers-only` without sudo", home.display());
    }
    let nick = nss::nickname(pem);
    let mut ok = true;
    for db in &dbs {
        let res = if uninstall {
            nss::uninstall(&certutil, db, &nick)
        } else {
            nss::install(&certutil, db, &nick, root)
        };
        let what = match res {
            Ok(Outcome::Installed) => "installed".to_string(),
            Ok(Outcome::AlreadyThere) => "already installed".to_string(),
            Ok(Outcome::Removed) => "removed".to_string(),
            Ok(Outcome::NotThere) => "not installed".to_string(),
            Err(e) => {
                ok = false;
                format!("FAILED: {e}")
            }
        };
        eprintln!(
            "portcullis: {} {}: {what} (\"{nick}\")",
            db.owner,
            db.dir.display()
        );
    }
    if ok && !uninstall {
        eprintln!("portcullis: restart the browsers to pick the root up");
    }
    ok
}

/// The validated config for tools that act on it (`certs`, `revoke`): warnings are not shown,
/// errors are, and then `None`.
fn load_quietly(a: &ServeArgs) -> Option<crate::config::Config> {
    let (raw, source) = load_raw(a).map_err(|p| eprintln!("{p}")).ok()?;
    match validate::validate(raw, &source, &overrides(a), Mode::Serve) {
        Ok((config, _)) => Some(config),
        Err(problems) => {
            print_problems(&problems);
            None
        }
    }
}

fn pins(a: ServeArgs) -> i32 {
    use crate::acme::pins::{cert_pin, key_pin, next_key};
    use crate::config::model::SiteCertSource;
    use crate::tls::certs::fmt_time;
    let Some(config) = load_quietly(&a) else {
        return 1;
    };
    let storage = match crate::storage::open(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut status = 0;
    for site in cert_holders(&config) {
        println!("{}:", site.label);
        let names: Vec<String> = site.hosts.iter().map(|h| h.to_string()).collect();
        match site.certs {
            SiteCertSource::Files(list) => {
                for c in list {
                    let pin = c.certified.cert.first().and_then(|d| cert_pin(d));
                    println!(
                        "  current {}  ({}, {}, expires {})",
                        pin.unwrap_or_else(|| "(unreadable certificate)".into()),
                        c.info.key,
                        c.info.cert_path.display(),
                        fmt_time(c.info.not_after)
                    );
                }
                println!("  next    (certificate files: the next key is whatever you renew with)");
            }
            SiteCertSource::LocalCa => {
                let root = local_ca::root_cert_path(&config.data_dir);
                let pin = std::fs::read(&root).ok().and_then(|pem| {
                    use rustls_pki_types::pem::PemObject;
                    rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                        .next()
                        .and_then(Result::ok)
                        .and_then(|d| cert_pin(d.as_ref()))
                });
                match pin {
                    Some(pin) => println!(
                        "  local CA leaves get a new key at every start: pin the local CA root {pin} ({})",
                        root.display()
                    ),
                    None => println!(
                        "  local CA leaves get a new key at every start; the local CA does not exist yet (run serve once)"
                    ),
                }
            }
            SiteCertSource::Acme => {
                match crate::acme::manager::stored(storage.as_ref(), &names) {
                    Some(c) => println!(
                        "  current {}  ({}, expires {})",
                        c.certified
                            .cert
                            .first()
                            .and_then(|d| cert_pin(d))
                            .unwrap_or_else(|| "(unreadable certificate)".into()),
                        c.info.key,
                        fmt_time(c.info.not_after)
                    ),
                    None => println!("  current (no certificate yet)"),
                }
                match next_key(storage.as_ref(), &names, config.acme.key_type)
                    .and_then(|pem| key_pin(&pem).map_err(|e| e.to_string()))
                {
                    Ok(pin) => println!(
                        "  next    {pin}  ({}, pre-generated; the next renewal uses it)",
                        config.acme.key_type.as_str()
                    ),
                    Err(e) => {
                        eprintln!("portcullis: {}: next key: {e}", site.label);
                        status = 1;
                    }
                }
            }
        }
    }
    status
}

/// What holds a certificate, for `pins` and `certs`: each site, then each stream certificate.
struct CertHolder<'a> {
    /// `alpha`, or `stream "imaps"`.
    name: String,
    /// `site alpha`, or `stream "imaps"`.
    label: String,
    hosts: &'a [crate::tls::names::HostPattern],
    certs: &'a crate::config::model::SiteCertSource,
}

fn cert_holders(config: &config::Config) -> Vec<CertHolder<'_>> {
    let sites = config.sites.iter().map(|s| CertHolder {
        name: s.name.clone(),
        label: format!("site {}", s.name),
        hosts: &s.hosts,
        certs: &s.certs,
    });
    let streams = config
        .streams
        .iter()
        .flat_map(|s| &s.certs)
        .map(|c| CertHolder {
            name: c.name.clone(),
            label: c.name.clone(),
            hosts: &c.hosts,
            certs: &c.certs,
        });
    sites.chain(streams).collect()
}

fn certs(a: ServeArgs) -> i32 {
    use crate::config::model::SiteCertSource;
    use crate::tls::certs::{fmt_time, unix_now, LoadedCert};
    let Some(config) = load_quietly(&a) else {
        return 1;
    };
    let now = unix_now();
    let describe = |c: &LoadedCert| {
        format!(
            "{} [{}], issuer {}, expires {} ({} days), key {}",
            c.info.subject,
            c.info
                .dns_names
                .iter()
                .cloned()
                .chain(c.info.ips.iter().map(|i| i.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            c.info.issuer,
            fmt_time(c.info.not_after),
            (c.info.not_after - now).div_euclid(86400),
            c.info.key
        )
    };
    let storage = match crate::storage::open(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for site in cert_holders(&config) {
        let names: Vec<String> = site.hosts.iter().map(|h| h.to_string()).collect();
        match site.certs {
            SiteCertSource::Files(list) => {
                for c in list {
                    println!(
                        "{}: file {}: {}",
                        site.name,
                        c.info.cert_path.display(),
                        describe(c)
                    );
                }
            }
            SiteCertSource::LocalCa => {
                println!(
                    "{}: local CA ({}), leaf re-issued automatically for {}",
                    site.name,
                    local_ca::root_cert_path(&config.data_dir).display(),
                    names.join(", ")
                );
            }
            SiteCertSource::Acme => {
                match crate::acme::manager::stored(storage.as_ref(), &names) {
                    Some(c) => {
                        let (at, basis) =
                            crate::acme::manager::next_renewal(storage.as_ref(), &names, &c);
                        println!(
                            "{}: ACME {}: {}, renews {} ({basis})",
                            site.name,
                            config.acme.directory,
                            describe(&c),
                            fmt_time(at)
                        );
                        let leaf = c.certified.cert.first().map_or(&[][..], |d| d.as_ref());
                        if let Some(i) =
                            crate::acme::manager::issuance(storage.as_ref(), &names, leaf)
                        {
                            println!("{}:   obtained {} by {}", site.name, fmt_time(i.at), i.by);
                        }
                    }
                    None => println!(
                        "{}: ACME {}: no certificate yet for {}",
                        site.name,
                        config.acme.directory,
                        names.join(", ")
                    ),
                }
                if let Some(st) = crate::acme::manager::status(storage.as_ref(), &names) {
                    if let Some(err) = st.last_error {
                        println!(
                            "{}:   last attempt {} failed: {err}; next try {}",
                            site.name,
                            fmt_time(st.last_attempt),
                            st.retry_at.map(fmt_time).unwrap_or_default()
                        );
                    }
                }
            }
        }
    }
    if storage.shared() {
        // The cluster view: what the instances sharing the store are doing right now.
        match storage.lock_holders() {
            Ok(holders) if holders.is_empty() => {
                println!("shared storage: no lock held (no order or key rotation running)")
            }
            Ok(holders) => {
                for h in holders {
                    println!(
                        "shared storage: lock {} held by {} since {} (fence {})",
                        h.name,
                        h.instance,
                        fmt_time(h.since),
                        h.fence
                    );
                }
            }
            Err(e) => println!("shared storage: locks unknown: {e}"),
        }
    }
    0
}

fn revoke(a: RevokeArgs) -> i32 {
    use instant_acme::RevocationReason;
    let reason = match a.reason.as_deref() {
        None => None,
        Some("unspecified") => Some(RevocationReason::Unspecified),
        Some("key-compromise") => Some(RevocationReason::KeyCompromise),
        Some("superseded") => Some(RevocationReason::Superseded),
        Some("cessation-of-operation") => Some(RevocationReason::CessationOfOperation),
        Some("affiliation-changed") => Some(RevocationReason::AffiliationChanged),
        Some(other) => {
            eprintln!("--reason: {other:?} is unknown (use unspecified, key-compromise, superseded, cessation-of-operation or affiliation-changed)");
            return 2;
        }
    };
    let Some(config) = load_quietly(&a.serve) else {
        return 1;
    };
    let Some(site) = config.sites.iter().find(|s| s.name == a.site) else {
        eprintln!(
            "--site: no site named {:?} (sites: {})",
            a.site,
            config
                .sites
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return 1;
    };
    if !matches!(site.certs, crate::config::model::SiteCertSource::Acme) {
        eprintln!("site {:?} does not get its certificate from ACME; revoke file certificates with the CA that issued them", site.name);
        return 1;
    }
    let names: Vec<String> = site.hosts.iter().map(|h| h.to_string()).collect();
    let storage = match crate::storage::open(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let Some(cert) = crate::acme::manager::stored(storage.as_ref(), &names) else {
        eprintln!("site {:?}: no stored ACME certificate to revoke", site.name);
        return 1;
    };
    let Some(leaf) = cert.certified.cert.first().cloned() else {
        return 1;
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        let client = crate::acme::client::AcmeClient::open_with_eab(
            storage.as_ref(),
            &config.acme.directory,
            config.acme.ca_root.as_deref(),
            &config.acme.contact,
            config.acme.eab.as_ref(),
        )
        .await?;
        client.revoke(&leaf, reason).await
    });
    match result {
        Ok(()) => {
            let dir = crate::acme::manager::cert_dir(&names);
            for f in ["chain.pem", "key.pem"] {
                if let Err(e) = storage.delete(&format!("{dir}/{f}")) {
                    eprintln!("portcullis: revoked, but cannot remove the stored {f}: {e}");
                }
            }
            println!("site {}: certificate {} revoked and removed from storage; a running server using this data directory orders a new one within {}s", site.name, cert.info.subject, 10);
            0
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            1
        }
    }
}
