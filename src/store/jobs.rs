//! Queries on `jobs` and `job_output`. Status changes are conditional updates that only
//! succeed from an allowed source status ([`JobStatus::sources_of`]), so a cancel racing a
//! start or an end leaves exactly one consistent terminal state.

use diesel::prelude::*;

use super::schema::{job_output, jobs, servers};
use super::{Store, StoreError};
use crate::domain::{JobId, JobKind, JobSpec, JobStatus, Micros, OutputStream, ServerId};

/// A `jobs` row. Serialized, it is what a status event carries between processes (without
/// its sealed environment, which never leaves the database).
#[derive(
    Debug,
    Clone,
    Default,
    Queryable,
    QueryableByName,
    Selectable,
    Insertable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    /// UUID (v7: ordered by creation).
    pub id: String,
    /// `command` or `script`.
    pub kind: JobKind,
    /// The program.
    pub command: Option<String>,
    /// Arguments.
    pub args: Option<String>,
    /// Script text.
    pub script: Option<String>,
    /// Interpreter.
    pub shell: Option<String>,
    /// Target server.
    pub server_id: String,
    /// Seconds allowed.
    pub timeout_secs: i64,
    /// Environment, as a JSON object.
    pub env: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Safe to re-run after a lost worker.
    pub retry_safe: bool,
    /// Where it is in its life.
    pub status: JobStatus,
    /// Exit code, once known.
    pub exit_code: Option<i32>,
    /// Why it failed, was canceled or timed out.
    pub error: Option<String>,
    /// Submission time.
    pub created_at: i64,
    /// Start time.
    pub started_at: Option<i64>,
    /// End time.
    pub finished_at: Option<i64>,
    /// The job this one duplicates.
    pub duplicated_from: Option<String>,
    /// The worker that claimed it.
    pub worker: Option<String>,
    /// Lease deadline of the running job.
    pub lease_expires_at: Option<i64>,
    /// Claims so far.
    pub attempts: i32,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Handed to the broker (outbox).
    pub published: bool,
    /// Remote process group.
    pub remote_pgid: Option<i64>,
    /// Output bytes stored.
    pub output_bytes: i64,
    /// Output was cut to the cap.
    pub output_truncated: bool,
    /// Next event sequence number.
    pub next_seq: i64,
    /// The run this job is one host of.
    pub run_id: Option<String>,
    /// The secret parameters' environment of its template, sealed (never shown).
    #[serde(skip)]
    pub sealed_env: Option<Vec<u8>>,
    /// When a prune deleted its output (null: it was not).
    pub output_pruned_at: Option<i64>,
}

impl JobRow {
    /// Where it is in its life.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// The job as a spec, for duplicating or running it.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            kind: self.kind,
            command: self.command.clone(),
            args: self.args.clone(),
            script: self.script.clone(),
            shell: self.shell.clone(),
            timeout_secs: self.timeout_secs,
            env: serde_json::from_str(&self.env).unwrap_or_default(),
            cwd: self.cwd.clone(),
            idempotency_key: None,
            retry_safe: self.retry_safe,
        }
    }
}

/// An output chunk as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_output)]
pub struct ChunkRow {
    /// The job.
    pub job_id: String,
    /// Sequence number, shared by stdout and stderr.
    pub seq: i64,
    /// 0 stdout, 1 stderr.
    pub stream: i16,
    /// The bytes.
    pub data: Vec<u8>,
    /// When it arrived.
    pub at: i64,
}

impl ChunkRow {
    /// Which stream.
    pub fn stream(&self) -> OutputStream {
        OutputStream::from_code(self.stream)
    }
}

/// An output chunk to store: what [`Store::append_output`] takes. Its bytes are shared
/// with the event that published them, not copied.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Sequence number, shared by stdout and stderr.
    pub seq: i64,
    /// 0 stdout, 1 stderr.
    pub stream: i16,
    /// The bytes.
    pub data: std::sync::Arc<[u8]>,
    /// When it arrived.
    pub at: i64,
}

/// A chunk as inserted: a [`NewChunk`] of a job and where it starts in the combined output.
#[derive(Debug, Insertable)]
#[diesel(table_name = job_output)]
struct PlacedChunk<'a> {
    job_id: &'a str,
    seq: i64,
    stream: i16,
    data: &'a [u8],
    at: i64,
    byte_offset: i64,
}

/// How far a job's stored output reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputExtent {
    /// The last chunk's sequence number (-1: none).
    pub last_seq: i64,
    /// The combined output's length in bytes: where the next chunk will start.
    pub end: i64,
}

/// The chunk that holds a byte of the combined output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// Its sequence number.
    pub seq: i64,
    /// Where it starts in the combined output.
    pub byte_offset: i64,
}

/// How far job `id`'s stored output reaches (its last chunk's seq and end).
fn extent_of(conn: &mut super::DbConnection, id: &str) -> QueryResult<OutputExtent> {
    // The largest seq, then its chunk by key: no bound `LIMIT` (see [`find`]).
    let last_seq: Option<i64> = job_output::table
        .filter(job_output::job_id.eq(id))
        .select(diesel::dsl::max(job_output::seq))
        .get_result(conn)?;
    let last: Option<(i64, i64, Vec<u8>)> = match last_seq {
        Some(seq) => job_output::table
            .filter(job_output::job_id.eq(id))
            .filter(job_output::seq.eq(seq))
            .select((job_output::seq, job_output::byte_offset, job_output::data))
            .get_result(conn)
            .optional()?,
        None => None,
    };
    Ok(last.map_or(
        OutputExtent {
            last_seq: -1,
            end: 0,
        },
        |(seq, start, data)| OutputExtent {
            last_seq: seq,
            end: start + data.len() as i64,
        },
    ))
}

/// List filters and paging.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only jobs with one of these statuses (empty: any).
    pub statuses: Vec<JobStatus>,
    /// Only this server.
    pub server_id: Option<ServerId>,
    /// Only the jobs of runs this template launched.
    pub template_id: Option<String>,
    /// Only the jobs (hosts) of this run.
    pub run_id: Option<String>,
    /// Page size, 1 to 1000.
    pub limit: i64,
    /// Jobs older than this one (the previous page's `next_cursor`).
    pub before: Option<JobId>,
    /// Only jobs on these servers (a scoped caller's reach; `None`: any server).
    pub within: Option<Vec<String>>,
}

/// A running job whose worker was lost (its lease expired), as it stood when reaped.
#[derive(Debug, Clone)]
pub struct LostJob {
    /// The job.
    pub id: String,
    /// Its server.
    pub server_id: String,
    /// Its remote process group, if the worker had learnt it.
    pub remote_pgid: Option<i64>,
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued and is now `canceled`.
    CanceledQueued,
    /// The job is running: `cancel_requested` is set for its worker.
    Requested,
    /// The job had already ended.
    AlreadyFinished(JobStatus),
}

/// The end of a job, as its worker records it.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The terminal status.
    pub status: JobStatus,
    /// Exit code, if the command exited.
    pub exit_code: Option<i32>,
    /// Why, for anything but success.
    pub error: Option<String>,
    /// The remote process group, if it is known (a job that ended soon after it started
    /// has it written here, with its end); `None` keeps what is stored.
    pub remote_pgid: Option<i64>,
}

/// A new queued job's row.
pub(super) fn new_job_row(
    spec: JobSpec,
    server_id: String,
    duplicated_from: Option<String>,
) -> JobRow {
    JobRow {
        id: uuid::Uuid::now_v7().to_string(),
        kind: spec.kind,
        command: spec.command,
        args: spec.args,
        script: spec.script,
        shell: spec.shell,
        server_id,
        timeout_secs: spec.timeout_secs,
        env: serde_json::to_string(&spec.env).unwrap_or_else(|_| "{}".into()),
        cwd: spec.cwd,
        idempotency_key: spec.idempotency_key,
        retry_safe: spec.retry_safe,
        status: JobStatus::Queued,
        created_at: Micros::now().0,
        duplicated_from,
        ..JobRow::default()
    }
}

/// The job `id`. `get_result`, not `first`: a unique key needs no `LIMIT`, and SQLite
/// re-prepares a statement whose `LIMIT` is a bound parameter every time it is bound anew
/// (diesel binds `first`'s), which made this lookup cost a parse on every call.
fn find(conn: &mut super::DbConnection, id: &str) -> Result<JobRow, StoreError> {
    jobs::table
        .find(id)
        .select(JobRow::as_select())
        .get_result(conn)
        .optional()?
        .ok_or(StoreError::NotFound)
}

/// The server a new job goes to: by id, or by name (the configured default).
#[derive(Debug, Clone)]
pub enum ServerKey {
    /// A server's id.
    Id(uuid::Uuid),
    /// A server's name.
    Name(String),
}

/// What [`Store::insert_job`] did.
#[derive(Debug)]
pub enum Placement {
    /// The job is stored queued (`created`), or an earlier job had its idempotency key
    /// (`created` false: nothing new was stored). `cap` is its server's
    /// `max_concurrent_jobs`.
    Placed {
        /// The job.
        job: Box<JobRow>,
        /// Whether this call stored it.
        created: bool,
        /// Its server's `max_concurrent_jobs`.
        cap: usize,
    },
    /// The server's row, which the caller's check refused: nothing was stored.
    Refused(Box<super::ServerRow>),
}

/// Where a new job would go: the server `server` names and, when the job has an
/// idempotency key, the job that already holds it.
fn target_of(
    conn: &mut super::DbConnection,
    server: &ServerKey,
    idempotency_key: Option<&str>,
) -> Result<(super::ServerRow, Option<JobRow>), StoreError> {
    let row = match server {
        ServerKey::Id(id) => super::servers::find(conn, &id.to_string())?,
        ServerKey::Name(name) => super::servers::find_by_name(conn, name)?,
    };
    let existing = match idempotency_key {
        Some(key) => jobs::table
            .filter(jobs::idempotency_key.eq(key))
            .select(JobRow::as_select())
            .get_result(conn)
            .optional()?,
        None => None,
    };
    Ok((row, existing))
}

/// Store the job `spec` on `target`, if `accept` takes it and no job holds its idempotency
/// key (`existing`), with the audit record `audit` makes of it.
fn place<A, C>(
    conn: &mut super::DbConnection,
    (target, existing): (super::ServerRow, Option<JobRow>),
    accept: C,
    spec: JobSpec,
    duplicated_from: Option<String>,
    audit: A,
) -> Result<Placement, StoreError>
where
    A: FnOnce(&JobRow) -> super::AuditEntry,
    C: FnOnce(&super::ServerRow) -> bool,
{
    if !accept(&target) {
        return Ok(Placement::Refused(Box::new(target)));
    }
    let cap = usize::try_from(target.max_concurrent_jobs).unwrap_or(1);
    if let Some(job) = existing {
        return Ok(Placement::Placed {
            job: Box::new(job),
            created: false,
            cap,
        });
    }
    let row = new_job_row(spec, target.id, duplicated_from);
    let record = super::audit::row_of(audit(&row));
    let job = diesel::insert_into(jobs::table).values(&row);
    let record = diesel::insert_into(super::schema::audit_log::table).values(&record);
    let stored = match conn {
        // One statement: atomic on its own, one round trip, no `BEGIN` and `COMMIT`.
        super::DbConnection::Pg(c) => super::hot::Both(job, record).execute(c),
        // Inside the writer's transaction.
        super::DbConnection::Sqlite(c) => job.execute(c).and_then(|_| record.execute(c)),
    };
    stored.map_err(|e| {
        super::conflict_on_unique(e, || {
            "a job with this idempotency_key was submitted at the same time; retry".into()
        })
    })?;
    Ok(Placement::Placed {
        job: Box::new(row),
        created: true,
        cap,
    })
}

impl Store {
    /// Insert a queued job on the server `server` names, if `accept` takes that server's
    /// row, and the audit record `audit` makes of the job, in one commit. With an
    /// idempotency key already used, returns the first job and `false` (nothing inserted,
    /// nothing recorded). `NotFound` when no server is so named.
    ///
    /// On SQLite the server's read, the job and its record are one write of the writer's.
    /// On PostgreSQL the server is read, then the job and its record are inserted by one
    /// statement: three round trips fewer than a transaction around the three, and the
    /// same guarantee (under `READ COMMITTED` that transaction's read held no lock on the
    /// server's row either: what a concurrent update commits between the read and the
    /// insert was never seen).
    pub async fn insert_job<A, C>(
        &self,
        spec: JobSpec,
        server: ServerKey,
        accept: C,
        duplicated_from: Option<String>,
        audit: A,
    ) -> Result<Placement, StoreError>
    where
        A: FnOnce(&JobRow) -> super::AuditEntry + Send + 'static,
        C: FnOnce(&super::ServerRow) -> bool + Send + 'static,
    {
        let work = move |conn: &mut super::DbConnection| {
            let target = target_of(conn, &server, spec.idempotency_key.as_deref())?;
            place(conn, target, accept, spec, duplicated_from, audit)
        };
        // No transaction around the read and the insert on PostgreSQL (see above).
        self.write_plain(work).await
    }

    /// How many jobs are in each status, every status listed (0 when none): one `GROUP BY`
    /// on the database every process shares, for `GET /metrics`.
    pub async fn count_jobs_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        self.run(|conn| {
            let rows: Vec<(JobStatus, i64)> = jobs::table
                .group_by(jobs::status)
                .select((jobs::status, diesel::dsl::count_star()))
                .load(conn)?;
            let count = |st| rows.iter().filter(|(s, _)| *s == st).map(|(_, n)| n).sum();
            Ok(JobStatus::ALL
                .into_iter()
                .map(|st| (st, count(st)))
                .collect())
        })
        .await
    }

    /// One job.
    pub async fn get_job(&self, id: uuid::Uuid) -> Result<JobRow, StoreError> {
        self.run(move |conn| find(conn, &id.to_string())).await
    }

    /// The jobs of `ids` that exist, in one query.
    pub async fn get_jobs(&self, ids: Vec<String>) -> Result<Vec<JobRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |conn| {
            Ok(jobs::table
                .filter(jobs::id.eq_any(&ids))
                .select(JobRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// The server of a job that is still queued, and that server's `max_concurrent_jobs`,
    /// in one query (what a worker needs for a delivery that did not name them). `None`
    /// when the job has moved on or its server is gone.
    pub async fn queued_job_route(&self, id: String) -> Result<Option<(String, i32)>, StoreError> {
        self.run(move |conn| {
            Ok(jobs::table
                .inner_join(servers::table.on(servers::id.eq(jobs::server_id)))
                .filter(jobs::id.eq(&id))
                .filter(jobs::status.eq(JobStatus::Queued))
                .select((jobs::server_id, servers::max_concurrent_jobs))
                .get_result(conn)
                .optional()?)
        })
        .await
    }

    /// The `max_concurrent_jobs` of the servers of `ids` that exist, in one query.
    pub async fn server_caps(&self, ids: Vec<String>) -> Result<Vec<(String, i32)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |conn| {
            Ok(servers::table
                .filter(servers::id.eq_any(&ids))
                .select((servers::id, servers::max_concurrent_jobs))
                .load(conn)?)
        })
        .await
    }

    /// Jobs, newest first, with the id to pass as `before` for the next page.
    pub async fn list_jobs(
        &self,
        filter: JobFilter,
    ) -> Result<(Vec<JobRow>, Option<String>), StoreError> {
        self.run(move |conn| {
            let mut q = jobs::table.select(JobRow::as_select()).into_boxed();
            if !filter.statuses.is_empty() {
                q = q.filter(jobs::status.eq_any(filter.statuses));
            }
            if let Some(server) = filter.server_id {
                q = q.filter(jobs::server_id.eq(server.to_string()));
            }
            if let Some(servers) = filter.within {
                q = q.filter(jobs::server_id.eq_any(servers));
            }
            if let Some(template) = filter.template_id {
                let launched = super::schema::runs::table
                    .filter(super::schema::runs::template_id.eq(template))
                    .select(super::schema::runs::id.nullable());
                q = q.filter(jobs::run_id.eq_any(launched));
            }
            if let Some(run) = filter.run_id {
                q = q.filter(jobs::run_id.eq(run));
            }
            if let Some(before) = filter.before {
                q = q.filter(jobs::id.lt(before.to_string()));
            }
            let limit = filter.limit.max(1);
            let mut rows: Vec<JobRow> = q.order(jobs::id.desc()).limit(limit + 1).load(conn)?;
            let next = if rows.len() as i64 > limit {
                rows.truncate(limit as usize);
                rows.last().map(|r| r.id.clone())
            } else {
                None
            };
            Ok((rows, next))
        })
        .await
    }

    /// Claim a queued job on `server` for `worker` until `lease_until`: one conditional
    /// update; only the winner gets the row back (a job on another server is not claimed).
    /// A job a broker delivery brought (`delivered`) is marked published by the same update
    /// (the mark of [`Store::mark_published`] only reaches jobs still queued).
    pub async fn claim_job(
        &self,
        id: String,
        server: String,
        worker: String,
        lease_until: Micros,
        delivered: bool,
    ) -> Result<Option<JobRow>, StoreError> {
        self.write_plain(move |conn| {
            let claim = super::hot::Claim {
                id: &id,
                server: &server,
                worker: &worker,
                lease_until: lease_until.0,
                now: Micros::now().0,
                delivered,
            };
            Ok(super::hot::returning(conn, claim)?)
        })
        .await
    }

    /// Record the end of a job, if it may still reach `finish.status`. Returns the row when
    /// this call changed it, `None` when the job had already moved on.
    ///
    /// With no webhook active the end is one update, committed alone. Otherwise (or when
    /// that update changed nothing) it is written again in a transaction with the
    /// deliveries it makes. Either way the webhooks are read by a statement that sees what
    /// was committed when it began: a webhook created as the job ends hears of it, or not,
    /// exactly as when the read was inside the transaction.
    pub async fn finish_job(
        &self,
        id: String,
        finish: Finish,
    ) -> Result<Option<JobRow>, StoreError> {
        fn end<'a>(id: &'a str, finish: &'a Finish) -> super::hot::Finish<'a> {
            super::hot::Finish::new(
                id,
                finish.status,
                finish.exit_code,
                finish.error.as_deref(),
                finish.remote_pgid,
                Micros::now().0,
            )
        }
        let quiet = {
            let (id, finish) = (id.clone(), finish.clone());
            self.write_plain(move |conn| {
                Ok(super::hot::returning(
                    conn,
                    super::hot::UnlessHooks(end(&id, &finish)),
                )?)
            })
            .await?
        };
        if quiet.is_some() {
            return Ok(quiet);
        }
        self.write(move |conn| {
            let row = super::hot::returning(conn, end(&id, &finish))?;
            if let Some(row) = &row {
                super::outbox::job_ended(conn, row)?;
            }
            Ok(row)
        })
        .await
    }

    /// Cancel: a queued job ends `canceled` at once; a running one gets `cancel_requested`.
    pub async fn request_cancel(
        &self,
        id: uuid::Uuid,
    ) -> Result<(CancelOutcome, JobRow), StoreError> {
        self.run(move |conn| {
            super::write_tx(conn, |conn| {
                let id = id.to_string();
                let now = Micros::now().0;
                let n = diesel::update(
                    jobs::table
                        .find(&id)
                        .filter(jobs::status.eq(JobStatus::Queued)),
                )
                .set((
                    jobs::status.eq(JobStatus::Canceled),
                    jobs::cancel_requested.eq(true),
                    jobs::error.eq(Some("canceled by request before it started")),
                    jobs::finished_at.eq(Some(now)),
                ))
                .execute(conn)?;
                if n == 1 {
                    let row = find(conn, &id)?;
                    super::outbox::job_ended(conn, &row)?;
                    return Ok((CancelOutcome::CanceledQueued, row));
                }
                let n = diesel::update(
                    jobs::table
                        .find(&id)
                        .filter(jobs::status.eq(JobStatus::Running)),
                )
                .set(jobs::cancel_requested.eq(true))
                .execute(conn)?;
                let row = find(conn, &id)?;
                let outcome = if n == 1 {
                    CancelOutcome::Requested
                } else {
                    CancelOutcome::AlreadyFinished(row.status)
                };
                Ok((outcome, row))
            })
        })
        .await
    }

    /// Record the remote process group of a running job.
    pub async fn set_remote_pgid(&self, id: String, pgid: i64) -> Result<(), StoreError> {
        self.write_plain(move |conn| {
            super::hot::execute(conn, super::hot::SetPgid { id: &id, pgid })?;
            Ok(())
        })
        .await
    }

    /// Renew the leases of `ids` held by `worker`; returns the ids whose cancel was requested.
    pub async fn renew_leases(
        &self,
        worker: String,
        ids: Vec<String>,
        until: Micros,
    ) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.run(move |conn| {
            diesel::update(
                jobs::table
                    .filter(jobs::id.eq_any(&ids))
                    .filter(jobs::worker.eq(&worker))
                    .filter(jobs::status.eq(JobStatus::Running)),
            )
            .set(jobs::lease_expires_at.eq(Some(until.0)))
            .execute(conn)?;
            Ok(jobs::table
                .filter(jobs::id.eq_any(&ids))
                .filter(jobs::cancel_requested.eq(true))
                .select(jobs::id)
                .load(conn)?)
        })
        .await
    }

    /// Append output chunks and advance the job's counters (and record its process group,
    /// `pgid`, when given), in one transaction.
    pub async fn append_output(
        &self,
        id: String,
        chunks: Vec<NewChunk>,
        truncated: bool,
        pgid: Option<i64>,
    ) -> Result<(), StoreError> {
        if chunks.is_empty() && !truncated && pgid.is_none() {
            return Ok(());
        }
        self.write(move |conn| {
            let bytes: i64 = chunks.iter().map(|c| c.data.len() as i64).sum();
            let next = chunks.last().map(|c| c.seq + 1);
            // Each chunk starts where the one before it ends (one writer per job, so
            // the chunks come in sequence order).
            let mut offset = extent_of(conn, &id)?.end;
            let placed: Vec<PlacedChunk<'_>> = chunks
                .iter()
                .map(|c| {
                    let start = offset;
                    offset += c.data.len() as i64;
                    PlacedChunk {
                        job_id: &id,
                        seq: c.seq,
                        stream: c.stream,
                        data: &c.data,
                        at: c.at,
                        byte_offset: start,
                    }
                })
                .collect();
            // Batch inserts are backend-specific in diesel: one statement per 200 chunks.
            for part in placed.chunks(200) {
                match conn {
                    super::DbConnection::Pg(c) => diesel::insert_into(job_output::table)
                        .values(part)
                        .execute(c)?,
                    // Diesel's SQLite batch insert opens a transaction of its own;
                    // inside ours, insert row by row (the statement is cached).
                    super::DbConnection::Sqlite(c) => {
                        for row in part {
                            diesel::insert_into(job_output::table)
                                .values(row)
                                .execute(c)?;
                        }
                        part.len()
                    }
                };
            }
            let counters = (
                jobs::output_bytes.eq(jobs::output_bytes + bytes),
                jobs::output_truncated
                    .eq(jobs::output_truncated.or(truncated.into_sql::<diesel::sql_types::Bool>())),
            );
            let job = diesel::update(jobs::table.find(&id));
            match pgid {
                Some(pgid) => job
                    .set((counters.0, counters.1, jobs::remote_pgid.eq(pgid)))
                    .execute(conn)?,
                None => job.set(counters).execute(conn)?,
            };
            if let Some(next) = next {
                diesel::update(jobs::table.find(&id).filter(jobs::next_seq.lt(next)))
                    .set(jobs::next_seq.eq(next))
                    .execute(conn)?;
            }
            Ok(())
        })
        .await
    }

    /// Output chunks after `after_seq` (exclusive; -1 for all), in order, at most `limit`.
    pub async fn read_output(
        &self,
        id: String,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<ChunkRow>, StoreError> {
        self.run(move |conn| {
            Ok(job_output::table
                .filter(job_output::job_id.eq(&id))
                .filter(job_output::seq.gt(after_seq))
                .order(job_output::seq.asc())
                .limit(limit)
                .select(ChunkRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// How far job `id`'s stored output reaches.
    pub async fn output_extent(&self, id: String) -> Result<OutputExtent, StoreError> {
        self.run(move |conn| Ok(extent_of(conn, &id)?)).await
    }

    /// The chunk of job `id` that holds byte `offset` of its combined output: the last one
    /// that starts at or before it (`None`: no chunk does).
    pub async fn chunk_at(
        &self,
        id: String,
        offset: i64,
    ) -> Result<Option<ChunkPlace>, StoreError> {
        self.run(move |conn| {
            Ok(job_output::table
                .filter(job_output::job_id.eq(&id))
                .filter(job_output::byte_offset.le(offset))
                .order((job_output::byte_offset.desc(), job_output::seq.desc()))
                .select((job_output::seq, job_output::byte_offset))
                .first::<(i64, i64)>(conn)
                .optional()?
                .map(|(seq, byte_offset)| ChunkPlace { seq, byte_offset }))
        })
        .await
    }

    /// The last `n` chunks at or before `upto_seq`, in order (to resume a stream mid-way).
    pub async fn read_output_tail(
        &self,
        id: String,
        upto_seq: i64,
        n: i64,
    ) -> Result<Vec<ChunkRow>, StoreError> {
        self.run(move |conn| {
            let mut rows: Vec<ChunkRow> = job_output::table
                .filter(job_output::job_id.eq(&id))
                .filter(job_output::seq.le(upto_seq))
                .order(job_output::seq.desc())
                .limit(n)
                .select(ChunkRow::as_select())
                .load(conn)?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }

    /// Queued jobs the broker may not deliver, oldest first, at most `limit`: unpublished
    /// and older than `unconfirmed` (what the outbox publishes), and, with `lost`, any older
    /// than that whatever they say (a message lost after its confirm: acknowledged after a
    /// claim that failed, say).
    pub async fn undelivered_job_ids(
        &self,
        unconfirmed: std::time::Duration,
        lost: Option<std::time::Duration>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.run(move |conn| {
            let unconfirmed_before = Micros::ago(unconfirmed).0;
            // With no `lost`, no job is old enough.
            let lost_before = lost.map_or(i64::MIN, |d| Micros::ago(d).0);
            Ok(jobs::table
                .filter(jobs::status.eq(JobStatus::Queued))
                .filter(
                    (jobs::published
                        .eq(false)
                        .and(jobs::created_at.lt(unconfirmed_before)))
                    .or(jobs::created_at.lt(lost_before)),
                )
                .order(jobs::id.asc())
                .limit(limit)
                .select(jobs::id)
                .load(conn)?)
        })
        .await
    }

    /// Record that the broker confirmed the messages of `ids`: those still queued are
    /// marked published (one that has moved on needs no mark; the outbox only looks at
    /// queued jobs).
    pub async fn mark_published(&self, ids: Vec<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.run(move |conn| {
            for some in ids.chunks(1000) {
                diesel::update(
                    jobs::table
                        .filter(jobs::id.eq_any(some))
                        .filter(jobs::status.eq(JobStatus::Queued)),
                )
                .set(jobs::published.eq(true))
                .execute(conn)?;
            }
            Ok(())
        })
        .await
    }

    /// Queued jobs, oldest first (to refill an in-memory queue at start).
    pub async fn queued_job_ids(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        self.run(move |conn| {
            Ok(jobs::table
                .filter(jobs::status.eq(JobStatus::Queued))
                .order(jobs::id.asc())
                .limit(limit)
                .select(jobs::id)
                .load(conn)?)
        })
        .await
    }

    /// Jobs whose lease expired (their worker was lost): a job submitted as safe to retry is
    /// queued again (up to `max_attempts` claims in all); any other ends `failed` with
    /// `error`, never silently re-run. Returns the ids that ended failed and those requeued.
    pub async fn reap_expired(
        &self,
        error: String,
        max_attempts: i32,
    ) -> Result<(Vec<LostJob>, Vec<LostJob>), StoreError> {
        self.run(move |conn| {
            let now = Micros::now().0;
            let expired: Vec<(String, bool, i32, String, Option<i64>)> = jobs::table
                .filter(jobs::status.eq(JobStatus::Running))
                .filter(jobs::lease_expires_at.lt(now))
                .select((
                    jobs::id,
                    jobs::retry_safe,
                    jobs::attempts,
                    jobs::server_id,
                    jobs::remote_pgid,
                ))
                .load(conn)?;
            let mut reaped = Vec::new();
            let mut requeued = Vec::new();
            for (id, retry_safe, attempts, server_id, remote_pgid) in expired {
                let lost = LostJob {
                    id: id.clone(),
                    server_id,
                    remote_pgid,
                };
                let still_expired = jobs::table
                    .find(&id)
                    .filter(jobs::status.eq(JobStatus::Running))
                    .filter(jobs::lease_expires_at.lt(now));
                if retry_safe && attempts < max_attempts {
                    let n = diesel::update(still_expired.filter(jobs::cancel_requested.eq(false)))
                        .set((
                            jobs::status.eq(JobStatus::Queued),
                            jobs::worker.eq(None::<String>),
                            jobs::lease_expires_at.eq(None::<i64>),
                            jobs::started_at.eq(None::<i64>),
                            jobs::remote_pgid.eq(None::<i64>),
                            jobs::published.eq(false),
                        ))
                        .execute(conn)?;
                    if n == 1 {
                        requeued.push(lost);
                        continue;
                    }
                }
                let n = super::write_tx(conn, |conn| {
                    let n = diesel::update(still_expired)
                        .set((
                            jobs::status.eq(JobStatus::Failed),
                            jobs::error.eq(Some(error.clone())),
                            jobs::finished_at.eq(Some(now)),
                            jobs::lease_expires_at.eq(None::<i64>),
                        ))
                        .execute(conn)?;
                    if n == 1 {
                        let row = find(conn, &id)?;
                        super::outbox::job_ended(conn, &row)?;
                    }
                    Ok::<_, StoreError>(n)
                })?;
                if n == 1 {
                    reaped.push(lost);
                }
            }
            Ok((reaped, requeued))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TestDb, server_draft};
    use super::super::{AuditEntry, AuditFilter, WebhookRow};
    use super::*;
    use crate::domain::Actor;

    fn spec(key: Option<&str>) -> JobSpec {
        JobSpec {
            kind: JobKind::Command,
            command: Some("true".into()),
            args: None,
            script: None,
            shell: None,
            timeout_secs: 60,
            env: Default::default(),
            cwd: None,
            idempotency_key: key.map(str::to_string),
            retry_safe: false,
        }
    }

    async fn submit(store: &Store, server: &str, key: Option<&str>) -> Placement {
        let server = ServerKey::Id(uuid::Uuid::parse_str(server).unwrap());
        let audit = |row: &JobRow| {
            AuditEntry::by(
                &Actor::system(),
                "job.submit",
                "job",
                &row.id,
                Default::default(),
            )
        };
        store
            .insert_job(spec(key), server, |s| s.is_active, None, audit)
            .await
            .unwrap()
    }

    async fn submits(store: &Store) -> Vec<String> {
        let filter = AuditFilter {
            action: Some("job.submit".into()),
            limit: 100,
            ..Default::default()
        };
        let rows = store.list_audit(filter).await.unwrap();
        rows.into_iter().filter_map(|r| r.target_id).collect()
    }

    fn completed() -> Finish {
        Finish {
            status: JobStatus::Completed,
            exit_code: Some(0),
            error: None,
            remote_pgid: Some(42),
        }
    }

    /// A submission stores the job and its audit record together (on PostgreSQL as one
    /// statement); a key already used stores neither; a refused server stores nothing.
    /// An end with no webhook active, and one with a webhook, both end the job once, and
    /// only the second records a delivery.
    async fn a_job_is_stored_with_its_record_and_ends_once_with_or_without_webhooks(db: TestDb) {
        let store = db.open().await;
        let server = store.insert_server(server_draft()).await.unwrap();

        let Placement::Placed { job, created, cap } = submit(&store, &server.id, Some("k")).await
        else {
            panic!("refused")
        };
        assert!(created);
        assert_eq!(cap, usize::try_from(server.max_concurrent_jobs).unwrap());
        assert_eq!(submits(&store).await, vec![job.id.clone()]);
        let Placement::Placed {
            job: again,
            created,
            ..
        } = submit(&store, &server.id, Some("k")).await
        else {
            panic!("refused")
        };
        assert!(!created);
        assert_eq!(again.id, job.id);
        assert_eq!(
            submits(&store).await.len(),
            1,
            "a reused key recorded again"
        );

        let id = uuid::Uuid::parse_str(&server.id).unwrap();
        let set_active = |is_active| {
            let update = store.update_server(id, move |mut d| {
                d.is_active = is_active;
                Ok(d)
            });
            async move { update.await.unwrap() }
        };
        set_active(false).await;
        assert!(matches!(
            submit(&store, &server.id, None).await,
            Placement::Refused(_)
        ));
        set_active(true).await;
        assert_eq!(submits(&store).await.len(), 1, "a refused job was recorded");

        // A claim for another server takes nothing.
        let lease = Micros(Micros::now().0 + 60_000_000);
        let elsewhere = uuid::Uuid::now_v7().to_string();
        let claimed = store.claim_job(job.id.clone(), elsewhere, "w".into(), lease, false);
        assert!(claimed.await.unwrap().is_none());
        assert_eq!(
            store.queued_job_route(job.id.clone()).await.unwrap(),
            Some((server.id.clone(), server.max_concurrent_jobs))
        );

        // No webhook: the end is written, once.
        let claimed = store.claim_job(job.id.clone(), server.id.clone(), "w".into(), lease, false);
        assert!(claimed.await.unwrap().is_some());
        assert_eq!(store.queued_job_route(job.id.clone()).await.unwrap(), None);
        let ended = store.finish_job(job.id.clone(), completed()).await.unwrap();
        let ended = ended.expect("the end was not written");
        assert_eq!(ended.status, JobStatus::Completed);
        assert_eq!(ended.remote_pgid, Some(42));
        assert!(
            store
                .finish_job(job.id.clone(), completed())
                .await
                .unwrap()
                .is_none()
        );

        // An active webhook: the end is written with its delivery.
        let hook = WebhookRow {
            id: uuid::Uuid::now_v7().to_string(),
            name: "hook".into(),
            url: "http://127.0.0.1:9/".into(),
            events: r#"["job.completed"]"#.into(),
            selector: None,
            template_id: None,
            sealed_secret: None,
            active: true,
            created_at: 0,
            updated_at: 0,
        };
        let hook = store.insert_webhook(hook).await.unwrap();
        let Placement::Placed { job, .. } = submit(&store, &server.id, None).await else {
            panic!("refused")
        };
        let claimed = store.claim_job(job.id.clone(), server.id.clone(), "w".into(), lease, false);
        assert!(claimed.await.unwrap().is_some());
        let ended = store.finish_job(job.id.clone(), completed()).await.unwrap();
        assert_eq!(
            ended.expect("the end was not written").status,
            JobStatus::Completed
        );
        assert!(
            store
                .finish_job(job.id.clone(), completed())
                .await
                .unwrap()
                .is_none()
        );
        let deliveries = store.list_deliveries(hook.id, 10).await.unwrap();
        let subjects: Vec<_> = deliveries
            .iter()
            .map(|d| (&*d.event, &*d.subject_id))
            .collect();
        assert_eq!(subjects, vec![("job.completed", job.id.as_str())]);
    }

    #[tokio::test]
    async fn a_job_is_stored_with_its_record_and_ends_once_with_or_without_webhooks_sqlite() {
        a_job_is_stored_with_its_record_and_ends_once_with_or_without_webhooks(TestDb::sqlite())
            .await;
    }

    #[tokio::test]
    async fn a_job_is_stored_with_its_record_and_ends_once_with_or_without_webhooks_postgres() {
        if let Some(db) = TestDb::postgres() {
            a_job_is_stored_with_its_record_and_ends_once_with_or_without_webhooks(db).await;
        }
    }
}
