//! `[limits]` against slow clients: `body_timeout` and `min_body_rate` (the request body's
//! pace; see [`crate::http::pace`]).

use std::time::Duration;

use toml::Spanned;

use super::model::BodyPace;
use super::validate::Ctx;

/// Parses a rate such as `"1KiB/s"`, `"512B/s"`, `"2MB/s"` or `"0"` (off) into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s == "0" || s == "off" {
        return Ok(0);
    }
    let Some(per) = s.strip_suffix("/s") else {
        return Err("a rate ends in /s".into());
    };
    let digits = per
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .trim();
    let unit = per[digits.len()..].trim();
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{digits:?} is not a whole number"))?;
    let scale = match unit {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        _ => return Err(format!("unknown unit {unit:?} (B, KB, KiB, MB, MiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| "too large".into())
}

/// The request body's pace from `[limits]` (defaults where absent); problems go to `cx`.
pub(super) fn body_pace(
    cx: &mut Ctx<'_>,
    timeout: &Option<Spanned<String>>,
    rate: &Option<Spanned<String>>,
) -> BodyPace {
    let d = BodyPace::default();
    let window = cx.duration(
        timeout,
        "limits.body_timeout",
        d.window,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    let min_rate = match rate {
        None => d.min_rate,
        Some(v) => match parse_rate(v.get_ref()) {
            Ok(r) => r,
            Err(why) => {
                let loc = cx.loc(v, "");
                cx.err(
                    loc,
                    format!("limits.min_body_rate = {:?}: {why}", v.get_ref()),
                    "use a rate such as \"1KiB/s\" (or \"0\" for no minimum)",
                );
                d.min_rate
            }
        },
    };
    BodyPace { window, min_rate }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_with_their_units() {
        assert_eq!(parse_rate("1KiB/s"), Ok(1024));
        assert_eq!(parse_rate("512B/s"), Ok(512));
        assert_eq!(parse_rate("300/s"), Ok(300));
        assert_eq!(parse_rate("2 MB/s"), Ok(2_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("1KiB").is_err());
        assert!(parse_rate("fast/s").is_err());
        assert!(parse_rate("1GiB/s").is_err());
    }
}
