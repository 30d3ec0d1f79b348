//! Printing: aligned tables and key/value listings for people, JSON for scripts, and the
//! job's own output written through as it arrives.

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;

/// Print JSON, pretty.
pub fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    write_stdout(format!("{text}\n").as_bytes());
}

/// Print one JSON value on one line (for streams of events).
pub fn print_json_line(v: &Value) {
    write_stdout(format!("{v}\n").as_bytes());
}

/// Write bytes to stdout and flush (a closed stdout is not an error worth reporting).
pub fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Write bytes to stderr and flush.
pub fn write_stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes);
    let _ = err.flush();
}

/// A table: a header row and rows, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<pad$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A key/value listing, keys padded to the longest.
pub fn listing(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// A field as text: strings bare, null as `-`, anything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as local `YYYY-MM-DD HH:MM:SS`, or `-`.
pub fn time(v: &Value) -> String {
    match v.as_str() {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            })
            .unwrap_or_else(|_| s.to_string()),
        None => "-".into(),
    }
}

/// `s` cut to `max` characters, with `…` when cut; newlines shown as `⏎`.
pub fn clip(s: &str, max: usize) -> String {
    let flat = s.replace('\n', "⏎");
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The command line of a job, for a table cell.
pub fn job_command(job: &Value) -> String {
    match job["kind"].as_str() {
        Some("script") => {
            let first = job["script"]
                .as_str()
                .and_then(|s| {
                    s.lines()
                        .find(|l| !l.starts_with("#!") && !l.trim().is_empty())
                })
                .unwrap_or("");
            let args = job["args"].as_str().filter(|a| !a.is_empty());
            match args {
                Some(a) => format!("[script {a}] {first}"),
                None => format!("[script] {first}"),
            }
        }
        _ => {
            let cmd = job["command"].as_str().unwrap_or("");
            match job["args"].as_str().filter(|a| !a.is_empty()) {
                Some(a) => format!("{cmd} {a}"),
                None => cmd.to_string(),
            }
        }
    }
}

/// The server of a job: its name when known, else its id.
fn server_label(job: &Value, names: &HashMap<String, String>) -> String {
    let id = job["server_id"].as_str().unwrap_or("-");
    names.get(id).cloned().unwrap_or_else(|| id.to_string())
}

/// The exit code cell: the code, or `-`.
fn exit_cell(job: &Value) -> String {
    text(&job["exit_code"])
}

/// Jobs as a table.
pub fn jobs_table(jobs: &[Value], names: &HashMap<String, String>) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                text(&j["id"]),
                text(&j["status"]),
                exit_cell(j),
                server_label(j, names),
                time(&j["created_at"]),
                clip(&job_command(j), 60),
            ]
        })
        .collect();
    table(
        &["ID", "STATUS", "EXIT", "SERVER", "CREATED", "COMMAND"],
        &rows,
    )
}

/// One job as a key/value listing.
pub fn job_listing(job: &Value, names: &HashMap<String, String>) -> String {
    let server = match names.get(job["server_id"].as_str().unwrap_or("")) {
        Some(name) => format!("{name} ({})", text(&job["server_id"])),
        None => text(&job["server_id"]),
    };
    let env = job["env"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "-".into());
    let mut pairs = vec![
        ("id", text(&job["id"])),
        ("kind", text(&job["kind"])),
        ("status", text(&job["status"])),
        ("exit code", exit_cell(job)),
        ("error", text(&job["error"])),
        ("server", server),
    ];
    if job["kind"] == "script" {
        let script = job["script"].as_str().unwrap_or("");
        pairs.push((
            "script",
            format!(
                "{} ({} lines)",
                clip(script.lines().next().unwrap_or(""), 60),
                script.lines().count()
            ),
        ));
        pairs.push(("shell", text(&job["shell"])));
        pairs.push(("args", text(&job["args"])));
    } else {
        pairs.push(("command", job_command(job)));
    }
    pairs.extend([
        ("env", env),
        ("cwd", text(&job["cwd"])),
        (
            "timeout",
            match job["timeout"].as_i64() {
                Some(t) => format!("{t}s"),
                None => "-".into(),
            },
        ),
        ("created", time(&job["created_at"])),
        ("started", time(&job["started_at"])),
        ("finished", time(&job["finished_at"])),
        ("worker", text(&job["worker"])),
        (
            "output",
            format!(
                "{} bytes{}",
                job["output_bytes"].as_i64().unwrap_or(0),
                if job["output_truncated"] == true {
                    " (truncated)"
                } else {
                    ""
                }
            ),
        ),
        ("duplicated from", text(&job["duplicated_from"])),
        ("idempotency key", text(&job["idempotency_key"])),
    ]);
    listing(&pairs)
}

fn host_port(s: &Value) -> String {
    format!("{}:{}", text(&s["hostname"]), text(&s["port"]))
}

fn auth_cell(s: &Value) -> String {
    let mut auth = text(&s["auth_type"]);
    if s["has_private_key_passphrase"] == true {
        auth.push_str(" (passphrase)");
    }
    auth
}

/// Servers as a table.
pub fn servers_table(servers: &[Value]) -> String {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                text(&s["name"]),
                host_port(s),
                text(&s["user"]),
                auth_cell(s),
                if s["is_active"] == true { "yes" } else { "no" }.into(),
                text(&s["max_concurrent_jobs"]),
                text(&s["host_key_fingerprint"]),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "HOST", "USER", "AUTH", "ACTIVE", "MAX JOBS", "HOST KEY",
        ],
        &rows,
    )
}

/// One server as a key/value listing.
pub fn server_listing(s: &Value) -> String {
    listing(&[
        ("id", text(&s["id"])),
        ("name", text(&s["name"])),
        ("host", host_port(s)),
        ("user", text(&s["user"])),
        ("auth", auth_cell(s)),
        (
            "active",
            if s["is_active"] == true { "yes" } else { "no" }.into(),
        ),
        ("max jobs", text(&s["max_concurrent_jobs"])),
        ("host key", text(&s["host_key_fingerprint"])),
        ("host key check", text(&s["host_key_check"])),
        ("created", time(&s["created_at"])),
        ("updated", time(&s["updated_at"])),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["222".into(), "bb".into()],
            ],
        );
        assert_eq!(t, "ID   NAME\n1    a\n222  bb\n");
    }

    #[test]
    fn clip_cuts_long_text() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("a\nb", 10), "a⏎b");
    }
}
