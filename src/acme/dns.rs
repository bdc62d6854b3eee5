//! DNS-01 (RFC 8555 §8.4) through an external command, as certbot's manual hooks and lego's
//! `exec` provider do: portcullis cannot know every DNS provider's API, the admin's script can.
//!
//! The hook is run as `HOOK present NAME VALUE` before the CA is asked to validate and as
//! `HOOK cleanup NAME VALUE` afterwards (always, also after a failure). NAME is the domain
//! without any `*.` (the record is `_acme-challenge.NAME`); the same values are in the
//! environment as `PORTCULLIS_DNS_ACTION`, `PORTCULLIS_DNS_NAME`, `PORTCULLIS_DNS_RECORD`
//! (also as `PORTCULLIS_DNS_ZONE_RECORD`) and `PORTCULLIS_DNS_VALUE`. A run that exits non-zero
//! fails the order with the hook's exit status and the end of its stderr; one that outlives
//! `acme.dns_hook_timeout` (default [`HOOK_TIMEOUT`]) is killed and fails the order too.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// The longest one hook run may take unless `acme.dns_hook_timeout` says otherwise.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of the hook's stderr is quoted in errors.
const STDERR_TAIL: usize = 400;

/// `acme.dns_hook` at run time.
#[derive(Debug, Clone)]
pub struct DnsHook {
    pub command: PathBuf,
    /// Wait after `present` before the CA validates (DNS propagation).
    pub propagation: Duration,
    /// The longest one run may take; the hook is killed after it.
    pub timeout: Duration,
}

/// The TXT record name for `name` (`*.example.com` and `example.com` share one).
pub fn record_name(name: &str) -> String {
    format!("_acme-challenge.{}", name.trim_start_matches("*."))
}

impl DnsHook {
    /// Runs `HOOK action NAME VALUE`; the error is one line naming the hook, the action, the
    /// name, the exit status and the end of stderr.
    pub async fn run(&self, action: &str, name: &str, value: &str) -> Result<(), String> {
        let name = name.trim_start_matches("*.");
        let hook = self.command.display();
        let mut child = tokio::process::Command::new(&self.command)
            .args([action, name, value])
            .env("PORTCULLIS_DNS_ACTION", action)
            .env("PORTCULLIS_DNS_NAME", name)
            .env("PORTCULLIS_DNS_RECORD", record_name(name))
            .env("PORTCULLIS_DNS_ZONE_RECORD", record_name(name))
            .env("PORTCULLIS_DNS_VALUE", value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run dns_hook {hook}: {e}"))?;
        let mut stderr = child.stderr.take();
        let run = async {
            let mut err = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
            (child.wait().await, err)
        };
        // On timeout `run` is dropped with the child, which kills it (`kill_on_drop`).
        let (status, err) = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                return Err(format!(
                    "dns_hook {hook} {action} {name} did not finish within {:?} and was killed; raise acme.dns_hook_timeout if your DNS provider is that slow",
                    self.timeout
                ))
            }
        };
        let status = status.map_err(|e| format!("dns_hook {hook} {action} {name}: {e}"))?;
        if status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&err);
        let text = text.trim();
        let tail = match text.char_indices().rev().nth(STDERR_TAIL) {
            Some((i, _)) => &text[i..],
            None => text,
        };
        let tail = tail.replace('\n', " | ");
        Err(format!(
            "dns_hook {hook} {action} {name} failed ({status}){}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ))
    }
}
