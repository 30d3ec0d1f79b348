//! Bearer tokens: who is calling, and whether they may.
//!
//! Tokens are hashed (SHA-256) when the settings are read; the plain text is dropped. A
//! presented token is hashed and compared with every configured hash in constant time, so
//! neither the answer's timing nor its content says how close a guess came. Every request
//! to `/api/v1` gets a [`Caller`] (the token's name, or `anonymous` when authentication is
//! off, and the peer address), which the audit log and the rate limits use.
//!
//! Without tokens the API trusts whoever reaches it on loopback, so [`loopback_guard`]
//! makes sure a web page is not the one asking: a page can make the browser send requests
//! to 127.0.0.1 (a form post, a `no-cors` fetch) and, by DNS rebinding, read the answers
//! under a name of its own. So without tokens only loopback `Host` values are served, and a
//! request that changes something is refused when its `Origin` is another one.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use ring::digest::{SHA256, digest};
use secrecy::ExposeSecret;
use std::sync::PoisonError;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::domain::{Access, Identity, Role, Selector};
use crate::error::ApiError;
use crate::settings::{TokenSettings, TokenTable};

/// Why a token entry in the settings is unusable. Never quotes the token.
#[derive(Debug, thiserror::Error)]
#[error("auth.tokens entry {index}: {reason}")]
pub struct TokenError {
    index: usize,
    reason: String,
}

#[derive(Clone)]
struct Entry {
    name: String,
    hash: [u8; 32],
    access: Access,
}

/// The configured tokens, hashed. Replaceable while the service runs (SIGHUP).
#[derive(Default)]
pub struct Tokens {
    entries: std::sync::RwLock<std::sync::Arc<Vec<Entry>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.snapshot();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    bytes?.try_into().ok()
}

/// Equal in time independent of where the inputs differ (`subtle`; ring keeps its own
/// comparison internal).
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a[..].ct_eq(&b[..]).into()
}

/// The SHA-256 of a token in hex: what `NAME:sha256:HEX` entries hold.
pub fn token_digest(token: &str) -> String {
    hex(&sha256(token.as_bytes()))
}

/// A bare entry: `NAME:TOKEN`, `TOKEN` or `NAME:sha256:HEX`, with every right.
fn bare(text: &str) -> Result<Entry, &'static str> {
    if text.is_empty() {
        return Err("is empty");
    }
    let (name, rest) = match text.split_once(':') {
        Some((name, rest)) => (Some(name.trim()), rest),
        None => (None, text),
    };
    // A plain token (not a digest entry) must be long enough.
    let hash = match rest.strip_prefix("sha256:") {
        Some(h) => unhex(h).ok_or("after sha256: comes the token's SHA-256 as 64 hex digits")?,
        None if rest.chars().count() < 16 => return Err("a token must be at least 16 characters"),
        None => sha256(rest.as_bytes()),
    };
    let name = name.map_or_else(|| format!("token-{}", &hex(&hash)[..8]), str::to_string);
    Ok(Entry {
        name,
        hash,
        access: Access::admin(),
    })
}

/// A `[[auth.tokens]]` table.
fn from_table(table: &TokenTable) -> Result<Entry, String> {
    let hash = match (&table.token, &table.token_sha256) {
        (Some(_), Some(_)) => return Err("give token or token_sha256, not both".into()),
        (None, None) => return Err("give token or token_sha256".into()),
        (Some(t), None) if t.expose_secret().trim().chars().count() < 16 => {
            return Err("a token must be at least 16 characters".into());
        }
        (Some(t), None) => sha256(t.expose_secret().trim().as_bytes()),
        (None, Some(h)) => unhex(h).ok_or("token_sha256 must be 64 hex digits")?,
    };
    let role: Role = table.role.parse()?;
    let scope = (table.scope.as_deref())
        .map(|s| Selector::parse("scope", s).map_err(|e| format!("scope {}", e.message)))
        .transpose()?;
    Ok(Entry {
        name: table.name.clone(),
        hash,
        access: Access { role, scope },
    })
}

impl Tokens {
    /// Parse `auth.tokens`: `NAME:TOKEN`, `TOKEN`, or `NAME:sha256:HEX` (admin tokens), or
    /// tables with a name, the token or its SHA-256, a role and an optional scope.
    pub fn from_settings(tokens: &[TokenSettings]) -> Result<Tokens, TokenError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, entry) in tokens.iter().enumerate() {
            let fail = |reason: &str| TokenError {
                index: i + 1,
                reason: reason.into(),
            };
            let entry = match entry {
                TokenSettings::Bare(text) => bare(text.expose_secret().trim()).map_err(fail)?,
                TokenSettings::Table(table) => from_table(table).map_err(|e| fail(&e))?,
            };
            if entry.name.is_empty() || !entry.name.chars().all(|c| c.is_ascii_graphic()) {
                return Err(fail("the name must be printable ASCII, no spaces"));
            }
            if entries
                .iter()
                .any(|e| constant_time_eq(&e.hash, &entry.hash))
            {
                return Err(fail("the same token is configured twice"));
            }
            if entries.iter().any(|e| e.name == entry.name) {
                return Err(fail("two tokens have this name"));
            }
            entries.push(entry);
        }
        Ok(Tokens {
            entries: std::sync::RwLock::new(std::sync::Arc::new(entries)),
        })
    }

    fn snapshot(&self) -> std::sync::Arc<Vec<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Put `other`'s tokens in place of these (a reload).
    pub fn replace(&self, other: Tokens) {
        let next = other.snapshot();
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no token is configured (authentication off).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any token is configured (authentication on).
    pub fn enabled(&self) -> bool {
        !self.is_empty()
    }

    /// Whose the token `presented` is, if it is one of ours. Every entry is compared.
    pub fn verify(&self, presented: &str) -> Option<Identity> {
        self.verify_digest(&sha256(presented.as_bytes()))
    }

    /// Whose the token whose SHA-256 is `hex` (64 hex digits) is, if it is one of ours.
    pub fn verify_hex_digest(&self, hex: &str) -> Option<Identity> {
        self.verify_digest(&unhex(hex)?)
    }

    /// Whose the token whose SHA-256 is `hash` is, if it is one of ours. Every entry is
    /// compared.
    pub fn verify_digest(&self, hash: &[u8; 32]) -> Option<Identity> {
        (self.snapshot().iter()).fold(None, |found, entry| {
            constant_time_eq(&entry.hash, hash)
                .then(|| Identity {
                    name: entry.name.clone(),
                    access: entry.access.clone(),
                })
                .or(found)
        })
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or `anonymous` when authentication is off.
    pub name: String,
    /// The peer's IP address.
    pub peer: String,
    /// Its token's role and scope (`admin` when authentication is off).
    pub access: Access,
}

impl Caller {
    /// The key rate limits count under: the token, or the address when there are none.
    pub fn limit_key(&self, authenticated: bool) -> String {
        if authenticated {
            format!("token:{}", self.name)
        } else {
            format!("addr:{}", self.peer)
        }
    }
}

/// Middleware on `/api/v1`: reject requests without a valid token or dashboard session
/// (when tokens are configured) and attach the [`Caller`].
///
/// A request authenticated by the session cookie (no `Authorization` header) that changes
/// something must also pass [`check_change`](super::session::check_change)
/// (same origin and the session's CSRF token), or it is a 403.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("the application state is missing".into()))?;
    let Identity { name, access } = if state.tokens.enabled() {
        identify(&req, &state, &peer).await?
    } else {
        Identity {
            name: "anonymous".to_string(),
            access: Access::admin(),
        }
    };
    req.extensions_mut().insert(Caller { name, peer, access });
    next.call(req).await
}

/// Whose token the request authenticates with: its bearer token, or else its session
/// cookie (with the checks on a change).
async fn identify(
    req: &ServiceRequest,
    state: &AppState,
    peer: &str,
) -> Result<Identity, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if let Some(presented) = presented {
        return state.tokens.verify(presented).ok_or_else(|| {
            tracing::warn!(peer = %peer, path = %req.path(), "request with an unknown token refused");
            ApiError::Unauthorized("the token is not valid".into())
        });
    }
    let Some(id) = super::session::cookie_in(req.headers()) else {
        return Err(ApiError::Unauthorized(
            "this API needs a token: send Authorization: Bearer TOKEN".into(),
        ));
    };
    let Some(session) = state.session(&id).await? else {
        tracing::info!(peer = %peer, path = %req.path(), "request with an ended or unknown session refused");
        return Err(ApiError::Unauthorized(
            "the dashboard session has ended: log in again".into(),
        ));
    };
    let changes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(req.method());
    if changes {
        super::session::check_change(req.request(), &session)?;
    }
    Ok(session.identity)
}

/// Middleware on every route: without tokens, refuse (403) a `Host` that is not loopback
/// (`localhost`, `127.0.0.1`, `[::1]`, any port: a rebound name is not) and a POST, PUT,
/// PATCH or DELETE whose `Origin` is not the service's own loopback origin. With tokens a
/// page has no credential to send, and nothing is checked here.
pub async fn loopback_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let tokenless = (req.app_data::<web::Data<AppState>>()).is_some_and(|s| !s.tokens.enabled());
    if tokenless {
        refuse_foreign(&req)?;
    }
    next.call(req).await
}

/// The checks of [`loopback_guard`].
fn refuse_foreign(req: &ServiceRequest) -> Result<(), ApiError> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(header::HOST).or(req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host.filter(|h| !is_loopback(h)) {
        tracing::warn!(host, path = %req.path(), "request for a foreign host name refused");
        return Err(ApiError::Forbidden(format!(
            "without API tokens only loopback host names are served, not {host:?}"
        )));
    }
    let changes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(req.method());
    if let Some(origin) = header(header::ORIGIN).filter(|_| changes) {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let own = authority.is_some_and(|a| host.is_some_and(|h| h.eq_ignore_ascii_case(a)));
        if !own {
            tracing::warn!(origin, path = %req.path(), "cross-origin change refused");
            return Err(ApiError::Forbidden(format!(
                "without API tokens a request from another origin ({origin:?}) may not change anything"
            )));
        }
    }
    Ok(())
}

/// Whether a `Host` value (a name and an optional port) is a loopback name.
fn is_loopback(host: &str) -> bool {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && (["localhost", "127.0.0.1", "[::1]"].iter()).any(|n| name.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn table(name: &str, token: &str, role: &str, scope: Option<&str>) -> TokenSettings {
        TokenSettings::Table(TokenTable {
            name: name.into(),
            token: Some(SecretString::from(token.to_string())),
            token_sha256: None,
            role: role.into(),
            scope: scope.map(str::to_string),
        })
    }

    #[test]
    fn tables_carry_a_role_and_a_scope() {
        let digest = token_digest("viewer-token-0123456789");
        let t = Tokens::from_settings(&[
            table(
                "ci",
                "operator-token-0123456789",
                "operator",
                Some("env=staging"),
            ),
            TokenSettings::Table(TokenTable {
                name: "dash".into(),
                token: None,
                token_sha256: Some(digest),
                role: "viewer".into(),
                scope: None,
            }),
            TokenSettings::Bare(SecretString::from(
                "root:admin-token-0123456789".to_string(),
            )),
        ])
        .unwrap();
        let ci = t.verify("operator-token-0123456789").unwrap();
        assert_eq!((ci.name.as_str(), ci.access.role), ("ci", Role::Operator));
        assert_eq!(ci.access.scope.unwrap().to_string(), "env=staging");
        assert_eq!(
            t.verify("viewer-token-0123456789").unwrap().access.role,
            Role::Viewer
        );
        assert_eq!(
            t.verify("admin-token-0123456789").unwrap().access,
            Access::admin()
        );
        for (bad, says) in [
            (table("a", "short", "admin", None), "16 characters"),
            (
                table("a", "long-enough-token-0123", "root", None),
                "unknown role",
            ),
            (
                table("a", "long-enough-token-0123", "viewer", Some("a b")),
                "scope",
            ),
        ] {
            let err = Tokens::from_settings(&[bad]).unwrap_err().to_string();
            assert!(err.contains(says) && !err.contains("0123"), "{err}");
        }
        let twice = Tokens::from_settings(&[
            table("a", "first-token-0123456789", "admin", None),
            table("a", "second-token-0123456789", "admin", None),
        ]);
        assert!(twice.unwrap_err().to_string().contains("name"));
    }

    fn tokens(list: &[&str]) -> Result<Tokens, TokenError> {
        let list: Vec<TokenSettings> = list
            .iter()
            .map(|t| TokenSettings::Bare(SecretString::from(t.to_string())))
            .collect();
        Tokens::from_settings(&list)
    }

    #[test]
    fn named_bare_and_digest_entries_verify() {
        let digest = token_digest("third-token-0123456789");
        let t = tokens(&[
            "ops:first-token-0123456789",
            "second-token-0123456789",
            &format!("ci:sha256:{digest}"),
        ])
        .unwrap();
        assert!(t.enabled());
        let name = |t: &Tokens, token: &str| t.verify(token).map(|i| i.name);
        assert_eq!(name(&t, "first-token-0123456789").as_deref(), Some("ops"));
        assert!(
            name(&t, "second-token-0123456789")
                .unwrap()
                .starts_with("token-")
        );
        assert_eq!(name(&t, "third-token-0123456789").as_deref(), Some("ci"));
        assert_eq!(
            t.verify("third-token-0123456789").unwrap().access,
            Access::admin()
        );
        assert_eq!(t.verify("first-token-012345678"), None);
        assert_eq!(t.verify(""), None);
        assert!(!format!("{t:?}").contains("first-token"));
    }

    #[test]
    fn bad_entries_are_refused_without_quoting_them() {
        for bad in [
            &["short"][..],
            &["ops:sha256:nothex"][..],
            &[""][..],
            &["a b:long-enough-token-123"][..],
            &["x:dup-token-0123456789", "y:dup-token-0123456789"][..],
        ] {
            let err = tokens(bad).unwrap_err().to_string();
            assert!(
                !err.contains("token-0123456789") && !err.contains("short"),
                "{err}"
            );
        }
        assert!(!tokens(&[]).unwrap().enabled());
    }

    #[test]
    fn loopback_names_with_any_port_only() {
        for ok in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:80",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in [
            "rebind.evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:80",
            "127.0.0.2",
            "::1",
            "[::1]:",
            "localhost:x",
            "",
        ] {
            assert!(!is_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn comparison_is_exact() {
        let a = sha256(b"a");
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
