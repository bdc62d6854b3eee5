//! Configuration: parse (TOML or command-line flags) → validate → one typed [`model::Config`].
//!
//! Every input form goes through the same [`validate::validate`], so `portcullis check` and
//! `portcullis serve` see exactly the same problems. Problems carry where they come from (file and
//! line, or the command-line flag) and a fix, and are all reported at once, not one per run.

pub mod access;
pub mod admin;
pub mod hsts;
pub mod limits;
pub mod log;
pub mod model;
pub mod proxy;
pub mod raw;
pub mod slow;
pub mod storage;
pub mod stream;
pub mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use model::Config;

/// How serious a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth knowing; never blocks anything.
    Warning,
    /// `check` fails; `serve` refuses to start.
    Error,
}

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A place in a config file (1-based line).
    File { path: PathBuf, line: usize },
    /// A command-line flag, e.g. `--cert`.
    Flag(String),
    /// Nowhere in particular (built-in defaults, whole-config problems).
    None,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Location::Flag(flag) => write!(f, "{flag}"),
            Location::None => write!(f, "config"),
        }
    }
}

/// One thing wrong (or worth a warning) in the configuration or what it points to.
#[derive(Debug, Clone)]
pub struct Problem {
    pub severity: Severity,
    pub location: Location,
    /// What is wrong, naming the site/key/file concerned.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Problem {
    pub fn error(location: Location, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            location,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warning(location: Location, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            location,
            message: message.into(),
            fix: None,
        }
    }

    /// Adds the fix that the message's reader should apply.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {sev}: {}", self.location, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

/// Where the raw configuration came from; turns byte spans into [`Location`]s.
#[derive(Debug, Clone)]
pub enum Source {
    /// A TOML file and its text.
    File { path: PathBuf, text: String },
    /// Built from command-line flags (spans are meaningless; each value names its flag).
    Flags,
}

impl Source {
    /// The location of a byte span, or `flag` for configurations built from flags.
    pub fn locate(&self, span: Range<usize>, flag: &str) -> Location {
        match self {
            Source::File { path, text } => Location::File {
                path: path.clone(),
                line: line_of(text, span.start),
            },
            Source::Flags => {
                if flag.is_empty() {
                    Location::None
                } else {
                    Location::Flag(flag.to_string())
                }
            }
        }
    }

    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self {
            Source::File { path, .. } => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            Source::Flags => PathBuf::new(),
        }
    }
}

/// 1-based line number of byte offset `pos` in `text`.
pub fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads and parses a TOML config file. Syntax errors, wrong types and unknown keys come back
/// as one [`Problem`] naming the file and line.
pub fn parse_file(path: &Path) -> Result<(raw::RawConfig, Source), Problem> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem::error(
            Location::Flag(path.display().to_string()),
            format!("cannot read config file: {e}"),
        )
        .fix("check the path given to --config and its permissions")
    })?;
    parse_text(path, text)
}

/// Parses the text of a config file read from `path` (see [`parse_file`]).
pub fn parse_text(path: &Path, text: String) -> Result<(raw::RawConfig, Source), Problem> {
    let parsed = toml::from_str::<raw::RawConfig>(&text);
    let source = Source::File {
        path: path.to_path_buf(),
        text,
    };
    match parsed {
        Ok(raw) => Ok((raw, source)),
        Err(e) => {
            let loc = match e.span() {
                Some(span) => source.locate(span, ""),
                None => Location::File {
                    path: path.to_path_buf(),
                    line: 1,
                },
            };
            // toml's message is multi-line with a source excerpt; keep its first line only.
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            let fix = if msg.contains("unknown field") {
                "remove or rename the key; see portcullis.example.toml for every valid key"
            } else {
                "fix the TOML syntax or value type at that line"
            };
            Err(Problem::error(loc, msg).fix(fix))
        }
    }
}

/// Reads, parses and validates a config file in one step.
pub fn load(
    path: &Path,
    overrides: &validate::Overrides,
    mode: validate::Mode,
) -> validate::Validated {
    let (raw, source) = parse_file(path).map_err(|p| vec![p])?;
    validate::validate(raw, &source, overrides, mode)
}
