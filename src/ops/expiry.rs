//! Expiry monitoring for every served certificate, whatever its source (files, ACME, local CA):
//! a warning when one gets within 30, 14, 7 and 1 days of expiry, an error every hour once it
//! has expired. The figures are what a metrics endpoint will export.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use x509_parser::prelude::FromDer;

use crate::server::ServerState;
use crate::tls::certs::fmt_time;

/// Days-left thresholds that get a warning each.
pub const THRESHOLDS: [i64; 4] = [30, 14, 7, 1];

/// The smallest threshold `days_left` has reached (`Some(0)`: expired), if any. Only thresholds
/// below half the certificate's lifetime count: a 7-day certificate (local CA, short-lived ACME
/// profiles) is renewed long before "30 days left" would mean anything.
pub fn level(days_left: i64, lifetime_days: i64) -> Option<i64> {
    if days_left < 0 {
        return Some(0);
    }
    THRESHOLDS
        .iter()
        .rev()
        .find(|&&t| days_left < t && 2 * t < lifetime_days.max(2))
        .copied()
}

/// Site, subject, start and end of validity (Unix time) of every certificate served now,
/// on-demand ones included.
pub fn served(state: &ServerState) -> Vec<(String, String, i64, i64)> {
    let mut out = Vec::new();
    // Sites' certificates first, then the streams'.
    let sites = state.front.sites.len();
    let site_name = |i: usize| match state.front.sites.get(i) {
        Some(s) => s.name.clone(),
        None => state
            .stream_cert_names
            .get(i - sites)
            .cloned()
            .unwrap_or_default(),
    };
    let on_demand = state.front.on_demand.iter().flat_map(|(i, named)| {
        named
            .all()
            .into_iter()
            .map(move |(_, ck)| (format!("{} (on demand)", site_name(*i)), ck))
    });
    let chains = state
        .tls
        .certs
        .iter()
        .enumerate()
        .flat_map(|(i, certs)| {
            certs
                .current()
                .iter()
                .map(|ck| (site_name(i), ck.clone()))
                .collect::<Vec<_>>()
        })
        .chain(on_demand);
    for (site, ck) in chains {
        let Some(der) = ck.cert.first() else { continue };
        if let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) {
            out.push((
                site,
                cert.subject().to_string(),
                cert.validity().not_before.timestamp(),
                cert.validity().not_after.timestamp(),
            ));
        }
    }
    out
}

/// Checks every hour until `shutdown`, on its own thread.
pub fn spawn(state: Arc<ServerState>, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("portcullis-expiry".into()).spawn(move || {
        // Last level warned about per (site, subject): each threshold is logged once.
        let mut warned: HashMap<(String, String), i64> = HashMap::new();
        loop {
            let now = crate::tls::certs::unix_now();
            for (site, subject, not_before, not_after) in served(&state) {
                let days = (not_after - now).div_euclid(86400);
                let Some(lvl) = level(days, (not_after - not_before) / 86400) else {
                    warned.remove(&(site, subject));
                    continue;
                };
                if lvl == 0 {
                    tracing::error!(site, subject, expired = %fmt_time(not_after), "certificate has EXPIRED: clients refuse it");
                    super::events::expiry_warning(&site, &subject, days, not_after);
                } else if warned.get(&(site.clone(), subject.clone())) != Some(&lvl) {
                    tracing::warn!(site, subject, expires = %fmt_time(not_after), days_left = days, "certificate expires soon");
                    super::events::expiry_warning(&site, &subject, days, not_after);
                    warned.insert((site, subject), lvl);
                }
            }
            if !crate::server::hourly_wait(&shutdown) {
                return;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(90, 90), None);
        assert_eq!(level(30, 90), None);
        assert_eq!(level(29, 90), Some(30));
        assert_eq!(level(13, 90), Some(14));
        assert_eq!(level(6, 90), Some(7));
        assert_eq!(level(0, 90), Some(1));
        assert_eq!(level(-1, 90), Some(0));
        // A 7-day certificate: only the last day counts, and expiry.
        assert_eq!(level(6, 7), None);
        assert_eq!(level(2, 7), None);
        assert_eq!(level(0, 7), Some(1));
        assert_eq!(level(-1, 7), Some(0));
    }
}
