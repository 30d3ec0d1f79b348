//! Dashboard sessions: a browser that presented a valid API token once gets a random
//! session id in an `HttpOnly; SameSite=Strict` cookie, so the page never holds the token.
//!
//! The engine keeps the sessions in the database, keyed by the SHA-256 of the id ([`id_hash`]:
//! the id itself is never stored, logged or shown), so they outlive a restart and every api
//! process sharing the database knows them. A session ends after
//! [`SESSION_IDLE`](crate::engine::SESSION_IDLE) without a request, on logout
//! (`DELETE /session`), or when its token is no longer configured (a reload).
//!
//! A session's CSRF token ([`csrf_of`]) is derived from its id, so only a holder of the
//! cookie can learn it (from `GET /session`, which another origin cannot read); the page
//! keeps it in memory only. A request authenticated by the cookie that changes something must
//! send it back as `X-CSRF-Token` and come from the service's own origin ([`check_change`]).
//!
//! This module owns the cookie's format and these checks; the routes are in `dashboard`, the
//! use of a session on `/api/v1` in `auth::authenticate`.

use actix_web::HttpRequest;
use actix_web::http::header;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The session cookie's name.
pub const COOKIE: &str = "jobexec_session";

/// The header a cookie-authenticated change sends its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A live session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whose token it was opened with: its name, role and scope as configured now.
    pub identity: crate::domain::Identity,
    /// The CSRF token the page sends back on changes.
    pub csrf: String,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new session id: 32 random bytes, base64url without padding.
pub fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    (SystemRandom::new().fill(&mut bytes))
        .map_err(|_| ApiError::Internal("the system's random source failed".into()))?;
    Ok(base64url(&bytes))
}

/// What the session of the id `id` is stored under: the SHA-256 of the id, in hex.
pub fn id_hash(id: &str) -> String {
    sha256(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The CSRF token of the session of the id `id`.
pub fn csrf_of(id: &str) -> String {
    base64url(&sha256(format!("jobexec-csrf:{id}").as_bytes()))
}

/// The checks on a request authenticated by `session`'s cookie that changes something (POST,
/// PUT, PATCH, DELETE): it comes from the service's own origin (`Origin` equal to the
/// request's host, or, without `Origin`, `Sec-Fetch-Site: same-origin`) and carries the
/// session's CSRF token in `X-CSRF-Token`. 403 otherwise.
pub fn check_change(req: &HttpRequest, session: &Session) -> Result<(), ApiError> {
    let text = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let same_origin = match text(header::ORIGIN.as_str()) {
        Some(_) => same_origin(req),
        None => text("sec-fetch-site") == Some("same-origin"),
    };
    if !same_origin {
        tracing::warn!(path = %req.path(), "a cross-origin change with a session cookie refused");
        return Err(ApiError::Forbidden(
            "a change made with the dashboard's session must come from the dashboard's own origin"
                .into(),
        ));
    }
    let presented = text(CSRF_HEADER).unwrap_or_default();
    let matches: bool = presented.as_bytes().ct_eq(session.csrf.as_bytes()).into();
    if !matches {
        tracing::warn!(path = %req.path(), "a change with a session cookie but no valid CSRF token refused");
        return Err(ApiError::Forbidden(format!(
            "a change made with the dashboard's session needs its CSRF token in {CSRF_HEADER}"
        )));
    }
    Ok(())
}

/// Whether the request's `Origin` is the service's own (the origin's host and port are the
/// request's `Host`); false without `Origin`.
pub fn same_origin(req: &HttpRequest) -> bool {
    let text = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let host = text(header::HOST).or(req.uri().authority().map(|a| a.as_str()));
    let Some(origin) = text(header::ORIGIN) else {
        return false;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| host.is_some_and(|h| h.eq_ignore_ascii_case(a)))
}

/// The session id a request's cookie carries, if any.
pub fn cookie_id(req: &HttpRequest) -> Option<String> {
    cookie_in(req.headers())
}

/// The session id in a request's `Cookie` headers, if any.
pub fn cookie_in(headers: &header::HeaderMap) -> Option<String> {
    (headers.get_all(header::COOKIE))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value of a session id (`Secure` under TLS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}")
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_stored_only_as_their_hash() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "32 bytes in base64url");
        assert_eq!(id_hash(&a).len(), 64);
        assert!(!id_hash(&a).contains(&a));
        assert_eq!(csrf_of(&a), csrf_of(&a));
        assert_ne!(csrf_of(&a), csrf_of(&b));
        assert_ne!(csrf_of(&a), a);
        assert_eq!(csrf_of(&a).len(), 43);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        assert_eq!(
            set_cookie("abc", false),
            "jobexec_session=abc; HttpOnly; SameSite=Strict; Path=/"
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = header::HeaderMap::new();
        headers.append(
            header::COOKIE,
            "a=1; jobexec_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_in(&headers).as_deref(), Some("xyz"));
        let mut empty = header::HeaderMap::new();
        empty.append(header::COOKIE, "jobexec_session=".parse().unwrap());
        assert_eq!(cookie_in(&empty), None);
    }
}
