//! `jobctl`: the command-line client of the HTTP API.
//!
//! Every subcommand is one or a few requests to `/api/v1`. Objects print as aligned tables
//! for people or as the API's JSON for scripts (`--output json`). `run`, `wait` and
//! `logs --follow` follow a job's event stream and exit with the job's exit code, like
//! `ssh host cmd`. `run --labels …|--servers …` starts a run (one command on many servers)
//! and prints every host's lines prefixed with its name (see `runs.rs`); `templates launch`
//! starts one from a saved template and follows it the same way. Errors are one line on
//! stderr (`jobctl: …`) and exit status 1; usage errors exit 2.

mod client;
mod follow;
mod jobs;
mod output;
mod prefixed;
mod runs;
mod schedules;
mod servers;
mod templates;
mod webhooks;

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use client::Api;

/// Command-line client of the job-executor HTTP API.
#[derive(Debug, Parser)]
#[command(name = "jobctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The options of every subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// Base URL of the service.
    #[arg(
        long,
        global = true,
        env = "JOBEXEC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API token, sent as `Authorization: Bearer …`.
    #[arg(long, global = true, env = "JOBEXEC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificate to trust for https:// (a self-signed or private CA), beside the
    /// system's roots.
    #[arg(long, global = true, env = "JOBEXEC_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// How objects are printed: aligned tables for people, the API's JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// How objects are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables (and bare ids where a command creates something).
    Table,
    /// The API's JSON objects.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command on a server, mirror its output and exit with its exit code; or, with
    /// --labels or --servers, on many servers (a run).
    ///
    /// A run prints every host's lines prefixed with its server's name (stdout to stdout,
    /// stderr to stderr), then a table of its hosts on stderr, and exits 0 when every host
    /// completed, else 1.
    ///
    /// Ctrl-C cancels the job or run and waits for it to stop (a second Ctrl-C stops
    /// waiting).
    Run(runs::RunArgs),
    /// Submit a command job and print its id.
    Submit(jobs::CommandArgs),
    /// Submit a shell script (a file, or `-` for stdin) and print the job's id.
    Script(jobs::ScriptArgs),
    /// Show one job.
    Get(jobs::IdArg),
    /// List jobs, newest first.
    List(jobs::ListArgs),
    /// Cancel a queued or running job.
    Cancel(jobs::IdArg),
    /// Submit a new job from an old one, with optional overrides.
    Duplicate(jobs::DuplicateArgs),
    /// Print a job's output (stdout to stdout, stderr to stderr).
    Logs(jobs::LogsArgs),
    /// Wait for a job to end, print it and exit with its exit code.
    Wait(jobs::IdArg),
    /// Manage the servers jobs run on.
    #[command(subcommand)]
    Servers(servers::ServersCommand),
    /// Runs: one command on many servers (`jobctl run --labels …` starts one).
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Templates: saved runs with typed parameters (`jobctl templates launch NAME -p k=v`).
    #[command(subcommand)]
    Templates(templates::TemplatesCommand),
    /// Schedules: templates on a cron timer (`jobctl schedules preview '30 2 * * *' -z Europe/Berlin`).
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Webhooks: where job, run and schedule events are posted, signed and retried.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Print the token's name, role and scope.
    Whoami,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What a command needs besides its own arguments.
pub struct Ctx {
    /// The API client.
    pub api: Api,
    /// How to print objects.
    pub output: Output,
}

impl Ctx {
    /// Print an object: its JSON, or `human(object)` for a table.
    pub fn print(&self, object: &Value, human: impl FnOnce(&Value) -> String) {
        match self.output {
            Output::Json => output::print_json(object),
            Output::Table => output::write_stdout(human(object).as_bytes()),
        }
    }

    /// Server id → name for a table: empty for JSON or when the list cannot be read.
    pub async fn server_names(&self) -> HashMap<String, String> {
        if self.output == Output::Json {
            return HashMap::new();
        }
        let servers = self.api.servers().await.unwrap_or_default();
        let name = |s: &Value| Some((s["id"].as_str()?.into(), s["name"].as_str()?.into()));
        servers.iter().filter_map(name).collect()
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "jobctl", &mut std::io::stdout());
        return Ok(0);
    }
    let g = cli.global;
    let ctx = Ctx {
        api: Api::new(&g.url, g.token.as_deref(), g.ca_cert.as_deref())?,
        output: g.output,
    };
    match cli.command {
        Command::Run(a) if a.fleet.is_run() => runs::run(&ctx, a).await,
        Command::Run(a) => jobs::run(&ctx, a.cmd).await,
        Command::Submit(a) => jobs::submit(&ctx, a).await,
        Command::Script(a) => jobs::script(&ctx, a).await,
        Command::Get(a) => jobs::get(&ctx, a).await,
        Command::List(a) => jobs::list(&ctx, a).await,
        Command::Cancel(a) => jobs::cancel(&ctx, a).await,
        Command::Duplicate(a) => jobs::duplicate(&ctx, a).await,
        Command::Logs(a) => jobs::logs(&ctx, a).await,
        Command::Wait(a) => jobs::wait(&ctx, a).await,
        Command::Servers(c) => servers::dispatch(&ctx, c).await,
        Command::Runs(c) => runs::dispatch(&ctx, c).await,
        Command::Templates(c) => templates::dispatch(&ctx, c).await,
        Command::Schedules(c) => schedules::dispatch(&ctx, c).await,
        Command::Webhooks(c) => webhooks::dispatch(&ctx, c).await,
        Command::Whoami => {
            let me = ctx.api.get("/whoami").await?;
            ctx.print(&me, |me| {
                let scope = me["scope"].as_str().unwrap_or("every server").to_string();
                output::listing(&[
                    ("name", output::text(&me["name"])),
                    ("role", output::text(&me["role"])),
                    ("scope", scope),
                ])
            });
            Ok(0)
        }
        Command::Completions { .. } => Ok(0),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| {
            let result = runtime.block_on(dispatch(cli));
            // Do not wait for background tasks (the Ctrl-C listener) at exit.
            runtime.shutdown_background();
            result
        });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let message = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("jobctl: {message}");
            ExitCode::from(1)
        }
    }
}
