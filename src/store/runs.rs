//! Queries on `runs` and `run_hosts`: a run, its hosts with their jobs, and the one
//! transaction that advances it ([`Store::advance_run`]).
//!
//! Advancing locks the run's row (`FOR UPDATE` on PostgreSQL, the write lock of `BEGIN
//! IMMEDIATE` on SQLite), reads every host with its job's status, asks the pure planner
//! ([`crate::domain::plan`]) what to do, and in the same transaction inserts the admitted
//! hosts' jobs, marks skipped hosts and records the run's end. Any process may call it at
//! any time: a host is admitted only from `pending`, so never twice.

use std::collections::BTreeMap;

use diesel::prelude::*;

use super::jobs::{JobRow, new_job_row};
use super::schema::{jobs, run_hosts, runs, servers};
use super::{Store, StoreError};
use crate::domain::{
    Amount, Failure, HostState, HostStatus, JobSpec, JobStatus, Micros, RunStatus, Strategy, plan,
};
use crate::secrets::{Keyring, SecretsError};

/// A `runs` row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = runs)]
pub struct RunRow {
    /// UUID (v7: ordered by creation).
    pub id: String,
    /// The job every host runs ([`JobSpec`] as JSON).
    pub spec: String,
    /// The targets as given, as JSON.
    pub targets: String,
    /// `strategy.batch` (`2`, `25%`), none: all at once.
    pub batch: Option<String>,
    /// `strategy.canary`.
    pub canary: i32,
    /// `strategy.max_failures` (`0`, `10%`).
    pub max_failures: String,
    /// `strategy.keep_going`.
    pub keep_going: bool,
    /// Where the run is in its life.
    pub status: RunStatus,
    /// A cancel was asked for: nothing more starts.
    pub cancel_requested: bool,
    /// The run this one reruns.
    pub rerun_of: Option<String>,
    /// Who started it.
    pub actor: String,
    /// Creation time.
    pub created_at: i64,
    /// When its first host was admitted.
    pub started_at: Option<i64>,
    /// When its last host ended.
    pub finished_at: Option<i64>,
    /// The template that launched it.
    pub template_id: Option<String>,
    /// The values of its template's parameters that are not secret, as a JSON object.
    pub parameters: Option<String>,
    /// The secret parameters' environment, sealed (never shown).
    pub sealed_env: Option<Vec<u8>>,
}

impl RunRow {
    /// The job every host runs.
    pub fn job_spec(&self) -> JobSpec {
        serde_json::from_str(&self.spec).unwrap_or_else(|_| JobSpec {
            kind: Default::default(),
            command: None,
            args: None,
            script: None,
            shell: None,
            timeout_secs: 1,
            env: Default::default(),
            cwd: None,
            idempotency_key: None,
            retry_safe: false,
        })
    }

    /// The strategy as stored (a value the code cannot read counts as its default).
    pub fn strategy(&self) -> Strategy {
        let amount = |raw: &str| Amount::parse("strategy", raw).ok();
        Strategy {
            batch: self.batch.as_deref().and_then(amount),
            canary: u32::try_from(self.canary).unwrap_or(0),
            max_failures: amount(&self.max_failures).unwrap_or(Amount::Count(0)),
            keep_going: self.keep_going,
        }
    }
}

/// The secret environment of a run or a job, sealed for `aad` (`runs/<id>/env`,
/// `jobs/<id>/env`): the key version (4 bytes, big-endian), then the JSON object sealed
/// under the keyring's current key.
pub(crate) fn seal_env(
    keyring: &Keyring,
    aad: &str,
    env: &BTreeMap<String, String>,
) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(env).unwrap_or_default();
    let (version, sealed) = keyring.seal(aad, &json)?;
    let mut out = version.to_be_bytes().to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Open what [`seal_env`] sealed; nothing sealed is an empty environment.
pub(crate) fn open_env(
    keyring: &Keyring,
    aad: &str,
    sealed: Option<&[u8]>,
) -> Result<BTreeMap<String, String>, StoreError> {
    let Some(sealed) = sealed else {
        return Ok(BTreeMap::new());
    };
    let corrupt = |v| StoreError::Secrets(SecretsError::Corrupt(v));
    let (version, body) = sealed.split_first_chunk::<4>().ok_or(corrupt(0))?;
    let version = i32::from_be_bytes(*version);
    if version <= 0 {
        return Err(SecretsError::Unsealed(aad.to_string()).into());
    }
    let plain = keyring.open(version, aad, body)?;
    serde_json::from_slice(&plain).map_err(|_| corrupt(version))
}

impl Store {
    /// The secret environment of a job (its template's secret parameters), opened.
    pub fn job_secret_env(&self, job: &JobRow) -> Result<BTreeMap<String, String>, StoreError> {
        let aad = format!("jobs/{}/env", job.id);
        open_env(&self.keyring, &aad, job.sealed_env.as_deref())
    }

    /// The secret environment of a run, opened (for a rerun).
    pub fn run_secret_env(&self, run: &RunRow) -> Result<BTreeMap<String, String>, StoreError> {
        let aad = format!("runs/{}/env", run.id);
        open_env(&self.keyring, &aad, run.sealed_env.as_deref())
    }

    /// Seal a run's secret environment (before the run is inserted).
    pub fn seal_run_env(
        &self,
        run_id: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, StoreError> {
        seal_env(&self.keyring, &format!("runs/{run_id}/env"), env)
    }
}

/// A `run_hosts` row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = run_hosts)]
pub struct RunHostRow {
    /// The run.
    pub run_id: String,
    /// Order of admission, from 0.
    pub position: i32,
    /// The server.
    pub server_id: String,
    /// Its name when the run was created.
    pub server_name: String,
    /// `pending`, `admitted` or `skipped`.
    pub state: String,
    /// The host's job, once admitted.
    pub job_id: Option<String>,
}

const PENDING: &str = "pending";
const ADMITTED: &str = "admitted";
const SKIPPED: &str = "skipped";

/// A host of a run with its job (once admitted).
#[derive(Debug, Clone)]
pub struct RunHost {
    /// The host's row.
    pub host: RunHostRow,
    /// Its job, once admitted.
    pub job: Option<JobRow>,
}

impl RunHost {
    /// What the planner needs to know of it.
    pub fn state(&self) -> HostState {
        match (&self.job, self.host.state.as_str()) {
            (Some(job), _) => HostState::Job(job.status),
            (None, SKIPPED) => HostState::Skipped,
            (None, _) => HostState::Pending,
        }
    }

    /// Its status as the API shows it.
    pub fn status(&self) -> HostStatus {
        match self.state() {
            HostState::Pending => HostStatus::Queued,
            HostState::Skipped => HostStatus::Skipped,
            HostState::Job(s) => match s {
                JobStatus::Queued => HostStatus::Queued,
                JobStatus::Running => HostStatus::Running,
                JobStatus::Completed => HostStatus::Completed,
                JobStatus::Failed => HostStatus::Failed,
                JobStatus::TimedOut => HostStatus::TimedOut,
                JobStatus::Canceled => HostStatus::Canceled,
            },
        }
    }

    /// Why it counts as a failure: a failed job whose command never started (no process
    /// group was learnt, no exit code) was unreachable.
    pub fn failure(&self) -> Option<Failure> {
        let job = self.job.as_ref()?;
        match job.status {
            JobStatus::TimedOut => Some(Failure::TimedOut),
            JobStatus::Failed if job.remote_pgid.is_none() && job.exit_code.is_none() => {
                Some(Failure::Unreachable)
            }
            JobStatus::Failed => Some(Failure::Failed),
            _ => None,
        }
    }
}

/// A run with its hosts, in order.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run's row.
    pub row: RunRow,
    /// Its hosts, by position.
    pub hosts: Vec<RunHost>,
}

/// What one advance did.
#[derive(Debug, Default)]
pub struct Advanced {
    /// Jobs made for the hosts admitted now (queued: to announce).
    pub admitted: Vec<JobRow>,
    /// The run, when this advance ended it.
    pub finished: Option<RunRow>,
}

/// List filters and paging.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs with one of these statuses (empty: any).
    pub statuses: Vec<RunStatus>,
    /// Page size, 1 to 1000.
    pub limit: i64,
    /// Runs older than this one (the previous page's `next_cursor`).
    pub before: Option<String>,
    /// Only runs every host of which is one of these servers (a scoped caller's reach;
    /// `None`: any).
    pub within: Option<Vec<String>>,
}

/// The hosts of the runs `ids`, each with its job, grouped by run in position order.
fn hosts_of(
    conn: &mut super::DbConnection,
    ids: &[String],
) -> Result<Vec<(String, RunHost)>, StoreError> {
    let rows: Vec<(RunHostRow, Option<JobRow>)> = run_hosts::table
        .left_join(jobs::table.on(jobs::id.nullable().eq(run_hosts::job_id)))
        .filter(run_hosts::run_id.eq_any(ids))
        .order((run_hosts::run_id.asc(), run_hosts::position.asc()))
        .select((RunHostRow::as_select(), Option::<JobRow>::as_select()))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(host, job)| (host.run_id.clone(), RunHost { host, job }))
        .collect())
}

fn load(conn: &mut super::DbConnection, row: RunRow) -> Result<Run, StoreError> {
    let hosts = hosts_of(conn, std::slice::from_ref(&row.id))?
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    Ok(Run { row, hosts })
}

/// The run's row, locked until the transaction ends (on SQLite the transaction holds the
/// write lock already).
fn find(conn: &mut super::DbConnection, id: &str) -> Result<RunRow, StoreError> {
    let row = if let super::DbConnection::Pg(c) = conn {
        let query = runs::table.find(id).select(RunRow::as_select());
        query.for_update().first(c).optional()?
    } else {
        let query = runs::table.find(id).select(RunRow::as_select());
        query.first(conn).optional()?
    };
    row.ok_or(StoreError::NotFound)
}

/// Admit, skip and end what the plan says, until it says nothing more (a host whose server
/// has gone fails at once, which may let the next one in).
fn advance(
    conn: &mut super::DbConnection,
    keyring: &Keyring,
    id: &str,
) -> Result<Advanced, StoreError> {
    let mut done = Advanced::default();
    let row = find(conn, id)?;
    if row.status.is_terminal() {
        return Ok(done);
    }
    let strategy = row.strategy();
    let spec = row.job_spec();
    let secret_env = open_env(
        keyring,
        &format!("runs/{id}/env"),
        row.sealed_env.as_deref(),
    )?;
    loop {
        let run = load(conn, row.clone())?;
        let states: Vec<HostState> = run.hosts.iter().map(RunHost::state).collect();
        let plan = plan(&states, &strategy, row.cancel_requested);
        let now = Micros::now().0;
        let mut changed = false;
        for &i in &plan.skip {
            let host = &run.hosts[i].host;
            changed |= diesel::update(
                run_hosts::table
                    .find((&host.run_id, host.position))
                    .filter(run_hosts::state.eq(PENDING)),
            )
            .set(run_hosts::state.eq(SKIPPED))
            .execute(conn)?
                == 1;
        }
        for &i in &plan.admit {
            let host = &run.hosts[i].host;
            let active: Option<bool> = servers::table
                .find(&host.server_id)
                .select(servers::is_active)
                .first(conn)
                .optional()?;
            let mut job = new_job_row(spec.clone(), host.server_id.clone(), None);
            job.run_id = Some(row.id.clone());
            if !secret_env.is_empty() {
                let aad = format!("jobs/{}/env", job.id);
                job.sealed_env = Some(seal_env(keyring, &aad, &secret_env)?);
            }
            if active != Some(true) {
                let why = if active.is_none() {
                    "was deleted"
                } else {
                    "is not active"
                };
                job.status = JobStatus::Failed;
                job.error = Some(format!(
                    "server {} ({}) {why}: the host was not run",
                    host.server_name, host.server_id
                ));
                job.finished_at = Some(now);
            }
            let n = diesel::update(
                run_hosts::table
                    .find((&host.run_id, host.position))
                    .filter(run_hosts::state.eq(PENDING)),
            )
            .set((
                run_hosts::state.eq(ADMITTED),
                run_hosts::job_id.eq(Some(&job.id)),
            ))
            .execute(conn)?;
            if n == 1 {
                diesel::insert_into(jobs::table)
                    .values(&job)
                    .execute(conn)?;
                if job.status != JobStatus::Queued {
                    super::outbox::job_ended(conn, &job)?;
                }
                changed = true;
                if job.status == JobStatus::Queued {
                    done.admitted.push(job);
                }
            }
        }
        if !plan.admit.is_empty() && row.status == RunStatus::Queued {
            diesel::update(
                runs::table
                    .find(id)
                    .filter(runs::status.eq(RunStatus::Queued)),
            )
            .set((
                runs::status.eq(RunStatus::Running),
                runs::started_at.eq(Some(now)),
            ))
            .execute(conn)?;
        }
        if let Some(end) = plan.finished {
            diesel::update(runs::table.find(id))
                .set((runs::status.eq(end), runs::finished_at.eq(Some(now))))
                .execute(conn)?;
            let finished = find(conn, id)?;
            super::outbox::run_finished(conn, &finished)?;
            done.finished = Some(finished);
            return Ok(done);
        }
        if !changed {
            return Ok(done);
        }
    }
}

impl Store {
    /// Insert a run and its hosts (`(server id, server name)`, in admission order), queued.
    pub async fn insert_run(
        &self,
        row: RunRow,
        hosts: Vec<(String, String)>,
    ) -> Result<Run, StoreError> {
        self.run(move |conn| {
            super::write_tx(conn, |conn| {
                diesel::insert_into(runs::table)
                    .values(&row)
                    .execute(conn)?;
                let rows: Vec<RunHostRow> = (hosts.into_iter().enumerate())
                    .map(|(i, (server_id, server_name))| RunHostRow {
                        run_id: row.id.clone(),
                        position: i32::try_from(i).unwrap_or(i32::MAX),
                        server_id,
                        server_name,
                        state: PENDING.into(),
                        job_id: None,
                    })
                    .collect();
                // Row by row: diesel's SQLite batch insert opens a transaction of its own.
                for host in &rows {
                    diesel::insert_into(run_hosts::table)
                        .values(host)
                        .execute(conn)?;
                }
                load(conn, row)
            })
        })
        .await
    }

    /// One run with its hosts.
    pub async fn get_run(&self, id: uuid::Uuid) -> Result<Run, StoreError> {
        self.run(move |conn| {
            let row = runs::table
                .find(id.to_string())
                .select(RunRow::as_select())
                .first(conn)
                .optional()?
                .ok_or(StoreError::NotFound)?;
            load(conn, row)
        })
        .await
    }

    /// Runs, newest first, with the id to pass as `before` for the next page.
    pub async fn list_runs(
        &self,
        filter: RunFilter,
    ) -> Result<(Vec<Run>, Option<String>), StoreError> {
        self.run(move |conn| {
            let mut q = runs::table.select(RunRow::as_select()).into_boxed();
            if !filter.statuses.is_empty() {
                q = q.filter(runs::status.eq_any(filter.statuses));
            }
            if let Some(before) = filter.before {
                q = q.filter(runs::id.lt(before));
            }
            if let Some(servers) = filter.within {
                let outside = run_hosts::table
                    .filter(run_hosts::run_id.eq(runs::id))
                    .filter(run_hosts::server_id.ne_all(servers));
                q = q.filter(diesel::dsl::not(diesel::dsl::exists(outside)));
            }
            let limit = filter.limit.max(1);
            let mut rows: Vec<RunRow> = q.order(runs::id.desc()).limit(limit + 1).load(conn)?;
            let next = if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
                rows.last().map(|r| r.id.clone())
            } else {
                None
            };
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            let mut hosts = hosts_of(conn, &ids)?;
            let runs = rows
                .into_iter()
                .map(|row| {
                    let (mine, rest): (Vec<_>, Vec<_>) =
                        hosts.drain(..).partition(|(run, _)| *run == row.id);
                    hosts = rest;
                    let hosts = mine.into_iter().map(|(_, h)| h).collect();
                    Run { row, hosts }
                })
                .collect();
            Ok((runs, next))
        })
        .await
    }

    /// The ids of runs not yet ended, oldest first.
    pub async fn active_run_ids(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        self.run(move |conn| {
            Ok(runs::table
                .filter(runs::status.eq_any([RunStatus::Queued, RunStatus::Running]))
                .order(runs::id.asc())
                .limit(limit)
                .select(runs::id)
                .load(conn)?)
        })
        .await
    }

    /// Advance a run as its strategy says, in one transaction on its locked row.
    pub async fn advance_run(&self, id: String) -> Result<Advanced, StoreError> {
        let keyring = self.keyring.clone();
        self.run(move |conn| super::write_tx(conn, |conn| advance(conn, &keyring, &id)))
            .await
    }

    /// Ask a run to stop: nothing more starts (the caller cancels its running jobs). `None`
    /// when it had already ended.
    pub async fn request_run_cancel(&self, id: uuid::Uuid) -> Result<Option<Run>, StoreError> {
        self.run(move |conn| {
            super::write_tx(conn, |conn| {
                let row = find(conn, &id.to_string())?;
                if row.status.is_terminal() {
                    return Ok(None);
                }
                diesel::update(runs::table.find(&row.id))
                    .set(runs::cancel_requested.eq(true))
                    .execute(conn)?;
                let row = find(conn, &row.id)?;
                load(conn, row).map(Some)
            })
        })
        .await
    }
}
