//! An OCSP responder on 127.0.0.1 for the tests: `openssl ocsp` signs every response (as the
//! issuer or as a delegated responder), served over HTTP by a small fixture that can also fail
//! or answer garbage.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use x509_cert::der::Decode;

/// What the responder fixture does with a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// `openssl ocsp` answers from the index (good unless the serial is revoked).
    Openssl,
    /// `openssl ocsp` answers with an empty index: status unknown.
    Unknown,
    /// HTTP 500.
    Down,
    /// 200 with bytes that are not an OCSP response.
    Garbage,
}

pub struct ResponderState {
    pub mode: Mode,
    pub revoked: HashSet<String>,
    /// Revoke the first serial asked about, answer good for every later one.
    pub revoke_first: bool,
    /// Serials asked about, in order (uppercase hex).
    pub asked: Vec<String>,
}

/// An OCSP responder on 127.0.0.1; each answer is made by `openssl ocsp -reqin`.
pub struct Responder {
    pub url: String,
    pub state: Arc<Mutex<ResponderState>>,
    pub hits: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Responder {
    /// Responses signed by `signer` (`cert`, `key` PEM files) for certificates issued by `ca`,
    /// valid for `minutes`.
    pub fn start(dir: &Path, ca: &Path, signer: (&Path, &Path), minutes: u32) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(ResponderState {
            mode: Mode::Openssl,
            revoked: HashSet::new(),
            revoke_first: false,
            asked: Vec::new(),
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, h, sp) = (state.clone(), hits.clone(), stop.clone());
        let (dir, ca) = (dir.to_path_buf(), ca.to_path_buf());
        let (cert, key) = (signer.0.to_path_buf(), signer.1.to_path_buf());
        std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = serve_one(s, &st, &dir, &ca, &cert, &key, minutes);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Responder {
            url: format!("http://{addr}/ocsp"),
            state,
            hits,
            stop,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn revoke(&self, serial: &str) {
        self.state
            .lock()
            .unwrap()
            .revoked
            .insert(serial.to_string());
    }

    pub fn asked(&self) -> Vec<String> {
        self.state.lock().unwrap().asked.clone()
    }
}

pub fn serial_hex(bytes: &[u8]) -> String {
    let n = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[n..].iter().map(|b| format!("{b:02X}")).collect()
}

/// The serial of a PEM or DER certificate, as `openssl ocsp`'s index spells it.
pub fn cert_serial(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
    serial_hex(c.raw_serial())
}

#[allow(clippy::too_many_arguments)]
fn serve_one(
    mut s: TcpStream,
    state: &Mutex<ResponderState>,
    dir: &Path,
    ca: &Path,
    cert: &Path,
    key: &Path,
    minutes: u32,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..];
    let (mode, index) = {
        let mut st = state.lock().unwrap();
        let serial = x509_ocsp::OcspRequest::from_der(body)
            .ok()
            .and_then(|r| {
                r.tbs_request
                    .request_list
                    .first()
                    .map(|q| serial_hex(q.req_cert.serial_number.as_bytes()))
            })
            .unwrap_or_default();
        if st.revoke_first && st.asked.is_empty() {
            st.revoked.insert(serial.clone());
        }
        st.asked.push(serial.clone());
        let line = if st.revoked.contains(&serial) {
            format!("R\t351231235959Z\t250101000000Z,keyCompromise\t{serial}\tunknown\t/CN=test\n")
        } else {
            format!("V\t351231235959Z\t\t{serial}\tunknown\t/CN=test\n")
        };
        (
            st.mode,
            if st.mode == Mode::Unknown {
                String::new()
            } else {
                line
            },
        )
    };
    let reply = |s: &mut TcpStream, status: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)
    };
    match mode {
        Mode::Down => return reply(&mut s, "500 Internal Server Error", b"down"),
        Mode::Garbage => return reply(&mut s, "200 OK", b"\x30\x03\x0a\x01\x00garbage"),
        Mode::Openssl | Mode::Unknown => {}
    }
    let tag =
        format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_alphanumeric(), "");
    let (idx, req, resp) = (
        dir.join(format!("index-{tag}.txt")),
        dir.join(format!("req-{tag}.der")),
        dir.join(format!("resp-{tag}.der")),
    );
    std::fs::write(&idx, index)?;
    std::fs::write(&req, body)?;
    let out = Command::new("openssl")
        .arg("ocsp")
        .arg("-index")
        .arg(&idx)
        .arg("-CA")
        .arg(ca)
        .arg("-rsigner")
        .arg(cert)
        .arg("-rkey")
        .arg(key)
        .arg("-reqin")
        .arg(&req)
        .arg("-respout")
        .arg(&resp)
        .arg("-nmin")
        .arg(minutes.to_string())
        .stdin(Stdio::null())
        .output()?;
    match std::fs::read(&resp) {
        Ok(der) if out.status.success() => reply(&mut s, "200 OK", &der),
        _ => reply(
            &mut s,
            "500 Internal Server Error",
            String::from_utf8_lossy(&out.stderr).as_bytes(),
        ),
    }
}
