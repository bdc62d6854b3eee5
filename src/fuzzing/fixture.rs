//! What the targets serve: a document root with files, directories and symlinks (some pointing
//! out of it), the request side built from a config over it, and certificates.
//!
//! Made once per process. The tree lives under the temporary directory, named after the
//! process; a process that made one leaves it behind (no destructors run at exit).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::acme::TlsAlpnChallenges;
use crate::config::model::UnknownSni;
use crate::config::validate::{self, Mode, Overrides};
use crate::config::Config;
use crate::http::Frontend;
use crate::server::{ServerState, TlsFront, WorkerCtx};
use crate::tls::names::{HostPattern, NameTable};
use crate::tls::resolver::SiteCerts;
use crate::tls::{TlsOptions, TlsShared};

/// Marks everything outside the root: no response from a root that confines symlinks may
/// contain it (file contents and the names in the outside directory carry it).
pub(crate) const SECRET: &[u8] = b"SECRET";

/// A path that does not exist: relative paths of fuzzed configs resolve below it.
pub(crate) const NOWHERE: &str = "/nonexistent-portcullis-fuzz";

/// Size of the file that is streamed rather than read whole (over `SMALL_FILE_MAX`).
pub(crate) const BIG_LEN: usize = 70_000;

pub(crate) struct Tree {
    /// The document root.
    pub(crate) root: PathBuf,
    /// The contents of every regular file below the root (symlinks resolve to these).
    pub(crate) contents: Vec<Vec<u8>>,
}

fn big() -> Vec<u8> {
    (0..BIG_LEN).map(|i| b'a' + (i % 26) as u8).collect()
}

static TREE: OnceLock<Tree> = OnceLock::new();

fn base() -> PathBuf {
    std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()))
}

/// The shared document root (see the module docs).
pub(crate) fn tree() -> &'static Tree {
    TREE.get_or_init(|| {
        let base = base();
        make_tree(&base).unwrap_or_else(|e| panic!("cannot make {}: {e}", base.display()))
    })
}

pub(crate) fn remove_tree() {
    if TREE.get().is_some() {
        let _ = std::fs::remove_dir_all(base());
    }
}

fn make_tree(base: &Path) -> std::io::Result<Tree> {
    use std::os::unix::fs::symlink;
    let _ = std::fs::remove_dir_all(base);
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub/deeper"))?;
    std::fs::create_dir_all(root.join("empty"))?;
    std::fs::create_dir_all(root.join(".well-known/acme"))?;
    std::fs::create_dir_all(outside.join("SECRET-dir"))?;
    let mut contents = Vec::new();
    let mut file = |rel: &str, data: &[u8]| -> std::io::Result<()> {
        std::fs::write(root.join(rel), data)?;
        contents.push(data.to_vec());
        Ok(())
    };
    file("index.html", b"<h1>in the root</h1>\n")?;
    file("a.txt", b"file a, plain\n")?;
    file("a.txt.gz", b"file a, gzip\n")?;
    file("a.txt.br", b"file a, brotli\n")?;
    file("b.css", b"body { color: red }\n")?;
    file("b.css.gz", b"css, gzip\n")?;
    file("big.bin", &big())?;
    file("big.bin.br", b"big, brotli\n")?;
    file("sub/index.html", b"<p>sub index</p>\n")?;
    file("sub/c.json", b"{\"c\": 1}\n")?;
    file("sub/deeper/d.txt", b"deep down\n")?;
    file(".hidden", b"a dot-file\n")?;
    file(".well-known/acme/token", b"a well-known file\n")?;
    file("with space.txt", b"space in the name\n")?;
    file("%41.txt", b"a percent sign in the name\n")?;
    file("\u{e9}t\u{e9}.txt", b"non-ASCII name\n")?;
    file("empty.txt", b"")?;
    std::fs::write(outside.join("secret.txt"), b"SECRET outside the root\n")?;
    std::fs::write(outside.join("secret.txt.gz"), b"SECRET gzip outside\n")?;
    std::fs::write(outside.join("SECRET-dir/x.txt"), b"SECRET in a directory\n")?;
    symlink("../outside/secret.txt", root.join("out"))?;
    symlink("../outside", root.join("outdir"))?;
    symlink("../../outside/secret.txt", root.join("sub/out"))?;
    symlink(outside.join("secret.txt"), root.join("abs"))?;
    symlink(root.join("a.txt"), root.join("abs-in"))?;
    symlink("..", root.join("updir"))?;
    symlink(
        format!("/proc/self/root{}", outside.join("secret.txt").display()),
        root.join("magic"),
    )?;
    symlink("a.txt", root.join("inlink"))?;
    symlink("sub", root.join("subdir-link"))?;
    symlink("missing", root.join("dangling"))?;
    symlink("loop", root.join("loop"))?;
    // A precompressed sibling that leads out of the root.
    symlink("../outside/secret.txt.gz", root.join("b.css.br"))?;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )?;
    Ok(Tree { root, contents })
}

/// The validated config of the request side the HTTP/2 and early-data targets serve.
/// `alpha` serves the tree (with listings under `/list`), a fixed answer and a redirect;
/// `beta` accepts early data and answers everything with a fixed body.
pub(crate) fn config_text(root: &Path) -> String {
    format!(
        r#"data_dir = "{NOWHERE}/data"
access_log = false
[limits]
max_header_bytes = 4096
max_body_bytes = 100000

[[site]]
name = "alpha"
hosts = ["alpha.test", "www.alpha.test"]
headers = {{ x-site = "alpha" }}
[[site.route]]
path = "/list"
files = {{ root = '{root}', browse = true, strip_prefix = true, precompressed = false }}
[[site.route]]
path = "/fixed"
respond = {{ status = 201, body = "fixed answer" }}
[[site.route]]
path = "/go"
redirect = {{ to = "https://beta.test{{path}}?from={{query}}" }}
[[site.route]]
path = "/"
files = {{ root = '{root}' }}

[[site]]
name = "beta"
hosts = ["beta.test"]
early_data = true
[[site.route]]
path = "/"
respond = {{ body = "beta" }}
"#,
        root = root.display()
    )
}

/// The validated config of [`config_text`].
pub(crate) fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| validated(&config_text(&tree().root)))
}

/// The request side (see [`config_text`]).
pub(crate) fn frontend() -> &'static Arc<Frontend> {
    static FRONT: OnceLock<Arc<Frontend>> = OnceLock::new();
    FRONT.get_or_init(|| {
        Arc::new(
            Frontend::new(
                config(),
                443,
                None,
                Default::default(),
                tokio::sync::watch::channel(false).1,
            )
            .expect("the frontend builds"),
        )
    })
}

fn validated(text: &str) -> Config {
    let path = Path::new(NOWHERE).join("portcullis.toml");
    let (raw, source) = crate::config::parse_text(&path, text.to_owned()).expect("parses");
    let overrides = Overrides {
        data_dir: Some(Path::new(NOWHERE).join("data")),
        ..Default::default()
    };
    match validate::validate(raw, &source, &overrides, Mode::Serve) {
        Ok((config, _)) => config,
        Err(problems) => panic!("the fixture's config is invalid: {problems:?}"),
    }
}

/// Certificates and the TLS side: site 0 `alpha.test` (no early data), site 1 `beta.test`
/// (early data), the same certificate for both, issued by a CA of its own.
pub(crate) struct Tls {
    /// The CA's certificate, for clients' root stores.
    pub(crate) ca: CertificateDer<'static>,
    /// The server, as configured with `tls.unknown_sni = "default_site"` and `"reject"`; a
    /// TLS-ALPN-01 challenge is pending for `alpha.test`.
    pub(crate) states: [Arc<ServerState>; 2],
    pub(crate) ctx: Arc<WorkerCtx>,
}

pub(crate) const ALPHA: usize = 0;
pub(crate) const BETA: usize = 1;

pub(crate) fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(make_tls)
}

fn make_tls() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let ca_key = KeyPair::generate_for(alg).expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis fuzz CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, &ca_key);
    let leaf_key = KeyPair::generate_for(alg).expect("key");
    let names = ["alpha.test", "www.alpha.test", "beta.test"].map(String::from);
    let leaf = CertificateParams::new(names.to_vec())
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let key_der = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).expect("signer");
    let certified = Arc::new(CertifiedKey::new(
        vec![leaf.der().clone(), ca.der().clone()],
        signer,
    ));
    let shared = TlsShared::new(&TlsOptions {
        profile: crate::tls::Profile::Intermediate,
        session_tickets: true,
        ticket_rotation_secs: 3600,
        session_cache_size: 1024,
        http2: true,
        prefer_server_order: false,
        early_data: true,
    })
    .expect("TLS set-up");
    let front = |unknown_sni| {
        let certs: Vec<Arc<SiteCerts>> = (0..2)
            .map(|_| Arc::new(SiteCerts::new(vec![certified.clone()])))
            .collect();
        let configs = certs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                shared
                    .site_config(c.clone(), i == BETA, false, None)
                    .expect("site config")
            })
            .collect();
        let mut sni = NameTable::default();
        for (name, site) in [
            ("alpha.test", ALPHA),
            ("www.alpha.test", ALPHA),
            ("beta.test", BETA),
        ] {
            sni.insert(&HostPattern::parse(name).expect("host"), site);
        }
        TlsFront {
            configs,
            certs,
            sni,
            default_site: ALPHA,
            unknown_sni,
            on_demand: None,
        }
    };
    let tls_alpn = Arc::new(TlsAlpnChallenges::default());
    tls_alpn
        .insert("alpha.test", &[7; 32])
        .expect("challenge certificate");
    let state = |unknown_sni| {
        ServerState::detached(
            frontend().clone(),
            front(unknown_sni),
            tls_alpn.clone(),
            config().limits.clone(),
        )
    };
    Tls {
        ca: ca.der().clone(),
        states: [state(UnknownSni::DefaultSite), state(UnknownSni::Reject)],
        ctx: Arc::new(WorkerCtx::new(config())),
    }
}

/// A client config trusting the fixture's CA.
pub(crate) fn client_config(
    alpn: &[&[u8]],
    tls13_only: bool,
    early_data: bool,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls().ca.clone()).expect("CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_early_data = early_data;
    cfg
}

/// Polls a future that never waits on anything but its own progress (in-memory I/O, files):
/// `None` if it is still pending after `budget` polls.
pub(crate) fn poll_ready<F: std::future::Future>(fut: F, budget: usize) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..budget {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

/// All of a response body (static files are read as it is polled, synchronously).
pub(crate) fn collect(mut body: crate::http::body::Body) -> Vec<u8> {
    use http_body::Body as _;
    let mut out = Vec::new();
    let read = poll_ready(
        std::future::poll_fn(|cx| loop {
            match std::pin::Pin::new(&mut body).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        out.extend_from_slice(&data);
                    }
                }
                std::task::Poll::Ready(Some(Err(e))) => {
                    return std::task::Poll::Ready(Err(e));
                }
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(Ok(())),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }),
        1,
    );
    match read {
        Some(Ok(())) => out,
        Some(Err(e)) => panic!("reading a response body failed: {e}"),
        None => panic!("a response body was not ready (bodies never wait)"),
    }
}
