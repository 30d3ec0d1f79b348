//! `jobctl servers …`: the server registry. Secrets never come from the command line:
//! keys are read from a file, passwords and passphrases from a prompt or one line of stdin.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::escape;
use crate::{Ctx, output};

/// `jobctl servers …`.
#[derive(Debug, Subcommand)]
pub enum ServersCommand {
    /// List the servers (`--labels`: those a label selector matches).
    List(ListArgs),
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

/// `servers list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the servers this label selector matches: `role=web,env=prod`, `key!=value`,
    /// `key` (has it), `!key` (has it not).
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    labels: Option<String>,
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
    /// A label for run selectors to match (repeatable; on update, the labels given replace
    /// all of the server's labels).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
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
    #[command(flatten)]
    target: NameArg,
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
    /// Remove all its labels.
    #[arg(long, conflicts_with = "labels")]
    clear_labels: bool,
}

/// `KEY=VALUE` (the service checks the key's characters and the value's length).
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The labels given, as the API takes them: null when none was given.
fn labels_body(labels: &[(String, String)]) -> Value {
    let map: BTreeMap<&str, &str> = labels.iter().map(|(k, v)| (&**k, &**v)).collect();
    (!map.is_empty()).then(|| json!(map)).into()
}

/// A secret that must not be empty: one line of stdin (without its line end) or a prompt.
fn secret(what: &str, from_stdin: bool) -> anyhow::Result<String> {
    let value = if from_stdin {
        let line = std::io::stdin().lines().next();
        let line = line.ok_or_else(|| anyhow!("no {what} on stdin"))?;
        let line = line.with_context(|| format!("cannot read the {what} from stdin"))?;
        line.trim_end_matches('\r').to_string()
    } else {
        rpassword::prompt_password(format!("{what}: "))
            .with_context(|| format!("cannot prompt for the {what} (no terminal?)"))?
    };
    if value.is_empty() {
        let from = if from_stdin { " read from stdin" } else { "" };
        return Err(anyhow!("the {what}{from} is empty"));
    }
    Ok(value)
}

/// The fields of a server request, as given (null where not given).
fn fields_body(f: &ServerFields) -> anyhow::Result<Value> {
    let mut body = json!({
        "hostname": f.host,
        "port": f.port,
        "user": f.user,
        "host_key": f.host_key,
        "max_concurrent_jobs": f.max_jobs,
        "labels": labels_body(&f.labels),
    });
    let c = &f.credentials;
    if let Some(path) = &c.key_file {
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        body["auth_type"] = "key".into();
        body["private_key"] = key.into();
        if c.passphrase_stdin {
            body["private_key_passphrase"] = secret("passphrase", true)?.into();
        } else if c.passphrase_prompt {
            body["private_key_passphrase"] = secret("Key passphrase", false)?.into();
        }
    } else if c.password_stdin || c.password_prompt {
        let prompt = match (&f.user, &f.host) {
            (Some(u), Some(h)) => format!("Password for {u}@{h}"),
            _ => "Password".into(),
        };
        let what = if c.password_stdin {
            "password"
        } else {
            &prompt
        };
        body["auth_type"] = "password".into();
        body["password"] = secret(what, c.password_stdin)?.into();
    }
    Ok(body)
}

async fn server_path(ctx: &Ctx, name_or_id: &str, rest: &str) -> anyhow::Result<String> {
    let id = ctx.api.resolve_server(name_or_id).await?;
    Ok(format!("/servers/{}{rest}", escape(&id)))
}

/// Run a `servers` subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: ServersCommand) -> anyhow::Result<u8> {
    let server = match cmd {
        ServersCommand::List(a) => {
            let servers = Value::Array(ctx.api.servers_matching(a.labels.as_deref()).await?);
            ctx.print(&servers, output::servers_table);
            return Ok(0);
        }
        ServersCommand::Add(a) => {
            let mut body = fields_body(&a.fields)?;
            body["name"] = a.name.into();
            body["is_active"] = a.inactive.then_some(false).into();
            ctx.api.post("/servers", body).await?
        }
        ServersCommand::Get(a) => ctx.api.get(&server_path(ctx, &a.server, "").await?).await?,
        ServersCommand::Update(a) => {
            let path = server_path(ctx, &a.target.server, "").await?;
            let mut body = fields_body(&a.fields)?;
            body["name"] = a.name.into();
            body["is_active"] = (a.active || a.inactive).then_some(a.active).into();
            if a.clear_labels {
                body["labels"] = json!({});
            }
            let mut given = body.as_object().into_iter().flatten();
            if given.all(|(_, v)| v.is_null()) {
                return Err(anyhow!(
                    "nothing to change: give at least one option (see `jobctl servers update --help`)"
                ));
            }
            ctx.api.call(Method::PUT, &path, body).await?
        }
        ServersCommand::Delete(a) => {
            let path = server_path(ctx, &a.server, "").await?;
            let resp = ctx.api.send(ctx.api.request(Method::DELETE, &path)).await?;
            let line = format!("{}\n", resp["message"].as_str().unwrap_or("deleted"));
            ctx.print(&resp, |_| line);
            return Ok(0);
        }
        ServersCommand::Test(a) => {
            let path = server_path(ctx, &a.name.server, "/test").await?;
            let body = json!({ "accept_host_key": a.accept_host_key });
            let report = ctx.api.post(&path, body).await?;
            ctx.print(&report, |r| {
                let latency = r["latency_ms"].as_i64().map(|ms| format!("{ms} ms"));
                let mut pairs = vec![
                    ("ok", output::yes_no(&r["ok"])),
                    ("latency", latency.unwrap_or_else(|| "-".into())),
                    ("fingerprint", output::text(&r["host_key_fingerprint"])),
                    ("error", output::text(&r["error"])),
                ];
                if r["host_key_pinned"] == true {
                    pairs.push(("host key", "pinned now (trust on first use)".into()));
                }
                output::listing(&pairs)
            });
            return Ok(if report["ok"] == true { 0 } else { 1 });
        }
    };
    ctx.print(&server, output::server_listing);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_into_the_body() {
        assert_eq!(parse_label("role=web"), Ok(("role".into(), "web".into())));
        assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(parse_label("k="), Ok(("k".into(), String::new())));
        assert!(parse_label("=web").is_err());
        assert!(parse_label("role").is_err());
        let given = [("role", "web"), ("env", "prod"), ("role", "db")];
        let given: Vec<(String, String)> = (given.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            labels_body(&given),
            json!({"env": "prod", "role": "db"}),
            "last wins"
        );
        assert_eq!(labels_body(&[]), Value::Null);
    }

    #[test]
    fn update_clears_or_replaces_labels() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = ["jobctl", "servers", "update", "web-1"];
            crate::Cli::try_parse_from(argv.iter().chain(args))
        };
        assert!(parse(&["--clear-labels", "--label", "a=b"]).is_err());
        let cli = parse(&["--label", "a=b", "--label", "c=d"]).unwrap();
        let crate::Command::Servers(ServersCommand::Update(u)) = cli.command else {
            panic!("not update");
        };
        assert_eq!(
            fields_body(&u.fields).unwrap()["labels"],
            json!({"a": "b", "c": "d"})
        );
    }
}
