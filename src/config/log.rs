//! Configuration of the logs: the `[log]` section (access-log default for every site, the TLS
//! event log, the per-cause line budget) and each site's `access_log`. The raw TOML shapes
//! and their validation into [`LogSettings`].
//!
//! ```toml
//! [log]
//! access_log = { format = "json", file = "/var/log/portcullis/access.log" }
//! tls_events = "/var/log/portcullis/tls.log"
//! lines_per_second = 10
//!
//! [[site]]
//! access_log = "off"   # or "json", "combined" (to stdout), or a table as above
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::validate::Ctx;
use crate::ops::access::AccessFormat;
use crate::ops::logfile::LogTarget;

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// The access log of every site that sets none of its own (and of requests no site
    /// answers, and of port 80). Default: off.
    pub access_log: Option<Spanned<RawAccessLog>>,
    /// The TLS event log: a file path, `"stdout"` or `"off"` (default).
    pub tls_events: Option<Spanned<String>>,
    /// Lines per second let through per cause, for lines clients can cause (failed
    /// handshakes, broken connections); the others are counted in a summary line. Default 10.
    pub lines_per_second: Option<Spanned<u32>>,
}

/// An `access_log` value: `false`/`"off"`, `true`/`"json"`/`"combined"` (to stdout), or
/// `{ format = "json" | "combined", file = "/path" | "stdout" }`.
#[derive(Debug)]
pub enum RawAccessLog {
    Bool(bool),
    Word(String),
    Table(RawAccessLogTable),
}

/// `{ format = ..., file = ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLogTable {
    /// `"json"` (default) or `"combined"`.
    pub format: Option<String>,
    /// A file path (appended to) or `"stdout"` (default).
    pub file: Option<String>,
}

impl<'de> Deserialize<'de> for RawAccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAccessLog;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "\"off\", \"json\", \"combined\" or { format = \"json\"|\"combined\", file = \"/path\"|\"stdout\" }",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawAccessLog, E> {
                Ok(RawAccessLog::Bool(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAccessLog, E> {
                Ok(RawAccessLog::Word(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawAccessLog, A::Error> {
                RawAccessLogTable::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawAccessLog::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// The logs, validated.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The default access log (`None`: off).
    pub access_log: Option<AccessLogSpec>,
    /// The TLS event log (`None`: off).
    pub tls_events: Option<LogTarget>,
    /// Lines per second per cause.
    pub lines_per_second: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            access_log: None,
            tls_events: None,
            lines_per_second: crate::ops::limit::DEFAULT_LINES_PER_SECOND,
        }
    }
}

/// An access log: its format and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    pub format: AccessFormat,
    pub target: LogTarget,
}

/// A site's `access_log`: `None` when the site sets none (the `[log]` default applies),
/// `Some(None)` when it is off for this site.
pub type SiteAccessLog = Option<Option<AccessLogSpec>>;

/// Validates `[log]` (and the older top-level `access_log = true|false`).
pub(super) fn settings(
    cx: &mut Ctx<'_>,
    raw: Option<&RawLog>,
    legacy: Option<&Spanned<bool>>,
) -> LogSettings {
    let mut out = LogSettings::default();
    let Some(raw) = raw else {
        if let Some(l) = legacy {
            out.access_log = l.get_ref().then(|| AccessLogSpec {
                format: AccessFormat::Json,
                target: LogTarget::Stdout,
            });
        }
        return out;
    };
    if let (Some(l), Some(_)) = (legacy, &raw.access_log) {
        let loc = cx.loc(l, "");
        cx.err(
            loc,
            "access_log is set twice: at the top of the file and in [log]",
            "keep only [log] access_log (the top-level access_log = true is its older spelling)",
        );
    }
    out.access_log = match &raw.access_log {
        Some(a) => access_log(cx, a, "log.access_log").flatten(),
        None => legacy.and_then(|l| {
            l.get_ref().then(|| AccessLogSpec {
                format: AccessFormat::Json,
                target: LogTarget::Stdout,
            })
        }),
    };
    if let Some(t) = &raw.tls_events {
        out.tls_events = match t.get_ref().as_str() {
            "off" | "" => None,
            "stdout" => Some(LogTarget::Stdout),
            path => {
                let loc = cx.loc(t, "");
                log_file(cx, path, loc, "log.tls_events")
            }
        };
    }
    if let Some(n) = &raw.lines_per_second {
        let v = *n.get_ref();
        if v == 0 || v > 100_000 {
            let loc = cx.loc(n, "");
            cx.err(
                loc,
                format!("log.lines_per_second = {v} is out of range"),
                "use 1 to 100000 lines per second per cause (default 10)",
            );
        } else {
            out.lines_per_second = v;
        }
    }
    out
}

/// Validates a site's `access_log`.
pub(super) fn site(
    cx: &mut Ctx<'_>,
    raw: Option<&Spanned<RawAccessLog>>,
    site: &str,
) -> SiteAccessLog {
    raw.and_then(|a| access_log(cx, a, &format!("site {site:?}: access_log")))
}

/// An `access_log` value: `Some(None)` = off; `None` = invalid (reported).
fn access_log(
    cx: &mut Ctx<'_>,
    raw: &Spanned<RawAccessLog>,
    what: &str,
) -> Option<Option<AccessLogSpec>> {
    let loc = cx.loc(raw, "");
    let (format, file) = match raw.get_ref() {
        RawAccessLog::Bool(false) => return Some(None),
        RawAccessLog::Bool(true) => ("json", None),
        RawAccessLog::Word(w) if w == "off" => return Some(None),
        RawAccessLog::Word(w) => (w.as_str(), None),
        RawAccessLog::Table(t) => (t.format.as_deref().unwrap_or("json"), t.file.as_deref()),
    };
    let format = match format {
        "json" => AccessFormat::Json,
        "combined" => AccessFormat::Combined,
        other => {
            cx.err(
                loc,
                format!("{what}: unknown format {other:?}"),
                "use \"json\", \"combined\" or \"off\"",
            );
            return None;
        }
    };
    let target = match file {
        None | Some("stdout") => LogTarget::Stdout,
        Some(path) => log_file(cx, path, loc, what)?,
    };
    Some(Some(AccessLogSpec { format, target }))
}

/// A log file path: relative to the config file's directory; its directory must exist and an
/// existing file must be a file we may append to (checked without creating anything).
fn log_file(cx: &mut Ctx<'_>, path: &str, loc: super::Location, what: &str) -> Option<LogTarget> {
    if path.is_empty() {
        cx.err(
            loc,
            format!("{what}: empty file name"),
            "give a file path, \"stdout\" or \"off\"",
        );
        return None;
    }
    let full: PathBuf = cx.path(path);
    let dir = full.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        cx.err(
            loc,
            format!("{what}: the directory of {} does not exist", full.display()),
            format!("create {} or choose another file", dir.display()),
        );
        return None;
    }
    if full.is_dir() {
        cx.err(
            loc,
            format!("{what}: {} is a directory", full.display()),
            "name a file in it, e.g. access.log",
        );
        return None;
    }
    if full.exists() {
        if let Err(e) = std::fs::OpenOptions::new().append(true).open(&full) {
            cx.err(
                loc,
                format!("{what}: cannot write to {}: {e}", full.display()),
                "fix the file's permissions or choose another file",
            );
            return None;
        }
    }
    Some(LogTarget::File(full))
}
