//! The web console (`/`) and the API's documentation page (`/docs`): static files compiled
//! into the binary, so they work offline and need nothing at run time. Plain modules and CSS,
//! no build step; the pages fetch everything else from the API like any client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Response, StatusCode};

use super::{ApiError, Body};

pub const INDEX: &str = include_str!("console/index.html");
pub const DOCS: &str = include_str!("console/docs.html");

/// `/console/{name}`: (name, content type, content).
const ASSETS: [(&str, &str, &str); 4] = [
    ("app.js", "text/javascript; charset=utf-8", include_str!("console/app.js")),
    ("docs.js", "text/javascript; charset=utf-8", include_str!("console/docs.js")),
    ("common.js", "text/javascript; charset=utf-8", include_str!("console/common.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("console/app.css")),
];

/// Only this server's own scripts, styles and API; pictures also as blob: URLs (fetched with
/// the token, which an <img> can't send).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn respond(content_type: &'static str, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        // Revalidated on every load, so an upgraded server is never mixed with old scripts.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

pub fn page(html: &'static str) -> Response<Body> {
    respond("text/html; charset=utf-8", html)
}

pub fn asset(name: &str) -> Result<Response<Body>, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, body)| respond(content_type, body))
        .ok_or_else(|| ApiError::NotFound(format!("/console/{name}")))
}
