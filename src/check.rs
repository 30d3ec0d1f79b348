//! `job-executor check-config FILE`: everything wrong with a settings file, with its line and
//! column, before a daemon is started (or reloaded) with it.
//!
//! Checks, in order: TOML syntax; then, in one deserialization of the file over the
//! compiled-in defaults into [`Settings`], the keys the settings do not read (a typo the
//! layered loader would otherwise ignore: `serde_ignored` names them) and values of the wrong
//! type (`serde_path_to_error` names the key); then what the service itself would refuse at
//! start: tokens, the secret key, each `[[servers]]` table (its secret files read, its fields
//! validated as the API would), each `[[templates]]` table (as `POST /templates` would check
//! it), each `[[schedules]]` table (its cron, time zone, overlap and catch-up, and its
//! parameters against its template when the template is one of the file's; one only in the
//! database is checked when the service applies the file), the listen address without
//! tokens, the TLS pair, the `[retention]` durations.
//!
//! Positions come from the spans toml keeps for every key. A message names keys, never a
//! value of the file: a value may be a password or a token.

use std::path::Path;

use serde_path_to_error::Segment;
use toml::{Table, Value};

use crate::settings::{DEFAULT_TOML, Settings, key_positions, loopback_only, without_value};

/// What a file that passed holds.
#[derive(Debug)]
pub struct Summary {
    /// `[[servers]]` tables.
    pub servers: usize,
    /// `[[templates]]` tables.
    pub templates: usize,
    /// `[[schedules]]` tables.
    pub schedules: usize,
    /// `[[webhooks]]` tables.
    pub webhooks: usize,
    /// API tokens.
    pub tokens: usize,
    /// Where the API listens.
    pub addr: String,
}

/// One problem: the key path it is about, as messages write it (`http.addr`,
/// `servers[1].name`), and what. The message names keys, never a value from the file.
type Problem = (String, String);

/// Rounds of deserialization at most: one per bad value found (see [`check`]).
const MAX_ROUNDS: usize = 64;

/// The key path of a serde_ignored path (its `Option`/newtype steps dropped).
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => match ignored_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// The message for a key the settings do not have, with the keys they do have there.
fn unknown_key(path: &str, defaults: &Table) -> String {
    let names = |t: &Table| t.keys().cloned().collect::<Vec<_>>().join(", ");
    match path.split_once('.') {
        None => format!(
            "unknown section [{path}]; known: {}, [[servers]], [[templates]], [[schedules]], \
             [[webhooks]]",
            names(defaults)
        ),
        Some((section, name)) if !name.contains('.') => match defaults.get(section) {
            Some(Value::Table(known)) => {
                format!("[{section}] has no key {name:?}; known: {}", names(known))
            }
            _ => format!("[{section}] has no key {name:?}"),
        },
        Some(_) => format!("{path} is not a setting"),
    }
}

/// Take the key at `path` (which ends in a key) out of `value`, through tables and arrays.
/// False when it is not there.
fn remove(value: &mut Value, path: &[Segment]) -> bool {
    match path {
        [Segment::Map { key }] => value
            .as_table_mut()
            .is_some_and(|t| t.remove(key).is_some()),
        [Segment::Map { key }, rest @ ..] => {
            value.get_mut(key.as_str()).is_some_and(|v| remove(v, rest))
        }
        [Segment::Seq { index }, rest @ ..] => {
            value.get_mut(*index).is_some_and(|v| remove(v, rest))
        }
        _ => false,
    }
}

/// Check the file at `path`; every problem found, or a summary.
pub fn check(path: &Path) -> Result<Summary, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let at = key_positions(path, &text).map_err(|e| vec![e.to_string()])?;
    let render = |mut problems: Vec<Problem>| {
        problems.sort_by_key(|(key, _)| position(&at, key).unwrap_or((0, 0)));
        let file = path.display();
        problems
            .into_iter()
            .map(|(key, message)| match position(&at, &key) {
                Some((line, col)) => format!("{file}:{line}:{col}: {message}"),
                None => format!("{file}: {message}"),
            })
            .collect::<Vec<_>>()
    };
    let invalid = |e: toml::de::Error| vec![format!("{}: {}", path.display(), e.message())];
    let mut file = Value::Table(text.parse().map_err(invalid)?);
    let defaults: Table = DEFAULT_TOML.parse().map_err(invalid)?;

    // Unknown keys (serde_ignored: whatever the settings do not read) and wrong types, in
    // one pass over the file with the defaults beneath it, section by section as the
    // layered loader does.
    let (mut problems, mut unknown, mut settings) = (Vec::new(), Vec::<String>::new(), None);
    // `[webhooks]` held the delivery settings before `[[webhooks]]` declared webhooks.
    if let Some(Value::Table(_)) = file.get("webhooks") {
        problems.push((
            "webhooks".to_string(),
            "[webhooks] is now the list of webhooks ([[webhooks]] tables); its delivery \
             settings (max_attempts, timeout_secs, ...) moved to [webhook_delivery]"
                .to_string(),
        ));
        file.as_table_mut().map(|t| t.remove("webhooks"));
    }
    // A deserializer stops at its first error: take the bad value out of the file (the
    // default stands in for it) and go again, so one run names every problem.
    for _ in 0..MAX_ROUNDS {
        let mut merged = defaults.clone();
        for (name, value) in file.as_table().into_iter().flatten() {
            match (merged.get_mut(name), value) {
                (Some(Value::Table(section)), Value::Table(mine)) => section.extend(mine.clone()),
                _ => drop(merged.insert(name.clone(), value.clone())),
            }
        }
        let parsed: Result<Settings, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(merged, &mut |p: serde_ignored::Path<'_>| {
                let p = ignored_path(&p);
                if !unknown.contains(&p) {
                    unknown.push(p);
                }
            }),
        );
        let e = match parsed {
            Ok(parsed) => {
                settings = Some(parsed);
                break;
            }
            Err(e) => e,
        };
        let mut bad: Vec<Segment> = e.path().iter().cloned().collect();
        let message = e.inner().message();
        // The table arrays refuse unknown keys themselves: the key is in the message.
        match message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((name, rest)) => {
                let mut key = e.path().to_string();
                if !matches!(bad.last(), Some(Segment::Map { key }) if key == name) {
                    key = format!("{key}.{name}");
                    bad.push(Segment::Map { key: name.into() });
                }
                let known = rest
                    .split_once("expected one of ")
                    .map(|(_, list)| list.replace('`', ""))
                    .unwrap_or_default();
                // The table array it is in: `servers[1].x` is in `[[servers]]`.
                let array = key.split('[').next().unwrap_or_default();
                problems.push((
                    key.clone(),
                    format!("[[{array}]] has no key {name:?}; known: {known}"),
                ));
            }
            None => problems.push((
                e.path().to_string(),
                format!("{}: {}", e.path(), without_value(message)),
            )),
        }
        // Cut back to the last key: a bad entry of a list takes the list out.
        let keys = bad.iter().rposition(|s| matches!(s, Segment::Map { .. }));
        bad.truncate(keys.map_or(0, |i| i + 1));
        if !remove(&mut file, &bad) {
            break;
        }
    }
    problems.extend(unknown.into_iter().map(|key| {
        let message = unknown_key(&key, &defaults);
        (key, message)
    }));
    match settings {
        Some(settings) if problems.is_empty() => {
            let problems = semantic(&settings);
            if !problems.is_empty() {
                return Err(render(problems));
            }
            Ok(Summary {
                servers: settings.servers.len(),
                templates: settings.templates.len(),
                schedules: settings.schedules.len(),
                webhooks: settings.webhooks.len(),
                tokens: settings.auth.tokens.len(),
                addr: settings.http.addr.clone(),
            })
        }
        _ => Err(render(problems)),
    }
}

/// What the service would refuse at start.
fn semantic(settings: &Settings) -> Vec<Problem> {
    use secrecy::ExposeSecret;
    use std::net::ToSocketAddrs;
    let mut problems = Vec::new();
    let mut refuse = |key: &str, message: String| problems.push((key.to_string(), message));
    let tokens = crate::http::auth::Tokens::from_settings(&settings.auth.tokens)
        .map(|t| t.len())
        .unwrap_or_else(|e| {
            refuse("auth.tokens", e.to_string());
            0
        });
    if !settings.secrets.key.expose_secret().trim().is_empty()
        && let Err(e) = crate::secrets::Keyring::from_text(&settings.secrets.key)
    {
        refuse("secrets.key", e.to_string());
    }
    let key_file = settings.secrets.key_file.trim();
    if !key_file.is_empty() && !Path::new(key_file).exists() {
        refuse(
            "secrets.key_file",
            format!("key_file {key_file} does not exist"),
        );
    }
    let addr = &settings.http.addr;
    if let Err(e) = addr.to_socket_addrs() {
        refuse("http.addr", format!("http.addr {addr:?}: {e}"));
    } else if tokens == 0 && !loopback_only(addr) {
        let message = format!(
            "{addr} is not a loopback address and no API tokens are set: the service would \
             refuse to start (set [auth] tokens)"
        );
        refuse("http.addr", message);
    }
    let (cert, tls_key) = (settings.http.tls_cert.trim(), settings.http.tls_key.trim());
    if cert.is_empty() != tls_key.is_empty() {
        let missing = if cert.is_empty() {
            "tls_key"
        } else {
            "tls_cert"
        };
        let message = "set both http.tls_cert and http.tls_key, or neither";
        refuse(&format!("http.{missing}"), message.into());
    }
    for (name, file) in [("tls_cert", cert), ("tls_key", tls_key)] {
        if !file.is_empty() && !Path::new(file).exists() {
            refuse(
                &format!("http.{name}"),
                format!("{name} {file} does not exist"),
            );
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, server) in settings.servers.iter().enumerate() {
        let at = format!("servers[{i}].name");
        if !names.insert(&server.name) {
            refuse(&at, format!("two [[servers]] are named {:?}", server.name));
        }
        if let Err(e) = server.checked_patch(settings.ssh.default_max_concurrent_jobs) {
            refuse(&at, e.to_string());
        }
    }
    declared(settings, &mut refuse);
    if let Err(e) = settings.retention.policy() {
        refuse(&e.field, e.to_string());
    }
    problems
}

/// The `[[templates]]`, `[[schedules]]` and `[[webhooks]]` tables, checked as applying them
/// would.
fn declared(settings: &Settings, refuse: &mut impl FnMut(&str, String)) {
    use crate::engine::{Error, ScheduleRequest, check_schedule, check_webhook, template_row};
    // The key a refusal is about: the field's own when the API names one.
    let field = |table: &str, i: usize, e: &Error| match e {
        Error::Invalid(f) => format!("{table}[{i}].{}", f.field),
        _ => format!("{table}[{i}].name"),
    };
    let limits = settings.jobs.limits();
    let mut templates = Vec::new();
    for (i, table) in settings.templates.iter().enumerate() {
        if templates.iter().any(|(name, _)| name == &table.name) {
            let message = format!("two [[templates]] are named {:?}", table.name);
            refuse(&format!("templates[{i}].name"), message);
        }
        match template_row(table.to_request(), None, &limits) {
            Ok(row) => templates.push((table.name.clone(), Some(row.params()))),
            Err(e) => {
                let message = format!("template {:?}: {e}", table.name);
                refuse(&field("templates", i, &e), message);
                templates.push((table.name.clone(), None));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, table) in settings.schedules.iter().enumerate() {
        if !names.insert(&table.name) {
            let message = format!("two [[schedules]] are named {:?}", table.name);
            refuse(&format!("schedules[{i}].name"), message);
        }
        let params = (templates.iter())
            .find(|(name, _)| name == &table.template)
            .and_then(|(_, params)| params.as_deref());
        if let Err(e) = check_schedule(&ScheduleRequest::from(table), params) {
            let message = format!("schedule {:?}: {e}", table.name);
            refuse(&field("schedules", i, &e), message);
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, table) in settings.webhooks.iter().enumerate() {
        if !names.insert(&table.name) {
            let message = format!("two [[webhooks]] are named {:?}", table.name);
            refuse(&format!("webhooks[{i}].name"), message);
        }
        // A secret that cannot be read is one problem; the rest is checked without it.
        let request = crate::engine::webhook_request(table).or_else(|message| {
            let key = if table.secret.is_some() {
                "secret"
            } else {
                "secret_file"
            };
            refuse(&format!("webhooks[{i}].{key}"), message);
            let mut unsigned = table.clone();
            (unsigned.secret, unsigned.secret_file) = (None, None);
            crate::engine::webhook_request(&unsigned)
        });
        if let Ok(request) = request
            && let Err(e) = check_webhook(request)
        {
            let message = format!("webhook {:?}: {e}", table.name);
            refuse(&field("webhooks", i, &e), message);
        }
    }
}

/// Where `key` is in the file, or the nearest key above it that is (a field the API names,
/// `schedules[0].parameters.version`, may be a value's part the file has no key for).
fn position(at: &crate::settings::KeyPositions, key: &str) -> Option<(usize, usize)> {
    let mut key = key;
    loop {
        if let Some(found) = at.get(key) {
            return Some(*found);
        }
        key = &key[..key.rfind(['.', '['])?];
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

    /// Assert that problem `i` of `found` holds every one of `parts`.
    fn says(found: &[String], i: usize, parts: &[&str]) {
        assert!(parts.iter().all(|p| found[i].contains(p)), "{found:?}");
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
        says(&run("[http]\naddr = \n").unwrap_err(), 0, &["line 2"]);
        let unknown = run("[http]\nadr = \"x\"\n[htp]\n").unwrap_err();
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        says(&unknown, 0, &[":2:", "\"adr\""]);
        says(&unknown, 1, &[":3:", "[htp]"]);
        let typed = run("[ssh]\n\nconnect_timeout_secs = \"soon\"\n").unwrap_err();
        says(&typed, 0, &[":3:"]);
        says(
            &run("[http]\naddr = \"0.0.0.0:80\"\n").unwrap_err(),
            0,
            &[":2:", "tokens"],
        );
        let server = run(
            "[[servers]]\nname = \"a\"\nhostname = \"h\"\nuser = \"u\"\n\
             password_file = \"/nonexistent/pw\"\n[[servers]]\nname = \"b\"\nhostname = \"h\"\n\
             user = \"u\"\npassword = \"p\"\nport = 0\n",
        )
        .unwrap_err();
        says(&server, 0, &[":2:", "/nonexistent/pw"]);
        says(&server, 1, &[":7:", "port"]);
        // No secret is ever quoted back.
        let secret = run("[secrets]\nkey = \"1:c2VjcmV0\"\n").unwrap_err();
        says(&secret, 0, &[":2:"]);
        assert!(!secret[0].contains("c2VjcmV0"), "{secret:?}");
    }

    #[test]
    fn unknown_keys_are_named_with_line_and_column_and_no_value() {
        let found = run("[auth]\n  tokenz = [\"ops:hunter2-hunter2\"]\n\
             [[servers]]\nname = \"a\"\nhostname = \"h\"\nuser = \"u\"\n\
             pasword = \"hunter2\"\n")
        .unwrap_err();
        assert_eq!(found.len(), 2, "{found:?}");
        says(&found, 0, &[":2:3:", "\"tokenz\""]);
        says(&found, 1, &[":7:1:", "[[servers]] has no key \"pasword\""]);
        assert!(!found.concat().contains("hunter2"), "{found:?}");
        // A wrong type names the key and what was expected, not the value.
        let typed = run("[worker]\nconcurrency = \"hunter2\"\n").unwrap_err();
        says(&typed, 0, &[":2:1:", "worker.concurrency"]);
        assert!(!typed[0].contains("hunter2"), "{typed:?}");
        // A syntax error says where, without the line's text.
        let syntax = run("[db]\npassword = \"hunter2\n").unwrap_err();
        says(&syntax, 0, &[":2:"]);
        assert!(!syntax[0].contains("hunter2"), "{syntax:?}");
    }

    #[test]
    fn one_run_names_every_bad_value() {
        let found = run("[ssh]
connect_timeout_secs = \"x\"
[worker]
concurrency = \"y\"
\
             concurrancy = 1
[[servers]]
name = \"a\"
hostname = \"h\"
user = \"u\"
port = \"z\"
")
        .unwrap_err();
        assert_eq!(found.len(), 4, "{found:?}");
        says(&found, 0, &[":2:1:", "ssh.connect_timeout_secs"]);
        says(&found, 1, &[":4:1:", "worker.concurrency"]);
        says(&found, 2, &[":5:1:", "\"concurrancy\""]);
        says(&found, 3, &[":10:1:", "servers[0].port"]);
    }

    #[test]
    fn webhook_tables_are_checked_at_their_lines_and_the_old_section_is_named() {
        let found = run(
            "[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/h\"\n\
             events = [\"job.exploded\"]\n\
             [[webhooks]]\nname = \"a\"\nurl = \"ftp://h/\"\nevents = [\"job.failed\"]\n\
             secret = \"whsec-1\"\nsecret_file = \"/nonexistent\"\n",
        )
        .unwrap_err();
        assert_eq!(found.len(), 4, "{found:?}");
        says(&found, 0, &[":4:1:", "unknown event \"job.exploded\""]);
        says(&found, 1, &[":6:1:", "two [[webhooks]] are named \"a\""]);
        says(&found, 2, &[":7:1:", "http:// or https://"]);
        says(&found, 3, &[":9:1:", "secret or secret_file, not both"]);
        assert!(!found.concat().contains("whsec-1"), "{found:?}");
        let old = run("[webhooks]\nmax_attempts = 3\n").unwrap_err();
        assert_eq!(old.len(), 1, "{old:?}");
        says(&old, 0, &[":1:", "[webhook_delivery]"]);
    }

    #[test]
    fn retention_durations_are_checked_without_their_value() {
        assert!(run("[retention]\njobs = \"30d\"\nfailed_jobs = \"90d\"\n").is_ok());
        let found = run("[retention]\noutput = \"7d\"\n\njobs = \"hunter2\"\n").unwrap_err();
        assert_eq!(found.len(), 1, "{found:?}");
        says(&found, 0, &[":4:1:", "retention.jobs"]);
        assert!(!found[0].contains("hunter2"), "{found:?}");
    }
}
