//! `jobctl webhooks …`: where job, run and schedule events are posted — list, get, add,
//! delete, a webhook's deliveries, and redelivery of one. A signing secret is read from a
//! file or one line of stdin, never from the command line (where `ps` would show it).

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::escape;
use crate::{Ctx, output};

/// `jobctl webhooks …`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List the webhooks: URL, events, filter, whether signed and active.
    List,
    /// Show one webhook.
    Get(NameArg),
    /// Save a new webhook.
    Add(AddArgs),
    /// Delete a webhook and its deliveries.
    Delete(NameArg),
    /// A webhook's last deliveries, newest first: status, attempts, the last answer.
    Deliveries(DeliveriesArgs),
    /// Attempt a delivery again now (same delivery id, attempts counted afresh).
    Redeliver(RedeliverArgs),
}

/// A command naming one webhook.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The webhook's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    webhook: String,
}

/// `webhooks add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Its unique name.
    name: String,
    /// Where deliveries are posted (`http://` or `https://`; `--url` is the service's own).
    #[arg(value_name = "URL")]
    target: String,
    /// An event it wants (repeat, or comma-separated): job.completed, job.failed,
    /// job.timed_out, job.canceled, job.recovered, run.finished, schedule.fire_skipped.
    #[arg(
        long = "event",
        short = 'e',
        value_name = "EVENT",
        required = true,
        value_delimiter = ','
    )]
    events: Vec<String>,
    /// Only jobs and runs on servers this selector matches (`role=web,env=prod`).
    #[arg(long, value_name = "SELECTOR")]
    selector: Option<String>,
    /// Only jobs and runs of this template (name or id).
    #[arg(long, value_name = "TEMPLATE")]
    template: Option<String>,
    /// Read the signing secret from this file (`-`: one line of stdin).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<String>,
    /// Save it inactive: events are recorded but not delivered until it is activated.
    #[arg(long)]
    inactive: bool,
}

/// `webhooks deliveries`.
#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// The webhook's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    webhook: String,
    /// How many (1 to 1000).
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: u32,
}

/// `webhooks redeliver`.
#[derive(Debug, Args)]
pub struct RedeliverArgs {
    /// The webhook's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    webhook: String,
    /// The delivery's id (`jobctl webhooks deliveries` lists them).
    delivery: String,
}

fn webhook_path(name_or_id: &str, rest: &str) -> String {
    format!("/webhooks/{}{rest}", escape(name_or_id))
}

/// A webhook's filter in a cell: `selector; template` or `-`.
fn filter(w: &Value) -> String {
    let parts: Vec<String> = [("selector", "selector"), ("template", "template_id")]
        .iter()
        .filter_map(|(label, key)| {
            let v = w["filter"][key].as_str()?;
            Some(format!("{label}={v}"))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn events(w: &Value) -> String {
    (w["events"].as_array().into_iter().flatten())
        .map(output::text)
        .collect::<Vec<_>>()
        .join(",")
}

fn webhooks_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = (list["webhooks"].as_array().into_iter().flatten())
        .map(|w| {
            vec![
                output::text(&w["name"]),
                output::text(&w["url"]),
                events(w),
                filter(w),
                output::yes_no(&w["has_secret"]),
                output::yes_no(&w["active"]),
            ]
        })
        .collect();
    let headers = ["NAME", "URL", "EVENTS", "FILTER", "SIGNED", "ACTIVE"];
    output::table(&headers, &rows)
}

fn webhook_listing(w: &Value) -> String {
    output::listing(&[
        ("name", output::text(&w["name"])),
        ("id", output::text(&w["id"])),
        ("url", output::text(&w["url"])),
        ("events", events(w)),
        ("filter", filter(w)),
        ("signed", output::yes_no(&w["has_secret"])),
        ("active", output::yes_no(&w["active"])),
        ("created", output::time(&w["created_at"])),
        ("updated", output::time(&w["updated_at"])),
    ])
}

/// The last answer of a delivery: its HTTP status, else why there was none.
fn last_answer(d: &Value) -> String {
    match (d["last_status_code"].as_i64(), d["last_error"].as_str()) {
        (Some(code), _) => code.to_string(),
        (None, Some(error)) => output::clip(error, 60),
        (None, None) => "-".into(),
    }
}

fn deliveries_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = (list["deliveries"].as_array().into_iter().flatten())
        .map(|d| {
            vec![
                output::text(&d["delivery_id"]),
                output::text(&d["event"]),
                output::text(&d["subject_id"]),
                output::text(&d["status"]),
                output::text(&d["attempts"]),
                last_answer(d),
                output::time(&d["next_attempt_at"]),
                output::time(&d["created_at"]),
            ]
        })
        .collect();
    let headers = [
        "DELIVERY", "EVENT", "SUBJECT", "STATUS", "ATTEMPTS", "LAST", "NEXT", "CREATED",
    ];
    output::table(&headers, &rows)
}

fn delivery_listing(d: &Value) -> String {
    output::listing(&[
        ("delivery", output::text(&d["delivery_id"])),
        ("event", output::text(&d["event"])),
        ("subject", output::text(&d["subject_id"])),
        ("status", output::text(&d["status"])),
        ("attempts", output::text(&d["attempts"])),
        ("next attempt", output::time(&d["next_attempt_at"])),
    ])
}

/// The secret `--secret-file` names: the file's text, or one line of stdin for `-`, without
/// its trailing newline.
fn read_secret(file: &str) -> anyhow::Result<String> {
    let text = if file == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the secret from stdin")?;
        line
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
    };
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(anyhow!("the secret is empty"));
    }
    Ok(secret)
}

/// Run a `webhooks` subcommand.
pub async fn dispatch(ctx: &Ctx, command: WebhooksCommand) -> anyhow::Result<u8> {
    match command {
        WebhooksCommand::List => {
            let list = ctx.api.get("/webhooks").await?;
            ctx.print(&list, webhooks_table);
        }
        WebhooksCommand::Get(a) => {
            let w = ctx.api.get(&webhook_path(&a.webhook, "")).await?;
            ctx.print(&w, webhook_listing);
        }
        WebhooksCommand::Add(a) => {
            let secret = a.secret_file.as_deref().map(read_secret).transpose()?;
            let body = json!({
                "name": a.name,
                "url": a.target,
                "events": a.events,
                "filter": {"selector": a.selector, "template": a.template},
                "secret": secret,
                "active": !a.inactive,
            });
            let w = ctx.api.post("/webhooks", body).await?;
            ctx.print(&w, webhook_listing);
        }
        WebhooksCommand::Delete(a) => {
            let path = webhook_path(&a.webhook, "");
            ctx.api.send(ctx.api.request(Method::DELETE, &path)).await?;
            let done = json!({"deleted": a.webhook});
            ctx.print(&done, |_| format!("webhook {} deleted\n", a.webhook));
        }
        WebhooksCommand::Deliveries(a) => {
            let path = webhook_path(&a.webhook, &format!("/deliveries?limit={}", a.limit));
            let list = ctx.api.get(&path).await?;
            ctx.print(&list, deliveries_table);
        }
        WebhooksCommand::Redeliver(a) => {
            let rest = format!("/deliveries/{}/redeliver", escape(&a.delivery));
            let d = ctx
                .api
                .post(&webhook_path(&a.webhook, &rest), json!({}))
                .await?;
            ctx.print(&d, delivery_listing);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_shows_its_status_code_or_else_its_error() {
        let failed = json!({"last_status_code": null, "last_error": "cannot connect: refused"});
        assert_eq!(last_answer(&failed), "cannot connect: refused");
        let answered = json!({"last_status_code": 502, "last_error": "the receiver answered 502"});
        assert_eq!(last_answer(&answered), "502");
        assert_eq!(last_answer(&json!({})), "-");
    }

    #[test]
    fn a_filter_cell_names_what_is_set() {
        let w = json!({"filter": {"selector": "env=prod", "template_id": null}});
        assert_eq!(filter(&w), "selector=env=prod");
        assert_eq!(filter(&json!({"filter": {}})), "-");
    }
}
