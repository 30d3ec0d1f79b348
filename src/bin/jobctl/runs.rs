//! Runs: one command on many servers. `jobctl run --labels …|--servers …` starts one and
//! follows it (`GET /runs/:id/stream`), printing every host's output as lines prefixed with
//! its server's name; `jobctl runs …` lists, shows, cancels, reruns and summarizes them.
//!
//! What goes where while a run is followed: stdout carries only the hosts' stdout lines (so
//! it can be piped), stderr their stderr lines and everything `jobctl` itself says: the run's
//! id at the start, the per-host table and the `--summary` at the end. With `-o json` stdout
//! carries only the final run object, and the hosts' lines all go to stderr.

use std::collections::BTreeMap;

use anyhow::anyhow;
use clap::{ArgGroup, Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Api, ApiError, escape};
use crate::follow::{Subject, follow_events};
use crate::jobs::{self, CommandArgs};
use crate::prefixed::{Colours, Dest, Prefixer, host_name};
use crate::{Ctx, Output, output};

/// `jobctl run`: one server (a job), or many (a run) with `--labels` or `--servers`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub cmd: CommandArgs,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Where a run goes and how it rolls out.
#[derive(Debug, Args)]
#[command(next_help_heading = "Many servers (a run)")]
#[command(group(ArgGroup::new("targets").args(["labels", "servers"]).multiple(false)))]
pub struct FleetArgs {
    /// Run on every server this label selector matches: `role=web,env!=prod`, `key` (has
    /// it), `!key` (has it not).
    #[arg(
        long,
        short = 'l',
        value_name = "SELECTOR",
        conflicts_with_all = ["server", "idempotency_key"]
    )]
    pub labels: Option<String>,
    /// Run on these servers, by name or id (comma-separated, repeatable).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        conflicts_with_all = ["server", "idempotency_key"]
    )]
    pub servers: Vec<String>,
    /// Hosts running at once: a number, or a share of the hosts (`25%`); default all.
    #[arg(long, value_name = "N|N%", value_parser = parse_batch, requires = "targets")]
    pub batch: Option<Amount>,
    /// Hosts that run alone first; the rest start only when they completed.
    #[arg(long, value_name = "N", requires = "targets")]
    pub canary: Option<u32>,
    /// Failures tolerated before no new host starts (the rest are skipped): a number or a
    /// share (`10%`); default 0.
    #[arg(long, value_name = "N|N%", value_parser = parse_max_failures, requires = "targets")]
    pub max_failures: Option<Amount>,
    /// Start every host whatever fails.
    #[arg(long, requires = "targets")]
    pub keep_going: bool,
    /// At the end, also print the hosts grouped by identical output and exit code.
    #[arg(long, requires = "targets")]
    pub summary: bool,
}

impl FleetArgs {
    /// Whether targets were given: a run, not a single job.
    pub fn is_run(&self) -> bool {
        self.labels.is_some() || !self.servers.is_empty()
    }
}

/// A count of hosts, or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// As the API takes it: a number, or `"N%"`.
    fn json(self) -> Value {
        match self {
            Amount::Count(n) => n.into(),
            Amount::Percent(p) => format!("{p}%").into(),
        }
    }

    /// `N` or `N%`, with `N` at least `min` (a percentage at most 100).
    fn parse(s: &str, min: u32) -> Result<Amount, String> {
        let bad = || format!("{s:?} is not a number or a percentage (N or N%) of at least {min}");
        let (digits, percent) = match s.trim().strip_suffix('%') {
            Some(d) => (d, true),
            None => (s.trim(), false),
        };
        let n: u32 = digits.parse().map_err(|_| bad())?;
        if n < min {
            return Err(bad());
        }
        if !percent {
            return Ok(Amount::Count(n));
        }
        if n > 100 {
            return Err(format!("{s:?}: a percentage is at most 100%"));
        }
        Ok(Amount::Percent(n))
    }
}

fn parse_batch(s: &str) -> Result<Amount, String> {
    Amount::parse(s, 1)
}

fn parse_max_failures(s: &str) -> Result<Amount, String> {
    Amount::parse(s, 0)
}

/// The request body of `POST /runs`: the job fields, the targets and the strategy (null
/// where not given).
pub fn run_body(cmd: &CommandArgs, fleet: &FleetArgs) -> Value {
    let env: BTreeMap<_, _> = cmd.opts.env.iter().cloned().collect();
    let targets = targets_body(fleet.labels.as_deref(), &fleet.servers);
    let mut strategy = json!({
        "batch": fleet.batch.map(Amount::json),
        "canary": fleet.canary,
        "max_failures": fleet.max_failures.map(Amount::json),
        "keep_going": fleet.keep_going.then_some(true),
    });
    if let Some(fields) = strategy.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
    }
    let strategy = (strategy.as_object().is_some_and(|s| !s.is_empty())).then_some(strategy);
    json!({
        // clap requires the command's first word.
        "command": cmd.command.first(),
        "args": jobs::joined(cmd.command.get(1..).unwrap_or_default()),
        "env": (!env.is_empty()).then_some(env),
        "cwd": cmd.opts.cwd,
        "timeout": cmd.opts.timeout,
        "targets": targets,
        "strategy": strategy,
    })
}

/// The `targets` of a request: the selector when given, else the servers (names or ids,
/// blanks dropped).
pub fn targets_body(labels: Option<&str>, servers: &[String]) -> Value {
    match labels {
        Some(selector) => json!({ "selector": selector }),
        None => {
            let servers = servers.iter().map(|s| s.trim()).filter(|s| !s.is_empty());
            json!({ "servers": servers.collect::<Vec<_>>() })
        }
    }
}

/// `jobctl runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List(ListArgs),
    /// Show one run and its hosts.
    Get(IdArg),
    /// Cancel a run: its running jobs are canceled, the hosts not started skipped.
    Cancel(IdArg),
    /// Start a new run of an old one's command on its failed, skipped and canceled hosts
    /// (`--all`: on all of them); prints the new run's id.
    Rerun(RerunArgs),
    /// Print a run's hosts grouped by identical output and exit code.
    Summary(IdArg),
    /// Follow a run to its end as `jobctl run` does (its output from the start), and exit
    /// like it: 0 when every host completed, else 1.
    Follow(FollowArgs),
}

/// A command taking one run id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The run's id.
    id: String,
}

/// `runs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only runs in these statuses, comma-separated (queued, running, completed, failed,
    /// canceled).
    #[arg(long)]
    status: Option<String>,
    /// Runs per page (the service's default is 50).
    #[arg(long, short = 'n')]
    limit: Option<u32>,
    /// Every page, not only the first.
    #[arg(long)]
    all: bool,
}

/// `runs rerun`.
#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The run to start again.
    id: String,
    /// On every host of the run, not only those that did not complete.
    #[arg(long)]
    all: bool,
}

/// `runs follow`.
#[derive(Debug, Args)]
pub struct FollowArgs {
    /// The run's id.
    id: String,
    /// At the end, also print the hosts grouped by identical output and exit code.
    #[arg(long)]
    summary: bool,
}

/// The API path of run `id` plus `rest`.
pub fn run_path(id: &str, rest: &str) -> String {
    format!("/runs/{}{rest}", escape(id))
}

/// The id of a run the service answered.
pub fn id_of(run: &Value) -> anyhow::Result<String> {
    run["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the service answered a run without an id: {run}"))
}

/// The exit status of a finished run: 0 when it and every one of its hosts completed, else 1.
pub fn exit_status(run: &Value) -> u8 {
    let hosts = run["hosts"].as_array().into_iter().flatten();
    let all_completed = hosts.into_iter().all(|h| h["status"] == "completed");
    if run["status"] == "completed" && all_completed {
        0
    } else {
        1
    }
}

/// `jobctl run --labels …|--servers …`: start a run, follow it, print its hosts' table;
/// Ctrl-C cancels it.
pub async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    let interrupts = jobs::interrupts();
    let created = ctx.api.post("/runs", run_body(&a.cmd, &a.fleet)).await?;
    follow_created(ctx, &created, interrupts, a.fleet.summary).await
}

/// Follow a run just created (`POST /runs`, a template's launch) as `jobctl run` does: its
/// id on stderr, its hosts' lines, then its report (with `summary`, the hosts grouped);
/// Ctrl-C (from `interrupts`, listened to before the run was created) cancels it. Returns
/// the exit status: 0 when every host completed, else 1 (130 when a second Ctrl-C stopped
/// the waiting).
pub async fn follow_created(
    ctx: &Ctx,
    created: &Value,
    mut interrupts: tokio::sync::mpsc::UnboundedReceiver<()>,
    summary: bool,
) -> anyhow::Result<u8> {
    let id = id_of(created)?;
    let hosts = created["hosts"].as_array().map_or(0, Vec::len);
    let noun = if hosts == 1 { "server" } else { "servers" };
    output::write_stderr(format!("jobctl: run {id} on {hosts} {noun}\n").as_bytes());
    let following = follow_run(&ctx.api, &id, Some(created), ctx.output);
    tokio::pin!(following);
    let mut interrupted = false;
    let last = loop {
        tokio::select! {
            res = &mut following => break res?,
            Some(()) = interrupts.recv() => {
                if interrupted {
                    let line = format!("jobctl: stopped waiting; run {id} is being canceled\n");
                    output::write_stderr(line.as_bytes());
                    return Ok(130);
                }
                interrupted = true;
                let line = format!("jobctl: canceling run {id} (Ctrl-C again to stop waiting)\n");
                output::write_stderr(line.as_bytes());
                if let Err(e) = ctx.api.post(&run_path(&id, "/cancel"), json!({})).await
                    && e.downcast_ref::<ApiError>().is_none_or(|e| e.status != StatusCode::CONFLICT)
                {
                    output::write_stderr(format!("jobctl: cannot cancel run {id}: {e:#}\n").as_bytes());
                }
            }
        }
    };
    report(ctx, &last, summary).await
}

/// Follow run `id` to its end, printing its hosts' lines; returns the final run. `known` is
/// the run as already read (its hosts name the prefixes before the stream's `run` event).
pub async fn follow_run(
    api: &Api,
    id: &str,
    known: Option<&Value>,
    output: Output,
) -> anyhow::Result<Value> {
    let detected = Colours::detect();
    // With JSON on stdout, every line goes to stderr.
    let (colours, to_stderr) = match output {
        Output::Table => (detected, false),
        Output::Json => {
            let stderr = detected.stderr;
            (
                Colours {
                    stdout: stderr,
                    stderr,
                },
                true,
            )
        }
    };
    let mut prefixer = known.map(|run| Prefixer::new(run, colours));
    let write = |pieces: Vec<(Dest, String)>| {
        for (dest, text) in pieces {
            match dest {
                Dest::Stdout if !to_stderr => output::write_stdout(text.as_bytes()),
                _ => output::write_stderr(text.as_bytes()),
            }
        }
    };
    let on_event = |kind: &str, _id: Option<&str>, data: &Value| {
        if kind == "run" && prefixer.is_none() {
            prefixer = Some(Prefixer::new(data, colours));
        }
        let p = prefixer.get_or_insert_with(|| Prefixer::new(&Value::Null, colours));
        match kind {
            "output" => write(p.output(data)),
            "host_complete" => write(p.flush_host(data)),
            "complete" => write(p.flush_all()),
            _ => {}
        }
    };
    let subject = Subject {
        kind: "run",
        id,
        resume: format!("jobctl runs follow {id}"),
    };
    match follow_events(api, &run_path(id, "/stream"), &subject, on_event).await? {
        Some(run) => Ok(run),
        None => {
            // An unknown run is the API's error; a service without the stream, ours.
            api.get(&run_path(id, "")).await?;
            Err(anyhow!(
                "the service has no event stream of runs (GET /runs/{id}/stream); \
                 `jobctl runs get {id}` shows the run"
            ))
        }
    }
}

/// The end of a followed run: for people, its outcome and its hosts' table on stderr (and
/// the summary); for scripts, the run object (with `summary` added when asked) on stdout.
/// Returns the exit status.
async fn report(ctx: &Ctx, run: &Value, summary: bool) -> anyhow::Result<u8> {
    let groups = if summary {
        Some(ctx.api.get(&run_path(&id_of(run)?, "/summary")).await?)
    } else {
        None
    };
    match ctx.output {
        Output::Json => {
            let mut run = run.clone();
            if let Some(groups) = groups {
                run["summary"] = groups;
            }
            output::print_json(&run);
        }
        Output::Table => {
            let mut text = format!("\n{}\n{}", outcome(run), hosts_table(run));
            if let Some(groups) = &groups {
                text = format!("{text}\n{}", summary_text(groups));
            }
            output::write_stderr(text.as_bytes());
        }
    }
    Ok(exit_status(run))
}

/// `run 3f… failed: 2 completed, 1 failed`.
fn outcome(run: &Value) -> String {
    format!(
        "run {} {}: {}",
        output::text(&run["id"]),
        output::text(&run["status"]),
        counts_text(&run["counts"])
    )
}

/// The counts that are not zero, in the order of a run's life: `2 completed, 1 failed`.
pub fn counts_text(counts: &Value) -> String {
    let names = [
        "queued",
        "running",
        "completed",
        "failed",
        "timed_out",
        "canceled",
        "skipped",
    ];
    let parts: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let c = counts[*n].as_i64().filter(|c| *c > 0)?;
            Some(format!("{c} {n}"))
        })
        .collect();
    if parts.is_empty() {
        "no hosts".into()
    } else {
        parts.join(", ")
    }
}

/// How long a host ran: `0.4s`, `12.3s`, `4m05s`, `1h02m`; `-` until it has both ends.
pub fn duration(started: &Value, finished: &Value) -> String {
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok();
    let (Some(start), Some(end)) = (parse(started), parse(finished)) else {
        return "-".into();
    };
    let ms = (end - start).num_milliseconds().max(0);
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{}.{}s", secs, (ms % 1000) / 100),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// A run's hosts in the order of their positions.
fn hosts_of(run: &Value) -> Vec<&Value> {
    let mut hosts: Vec<&Value> = run["hosts"].as_array().into_iter().flatten().collect();
    hosts.sort_by_key(|h| h["position"].as_i64().unwrap_or(i64::MAX));
    hosts
}

/// The per-host table of a run: server, status, failure, exit code, duration, error.
pub fn hosts_table(run: &Value) -> String {
    let rows: Vec<Vec<String>> = hosts_of(run)
        .into_iter()
        .map(|h| {
            vec![
                host_name(h),
                output::text(&h["status"]),
                output::text(&h["failure"]),
                output::text(&h["exit_code"]),
                duration(&h["started_at"], &h["finished_at"]),
                output::clip(h["error"].as_str().unwrap_or("-"), 60),
            ]
        })
        .collect();
    let headers = ["SERVER", "STATUS", "FAILURE", "EXIT", "DURATION", "ERROR"];
    output::table(&headers, &rows)
}

/// A run's (or a template's) targets as given: its selector, or its servers.
pub fn targets_text(run: &Value) -> String {
    let targets = &run["targets"];
    if let Some(selector) = targets["selector"].as_str() {
        return selector.to_string();
    }
    match targets["servers"].as_array() {
        Some(servers) => {
            let names: Vec<String> = servers.iter().map(output::text).collect();
            names.join(",")
        }
        None => output::text(targets),
    }
}

/// A run's (or a template's) strategy: `batch=2 canary=1 max_failures=0 keep_going=false`
/// (what it holds).
pub fn strategy_text(run: &Value) -> String {
    let fields = run["strategy"].as_object().into_iter().flatten();
    let parts: Vec<String> = fields
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", output::text(v)))
        .collect();
    output::text(&Value::from(parts.join(" ")))
}

/// A JSON array of runs as a table.
pub fn runs_table(runs: &Value) -> String {
    let rows: Vec<Vec<String>> = (runs.as_array().into_iter().flatten())
        .map(|r| {
            let hosts = r["hosts"].as_array().map_or(0, Vec::len);
            vec![
                output::text(&r["id"]),
                output::text(&r["status"]),
                hosts.to_string(),
                counts_text(&r["counts"]),
                output::time(&r["created_at"]),
                output::clip(&targets_text(r), 30),
                output::clip(&output::job_command(r), 50),
            ]
        })
        .collect();
    let headers = [
        "ID", "STATUS", "HOSTS", "COUNTS", "CREATED", "TARGETS", "COMMAND",
    ];
    output::table(&headers, &rows)
}

/// One run as a key/value listing, then its hosts' table.
pub fn run_listing(run: &Value) -> String {
    let env: Vec<String> = (run["env"].as_object().into_iter().flatten())
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let timeout = run["timeout"].as_i64().map(|t| format!("{t}s"));
    let pairs = [
        ("id", output::text(&run["id"])),
        ("status", output::text(&run["status"])),
        ("command", output::job_command(run)),
        ("targets", targets_text(run)),
        ("strategy", strategy_text(run)),
        ("hosts", counts_text(&run["counts"])),
        ("env", output::text(&Value::from(env.join(" ")))),
        ("cwd", output::text(&run["cwd"])),
        ("timeout", timeout.unwrap_or_else(|| "-".into())),
        ("rerun of", output::text(&run["rerun_of"])),
        ("cancel requested", output::yes_no(&run["cancel_requested"])),
        ("created", output::time(&run["created_at"])),
        ("started", output::time(&run["started_at"])),
        ("finished", output::time(&run["finished_at"])),
    ];
    format!("{}\n{}", output::listing(&pairs), hosts_table(run))
}

/// A run's summary for people: each group's servers, its status and exit code, then the
/// start of its output indented.
pub fn summary_text(groups: &Value) -> String {
    let mut out = String::new();
    for g in groups.as_array().into_iter().flatten() {
        let servers = g["servers"].as_array().into_iter().flatten();
        let names: Vec<String> = servers.map(output::text).collect();
        let bytes = g["output_bytes"].as_i64().unwrap_or(0);
        let size = match bytes {
            0 => "no output".to_string(),
            1 => "1 byte".to_string(),
            n => format!("{n} bytes"),
        };
        out += &format!(
            "{} ({}): {}, exit {}, {size}\n",
            names.join(", "),
            names.len(),
            output::text(&g["status"]),
            output::text(&g["exit_code"]),
        );
        let sample = g["sample"].as_str().unwrap_or("");
        for line in sample.lines() {
            out += &format!("    {line}\n");
        }
        if usize::try_from(bytes).is_ok_and(|b| b > sample.len()) {
            out += "    …\n";
        }
    }
    out
}

/// Run a `runs` subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: RunsCommand) -> anyhow::Result<u8> {
    match cmd {
        RunsCommand::List(a) => {
            let limit = a.limit.or(a.all.then_some(1000)).map(|n| n.to_string());
            let mut runs: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let query = [
                    ("status", &a.status),
                    ("limit", &limit),
                    ("cursor", &cursor),
                ];
                let req = ctx.api.request(Method::GET, "/runs").query(&query);
                let mut page = ctx.api.send(req).await?;
                if let Value::Array(more) = page["runs"].take() {
                    runs.extend(more);
                }
                cursor = page["next_cursor"].as_str().map(str::to_string);
                if !a.all || cursor.is_none() {
                    break;
                }
            }
            ctx.print(&Value::Array(runs), runs_table);
        }
        RunsCommand::Get(a) => {
            let run = ctx.api.get(&run_path(&a.id, "")).await?;
            ctx.print(&run, run_listing);
        }
        RunsCommand::Cancel(a) => {
            let run = ctx.api.post(&run_path(&a.id, "/cancel"), json!({})).await?;
            ctx.print(&run, |r| {
                let id = r["id"].as_str().unwrap_or(&a.id);
                format!("{id}: cancel requested ({})\n", output::text(&r["status"]))
            });
        }
        RunsCommand::Rerun(a) => {
            let only = if a.all { "all" } else { "failed" };
            let path = run_path(&a.id, "/rerun");
            let run = ctx.api.post(&path, json!({ "only": only })).await?;
            let id = id_of(&run)?;
            ctx.print(&run, |_| format!("{id}\n"));
        }
        RunsCommand::Summary(a) => {
            let groups = ctx.api.get(&run_path(&a.id, "/summary")).await?;
            ctx.print(&groups, summary_text);
        }
        RunsCommand::Follow(a) => {
            let last = follow_run(&ctx.api, &a.id, None, ctx.output).await?;
            return report(ctx, &last, a.summary).await;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The run arguments of a `jobctl run …` command line, or clap's error.
    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = std::iter::once("jobctl").chain(std::iter::once("run"));
        let cli = crate::Cli::try_parse_from(argv.chain(args.iter().copied()))?;
        match cli.command {
            crate::Command::Run(a) => Ok(a),
            other => panic!("not run: {other:?}"),
        }
    }

    fn body(args: &[&str]) -> Value {
        let a = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(a.fleet.is_run(), "{args:?}");
        run_body(&a.cmd, &a.fleet)
    }

    #[test]
    fn labels_and_strategy_make_the_body() {
        let b = body(&[
            "-l",
            "role=web,env!=prod",
            "--batch",
            "25%",
            "--canary",
            "1",
            "--max-failures",
            "0",
            "--keep-going",
            "-t",
            "30",
            "-e",
            "A=1",
            "--cwd",
            "/srv",
            "--",
            "echo",
            "hi",
            "there",
        ]);
        assert_eq!(
            b,
            json!({
                "command": "echo", "args": "hi there", "env": {"A": "1"}, "cwd": "/srv",
                "timeout": 30, "targets": {"selector": "role=web,env!=prod"},
                "strategy": {"batch": "25%", "canary": 1, "max_failures": 0, "keep_going": true},
            })
        );
    }

    #[test]
    fn servers_are_comma_separated_and_repeatable() {
        let b = body(&["--servers", "web-1,web-2", "--servers", "web-3", "uptime"]);
        assert_eq!(
            b["targets"],
            json!({"servers": ["web-1", "web-2", "web-3"]})
        );
        assert_eq!(b["command"], "uptime");
        assert_eq!(b["args"], Value::Null);
        assert_eq!(
            b["strategy"],
            Value::Null,
            "no strategy: the service's default"
        );
        let b = body(&[
            "--servers",
            "a",
            "--batch",
            "2",
            "--max-failures",
            "10%",
            "x",
        ]);
        assert_eq!(b["strategy"], json!({"batch": 2, "max_failures": "10%"}));
    }

    #[test]
    fn without_targets_it_is_a_single_job() {
        let a = parse(&["-s", "h", "--", "echo", "hi"]).unwrap();
        assert!(!a.fleet.is_run());
        assert_eq!(a.cmd.opts.server.as_deref(), Some("h"));
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["--batch", "2", "--", "x"][..],      // a strategy needs targets
            &["--summary", "x"],                   // so does the summary
            &["-l", "a=b", "--servers", "c", "x"], // one kind of targets
            &["-l", "a=b", "-s", "h", "x"],        // not with a single server
            &["-l", "a=b", "--idempotency-key", "k", "x"], // jobs only
            &["-l", "a=b", "--batch", "0", "x"],
            &["-l", "a=b", "--batch", "150%", "x"],
            &["-l", "a=b", "--batch", "two", "x"],
            &["-l", "a=b", "--max-failures", "-1", "x"],
            &["-l", "a=b"], // no command
        ] {
            let err = parse(args).expect_err(&format!("{args:?} parses"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_batch("3"), Ok(Amount::Count(3)));
        assert_eq!(parse_batch("100%"), Ok(Amount::Percent(100)));
        assert!(parse_batch("0%").is_err());
        assert_eq!(parse_max_failures("0"), Ok(Amount::Count(0)));
        assert_eq!(parse_max_failures("0%"), Ok(Amount::Percent(0)));
        assert!(parse_max_failures("101%").is_err());
        assert_eq!(Amount::Percent(25).json(), json!("25%"));
        assert_eq!(Amount::Count(2).json(), json!(2));
    }

    fn host(pos: i64, name: &str, status: &str) -> Value {
        json!({"position": pos, "server_id": format!("id-{pos}"), "server_name": name, "status": status})
    }

    #[test]
    fn exit_status_is_0_only_when_every_host_completed() {
        let run = |status: &str, hosts: Vec<Value>| json!({"status": status, "hosts": hosts});
        let ok = host(0, "a", "completed");
        assert_eq!(
            exit_status(&run("completed", vec![ok.clone(), ok.clone()])),
            0
        );
        for bad in ["failed", "timed_out", "canceled", "skipped"] {
            let hosts = vec![ok.clone(), host(1, "b", bad)];
            assert_eq!(exit_status(&run("failed", hosts)), 1, "{bad}");
        }
        assert_eq!(exit_status(&run("canceled", vec![ok])), 1);
    }

    #[test]
    fn the_hosts_table_names_failures_and_durations() {
        let mut web2 = host(1, "web-2", "failed");
        web2["failure"] = "unreachable".into();
        web2["error"] = "cannot connect to 127.0.0.1:1: connection refused".into();
        let mut web1 = host(0, "web-1", "completed");
        web1["exit_code"] = 0.into();
        web1["started_at"] = "2026-01-01T00:00:00Z".into();
        web1["finished_at"] = "2026-01-01T00:00:01.25Z".into();
        let run = json!({"hosts": [web2, web1]});
        let t = hosts_table(&run);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("SERVER  STATUS     FAILURE      EXIT  DURATION"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("web-1   completed  -            0     1.2s"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("web-2   failed     unreachable  -     -"),
            "{t}"
        );
        assert!(lines[2].ends_with("connection refused"), "{t}");
    }

    #[test]
    fn durations() {
        let d = |a: &str, b: &str| duration(&json!(a), &json!(b));
        assert_eq!(d("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.4Z"), "0.4s");
        assert_eq!(d("2026-01-01T00:00:00Z", "2026-01-01T00:04:05Z"), "4m05s");
        assert_eq!(d("2026-01-01T00:00:00Z", "2026-01-01T01:02:00Z"), "1h02m");
        assert_eq!(duration(&json!("2026-01-01T00:00:00Z"), &Value::Null), "-");
    }

    #[test]
    fn counts_and_summary() {
        let counts = json!({"queued": 0, "completed": 2, "failed": 1, "skipped": 0});
        assert_eq!(counts_text(&counts), "2 completed, 1 failed");
        let groups = json!([
            {"servers": ["web-1", "web-2"], "status": "completed", "exit_code": 0,
             "output_bytes": 3, "sample": "hi\n"},
            {"servers": ["web-3"], "status": "failed", "exit_code": null,
             "output_bytes": 0, "sample": ""},
            {"servers": ["db"], "status": "completed", "exit_code": 0,
             "output_bytes": 5000, "sample": "a\nb"},
        ]);
        assert_eq!(
            summary_text(&groups),
            "web-1, web-2 (2): completed, exit 0, 3 bytes\n    hi\n\
             web-3 (1): failed, exit -, no output\n\
             db (1): completed, exit 0, 5000 bytes\n    a\n    b\n    …\n"
        );
    }
}
