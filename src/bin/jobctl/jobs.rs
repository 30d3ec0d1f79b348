//! Job commands: run, submit, script, get, list, cancel, duplicate, logs, wait.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{ApiError, job_path};
use crate::{Ctx, Output, follow, output};

/// Options shared by every way of submitting a job.
#[derive(Debug, Args)]
pub struct JobOpts {
    /// The server to run on, by name or id (omitted: the service's default server).
    #[arg(long, short = 's', value_name = "NAME_OR_ID")]
    pub server: Option<String>,
    /// Seconds before the job is stopped and ends timed_out.
    #[arg(long, short = 't', value_name = "SECS")]
    pub timeout: Option<i64>,
    /// An environment variable for the remote command (repeatable).
    #[arg(long, short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory on the remote host.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// A second submit with the same key returns the first job instead of a new one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `jobctl run` and `jobctl submit`.
#[derive(Debug, Args)]
pub struct CommandArgs {
    #[command(flatten)]
    pub opts: JobOpts,
    /// The command and its arguments (joined by spaces; the remote shell interprets them).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
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

/// The request body of a submission.
async fn submit_body(ctx: &Ctx, opts: &JobOpts) -> anyhow::Result<Value> {
    let env: BTreeMap<_, _> = opts.env.iter().cloned().collect();
    Ok(json!({
        "server_id": ctx.api.resolve_opt(opts.server.as_deref()).await?,
        "timeout": opts.timeout,
        "env": (!env.is_empty()).then_some(env),
        "cwd": opts.cwd,
        "idempotency_key": opts.idempotency_key,
    }))
}

async fn submit_command(ctx: &Ctx, a: &CommandArgs) -> anyhow::Result<Value> {
    let mut body = submit_body(ctx, &a.opts).await?;
    // clap requires the command's first word.
    body["command"] = a.command.first().cloned().into();
    body["args"] = joined(a.command.get(1..).unwrap_or_default());
    ctx.api.post("/jobs", body).await
}

/// Words joined by spaces, or null when there are none.
pub fn joined(words: &[String]) -> Value {
    (!words.is_empty()).then(|| words.join(" ")).into()
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

/// Every Ctrl-C from now on, as a message (listen before submitting, so one pressed
/// meanwhile cancels the new job or run).
pub fn interrupts() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, interrupts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    interrupts
}

/// `jobctl run`: submit, follow, mirror the exit code; Ctrl-C cancels.
pub async fn run(ctx: &Ctx, a: CommandArgs) -> anyhow::Result<u8> {
    let mut interrupts = interrupts();
    let id = id_of(&submit_command(ctx, &a).await?)?;
    let following = follow::follow(&ctx.api, &id, Some(ctx.output));
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
                if let Err(e) = ctx.api.post(&job_path(&id, "/cancel"), json!({})).await
                    && e.downcast_ref::<ApiError>().is_none_or(|e| e.status != StatusCode::CONFLICT)
                {
                    output::write_stderr(format!("jobctl: cannot cancel job {id}: {e:#}\n").as_bytes());
                }
            }
        }
    };
    if interrupted {
        return Ok(130);
    }
    Ok(follow::finish(ctx.output, &last))
}

/// `jobctl submit`.
pub async fn submit(ctx: &Ctx, a: CommandArgs) -> anyhow::Result<u8> {
    print_created(ctx, &submit_command(ctx, &a).await?)
}

/// `jobctl script`.
pub async fn script(ctx: &Ctx, a: ScriptArgs) -> anyhow::Result<u8> {
    let text = if a.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the script from stdin")?
    } else {
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read the script {}", a.file.display()))?
    };
    let mut body = submit_body(ctx, &a.opts).await?;
    body["script"] = text.into();
    body["args"] = joined(&a.args);
    body["shell"] = a.shell.into();
    print_created(ctx, &ctx.api.post("/jobs/script", body).await?)
}

/// Print one job (listing or JSON).
async fn print_job(ctx: &Ctx, job: &Value) {
    let names = ctx.server_names().await;
    ctx.print(job, |j| output::job_listing(j, &names));
}

/// `jobctl get`.
pub async fn get(ctx: &Ctx, a: IdArg) -> anyhow::Result<u8> {
    print_job(ctx, &ctx.api.get(&job_path(&a.id, "")).await?).await;
    Ok(0)
}

/// `jobctl list`.
pub async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<u8> {
    let server = ctx.api.resolve_opt(a.server.as_deref()).await?;
    let limit = a.limit.or(a.all.then_some(1000)).map(|n| n.to_string());
    let mut jobs: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = [
            ("status", &a.status),
            ("server_id", &server),
            ("limit", &limit),
            ("cursor", &cursor),
        ];
        let mut page = ctx
            .api
            .send(ctx.api.request(Method::GET, "/jobs").query(&query))
            .await?;
        if let Value::Array(more) = page["jobs"].take() {
            jobs.extend(more);
        }
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if !a.all || cursor.is_none() {
            break;
        }
    }
    let names = ctx.server_names().await;
    ctx.print(&Value::Array(jobs), |jobs| output::jobs_table(jobs, &names));
    Ok(0)
}

/// `jobctl cancel`.
pub async fn cancel(ctx: &Ctx, a: IdArg) -> anyhow::Result<u8> {
    let resp = ctx.api.post(&job_path(&a.id, "/cancel"), json!({})).await?;
    ctx.print(&resp["job"], |job| {
        let id = job["id"].as_str().unwrap_or(&a.id);
        let message = resp["message"].as_str().unwrap_or("cancel requested");
        format!("{id}: {message}\n")
    });
    Ok(0)
}

/// `jobctl duplicate`.
pub async fn duplicate(ctx: &Ctx, a: DuplicateArgs) -> anyhow::Result<u8> {
    let body = json!({
        "server_id": ctx.api.resolve_opt(a.server.as_deref()).await?,
        "timeout": a.timeout,
    });
    let resp = ctx.api.post(&job_path(&a.id, "/duplicate"), body).await?;
    print_created(ctx, &resp["new_job"])
}

/// `jobctl logs`.
pub async fn logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<u8> {
    if a.follow {
        let last = follow::follow(&ctx.api, &a.id, Some(ctx.output)).await?;
        return Ok(follow::finish(ctx.output, &last));
    }
    let chunks = ctx.api.get(&job_path(&a.id, "/logs?format=chunks")).await?;
    match ctx.output {
        Output::Json => output::print_json(&chunks),
        Output::Table => {
            let mut none = true;
            for c in chunks.as_array().into_iter().flatten() {
                none = false;
                let data = c["data"].as_str().unwrap_or("").as_bytes();
                if c["stream"] == "stderr" {
                    output::write_stderr(data);
                } else {
                    output::write_stdout(data);
                }
            }
            // No output: say so when retention deleted it, rather than look like a silent job.
            if none {
                let job = ctx.api.get(&job_path(&a.id, "")).await?;
                if let Some(at) = job["output_pruned_at"].as_str() {
                    eprintln!(
                        "jobctl: the output of job {} was pruned at {at} (retention)",
                        a.id
                    );
                }
            }
        }
    }
    Ok(0)
}

/// `jobctl wait`.
pub async fn wait(ctx: &Ctx, a: IdArg) -> anyhow::Result<u8> {
    let last = follow::follow(&ctx.api, &a.id, None).await?;
    print_job(ctx, &last).await;
    Ok(follow::exit_status(&last))
}
