//! Mixed content: what the page (the final answer, after redirects) loads over plain `http://`.
//!
//! The HTML is parsed with `scraper` (html5ever, Servo's implementation of the WHATWG parsing
//! algorithm, so the element tree is the one a browser builds: `<noscript>` content is text,
//! misnested tags are fixed up the same way), and every URL is resolved with `url` against the
//! page and its `<base href>`, as a browser resolves it. Only the markup is read: loads made by
//! scripts (`fetch`, XHR) or stylesheets (`@import`, `url()`) are not seen.
//!
//! How browsers treat what is found (the W3C Mixed Content spec, as Chromium applies it):
//! blockable loads (scripts, stylesheets, frames, plugins, fonts and other fetches) are
//! blocked, so the page breaks: an error. Images, audio and video are upgraded to https:// or
//! shown with "Not secure": a warning. A form that submits to http:// gets a warning before
//! sending: a warning.

use scraper::{ElementRef, Html};
use serde::Serialize;
use url::Url;

use super::http::{Answer, MAX_PAGE};
use super::report::{Check, Report};

/// Findings named in the summary line; the `mixed_content` fact has them all.
const SHOWN: usize = 5;

/// How a browser treats a load over http:// from an https:// page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Blocked (scripts, stylesheets, frames, objects, fetches).
    Active,
    /// Loaded upgraded or shown as "Not secure" (images, audio, video).
    Passive,
    /// A form submitting to http:// (the browser warns before sending).
    Form,
    /// `<base href="http://…">`: relative links resolve to http://.
    Base,
}

/// One subresource (or form target, or base) over http://.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub element: String,
    pub attribute: &'static str,
    pub url: String,
    pub kind: Kind,
}

/// The `http.mixed_content` check of the page at `page_url` (the final answer).
pub(super) fn mixed_content(answer: &Answer, page_url: &str, report: &mut Report) {
    let Some(html) = answer.html.as_ref().filter(|_| answer.status == 200) else {
        let what = if answer.status != 200 {
            format!("the page answers {}", answer.status)
        } else {
            "the page is not HTML".to_owned()
        };
        report.push(Check::ok(
            "http.mixed_content",
            format!("mixed content not checked: {what}"),
        ));
        return;
    };
    let Ok(page) = Url::parse(page_url) else {
        report.push(Check::ok(
            "http.mixed_content",
            format!("mixed content not checked: {page_url} is not a URL"),
        ));
        return;
    };
    // Bytes that are not UTF-8 (a legacy charset) become U+FFFD: URLs are ASCII in practice,
    // and the elements and attributes searched for are ASCII in every charset browsers use.
    let found = find(&String::from_utf8_lossy(html), &page);
    let value: Vec<serde_json::Value> = found
        .iter()
        .filter_map(|f| serde_json::to_value(f).ok())
        .collect();
    report.fact("mixed_content", value);
    let partly = if answer.truncated {
        format!(
            " (only the first {} MiB of the page were read)",
            MAX_PAGE >> 20
        )
    } else {
        String::new()
    };
    if found.is_empty() {
        report.push(Check::ok(
            "http.mixed_content",
            format!("no mixed content: the page loads nothing over http://{partly}"),
        ));
        return;
    }
    let active = found.iter().filter(|f| f.kind == Kind::Active).count();
    let mut shown: Vec<String> = found
        .iter()
        .take(SHOWN)
        .map(|f| format!("<{} {}={}>", f.element, f.attribute, f.url))
        .collect();
    if found.len() > SHOWN {
        shown.push(format!("and {} more", found.len() - SHOWN));
    }
    let summary = format!(
        "mixed content: {} item(s) over http:// ({active} blocked by browsers): {}{partly}",
        found.len(),
        shown.join(", ")
    );
    let fix = "load them over https:// (or relative to the page); Content-Security-Policy: upgrade-insecure-requests makes browsers do it for every load";
    report.push(if active > 0 {
        Check::error("http.mixed_content", summary)
            .cause("an https:// page loads scripts, stylesheets, frames or objects over http://: browsers block them, so the page breaks (and shows no padlock)")
            .fix(fix)
    } else {
        Check::warning("http.mixed_content", summary)
            .cause("images or media over http:// are upgraded or mark the page \"Not secure\"; a form posting to http:// makes browsers warn before sending; <base href=\"http://…\"> sends relative links to http://")
            .fix(fix)
    });
}

/// Everything the document at `page` loads or submits over http://, in document order.
pub fn find(document: &str, page: &Url) -> Vec<Finding> {
    let doc = Html::parse_document(document);
    let elements: Vec<ElementRef<'_>> = doc
        .root_element()
        .descendants()
        .filter_map(ElementRef::wrap)
        .collect();
    // The document's base URL: the first <base> with an href (HTML §4.2.3), resolved against
    // the page.
    let base_href = elements
        .iter()
        .find(|e| e.value().name() == "base" && e.value().attr("href").is_some())
        .and_then(|e| e.value().attr("href"));
    let base = base_href
        .and_then(|h| page.join(h.trim()).ok())
        .unwrap_or_else(|| page.clone());
    let mut out = Vec::new();
    let mut add = |element: &str, attribute: &'static str, value: &str, kind: Kind, base: &Url| {
        if let Ok(u) = base.join(value.trim()) {
            if u.scheme() == "http" {
                out.push(Finding {
                    element: element.to_owned(),
                    attribute,
                    url: u.to_string(),
                    kind,
                });
            }
        }
    };
    if let Some(h) = base_href {
        add("base", "href", h, Kind::Base, page);
    }
    for e in &elements {
        let el = e.value();
        let name = el.name();
        let attr = |a: &str| el.attr(a).filter(|v| !v.trim().is_empty());
        let targets: &[(&'static str, Kind)] = match name {
            "script" => &[("src", Kind::Active)],
            "iframe" | "frame" => &[("src", Kind::Active)],
            "object" => &[("data", Kind::Active)],
            "embed" => &[("src", Kind::Active)],
            "img" => &[("src", Kind::Passive), ("srcset", Kind::Passive)],
            "audio" => &[("src", Kind::Passive)],
            "video" => &[("src", Kind::Passive), ("poster", Kind::Passive)],
            // <source> in <picture> has srcset; in <audio>/<video>, src.
            "source" => &[("src", Kind::Passive), ("srcset", Kind::Passive)],
            // Text tracks are not among the upgradable media types: blocked.
            "track" => &[("src", Kind::Active)],
            "form" => &[("action", Kind::Form)],
            "button" | "input" => &[("formaction", Kind::Form)],
            "link" => match link_kind(el.attr("rel"), el.attr("as")) {
                Some(Kind::Active) => &[("href", Kind::Active)],
                Some(_) => &[("href", Kind::Passive)],
                None => &[],
            },
            _ => &[],
        };
        for &(a, kind) in targets {
            let Some(v) = attr(a) else { continue };
            if a == "srcset" {
                for candidate in srcset_urls(v) {
                    add(name, a, candidate, kind, &base);
                }
            } else {
                add(name, a, v, kind, &base);
            }
        }
    }
    out
}

/// What a `<link>` loads, by its `rel` (and `as` for preloads); `None` for links that load
/// nothing by themselves (`canonical`, `alternate`, hints such as `dns-prefetch`…).
fn link_kind(rel: Option<&str>, as_: Option<&str>) -> Option<Kind> {
    let rels: Vec<String> = rel?
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let has = |r: &str| rels.iter().any(|x| x == r);
    if has("stylesheet") || has("modulepreload") || has("manifest") {
        return Some(Kind::Active);
    }
    if has("preload") || has("prefetch") {
        let media = as_.is_some_and(|a| {
            ["image", "audio", "video"]
                .iter()
                .any(|m| a.trim().eq_ignore_ascii_case(m))
        });
        return Some(if media { Kind::Passive } else { Kind::Active });
    }
    if has("icon") || has("apple-touch-icon") || has("mask-icon") {
        return Some(Kind::Passive);
    }
    None
}

/// The URLs of a `srcset` (HTML §4.8.4.3.10, "parse a srcset attribute"): each candidate is
/// a URL (a run of non-space characters; trailing commas end it) then descriptors up to a
/// comma outside parentheses. Hand-written: the algorithm is a dozen lines and the crates
/// that implement it come with image-selection logic not needed here.
fn srcset_urls(srcset: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = srcset;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let (url, after) = rest.split_at(end);
        let trimmed = url.trim_end_matches(',');
        if !trimmed.is_empty() {
            out.push(trimmed);
        }
        rest = after;
        if trimmed.len() != url.len() {
            // The URL ended with a comma: no descriptors.
            continue;
        }
        // Skip the descriptors, up to a comma outside parentheses.
        let mut depth = 0u32;
        let mut cut = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    cut = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[cut..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(doc: &str) -> Vec<(String, &'static str, String, Kind)> {
        let page = Url::parse("https://alpha.test/dir/page.html").unwrap();
        find(doc, &page)
            .into_iter()
            .map(|f| (f.element, f.attribute, f.url, f.kind))
            .collect()
    }

    #[test]
    fn srcset_candidates_are_split_as_browsers_split_them() {
        assert_eq!(
            srcset_urls("a.png 1x, http://x/b.png 2x,c.png,  d,e.png 100w"),
            vec!["a.png", "http://x/b.png", "c.png", "d,e.png"]
        );
        assert_eq!(
            srcset_urls("data:image/png;base64,AAA= 1x, b.png (a, b) 2x"),
            vec!["data:image/png;base64,AAA=", "b.png"]
        );
        assert!(srcset_urls("  , ,").is_empty());
    }

    #[test]
    fn only_loads_over_http_are_listed_with_their_kind() {
        let found = urls(
            r#"<html><head>
            <link rel="stylesheet" href="http://cdn.test/a.css">
            <link rel="canonical" href="http://alpha.test/">
            <link rel="preload" as="image" href="http://cdn.test/hero.jpg">
            <link rel="preload" as="font" href="http://cdn.test/f.woff2">
            <link rel="icon" href="//alpha.test/favicon.ico">
            </head><body>
            <noscript><img src="http://cdn.test/tracker.gif"></noscript>
            <img srcset="https://cdn.test/1.png 1x, http://cdn.test/2.png 2x">
            <a href="http://elsewhere.test/">a link loads nothing</a>
            <button formaction="http://alpha.test/buy">buy</button>
            </body></html>"#,
        );
        let want = [
            ("link", "href", "http://cdn.test/a.css", Kind::Active),
            ("link", "href", "http://cdn.test/hero.jpg", Kind::Passive),
            ("link", "href", "http://cdn.test/f.woff2", Kind::Active),
            ("img", "srcset", "http://cdn.test/2.png", Kind::Passive),
            ("button", "formaction", "http://alpha.test/buy", Kind::Form),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(e, a, u, k)| (e.to_string(), *a, u.to_string(), *k))
            .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn a_base_over_http_turns_relative_and_protocol_relative_urls_into_http() {
        let found = urls(
            r#"<img src="before.png"><base href="http://static.test/x/"><script src="app.js"></script>
            <img src="//img.test/a.png"><img src="https://img.test/b.png">"#,
        );
        let list: Vec<_> = found.iter().map(|f| (f.0.as_str(), f.2.as_str())).collect();
        assert_eq!(
            list,
            vec![
                ("base", "http://static.test/x/"),
                // The first <base> applies to the whole document, before it too.
                ("img", "http://static.test/x/before.png"),
                ("script", "http://static.test/x/app.js"),
                ("img", "http://img.test/a.png"),
            ]
        );
    }
}
