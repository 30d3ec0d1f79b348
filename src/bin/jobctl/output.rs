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
pub fn table(headers: &[impl AsRef<str>], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = headers.iter().map(|h| h.as_ref().to_string()).collect();
    let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(rows).collect();
    let mut widths = vec![0; header.len()];
    for row in &lines {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in lines {
        let cells = row.iter().zip(&widths).map(|(c, &w)| format!("{c:<w$}  "));
        out += cells.collect::<String>().trim_end();
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

/// A field as text: strings bare, null and the empty string as `-`, anything else as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A boolean field as `yes` or `no`.
pub fn yes_no(v: &Value) -> String {
    if *v == true { "yes" } else { "no" }.into()
}

/// An RFC 3339 time as local `YYYY-MM-DD HH:MM:SS`, or `-`.
pub fn time(v: &Value) -> String {
    let Some(s) = v.as_str() else {
        return "-".into();
    };
    match s.parse::<chrono::DateTime<chrono::Local>>() {
        Ok(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => s.to_string(),
    }
}

/// `s` cut to `max` characters, with `…` when cut; newlines shown as `⏎`.
pub fn clip(s: &str, max: usize) -> String {
    let flat = s.replace('\n', "⏎");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut + "…"
}

/// The command line of a job, for a table cell.
pub fn job_command(job: &Value) -> String {
    let args = job["args"].as_str().filter(|a| !a.is_empty());
    let args = args.map(|a| format!(" {a}")).unwrap_or_default();
    if job["kind"] != "script" {
        return format!("{}{args}", job["command"].as_str().unwrap_or(""));
    }
    let mut lines = job["script"].as_str().unwrap_or("").lines();
    let first = lines.find(|l| !l.starts_with("#!") && !l.trim().is_empty());
    format!("[script{args}] {}", first.unwrap_or(""))
}

/// A JSON array of jobs as a table, servers by name when known.
pub fn jobs_table(jobs: &Value, names: &HashMap<String, String>) -> String {
    let rows: Vec<Vec<String>> = (jobs.as_array().into_iter().flatten())
        .map(|j| {
            let server = text(&j["server_id"]);
            vec![
                text(&j["id"]),
                text(&j["status"]),
                text(&j["exit_code"]),
                names.get(&server).cloned().unwrap_or(server),
                time(&j["created_at"]),
                clip(&job_command(j), 60),
            ]
        })
        .collect();
    let headers = ["ID", "STATUS", "EXIT", "SERVER", "CREATED", "COMMAND"];
    table(&headers, &rows)
}

/// One job as a key/value listing.
pub fn job_listing(job: &Value, names: &HashMap<String, String>) -> String {
    let server = match names.get(job["server_id"].as_str().unwrap_or("")) {
        Some(name) => format!("{name} ({})", text(&job["server_id"])),
        None => text(&job["server_id"]),
    };
    let env: Vec<String> = job["env"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let mut pairs = vec![
        ("id", text(&job["id"])),
        ("kind", text(&job["kind"])),
        ("status", text(&job["status"])),
        ("exit code", text(&job["exit_code"])),
        ("error", text(&job["error"])),
        ("server", server),
    ];
    if job["kind"] == "script" {
        let script = job["script"].as_str().unwrap_or("");
        let first = clip(script.lines().next().unwrap_or(""), 60);
        let lines = script.lines().count();
        pairs.extend([
            ("script", format!("{first} ({lines} lines)")),
            ("shell", text(&job["shell"])),
            ("args", text(&job["args"])),
        ]);
    } else {
        pairs.push(("command", job_command(job)));
    }
    let timeout = job["timeout"].as_i64().map(|t| format!("{t}s"));
    let bytes = job["output_bytes"].as_i64().unwrap_or(0);
    let truncated = (job["output_truncated"] == true).then_some(" (truncated)");
    pairs.extend([
        ("env", text(&Value::from(env.join(" ")))),
        ("cwd", text(&job["cwd"])),
        ("timeout", timeout.unwrap_or_else(|| "-".into())),
        ("created", time(&job["created_at"])),
        ("started", time(&job["started_at"])),
        ("finished", time(&job["finished_at"])),
        ("worker", text(&job["worker"])),
        (
            "output",
            format!("{bytes} bytes{}", truncated.unwrap_or("")),
        ),
        ("duplicated from", text(&job["duplicated_from"])),
        ("idempotency key", text(&job["idempotency_key"])),
    ]);
    listing(&pairs)
}

/// The fields of a server that its table shows, its listing first.
fn server_pairs(s: &Value) -> Vec<(&'static str, String)> {
    let mut auth = text(&s["auth_type"]);
    if s["has_private_key_passphrase"] == true {
        auth.push_str(" (passphrase)");
    }
    let host = format!("{}:{}", text(&s["hostname"]), text(&s["port"]));
    vec![
        ("id", text(&s["id"])),
        ("name", text(&s["name"])),
        ("host", host),
        ("user", text(&s["user"])),
        ("auth", auth),
        ("active", yes_no(&s["is_active"])),
        ("max jobs", text(&s["max_concurrent_jobs"])),
        ("host key", text(&s["host_key_fingerprint"])),
        ("labels", labels(&s["labels"])),
    ]
}

/// Labels as a selector would name them, by key: `env=prod,role=web` (`-` for none).
pub fn labels(v: &Value) -> String {
    let mut pairs: Vec<String> = (v.as_object().into_iter().flatten())
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    text(&Value::from(pairs.join(",")))
}

/// A JSON array of servers as a table: the headers are the listing's first keys, in capitals.
pub fn servers_table(servers: &Value) -> String {
    let headers: Vec<String> = server_pairs(&Value::Null)
        .iter()
        .map(|(k, _)| k.to_uppercase())
        .collect();
    let rows: Vec<Vec<String>> = (servers.as_array().into_iter().flatten())
        .map(|s| server_pairs(s).into_iter().map(|(_, v)| v).collect())
        .collect();
    table(&headers, &rows)
}

/// One server as a key/value listing.
pub fn server_listing(s: &Value) -> String {
    let mut pairs = server_pairs(s);
    pairs.extend([
        ("host key check", text(&s["host_key_check"])),
        ("created", time(&s["created_at"])),
        ("updated", time(&s["updated_at"])),
    ]);
    listing(&pairs)
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
    fn labels_read_like_a_selector() {
        let v = serde_json::json!({"role": "web", "env": "prod"});
        assert_eq!(labels(&v), "env=prod,role=web");
        assert_eq!(labels(&serde_json::json!({})), "-");
        assert_eq!(labels(&Value::Null), "-");
    }

    #[test]
    fn clip_cuts_long_text() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("a\nb", 10), "a⏎b");
    }
}
