//! The outbox: webhook deliveries written with the changes that cause them.
//!
//! A delivery row is written by the same transaction as the change that causes it (a job's
//! end, a run's end, a skipped fire): [`job_ended`], [`run_finished`] and [`fire_skipped`]
//! are called inside those transactions, so an event is recorded if and only if its change
//! is. Any process then claims due deliveries one at a time (`Store::claim_delivery`, in
//! `webhooks`) and settles each attempt; a process that dies mid-attempt lets its claim
//! lapse.

use diesel::prelude::*;

use super::schema::{jobs, run_hosts, runs, schedules, servers, webhook_deliveries, webhooks};
use super::{DbConnection, JobRow, RunRow, StoreError};
use crate::domain::{JobStatus, Labels, Micros, Selector};

/// A `webhooks` row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = webhooks)]
#[diesel(treat_none_as_null = true)]
pub struct WebhookRow {
    /// UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Where deliveries are posted.
    pub url: String,
    /// The events it wants, a JSON array.
    pub events: String,
    /// Only jobs and runs on servers this selector matches.
    pub selector: Option<String>,
    /// Only jobs and runs of this template (and its schedules' skipped fires).
    pub template_id: Option<String>,
    /// The signing secret, sealed.
    pub sealed_secret: Option<Vec<u8>>,
    /// Whether events are delivered to it.
    pub active: bool,
    /// Creation time.
    pub created_at: i64,
    /// Last update time.
    pub updated_at: i64,
}

impl WebhookRow {
    /// The events it wants.
    pub fn event_names(&self) -> Vec<String> {
        serde_json::from_str(&self.events).unwrap_or_default()
    }

    fn wants(&self, event: &str, template: Option<&str>, labels: &[Labels]) -> bool {
        let selector = (self.selector.as_deref()).map(|s| Selector::parse("selector", s));
        self.active
            && self.event_names().iter().any(|e| e == event)
            && (self.template_id.as_deref()).is_none_or(|t| Some(t) == template)
            && match selector {
                None => true,
                // A skipped fire has no servers: a selector does not filter it.
                Some(_) if event.starts_with("schedule.") => true,
                Some(Ok(s)) => labels.iter().any(|l| s.matches(l)),
                Some(Err(_)) => false,
            }
    }
}

/// A `webhook_deliveries` row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_deliveries)]
pub struct DeliveryRow {
    /// The delivery id: the same on every attempt.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event.
    pub event: String,
    /// The job, run or schedule it is about.
    pub subject_id: String,
    /// When the event happened.
    pub at: i64,
    /// The JSON posted (fixed at the first attempt; schedule events have it from the start).
    pub body: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last attempt's HTTP status.
    pub last_status_code: Option<i32>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When the next attempt is due.
    pub next_attempt_at: i64,
    /// Claimed by a process until then.
    pub claimed_until: Option<i64>,
    /// When it was written.
    pub created_at: i64,
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<i32>,
    /// What went wrong (none: delivered).
    pub error: Option<String>,
    /// The next attempt (none: no more; `failed` unless delivered).
    pub retry_at: Option<i64>,
}

/// The active webhooks (what every event is matched against; a small table).
fn active_hooks(conn: &mut DbConnection) -> Result<Vec<WebhookRow>, StoreError> {
    Ok(webhooks::table
        .filter(webhooks::active.eq(true))
        .select(WebhookRow::as_select())
        .load(conn)?)
}

fn labels_of(conn: &mut DbConnection, server_ids: Vec<String>) -> Result<Vec<Labels>, StoreError> {
    let rows: Vec<String> = servers::table
        .filter(servers::id.eq_any(server_ids))
        .select(servers::labels)
        .load(conn)?;
    Ok(rows
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_default())
        .collect())
}

fn enqueue(
    conn: &mut DbConnection,
    hooks: &[WebhookRow],
    events: &[&str],
    subject_id: &str,
    template: Option<&str>,
    labels: &[Labels],
    body: impl Fn(&str, &str, i64) -> Option<String>,
) -> Result<(), StoreError> {
    let now = Micros::now().0;
    for hook in hooks {
        for &event in events {
            if !hook.wants(event, template, labels) {
                continue;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let row = DeliveryRow {
                body: body(event, &id, now),
                id,
                webhook_id: hook.id.clone(),
                event: event.to_string(),
                subject_id: subject_id.to_string(),
                at: now,
                status: "pending".into(),
                attempts: 0,
                last_status_code: None,
                last_error: None,
                next_attempt_at: now,
                claimed_until: None,
                created_at: now,
            };
            diesel::insert_into(webhook_deliveries::table)
                .values(&row)
                .execute(conn)?;
        }
    }
    Ok(())
}

/// The template a job was launched from (through its run).
fn template_of(conn: &mut DbConnection, job: &JobRow) -> Result<Option<String>, StoreError> {
    let Some(run) = &job.run_id else {
        return Ok(None);
    };
    Ok(runs::table
        .find(run)
        .select(runs::template_id)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// An ended job's status and what it ran.
type Ended = (
    JobStatus,
    crate::domain::JobKind,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Whether the job before `job` on its server, of the same template (or, without one, the
/// same command or script), failed: `job` completing is then a recovery.
fn recovered(
    conn: &mut DbConnection,
    job: &JobRow,
    template: Option<&str>,
) -> Result<bool, StoreError> {
    let ended = [JobStatus::Completed, JobStatus::Failed, JobStatus::TimedOut];
    let before = jobs::table
        .filter(jobs::server_id.eq(&job.server_id))
        .filter(jobs::id.ne(&job.id))
        .filter(jobs::status.eq_any(ended))
        .filter(jobs::finished_at.le(job.finished_at))
        .order((jobs::finished_at.desc(), jobs::id.desc()))
        .select(jobs::status);
    let previous: Option<JobStatus> = match template {
        Some(t) => {
            let runs_of = runs::table
                .filter(runs::template_id.eq(t.to_string()))
                .select(runs::id.nullable());
            (before.filter(jobs::run_id.eq_any(runs_of)))
                .first(conn)
                .optional()?
        }
        // The same command or script: compared here (NULL-safe equality differs between
        // the two databases), over the server's last ended jobs.
        None => {
            let recent: Vec<Ended> = jobs::table
                .filter(jobs::server_id.eq(&job.server_id))
                .filter(jobs::id.ne(&job.id))
                .filter(jobs::status.eq_any(ended))
                .filter(jobs::finished_at.le(job.finished_at))
                .order((jobs::finished_at.desc(), jobs::id.desc()))
                .select((
                    jobs::status,
                    jobs::kind,
                    jobs::command,
                    jobs::args,
                    jobs::script,
                ))
                .limit(200)
                .load(conn)?;
            let same = (job.kind, &job.command, &job.args, &job.script);
            recent
                .into_iter()
                .find(|(_, kind, command, args, script)| (*kind, command, args, script) == same)
                .map(|(status, ..)| status)
        }
    };
    Ok(matches!(
        previous,
        Some(JobStatus::Failed | JobStatus::TimedOut)
    ))
}

/// Record the deliveries of a job's end (and of a recovery), inside its transaction.
pub(super) fn job_ended(conn: &mut DbConnection, job: &JobRow) -> Result<(), StoreError> {
    let event = match job.status {
        JobStatus::Completed => "job.completed",
        JobStatus::Failed => "job.failed",
        JobStatus::TimedOut => "job.timed_out",
        JobStatus::Canceled => "job.canceled",
        _ => return Ok(()),
    };
    let hooks = active_hooks(conn)?;
    if hooks.is_empty() {
        return Ok(());
    }
    let template = template_of(conn, job)?;
    let labels = labels_of(conn, vec![job.server_id.clone()])?;
    let mut events = vec![event];
    if job.status == JobStatus::Completed && recovered(conn, job, template.as_deref())? {
        events.push("job.recovered");
    }
    enqueue(
        conn,
        &hooks,
        &events,
        &job.id,
        template.as_deref(),
        &labels,
        |_, _, _| None,
    )
}

/// Record the deliveries of a run's end, inside its transaction.
pub(super) fn run_finished(conn: &mut DbConnection, run: &RunRow) -> Result<(), StoreError> {
    let hooks = active_hooks(conn)?;
    if hooks.is_empty() {
        return Ok(());
    }
    let hosts: Vec<String> = run_hosts::table
        .filter(run_hosts::run_id.eq(&run.id))
        .select(run_hosts::server_id)
        .load(conn)?;
    let labels = labels_of(conn, hosts)?;
    let template = run.template_id.as_deref();
    enqueue(
        conn,
        &hooks,
        &["run.finished"],
        &run.id,
        template,
        &labels,
        |_, _, _| None,
    )
}

/// Record the deliveries of a skipped fire, inside its transaction. Their body is made
/// here: a fire has no object of its own to render later.
pub(super) fn fire_skipped(
    conn: &mut DbConnection,
    schedule_id: &str,
    fire_at: i64,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    let hooks = active_hooks(conn)?;
    if hooks.is_empty() {
        return Ok(());
    }
    let (name, template_id): (String, String) = schedules::table
        .find(schedule_id)
        .select((schedules::name, schedules::template_id))
        .first(conn)?;
    let body = |event: &str, id: &str, at: i64| {
        let data = serde_json::json!({
            "schedule_id": schedule_id,
            "schedule": name,
            "template_id": template_id,
            "fire_at": Micros(fire_at),
            "detail": detail,
        });
        Some(envelope(event, id, at, data))
    };
    enqueue(
        conn,
        &hooks,
        &["schedule.fire_skipped"],
        schedule_id,
        Some(&template_id),
        &[],
        body,
    )
}

/// The JSON a delivery posts: `{"event", "delivery_id", "at", "data"}`.
pub fn envelope(event: &str, delivery_id: &str, at: i64, data: serde_json::Value) -> String {
    serde_json::json!({
        "event": event,
        "delivery_id": delivery_id,
        "at": Micros(at),
        "data": data,
    })
    .to_string()
}
