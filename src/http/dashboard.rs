//! The web dashboard: its assets, compiled into the binary and served at `/` and
//! `/assets/…`, and its sessions (`/session`).
//!
//! The dashboard is a single page (`index.html`, plain ES modules, one style sheet; hash
//! routing: `/#/jobs?status=failed`) that reads only the `/api/v1` JSON API, with the same
//! access rules as any client. None of these routes is part of the OpenAPI document: they
//! are mounted by [`configure`] beside [`super::configure`], not by [`super::register`].
//!
//! Every asset is answered with a strict Content-Security-Policy (only the service's own
//! scripts, styles and connections; no inline script; no framing), `nosniff`, and an
//! `ETag` (the SHA-256 of its bytes) so a browser revalidates instead of downloading again.
//!
//! Sessions (tokens configured): `POST /session {"token"}` checks the token like the API
//! and answers 204 with the cookie of a new session (see [`super::session`]);
//! `GET /session` says whether the browser is logged in and gives the page the session's
//! CSRF token; `DELETE /session` ends the session on the server.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::session;
use super::{AppState, JsonBody};
use crate::error::ApiError;

/// The policy every dashboard response carries: the page may load and connect to its own
/// origin only, runs no inline script, and cannot be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One compiled-in file.
struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: String,
}

macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("dashboard/assets/", $name)) as &'static [u8])),*]
    };
}

/// The files of `dashboard/assets/`, by name.
static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    let files = assets![
        "index.html",
        "app.css",
        "app.js",
        "api.js",
        "ui.js",
        "jobs.js",
        "runs.js",
        "servers.js",
        "templates.js",
        "schedules.js",
        "submit.js",
        "logview.js",
        "logview.css",
        // The log viewer alone on a job (`?job=ID`): what its browser tests drive.
        "logview-dev.html",
        "logview-dev.js",
    ];
    (files.into_iter())
        .map(|(name, bytes)| {
            let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
            let hex: String = (digest.as_ref().iter().take(16))
                .map(|b| format!("{b:02x}"))
                .collect();
            let asset = Asset {
                bytes,
                content_type: content_type(name),
                etag: format!("\"{hex}\""),
            };
            (name, asset)
        })
        .collect()
});

/// The content type of a file name.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Mount the dashboard: `/`, `/assets/{name}` and `/session`, behind the loopback guard.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let guard = || from_fn(super::auth::loopback_guard);
    cfg.service(web::resource("/").wrap(guard()).get(index))
        .service(web::resource("/assets/{name}").wrap(guard()).get(asset))
        .service(
            web::resource("/session")
                .wrap(guard())
                .get(session_state)
                .post(login)
                .delete(logout),
        );
}

/// The headers of every dashboard response.
fn hardened(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A compiled-in file, or 304 when the browser holds this version.
fn serve(req: &HttpRequest, name: &str) -> Result<HttpResponse, ApiError> {
    let Some(asset) = ASSETS.get(name) else {
        return Err(ApiError::NotFound(format!("no dashboard asset {name:?}")));
    };
    let fresh = (req.headers().get(header::IF_NONE_MATCH))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, asset.etag.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    let response = if fresh {
        response.finish()
    } else {
        response.content_type(asset.content_type).body(asset.bytes)
    };
    Ok(hardened(response))
}

/// `GET /`: the dashboard's page.
async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve(&req, "index.html")
}

/// `GET /assets/{name}`: a script, style sheet or image of the page.
async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&req, &name)
}

/// `POST /session`.
#[derive(Deserialize)]
struct Login {
    /// An API token.
    token: SecretString,
}

/// `GET /session`.
#[derive(Debug, Serialize)]
pub struct SessionState {
    /// Whether this browser may use the API (logged in, or no tokens configured).
    pub authenticated: bool,
    /// Whether the service has tokens (and so the dashboard a login).
    pub tokens_required: bool,
    /// The token's name (`anonymous` without tokens); null when not logged in.
    pub name: Option<String>,
    /// Its role (`viewer`, `operator`, `admin`); null when not logged in.
    pub role: Option<crate::domain::Role>,
    /// Its scope, a selector over server labels (null: every server, or not logged in).
    pub scope: Option<String>,
    /// What the page sends as `X-CSRF-Token` on a change; keep it in memory only.
    pub csrf_token: Option<String>,
}

/// Whether the service speaks TLS (so the cookie is `Secure`).
fn tls(state: &AppState) -> bool {
    !state.engine.settings().http.tls_cert.trim().is_empty()
}

/// A response no cache keeps.
fn private(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    response
}

/// The peer's address, as the rate limit keys it.
fn peer(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `GET /session`: whether this browser is logged in, and its CSRF token.
async fn session_state(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let view = if !state.tokens.enabled() {
        SessionState {
            authenticated: true,
            tokens_required: false,
            name: Some("anonymous".into()),
            role: Some(crate::domain::Role::Admin),
            scope: None,
            csrf_token: None,
        }
    } else {
        let found = match session::cookie_id(&req) {
            Some(id) => state.session(&id).await?,
            None => None,
        };
        SessionState {
            authenticated: found.is_some(),
            tokens_required: true,
            name: found.as_ref().map(|s| s.identity.name.clone()),
            role: found.as_ref().map(|s| s.identity.access.role),
            scope: (found.as_ref())
                .and_then(|s| s.identity.access.scope.as_ref())
                .map(ToString::to_string),
            csrf_token: found.map(|s| s.csrf),
        }
    };
    Ok(private(HttpResponse::Ok()).json(view))
}

/// `POST /session`: log in with a token (401 when it is not one, 429 past the rate).
async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: JsonBody<Login>,
) -> Result<HttpResponse, ApiError> {
    if !state.tokens.enabled() {
        return Err(ApiError::Conflict(
            "this service has no API tokens: the dashboard needs no login".into(),
        ));
    }
    // A login from another site's page is refused (it would log the browser in as someone
    // else's token).
    if req.headers().contains_key(header::ORIGIN) && !session::same_origin(&req) {
        return Err(ApiError::Forbidden(
            "a dashboard login must come from the dashboard's own origin".into(),
        ));
    }
    let peer = peer(&req);
    state.limits.submit(&format!("login:{peer}"))?;
    let token = body.0.token;
    let Some(crate::domain::Identity { name, .. }) = state.tokens.verify(token.expose_secret())
    else {
        tracing::warn!(peer = %peer, "dashboard login with an unknown token refused");
        return Err(ApiError::Unauthorized("the token is not valid".into()));
    };
    let id = session::new_id()?;
    let token_hash = super::auth::token_digest(token.expose_secret());
    (state.engine)
        .open_session(session::id_hash(&id), token_hash, name.clone())
        .await?;
    tracing::info!(peer = %peer, name = %name, "dashboard session opened");
    Ok(private(HttpResponse::NoContent())
        .insert_header((header::SET_COOKIE, session::set_cookie(&id, tls(&state))))
        .finish())
}

/// `DELETE /session`: log out; the session ends on the server, so its cookie is worthless.
async fn logout(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Some(id) = session::cookie_id(&req)
        && let Some(found) = state.session(&id).await?
    {
        session::check_change(&req, &found)?;
        state.engine.close_session(session::id_hash(&id)).await?;
        tracing::info!(peer = %peer(&req), name = %found.identity.name, "dashboard session closed");
    }
    Ok(private(HttpResponse::NoContent())
        .insert_header((header::SET_COOKIE, session::clear_cookie(tls(&state))))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_compiled_in_with_its_type() {
        assert_eq!(
            ASSETS["index.html"].content_type,
            "text/html; charset=utf-8"
        );
        assert_eq!(
            ASSETS["app.js"].content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(ASSETS["app.css"].content_type, "text/css; charset=utf-8");
        assert!(ASSETS.values().all(|a| !a.bytes.is_empty()));
        assert!(ASSETS["logview.js"].etag.starts_with('"'));
    }

    #[test]
    fn the_page_has_no_inline_script_and_loads_nothing_from_elsewhere() {
        let html = std::str::from_utf8(ASSETS["index.html"].bytes).unwrap();
        for tag in html.split("<script").skip(1) {
            let (attrs, rest) = tag.split_once('>').unwrap();
            assert!(attrs.contains("src=\"/assets/"), "an inline script: {tag}");
            assert!(rest.trim_start().starts_with("</script>"), "{tag}");
        }
        let handler = regex::Regex::new(r"\son[a-z]+\s*=").unwrap();
        assert!(!handler.is_match(html), "an inline event handler");
        assert!(!html.contains("style="), "an inline style");
        // The log viewer (logview.*) is checked by its own tests.
        for (name, asset) in ASSETS.iter().filter(|(n, _)| !n.starts_with("logview.")) {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for banned in [
                "http://",
                "https://",
                "eval(",
                "new Function",
                "innerHTML =",
                "@import",
            ] {
                assert!(!text.contains(banned), "{name} holds {banned:?}");
            }
        }
    }
}
