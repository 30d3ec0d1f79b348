//! Dashboard sessions: a browser that presented a valid API token once gets a random
//! session id in an `HttpOnly; SameSite=Strict` cookie, so the page never holds the token.
//!
//! A session lives in this process's memory, keyed by the SHA-256 of its id (the id itself
//! is never stored, logged or shown); it ends after [`IDLE`] without a request, on logout
//! (`DELETE /session`), when its token is no longer configured (a reload), or when the
//! process restarts (the users log in again). Each api process keeps its own: behind a load
//! balancer, pin a browser to one process.
//!
//! A session carries a CSRF token that `GET /session` hands to the page (kept in memory
//! only); a request authenticated by the cookie that changes something must send it back as
//! `X-CSRF-Token` and come from the service's own origin (see [`Sessions::check_change`]).
//!
//! This module owns the session table and the cookie's format; the routes are in
//! `dashboard`, the use of a session on `/api/v1` in `auth::authenticate`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// A session not used for this long has ended.
pub const IDLE: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions more than this are refused (a flood of logins cannot exhaust memory); expired
/// ones are swept first.
const MAX_SESSIONS: usize = 10_000;

/// One session, as stored.
#[derive(Clone)]
struct Entry {
    /// The SHA-256 of the token it was opened with (to end it when the token goes).
    token_hash: [u8; 32],
    /// The token's name: who the audit says acted.
    name: String,
    /// What `X-CSRF-Token` must be.
    csrf: String,
    /// Its last use.
    seen: Instant,
}

/// A live session, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name.
    pub name: String,
    /// The CSRF token the page sends back on changes.
    pub csrf: String,
}

/// The sessions of this process.
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Entry>>,
    rng: SystemRandom,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            table: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of `bytes`.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// 32 random bytes, base64url without padding.
fn random_token(rng: &SystemRandom) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)
        .map_err(|_| ApiError::Internal("the system's random source failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open a session for the token `token` (already verified, named `name`); returns the
    /// session id for the cookie.
    pub fn open(&self, token: &str, name: String) -> Result<String, ApiError> {
        self.open_at(token, name, Instant::now())
    }

    fn open_at(&self, token: &str, name: String, now: Instant) -> Result<String, ApiError> {
        let id = random_token(&self.rng)?;
        let csrf = random_token(&self.rng)?;
        let mut table = self.lock();
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, e| now.saturating_duration_since(e.seen) < IDLE);
        }
        if table.len() >= MAX_SESSIONS {
            return Err(ApiError::TooManyRequests {
                message: "too many open dashboard sessions; try again later".into(),
                retry_after_secs: 60,
            });
        }
        let entry = Entry {
            token_hash: sha256(token.as_bytes()),
            name,
            csrf,
            seen: now,
        };
        table.insert(sha256(id.as_bytes()), entry);
        Ok(id)
    }

    /// The live session of the id `id` (its idle clock restarted), if there is one and its
    /// token is still configured (`token_live` says, given the token's SHA-256); an expired
    /// or orphaned one is removed.
    pub fn find(&self, id: &str, token_live: impl Fn(&[u8; 32]) -> bool) -> Option<Session> {
        self.find_at(id, token_live, Instant::now())
    }

    fn find_at(
        &self,
        id: &str,
        token_live: impl Fn(&[u8; 32]) -> bool,
        now: Instant,
    ) -> Option<Session> {
        let key = sha256(id.as_bytes());
        let mut table = self.lock();
        let entry = table.get_mut(&key)?;
        let live =
            now.saturating_duration_since(entry.seen) < IDLE && token_live(&entry.token_hash);
        if !live {
            table.remove(&key);
            return None;
        }
        entry.seen = now;
        Some(Session {
            name: entry.name.clone(),
            csrf: entry.csrf.clone(),
        })
    }

    /// End the session of the id `id` (nothing if there is none).
    pub fn close(&self, id: &str) {
        self.lock().remove(&sha256(id.as_bytes()));
    }

    /// How many sessions are held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The checks on a request authenticated by `session`'s cookie that changes something
    /// (POST, PUT, PATCH, DELETE): it comes from the service's own origin (`Origin` equal to
    /// the request's host, or, without `Origin`, `Sec-Fetch-Site: same-origin`) and carries
    /// the session's CSRF token in `X-CSRF-Token`. 403 otherwise.
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
    use std::sync::Mutex;

    /// The configured tokens, as SHA-256 digests.
    struct Tokens(Mutex<Vec<[u8; 32]>>);

    fn tokens(list: &[&str]) -> Tokens {
        Tokens(Mutex::new(
            list.iter().map(|t| sha256(t.as_bytes())).collect(),
        ))
    }

    impl Tokens {
        fn live(&self) -> impl Fn(&[u8; 32]) -> bool + '_ {
            |h| self.0.lock().unwrap().contains(h)
        }
        fn replace(&self, other: Tokens) {
            *self.0.lock().unwrap() = other.0.into_inner().unwrap();
        }
    }

    #[test]
    fn a_session_lives_while_used_and_ends_after_twelve_idle_hours() {
        let t = tokens(&["ops-token-0123456789"]);
        let s = Sessions::default();
        let start = Instant::now();
        let id = s
            .open_at("ops-token-0123456789", "ops".into(), start)
            .unwrap();
        assert_eq!(id.len(), 43, "32 bytes in base64url");
        let found = s.find_at(&id, t.live(), start + IDLE / 2).unwrap();
        assert_eq!(found.name, "ops");
        assert_eq!(found.csrf.len(), 43);
        assert_ne!(found.csrf, id);
        // Used at half time: its clock restarted.
        assert!(s.find_at(&id, t.live(), start + IDLE).is_some());
        assert!(
            s.find_at(&id, t.live(), start + IDLE * 2 + Duration::from_secs(1))
                .is_none()
        );
        assert!(s.is_empty(), "an expired session is removed");
        assert!(s.find_at("not-an-id", t.live(), start).is_none());
    }

    #[test]
    fn logout_and_a_removed_token_end_a_session() {
        let t = tokens(&["ops-token-0123456789"]);
        let s = Sessions::default();
        let id = s.open("ops-token-0123456789", "ops".into()).unwrap();
        let other = s.open("ops-token-0123456789", "ops".into()).unwrap();
        assert_ne!(id, other);
        s.close(&id);
        assert!(s.find(&id, t.live()).is_none());
        assert!(s.find(&other, t.live()).is_some());
        t.replace(tokens(&["ci-token-0123456789"]));
        assert!(s.find(&other, t.live()).is_none(), "its token is gone");
        assert!(!format!("{s:?}").contains(&other));
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
}
