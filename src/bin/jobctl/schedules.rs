//! `jobctl schedules …`: templates launched on a cron timer — list, get, pause, resume, and
//! the preview of an expression's fire times (in UTC and on the zone's wall clock).

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::escape;
use crate::{Ctx, output};

/// `jobctl schedules …`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List the schedules: cron, zone, template, next fire, paused.
    List,
    /// Show one schedule and its last fires.
    Get(NameArg),
    /// Pause a schedule: nothing fires until it is resumed.
    Pause(NameArg),
    /// Resume a schedule (what fell while it was paused is not made up).
    Resume(NameArg),
    /// The next fire times of a cron expression in a time zone.
    Preview(PreviewArgs),
}

/// A command naming one schedule.
#[derive(Debug, Args)]
pub struct NameArg {
    /// The schedule's name or id.
    #[arg(value_name = "NAME_OR_ID")]
    schedule: String,
}

/// `schedules preview`.
#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The expression: 5 fields, or 6 with seconds first (quote it).
    cron: String,
    /// The IANA time zone (default UTC).
    #[arg(long, short = 'z', value_name = "ZONE")]
    timezone: Option<String>,
    /// Fire times after this instant (RFC 3339; default now).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// How many (1 to 100).
    #[arg(long, short = 'n', default_value_t = 10)]
    count: u32,
}

fn schedule_path(name_or_id: &str, rest: &str) -> String {
    format!("/schedules/{}{rest}", escape(name_or_id))
}

fn schedules_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = (list["schedules"].as_array().into_iter().flatten())
        .map(|s| {
            vec![
                output::text(&s["name"]),
                output::text(&s["cron"]),
                output::text(&s["timezone"]),
                output::text(&s["template"]),
                output::text(&s["overlap"]),
                output::text(&s["next_fire_local"]),
                output::yes_no(&s["paused"]),
            ]
        })
        .collect();
    let headers = [
        "NAME", "CRON", "ZONE", "TEMPLATE", "OVERLAP", "NEXT", "PAUSED",
    ];
    output::table(&headers, &rows)
}

fn schedule_listing(s: &Value) -> String {
    let mut text = output::listing(&[
        ("name", output::text(&s["name"])),
        ("id", output::text(&s["id"])),
        ("template", output::text(&s["template"])),
        ("parameters", output::text(&s["parameters"])),
        ("cron", output::text(&s["cron"])),
        ("timezone", output::text(&s["timezone"])),
        ("overlap", output::text(&s["overlap"])),
        (
            "catch_up",
            format!("{}s", output::text(&s["catch_up_secs"])),
        ),
        ("paused", output::yes_no(&s["paused"])),
        ("next fire", output::text(&s["next_fire_local"])),
        ("last fired", output::time(&s["last_fired_at"])),
    ]);
    let rows: Vec<Vec<String>> = (s["last_fires"].as_array().into_iter().flatten())
        .map(|f| {
            vec![
                output::time(&f["fire_at"]),
                output::text(&f["status"]),
                output::text(&f["run_id"]),
                output::text(&f["detail"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        text.push('\n');
        text.push_str(&output::table(&["FIRED", "STATUS", "RUN", "DETAIL"], &rows));
    }
    text
}

fn preview_table(p: &Value) -> String {
    let rows: Vec<Vec<String>> = (p["fires"].as_array().into_iter().flatten())
        .map(|f| vec![output::text(&f["at"]), output::text(&f["local"])])
        .collect();
    output::table(&["UTC", "LOCAL"], &rows)
}

/// Run a `schedules` subcommand.
pub async fn dispatch(ctx: &Ctx, command: SchedulesCommand) -> anyhow::Result<u8> {
    match command {
        SchedulesCommand::List => {
            let list = ctx.api.get("/schedules").await?;
            ctx.print(&list, schedules_table);
        }
        SchedulesCommand::Get(a) => {
            let s = ctx.api.get(&schedule_path(&a.schedule, "")).await?;
            ctx.print(&s, schedule_listing);
        }
        SchedulesCommand::Pause(a) => {
            let path = schedule_path(&a.schedule, "/pause");
            let s = ctx.api.post(&path, serde_json::json!({})).await?;
            ctx.print(&s, schedule_listing);
        }
        SchedulesCommand::Resume(a) => {
            let path = schedule_path(&a.schedule, "/resume");
            let s = ctx.api.post(&path, serde_json::json!({})).await?;
            ctx.print(&s, schedule_listing);
        }
        SchedulesCommand::Preview(a) => {
            let mut query = format!("cron={}&count={}", escape(&a.cron), a.count);
            if let Some(z) = &a.timezone {
                query.push_str(&format!("&timezone={}", escape(z)));
            }
            if let Some(f) = &a.from {
                query.push_str(&format!("&from={}", escape(f)));
            }
            let p = ctx.api.get(&format!("/schedules/preview?{query}")).await?;
            ctx.print(&p, preview_table);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_preview_prints_utc_beside_local() {
        let p = json!({"fires": [{"at": "2027-03-28T01:00:00.000000Z", "local": "2027-03-28T03:00:00+02:00"}]});
        let text = preview_table(&p);
        assert!(text.contains("UTC"), "{text}");
        assert!(text.contains("2027-03-28T01:00:00.000000Z"), "{text}");
        assert!(text.contains("2027-03-28T03:00:00+02:00"), "{text}");
    }
}
