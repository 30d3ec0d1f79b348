//! Job commands: run, submit, script, get, list, cancel, duplicate, logs, wait.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::{Map, Value, json};

use crate::Ctx;
use crate::Output;
use crate::follow::{self, Show};
use crate::output;

/// Options shared by every way of submitting a job.
#[derive(Debug, Args)]
pub struct JobOpts {
    /// The server to run on, by name or id (omitted: the service's default server).
    #[arg(long, short = 's', value_name = "NAME_OR_ID")]
    server: Option<String>,
    /// Seconds before the job is stopped and ends timed_out.
    #[arg(long, short = 't', value_name = "SECS")]
    timeout: Option<i64>,
    /// An environment variable for the remote command (repeatable).
    #[arg(long, short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory on the remote host.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// A second submit with the same key returns the first job instead of a new one.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `jobctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    opts: JobOpts,
    /// The command and its arguments (joined by spaces; the remote shell interprets them).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

/// `jobctl submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    opts: JobOpts,
    /// The command and its arguments (joined by spaces; the remote shell interprets them).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

/// `jobctl script`.
#[derive(Debug, Args)]
pub struct ScriptArgs {
    /// The script file, or `-` for stdin.
    file: PathBuf,
    #[command(flatten)]
    opts: JobOpts,
    /// The interpreter on the remote host (absolute path; the service's default is /bin/bash).
    #[arg(long, value_name = "PATH")]
    shell: Option<String>,
    /// The script's arguments ($1 …), after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// A command taking one job id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// The job's id.
    id: String,
}

/// `jobctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this status (queued, running, completed, failed, canceled, timed_out).
    #[arg(long)]
    status: Option<String>,
    /// Only jobs of this server (name or id).
    #[arg(long, short = 's', value_name = "NAME_OR_ID")]
    server: Option<String>,
    /// Jobs per page (1-1000; the service's default is 50).
    #[arg(long, short = 'n')]
    limit: Option<u32>,
    /// Every page, not only the first.
    #[arg(long)]
    all: bool,
}

/// `jobctl duplicate`.
#[derive(Debug, Args)]
pub struct DuplicateArgs {
    /// The job to copy.
    id: String,
    /// Run the copy on this server (name or id) instead.
    #[arg(long, short = 's', value_name = "NAME_OR_ID")]
    server: Option<String>,
    /// The copy's timeout, in seconds.
    #[arg(long, short = 't', value_name = "SECS")]
    timeout: Option<i64>,
}

/// `jobctl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id.
    id: String,
    /// Keep printing as the job runs, then exit with its exit code.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// The API path of job `id` plus `rest`.
fn job_path(id: &str, rest: &str) -> String {
    format!("/jobs/{}{rest}", crate::client::escape(id))
}

/// The request body of a submission.
async fn submit_body(ctx: &Ctx, opts: &JobOpts) -> anyhow::Result<Map<String, Value>> {
    let mut body = Map::new();
    if let Some(s) = &opts.server {
        body.insert("server_id".into(), ctx.api.resolve_server(s).await?.into());
    }
    if let Some(t) = opts.timeout {
        body.insert("timeout".into(), t.into());
    }
    if !opts.env.is_empty() {
        let env: BTreeMap<&str, &str> = opts
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        body.insert("env".into(), json!(env));
    }
    if let Some(c) = &opts.cwd {
        body.insert("cwd".into(), c.clone().into());
    }
    if let Some(k) = &opts.idempotency_key {
        body.insert("idempotency_key".into(), k.clone().into());
    }
    Ok(body)
}

async fn submit_command(ctx: &Ctx, opts: &JobOpts, command: &[String]) -> anyhow::Result<Value> {
    let mut body = submit_body(ctx, opts).await?;
    let (cmd, args) = command
        .split_first()
        .ok_or_else(|| anyhow!("a command is required"))?;
    body.insert("command".into(), cmd.clone().into());
    if !args.is_empty() {
        body.insert("args".into(), args.join(" ").into());
    }
    ctx.api.post("/jobs", &Value::Object(body)).await
}

fn id_of(job: &Value) -> anyhow::Result<String> {
    job["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the service answered a job without an id: {job}"))
}

/// Print a created job: its id for people, the job for scripts.
fn print_created(ctx: &Ctx, job: &Value) -> anyhow::Result<u8> {
    match ctx.output {
        Output::Json => output::print_json(job),
        Output::Table => output::write_stdout(format!("{}\n", id_of(job)?).as_bytes()),
    }
    Ok(0)
}

/// `jobctl run`: submit, follow, mirror the exit code; Ctrl-C cancels.
pub async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    // Listen for Ctrl-C before submitting, so one pressed meanwhile cancels the new job.
    let (tx, mut interrupts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    let job = submit_command(ctx, &a.opts, &a.command).await?;
    let id = id_of(&job)?;
    let show = match ctx.output {
        Output::Table => Show::Text,
        Output::Json => Show::JsonEvents,
    };
    let following = follow::follow(&ctx.api, &id, show);
    tokio::pin!(following);
    let mut interrupted = false;
    let last = loop {
        tokio::select! {
            res = &mut following => break res?,
            Some(()) = interrupts.recv() => {
                if interrupted {
                    output::write_stderr(format!("jobctl: stopped waiting; job {id} is being canceled\n").as_bytes());
                    return Ok(130);
                }
                interrupted = true;
                output::write_stderr(format!("jobctl: canceling job {id} (Ctrl-C again to stop waiting)\n").as_bytes());
                if let Err(e) = ctx.api.post(&job_path(&id, "/cancel"), &json!({})).await
                    && crate::client::api_status(&e) != Some(reqwest::StatusCode::CONFLICT)
                {
                    output::write_stderr(format!("jobctl: cannot cancel job {id}: {e:#}\n").as_bytes());
                }
            }
        }
    };
    if interrupted {
        return Ok(130);
    }
    if ctx.output == Output::Table {
        follow::report_abnormal_end(&last);
    }
    Ok(follow::exit_status(&last))
}

/// `jobctl submit`.
pub async fn submit(ctx: &Ctx, a: SubmitArgs) -> anyhow::Result<u8> {
    let job = submit_command(ctx, &a.opts, &a.command).await?;
    print_created(ctx, &job)
}

/// `jobctl script`.
pub async fn script(ctx: &Ctx, a: ScriptArgs) -> anyhow::Result<u8> {
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the script from stdin")?;
        s
    } else {
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read the script {}", a.file.display()))?
    };
    let mut body = submit_body(ctx, &a.opts).await?;
    body.insert("script".into(), text.into());
    if !a.args.is_empty() {
        body.insert("args".into(), a.args.join(" ").into());
    }
    if let Some(s) = a.shell {
        body.insert("shell".into(), s.into());
    }
    let job = ctx.api.post("/jobs/script", &Value::Object(body)).await?;
    print_created(ctx, &job)
}

/// Print one job (listing or JSON).
async fn print_job(ctx: &Ctx, job: &Value) {
    match ctx.output {
        Output::Json => output::print_json(job),
        Output::Table => {
            let names = ctx.api.server_names().await;
            output::write_stdout(output::job_listing(job, &names).as_bytes());
        }
    }
}

/// `jobctl get`.
pub async fn get(ctx: &Ctx, a: IdArg) -> anyhow::Result<u8> {
    let job = ctx.api.get(&job_path(&a.id, "")).await?;
    print_job(ctx, &job).await;
    Ok(0)
}

/// `jobctl list`.
pub async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<u8> {
    let mut query = Vec::new();
    if let Some(s) = &a.status {
        query.push(format!("status={}", crate::client::escape(s)));
    }
    if let Some(s) = &a.server {
        let id = ctx.api.resolve_server(s).await?;
        query.push(format!("server_id={}", crate::client::escape(&id)));
    }
    if let Some(n) = a.limit {
        query.push(format!("limit={n}"));
    } else if a.all {
        query.push("limit=1000".into());
    }
    let mut jobs: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(format!("cursor={}", crate::client::escape(c)));
        }
        let path = if q.is_empty() {
            "/jobs".to_string()
        } else {
            format!("/jobs?{}", q.join("&"))
        };
        let page = ctx.api.get(&path).await?;
        jobs.extend(page["jobs"].as_array().into_iter().flatten().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if !a.all || cursor.is_none() {
            break;
        }
    }
    match ctx.output {
        Output::Json => output::print_json(&Value::Array(jobs)),
        Output::Table => {
            let names = ctx.api.server_names().await;
            output::write_stdout(output::jobs_table(&jobs, &names).as_bytes());
        }
    }
    Ok(0)
}

/// `jobctl cancel`.
pub async fn cancel(ctx: &Ctx, a: IdArg) -> anyhow::Result<u8> {
    let resp = ctx
        .api
        .post(&job_path(&a.id, "/cancel"), &json!({}))
        .await?;
    match ctx.output {
        Output::Json => output::print_json(&resp["job"]),
        Output::Table => {
            let id = resp["job"]["id"].as_str().unwrap_or(&a.id);
            let message = resp["message"].as_str().unwrap_or("cancel requested");
            output::write_stdout(format!("{id}: {message}\n").as_bytes());
        }
    }
    Ok(0)
}

/// `jobctl duplicate`.
pub async fn duplicate(ctx: &Ctx, a: DuplicateArgs) -> anyhow::Result<u8> {
    let mut body = Map::new();
    if let Some(s) = &a.server {
        body.insert("server_id".into(), ctx.api.resolve_server(s).await?.into());
    }
    if let Some(t) = a.timeout {
        body.insert("timeout".into(), t.into());
    }
    let resp = ctx
        .api
        .post(&job_path(&a.id, "/duplicate"), &Value::Object(body))
        .await?;
    print_created(ctx, &resp["new_job"])
}

/// `jobctl logs`.
pub async fn logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<u8> {
    if a.follow {
        let show = match ctx.output {
            Output::Table => Show::Text,
            Output::Json => Show::JsonEvents,
        };
        let last = follow::follow(&ctx.api, &a.id, show).await?;
        if ctx.output == Output::Table {
            follow::report_abnormal_end(&last);
        }
        return Ok(follow::exit_status(&last));
    }
    let chunks = ctx.api.get(&job_path(&a.id, "/logs?format=chunks")).await?;
    match ctx.output {
        Output::Json => output::print_json(&chunks),
        Output::Table => {
            for c in chunks.as_array().into_iter().flatten() {
                let data = c["data"].as_str().unwrap_or("").as_bytes();
                if c["stream"] == "stderr" {
                    output::write_stderr(data);
                } else {
                    output::write_stdout(data);
                }
            }
        }
    }
    Ok(0)
}

/// `jobctl wait`.
pub async fn wait(ctx: &Ctx, a: IdArg) -> anyhow::Result<u8> {
    let last = follow::follow(&ctx.api, &a.id, Show::Nothing).await?;
    print_job(ctx, &last).await;
    Ok(follow::exit_status(&last))
}
