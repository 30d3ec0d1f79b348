//! The dashboard's assets — on this branch only what the log viewer needs: `/` (a stub
//! index), `/assets/logview.js`, `/assets/logview.css`, and the viewer's development page
//! `/assets/logview-dev.html?job=ID` (with `/assets/logview-dev.js`), which mounts the
//! viewer on one job. The assets are compiled into the binary; they are served with a
//! Content-Security-Policy that allows no inline script or style.
//!
//! Outside `/api/v1` and the OpenAPI document: these are pages, not API.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

/// The policy of every dashboard response: own scripts, styles and fetches only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// The assets: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "logview.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/assets/logview.js"),
    ),
    (
        "logview.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/assets/logview.css"),
    ),
    (
        "logview-dev.html",
        "text/html; charset=utf-8",
        include_str!("dashboard/assets/logview-dev.html"),
    ),
    (
        "logview-dev.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/assets/logview-dev.js"),
    ),
];

/// The stub index.
const INDEX: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
    <title>job-executor</title></head><body><p>job-executor: the dashboard is not built \
    on this branch; the log viewer is at /assets/logview-dev.html?job=ID</p></body></html>";

/// A 200 of `body` as `content_type`, with the dashboard's headers.
fn page(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, content_type, body)) => page(content_type, body),
        None => actix_web::ResponseError::error_response(&crate::error::ApiError::NotFound(
            format!("no asset {name}"),
        )),
    }
}

/// Mount `/` and `/assets/{name}`.
pub(super) fn routes(cfg: &mut web::ServiceConfig) -> &mut web::ServiceConfig {
    cfg.route("/", web::get().to(index))
        .route("/assets/{name}", web::get().to(asset))
}
