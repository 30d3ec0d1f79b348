//! Queries on `schedules` and `schedule_fires`. A fire time is claimed by inserting its row:
//! the primary key `(schedule_id, fire_at)` lets one process win, however many try.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::runs::{open_env, seal_env};
use super::schema::{runs, schedule_fires, schedules};
use super::{Store, StoreError, conflict_on_unique};

/// A `schedules` row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = schedules)]
#[diesel(treat_none_as_null = true)]
pub struct ScheduleRow {
    /// UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The template it launches.
    pub template_id: String,
    /// The values of the template's parameters that are not secret (a JSON object).
    pub parameters: String,
    /// The secret values, sealed.
    pub sealed_params: Option<Vec<u8>>,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone.
    pub timezone: String,
    /// `skip`, `queue_one`, `allow` or `cancel_previous`.
    pub overlap: String,
    /// How far back missed fires are made up, in seconds.
    pub catch_up_secs: i64,
    /// Paused: nothing fires.
    pub paused: bool,
    /// The last fire time handled; later ones are due.
    pub cursor_at: i64,
    /// Creation time.
    pub created_at: i64,
    /// Last update time.
    pub updated_at: i64,
    /// The scope of the token that created or last changed it, as a selector: its runs
    /// are started within it (none: every server).
    pub scope: Option<String>,
}

/// A `schedule_fires` row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = schedule_fires)]
pub struct FireRow {
    /// The schedule.
    pub schedule_id: String,
    /// The fire time.
    pub fire_at: i64,
    /// `claimed`, `launched`, `skipped`, `queued` or `failed`.
    pub status: String,
    /// The run it launched.
    pub run_id: Option<String>,
    /// Why it was skipped or failed.
    pub detail: Option<String>,
    /// The process that claimed it.
    pub claimed_by: String,
    /// When.
    pub claimed_at: i64,
}

named_rows!(
    "schedule",
    schedules,
    ScheduleRow,
    insert_schedule,
    get_schedule,
    list_schedules,
    update_schedule
);

impl Store {
    /// Seal a schedule's secret parameter values.
    pub fn seal_schedule_params(
        &self,
        id: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, StoreError> {
        seal_env(&self.keyring, &format!("schedules/{id}/params"), values)
    }

    /// A schedule's secret parameter values, opened.
    pub fn schedule_secret_params(
        &self,
        row: &ScheduleRow,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let aad = format!("schedules/{}/params", row.id);
        open_env(&self.keyring, &aad, row.sealed_params.as_deref())
    }

    /// Delete a schedule and its fires.
    pub async fn delete_schedule(&self, id: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            super::write_tx(conn, |conn| {
                diesel::delete(schedule_fires::table.filter(schedule_fires::schedule_id.eq(&id)))
                    .execute(conn)?;
                let n = diesel::delete(schedules::table.find(&id)).execute(conn)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            })
        })
        .await
    }

    /// How many schedules launch a template.
    pub async fn schedules_of_template(&self, template_id: String) -> Result<i64, StoreError> {
        self.run(move |conn| {
            Ok(schedules::table
                .filter(schedules::template_id.eq(&template_id))
                .count()
                .get_result(conn)?)
        })
        .await
    }

    /// Claim a fire time: `true` for the one process that inserted it.
    pub async fn claim_fire(&self, fire: FireRow) -> Result<bool, StoreError> {
        self.run(move |conn| {
            match diesel::insert_into(schedule_fires::table)
                .values(&fire)
                .execute(conn)
            {
                Ok(_) => Ok(true),
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                )) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Record what a claimed (or queued) fire became; `from` is the status it must still
    /// have (`true` when this call changed it).
    pub async fn settle_fire(
        &self,
        schedule_id: String,
        fire_at: i64,
        from: &'static str,
        status: &'static str,
        run_id: Option<String>,
        detail: Option<String>,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            super::write_tx(conn, |conn| {
                let n = diesel::update(
                    schedule_fires::table
                        .find((&schedule_id, fire_at))
                        .filter(schedule_fires::status.eq(from)),
                )
                .set((
                    schedule_fires::status.eq(status),
                    schedule_fires::run_id.eq(run_id),
                    schedule_fires::detail.eq(&detail),
                ))
                .execute(conn)?;
                if n == 1 && status == "skipped" {
                    super::outbox::fire_skipped(conn, &schedule_id, fire_at, detail.as_deref())?;
                }
                Ok(n == 1)
            })
        })
        .await
    }

    /// Take a fire over: from status `from` (and, when given, still claimed at
    /// `claimed_at`: nobody took it over first) to `claimed` by `me`, now. `true` when this
    /// call took it.
    pub async fn reclaim_fire(
        &self,
        schedule_id: String,
        fire_at: i64,
        from: &'static str,
        claimed_at: Option<i64>,
        me: String,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let fire = schedule_fires::table
                .find((&schedule_id, fire_at))
                .filter(schedule_fires::status.eq(from));
            let set = (
                schedule_fires::status.eq("claimed"),
                schedule_fires::claimed_by.eq(&me),
                schedule_fires::claimed_at.eq(crate::domain::Micros::now().0),
            );
            let n = match claimed_at {
                Some(at) => diesel::update(fire.filter(schedule_fires::claimed_at.eq(at)))
                    .set(set)
                    .execute(conn)?,
                None => diesel::update(fire).set(set).execute(conn)?,
            };
            Ok(n == 1)
        })
        .await
    }

    /// Fires still `claimed` that were claimed before `before`.
    pub async fn stale_fires(&self, before: i64) -> Result<Vec<FireRow>, StoreError> {
        self.run(move |conn| {
            Ok(schedule_fires::table
                .filter(schedule_fires::status.eq("claimed"))
                .filter(schedule_fires::claimed_at.lt(before))
                .select(FireRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// The run a claimed fire launches: `candidate` unless it already names one. `None` when
    /// the fire is no longer claimed.
    pub async fn name_fire_run(
        &self,
        schedule_id: String,
        fire_at: i64,
        candidate: String,
    ) -> Result<Option<String>, StoreError> {
        self.run(move |conn| {
            let fire = schedule_fires::table
                .find((&schedule_id, fire_at))
                .filter(schedule_fires::status.eq("claimed"));
            diesel::update(fire.filter(schedule_fires::run_id.is_null()))
                .set(schedule_fires::run_id.eq(&candidate))
                .execute(conn)?;
            Ok(fire
                .select(schedule_fires::run_id)
                .first::<Option<String>>(conn)
                .optional()?
                .flatten())
        })
        .await
    }

    /// Whether a run with this id exists.
    pub async fn run_exists(&self, id: String) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let n: i64 = runs::table.find(&id).count().get_result(conn)?;
            Ok(n > 0)
        })
        .await
    }

    /// Move a schedule's cursor forward to `to` (never back).
    pub async fn advance_cursor(&self, id: String, to: i64) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::update(
                schedules::table
                    .find(&id)
                    .filter(schedules::cursor_at.lt(to)),
            )
            .set(schedules::cursor_at.eq(to))
            .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// The last `n` fires of a schedule, newest first.
    pub async fn schedule_fires(&self, id: String, n: i64) -> Result<Vec<FireRow>, StoreError> {
        self.run(move |conn| {
            Ok(schedule_fires::table
                .filter(schedule_fires::schedule_id.eq(&id))
                .order(schedule_fires::fire_at.desc())
                .limit(n)
                .select(FireRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// The schedule's runs that have not ended, and its waiting (queued) fire, if any.
    pub async fn schedule_activity(
        &self,
        id: String,
    ) -> Result<(Vec<String>, Option<FireRow>), StoreError> {
        use crate::domain::RunStatus;
        self.run(move |conn| {
            let launched = schedule_fires::table
                .filter(schedule_fires::schedule_id.eq(&id))
                .filter(schedule_fires::status.eq("launched"))
                .select(schedule_fires::run_id);
            let going: Vec<String> = runs::table
                .filter(runs::id.nullable().eq_any(launched))
                .filter(runs::status.eq_any([RunStatus::Queued, RunStatus::Running]))
                .select(runs::id)
                .load(conn)?;
            let queued = schedule_fires::table
                .filter(schedule_fires::schedule_id.eq(&id))
                .filter(schedule_fires::status.eq("queued"))
                .order(schedule_fires::fire_at.asc())
                .select(FireRow::as_select())
                .first(conn)
                .optional()?;
            Ok((going, queued))
        })
        .await
    }
}
