//! What an OpenSSH `known_hosts` file says about one host's key, read so that it fails closed.
//!
//! A line is `[@marker] patterns keytype base64 [comment]`, fields separated by any run of
//! spaces or tabs; blank lines and `#` comments are skipped. Patterns are comma-separated:
//! names with `*` and `?` wildcards, `[host]:port` for ports other than 22, `!pattern` to
//! exclude (a line whose negated pattern matches does not name the host), and hashed names
//! `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`. Names compare case-insensitively.
//!
//! Markers: `@revoked` refuses its key for every host, whatever its patterns say (a revoked
//! key is never to be trusted); `@cert-authority` names a certificate authority, and since
//! host certificates are refused (nothing verifies them), a host it names is refused unless a
//! plain line also lists the key presented.
//!
//! A line that cannot be read never falls back to trust on first use: when its patterns are
//! readable, it refuses the hosts they name; when not (a broken hashed name, a revocation
//! whose key is unreadable, a marker with nothing after it), it refuses every host.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use russh::keys::PublicKey;

/// What the file says about the presented key, when it does not refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// A line for the host lists this key.
    Matches,
    /// Lines for the host list other keys only.
    Other,
    /// No line names the host.
    Absent,
}

/// Why the file refuses the key; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key is listed as `@revoked`.
    #[error("the key is revoked (line {line})")]
    Revoked {
        /// The `@revoked` line.
        line: usize,
    },
    /// A `@cert-authority` line names the host and no plain line lists the key.
    #[error(
        "line {line} trusts a certificate authority for this host, and host certificates are \
         not supported: list the host's own key"
    )]
    Authority {
        /// The `@cert-authority` line.
        line: usize,
    },
    /// A line that might name the host cannot be read.
    #[error(
        "line {line} cannot be read ({reason}), so no key is trusted for the hosts it may name"
    )]
    Unreadable {
        /// The line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Check `presented` against the file's text for `host`:`port`.
pub fn check(text: &str, host: &str, port: u16, presented: &PublicKey) -> Result<Listed, Refusal> {
    // The name the host is listed under: `host`, or `[host]:port` off port 22, lowercased.
    let host = host.to_ascii_lowercase();
    let name = match port {
        22 => host,
        _ => format!("[{host}]:{port}"),
    };
    let mut listed = Listed::Absent;
    let mut authority = None;
    // A refusal for this host; revocations and file-wide doubts are checked over every line
    // first, so the first of them is reported whatever comes before it.
    let mut refusal = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let unreadable = |reason: &str| Refusal::Unreadable {
            line,
            reason: reason.to_string(),
        };
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let mut fields = raw.split_ascii_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let marker = first.starts_with('@').then_some(first);
        if marker.is_some() {
            first = fields.next().unwrap_or_default();
        }
        if first.is_empty() {
            return Err(unreadable("no host patterns"));
        }
        let names_host = names(first, &name).map_err(unreadable)?;
        let key = match (fields.next(), fields.next()) {
            (Some(kind), Some(data)) => PublicKey::from_openssh(&format!("{kind} {data}"))
                .map_err(|e| format!("bad key: {e}")),
            _ => Err("no key".to_string()),
        };
        match (marker, key) {
            (Some("@revoked"), Ok(key)) => {
                if key.key_data() == presented.key_data() {
                    return Err(Refusal::Revoked { line });
                }
            }
            (Some("@revoked"), Err(why)) => return Err(unreadable(&why)),
            (_, _) if !names_host => {}
            (None, Ok(key)) => {
                if key.key_data() == presented.key_data() {
                    listed = Listed::Matches;
                } else if listed == Listed::Absent {
                    listed = Listed::Other;
                }
            }
            (Some("@cert-authority"), Ok(_)) => {
                authority.get_or_insert(line);
            }
            (Some(other), Ok(_)) => {
                refusal.get_or_insert(unreadable(&format!("unknown marker {other}")));
            }
            (_, Err(why)) => {
                refusal.get_or_insert(unreadable(&why));
            }
        }
    }
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    match authority {
        Some(line) if listed != Listed::Matches => Err(Refusal::Authority { line }),
        _ => Ok(listed),
    }
}

/// Whether the comma-separated `patterns` name `name`: one positive pattern matches and no
/// negated one does. Errors when a pattern cannot be read (which leaves unknown whom it names).
fn names(patterns: &str, name: &str) -> Result<bool, &'static str> {
    let mut matched = false;
    for pattern in patterns.split(',').filter(|p| !p.is_empty()) {
        let (negated, pattern) = pattern
            .strip_prefix('!')
            .map_or((false, pattern), |p| (true, p));
        let hit = match pattern.strip_prefix("|1|") {
            Some(hashed) => hashed_matches(hashed, name)?,
            None if pattern.starts_with('|') => return Err("unknown hashed name format"),
            None => wildcard_matches(&pattern.to_ascii_lowercase(), name),
        };
        if hit && negated {
            return Ok(false);
        }
        matched |= hit;
    }
    Ok(matched)
}

/// `salt|hash` (both base64): whether HMAC-SHA1 keyed with the salt, over `name`, is the hash.
fn hashed_matches(hashed: &str, name: &str) -> Result<bool, &'static str> {
    let (salt, hash) = hashed.split_once('|').ok_or("bad hashed name")?;
    let salt = STANDARD.decode(salt).map_err(|_| "bad hashed name salt")?;
    let hash = STANDARD.decode(hash).map_err(|_| "bad hashed name hash")?;
    if salt.len() != 20 || hash.len() != 20 {
        return Err("bad hashed name length");
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    Ok(ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok())
}

/// Glob match: `*` any run of characters (also none), `?` any one character.
fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it is tried from.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMjq/XKZbJ0eNEmX3ejX5QYBoq8p8maPOFOrNbMgnJiv";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDlqBQsrdfqiBsovgE5yvdtvQ80Vvmxi6K9LjbeG8skp";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    fn run(text: &str, host: &str, port: u16, presented: &str) -> Result<Listed, Refusal> {
        check(text, host, port, &key(presented))
    }

    /// `|1|salt|hash` of `name`, as `ssh-keygen -H` writes it.
    fn hashed(name: &str) -> String {
        let salt = [7u8; 20];
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        let tag = ring::hmac::sign(&key, name.as_bytes());
        format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(tag.as_ref())
        )
    }

    #[test]
    fn plain_lines_with_tabs_spaces_and_ports() {
        let text = format!(
            "# comment\n\n  db.example.com\t{ED_A} a comment\n[db.example.com]:2222    {ED_B}\n"
        );
        assert_eq!(run(&text, "db.example.com", 22, ED_A), Ok(Listed::Matches));
        assert_eq!(run(&text, "DB.Example.COM", 22, ED_B), Ok(Listed::Other));
        assert_eq!(
            run(&text, "db.example.com", 2222, ED_B),
            Ok(Listed::Matches)
        );
        assert_eq!(run(&text, "db.example.com", 2222, ED_A), Ok(Listed::Other));
        assert_eq!(run(&text, "other", 22, ED_A), Ok(Listed::Absent));
    }

    #[test]
    fn hashed_names_match_the_host_and_port() {
        let text = format!(
            "{} {ED_A}\n{} {ED_B}\n",
            hashed("web1"),
            hashed("[web1]:2200")
        );
        assert_eq!(run(&text, "web1", 22, ED_A), Ok(Listed::Matches));
        assert_eq!(run(&text, "web1", 22, ED_B), Ok(Listed::Other));
        assert_eq!(run(&text, "web1", 2200, ED_B), Ok(Listed::Matches));
        assert_eq!(run(&text, "web2", 22, ED_A), Ok(Listed::Absent));
    }

    #[test]
    fn wildcards_and_negation() {
        let text =
            format!("*.prod.example,!bastion.prod.example,10.0.?.1 {ED_A}\n[*.lab]:* {ED_B}\n");
        assert_eq!(run(&text, "a.prod.example", 22, ED_A), Ok(Listed::Matches));
        assert_eq!(run(&text, "a.prod.example", 22, ED_B), Ok(Listed::Other));
        assert_eq!(
            run(&text, "bastion.prod.example", 22, ED_B),
            Ok(Listed::Absent)
        );
        assert_eq!(run(&text, "10.0.7.1", 22, ED_A), Ok(Listed::Matches));
        assert_eq!(run(&text, "10.0.17.1", 22, ED_A), Ok(Listed::Absent));
        assert_eq!(run(&text, "x.lab", 2022, ED_B), Ok(Listed::Matches));
        assert!(wildcard_matches("a*b*c", "axxbyyc"));
        assert!(!wildcard_matches("a*b*c", "axxbyy"));
    }

    #[test]
    fn a_revoked_key_is_refused_for_every_host() {
        let text = format!("host {ED_A}\n@revoked * {ED_A}\n");
        assert_eq!(
            run(&text, "host", 22, ED_A),
            Err(Refusal::Revoked { line: 2 })
        );
        let text = format!("@revoked\tsomewhere-else  {ED_A}\nhost {ED_A}\n");
        assert_eq!(
            run(&text, "host", 22, ED_A),
            Err(Refusal::Revoked { line: 1 })
        );
        assert_eq!(run(&text, "host", 22, ED_B), Ok(Listed::Other));
        // Before the revocation, as well: not pinned by trust on first use.
        assert_eq!(
            run(&text, "new-host", 22, ED_A),
            Err(Refusal::Revoked { line: 1 })
        );
    }

    #[test]
    fn a_certificate_authority_is_not_trust_on_first_use() {
        let text = format!("@cert-authority *.example {ED_A}\n");
        assert_eq!(
            run(&text, "h.example", 22, ED_B),
            Err(Refusal::Authority { line: 1 })
        );
        assert_eq!(run(&text, "h.other", 22, ED_B), Ok(Listed::Absent));
        let text = format!("{text}h.example {ED_B}\n");
        assert_eq!(run(&text, "h.example", 22, ED_B), Ok(Listed::Matches));
    }

    #[test]
    fn unreadable_lines_fail_closed() {
        // A bad key or an unknown marker: refused for the hosts the line names.
        for text in [
            "host ssh-ed25519 not-base64!\n".to_string(),
            "host ssh-ed25519\n".to_string(),
            format!("@future host {ED_A}\n"),
        ] {
            assert!(
                matches!(
                    run(&text, "host", 22, ED_A),
                    Err(Refusal::Unreadable { line: 1, .. })
                ),
                "{text}"
            );
            assert_eq!(
                run(&text, "elsewhere", 22, ED_A),
                Ok(Listed::Absent),
                "{text}"
            );
        }
        // Whom they name is unknown: refused for every host.
        for text in [
            format!("|1|bad|hash {ED_A}\n"),
            format!("|2|x|y {ED_A}\n"),
            "@revoked * ssh-ed25519 AAAA\n".to_string(),
            "@revoked\n".to_string(),
        ] {
            assert!(
                matches!(
                    run(&text, "anyone", 22, ED_A),
                    Err(Refusal::Unreadable { line: 1, .. })
                ),
                "{text}"
            );
        }
    }
}
