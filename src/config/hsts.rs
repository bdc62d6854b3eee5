//! `[site.hsts]`: a site's Strict-Transport-Security policy — a fixed header, none, or a ramp
//! whose max-age grows while the site keeps serving HTTPS without certificate problems (the
//! ramp itself runs in [`crate::ops::hsts`]).
//!
//! Defaults: a site with at least one public name sends `max-age=31536000`. A site whose
//! names are all local (`localhost`, `*.localhost`, IP addresses, `*.test`, `*.internal`, …,
//! see [`HostPattern::is_local`]) sends none unless its `[site.hsts]` says something: a year
//! of HSTS on `localhost` makes browsers force HTTPS on every other local development server
//! of the user, on any port.

use std::time::Duration;

use http::HeaderValue;
use toml::Spanned;

use super::raw::RawSite;
use super::validate::Ctx;
use super::{Location, Problem};
use crate::tls::names::HostPattern;

/// The max-age of the fixed header by default, and the last stage of `ramp = true`: one year.
pub const DEFAULT_MAX_AGE: u64 = 31_536_000;

/// The stages of `ramp = true`: 5 minutes, 1 day, 1 week, 1 year.
pub const DEFAULT_RAMP: [u64; 4] = [300, 86_400, 604_800, DEFAULT_MAX_AGE];

/// A site's HSTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HstsPolicy {
    /// No header (turned off, or a site with local names only).
    Off,
    /// The same header on every response.
    Fixed(HeaderValue),
    /// A header whose max-age grows stage by stage.
    Ramp(HstsRamp),
}

/// `hsts.ramp`: max-age values sent one after the other, each for at least its own duration
/// of certificate-problem-free service before the next (see [`crate::ops::hsts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HstsRamp {
    /// Max-age of each stage, strictly growing, at least one second each.
    pub stages: Vec<Duration>,
    pub include_subdomains: bool,
    /// `preload` is added at the last stage only (the preload list wants max-age ≥ 1 year).
    pub preload: bool,
}

impl HstsRamp {
    /// The header value of `stage` (clamped to the last one).
    pub fn value(&self, stage: usize) -> HeaderValue {
        let last = self.stages.len().saturating_sub(1);
        let stage = stage.min(last);
        let secs = self.stages.get(stage).map_or(0, Duration::as_secs);
        header_value(secs, self.include_subdomains, self.preload && stage == last)
    }
}

/// `max-age=N[; includeSubDomains][; preload]`.
fn header_value(max_age: u64, include_subdomains: bool, preload: bool) -> HeaderValue {
    let mut v = format!("max-age={max_age}");
    if include_subdomains {
        v.push_str("; includeSubDomains");
    }
    if preload {
        v.push_str("; preload");
    }
    // Digits, letters, '=', ';' and spaces only: always a valid header value.
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("max-age=31536000"))
}

/// The site's HSTS policy from `[site.hsts]` and its names.
pub(super) fn policy(
    cx: &mut Ctx<'_>,
    rs: &RawSite,
    name: &str,
    hosts: &[HostPattern],
) -> HstsPolicy {
    let hsts = &rs.hsts;
    let explicit = hsts.enabled.is_some()
        || hsts.max_age.is_some()
        || hsts.include_subdomains.is_some()
        || hsts.preload.is_some()
        || hsts.ramp.is_some();
    let enabled = hsts.enabled.unwrap_or(true);
    let sub = hsts.include_subdomains.unwrap_or(false);
    let preload = hsts.preload.as_ref().map(|p| *p.get_ref()).unwrap_or(false);
    let max_age = hsts.max_age.as_ref().map(|m| *m.get_ref());
    let ramp = match &hsts.ramp {
        Some(r) => ramp_stages(cx, r, max_age, name),
        None => None,
    };
    if !enabled {
        if let Some(r) = &hsts.ramp {
            let loc = cx.loc(r, "");
            cx.err(
                loc,
                format!("site {name:?}: hsts.ramp is set but hsts.enabled = false"),
                "remove ramp, or enabled = false",
            );
        }
        return HstsPolicy::Off;
    }
    let final_age = match &ramp {
        Some(stages) => stages.last().map_or(0, Duration::as_secs),
        None => max_age.unwrap_or(DEFAULT_MAX_AGE),
    };
    if preload && (!sub || final_age < DEFAULT_MAX_AGE) {
        let loc = hsts
            .preload
            .as_ref()
            .map(|p| cx.loc(p, ""))
            .unwrap_or(Location::None);
        cx.err(loc, format!("site {name:?}: hsts.preload needs include_subdomains = true and max_age ≥ 31536000 (the preload list refuses anything less)"), "set include_subdomains = true and max_age = 31536000 or more, or drop preload");
    }
    if !explicit && !hosts.is_empty() {
        let local: Vec<String> = hosts
            .iter()
            .filter(|h| h.is_local())
            .map(|h| h.to_string())
            .collect();
        if local.len() == hosts.len() {
            return HstsPolicy::Off;
        }
        if !local.is_empty() {
            cx.problems.push(
                Problem::warning(
                    cx.loc(&rs.hosts, ""),
                    format!(
                        "site {name:?}: HSTS (on by default for its public names) also reaches its local names {}: browsers then force HTTPS on every server of those names, on any port",
                        local.join(", ")
                    ),
                )
                .fix("move the local names to a site of their own, or write [site.hsts] enabled = true to keep it so"),
            );
        }
    }
    match ramp {
        Some(stages) => HstsPolicy::Ramp(HstsRamp {
            stages,
            include_subdomains: sub,
            preload,
        }),
        None => HstsPolicy::Fixed(header_value(final_age, sub, preload)),
    }
}

/// `ramp = true` (the default stages, the last one `max_age` when set) or `ramp = ["5m", …]`.
fn ramp_stages(
    cx: &mut Ctx<'_>,
    r: &Spanned<toml::Value>,
    max_age: Option<u64>,
    name: &str,
) -> Option<Vec<Duration>> {
    let loc = cx.loc(r, "");
    let secs = |s: &[u64]| {
        s.iter()
            .map(|&n| Duration::from_secs(n))
            .collect::<Vec<_>>()
    };
    let stages = match r.get_ref() {
        toml::Value::Boolean(false) => return None,
        toml::Value::Boolean(true) => {
            let mut stages = secs(&DEFAULT_RAMP);
            if let Some(m) = max_age {
                if m <= DEFAULT_RAMP[2] {
                    cx.err(
                        loc,
                        format!("site {name:?}: hsts.max_age = {m} is the last stage of ramp = true, and must be above its third stage (604800, one week)"),
                        "raise max_age, or list the stages: ramp = [\"5m\", \"1d\", \"1w\", \"1y\"]",
                    );
                    return None;
                }
                stages[3] = Duration::from_secs(m);
            }
            stages
        }
        toml::Value::Array(items) if !items.is_empty() => {
            if max_age.is_some() {
                cx.err(
                    loc,
                    format!("site {name:?}: hsts.max_age and a list of ramp stages both set the final max-age"),
                    "remove max_age: the last stage of ramp is the final max-age",
                );
                return None;
            }
            let mut out = Vec::new();
            for item in items {
                let Some(s) = item.as_str() else {
                    cx.err(
                        loc,
                        format!("site {name:?}: hsts.ramp: {item} is not a duration string"),
                        "write stages like ramp = [\"5m\", \"1d\", \"1w\", \"1y\"]",
                    );
                    return None;
                };
                let d = match humantime::parse_duration(s) {
                    Ok(d) if d.as_secs() >= 1 => Duration::from_secs(d.as_secs()),
                    Ok(_) => {
                        cx.err(
                            loc,
                            format!("site {name:?}: hsts.ramp stage {s:?} is shorter than one second (max-age 0 removes HSTS)"),
                            "give every stage at least \"1s\"",
                        );
                        return None;
                    }
                    Err(e) => {
                        cx.err(
                            loc,
                            format!("site {name:?}: hsts.ramp stage {s:?} is not a duration: {e}"),
                            "write stages like \"5m\", \"1d\", \"1w\", \"1y\"",
                        );
                        return None;
                    }
                };
                if out.last().is_some_and(|prev| *prev >= d) {
                    cx.err(
                        loc,
                        format!("site {name:?}: hsts.ramp stage {s:?} is not longer than the one before it"),
                        "list the stages from the shortest to the longest",
                    );
                    return None;
                }
                out.push(d);
            }
            out
        }
        other => {
            cx.err(
                loc,
                format!(
                    "site {name:?}: hsts.ramp = {other} is neither true/false nor a list of durations"
                ),
                "write ramp = true, or ramp = [\"5m\", \"1d\", \"1w\", \"1y\"]",
            );
            return None;
        }
    };
    Some(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_only_on_the_last_stage() {
        let r = HstsRamp {
            stages: secs(&DEFAULT_RAMP),
            include_subdomains: true,
            preload: true,
        };
        assert_eq!(r.value(0), "max-age=300; includeSubDomains");
        assert_eq!(r.value(2), "max-age=604800; includeSubDomains");
        assert_eq!(r.value(3), "max-age=31536000; includeSubDomains; preload");
        assert_eq!(r.value(9), "max-age=31536000; includeSubDomains; preload");
    }

    fn secs(s: &[u64]) -> Vec<Duration> {
        s.iter().map(|&n| Duration::from_secs(n)).collect()
    }
}
