//! What a probe found: checks with a verdict, the browser error a user would see, the likely
//! cause and the fix; rendered for people (✔ / ✘ / !, colour on a terminal) or as JSON.

use serde::Serialize;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Works, but something should change.
    Warning,
    /// Broken for (some) users.
    Error,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short stable id for scripts (`tcp`, `tls.versions`, `cert.expiry`…).
    pub id: &'static str,
    pub verdict: Verdict,
    /// What was found, in a line.
    pub summary: String,
    /// The error a browser shows for it (`NET::ERR_CERT_DATE_INVALID`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_error: Option<&'static str>,
    /// The likely cause, in plain words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// What to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(id: &'static str, summary: impl Into<String>) -> Self {
        Check {
            id,
            verdict: Verdict::Ok,
            summary: summary.into(),
            browser_error: None,
            cause: None,
            fix: None,
        }
    }

    pub fn warning(id: &'static str, summary: impl Into<String>) -> Self {
        Check {
            verdict: Verdict::Warning,
            ..Check::ok(id, summary)
        }
    }

    pub fn error(id: &'static str, summary: impl Into<String>) -> Self {
        Check {
            verdict: Verdict::Error,
            ..Check::ok(id, summary)
        }
    }

    pub fn browser(mut self, e: &'static str) -> Self {
        self.browser_error = Some(e);
        self
    }

    pub fn cause(mut self, c: impl Into<String>) -> Self {
        self.cause = Some(c.into());
        self
    }

    pub fn fix(mut self, f: impl Into<String>) -> Self {
        self.fix = Some(f.into());
        self
    }
}

/// Everything a probe of one endpoint found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was probed, as `host:port`.
    pub target: String,
    /// The addresses tried, in order.
    pub addresses: Vec<String>,
    /// The connection could not be made at all (exit code 3).
    pub unreachable: bool,
    pub checks: Vec<Check>,
    /// Facts for scripts (negotiated version, cipher, ALPN, certificate names…).
    pub facts: serde_json::Map<String, serde_json::Value>,
    /// The summary grade (README: "Diagnosing an HTTPS endpoint"); none when the endpoint
    /// could not be reached.
    pub grade: Option<super::grade::Grade>,
    /// The rules that set the grade.
    pub grade_reasons: Vec<&'static str>,
    /// How long the probe took, in milliseconds.
    pub took_ms: u64,
}

impl Report {
    pub fn new(target: String) -> Self {
        Report {
            target,
            addresses: Vec::new(),
            unreachable: false,
            checks: Vec::new(),
            facts: serde_json::Map::new(),
            grade: None,
            grade_reasons: Vec::new(),
            took_ms: 0,
        }
    }

    pub fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    pub fn fact(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.facts.insert(key.to_owned(), value.into());
    }

    /// Grades the checks made; the probe's last step.
    pub fn finish(&mut self, took: std::time::Duration) {
        self.took_ms = took.as_millis() as u64;
        if let Some((grade, reasons)) = super::grade::grade(self) {
            self.grade = Some(grade);
            self.grade_reasons = reasons;
        }
    }

    /// The worst verdict.
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    /// 0: good, 1: warnings, 2: errors, 3: could not connect.
    pub fn exit_code(&self) -> i32 {
        if self.unreachable {
            return 3;
        }
        match self.worst() {
            Verdict::Ok => 0,
            Verdict::Warning => 1,
            Verdict::Error => 2,
        }
    }

    /// The report for people; `colour` on a terminal.
    pub fn render(&self, colour: bool) -> String {
        let paint = |code: &str, s: &str| {
            if colour {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_owned()
            }
        };
        let mut out = format!("portcullis probe {}\n", self.target);
        if !self.addresses.is_empty() {
            out.push_str(&format!("  addresses: {}\n", self.addresses.join(", ")));
        }
        for c in &self.checks {
            let mark = match c.verdict {
                Verdict::Ok => paint("32", "✔"),
                Verdict::Warning => paint("33", "!"),
                Verdict::Error => paint("31", "✘"),
            };
            out.push_str(&format!("{mark} {}\n", c.summary));
            if let Some(b) = c.browser_error {
                out.push_str(&format!("    browsers show: {b}\n"));
            }
            if let Some(cause) = &c.cause {
                out.push_str(&format!("    likely cause: {cause}\n"));
            }
            if let Some(fix) = &c.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        let verdict = match self.exit_code() {
            0 => paint("32", "good"),
            1 => paint("33", "warnings"),
            2 => paint("31", "errors"),
            _ => paint("31", "could not connect"),
        };
        if let Some(g) = self.grade {
            let colour = match g {
                super::grade::Grade::APlus | super::grade::Grade::A => "32",
                super::grade::Grade::AMinus | super::grade::Grade::B => "33",
                _ => "31",
            };
            out.push_str(&format!("grade: {}\n", paint(colour, g.as_str())));
            for reason in &self.grade_reasons {
                out.push_str(&format!("    capped by: {reason}\n"));
            }
        }
        out.push_str(&format!("result: {verdict} ({} ms)\n", self.took_ms));
        out
    }
}
