//! Schedules: a template launched on a cron timer — create, read, list, replace, delete,
//! pause, resume, preview, and the scheduler every process that runs jobs drives.
//!
//! Each fire time is claimed in the database (`schedule_fires`, unique per schedule and
//! time) before anything is launched, so however many processes look, one fires it. A
//! schedule's `cursor_at` is the last fire time handled; after downtime the fires after it
//! and inside `catch_up` are made up once each, oldest first, and older ones are let go.
//! What a claimed fire does is decided by `overlap` against the schedule's runs still
//! going.
//!
//! A fire names its run (an id chosen before the run is made) before launching it. A process
//! that dies between claiming a fire and settling it leaves it `claimed`; after [`STALE`]
//! another process takes it over: it finds the run if it was made, launches it under the
//! same id if not (the database refuses a second run of that id), or, when the fire is now
//! outside `catch_up`, records it `failed`. So each fire launches once, or says why not.

use crate::domain::{Action, Area};
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::templates::LaunchRequest;
use super::{Actor, Engine, Error, Subject};
use crate::domain::{
    Cron, FieldError, Fire, Micros, Overlap, RunId, Zone, check_launch, fires_between, next_fires,
    parse_duration,
};
use crate::store::{FireRow, ScheduleRow};

/// How often each process looks for due fires.
const TICK: Duration = Duration::from_millis(500);
/// A fire this late is still on time (a tick, a slow database), whatever `catch_up` says.
const ON_TIME: i64 = 5_000_000;
/// Most fires one schedule makes up in one look.
const MAKE_UP_CAP: usize = 100;
/// A fire claimed this long ago and still not settled was lost with the process that
/// claimed it: another process takes it over.
const STALE: i64 = 30_000_000;
/// Looks for lost fires every this many ticks.
const RECOVER_EVERY: u32 = 20;

/// `POST /schedules`, `PUT /schedules/{id}`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct ScheduleRequest {
    /// Unique name: 1 to 128 of letters, digits, `.`, `_`, `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: Option<String>,
    /// The template to launch (name or id); it must exist.
    pub template: Option<String>,
    /// The template's parameters, checked now as a launch would check them.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<BTreeMap<String, Value>>,
    /// 5 fields (`min hour dom month dow`) or 6 (seconds first).
    pub cron: Option<String>,
    /// IANA time zone the expression is read in (default `UTC`).
    pub timezone: Option<String>,
    /// `skip` (default), `queue_one`, `allow` or `cancel_previous`.
    #[schema(value_type = Option<Overlap>)]
    pub overlap: Option<String>,
    /// How far back missed fires are made up after downtime (`"1h"`, default `"0s"`).
    pub catch_up: Option<String>,
    /// Created paused.
    pub paused: Option<bool>,
}

/// A schedule as the engine reads it: its row and its last fires.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The row.
    pub row: ScheduleRow,
    /// The template's name.
    pub template_name: String,
    /// The next fire time (none when paused or never again).
    pub next: Option<Fire>,
    /// The last fires, newest first.
    pub fires: Vec<FireRow>,
}

/// A schedule request's own fields, checked.
pub struct Checked {
    name: String,
    cron: Cron,
    zone: Zone,
    overlap: Overlap,
    catch_up: Duration,
}

/// Check what a schedule request says by itself (name, cron, time zone, overlap, catch-up)
/// and, given its template's parameters, its parameters as a launch would: what saving it
/// refuses short of a template that does not exist.
pub fn check_schedule(
    request: &ScheduleRequest,
    params: Option<&[crate::domain::ParamDef]>,
) -> Result<Checked, Error> {
    let invalid = |field: &'static str, m: &str| Error::Invalid(FieldError::new(field, m));
    let name = request
        .name
        .clone()
        .ok_or_else(|| invalid("name", "is required"))?;
    if !crate::domain::valid_template_name(&name) {
        return Err(invalid(
            "name",
            "must be 1 to 128 of letters, digits, '.', '_' and '-'",
        ));
    }
    let cron_text = (request.cron.as_deref()).ok_or_else(|| invalid("cron", "is required"))?;
    let cron = Cron::parse("cron", cron_text)?;
    let zone = Zone::parse("timezone", request.timezone.as_deref().unwrap_or("UTC"))?;
    let overlap: Overlap = (request.overlap.as_deref().unwrap_or("skip"))
        .parse()
        .map_err(|m: String| FieldError::new("overlap", m))?;
    let catch_up = parse_duration("catch_up", request.catch_up.as_deref().unwrap_or("0s"))?;
    if let Some(params) = params {
        check_launch(
            params,
            request.parameters.as_ref().unwrap_or(&BTreeMap::new()),
        )?;
    }
    Ok(Checked {
        name,
        cron,
        zone,
        overlap,
        catch_up,
    })
}

impl ScheduleRow {
    fn parsed(&self) -> Option<(Cron, Zone, Overlap)> {
        Some((
            Cron::parse("cron", &self.cron).ok()?,
            Zone::parse("timezone", &self.timezone).ok()?,
            self.overlap.parse().ok()?,
        ))
    }
}

impl Engine {
    /// Check a schedule request whole (its parameters as its template would check them) and
    /// make its row (`old`: the row it replaces).
    /// The schedule takes `actor`'s scope: it starts its runs within it.
    pub(super) async fn schedule_row(
        &self,
        actor: &Actor,
        request: ScheduleRequest,
        old: Option<&ScheduleRow>,
    ) -> Result<ScheduleRow, Error> {
        let invalid = |field: &'static str, m: &str| Error::Invalid(FieldError::new(field, m));
        let Checked {
            name,
            cron,
            zone,
            overlap,
            catch_up,
        } = check_schedule(&request, None)?;
        let template = request
            .template
            .ok_or_else(|| invalid("template", "is required"))?;
        let tpl = self.template(&template).await.map_err(|e| match e {
            Error::NotFound(s) => invalid("template", &format!("{s} does not exist")),
            other => other,
        })?;
        let given = request.parameters.unwrap_or_default();
        check_launch(&tpl.params(), &given)?;
        let secret: BTreeMap<String, String> = (tpl.params().iter())
            .filter(|p| p.secret)
            .filter_map(|p| given.get(&p.name).map(|v| (p.name.clone(), v.to_string())))
            .collect();
        let plain: BTreeMap<&String, &Value> = (given.iter())
            .filter(|(k, _)| !secret.contains_key(*k))
            .collect();
        let now = Micros::now().0;
        let id = old.map_or_else(|| uuid::Uuid::now_v7().to_string(), |o| o.id.clone());
        let sealed_params = (!secret.is_empty())
            .then(|| self.store.seal_schedule_params(&id, &secret))
            .transpose()?;
        let paused = request.paused.unwrap_or(old.is_some_and(|o| o.paused));
        Ok(ScheduleRow {
            id,
            name,
            template_id: tpl.id,
            parameters: serde_json::to_string(&plain).unwrap_or_default(),
            sealed_params,
            cron: cron.to_string(),
            timezone: zone.to_string(),
            overlap: overlap.to_string(),
            catch_up_secs: i64::try_from(catch_up.as_secs()).unwrap_or(i64::MAX),
            paused,
            // A new or changed schedule fires from now on.
            cursor_at: now,
            created_at: old.map_or(now, |o| o.created_at),
            updated_at: now,
            scope: actor.access.scope.as_ref().map(ToString::to_string),
        })
    }

    /// Save a new schedule.
    pub async fn create_schedule(
        &self,
        actor: &Actor,
        request: ScheduleRequest,
    ) -> Result<Schedule, Error> {
        self.allow(actor, Action::Create(Area::Schedules)).await?;
        let row = self.schedule_row(actor, request, None).await?;
        let row = self.store.insert_schedule(row).await?;
        self.audit(actor, "schedule.create", &row.id, json!({"name": row.name}))
            .await;
        self.schedule(&row.id).await
    }

    /// One schedule, by name or id, with its next fire and last fires.
    pub async fn schedule(&self, name_or_id: &str) -> Result<Schedule, Error> {
        let row = self
            .store
            .get_schedule(name_or_id.to_string())
            .await
            .map_err(Error::store(|| Subject::Schedule(name_or_id.to_string())))?;
        self.schedule_of(row).await
    }

    async fn schedule_of(&self, row: ScheduleRow) -> Result<Schedule, Error> {
        let template_name = match self.store.get_template(row.template_id.clone()).await {
            Ok(t) => t.name,
            Err(_) => row.template_id.clone(),
        };
        let next = (!row.paused)
            .then(|| row.parsed())
            .flatten()
            .and_then(|(cron, zone, _)| {
                let after = Micros(row.cursor_at.max(Micros::now().0));
                next_fires(&cron, &zone, after, 1).into_iter().next()
            });
        let fires = self.store.schedule_fires(row.id.clone(), 10).await?;
        Ok(Schedule {
            row,
            template_name,
            next,
            fires,
        })
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, Error> {
        let mut all = Vec::new();
        for row in self.store.list_schedules().await? {
            all.push(self.schedule_of(row).await?);
        }
        Ok(all)
    }

    /// Replace a schedule's definition; it fires from now on.
    pub async fn update_schedule(
        &self,
        actor: &Actor,
        name_or_id: &str,
        request: ScheduleRequest,
    ) -> Result<Schedule, Error> {
        self.allow(actor, Action::Update(Area::Schedules)).await?;
        let old = self.schedule(name_or_id).await?.row;
        let row = self.schedule_row(actor, request, Some(&old)).await?;
        let row = self.store.update_schedule(row).await?;
        self.audit(actor, "schedule.update", &row.id, json!({"name": row.name}))
            .await;
        self.schedule_of(row).await
    }

    /// Delete a schedule (its runs stay).
    pub async fn delete_schedule(&self, actor: &Actor, name_or_id: &str) -> Result<(), Error> {
        self.allow(actor, Action::Delete(Area::Schedules)).await?;
        let row = self.schedule(name_or_id).await?.row;
        self.store.delete_schedule(row.id.clone()).await?;
        self.audit(actor, "schedule.delete", &row.id, json!({"name": row.name}))
            .await;
        Ok(())
    }

    /// Pause or resume a schedule. A resumed schedule fires from now on: what fell while it
    /// was paused is not made up.
    pub async fn pause_schedule(
        &self,
        actor: &Actor,
        name_or_id: &str,
        paused: bool,
    ) -> Result<Schedule, Error> {
        self.allow(actor, Action::PauseSchedule).await?;
        let mut row = self.schedule(name_or_id).await?.row;
        if row.paused != paused {
            row.paused = paused;
            row.cursor_at = row.cursor_at.max(Micros::now().0);
            row.updated_at = Micros::now().0;
            row = self.store.update_schedule(row).await?;
        }
        let action = if paused {
            "schedule.pause"
        } else {
            "schedule.resume"
        };
        self.audit(actor, action, &row.id, json!({})).await;
        self.schedule_of(row).await
    }

    /// The next `count` fire times of `cron` in `timezone` after `from` (default now).
    pub fn preview(
        &self,
        cron: &str,
        timezone: Option<&str>,
        from: Option<Micros>,
        count: usize,
    ) -> Result<Vec<Fire>, Error> {
        let cron = Cron::parse("cron", cron)?;
        let zone = Zone::parse("timezone", timezone.unwrap_or("UTC"))?;
        Ok(next_fires(
            &cron,
            &zone,
            from.unwrap_or_else(Micros::now),
            count,
        ))
    }

    /// Fire what is due now, for every schedule not paused; with `recover`, take over the
    /// fires whose process died first.
    async fn fire_due(&self, worker: &str, recover: bool) -> Result<(), Error> {
        let rows = self.store.list_schedules().await?;
        if recover {
            self.recover_lost(&rows, worker).await?;
        }
        for row in rows {
            if row.paused {
                continue;
            }
            if let Err(e) = self.fire_schedule(&row, worker).await {
                tracing::warn!(schedule = %row.name, error = %e, "cannot fire the schedule yet");
            }
        }
        Ok(())
    }

    /// Take over the fires claimed more than [`STALE`] ago and never settled, and finish
    /// them as their claimer would have.
    async fn recover_lost(&self, rows: &[ScheduleRow], worker: &str) -> Result<(), Error> {
        let now = Micros::now().0;
        for lost in self.store.stale_fires(now - STALE).await? {
            let Some(row) = rows.iter().find(|r| r.id == lost.schedule_id) else {
                continue;
            };
            let taken = self.store.reclaim_fire(
                row.id.clone(),
                lost.fire_at,
                "claimed",
                Some(lost.claimed_at),
                worker.to_string(),
            );
            if !taken.await? {
                continue;
            }
            tracing::warn!(schedule = %row.name, fire_at = %Micros(lost.fire_at),
                claimed_by = %lost.claimed_by, "taking over a fire its process did not finish");
            let window = (row.catch_up_secs.saturating_mul(1_000_000)).max(ON_TIME);
            let made = match &lost.run_id {
                Some(id) => self.store.run_exists(id.clone()).await?,
                None => false,
            };
            let settle = |status, detail: String| {
                self.store.settle_fire(
                    row.id.clone(),
                    lost.fire_at,
                    "claimed",
                    status,
                    lost.run_id.clone().filter(|_| made),
                    Some(detail),
                )
            };
            if made {
                settle("launched", format!("settled for {}", lost.claimed_by)).await?;
            } else if row.paused {
                settle(
                    "failed",
                    "lost with its process; the schedule is paused".into(),
                )
                .await?;
            } else if lost.fire_at < now - window {
                let detail = format!(
                    "lost with the process that claimed it ({}); too late to make up \
                     (catch_up is {}s)",
                    lost.claimed_by, row.catch_up_secs
                );
                settle("failed", detail).await?;
            } else if let Some((_, _, overlap)) = row.parsed() {
                self.decide(row, overlap, lost.fire_at).await?;
            }
        }
        Ok(())
    }

    async fn fire_schedule(&self, row: &ScheduleRow, worker: &str) -> Result<(), Error> {
        let Some((cron, zone, overlap)) = row.parsed() else {
            return Ok(());
        };
        let now = Micros::now().0;
        let window = (row.catch_up_secs.saturating_mul(1_000_000)).max(ON_TIME);
        let from = row.cursor_at.max(now - window);
        // A queued fire (only `queue_one` makes them) starts once the runs before it ended.
        if overlap == Overlap::QueueOne
            && let (going, Some(q)) = self.store.schedule_activity(row.id.clone()).await?
            && going.is_empty()
            && self
                .store
                .reclaim_fire(row.id.clone(), q.fire_at, "queued", None, worker.into())
                .await?
        {
            self.launch_fire(row, q.fire_at).await?;
        }
        for at in fires_between(&cron, &zone, Micros(from), Micros(now), MAKE_UP_CAP) {
            let fire = FireRow {
                schedule_id: row.id.clone(),
                fire_at: at.0,
                status: "claimed".into(),
                run_id: None,
                detail: None,
                claimed_by: worker.to_string(),
                claimed_at: now,
            };
            let won = self.store.claim_fire(fire).await?;
            self.store.advance_cursor(row.id.clone(), at.0).await?;
            if won {
                self.decide(row, overlap, at.0).await?;
            }
        }
        Ok(())
    }

    /// What the claimed fire at `at` does: `overlap` against the schedule's runs going.
    async fn decide(&self, row: &ScheduleRow, overlap: Overlap, at: i64) -> Result<(), Error> {
        let at = Micros(at);
        // Only the policies that look at the runs still going read them.
        let (going, queued) = match overlap {
            Overlap::Allow => (Vec::new(), None),
            _ => self.store.schedule_activity(row.id.clone()).await?,
        };
        let busy = !going.is_empty();
        let settle = |status, detail: &str| {
            let detail = Some(detail.to_string());
            self.store
                .settle_fire(row.id.clone(), at.0, "claimed", status, None, detail)
        };
        match overlap {
            Overlap::Skip if busy => {
                settle("skipped", "the previous run was still going").await?;
                tracing::info!(schedule = %row.name, fire_at = %at, "fire skipped: the previous run is still going");
            }
            Overlap::QueueOne if busy && queued.is_some() => {
                settle("skipped", "a fire was already waiting").await?;
            }
            Overlap::QueueOne if busy => {
                settle("queued", "waits for the previous run").await?;
            }
            Overlap::CancelPrevious if busy => {
                for id in going {
                    if let Ok(id) = id.parse() {
                        let _ = self.cancel_run(&schedule_actor(row), RunId(id)).await;
                    }
                }
                self.launch_fire(row, at.0).await?;
            }
            _ => self.launch_fire(row, at.0).await?,
        }
        Ok(())
    }

    /// Launch the run of a claimed fire and record it (`launched`, or `failed` and why).
    /// The run's id is written into the fire first: whoever finishes the fire (this process,
    /// or one taking it over) launches that one run or finds it made.
    async fn launch_fire(&self, row: &ScheduleRow, fire_at: i64) -> Result<(), Error> {
        let candidate = uuid::Uuid::now_v7().to_string();
        let Some(run_id) = (self.store.name_fire_run(row.id.clone(), fire_at, candidate)).await?
        else {
            return Ok(()); // no longer claimed: another process settled it
        };
        if self.store.run_exists(run_id.clone()).await? {
            self.store
                .settle_fire(
                    row.id.clone(),
                    fire_at,
                    "claimed",
                    "launched",
                    Some(run_id),
                    None,
                )
                .await?;
            return Ok(());
        }
        let plain: BTreeMap<String, Value> =
            serde_json::from_str(&row.parameters).unwrap_or_default();
        let mut given = plain;
        for (k, v) in self.store.schedule_secret_params(row)? {
            given.insert(k, serde_json::from_str(&v).unwrap_or(Value::String(v)));
        }
        let request = LaunchRequest {
            parameters: Some(given),
            targets: None,
        };
        let extra = BTreeMap::from([("JOBEXEC_FIRE_AT".to_string(), Micros(fire_at).to_rfc3339())]);
        let launched = self
            .launch_with(
                &schedule_actor(row),
                &row.template_id,
                request,
                extra,
                Some(run_id.clone()),
            )
            .await;
        let (status, run_id, detail) = match launched {
            Ok(run) => ("launched", Some(run.row.id), None),
            // Made meanwhile by a process that took the fire over.
            Err(_) if self.store.run_exists(run_id.clone()).await? => {
                ("launched", Some(run_id), None)
            }
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "the schedule's launch was refused");
                ("failed", None, Some(e.to_string()))
            }
        };
        self.store
            .settle_fire(row.id.clone(), fire_at, "claimed", status, run_id, detail)
            .await?;
        Ok(())
    }

    /// Fire schedules from this process: every [`TICK`], what is due.
    pub(crate) fn spawn_scheduler(&self) {
        let engine = self.clone();
        let worker = self.settings.worker.worker_id();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            for n in 0u32.. {
                tick.tick().await;
                if let Err(e) = engine.fire_due(&worker, n % RECOVER_EVERY == 0).await {
                    tracing::debug!(error = %e, "cannot read the schedules");
                }
            }
        });
    }
}

/// Who a schedule's runs are started by, in the audit log: an admin within the scope of the
/// token that made the schedule. A stored scope that no longer parses reaches nothing.
fn schedule_actor(row: &ScheduleRow) -> Actor {
    let scope = (row.scope.as_deref()).map(|raw| {
        crate::domain::Selector::parse("scope", raw)
            .unwrap_or_else(|_| crate::domain::Selector::nothing())
    });
    Actor {
        name: format!("schedule:{}", row.name),
        peer: None,
        access: crate::domain::Access {
            role: crate::domain::Role::Admin,
            scope,
        },
    }
}
