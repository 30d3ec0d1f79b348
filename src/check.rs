//! `job-executor check-config FILE`: everything wrong with a settings file, with its line and
//! column, before a daemon is started (or reloaded) with it.
//!
//! Checks, in order: TOML syntax; then, in one deserialization of the file over the
//! compiled-in defaults into [`Settings`], the keys the settings do not read (a typo the
//! layered loader would otherwise ignore: `serde_ignored` names them) and values of the wrong
//! type (`serde_path_to_error` names the key); then what the service itself would refuse at
//! start: tokens, the secret key, each `[[servers]]` table (its secret files read, its fields
//! validated as the API would), the listen address without tokens, the TLS pair.
//!
//! Positions come from the spans toml keeps for every key. A message names keys, never a
//! value of the file: a value may be a password or a token.

use std::path::Path;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::settings::{DEFAULT_TOML, Settings};

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

/// One step of a key path: a table key or an array index (`servers[1].name`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn key(name: &str) -> Step {
    Step::Key(name.to_string())
}

/// A key path as written in messages: `http.addr`, `servers[1].name`.
fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// One problem: where (1-based line and column, when the key is in the file) and what. The
/// message names keys, never a value from the file (a value may be a password or a token).
struct Problem {
    at: Option<(usize, usize)>,
    message: String,
}

/// Line and column (1-based) of a byte offset into `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The file being checked: its text and its parsed tables, with the span of every key.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    root: Spanned<DeTable<'a>>,
}

impl<'a> Source<'a> {
    /// Where the key at `path` is written: the start of its last key (of the element, when
    /// the path ends in an array index).
    fn position(&self, path: &[Step]) -> Option<(usize, usize)> {
        let mut table: Option<&DeTable<'a>> = Some(self.root.get_ref());
        let mut array: Option<&DeArray<'a>> = None;
        let mut span = None;
        for step in path {
            let value = match step {
                Step::Key(k) => {
                    let (name, value) = table?.get_key_value(k.as_str())?;
                    span = Some(name.span());
                    value
                }
                Step::Index(i) => {
                    let value = array?.get(*i)?;
                    span = Some(value.span());
                    value
                }
            };
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(a)),
                _ => (None, None),
            };
        }
        span.map(|s| line_col(self.text, s.start))
    }

    fn problem(&self, path: &[Step], message: String) -> Problem {
        Problem {
            at: self.position(path),
            message,
        }
    }

    fn render(&self, problem: &Problem) -> String {
        match problem.at {
            Some((line, col)) => {
                format!("{}:{line}:{col}: {}", self.path.display(), problem.message)
            }
            None => format!("{}: {}", self.path.display(), problem.message),
        }
    }
}

/// A deserialization error's message without the value it quotes: serde writes
/// `invalid type: string "hunter2", expected u64`, and the value may be a secret.
fn without_value(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    if first.starts_with("unknown field") || first.starts_with("missing field") {
        // These quote a key, not a value.
        return first.to_string();
    }
    let kind = if first.starts_with("invalid type") {
        "has the wrong type"
    } else if first.starts_with("unknown variant") {
        "has an unknown value"
    } else if first.starts_with("invalid length") {
        "has the wrong number of entries"
    } else {
        "has an invalid value"
    };
    match first.split_once(", expected ") {
        Some((_, expected)) => format!("{kind}; expected {expected}"),
        None => kind.to_string(),
    }
}

/// The key path of a serde_ignored path (its `Option`/newtype steps dropped).
fn ignored_path(path: &serde_ignored::Path<'_>, out: &mut Vec<Step>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push(Step::Index(*index));
        }
        P::Map { parent, key } => {
            ignored_path(parent, out);
            out.push(Step::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent, out)
        }
    }
}

/// The key path of a serde_path_to_error path.
fn error_path(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// The message for a key the settings do not have, with the keys they do have there.
fn unknown_key(path: &[Step], defaults: &DeTable<'_>) -> String {
    let names = |t: &DeTable<'_>| {
        t.keys()
            .map(|k| k.get_ref().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match path {
        [Step::Key(section)] => format!(
            "unknown section [{section}]; known: {}, [[servers]]",
            names(defaults)
        ),
        [Step::Key(section), Step::Key(name)] => {
            match defaults.get(section.as_str()).map(Spanned::get_ref) {
                Some(DeValue::Table(known)) => {
                    format!("[{section}] has no key {name:?}; known: {}", names(known))
                }
                _ => format!("[{section}] has no key {name:?}"),
            }
        }
        _ => format!("{} is not a setting", dotted(path)),
    }
}

/// Fill what the file leaves out from the compiled-in defaults, section by section, as the
/// layered loader does, so the whole can be deserialized into [`Settings`].
fn with_defaults<'a>(file: &mut DeTable<'a>, defaults: &DeTable<'a>) {
    for (section, default) in defaults.iter() {
        match file.get_mut(section.get_ref().as_ref()) {
            None => {
                file.insert(section.clone(), default.clone());
            }
            Some(mine) => {
                if let (DeValue::Table(mine), DeValue::Table(default)) =
                    (mine.get_mut(), default.get_ref())
                {
                    for (k, v) in default.iter() {
                        if mine.get(k.get_ref().as_ref()).is_none() {
                            mine.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Rounds of deserialization at most: one per bad value found (see [`check`]).
const MAX_ROUNDS: usize = 64;

/// Take the value at `path` (cut back to its last key) out of `table`, putting the default
/// in its place when there is one. False when there was nothing to take out.
fn take_out<'a>(table: &mut DeTable<'a>, path: &[Step], defaults: &DeTable<'a>) -> bool {
    let Some(last) = path.iter().rposition(|s| matches!(s, Step::Key(_))) else {
        return false;
    };
    match &path[..=last] {
        [Step::Key(section)] => replace(table, section, defaults.get(section.as_str())),
        [Step::Key(section), Step::Key(name)] => {
            let default = match defaults.get(section.as_str()).map(Spanned::get_ref) {
                Some(DeValue::Table(t)) => t.get(name.as_str()),
                _ => None,
            };
            match table.get_mut(section.as_str()).map(Spanned::get_mut) {
                Some(DeValue::Table(t)) => replace(t, name, default),
                _ => replace(table, section, defaults.get(section.as_str())),
            }
        }
        deeper => remove(table, deeper),
    }
}

/// Take `name` out of `table`, with `default` in its place when given.
fn replace<'a>(
    table: &mut DeTable<'a>,
    name: &str,
    default: Option<&Spanned<DeValue<'a>>>,
) -> bool {
    let Some((k, _)) = table.remove_entry(name) else {
        return false;
    };
    if let Some(value) = default {
        table.insert(k, value.clone());
    }
    true
}

/// Take the key at `path` (which ends in a key) out, through tables and arrays.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    match path {
        [Step::Key(k)] => table.remove(k.as_str()).is_some(),
        [Step::Key(k), rest @ ..] => table
            .get_mut(k.as_str())
            .is_some_and(|v| remove_in(v.get_mut(), rest)),
        _ => false,
    }
}

fn remove_in(value: &mut DeValue<'_>, path: &[Step]) -> bool {
    match (value, path.first()) {
        (DeValue::Table(t), Some(Step::Key(_))) => remove(t, path),
        (DeValue::Array(items), Some(Step::Index(i))) => items
            .get_mut(*i)
            .is_some_and(|v| remove_in(v.get_mut(), &path[1..])),
        _ => false,
    }
}

/// Check the file at `path`; every problem found, or a summary.
pub fn check(path: &Path) -> Result<Summary, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let root = DeTable::parse(&text).map_err(|e| {
        let at = e.span().map(|s| line_col(&text, s.start));
        // The message alone: toml's full error quotes the line, which may hold a secret.
        let message = e.message().lines().next().unwrap_or_default().to_string();
        vec![match at {
            Some((line, col)) => format!(
                "{}:{line}:{col}: not valid TOML (line {line}, column {col}): {message}",
                path.display()
            ),
            None => format!("{}: not valid TOML: {message}", path.display()),
        }]
    })?;
    let defaults = DeTable::parse(DEFAULT_TOML)
        .map_err(|e| vec![format!("the compiled-in defaults: {e}")])?
        .into_inner();
    let source = Source {
        path,
        text: &text,
        root,
    };

    // Unknown keys (serde_ignored: whatever the settings do not read) and wrong types, in
    // one pass over the file with the defaults beneath it.
    let mut merged = source.root.clone();
    with_defaults(merged.get_mut(), &defaults);
    let mut unknown: Vec<Vec<Step>> = Vec::new();
    let mut problems = Vec::new();
    let mut seen: Vec<Vec<Step>> = Vec::new();
    // A deserializer stops at its first error: take the bad value out (the default stands in
    // for it) and go again, so one run names every problem. Each round takes one value out.
    for _ in 0..MAX_ROUNDS {
        let parsed: Result<Settings, _> =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
                toml::de::Deserializer::from(merged.clone()),
                &mut |p: serde_ignored::Path<'_>| {
                    let mut steps = Vec::new();
                    ignored_path(&p, &mut steps);
                    if !unknown.contains(&steps) {
                        unknown.push(steps);
                    }
                },
            ));
        let Err(e) = parsed else { break };
        let mut steps = error_path(e.path());
        let message = e.inner().message().to_string();
        // `[[servers]]` refuses unknown keys itself: the key is in the message.
        let unknown_field = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_string());
        let text = match unknown_field {
            Some(name) => {
                if steps.last() != Some(&key(&name)) {
                    steps.push(key(&name));
                }
                let known = message
                    .split_once("expected one of ")
                    .map(|(_, list)| list.replace('`', ""))
                    .unwrap_or_default();
                format!("[[servers]] has no key {name:?}; known: {known}")
            }
            None => format!("{}: {}", dotted(&steps), without_value(&message)),
        };
        let again = seen.contains(&steps);
        problems.push(source.problem(&steps, text));
        if again || !take_out(merged.get_mut(), &steps, &defaults) {
            break;
        }
        seen.push(steps);
    }
    problems.extend(
        unknown
            .iter()
            .map(|steps| source.problem(steps, unknown_key(steps, &defaults))),
    );
    if !problems.is_empty() {
        return Err(sorted(&source, problems));
    }
    // What the service loads (the file alone: no environment).
    let settings =
        Settings::load_from(Some(path), &std::collections::HashMap::new()).map_err(|e| {
            vec![source.render(&Problem {
                at: None,
                message: format!(
                    "the settings cannot be loaded: {}",
                    without_value(&e.to_string())
                ),
            })]
        })?;
    semantic(&source, &settings)
        .map(|()| Summary {
            servers: settings.servers.len(),
            tokens: settings.auth.tokens.len(),
            addr: settings.http.addr.clone(),
        })
        .map_err(|problems| sorted(&source, problems))
}

/// The problems in file order, rendered.
fn sorted(source: &Source<'_>, mut problems: Vec<Problem>) -> Vec<String> {
    problems.sort_by_key(|p| p.at.unwrap_or((0, 0)));
    problems.iter().map(|p| source.render(p)).collect()
}

/// What the service would refuse at start.
fn semantic(source: &Source<'_>, settings: &Settings) -> Result<(), Vec<Problem>> {
    use secrecy::ExposeSecret;
    let mut problems = Vec::new();
    let tokens = match crate::http::auth::Tokens::from_settings(&settings.auth.tokens) {
        Ok(t) => t.len(),
        Err(e) => {
            problems.push(source.problem(&[key("auth"), key("tokens")], e.to_string()));
            0
        }
    };
    let secret_key = settings.secrets.key.expose_secret().trim();
    if !secret_key.is_empty()
        && let Err(e) = crate::secrets::Keyring::from_text(&settings.secrets.key)
    {
        problems.push(source.problem(&[key("secrets"), key("key")], e.to_string()));
    }
    let key_file = settings.secrets.key_file.trim();
    if !key_file.is_empty() && !Path::new(key_file).exists() {
        problems.push(source.problem(
            &[key("secrets"), key("key_file")],
            format!("key_file {key_file} does not exist"),
        ));
    }
    use std::net::ToSocketAddrs;
    let addr = &settings.http.addr;
    let addr_key = [key("http"), key("addr")];
    if let Err(e) = addr.to_socket_addrs() {
        problems.push(source.problem(&addr_key, format!("http.addr {addr:?}: {e}")));
    } else if tokens == 0 && !crate::settings::loopback_only(addr) {
        problems.push(source.problem(
            &addr_key,
            format!(
                "{addr} is not a loopback address and no API tokens are set: the service \
                 would refuse to start (set [auth] tokens)"
            ),
        ));
    }
    let (cert, tls_key) = (settings.http.tls_cert.trim(), settings.http.tls_key.trim());
    if cert.is_empty() != tls_key.is_empty() {
        let missing = if cert.is_empty() {
            "tls_key"
        } else {
            "tls_cert"
        };
        problems.push(source.problem(
            &[key("http"), key(missing)],
            "set both http.tls_cert and http.tls_key, or neither".into(),
        ));
    }
    for (name, file) in [("tls_cert", cert), ("tls_key", tls_key)] {
        if !file.is_empty() && !Path::new(file).exists() {
            problems.push(source.problem(
                &[key("http"), key(name)],
                format!("{name} {file} does not exist"),
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, server) in settings.servers.iter().enumerate() {
        let at = [key("servers"), Step::Index(i), key("name")];
        if !names.insert(server.name.clone()) {
            problems
                .push(source.problem(&at, format!("two [[servers]] are named {:?}", server.name)));
        }
        if let Err(e) = server.checked_patch(settings.ssh.default_max_concurrent_jobs) {
            problems.push(source.problem(&at, e.to_string()));
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

    #[test]
    fn unknown_keys_are_named_with_line_and_column_and_no_value() {
        let found = run("[auth]\n  tokenz = [\"ops:hunter2-hunter2\"]\n\
             [[servers]]\nname = \"a\"\nhostname = \"h\"\nuser = \"u\"\n\
             pasword = \"hunter2\"\n")
        .unwrap_err();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains(":2:3:") && found[0].contains("\"tokenz\""),
            "{found:?}"
        );
        assert!(
            found[1].contains(":7:1:") && found[1].contains("[[servers]] has no key \"pasword\""),
            "{found:?}"
        );
        assert!(!found.concat().contains("hunter2"), "{found:?}");
        // A wrong type names the key and what was expected, not the value.
        let typed = run("[worker]\nconcurrency = \"hunter2\"\n").unwrap_err();
        assert!(
            typed[0].contains(":2:1:") && typed[0].contains("worker.concurrency"),
            "{typed:?}"
        );
        assert!(!typed[0].contains("hunter2"), "{typed:?}");
        // A syntax error says where, without the line's text.
        let syntax = run("[db]\npassword = \"hunter2\n").unwrap_err();
        assert!(syntax[0].contains(":2:"), "{syntax:?}");
        assert!(!syntax[0].contains("hunter2"), "{syntax:?}");
    }
}
