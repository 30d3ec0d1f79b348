//! Jobs: submit, read, list, cancel, duplicate, wait, and their output.

use crate::domain::Action;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::follow::{FollowTask, Sink};
use super::{Actor, Engine, Error, Subject};
use crate::actors::messages::{CancelJob, Delivery, StopReason};
use crate::domain::{FieldError, JobId, JobKind, JobRequest, JobSpec, JobStatus};
use crate::events::JobEvent;
use crate::queue::Route;
use crate::queue::rabbit::ControlMsg;
use crate::store::{
    AuditEntry, CancelOutcome, ChunkPlace, ChunkRow, JobFilter, JobRow, OutputExtent, Placement,
    ServerKey, ServerRow, StoreError,
};

/// A submission's result.
#[derive(Debug)]
pub struct Submitted {
    /// The job.
    pub job: JobRow,
    /// `false`: the idempotency key named an earlier job, which is returned; nothing new
    /// was queued.
    pub created: bool,
}

/// A cancel's result.
#[derive(Debug)]
pub struct Canceled {
    /// What happened, in a sentence.
    pub message: &'static str,
    /// The job as it is now.
    pub job: JobRow,
}

/// A duplicate's result.
#[derive(Debug)]
pub struct Duplicated {
    /// The job copied.
    pub original: JobRow,
    /// The new job, queued.
    pub job: JobRow,
}

/// How often a waiter looks at the database besides listening for events (events of jobs
/// other processes run reach this one only through the broker).
pub(crate) const WAIT_POLL: Duration = Duration::from_millis(500);

/// Output chunks read per database page.
const OUTPUT_PAGE: i64 = 5000;

/// An idempotency key as stored: the caller's name (its length first, so no name and key
/// read as another pair), then the key as the caller gave it.
fn scoped_key(caller: &str, key: &str) -> String {
    format!("{}:{caller}:{key}", caller.len())
}

impl JobRow {
    /// The idempotency key as its caller gave it (the stored key is scoped to the caller; a
    /// key stored before keys were scoped is shown as it is).
    pub fn caller_idempotency_key(&self) -> Option<&str> {
        let stored = self.idempotency_key.as_deref()?;
        let unscoped = || {
            let (len, rest) = stored.split_once(':')?;
            let len: usize = len.parse().ok()?;
            rest.get(len..)?.strip_prefix(':')
        };
        Some(unscoped().unwrap_or(stored))
    }
}

impl Engine {
    /// Validate a submission, store it queued and announce it. With an idempotency key
    /// this caller already used, the earlier job is returned and nothing new is queued; keys
    /// are the caller's own (its token's name, `anonymous` without tokens, `library`).
    pub async fn submit(
        &self,
        actor: &Actor,
        kind: JobKind,
        request: JobRequest,
    ) -> Result<Submitted, Error> {
        self.allow(actor, Action::Submit).await?;
        let server = request.server_id.clone();
        let mut spec = match JobSpec::from_request(kind, request, &self.settings.jobs.limits()) {
            Ok(spec) => spec,
            Err(e) => {
                // A server the job could not go to is said first, as it always was.
                self.resolve_server(actor, server.as_deref()).await?;
                return Err(e.into());
            }
        };
        // A key names the caller's own earlier job, never another caller's.
        spec.idempotency_key = spec.idempotency_key.map(|k| scoped_key(&actor.name, &k));
        let by = actor.clone();
        let audit = move |job: &JobRow| {
            let detail = json!({ "kind": job.kind, "server_id": job.server_id });
            AuditEntry::by(&by, "job.submit", "job", &job.id, detail)
        };
        let (job, created, cap) = self
            .place(actor, server.as_deref(), spec, None, audit)
            .await?;
        if created {
            self.announce(&job, Some(cap)).await;
        }
        Ok(Submitted { job, created })
    }

    /// The job as stored now, if `actor` reaches its server (else it does not exist, as far
    /// as the caller can tell).
    pub async fn job(&self, actor: &Actor, id: JobId) -> Result<JobRow, Error> {
        let row = self.load_job(id).await?;
        if !self.reaches(actor, &row.server_id).await? {
            return Err(Error::NotFound(Subject::Job(id.to_string())));
        }
        Ok(row)
    }

    /// The job as stored now, whoever asks.
    pub(super) async fn load_job(&self, id: JobId) -> Result<JobRow, Error> {
        self.store
            .get_job(id.0)
            .await
            .map_err(Error::store(|| Subject::Job(id.to_string())))
    }

    /// A page of the jobs `actor` reaches, newest first, and the cursor of the next page.
    pub async fn jobs(
        &self,
        actor: &Actor,
        mut filter: JobFilter,
    ) -> Result<(Vec<JobRow>, Option<String>), Error> {
        filter.within = self.reach(actor).await?.ids();
        Ok(self.store.list_jobs(filter).await?)
    }

    /// Cancel: a queued job ends `canceled` at once; a running one is asked to stop (its
    /// worker kills the remote process group). Refused when it has already ended.
    pub async fn cancel(&self, actor: &Actor, id: JobId) -> Result<Canceled, Error> {
        self.allow(actor, Action::Cancel).await?;
        if actor.access.scope.is_some() {
            self.job(actor, id).await?;
        }
        let (outcome, job) = self
            .store
            .request_cancel(id.0)
            .await
            .map_err(Error::store(|| Subject::Job(id.to_string())))?;
        let message = match outcome {
            CancelOutcome::AlreadyFinished(status) => {
                return Err(Error::AlreadyEnded { id: job.id, status });
            }
            CancelOutcome::CanceledQueued => {
                self.events.publish(JobEvent::Status(Arc::new(job.clone())));
                "job canceled before it started"
            }
            CancelOutcome::Requested => {
                self.dispatcher.do_send(CancelJob {
                    job_id: job.id.clone(),
                    reason: StopReason::Canceled,
                });
                // Workers elsewhere hear it on the control exchange (and from the database at
                // their next heartbeat if the broker is away).
                if let Some(b) = &self.broker {
                    let msg = ControlMsg::Cancel {
                        job_id: job.id.clone(),
                    };
                    if let Err(e) = b.publish_control(&msg).await {
                        tracing::warn!(job_id = %id, error = %e, "cancel goes through the database");
                    }
                }
                "cancel requested: the job's remote processes are being stopped"
            }
        };
        tracing::info!(job_id = %id, "{message}");
        let detail = json!({ "result": message });
        self.audit(actor, "job.cancel", id, detail).await;
        Ok(Canceled { message, job })
    }

    /// A new job with the command or script of `id`, on `server` and with `timeout`
    /// seconds when given (else the original's).
    pub async fn duplicate(
        &self,
        actor: &Actor,
        id: JobId,
        server: Option<&str>,
        timeout: Option<i64>,
    ) -> Result<Duplicated, Error> {
        self.allow(actor, Action::Duplicate).await?;
        let original = self.job(actor, id).await?;
        let server = server.unwrap_or(&original.server_id).to_string();
        let mut spec = original.spec();
        if let Some(t) = timeout {
            let max = self.settings.jobs.max_timeout_secs;
            if !(1..=max).contains(&t) {
                self.resolve_server(actor, Some(&server)).await?;
                return Err(Error::Invalid(FieldError::new(
                    "timeout",
                    format!("{t} is out of range (1-{max} seconds)"),
                )));
            }
            spec.timeout_secs = t;
        }
        let by = actor.clone();
        let audit = move |job: &JobRow| {
            let detail =
                json!({ "duplicated_from": job.duplicated_from, "server_id": job.server_id });
            AuditEntry::by(&by, "job.duplicate", "job", &job.id, detail)
        };
        let from = Some(original.id.clone());
        let (job, _, cap) = self.place(actor, Some(&server), spec, from, audit).await?;
        self.announce(&job, Some(cap)).await;
        Ok(Duplicated { original, job })
    }

    /// The job and every output chunk stored so far, in order.
    pub async fn output(&self, actor: &Actor, id: JobId) -> Result<(JobRow, Vec<ChunkRow>), Error> {
        let job = self.job(actor, id).await?;
        let mut chunks = Vec::new();
        let mut after = -1;
        loop {
            let page = self
                .store
                .read_output(job.id.clone(), after, OUTPUT_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let n = page.len();
            chunks.extend(page);
            if n < OUTPUT_PAGE as usize {
                break;
            }
        }
        Ok((job, chunks))
    }

    /// Up to `n` output chunks of job `job_id` after seq `after` (-1: from the start), in
    /// order: one page of a streamed read.
    pub async fn output_page(
        &self,
        job_id: &str,
        after: i64,
        n: i64,
    ) -> Result<Vec<ChunkRow>, Error> {
        Ok(self.store.read_output(job_id.to_string(), after, n).await?)
    }

    /// The last `n` output chunks stored at or before seq `last`, oldest first (a resumed
    /// stream rebuilds what it carried over from them).
    pub async fn output_before(
        &self,
        job_id: &str,
        last: i64,
        n: i64,
    ) -> Result<Vec<ChunkRow>, Error> {
        Ok(self
            .store
            .read_output_tail(job_id.to_string(), last, n)
            .await?)
    }

    /// How far job `job_id`'s stored output reaches: its last chunk's seq and the combined
    /// output's length in bytes.
    pub async fn output_extent(&self, job_id: &str) -> Result<OutputExtent, Error> {
        Ok(self.store.output_extent(job_id.to_string()).await?)
    }

    /// The stored chunk of job `job_id` that holds byte `offset` of its combined output
    /// (stdout and stderr in sequence order); `None` when no chunk starts at or before it.
    pub async fn chunk_at(&self, job_id: &str, offset: i64) -> Result<Option<ChunkPlace>, Error> {
        Ok(self.store.chunk_at(job_id.to_string(), offset).await?)
    }

    /// How many jobs are in each status, every status listed (one `GROUP BY`).
    pub async fn job_counts(&self) -> Result<Vec<(JobStatus, i64)>, Error> {
        Ok(self.store.count_jobs_by_status().await?)
    }

    /// Follow a job's output from after seq `last` (-1: from the start) into `sink`:
    /// replayed from the database, then live, until the job ends or the sink is gone. The
    /// job is read *after* subscribing to the events, so nothing falls in between; a
    /// missing job is an error before anything is followed.
    pub async fn follow<S: Sink>(
        &self,
        actor: &Actor,
        id: JobId,
        last: i64,
        sink: S,
    ) -> Result<FollowTask<S>, Error> {
        if actor.access.scope.is_some() {
            self.job(actor, id).await?;
        }
        self.follow_seen(id, last, sink).await
    }

    /// [`Engine::follow`] for a caller already allowed to see the job (a run's stream,
    /// allowed for every host of the run).
    pub(super) async fn follow_seen<S: Sink>(
        &self,
        id: JobId,
        last: i64,
        sink: S,
    ) -> Result<FollowTask<S>, Error> {
        let bus = self.events.subscribe();
        let job = self.load_job(id).await?;
        Ok(FollowTask::new(self.store.clone(), bus, job, last, sink))
    }

    /// Wait until the job ends; returns its final row.
    pub async fn wait(&self, id: JobId) -> Result<JobRow, Error> {
        let mut bus = self.events.subscribe();
        loop {
            let row = self.load_job(id).await?;
            if row.status().is_terminal() {
                return Ok(row);
            }
            // Until its end is heard of (or events were lost), or the poll period is over.
            let ended = async {
                while let Ok(ev) = bus.recv().await {
                    if matches!(ev, JobEvent::Status(r) if r.id == row.id && r.status().is_terminal())
                    {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(WAIT_POLL, ended).await;
        }
    }

    /// The server a job goes to: the one named (`server_id` must be a UUID), or the
    /// configured default.
    fn server_key(&self, server_id: Option<&str>) -> Result<ServerKey, Error> {
        Ok(match server_id.filter(|s| !s.is_empty()) {
            Some(raw) => ServerKey::Id(crate::domain::parse_id("server_id", raw)?),
            None => ServerKey::Name(self.settings.default_server.name.clone()),
        })
    }

    /// The 422 for a server that does not exist.
    fn missing_server(key: &ServerKey) -> Error {
        let message = match key {
            ServerKey::Id(id) => format!("server {id} does not exist"),
            ServerKey::Name(_) => "is required (no default server is configured)".into(),
        };
        Error::Invalid(FieldError::new("server_id", message))
    }

    /// `Ok` when a job may go to `row`: it is active, and in `actor`'s scope (a refusal
    /// outside it is recorded).
    async fn may_go_to(&self, actor: &Actor, row: &ServerRow) -> Result<(), Error> {
        if !row.is_active {
            return Err(Error::Invalid(FieldError::new(
                "server_id",
                format!("server {} ({}) is not active", row.id, row.name),
            )));
        }
        self.may_start_on_server(actor, row).await
    }

    /// The server a job would go to (see [`Engine::server_key`]), checked as
    /// [`Engine::may_go_to`] does, when no job is stored (the request is refused for
    /// another reason, which the server's own refusal goes before).
    async fn resolve_server(&self, actor: &Actor, server_id: Option<&str>) -> Result<(), Error> {
        let key = self.server_key(server_id)?;
        let found = match &key {
            ServerKey::Id(id) => self.store.get_server(*id).await,
            ServerKey::Name(name) => self.store.get_server_by_name(name.clone()).await,
        };
        let row = found.map_err(|e| match e {
            StoreError::NotFound => Self::missing_server(&key),
            other => Error::Store(other),
        })?;
        self.may_go_to(actor, &row).await
    }

    /// Store `spec` queued on the server `server_id` names (see [`Engine::server_key`]),
    /// if a job may go there ([`Engine::may_go_to`]), in one write with its server's read
    /// and its audit record: the job, whether this call stored it (an idempotency key may
    /// name an earlier one), and its server's `max_concurrent_jobs`.
    async fn place<A>(
        &self,
        actor: &Actor,
        server_id: Option<&str>,
        spec: JobSpec,
        duplicated_from: Option<String>,
        audit: A,
    ) -> Result<(JobRow, bool, usize), Error>
    where
        A: FnOnce(&JobRow) -> AuditEntry + Send + 'static,
    {
        let key = self.server_key(server_id)?;
        let scope = actor.access.scope.clone();
        let accept = move |row: &ServerRow| {
            row.is_active && scope.as_ref().is_none_or(|s| s.matches(&row.labels()))
        };
        let placed = self
            .store
            .insert_job(spec, key.clone(), accept, duplicated_from, audit)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => Self::missing_server(&key),
                other => Error::Store(other),
            })?;
        match placed {
            Placement::Placed { job, created, cap } => Ok((*job, created, cap)),
            Placement::Refused(row) => {
                self.may_go_to(actor, &row).await?;
                // The check refused the row, so `may_go_to` did too; never reached.
                Err(Self::missing_server(&key))
            }
        }
    }

    /// Hand a new job to the queue, with its server and that server's cap (`cap`) when the
    /// caller has it: a worker then need not read the job before it waits for a slot. The
    /// row is the truth: if the queue is down the job stays queued and is announced again
    /// later, so the submit still succeeds.
    pub(super) async fn announce(&self, row: &JobRow, cap: Option<usize>) {
        tracing::info!(job_id = %row.id, server_id = %row.server_id, kind = %row.kind, "job queued");
        let route = Route {
            server_id: row.server_id.clone(),
            cap,
        };
        match self
            .queue
            .publish(row.id.clone(), Some(route.clone()))
            .await
        {
            Ok(()) => {
                if let Some(published) = &self.published {
                    published.record(row.id.clone());
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %row.id, error = %e, "job stays queued until the broker is back (outbox)");
                // A worker in this process (serve) can take it at once; others poll the
                // database.
                self.dispatcher.do_send(Delivery {
                    job_id: row.id.clone(),
                    route: Some(route),
                    ack: None,
                });
            }
        }
    }
}
