//! `jobctl servers …`: the server registry. Secrets never come from the command line:
//! keys are read from a file, passwords and passphrases from a prompt or one line of stdin.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Map, Value, json};

use crate::client::escape;
use crate::output;
use crate::{Ctx, Output};

/// `jobctl servers …`.
#[derive(Debug, Subcommand)]
pub enum ServersCommand {
    /// List the servers.
    List,
    /// Register a server.
    Add(AddArgs),
    /// Show one server.
    Get(NameArg),
    /// Change a server: only the options given are sent.
    Update(UpdateArgs),
    /// Delete a server (refused while it has queued or running jobs).
    Delete(NameArg),
    /// Connect, authenticate and run `true`; exits 1 when that fails.
    Test(TestArgs),
}

/// `servers test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    name: NameArg,
    /// Pin the key the server presents now, replacing the pinned one (after a deliberate
    /// host key change).
    #[arg(long)]
    accept_host_key: bool,
}

/// A command naming one server.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The server's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    server: String,
}

/// How to log in: a key file, or a password.
#[derive(Debug, Args)]
pub struct Credentials {
    /// Key authentication with the private key in this file (PEM or OpenSSH format).
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Read the key's passphrase from one line of stdin.
    #[arg(long, requires = "key_file", conflicts_with = "passphrase_prompt")]
    passphrase_stdin: bool,
    /// Prompt for the key's passphrase on the terminal.
    #[arg(long, requires = "key_file")]
    passphrase_prompt: bool,
    /// Password authentication, the password read from one line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Password authentication, the password prompted for on the terminal.
    #[arg(long)]
    password_prompt: bool,
}

/// Everything a server has besides its name (shared by add and update).
#[derive(Debug, Args)]
pub struct ServerFields {
    /// Host name or address.
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// SSH port (default 22).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// Login user.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Pin the host key: a `SHA256:` fingerprint or a public key line (empty unpins).
    #[arg(long, value_name = "KEY")]
    host_key: Option<String>,
    /// How many jobs may run on it at once.
    #[arg(long, value_name = "N")]
    max_jobs: Option<u32>,
    #[command(flatten)]
    credentials: Credentials,
}

/// `jobctl servers add`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("auth").required(true).multiple(false)
    .args(["key_file", "password_stdin", "password_prompt"])))]
#[command(mut_arg("host", |a| a.required(true)), mut_arg("user", |a| a.required(true)))]
pub struct AddArgs {
    /// The server's name (unique).
    name: String,
    #[command(flatten)]
    fields: ServerFields,
    /// Register it inactive (no job runs on it until it is activated).
    #[arg(long)]
    inactive: bool,
}

/// `jobctl servers update`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("auth").multiple(false)
    .args(["key_file", "password_stdin", "password_prompt"])))]
pub struct UpdateArgs {
    /// The server's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    server: String,
    /// A new name.
    #[arg(long, value_name = "NEW_NAME")]
    name: Option<String>,
    #[command(flatten)]
    fields: ServerFields,
    /// Let jobs run on it.
    #[arg(long, conflicts_with = "inactive")]
    active: bool,
    /// Stop new jobs from running on it.
    #[arg(long)]
    inactive: bool,
}

/// One line of stdin, without its line end.
fn stdin_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from stdin"))?;
    if n == 0 {
        return Err(anyhow!("no {what} on stdin"));
    }
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        return Err(anyhow!("the {what} read from stdin is empty"));
    }
    Ok(line)
}

fn prompt(what: &str) -> anyhow::Result<String> {
    let value = rpassword::prompt_password(format!("{what}: "))
        .with_context(|| format!("cannot prompt for the {what} (no terminal?)"))?;
    if value.is_empty() {
        return Err(anyhow!("the {what} is empty"));
    }
    Ok(value)
}

/// The fields of a server request, as given.
fn fields_body(f: &ServerFields, body: &mut Map<String, Value>) -> anyhow::Result<()> {
    if let Some(h) = &f.host {
        body.insert("hostname".into(), h.clone().into());
    }
    if let Some(p) = f.port {
        body.insert("port".into(), p.into());
    }
    if let Some(u) = &f.user {
        body.insert("user".into(), u.clone().into());
    }
    if let Some(k) = &f.host_key {
        body.insert("host_key".into(), k.clone().into());
    }
    if let Some(n) = f.max_jobs {
        body.insert("max_concurrent_jobs".into(), n.into());
    }
    let c = &f.credentials;
    if let Some(path) = &c.key_file {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        body.insert("auth_type".into(), "key".into());
        body.insert("private_key".into(), key.into());
        if c.passphrase_stdin {
            body.insert(
                "private_key_passphrase".into(),
                stdin_line("passphrase")?.into(),
            );
        } else if c.passphrase_prompt {
            body.insert(
                "private_key_passphrase".into(),
                prompt("Key passphrase")?.into(),
            );
        }
    } else if c.password_stdin {
        body.insert("auth_type".into(), "password".into());
        body.insert("password".into(), stdin_line("password")?.into());
    } else if c.password_prompt {
        let who = match (&f.user, &f.host) {
            (Some(u), Some(h)) => format!("Password for {u}@{h}"),
            _ => "Password".into(),
        };
        body.insert("auth_type".into(), "password".into());
        body.insert("password".into(), prompt(&who)?.into());
    }
    Ok(())
}

fn print_server(ctx: &Ctx, server: &Value) {
    match ctx.output {
        Output::Json => output::print_json(server),
        Output::Table => output::write_stdout(output::server_listing(server).as_bytes()),
    }
}

async fn server_path(ctx: &Ctx, name_or_id: &str, rest: &str) -> anyhow::Result<String> {
    let id = ctx.api.resolve_server(name_or_id).await?;
    Ok(format!("/servers/{}{rest}", escape(&id)))
}

/// Run a `servers` subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ServersCommand) -> anyhow::Result<u8> {
    match cmd {
        ServersCommand::List => {
            let resp = ctx.api.get("/servers").await?;
            let servers: Vec<Value> = resp["servers"].as_array().cloned().unwrap_or_default();
            match ctx.output {
                Output::Json => output::print_json(&Value::Array(servers)),
                Output::Table => output::write_stdout(output::servers_table(&servers).as_bytes()),
            }
            Ok(0)
        }
        ServersCommand::Add(a) => {
            let mut body = Map::new();
            body.insert("name".into(), a.name.clone().into());
            fields_body(&a.fields, &mut body)?;
            if a.inactive {
                body.insert("is_active".into(), false.into());
            }
            let server = ctx.api.post("/servers", &Value::Object(body)).await?;
            print_server(ctx, &server);
            Ok(0)
        }
        ServersCommand::Get(a) => {
            let server = ctx.api.get(&server_path(ctx, &a.server, "").await?).await?;
            print_server(ctx, &server);
            Ok(0)
        }
        ServersCommand::Update(a) => {
            let path = server_path(ctx, &a.server, "").await?;
            let mut body = Map::new();
            if let Some(n) = &a.name {
                body.insert("name".into(), n.clone().into());
            }
            fields_body(&a.fields, &mut body)?;
            if a.active {
                body.insert("is_active".into(), true.into());
            } else if a.inactive {
                body.insert("is_active".into(), false.into());
            }
            if body.is_empty() {
                return Err(anyhow!(
                    "nothing to change: give at least one option (see `jobctl servers update --help`)"
                ));
            }
            let server = ctx.api.put(&path, &Value::Object(body)).await?;
            print_server(ctx, &server);
            Ok(0)
        }
        ServersCommand::Delete(a) => {
            let resp = ctx
                .api
                .delete(&server_path(ctx, &a.server, "").await?)
                .await?;
            match ctx.output {
                Output::Json => output::print_json(&resp),
                Output::Table => output::write_stdout(
                    format!("{}\n", resp["message"].as_str().unwrap_or("deleted")).as_bytes(),
                ),
            }
            Ok(0)
        }
        ServersCommand::Test(a) => {
            let report = ctx
                .api
                .post(
                    &server_path(ctx, &a.name.server, "/test").await?,
                    &json!({ "accept_host_key": a.accept_host_key }),
                )
                .await?;
            match ctx.output {
                Output::Json => output::print_json(&report),
                Output::Table => {
                    let latency = match report["latency_ms"].as_i64() {
                        Some(ms) => format!("{ms} ms"),
                        None => "-".into(),
                    };
                    let ok = if report["ok"] == true { "yes" } else { "no" };
                    let mut pairs = vec![
                        ("ok", ok.to_string()),
                        ("latency", latency),
                        ("fingerprint", output::text(&report["host_key_fingerprint"])),
                        ("error", output::text(&report["error"])),
                    ];
                    if report["host_key_pinned"] == true {
                        pairs.push(("host key", "pinned now (trust on first use)".into()));
                    }
                    output::write_stdout(output::listing(&pairs).as_bytes());
                }
            }
            Ok(if report["ok"] == true { 0 } else { 1 })
        }
    }
}
