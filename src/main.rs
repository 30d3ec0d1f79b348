//! The `job-executor` binary: parse arguments, load settings, run the chosen role.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use job_executor::secrets::{self, Keyring};
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
    /// Check a settings file: syntax, unknown keys, types, servers, tokens; with line context.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Delete what `[retention]` says is old enough, once, and say how many rows of each
    /// table went (the background prune of a running service does the same every
    /// `retention.every`).
    Prune {
        /// Say what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a new secret key (`1:BASE64`) for JOBEXEC_SECRET_KEY or a key file.
    GenKey,
    /// Add a new key version and re-seal every stored secret under it.
    ///
    /// With a key file, the new version is appended to it (older versions stay, to open what
    /// processes still running with the old key write; `--retire-old` removes them once every
    /// process has been restarted). With JOBEXEC_SECRET_KEY, the new keyring is printed:
    /// stop the service first, then start it with the printed value.
    RotateKey {
        /// Remove the older versions from the key file (after every row is re-sealed).
        #[arg(long)]
        retire_old: bool,
    },
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
        Command::CheckConfig { file } => {
            return match job_executor::check::check(&file) {
                Ok(s) => {
                    println!(
                        "{}: ok ({} server(s), {} template(s), {} schedule(s), {} webhook(s), \
                         {} token(s), listens on {})",
                        file.display(),
                        s.servers,
                        s.templates,
                        s.schedules,
                        s.webhooks,
                        s.tokens,
                        s.addr
                    );
                    Ok(())
                }
                Err(problems) => {
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    std::process::exit(1);
                }
            };
        }
        Command::GenKey => {
            println!("{}", secrets::generate_entry(1)?);
            return Ok(());
        }
        Command::RotateKey { retire_old } => return rotate_key(&settings, retire_old).await,
        Command::Prune { dry_run } => return prune(&settings, dry_run).await,
        Command::Migrate => {
            let store = Store::open(&settings).await?;
            store.migrate().await?;
            let url = settings.database.redacted_url();
            println!("database {url} is up to date");
            return Ok(());
        }
    };
    // Each layer's message holds the one below it: the message alone, not the chain (which
    // would say the same thing once per layer).
    let mut app = match App::start(settings, role).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("job-executor: cannot start: {e}");
            std::process::exit(1);
        }
    };
    // The API listens (for the roles that have one) and the database is open and migrated.
    sd_notify("READY=1");
    // SIGHUP: read the settings again and apply what can change while jobs run.
    let reloader = app.reloader();
    let file = cli.config.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                // A file with a typo is refused whole, not half applied.
                if let Some(path) = &file
                    && let Err(problems) = job_executor::check::check(path)
                {
                    for p in &problems {
                        tracing::error!(problem = %p, "reload refused; nothing changed");
                    }
                    continue;
                }
                match Settings::load(file.as_deref()) {
                    Ok(settings) => match reloader.reload(&settings).await {
                        Ok(summary) => tracing::info!(%summary, "settings reloaded"),
                        Err(e) => tracing::error!(error = %e, "reload refused; nothing changed"),
                    },
                    Err(e) => tracing::error!(error = %e, "reload refused; nothing changed"),
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (reloader, file);
        }
    });
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            sd_notify("STOPPING=1");
            app.stop().await;
        }
        _ = app.wait() => {}
    }
    Ok(())
}

/// Tell the service manager the service's state (`READY=1`, `STOPPING=1`): what a systemd
/// unit of `Type=notify` waits for (`config/job-executor.service`). Only when
/// `NOTIFY_SOCKET` is set; a failure to tell is logged, and the service goes on.
fn sd_notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&socket, state) {
        tracing::warn!(error = %e, "cannot tell the service manager {state:?}");
    }
}

#[cfg(target_os = "linux")]
fn notify_to(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let sender = UnixDatagram::unbound()?;
    // `@name` is a socket in the abstract namespace, anything else a path.
    let addr = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    sender.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn notify_to(_socket: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Ok(())
}

async fn prune(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    use job_executor::domain::PruneTable;
    use job_executor::engine::{PruneError, Pruner};
    match settings.retention.policy() {
        Ok(policy) if policy.is_set() => {}
        Ok(_) => {
            eprintln!("{}", PruneError::NoPolicy);
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("{}", PruneError::Invalid(e));
            std::process::exit(2);
        }
    }
    let store = Store::open(settings).await?;
    let report = Pruner::new(store, settings)?.prune(dry_run).await?;
    if report.skipped {
        println!("another process is pruning (it holds the prune lease): nothing was done");
        return Ok(());
    }
    let verb = if dry_run {
        "would be deleted"
    } else {
        "deleted"
    };
    for table in PruneTable::ALL {
        println!("{table}: {} {verb}", report.counts.get(table));
    }
    if dry_run {
        println!("dry run: nothing was changed");
    } else {
        println!("took {} ms", report.took.as_millis());
    }
    Ok(())
}

async fn rotate_key(settings: &Settings, retire_old: bool) -> anyhow::Result<()> {
    let keyring = Keyring::from_settings(settings)?;
    let version = keyring.current() + 1;
    let entry = secrets::generate_entry(version)?;
    let file = keyring.file().map(|p| p.to_path_buf());
    if let Some(path) = &file {
        // Write the longer keyring beside the file, then swap it in: never half a file.
        let old = std::fs::read_to_string(path)?;
        let next = format!("{}\n{entry}\n", old.trim_end());
        replace_file(path, &next)?;
    }
    keyring.add(&entry)?;
    let store = Store::open_with(&settings.database, std::sync::Arc::new(keyring)).await?;
    // Opening re-sealed every older row; make sure before anything is retired.
    let left = store.reseal_servers().await?;
    eprintln!("every stored secret is sealed under key version {version} ({left} left over)");
    match &file {
        Some(path) => {
            if retire_old {
                replace_file(path, &format!("{entry}\n"))?;
                eprintln!("{}: older versions removed", path.display());
            } else {
                eprintln!("{}: version {version} added", path.display());
            }
        }
        None => {
            let mut all: Vec<String> = Vec::new();
            if !retire_old {
                use secrecy::ExposeSecret;
                all.push(settings.secrets.key.expose_secret().trim().to_string());
            }
            all.push(entry);
            eprintln!("start every process with JOBEXEC_SECRET_KEY set to the line below");
            println!("{}", all.join(","));
        }
    }
    Ok(())
}

fn replace_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    secrets::create_private_file(&tmp, text)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
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
