//! The `Date` response header (RFC 9110 §6.6.1), formatted once a second per thread.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

use http::HeaderValue;

thread_local! {
    /// The second last formatted, and its header value.
    static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// The current time as a `Date` header value (an HTTP-date, to the second).
pub fn now() -> HeaderValue {
    // The coarse clock: the second is all an HTTP-date shows (it may show the previous one
    // for up to a tick after the second turns).
    let secs = crate::clock::coarse_unix_secs();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            // An HTTP-date is plain ASCII.
            c.1 = HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
            c.0 = secs;
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_an_http_date_of_now() {
        let v = super::now();
        let parsed = httpdate::parse_http_date(v.to_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() <= 1, "{v:?}");
        assert_eq!(super::now().len(), "Mon, 23 Nov 2026 16:10:41 GMT".len());
    }
}
