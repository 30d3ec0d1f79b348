//! Retention: what a prune selects and deletes, one step at a time, and the lease that lets
//! one process at a time prune.
//!
//! A prune walks each table with a [`Cursor`], oldest first. A step selects the next rows
//! past the cursor (reads only: they take no lock), then deletes what it selected in one
//! short write transaction of at most `batch` rows, and returns the cursor to go on from. A
//! dry run takes the same steps and counts instead of deleting, so it cannot disagree with
//! a real prune over what the selections are.
//!
//! - `job_output`: the chunks of jobs that finished before the output cut; the job is marked
//!   (`output_pruned_at`) in the transaction that deletes its last chunks. A job with more
//!   chunks than a batch loses them over several steps.
//! - `jobs`: finished jobs whose end is before the cut of their status (failed and timed-out
//!   jobs have their own), server by server, except each server's newest
//!   `keep_last_per_server`; never a queued or running job. A job of a run goes only with
//!   the whole run, when the run has ended and every job of it may go (so no run is left
//!   with a host whose job is gone); its chunks go first, in batches, then the jobs, the
//!   run's hosts and the run in one transaction.
//! - `runs`: ended runs with no job at all (every host skipped), before the runs cut.
//! - `audit_log`: records written before the audit cut.
//! - `webhook_deliveries`: delivered or failed deliveries made before the cut; never a
//!   pending one.
//!
//! Left as they are: a schedule's fires keep the id of a run that was pruned (the fire is
//! history; the run is then 404), audit records and deliveries keep the ids they name.

use std::collections::HashMap;

use diesel::dsl::count_star;
use diesel::prelude::*;

use super::schema::{
    audit_log, job_output, jobs, retention_lease, run_hosts, runs, webhook_deliveries,
};
use super::{DbConnection, Store, StoreError, write_tx};
use crate::domain::{Cuts, JobStatus, Micros, PruneCounts, PruneTable, RunStatus};

/// The lease's row.
const LEASE: &str = "prune";
/// Candidate jobs an output step looks at.
const JOBS_PER_STEP: i64 = 64;
/// Pages one incremental vacuum step gives back (4 MiB of 4 KiB pages).
const VACUUM_PAGES: i64 = 1024;

/// Where a table's walk has got to: start with [`Cursor::default`], go on with the one a
/// [`Step`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(Position);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Position {
    /// Nothing walked yet.
    #[default]
    Start,
    /// Past the row with this time and id.
    At(i64, String),
    /// On a server's jobs (the jobs walk): past `after`; jobs from `kept_from` on are the
    /// server's newest, kept (`None`: no floor).
    Server {
        id: String,
        after: String,
        kept_from: Option<String>,
    },
}

/// What one step did.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Rows deleted (or, in a dry run, that would be), per table.
    pub counts: PruneCounts,
    /// Where to go on from; `None` when the table is done.
    pub next: Option<Cursor>,
}

impl Step {
    /// A step that did `n` rows of `table` and goes on past the row at `(at, id)`.
    fn past(table: PruneTable, n: u64, at: i64, id: String) -> Step {
        let mut step = Step::default();
        step.counts.add(table, n);
        step.next = Some(Cursor(Position::At(at, id)));
        step
    }
}

/// `q` without the rows up to `cursor`, in the `(at, id)` order a walk goes in.
macro_rules! past {
    ($q:expr, $cursor:expr, $at:expr, $id:expr) => {
        match $cursor {
            Position::At(at, id) => $q.filter($at.gt(*at).or($at.eq(*at).and($id.gt(id.clone())))),
            _ => $q,
        }
    };
}

/// The statuses of a job that has ended.
fn ended() -> Vec<JobStatus> {
    JobStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect()
}

/// The statuses of a run that has ended.
fn run_ended() -> Vec<RunStatus> {
    RunStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect()
}

/// The cut a job of `status` is deleted before, if any.
fn job_cut(cuts: &Cuts, status: JobStatus) -> Option<i64> {
    match status {
        JobStatus::Completed | JobStatus::Canceled => cuts.jobs,
        JobStatus::Failed | JobStatus::TimedOut => cuts.failed_jobs,
        JobStatus::Queued | JobStatus::Running => None,
    }
}

/// Whether a job of `status` that finished at `finished_at` is old enough to go.
fn job_old_enough(cuts: &Cuts, status: JobStatus, finished_at: Option<i64>) -> bool {
    matches!((job_cut(cuts, status), finished_at), (Some(cut), Some(f)) if f < cut)
}

/// Whether the output step covers a job: its output is deleted there, before the jobs step.
fn output_covers(cuts: &Cuts, finished_at: Option<i64>, pruned: bool, bytes: i64) -> bool {
    matches!((cuts.output, finished_at), (Some(cut), Some(f)) if f < cut && !pruned && bytes > 0)
}

/// Chunks per job of `ids` (a job with none is absent).
fn chunks_of(conn: &mut DbConnection, ids: &[String]) -> QueryResult<HashMap<String, i64>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64)> = job_output::table
        .filter(job_output::job_id.eq_any(ids))
        .group_by(job_output::job_id)
        .select((job_output::job_id, count_star()))
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

/// Delete the oldest `n` chunks of job `id` (all of them when it has `n` or fewer).
fn delete_first_chunks(conn: &mut DbConnection, id: &str, n: i64) -> QueryResult<u64> {
    let last: Option<i64> = job_output::table
        .filter(job_output::job_id.eq(id))
        .order(job_output::seq.asc())
        .offset(n.max(1) - 1)
        .limit(1)
        .select(job_output::seq)
        .first(conn)
        .optional()?;
    let mine = job_output::table.filter(job_output::job_id.eq(id));
    let deleted = match last {
        Some(last) => diesel::delete(mine.filter(job_output::seq.le(last))).execute(conn)?,
        None => diesel::delete(mine).execute(conn)?,
    };
    Ok(deleted as u64)
}

/// The output step: the chunks of jobs that finished before `cut`.
fn output_step(
    conn: &mut DbConnection,
    cut: i64,
    batch: i64,
    cursor: &Position,
    dry_run: bool,
) -> Result<Step, StoreError> {
    let q = jobs::table
        .filter(jobs::status.eq_any(ended()))
        .filter(jobs::finished_at.lt(cut))
        .filter(jobs::output_pruned_at.is_null())
        .filter(jobs::output_bytes.gt(0))
        .select((jobs::finished_at, jobs::id))
        .order((jobs::finished_at.asc(), jobs::id.asc()))
        .limit(JOBS_PER_STEP)
        .into_boxed();
    let q = past!(q, cursor, jobs::finished_at, jobs::id);
    let candidates: Vec<(Option<i64>, String)> = q.load(conn)?;
    let Some((last_at, last_id)) = candidates.last().cloned() else {
        return Ok(Step::default());
    };
    if dry_run {
        let ids: Vec<String> = candidates.iter().map(|(_, id)| id.clone()).collect();
        let n: i64 = chunks_of(conn, &ids)?.values().sum();
        let at = last_at.unwrap_or(0);
        return Ok(Step::past(PruneTable::Output, n as u64, at, last_id));
    }
    let mut step = Step::default();
    // The jobs whose chunks fit in the batch, counted one by one until it is full (a job
    // with more than a whole batch loses its oldest `batch` now, the rest in later steps).
    let (mut budget, mut whole, mut part) = (batch, Vec::new(), None);
    for (at, id) in &candidates {
        let n = chunks_of(conn, std::slice::from_ref(id))?
            .get(id)
            .copied()
            .unwrap_or(0);
        if n > budget {
            if whole.is_empty() {
                part = Some(id.clone());
            }
            break;
        }
        budget -= n;
        whole.push((at.unwrap_or(0), id.clone()));
    }
    let now = Micros::now().0;
    let deleted = write_tx(conn, |conn| {
        let mut deleted = 0u64;
        if let Some(id) = &part {
            deleted += delete_first_chunks(conn, id, batch)?;
        }
        for (_, id) in &whole {
            let mine = job_output::table.filter(job_output::job_id.eq(id));
            deleted += diesel::delete(mine).execute(conn)? as u64;
            diesel::update(
                jobs::table
                    .find(id)
                    .filter(jobs::output_pruned_at.is_null()),
            )
            .set(jobs::output_pruned_at.eq(Some(now)))
            .execute(conn)?;
        }
        Ok::<_, StoreError>(deleted)
    })?;
    step.counts.add(PruneTable::Output, deleted);
    step.next = Some(match whole.last() {
        Some((at, id)) => Cursor(Position::At(*at, id.clone())),
        None => Cursor(cursor.clone()),
    });
    Ok(step)
}

/// The first server (in id order) with jobs after `after`, with where its kept jobs start.
fn next_server(
    conn: &mut DbConnection,
    after: Option<&str>,
    keep_last: u32,
) -> QueryResult<Option<Position>> {
    let mut q = jobs::table
        .select(diesel::dsl::min(jobs::server_id))
        .into_boxed();
    if let Some(after) = after {
        q = q.filter(jobs::server_id.gt(after.to_string()));
    }
    let Some(id) = q.first::<Option<String>>(conn)? else {
        return Ok(None);
    };
    let kept_from = kept_from(conn, &id, keep_last)?;
    Ok(Some(Position::Server {
        id,
        after: String::new(),
        kept_from,
    }))
}

/// The id from which server `server`'s jobs are its newest `keep_last` (`None`: no floor;
/// `""` when it has no more than that many: all are kept, every id being above `""`).
fn kept_from(conn: &mut DbConnection, server: &str, keep_last: u32) -> QueryResult<Option<String>> {
    if keep_last == 0 {
        return Ok(None);
    }
    let nth: Option<String> = jobs::table
        .filter(jobs::server_id.eq(server))
        .order(jobs::id.desc())
        .offset(i64::from(keep_last) - 1)
        .limit(1)
        .select(jobs::id)
        .first(conn)
        .optional()?;
    Ok(Some(nth.unwrap_or_default()))
}

/// What the jobs step deletes together: a job of its own, or a run with all its jobs.
#[derive(Debug)]
struct Unit {
    /// The run, if the jobs are a run's.
    run: Option<String>,
    /// The jobs.
    jobs: Vec<String>,
    /// The place in the candidates of the last one this unit covers.
    upto: usize,
}

/// A job as the jobs step weighs it.
type Candidate = (String, JobStatus, Option<i64>, Option<String>);

/// Whether run `run` may go whole, judged from server `server`'s walk: it has ended, every
/// job of it is old enough and not among its server's kept jobs, and `server` is the first
/// (smallest id) of its jobs' servers, whose walk deletes it (so no other walk counts it).
/// The jobs, and whether the run's row is there (a job may outlive its run's row).
fn run_may_go(
    conn: &mut DbConnection,
    cuts: &Cuts,
    run: &str,
    server: &str,
    kept: &mut HashMap<String, Option<String>>,
) -> QueryResult<Option<(Vec<String>, bool)>> {
    let status: Option<RunStatus> = runs::table
        .find(run)
        .select(runs::status)
        .first(conn)
        .optional()?;
    if status.is_some_and(|s| !s.is_terminal()) {
        return Ok(None);
    }
    let mine: Vec<(String, String, JobStatus, Option<i64>)> = jobs::table
        .filter(jobs::run_id.eq(run))
        .select((jobs::id, jobs::server_id, jobs::status, jobs::finished_at))
        .load(conn)?;
    if mine.iter().map(|(_, s, _, _)| s.as_str()).min() != Some(server) {
        return Ok(None);
    }
    for (id, server_id, status, finished_at) in &mine {
        if !job_old_enough(cuts, *status, *finished_at) {
            return Ok(None);
        }
        let floor = match kept.get(server_id) {
            Some(f) => f.clone(),
            None => {
                let f = kept_from(conn, server_id, cuts.keep_last_per_server)?;
                kept.insert(server_id.clone(), f.clone());
                f
            }
        };
        if floor.is_some_and(|f| id.as_str() >= f.as_str()) {
            return Ok(None);
        }
    }
    let ids = mine.into_iter().map(|(id, ..)| id).collect();
    Ok(Some((ids, status.is_some())))
}

/// The jobs step: one server's next jobs.
fn jobs_step(
    conn: &mut DbConnection,
    cuts: &Cuts,
    cursor: &Position,
    dry_run: bool,
) -> Result<Step, StoreError> {
    let Some(before) = cuts.jobs_before() else {
        return Ok(Step::default());
    };
    let keep_last = cuts.keep_last_per_server;
    let position = match cursor {
        Position::Server { .. } => cursor.clone(),
        _ => match next_server(conn, None, keep_last)? {
            Some(p) => p,
            None => return Ok(Step::default()),
        },
    };
    let Position::Server {
        id: server,
        after,
        kept_from,
    } = &position
    else {
        return Ok(Step::default());
    };
    let mut q = jobs::table
        .filter(jobs::server_id.eq(server))
        .filter(jobs::id.gt(after))
        .filter(jobs::created_at.lt(before))
        .select((jobs::id, jobs::status, jobs::finished_at, jobs::run_id))
        .order(jobs::id.asc())
        .limit(cuts.batch)
        .into_boxed();
    if let Some(floor) = kept_from {
        q = q.filter(jobs::id.lt(floor.clone()));
    }
    let candidates: Vec<Candidate> = q.load(conn)?;
    if candidates.is_empty() {
        let next = next_server(conn, Some(server), keep_last)?;
        return Ok(Step {
            counts: PruneCounts::default(),
            next: next.map(Cursor),
        });
    }
    // The units, in the candidates' order.
    let mut units: Vec<Unit> = Vec::new();
    let mut runs_seen: HashMap<String, bool> = HashMap::new();
    let mut kept: HashMap<String, Option<String>> =
        HashMap::from([(server.clone(), kept_from.clone())]);
    for (i, (id, status, finished_at, run)) in candidates.iter().enumerate() {
        match run {
            None if job_old_enough(cuts, *status, *finished_at) => units.push(Unit {
                run: None,
                jobs: vec![id.clone()],
                upto: i,
            }),
            None => {}
            Some(run) if !runs_seen.contains_key(run) => {
                let whole = run_may_go(conn, cuts, run, server, &mut kept)?;
                runs_seen.insert(run.clone(), whole.is_some());
                if let Some((jobs, row)) = whole {
                    units.push(Unit {
                        run: row.then(|| run.clone()),
                        jobs,
                        upto: i,
                    });
                }
            }
            Some(_) => {}
        }
    }
    let last = candidates.len() - 1;
    let at = |upto: usize| Position::Server {
        id: server.clone(),
        after: candidates[upto].0.clone(),
        kept_from: kept_from.clone(),
    };
    let mut step = Step::default();
    if dry_run {
        let all: Vec<String> = units.iter().flat_map(|u| u.jobs.clone()).collect();
        let mut chunks = chunks_of(conn, &all)?;
        // Chunks the output step deletes first are not counted twice.
        let covered: Vec<(String, Option<i64>, Option<i64>, i64)> = jobs::table
            .filter(jobs::id.eq_any(&all))
            .select((
                jobs::id,
                jobs::finished_at,
                jobs::output_pruned_at,
                jobs::output_bytes,
            ))
            .load(conn)?;
        for (id, finished_at, pruned, bytes) in covered {
            if output_covers(cuts, finished_at, pruned.is_some(), bytes) {
                chunks.remove(&id);
            }
        }
        for unit in &units {
            step.counts.add(PruneTable::Jobs, unit.jobs.len() as u64);
            step.counts
                .add(PruneTable::Runs, u64::from(unit.run.is_some()));
            let n: i64 = unit.jobs.iter().filter_map(|j| chunks.get(j)).sum();
            step.counts.add(PruneTable::Output, n as u64);
        }
        step.next = Some(Cursor(at(last)));
        return Ok(step);
    }
    // The units that fit in the batch (chunks and jobs), counted one by one until it is
    // full. The first one goes whatever its jobs' number (a run's hosts); if it has more
    // chunks than a whole batch, they go first, over several steps.
    let (mut budget, mut whole, mut cut_down) = (cuts.batch, Vec::new(), None);
    for (k, unit) in units.iter().enumerate() {
        let chunks = chunks_of(conn, &unit.jobs)?;
        let n: i64 = chunks.values().sum();
        if k == 0 && n > budget {
            cut_down = Some(chunks);
            break;
        }
        let cost = n + unit.jobs.len() as i64;
        if k > 0 && cost > budget {
            break;
        }
        budget = budget.saturating_sub(cost);
        whole.push((unit, n));
    }
    step.counts = write_tx(conn, |conn| {
        let mut counts = PruneCounts::default();
        if let Some(chunks) = &cut_down {
            let mut left = cuts.batch;
            for (job, has) in chunks {
                if left == 0 {
                    break;
                }
                let gone = delete_first_chunks(conn, job, left.min(*has))?;
                counts.add(PruneTable::Output, gone);
                left -= (gone as i64).min(left);
            }
        }
        for (unit, n) in &whole {
            if *n > 0 {
                let theirs = job_output::table.filter(job_output::job_id.eq_any(&unit.jobs));
                let gone = diesel::delete(theirs).execute(conn)?;
                counts.add(PruneTable::Output, gone as u64);
            }
            let gone = diesel::delete(
                jobs::table
                    .filter(jobs::id.eq_any(&unit.jobs))
                    .filter(jobs::status.eq_any(ended())),
            )
            .execute(conn)?;
            counts.add(PruneTable::Jobs, gone as u64);
            if let Some(run) = &unit.run {
                diesel::delete(run_hosts::table.filter(run_hosts::run_id.eq(run))).execute(conn)?;
                let gone = diesel::delete(
                    runs::table
                        .find(run)
                        .filter(runs::status.eq_any(run_ended())),
                )
                .execute(conn)?;
                counts.add(PruneTable::Runs, gone as u64);
            }
        }
        Ok::<_, StoreError>(counts)
    })?;
    step.next = Some(Cursor(match (cut_down, whole.last()) {
        // A unit's chunks were cut down: the same place again.
        (Some(_), _) => position.clone(),
        // Every unit went: past every candidate (those between were not to go).
        (None, Some((unit, _))) if units.last().is_some_and(|u| u.upto == unit.upto) => at(last),
        // Past the last unit that went; the next one starts the next step.
        (None, Some((unit, _))) => at(unit.upto),
        // No unit at all: past every candidate.
        (None, None) => at(last),
    }));
    Ok(step)
}

/// The runs some job names.
fn with_jobs() -> diesel::dsl::Select<
    diesel::dsl::Filter<jobs::table, diesel::dsl::IsNotNull<jobs::run_id>>,
    jobs::run_id,
> {
    jobs::table
        .filter(jobs::run_id.is_not_null())
        .select(jobs::run_id)
}

/// The runs step: ended runs with no job, before the runs cut.
fn runs_step(
    conn: &mut DbConnection,
    cut: i64,
    batch: i64,
    cursor: &Position,
    dry_run: bool,
) -> Result<Step, StoreError> {
    let q = runs::table
        .filter(runs::status.eq_any(run_ended()))
        .filter(runs::finished_at.lt(cut))
        .filter(runs::id.nullable().ne_all(with_jobs()))
        .select((runs::finished_at, runs::id))
        .order((runs::finished_at.asc(), runs::id.asc()))
        .limit(batch)
        .into_boxed();
    let q = past!(q, cursor, runs::finished_at, runs::id);
    let rows: Vec<(Option<i64>, String)> = q.load(conn)?;
    let Some((at, last)) = rows.last().cloned() else {
        return Ok(Step::default());
    };
    let ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
    let n = if dry_run {
        ids.len()
    } else {
        write_tx(conn, |conn| {
            diesel::delete(run_hosts::table.filter(run_hosts::run_id.eq_any(&ids)))
                .execute(conn)?;
            let mine = runs::table
                .filter(runs::id.eq_any(&ids))
                .filter(runs::id.nullable().ne_all(with_jobs()));
            diesel::delete(mine).execute(conn)
        })?
    };
    Ok(Step::past(
        PruneTable::Runs,
        n as u64,
        at.unwrap_or(0),
        last,
    ))
}

/// The audit step: records written before `cut`.
fn audit_step(
    conn: &mut DbConnection,
    cut: i64,
    batch: i64,
    cursor: &Position,
    dry_run: bool,
) -> Result<Step, StoreError> {
    let q = audit_log::table
        .filter(audit_log::at.lt(cut))
        .select((audit_log::at, audit_log::id))
        .order((audit_log::at.asc(), audit_log::id.asc()))
        .limit(batch)
        .into_boxed();
    let q = past!(q, cursor, audit_log::at, audit_log::id);
    let rows: Vec<(i64, String)> = q.load(conn)?;
    let Some((at, last)) = rows.last().cloned() else {
        return Ok(Step::default());
    };
    let ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
    let n = if dry_run {
        ids.len()
    } else {
        write_tx(conn, |conn| {
            diesel::delete(audit_log::table.filter(audit_log::id.eq_any(&ids))).execute(conn)
        })?
    };
    Ok(Step::past(PruneTable::Audit, n as u64, at, last))
}

/// The deliveries step: delivered or failed deliveries made before `cut`.
fn deliveries_step(
    conn: &mut DbConnection,
    cut: i64,
    batch: i64,
    cursor: &Position,
    dry_run: bool,
) -> Result<Step, StoreError> {
    const SETTLED: [&str; 2] = ["delivered", "failed"];
    let q = webhook_deliveries::table
        .filter(webhook_deliveries::status.eq_any(SETTLED))
        .filter(webhook_deliveries::created_at.lt(cut))
        .select((webhook_deliveries::created_at, webhook_deliveries::id))
        .order((
            webhook_deliveries::created_at.asc(),
            webhook_deliveries::id.asc(),
        ))
        .limit(batch)
        .into_boxed();
    let q = past!(
        q,
        cursor,
        webhook_deliveries::created_at,
        webhook_deliveries::id
    );
    let rows: Vec<(i64, String)> = q.load(conn)?;
    let Some((at, last)) = rows.last().cloned() else {
        return Ok(Step::default());
    };
    let ids: Vec<String> = rows.into_iter().map(|(_, id)| id).collect();
    let n = if dry_run {
        ids.len()
    } else {
        write_tx(conn, |conn| {
            // Settled when selected; a redelivery since made it pending again: it stays.
            let mine = webhook_deliveries::table
                .filter(webhook_deliveries::id.eq_any(&ids))
                .filter(webhook_deliveries::status.eq_any(SETTLED));
            diesel::delete(mine).execute(conn)
        })?
    };
    Ok(Step::past(PruneTable::Deliveries, n as u64, at, last))
}

/// One value a pragma or an aggregate returns.
#[derive(QueryableByName)]
struct Value {
    /// The value.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    value: i64,
}

/// The one value of `sql` (`SELECT … AS value`) on SQLite.
pub(super) fn sqlite_value(
    conn: &mut diesel::sqlite::SqliteConnection,
    sql: &str,
) -> QueryResult<i64> {
    Ok(diesel::sql_query(sql).get_result::<Value>(conn)?.value)
}

impl Store {
    /// One step of the walk of `table` from `cursor` under `cuts` (see the module's docs).
    /// A table whose cut is not set is done at once.
    pub async fn prune_step(
        &self,
        table: PruneTable,
        cuts: Cuts,
        cursor: Cursor,
        dry_run: bool,
    ) -> Result<Step, StoreError> {
        self.run(move |conn| {
            let at = &cursor.0;
            let batch = cuts.batch.max(1);
            match table {
                PruneTable::Output => match cuts.output {
                    Some(cut) => output_step(conn, cut, batch, at, dry_run),
                    None => Ok(Step::default()),
                },
                PruneTable::Jobs => jobs_step(conn, &cuts, at, dry_run),
                PruneTable::Runs => match cuts.runs {
                    Some(cut) => runs_step(conn, cut, batch, at, dry_run),
                    None => Ok(Step::default()),
                },
                PruneTable::Audit => match cuts.audit {
                    Some(cut) => audit_step(conn, cut, batch, at, dry_run),
                    None => Ok(Step::default()),
                },
                PruneTable::Deliveries => match cuts.deliveries {
                    Some(cut) => deliveries_step(conn, cut, batch, at, dry_run),
                    None => Ok(Step::default()),
                },
            }
        })
        .await
    }

    /// Claim (or renew) the prune lease for `holder` until `until`: one conditional update
    /// that succeeds when the lease is free, expired, or `holder`'s already. `true` when
    /// `holder` holds it now.
    pub async fn claim_prune_lease(
        &self,
        holder: String,
        until: Micros,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let now = Micros::now().0;
            let n = diesel::update(
                retention_lease::table.find(LEASE).filter(
                    retention_lease::held_until
                        .lt(now)
                        .or(retention_lease::holder.eq(&holder)),
                ),
            )
            .set((
                retention_lease::holder.eq(&holder),
                retention_lease::held_until.eq(until.0),
            ))
            .execute(conn)?;
            Ok(n == 1)
        })
        .await
    }

    /// Give the prune lease back, if `holder` holds it.
    pub async fn release_prune_lease(&self, holder: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::update(
                retention_lease::table
                    .find(LEASE)
                    .filter(retention_lease::holder.eq(&holder)),
            )
            .set(retention_lease::held_until.eq(0))
            .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// SQLite: give up to 1024 free pages (4 MiB of 4 KiB pages) back to the file system (an
    /// incremental vacuum, one short write); the free pages left. 0 on PostgreSQL, whose
    /// autovacuum reuses the space.
    pub async fn vacuum_step(&self) -> Result<i64, StoreError> {
        self.run(|conn| {
            let DbConnection::Sqlite(c) = conn else {
                return Ok(0);
            };
            use diesel::connection::SimpleConnection;
            c.batch_execute(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
            Ok(sqlite_value(
                c,
                "SELECT freelist_count AS value FROM pragma_freelist_count()",
            )?)
        })
        .await
    }

    /// SQLite: copy the write-ahead log into the database and truncate it, so the space the
    /// vacuum gave back leaves the files (a checkpoint readers hold up is left for later).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            if let DbConnection::Sqlite(c) = conn {
                use diesel::connection::SimpleConnection;
                c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
            }
            Ok(())
        })
        .await
    }
}
