//! Which protocol versions, cipher suites and key-exchange groups a server accepts, asked with
//! hand-built ClientHellos (so that SSLv3, TLS 1.0/1.1 and weak suites can be offered, which no
//! maintained TLS library will do) and judged as browsers would.
//!
//! Each question is one fresh TCP connection carrying one ClientHello; the server's first answer
//! (ServerHello, HelloRetryRequest, alert) is the reply, and no handshake is ever finished.
//! Questions run concurrently, at most [`CONCURRENCY`] at a time, each bounded by the probe's
//! timeout: on loopback the whole scan takes milliseconds.
//!
//! - Versions: one hello per version, offering every suite.
//! - Suites: for each accepted version, offer the list, note the suite chosen, take it out and
//!   ask again until the server refuses. The order found is the server's own when it has one.
//!   Server preference: the accepted suites offered in two opposite orders; a server that takes
//!   the first offered both times follows the client's order.
//! - Groups: TLS 1.3 hellos that list one group and send no key share: a server that accepts
//!   the group asks for its share with a HelloRetryRequest naming it (which avoids sending
//!   1216-byte ML-KEM shares). TLS 1.2: ECDHE-only hellos listing one curve.
//!
//! Not here: whether a handshake with those settings completes (the rustls handshake checks
//! that), certificate or signature-algorithm questions, TLS 1.3 0-RTT.

mod hello;
mod judge;
mod reply;
mod suites;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::report::Report;
use super::Options;
use hello::ClientHello;
use reply::Answer;
use suites::{Group, Version};

/// Questions in flight at once: enough to scan a healthy server in milliseconds, few enough
/// not to look like a flood (or trip per-client connection limits).
const CONCURRENCY: usize = 8;

/// Scans `addr` and reports `tls.versions`, `tls.ciphers`, `tls.preference` and `tls.groups`,
/// their checks inserted at index `at` of the report's. `sni` is sent in every hello (none
/// for IP addresses).
pub(super) async fn run(
    addr: SocketAddr,
    sni: Option<&str>,
    opts: &Options,
    report: &mut Report,
    at: usize,
) {
    let asker = Arc::new(Asker {
        addr,
        sni: sni.map(str::to_owned),
        timeout: opts.timeout,
        limit: tokio::sync::Semaphore::new(CONCURRENCY),
    });
    let scan = scan(&asker).await;
    let mut found = Report::new(String::new());
    scan.report(&mut found);
    let at = at.min(report.checks.len());
    report.checks.splice(at..at, found.checks);
    report.facts.extend(found.facts);
}

/// Asks questions of one server.
struct Asker {
    addr: SocketAddr,
    sni: Option<String>,
    timeout: Duration,
    limit: tokio::sync::Semaphore,
}

/// The TLS 1.3 key share to send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Share {
    /// An X25519 share (the version and suite questions).
    X25519,
    /// An empty list (the group questions).
    None,
}

impl Asker {
    async fn ask(&self, version: Version, suites: &[u16], groups: &[u16], share: Share) -> Answer {
        let Ok(_permit) = self.limit.acquire().await else {
            return Answer::TimedOut;
        };
        let key_share = match (version, share) {
            (Version::Tls13, Share::X25519) => {
                hello::x25519_public_key().map(|k| (suites::X25519, k))
            }
            _ => None,
        };
        let hello = ClientHello {
            version,
            suites,
            groups,
            key_share,
            sni: self.sni.as_deref(),
        };
        reply::ask(self.addr, &hello, self.timeout).await
    }
}

/// Everything the scan found.
#[derive(Debug, Default)]
struct Scan {
    /// Each version's first answer (to a hello offering every suite).
    answers: BTreeMap<Version, Answer>,
    /// The suites each accepted version accepts, in the order found.
    suites: BTreeMap<Version, Vec<u16>>,
    /// Versions whose suite list may be short: a question went unanswered.
    incomplete: Vec<Version>,
    /// Whether the server picks by its own order, per version with two suites or more.
    preference: BTreeMap<Version, bool>,
    /// TLS 1.3 group questions and their answers.
    groups13: Vec<(Group, Answer)>,
    /// TLS 1.2 (ECDHE) curve questions and their answers.
    groups12: Vec<(Group, Answer)>,
}

impl Scan {
    fn accepted(&self, v: Version) -> bool {
        self.answers
            .get(&v)
            .and_then(Answer::hello)
            .is_some_and(|h| h.version == v.wire())
    }

    fn accepted_versions(&self) -> Vec<Version> {
        Version::ALL
            .into_iter()
            .filter(|v| self.accepted(*v))
            .collect()
    }
}

/// A boxed question task (tasks of different shapes run in one set).
type Task<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs `tasks` concurrently (each question still waits for its turn at the semaphore); the
/// results in the order given.
async fn all<T: Send + 'static>(tasks: Vec<Task<T>>) -> Vec<T> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        set.spawn(async move { (i, t.await) });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        // A task only fails if it panicked, which none of these does; its result is left out.
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}

/// The questions, in three rounds: versions; then suites and groups of the accepted versions;
/// then server preference.
async fn scan(asker: &Arc<Asker>) -> Scan {
    let all_groups: Vec<u16> = suites::GROUPS.iter().map(|g| g.id).collect();
    let mut scan = Scan::default();

    // Round 1: one hello per version, offering every suite of that version.
    let tasks: Vec<Task<(Version, Answer)>> = Version::ALL
        .into_iter()
        .map(|v| {
            let asker = asker.clone();
            let groups = all_groups.clone();
            Box::pin(async move { (v, asker.ask(v, offer(v), &groups, Share::X25519).await) })
                as Task<_>
        })
        .collect();
    scan.answers = all(tasks).await.into_iter().collect();
    let accepted = scan.accepted_versions();
    // Nothing more to ask of a server that accepts nothing (or is not a TLS server).
    if accepted.is_empty() {
        return scan;
    }

    // Round 2: the remaining suites of each accepted version, and the groups.
    enum Found {
        Suites(Version, Vec<u16>, bool),
        Group13(Group, Answer),
        Group12(Group, Answer),
    }
    let mut tasks: Vec<Task<Found>> = Vec::new();
    for &v in &accepted {
        let Some(first) = scan.answers.get(&v).and_then(Answer::hello) else {
            continue;
        };
        let asker = asker.clone();
        let groups = all_groups.clone();
        tasks.push(Box::pin(async move {
            let (list, complete) = enumerate(&asker, v, first.suite, &groups).await;
            Found::Suites(v, list, complete)
        }));
    }
    if accepted.contains(&Version::Tls13) {
        for &g in suites::GROUPS {
            let asker = asker.clone();
            tasks.push(Box::pin(async move {
                let a = asker
                    .ask(Version::Tls13, suites::TLS13_SUITES, &[g.id], Share::None)
                    .await;
                Found::Group13(g, a)
            }));
        }
    }
    if accepted.contains(&Version::Tls12) {
        let ecdhe: Vec<u16> = suites::LEGACY_SUITES
            .iter()
            .copied()
            .filter(|s| suites::is_ecdhe(*s))
            .collect();
        for &g in suites::GROUPS.iter().filter(|g| g.ec) {
            let asker = asker.clone();
            let ecdhe = ecdhe.clone();
            tasks.push(Box::pin(async move {
                let a = asker
                    .ask(Version::Tls12, &ecdhe, &[g.id], Share::None)
                    .await;
                Found::Group12(g, a)
            }));
        }
    }
    for found in all(tasks).await {
        match found {
            Found::Suites(v, list, complete) => {
                if !complete {
                    scan.incomplete.push(v);
                }
                scan.suites.insert(v, list);
            }
            Found::Group13(g, a) => scan.groups13.push((g, a)),
            Found::Group12(g, a) => scan.groups12.push((g, a)),
        }
    }

    // Round 3: server preference, where there is a choice.
    let tasks: Vec<Task<(Version, Option<bool>)>> = scan
        .suites
        .iter()
        .filter(|(_, l)| l.len() >= 2)
        .map(|(&v, list)| {
            let asker = asker.clone();
            let list = list.clone();
            let groups = all_groups.clone();
            Box::pin(async move { (v, preference(&asker, v, list, &groups).await) }) as Task<_>
        })
        .collect();
    for (v, p) in all(tasks).await {
        if let Some(p) = p {
            scan.preference.insert(v, p);
        }
    }
    scan
}

/// Every suite offered for `v`.
fn offer(v: Version) -> &'static [u16] {
    match v {
        Version::Tls13 => suites::TLS13_SUITES,
        _ => suites::LEGACY_SUITES,
    }
}

/// The suites `v` accepts, starting from `first` (the choice from the full list): offer the
/// rest, note the choice, take it out, until the server refuses. Also whether the list is
/// complete (every question answered).
async fn enumerate(asker: &Asker, v: Version, first: u16, groups: &[u16]) -> (Vec<u16>, bool) {
    let mut found = vec![first];
    let mut rest: Vec<u16> = offer(v).iter().copied().filter(|s| *s != first).collect();
    while !rest.is_empty() {
        let a = asker.ask(v, &rest, groups, Share::X25519).await;
        match a.hello() {
            Some(h) if h.version == v.wire() && rest.contains(&h.suite) => {
                found.push(h.suite);
                rest.retain(|s| *s != h.suite);
            }
            // A suite not offered, or another version: the server is confused; what was found
            // stands.
            Some(_) => break,
            None => return (found, !a.untested()),
        }
    }
    (found, true)
}

/// Whether the server picks the suite by its own order: `list` (two suites or more) offered
/// as found and reversed. `None` when a question went unanswered.
async fn preference(asker: &Asker, v: Version, list: Vec<u16>, groups: &[u16]) -> Option<bool> {
    let reversed: Vec<u16> = list.iter().rev().copied().collect();
    let a = asker.ask(v, &list, groups, Share::X25519).await.hello()?;
    let b = asker
        .ask(v, &reversed, groups, Share::X25519)
        .await
        .hello()?;
    // Taking the first offered both times: the client's order.
    Some(!(a.suite == list[0] && b.suite == reversed[0]))
}
