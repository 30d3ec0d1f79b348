//! The `job-executor` binary: parse arguments, load settings, run the chosen role.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use job_executor::{App, Role, Settings, store::Store, telemetry};

#[derive(Parser)]
#[command(
    name = "job-executor",
    version,
    about = "Run shell jobs on remote machines over SSH"
)]
struct Cli {
    /// Settings file (TOML, the layout of config/default.toml).
    #[arg(long, global = true, env = "JOBEXEC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API and worker in one process (the default).
    Serve,
    /// The HTTP API only.
    Api,
    /// A worker only.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    let role = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => Role::Serve,
        Command::Api => Role::Api,
        Command::Worker => Role::Worker,
        Command::Migrate => {
            let store = Store::open(&settings.database).await?;
            let applied = store.migrate().await?;
            println!(
                "database {} is up to date",
                settings.database.redacted_url()
            );
            drop(applied);
            return Ok(());
        }
    };
    let mut app = App::start(settings, role).await.context("cannot start")?;
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            app.stop().await;
        }
        _ = app.wait() => {}
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}
