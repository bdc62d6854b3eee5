//! Short responses the server makes itself: error pages and redirects.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::body::Body;

/// `404 Not Found\n` as text, with the status set.
pub fn error(status: StatusCode) -> Response<Body> {
    text_page(status, "")
}

/// An error page that says why: the status line, then `why` (a constant sentence).
pub fn error_because(status: StatusCode, why: &'static str) -> Response<Body> {
    text_page(status, why)
}

fn text_page(status: StatusCode, why: &str) -> Response<Body> {
    let mut text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if !why.is_empty() {
        text.push_str(why);
        text.push('\n');
    }
    let id = request_id_line(&mut text);
    let mut r = Response::new(Body::full(text));
    if let Some(id) = id {
        r.headers_mut()
            .insert(super::proxy::headers::X_REQUEST_ID, id);
    }
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// With the access log on, an error page names the request's id, as its log line does: adds
/// the line to `text` and returns the id (for an `X-Request-Id` field).
pub(crate) fn request_id_line(text: &mut String) -> Option<HeaderValue> {
    let id = crate::ops::access::current_request_id()?;
    text.push_str("Request id: ");
    text.push_str(id.to_str().unwrap_or(""));
    text.push('\n');
    Some(id)
}

/// A redirect to `location` (which has been checked to be a valid header value by the caller,
/// or falls back to a 500).
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let Ok(loc) = HeaderValue::from_str(location) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r.headers_mut().insert(header::LOCATION, loc);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}
