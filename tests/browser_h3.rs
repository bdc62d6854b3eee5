//! HTTP/3 in a real browser (Debian chromium driven by playwright-core, tests/browser/h3.cjs),
//! against a site on the local CA that the browser trusts through its NSS database, filled by
//! `portcullis trust --browsers-only`.
//!
//! - Chromium finds HTTP/3 by itself: the first load goes over TCP (`h2`) and brings
//!   `Alt-Svc: h3=":PORT"; ma=86400`; a later load of the same page, with the same flags, goes
//!   over QUIC (`h3`), the page and its image and script with it. The open h2 connection does
//!   not hold it back: the first page's own subresource requests already start a QUIC
//!   connection beside the h2 one (Chromium's alternative job), and the next navigation finds
//!   it in the pool.
//! - With QUIC forced for the origin, the page, a 620 KB image and a 300 KB script arrive whole
//!   over `h3` on the first load.
//!
//! Chromium accepts a QUIC certificate only from a root of its own root store ("known root"),
//! unlike TCP, which takes any root the machine trusts: `ProofVerifierChromium::Job::
//! DoVerifyCertComplete` (net/quic/crypto/proof_verifier_chromium.cc) fails the handshake with
//! `ERR_QUIC_CERT_ROOT_NOT_KNOWN` when `!cert_verify_result.is_issued_by_known_root &&
//! !ShouldAllowUnknownRootForHost(hostname)`, and `IsKnownRoot` is membership in the Chrome Root
//! Store (net/cert/internal/system_trust_store.cc). A local CA is never in it, so without help
//! every QUIC attempt from Alt-Svc fails (Chromium closes it: "certificate unknown") and
//! the page stays on h2. The only exemption is the host list `ShouldAllowUnknownRootForHost`
//! reads: the HOST names of `--origin-to-force-quic-on` (`HostsFromOrigins` in
//! net/quic/quic_session_pool.cc keeps `origin.host()` and drops the port), while forcing QUIC
//! applies to the exact host:port only. So the Alt-Svc test names `localhost:1`, an origin it
//! never visits: QUIC to `localhost:PORT` is not forced (the first load is h2) but its local-CA
//! certificate is accepted once Chromium decides, from Alt-Svc, to try QUIC.
//!
//! Needs `chromium`, `node`, playwright-core in tests/browser/node_modules (or `PLAYWRIGHT_CORE`)
//! and NSS's `certutil`; `.ci/run` installs them all. `NETLOG_DIR=/some/dir` keeps Chromium's
//! net logs (QUIC handshakes, alternative services marked broken, and why).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// The test image: random RGB noise (it does not compress), so its PNG is ~620 KB.
const IMAGE_WIDTH: u32 = 512;
const IMAGE_HEIGHT: u32 = 384;
/// Characters of the string literal in the test script (~300 KB of script).
const SCRIPT_TEXT_LEN: usize = 300_000;

/// What the browser must find on the page: the files as served and what they decode to.
struct PageFiles {
    png_len: usize,
    script_len: usize,
    script_checksum: u32,
    /// (x, y, [r, g, b]) of a few pixels: first, middle, last (the last bytes of the file).
    pixels: Vec<(u32, u32, [u8; 3])>,
}

/// Writes `www/`: index.html loading /app.js and /pic.png.
fn write_site(env: &TestEnv) -> PageFiles {
    let mut rng = fastrand::Rng::with_seed(21);
    let rgb: Vec<u8> = (0..IMAGE_WIDTH * IMAGE_HEIGHT * 3)
        .map(|_| rng.u8(..))
        .collect();
    let png = png_rgb(IMAGE_WIDTH, IMAGE_HEIGHT, &rgb);
    let pixel = |x: u32, y: u32| {
        let i = ((y * IMAGE_WIDTH + x) * 3) as usize;
        (x, y, [rgb[i], rgb[i + 1], rgb[i + 2]])
    };
    let pixels = vec![
        pixel(0, 0),
        pixel(IMAGE_WIDTH / 2, IMAGE_HEIGHT / 2),
        pixel(IMAGE_WIDTH - 1, IMAGE_HEIGHT - 1),
    ];

    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let script_text: String = (0..SCRIPT_TEXT_LEN)
        .map(|_| ALPHABET[rng.usize(..ALPHABET.len())] as char)
        .collect();
    // The checksum is computed by the browser over the string it parsed; a truncated script
    // does not parse at all.
    let script = format!(
        "(function () {{\n  var text = \"{script_text}\";\n  var h = 0x811c9dc5;\n  \
         for (var i = 0; i < text.length; i++) {{ h ^= text.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }}\n  \
         window.portcullisScript = {{ text: text, checksum: h }};\n}})();\n"
    );
    env.write(
        "www/index.html",
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>portcullis over HTTP/3</title>\n\
             <script src=\"/app.js\"></script></head>\n<body><h1>HTTP/3</h1>\n\
             <img id=\"pic\" src=\"/pic.png\" width=\"{IMAGE_WIDTH}\" height=\"{IMAGE_HEIGHT}\" alt=\"noise\"></body>\n</html>\n"
        ),
    );
    env.write("www/app.js", &script);
    env.write("www/pic.png", &png);
    PageFiles {
        png_len: png.len(),
        script_len: script.len(),
        script_checksum: fnv1a(script_text.as_bytes()),
        pixels,
    }
}

/// 32-bit FNV-1a, as the test script computes it over its string.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A PNG of 8-bit RGB pixels (`rgb`: rows top to bottom), no filtering.
fn png_rgb(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    use std::io::Write;
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // depth 8, RGB, deflate, no filter, no interlace
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    for row in rgb.chunks(width as usize * 3) {
        z.write_all(&[0]).unwrap();
        z.write_all(row).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The server (a `localhost` site on the local CA serving `www/`), the page's files, and a
/// HOME whose Chromium NSS database trusts the local CA.
struct Setup {
    srv: TestServer,
    port: u16,
    files: PageFiles,
    home: PathBuf,
}

fn setup() -> Setup {
    let certutil = require_tool("certutil");
    let env = TestEnv::new();
    let files = write_site(&env);
    let srv = env.start(
        r#"
[[site]]
name = "local"
hosts = ["localhost"]
root = "www"
"#,
    );
    let server = srv.server.as_ref().expect("server running");
    assert!(
        server.h3_addrs().contains(&srv.https),
        "HTTP/3 is not bound beside HTTPS {}: {:?}",
        srv.https,
        server.h3_addrs()
    );

    // Chromium on Linux reads ~/.pki/nssdb; `trust` only fills databases that exist.
    let home = srv.env.path("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let out = run_with_timeout(
        Command::new(&certutil)
            .args(["-N", "--empty-password", "-d"])
            .arg(format!("sql:{}", nssdb.display())),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "certutil -N: {}", text(&out.stderr));
    let out = run_with_timeout(
        Command::new(bin())
            .args(["trust", "--browsers-only", "--data-dir"])
            .arg(srv.env.path("data"))
            .env("HOME", &home)
            .env_remove("SUDO_USER"),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "portcullis trust --browsers-only:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    Setup {
        port: srv.https.port(),
        srv,
        files,
        home,
    }
}

/// Loads https://localhost:PORT/ `loads` times in one chromium with `quic_args`; the report.
fn run_chromium(s: &Setup, loads: usize, quic_args: &[String]) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/h3.cjs");
    let pixels: Vec<String> = s
        .files
        .pixels
        .iter()
        .map(|(x, y, _)| format!("{x},{y}"))
        .collect();
    let mut cmd = Command::new(require_tool("node"));
    cmd.arg(script)
        .env("URL", format!("https://localhost:{}/", s.port))
        .env("LOADS", loads.to_string())
        .env("QUIC_ARGS", quic_args.join(" "))
        .env("PIXELS", pixels.join(";"))
        .env("HOME", &s.home)
        .env("CHROMIUM", browser::chromium())
        .env("PLAYWRIGHT_CORE", browser::playwright_core());
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let stdout = text(&out.stdout);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from the browser script ({}):\n{stdout}\n{}",
                out.status,
                text(&out.stderr)
            )
        });
    assert!(
        out.status.success() && report["error"].is_null(),
        "the browser run failed: {}\n{}",
        report["error"],
        text(&out.stderr)
    );
    report
}

/// The protocol of each load ("h2", "h3", or the error).
fn protocols(report: &Value) -> Vec<String> {
    report["loads"]
        .as_array()
        .expect("loads")
        .iter()
        .map(|l| match l["protocol"].as_str() {
            Some(p) => p.to_string(),
            None => format!("error: {}", l["error"]),
        })
        .collect()
}

/// Load `load` of `report` was a 200 over `proto`, its script and image came over one of
/// `resource_protos` and arrived whole: every byte (decoded sizes), the script's text (checksum
/// computed by the browser) and the image's pixels (including the last one).
fn assert_page_whole(
    report: &Value,
    load: usize,
    proto: &str,
    resource_protos: &[&str],
    files: &PageFiles,
) {
    let l = &report["loads"][load];
    let ctx = format!("load #{} of {}", load + 1, report["loads"]);
    assert_eq!(l["status"], 200, "{ctx}");
    assert_eq!(l["protocol"], proto, "{ctx}");
    for (path, len) in [("/app.js", files.script_len), ("/pic.png", files.png_len)] {
        let r = l["resources"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["path"] == path))
            .unwrap_or_else(|| panic!("{path} not fetched: {ctx}"));
        assert!(
            resource_protos.iter().any(|p| r["protocol"] == *p),
            "{path} over {}, not {resource_protos:?}: {ctx}",
            r["protocol"]
        );
        assert_eq!(r["decodedBodySize"], len, "{path}: {ctx}");
    }
    assert_eq!(l["script"]["ran"], true, "{ctx}");
    assert_eq!(l["script"]["textLength"], SCRIPT_TEXT_LEN, "{ctx}");
    assert_eq!(l["script"]["checksum"], files.script_checksum, "{ctx}");
    assert_eq!(l["image"]["width"], IMAGE_WIDTH, "{ctx}");
    assert_eq!(l["image"]["height"], IMAGE_HEIGHT, "{ctx}");
    let seen: Vec<Vec<u8>> = serde_json::from_value(l["image"]["pixels"].clone()).expect("pixels");
    let want: Vec<Vec<u8>> = files.pixels.iter().map(|(_, _, p)| p.to_vec()).collect();
    assert_eq!(seen, want, "image pixels (first, middle, last): {ctx}");
}

#[test]
fn chromium_moves_from_h2_to_http3_by_itself_after_alt_svc() {
    let s = setup();
    // QUIC on, not forced for localhost:PORT. `localhost:1` is never visited: it only puts the
    // host name on the list of hosts whose certificates may chain to a local root over QUIC.
    let report = run_chromium(
        &s,
        3,
        &[
            "--enable-quic".into(),
            "--origin-to-force-quic-on=localhost:1".into(),
        ],
    );
    let protos = protocols(&report);
    eprintln!(
        "chromium {}: pages over {protos:?}; the first page's subresources: {}",
        report["version"], report["loads"][0]["resources"]
    );
    let first = &report["loads"][0];
    assert_eq!(
        first["protocol"], "h2",
        "the first load must go over TCP (QUIC is not forced): {protos:?}"
    );
    assert_eq!(
        first["altSvc"],
        format!("h3=\":{}\"; ma=86400", s.port),
        "Alt-Svc on the h2 response"
    );
    // Alt-Svc is known as soon as the page's own response arrives: the requests for its script
    // and image start a QUIC connection beside reusing the h2 one, and whichever is ready
    // first carries them.
    assert_page_whole(&report, 0, "h2", &["h2", "h3"], &s.files);
    // Chromium 156 uses HTTP/3 from the second load on: that QUIC connection is in its pool
    // (the h2 connection is still open too).
    let switched = protos.iter().position(|p| p == "h3").unwrap_or_else(|| {
        panic!(
            "chromium {} did not move to HTTP/3 after Alt-Svc; loads: {protos:?}",
            report["version"]
        )
    });
    assert!(
        protos[switched..].iter().all(|p| p == "h3"),
        "once on h3, later loads stay on h3: {protos:?}"
    );
    for load in switched..protos.len() {
        assert_page_whole(&report, load, "h3", &["h3"], &s.files);
    }
    drop(s.srv);
}

#[test]
fn chromium_forced_to_quic_loads_the_page_and_its_subresources_over_http3() {
    let s = setup();
    let report = run_chromium(
        &s,
        1,
        &[
            "--enable-quic".into(),
            format!("--origin-to-force-quic-on=localhost:{}", s.port),
        ],
    );
    assert_page_whole(&report, 0, "h3", &["h3"], &s.files);
}
