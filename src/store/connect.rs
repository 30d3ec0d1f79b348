//! Reaching PostgreSQL: the URL handed to libpq (a bounded connect, `sslrootcert=system`),
//! what a failed first connection means (wait for the database, or refuse to start, saying
//! why), and whether the connection made is encrypted.
//!
//! TLS itself is libpq's, built with OpenSSL: `sslmode` (`require`, `verify-ca`,
//! `verify-full`), `sslrootcert`, `sslcert`/`sslkey` come from the database URL as libpq
//! documents them. What is ours: a refusal names the setting to look at, and a connection
//! that is not encrypted where the URL left TLS optional is said in the log, never silent.

use diesel::pg::PgConnection;
use diesel::{Connection, RunQueryDsl};

use super::StoreError;

/// The URL's query parameters, as libpq reads them (`key=value` pairs after `?`).
fn params(url: &str) -> Vec<(&str, &str)> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// The value of `key` in the URL's query.
fn param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    params(url)
        .into_iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The URL given to libpq:
/// - `connect_timeout` (seconds) added when the URL has none, so a host that does not
///   answer fails the attempt instead of holding it forever;
/// - `sslrootcert=system` (libpq's "the system's trusted roots", which implies
///   `sslmode=verify-full`) made the system's CA bundle file: libpq's OpenSSL is built from
///   source and would look for the roots under its own build prefix, not the system's.
pub(crate) fn libpq_url(url: &str, connect_timeout_secs: u64) -> Result<String, StoreError> {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let mut pairs: Vec<String> = params(url)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if param(url, "connect_timeout").is_none() {
        pairs.push(format!("connect_timeout={}", connect_timeout_secs.max(1)));
    }
    if param(url, "sslrootcert") == Some("system") {
        let probe = openssl_probe::probe();
        let Some(bundle) = probe.cert_file.filter(|f| f.is_file()) else {
            return Err(StoreError::Refused(
                "sslrootcert=system: no CA bundle of the system was found (install \
                 ca-certificates, or set sslrootcert to a CA file)"
                    .into(),
            ));
        };
        for pair in &mut pairs {
            if pair == "sslrootcert=system" {
                *pair = format!("sslrootcert={}", bundle.display());
            }
        }
        if param(url, "sslmode").is_none() {
            pairs.push("sslmode=verify-full".into());
        }
    }
    Ok(format!("{base}?{}", pairs.join("&")))
}

/// The first connection, made before the pool: a failure is told apart here. One that
/// waiting can mend (the database is down, starting, or not reachable yet) is
/// [`StoreError::Unavailable`]; one that it cannot (a certificate, TLS, authentication, a
/// database or role that does not exist, a bad URL) is [`StoreError::Refused`], with a
/// hint at the setting to look at. On success: the TLS version of the connection, or
/// `None` when it is not encrypted.
pub(crate) fn probe(url: &str) -> Result<Option<String>, StoreError> {
    let mut conn = PgConnection::establish(url).map_err(|e| match e {
        diesel::ConnectionError::BadConnection(msg) => classify(msg.trim(), url),
        other => StoreError::Refused(other.to_string()),
    })?;
    tls_version(&mut conn).map_err(StoreError::Database)
}

/// Whether the URL asks for plain text (`sslmode=disable`).
pub(crate) fn plain_asked(url: &str) -> bool {
    param(url, "sslmode") == Some("disable")
}

#[derive(diesel::QueryableByName)]
struct Tls {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    version: Option<String>,
}

/// The TLS version of this connection (`pg_stat_ssl`), `None` when it is plain.
fn tls_version(conn: &mut PgConnection) -> Result<Option<String>, diesel::result::Error> {
    let row: Tls = diesel::sql_query(
        "SELECT CASE WHEN ssl THEN version END AS version FROM pg_stat_ssl \
         WHERE pid = pg_backend_pid()",
    )
    .get_result(conn)?;
    Ok(row.version)
}

/// What waiting cannot mend: what libpq says of a certificate, of TLS, of authentication,
/// of what does not exist or is invalid.
const REFUSALS: &[&str] = &[
    "certificate",
    "SSL",
    "ssl",
    "authentication",
    "password",
    "does not exist",
    "no pg_hba.conf entry",
    "invalid",
    "unsupported",
];

/// [`StoreError::Unavailable`] or [`StoreError::Refused`] for libpq's `msg` (see [`probe`]).
fn classify(msg: &str, url: &str) -> StoreError {
    // A connection cut during the handshake (a server going down or coming up) is not a
    // refusal of the settings.
    let cut = msg.contains("SSL SYSCALL error") || msg.contains("closed the connection");
    if cut || !REFUSALS.iter().any(|m| msg.contains(m)) {
        return StoreError::Unavailable(msg.to_string());
    }
    let hint = if msg.contains("does not match host name") {
        Some(
            "sslmode=verify-full checks the URL's host against the names in the server's \
             certificate: connect by one of those names, or give the server a certificate \
             for this one"
                .to_string(),
        )
    } else if msg.contains("certificate verify failed") {
        let root = param(url, "sslrootcert").unwrap_or("~/.postgresql/root.crt");
        Some(format!(
            "the server's certificate is not signed by a CA in sslrootcert ({root}): an \
             unknown CA"
        ))
    } else {
        None
    };
    let msg = msg.replace('\n', " ");
    StoreError::Refused(match hint {
        Some(hint) => format!("{msg} ({hint})"),
        None => msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_timeout_is_added_once() {
        let url = libpq_url("postgres://u@h/db", 5).unwrap();
        assert_eq!(url, "postgres://u@h/db?connect_timeout=5");
        let url = libpq_url("postgres://u@h/db?sslmode=require&connect_timeout=2", 5).unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=require&connect_timeout=2");
    }

    #[test]
    fn sslrootcert_system_is_the_systems_bundle_and_verifies_the_name() {
        let url = libpq_url("postgres://u@h/db?sslrootcert=system", 5).unwrap();
        let bundle = param(&url, "sslrootcert").unwrap();
        assert_ne!(bundle, "system");
        assert!(std::path::Path::new(bundle).is_file(), "{url}");
        assert_eq!(param(&url, "sslmode"), Some("verify-full"));
        let url = libpq_url("postgres://u@h/db?sslrootcert=system&sslmode=verify-ca", 5).unwrap();
        assert_eq!(param(&url, "sslmode"), Some("verify-ca"));
    }

    #[test]
    fn a_down_database_is_waited_for_and_a_bad_certificate_refused() {
        let down = "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\
                    Is the server running on that host and accepting TCP/IP connections?";
        assert!(matches!(classify(down, ""), StoreError::Unavailable(_)));
        let starting = "FATAL:  the database system is starting up";
        assert!(matches!(classify(starting, ""), StoreError::Unavailable(_)));
        let cut = "connection to server at \"h\" (10.0.0.1), port 5432 failed: SSL SYSCALL \
                   error: EOF detected";
        assert!(matches!(classify(cut, ""), StoreError::Unavailable(_)));
        let auth = "connection to server at \"h\", port 5432 failed: FATAL:  password \
                    authentication failed for user \"jobs\"";
        assert!(matches!(classify(auth, ""), StoreError::Refused(_)));
        let name = "connection to server at \"127.0.0.1\", port 5 failed: server certificate for \
                    \"localhost\" does not match host name \"127.0.0.1\"";
        let StoreError::Refused(msg) = classify(name, "") else {
            panic!("not refused")
        };
        assert!(
            msg.contains("\"localhost\"") && msg.contains("verify-full"),
            "{msg}"
        );
        let ca = "connection to server at \"localhost\" (::1), port 5 failed: SSL error: \
                  certificate verify failed";
        let StoreError::Refused(msg) = classify(ca, "postgres://h/d?sslrootcert=/etc/ca.pem")
        else {
            panic!("not refused")
        };
        assert!(
            msg.contains("unknown CA") && msg.contains("/etc/ca.pem"),
            "{msg}"
        );
    }
}
