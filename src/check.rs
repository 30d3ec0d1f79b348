//! `job-executor check-config FILE`: everything wrong with a settings file, with line context,
//! before a daemon is started (or reloaded) with it.
//!
//! Checks, in order: TOML syntax; sections and keys that do not exist (a typo the layered
//! loader would otherwise ignore); value types; then what the service itself would refuse at
//! start: tokens, the secret key, each `[[servers]]` table (its secret files read, its fields
//! validated as the API would), the listen address without tokens, the TLS pair.

use std::path::Path;

use crate::settings::{DEFAULT_TOML, Settings};

/// The keys a `[[servers]]` table may hold.
const SERVER_KEYS: &[&str] = &[
    "name",
    "hostname",
    "port",
    "user",
    "auth_type",
    "password",
    "password_file",
    "private_key",
    "private_key_file",
    "private_key_passphrase",
    "host_key",
    "host_key_check",
    "max_concurrent_jobs",
    "is_active",
];

/// What a file that passed holds.
#[derive(Debug)]
pub struct Summary {
    /// `[[servers]]` tables.
    pub servers: usize,
    /// API tokens.
    pub tokens: usize,
    /// Where the API listens.
    pub addr: String,
}

/// The 1-based line of `key` in `section` (or at the top level), with its text.
fn line_of(text: &str, section: Option<&str>, key: &str) -> Option<(usize, String)> {
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
        {
            current = Some(name.trim().to_string());
            if section.is_none() && name.trim() == key {
                return Some((i + 1, line.to_string()));
            }
            continue;
        }
        let here = current.as_deref() == section;
        let named = t
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'))
            .is_some_and(|k| k == key);
        if here && named {
            return Some((i + 1, line.to_string()));
        }
    }
    None
}

/// Keys whose values are never shown back.
const SECRET_KEYS: &[&str] = &[
    "password",
    "private_key",
    "private_key_passphrase",
    "key",
    "tokens",
];

fn at(path: &Path, found: Option<(usize, String)>, message: String) -> String {
    match found {
        Some((n, line)) => {
            let shown = match line.split_once('=') {
                Some((k, _)) if SECRET_KEYS.contains(&k.trim()) => format!("{}= ***", k),
                _ => line,
            };
            format!("{}:{n}: {message}\n    {n} | {shown}", path.display())
        }
        None => format!("{}: {message}", path.display()),
    }
}

/// Check the file at `path`; every problem found, or a summary.
pub fn check(path: &Path) -> Result<Summary, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let file: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| vec![format!("{}: {e}", path.display())])?;
    let defaults: toml::Table = DEFAULT_TOML
        .parse()
        .map_err(|e: toml::de::Error| vec![format!("the compiled-in defaults: {e}")])?;
    let mut problems = Vec::new();
    for (section, value) in &file {
        if section == "servers" {
            let Some(list) = value.as_array() else {
                problems.push(at(
                    path,
                    line_of(&text, None, section),
                    "servers must be tables: write [[servers]]".into(),
                ));
                continue;
            };
            for table in list.iter().filter_map(|v| v.as_table()) {
                for key in table.keys().filter(|k| !SERVER_KEYS.contains(&k.as_str())) {
                    problems.push(at(
                        path,
                        line_of(&text, Some("servers"), key),
                        format!(
                            "[[servers]] has no key {key:?}; known: {}",
                            SERVER_KEYS.join(", ")
                        ),
                    ));
                }
            }
            continue;
        }
        let Some(known) = defaults.get(section).and_then(|v| v.as_table()) else {
            let sections: Vec<&str> = defaults.keys().map(String::as_str).collect();
            problems.push(at(
                path,
                line_of(&text, None, section),
                format!(
                    "unknown section [{section}]; known: {}, [[servers]]",
                    sections.join(", ")
                ),
            ));
            continue;
        };
        let Some(table) = value.as_table() else {
            problems.push(at(
                path,
                line_of(&text, None, section),
                format!("{section} must be a [section]"),
            ));
            continue;
        };
        for key in table.keys().filter(|k| !known.contains_key(*k)) {
            let keys: Vec<&str> = known.keys().map(String::as_str).collect();
            problems.push(at(
                path,
                line_of(&text, Some(section), key),
                format!("[{section}] has no key {key:?}; known: {}", keys.join(", ")),
            ));
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| line_number(p));
        return Err(problems);
    }
    // Types, as the service loads them (the file alone: no environment).
    let settings =
        Settings::load_from(Some(path), &std::collections::HashMap::new()).map_err(|e| {
            let message = e.to_string();
            let found = message
                .split_once("for key `")
                .and_then(|(_, rest)| rest.split_once('`'))
                .and_then(|(key, _)| {
                    let (section, name) = key.rsplit_once('.')?;
                    let section = section.split('[').next().unwrap_or(section);
                    line_of(&text, Some(section), name)
                });
            vec![at(path, found, message)]
        })?;
    semantic(path, &text, &settings).map(|()| Summary {
        servers: settings.servers.len(),
        tokens: settings.auth.tokens.len(),
        addr: settings.http.addr.clone(),
    })
}

/// The line a problem is at (`PATH:LINE: …`), for ordering.
fn line_number(problem: &str) -> usize {
    problem
        .split(':')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What the service would refuse at start.
fn semantic(path: &Path, text: &str, settings: &Settings) -> Result<(), Vec<String>> {
    use secrecy::ExposeSecret;
    let mut problems = Vec::new();
    let tokens = match crate::http::auth::Tokens::from_settings(&settings.auth.tokens) {
        Ok(t) => t.len(),
        Err(e) => {
            problems.push(at(
                path,
                line_of(text, Some("auth"), "tokens"),
                e.to_string(),
            ));
            0
        }
    };
    let key = settings.secrets.key.expose_secret().trim();
    if !key.is_empty()
        && let Err(e) = crate::secrets::Keyring::from_text(&settings.secrets.key)
    {
        problems.push(at(
            path,
            line_of(text, Some("secrets"), "key"),
            e.to_string(),
        ));
    }
    let key_file = settings.secrets.key_file.trim();
    if !key_file.is_empty() && !Path::new(key_file).exists() {
        problems.push(at(
            path,
            line_of(text, Some("secrets"), "key_file"),
            format!("key_file {key_file} does not exist"),
        ));
    }
    use std::net::ToSocketAddrs;
    let addr = &settings.http.addr;
    if let Err(e) = addr.to_socket_addrs() {
        problems.push(at(
            path,
            line_of(text, Some("http"), "addr"),
            format!("http.addr {addr:?}: {e}"),
        ));
    } else if tokens == 0 && !crate::settings::loopback_only(addr) {
        problems.push(at(
            path,
            line_of(text, Some("http"), "addr"),
            format!(
                "{addr} is not a loopback address and no API tokens are set: the service \
                 would refuse to start (set [auth] tokens)"
            ),
        ));
    }
    let (cert, tls_key) = (settings.http.tls_cert.trim(), settings.http.tls_key.trim());
    if cert.is_empty() != tls_key.is_empty() {
        problems.push(at(
            path,
            line_of(
                text,
                Some("http"),
                if cert.is_empty() {
                    "tls_key"
                } else {
                    "tls_cert"
                },
            ),
            "set both http.tls_cert and http.tls_key, or neither".into(),
        ));
    }
    for (name, file) in [("tls_cert", cert), ("tls_key", tls_key)] {
        if !file.is_empty() && !Path::new(file).exists() {
            problems.push(at(
                path,
                line_of(text, Some("http"), name),
                format!("{name} {file} does not exist"),
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    for server in &settings.servers {
        let found = || {
            text.lines()
                .position(|l| {
                    l.split_once('=').is_some_and(|(k, v)| {
                        k.trim() == "name" && v.trim().trim_matches('"') == server.name
                    })
                })
                .map(|i| (i + 1, text.lines().nth(i).unwrap_or_default().to_string()))
        };
        if !names.insert(server.name.clone()) {
            problems.push(at(
                path,
                found(),
                format!("two [[servers]] are named {:?}", server.name),
            ));
        }
        if let Err(e) = server.checked_patch(settings.ssh.default_max_concurrent_jobs) {
            problems.push(at(path, found(), e.to_string()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<Summary, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        check(&path)
    }

    #[test]
    fn a_good_file_passes() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let made = russh::keys::PrivateKey::random(
            &mut russh::keys::key::safe_rng(),
            russh::keys::Algorithm::Ed25519,
        )
        .unwrap();
        let text = made
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        std::fs::write(&key, text.as_bytes()).unwrap();
        let s = run(&format!(
            "[http]\naddr = \"0.0.0.0:9000\"\n[auth]\ntokens = [\"ops:0123456789abcdef\"]\n\
             [[servers]]\nname = \"web\"\nhostname = \"10.0.0.1\"\nuser = \"deploy\"\n\
             private_key_file = \"{}\"\n",
            key.display()
        ))
        .unwrap();
        assert_eq!((s.servers, s.tokens), (1, 1));
    }

    #[test]
    fn each_problem_is_named_with_its_line() {
        let syntax = run("[http]\naddr = \n").unwrap_err();
        assert!(syntax[0].contains("line 2"), "{syntax:?}");
        let unknown = run("[http]\nadr = \"x\"\n[htp]\n").unwrap_err();
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert!(
            unknown[0].contains(":2:") && unknown[0].contains("\"adr\""),
            "{unknown:?}"
        );
        assert!(
            unknown[1].contains(":3:") && unknown[1].contains("[htp]"),
            "{unknown:?}"
        );
        let typed = run("[ssh]\n\nconnect_timeout_secs = \"soon\"\n").unwrap_err();
        assert!(typed[0].contains(":3:"), "{typed:?}");
        let open = run("[http]\naddr = \"0.0.0.0:80\"\n").unwrap_err();
        assert!(
            open[0].contains(":2:") && open[0].contains("tokens"),
            "{open:?}"
        );
        let server = run(
            "[[servers]]\nname = \"a\"\nhostname = \"h\"\nuser = \"u\"\n\
             password_file = \"/nonexistent/pw\"\n[[servers]]\nname = \"b\"\nhostname = \"h\"\n\
             user = \"u\"\npassword = \"p\"\nport = 0\n",
        )
        .unwrap_err();
        assert!(
            server[0].contains(":2:") && server[0].contains("/nonexistent/pw"),
            "{server:?}"
        );
        assert!(
            server[1].contains(":7:") && server[1].contains("port"),
            "{server:?}"
        );
        // No secret is ever quoted back.
        let secret = run("[secrets]\nkey = \"1:c2VjcmV0\"\n").unwrap_err();
        assert!(
            !secret[0].contains("c2VjcmV0") && secret[0].contains(":2:"),
            "{secret:?}"
        );
    }
}
