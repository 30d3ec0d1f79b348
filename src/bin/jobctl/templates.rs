//! `jobctl templates …`: saved runs with typed parameters. `launch` reads the template's
//! parameter definitions first, so each `-p NAME=VALUE` is sent as JSON of its parameter's
//! type (the service checks every value: a refusal is its 422, naming
//! `parameters.<name>`), then follows the run exactly as `jobctl run --labels …` does.
//!
//! A secret parameter's value can come from stdin (`@-`) or a file (`@FILE`) instead of
//! the command line, and is never printed: not by `jobctl`, and the service quotes no
//! secret value back (not even in a refusal).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::escape;
use crate::{Ctx, jobs, output, runs};

/// `jobctl templates …`.
#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// List the templates.
    List,
    /// Show one template and its parameters.
    Get(NameArg),
    /// Launch a template (a run with these values) and follow it as `jobctl run -l` does.
    ///
    /// The run is followed exactly as `jobctl run --labels …` follows one, and exits the
    /// same way: 0 when every host completed, else 1 (`--detach`: prints its id, exits 0).
    ///
    /// Each value is sent as its parameter's type: an integer as a number, a boolean as
    /// true/false (given as true/false, yes/no or 1/0), anything else as text. The service
    /// checks them; a refusal names `parameters.<name>` and exits 1.
    ///
    /// A secret parameter's value may be given as `@-` (one line of stdin; a prompt on a
    /// terminal) or `@FILE` (the file's content, its trailing newline dropped), so it need
    /// not be on the command line. It is never printed.
    Launch(LaunchArgs),
    /// Save a template from a JSON file (`-`: stdin), the body `POST /templates` takes.
    Create(CreateArgs),
    /// Delete a template (the runs it launched stay).
    Delete(NameArg),
}

/// A command naming one template.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The template's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    template: String,
}

/// `templates launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The template's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    template: String,
    /// A parameter's value (repeatable; the last of a name wins). A secret one may be
    /// `@-` (read from stdin) or `@FILE` (read from the file).
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Run on the servers this label selector matches instead of the template's targets.
    #[arg(long, short = 'l', value_name = "SELECTOR", conflicts_with = "servers")]
    labels: Option<String>,
    /// Run on these servers (names or ids, comma-separated, repeatable) instead of the
    /// template's targets.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    servers: Vec<String>,
    /// At the end, also print the hosts grouped by identical output and exit code.
    #[arg(long, conflicts_with = "detach")]
    summary: bool,
    /// Do not follow the run: print its id and exit 0.
    #[arg(long)]
    detach: bool,
}

/// `templates create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The template as JSON (`-`: stdin).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// The API path of template `name_or_id` plus `rest`.
fn template_path(name_or_id: &str, rest: &str) -> String {
    format!("/templates/{}{rest}", escape(name_or_id))
}

/// `text` as JSON of a parameter's type: an integer as a number, a boolean as true/false
/// (from true/false, yes/no, 1/0, any case), anything else as a string. Text that is not of
/// the type stays a string, for the service to refuse by name.
pub fn typed(kind: &str, text: &str) -> Value {
    match kind {
        "integer" => {
            let t = text.trim();
            (t.parse::<i64>().map(Value::from).ok())
                .or_else(|| t.parse::<u64>().map(Value::from).ok())
                .unwrap_or_else(|| text.into())
        }
        "boolean" => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => true.into(),
            "false" | "no" | "0" => false.into(),
            _ => text.into(),
        },
        _ => text.into(),
    }
}

/// Where a secret's value comes from: `@-` stdin, `@FILE` a file; else it is the text itself.
#[derive(Debug, PartialEq, Eq)]
enum Source<'a> {
    Text(&'a str),
    Stdin,
    File(&'a Path),
}

impl Source<'_> {
    fn of(raw: &str) -> Source<'_> {
        match raw.strip_prefix('@') {
            Some("-") => Source::Stdin,
            Some(path) if !path.is_empty() => Source::File(Path::new(path)),
            _ => Source::Text(raw),
        }
    }
}

/// The content of a secret's file, its trailing line end dropped.
fn read_secret_file(name: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the value of parameter {name} from {}",
            path.display()
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// One line of stdin (without its line end), or a prompt that does not echo on a terminal.
fn read_secret_stdin(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("{name}: "))
            .with_context(|| format!("cannot prompt for the value of parameter {name}"));
    }
    let line = std::io::stdin().lines().next();
    let line = line.ok_or_else(|| anyhow!("no value of parameter {name} on stdin"))?;
    let line = line.with_context(|| format!("cannot read the value of parameter {name}"))?;
    Ok(line.trim_end_matches('\r').to_string())
}

/// The `parameters` of a launch: each value given as JSON of its definition's type (in
/// `template["parameters"]`); a secret one read from where `@-`/`@FILE` says, by `read`.
/// A name the template has not is sent as a string (the service refuses it by name).
fn launch_parameters(
    template: &Value,
    given: &[(String, String)],
    mut read: impl FnMut(&str, Source<'_>) -> anyhow::Result<String>,
) -> anyhow::Result<Map<String, Value>> {
    let given: BTreeMap<&str, &str> = given.iter().map(|(k, v)| (&**k, &**v)).collect();
    let defs = template["parameters"].as_array().into_iter().flatten();
    let defs: BTreeMap<&str, &Value> = defs
        .filter_map(|d| Some((d["name"].as_str()?, d)))
        .collect();
    let from_stdin: Vec<&str> = (given.iter())
        .filter(|(k, v)| defs.get(*k).is_some_and(|d| d["secret"] == true) && **v == "@-")
        .map(|(k, _)| *k)
        .collect();
    if from_stdin.len() > 1 {
        return Err(anyhow!(
            "only one value can be read from stdin (@-); {} ask for it: give the others as @FILE",
            from_stdin.join(", ")
        ));
    }
    let mut values = Map::new();
    for (name, raw) in given {
        let Some(def) = defs.get(name) else {
            values.insert(name.into(), raw.into());
            continue;
        };
        let text = match Source::of(raw) {
            Source::Text(t) => t.to_string(),
            source if def["secret"] == true => {
                let from = match source {
                    Source::File(path) => path.display().to_string(),
                    _ => "stdin".into(),
                };
                let text = read(name, source)?;
                if text.is_empty() {
                    return Err(anyhow!(
                        "the value of parameter {name} read from {from} is empty"
                    ));
                }
                text
            }
            // `@` means a file only for a secret; for the others it is their text.
            _ => raw.to_string(),
        };
        values.insert(
            name.into(),
            typed(def["type"].as_str().unwrap_or(""), &text),
        );
    }
    Ok(values)
}

/// A template's parameters in one cell: `version*, count, token* (secret)` (`*`: required).
fn params_text(template: &Value) -> String {
    let params = template["parameters"].as_array().into_iter().flatten();
    let names: Vec<String> = params
        .map(|p| {
            let required = if p["required"] == true { "*" } else { "" };
            let secret = if p["secret"] == true { " (secret)" } else { "" };
            format!("{}{required}{secret}", output::text(&p["name"]))
        })
        .collect();
    output::text(&Value::from(names.join(", ")))
}

/// A JSON array of templates as a table.
pub fn templates_table(templates: &Value) -> String {
    let rows: Vec<Vec<String>> = (templates.as_array().into_iter().flatten())
        .map(|t| {
            vec![
                output::text(&t["name"]),
                output::text(&t["kind"]),
                output::clip(&runs::targets_text(t), 30),
                output::clip(&params_text(t), 80),
                output::clip(t["description"].as_str().unwrap_or("-"), 50),
            ]
        })
        .collect();
    let headers = ["NAME", "KIND", "TARGETS", "PARAMETERS", "DESCRIPTION"];
    output::table(&headers, &rows)
}

/// What a parameter allows beyond its type: `one of staging, prod`, `matches v[0-9]+`.
fn allowed_text(p: &Value) -> String {
    if let Some(choices) = p["choices"].as_array() {
        let choices: Vec<String> = choices.iter().map(output::text).collect();
        return format!("one of {}", choices.join(", "));
    }
    match p["pattern"].as_str() {
        Some(pattern) => format!("matches {pattern}"),
        None => "-".into(),
    }
}

/// A template's parameters as a table.
pub fn params_table(template: &Value) -> String {
    let params = template["parameters"].as_array().into_iter().flatten();
    let rows: Vec<Vec<String>> = params
        .map(|p| {
            vec![
                output::text(&p["name"]),
                output::text(&p["type"]),
                output::yes_no(&p["required"]),
                output::text(&p["default"]),
                allowed_text(p),
                output::yes_no(&p["secret"]),
                output::clip(p["description"].as_str().unwrap_or("-"), 50),
            ]
        })
        .collect();
    let headers = [
        "NAME",
        "TYPE",
        "REQUIRED",
        "DEFAULT",
        "ALLOWED",
        "SECRET",
        "DESCRIPTION",
    ];
    output::table(&headers, &rows)
}

/// One template as a key/value listing, then its parameters' table.
pub fn template_listing(t: &Value) -> String {
    let env: Vec<String> = (t["env"].as_object().into_iter().flatten())
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let timeout = t["timeout"].as_i64().map(|s| format!("{s}s"));
    let count = t["parameters"].as_array().map_or(0, Vec::len);
    let mut pairs = vec![
        ("id", output::text(&t["id"])),
        ("name", output::text(&t["name"])),
        ("description", output::text(&t["description"])),
        ("kind", output::text(&t["kind"])),
        ("command", output::job_command(t)),
    ];
    if t["kind"] == "script" {
        let lines = t["script"].as_str().unwrap_or("").lines().count();
        pairs.extend([
            ("script", format!("{lines} lines")),
            ("shell", output::text(&t["shell"])),
        ]);
    }
    pairs.extend([
        ("env", output::text(&Value::from(env.join(" ")))),
        ("cwd", output::text(&t["cwd"])),
        ("timeout", timeout.unwrap_or_else(|| "-".into())),
        ("targets", runs::targets_text(t)),
        ("strategy", runs::strategy_text(t)),
        (
            "parameters",
            if count == 0 {
                "none".into()
            } else {
                count.to_string()
            },
        ),
        ("created", output::time(&t["created_at"])),
        ("updated", output::time(&t["updated_at"])),
    ]);
    let mut text = output::listing(&pairs);
    if count > 0 {
        text = format!("{text}\n{}", params_table(t));
    }
    text
}

/// `templates launch`.
async fn launch(ctx: &Ctx, a: LaunchArgs) -> anyhow::Result<u8> {
    let template = ctx.api.get(&template_path(&a.template, "")).await?;
    let parameters = launch_parameters(&template, &a.params, |name, source| match source {
        Source::Stdin => read_secret_stdin(name),
        Source::File(path) => read_secret_file(name, path),
        Source::Text(t) => Ok(t.to_string()),
    })?;
    let targets = (a.labels.is_some() || !a.servers.is_empty())
        .then(|| runs::targets_body(a.labels.as_deref(), &a.servers));
    let body = json!({ "parameters": parameters, "targets": targets });
    // Launched by id: the definitions the values were typed by.
    let id = template["id"].as_str().unwrap_or(&a.template);
    let path = template_path(id, "/launch");
    if a.detach {
        let run = ctx.api.post(&path, body).await?;
        let id = runs::id_of(&run)?;
        ctx.print(&run, |_| format!("{id}\n"));
        return Ok(0);
    }
    let interrupts = jobs::interrupts();
    let created = ctx.api.post(&path, body).await?;
    runs::follow_created(ctx, &created, interrupts, a.summary).await
}

/// Run a `templates` subcommand.
pub async fn dispatch(ctx: &Ctx, cmd: TemplatesCommand) -> anyhow::Result<u8> {
    match cmd {
        TemplatesCommand::List => {
            let mut list = ctx.api.get("/templates").await?;
            ctx.print(&list["templates"].take(), templates_table);
        }
        TemplatesCommand::Get(a) => {
            let template = ctx.api.get(&template_path(&a.template, "")).await?;
            ctx.print(&template, template_listing);
        }
        TemplatesCommand::Launch(a) => return launch(ctx, a).await,
        TemplatesCommand::Create(a) => {
            let (text, what) = if a.file.as_os_str() == "-" {
                let text = std::io::read_to_string(std::io::stdin())
                    .context("cannot read the template from stdin")?;
                (text, "stdin".to_string())
            } else {
                let text = std::fs::read_to_string(&a.file)
                    .with_context(|| format!("cannot read {}", a.file.display()))?;
                (text, a.file.display().to_string())
            };
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("the template in {what} is not JSON"))?;
            let template = ctx.api.post("/templates", body).await?;
            ctx.print(&template, template_listing);
        }
        TemplatesCommand::Delete(a) => {
            let path = template_path(&a.template, "");
            let resp = ctx.api.send(ctx.api.request(Method::DELETE, &path)).await?;
            let line = format!("{}\n", resp["message"].as_str().unwrap_or("deleted"));
            ctx.print(&resp, |_| line);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_their_parameters_types() {
        assert_eq!(typed("integer", "42"), json!(42));
        assert_eq!(typed("integer", "-7"), json!(-7));
        assert_eq!(typed("integer", "18446744073709551615"), json!(u64::MAX));
        assert_eq!(
            typed("integer", "two"),
            json!("two"),
            "the service refuses it"
        );
        assert_eq!(typed("integer", "1.5"), json!("1.5"));
        for yes in ["true", "TRUE", "yes", "Yes", "1"] {
            assert_eq!(typed("boolean", yes), json!(true), "{yes}");
        }
        for no in ["false", "no", "NO", "0"] {
            assert_eq!(typed("boolean", no), json!(false), "{no}");
        }
        assert_eq!(typed("boolean", "maybe"), json!("maybe"));
        assert_eq!(typed("string", "12"), json!("12"));
        assert_eq!(typed("choice", "true"), json!("true"));
    }

    fn template() -> Value {
        json!({"parameters": [
            {"name": "count", "type": "integer", "secret": false},
            {"name": "dry_run", "type": "boolean", "secret": false},
            {"name": "handle", "type": "string", "secret": false},
            {"name": "token", "type": "string", "secret": true},
            {"name": "pin", "type": "integer", "secret": true},
        ]})
    }

    fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        (pairs.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_launch_types_each_value_and_reads_secrets_from_where_they_say() {
        let mut asked = Vec::new();
        let values = launch_parameters(
            &template(),
            &given(&[
                ("count", "3"),
                ("count", "4"),
                ("dry_run", "yes"),
                ("handle", "@channel"),
                ("token", "@-"),
                ("pin", "@/run/pin"),
                ("other", "5"),
            ]),
            |name, source| {
                asked.push(format!("{name} {source:?}"));
                Ok(if name == "pin" { "1234" } else { "s3cret" }.into())
            },
        )
        .unwrap();
        assert_eq!(
            Value::Object(values),
            json!({"count": 4, "dry_run": true, "handle": "@channel", "token": "s3cret",
                   "pin": 1234, "other": "5"})
        );
        assert_eq!(asked, ["pin File(\"/run/pin\")", "token Stdin"]);
        // A secret given inline is its text.
        let values = launch_parameters(
            &template(),
            &given(&[("token", "t")]),
            |_, _| unreachable!(),
        );
        assert_eq!(values.unwrap()["token"], "t");
    }

    #[test]
    fn secrets_read_empty_or_twice_from_stdin_are_refused() {
        let err = launch_parameters(
            &template(),
            &given(&[("token", "@-"), ("pin", "@-")]),
            |_, _| unreachable!(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("only one"), "{err}");
        let err = launch_parameters(&template(), &given(&[("token", "@f")]), |_, _| {
            Ok(String::new())
        })
        .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("jobctl-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, value) in [
            ("abc\n", "abc"),
            ("abc\r\n", "abc"),
            ("abc", "abc"),
            (" a b \n\n", " a b \n"),
        ] {
            let path = dir.join("secret");
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_secret_file("t", &path).unwrap(), value, "{content:?}");
        }
        let err = read_secret_file("t", &dir.join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("parameter t"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tables_name_parameters_and_mark_required_and_secret_ones() {
        let t = json!({
            "name": "deploy", "kind": "command", "command": "./deploy.sh",
            "description": "ship it",
            "targets": {"selector": "role=web", "servers": null},
            "parameters": [
                {"name": "version", "type": "string", "required": true, "pattern": "v[0-9]+",
                 "default": null, "choices": null, "secret": false, "description": null},
                {"name": "env", "type": "choice", "required": false, "default": "staging",
                 "choices": ["staging", "prod"], "pattern": null, "secret": false,
                 "description": "where"},
                {"name": "token", "type": "string", "required": true, "default": null,
                 "choices": null, "pattern": null, "secret": true, "description": null},
            ],
        });
        let list = templates_table(&json!([t]));
        assert_eq!(
            list.lines().nth(1).unwrap(),
            "deploy  command  role=web  version*, env, token* (secret)  ship it"
        );
        let params = params_table(&t);
        let rows: Vec<&str> = params.lines().collect();
        assert!(
            rows[0].starts_with("NAME     TYPE    REQUIRED  DEFAULT  ALLOWED"),
            "{params}"
        );
        assert!(rows[1].contains("matches v[0-9]+"), "{params}");
        assert!(
            rows[2].contains("staging  one of staging, prod  no      where"),
            "{params}"
        );
        assert!(rows[3].contains("yes"), "{params}");
        let none = json!({"name": "x", "parameters": [], "targets": {"servers": ["a", "b"]}});
        assert!(templates_table(&json!([none])).contains("x     -     a,b      -"));
    }

    #[test]
    fn launch_arguments() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = ["jobctl", "templates", "launch", "deploy"];
            crate::Cli::try_parse_from(argv.iter().chain(args))
        };
        let cli = parse(&["-p", "a=b=c", "-p", "n=", "--servers", "x,y", "--summary"]).unwrap();
        let crate::Command::Templates(TemplatesCommand::Launch(a)) = cli.command else {
            panic!("not launch");
        };
        assert_eq!(a.params, given(&[("a", "b=c"), ("n", "")]));
        assert_eq!(a.servers, ["x", "y"]);
        for bad in [
            &["-p", "novalue"][..],
            &["-p", "=v"],
            &["-l", "a=b", "--servers", "c"],
            &["--detach", "--summary"],
        ] {
            let err = parse(bad).expect_err(&format!("{bad:?} parses"));
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }
}
