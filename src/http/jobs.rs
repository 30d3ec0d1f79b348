//! `/api/v1/jobs`: submit, read, list, cancel, duplicate, and the job's output.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::openapi::{
    BadRequest, CancelResult, Conflict, DuplicateResult, InvalidField, JobList, LogsResponse,
    NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
};
use super::{AppState, JsonBody};
use crate::actors::messages::{CancelJob, StopReason};
use crate::domain::{
    FieldError, JobKind, JobRequest, JobSpec, JobStatus, Micros, OutputStream, parse_id,
};
use crate::error::ApiError;
use crate::store::{CancelOutcome, JobFilter, JobRow, StoreError};

/// The job object of the API: what every job response, the `status` and `complete` events
/// of the stream, and the lists carry. The output itself is not inline (see the output
/// routes and the stream).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView<'a> {
    /// The job's id (UUID v7: ordered by submission).
    #[schema(format = Uuid)]
    pub id: &'a str,
    /// `command` or `script`.
    #[schema(value_type = JobKind)]
    pub kind: &'a str,
    /// Command jobs: the program.
    #[schema(required = true)]
    pub command: Option<&'a str>,
    /// Arguments: appended to the command line, or the script's `$1…`.
    #[schema(required = true)]
    pub args: Option<&'a str>,
    /// Script jobs: the script text.
    #[schema(required = true)]
    pub script: Option<&'a str>,
    /// Script jobs: the interpreter.
    #[schema(required = true)]
    pub shell: Option<&'a str>,
    /// The server it runs on.
    #[schema(format = Uuid)]
    pub server_id: &'a str,
    /// Seconds allowed before it is stopped and ends `timed_out`.
    pub timeout: i64,
    /// Environment variables of the remote command.
    #[schema(value_type = BTreeMap<String, String>)]
    pub env: Value,
    /// Working directory on the remote host.
    #[schema(required = true)]
    pub cwd: Option<&'a str>,
    /// Where the job is in its life; a terminal status never changes again.
    #[schema(value_type = JobStatus)]
    pub status: &'a str,
    /// The remote command's exit code, null until known.
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    /// Null, or a sentence saying why the job failed, was canceled or timed out.
    #[schema(required = true)]
    pub error: Option<&'a str>,
    /// When it was submitted.
    pub created_at: Micros,
    /// When a worker started it.
    #[schema(required = true)]
    pub started_at: Option<Micros>,
    /// When it ended.
    #[schema(required = true)]
    pub finished_at: Option<Micros>,
    /// The job this one was duplicated from.
    #[schema(required = true, format = Uuid)]
    pub duplicated_from: Option<&'a str>,
    /// The worker process that ran it.
    #[schema(required = true)]
    pub worker: Option<&'a str>,
    /// The submission's idempotency key.
    #[schema(required = true)]
    pub idempotency_key: Option<&'a str>,
    /// Whether it may be re-run when its worker is lost mid-run.
    pub retry_safe: bool,
    /// How many times a worker claimed it.
    pub attempts: i32,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// Output bytes stored.
    pub output_bytes: i64,
    /// Whether the output was cut at the configured cap.
    pub output_truncated: bool,
}

impl<'a> JobView<'a> {
    /// The view of a stored job.
    pub fn of(row: &'a JobRow) -> Self {
        JobView {
            id: &row.id,
            kind: &row.kind,
            command: row.command.as_deref(),
            args: row.args.as_deref(),
            script: row.script.as_deref(),
            shell: row.shell.as_deref(),
            server_id: &row.server_id,
            timeout: row.timeout_secs,
            env: serde_json::from_str(&row.env).unwrap_or_else(|_| json!({})),
            cwd: row.cwd.as_deref(),
            status: &row.status,
            exit_code: row.exit_code,
            error: row.error.as_deref(),
            created_at: Micros(row.created_at),
            started_at: row.started_at.map(Micros),
            finished_at: row.finished_at.map(Micros),
            duplicated_from: row.duplicated_from.as_deref(),
            worker: row.worker.as_deref(),
            idempotency_key: row.idempotency_key.as_deref(),
            retry_safe: row.retry_safe,
            attempts: row.attempts,
            cancel_requested: row.cancel_requested,
            output_bytes: row.output_bytes,
            output_truncated: row.output_truncated,
        }
    }
}

/// The job object of the API ([`JobView`]) as JSON.
pub fn job_view(row: &JobRow) -> Value {
    serde_json::to_value(JobView::of(row)).unwrap_or_default()
}

fn job_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    parse_id("id", raw).map_err(|_| ApiError::NotFound(format!("job {raw:?} does not exist")))
}

async fn load(state: &AppState, id: uuid::Uuid) -> Result<JobRow, ApiError> {
    state
        .store
        .get_job(id)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("job {id}")))
}

/// The server a job goes to: the one named, or the configured default.
async fn resolve_server(state: &AppState, server_id: Option<&str>) -> Result<String, ApiError> {
    let row = match server_id.filter(|s| !s.is_empty()) {
        Some(raw) => {
            let id = parse_id("server_id", raw)?;
            state.store.get_server(id).await.map_err(|e| match e {
                StoreError::NotFound => ApiError::Invalid(FieldError::new(
                    "server_id",
                    format!("server {id} does not exist"),
                )),
                other => other.into(),
            })?
        }
        None => {
            let name = state.settings.default_server.name.clone();
            state
                .store
                .get_server_by_name(name)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => ApiError::Invalid(FieldError::new(
                        "server_id",
                        "is required (no default server is configured)",
                    )),
                    other => other.into(),
                })?
        }
    };
    if !row.is_active {
        return Err(ApiError::Invalid(FieldError::new(
            "server_id",
            format!("server {} ({}) is not active", row.id, row.name),
        )));
    }
    Ok(row.id)
}

async fn submit(
    state: &AppState,
    caller: &Caller,
    kind: JobKind,
    req: JobRequest,
) -> Result<HttpResponse, ApiError> {
    state.limit_submissions(caller)?;
    let (row, created) = enqueue(state, kind, req).await?;
    if !created {
        return Ok(HttpResponse::Ok().json(job_view(&row)));
    }
    let detail = json!({ "kind": row.kind, "server_id": row.server_id });
    state
        .audit(caller, "job.submit", "job", &row.id, detail)
        .await;
    Ok(HttpResponse::Created().json(job_view(&row)))
}

/// Validate a submission, store it queued and announce it. Returns the job and whether it
/// is new (`false`: its idempotency key named an earlier job, which is returned).
pub(crate) async fn enqueue(
    state: &AppState,
    kind: JobKind,
    req: JobRequest,
) -> Result<(JobRow, bool), ApiError> {
    let server = resolve_server(state, req.server_id.as_deref()).await?;
    let spec = JobSpec::from_request(kind, req, &state.settings.jobs.limits())?;
    let (row, created) = state
        .store
        .insert_job(spec, server.clone(), None)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("server {server}")))?;
    if created {
        announce(state, &row).await;
    }
    Ok((row, created))
}

/// Hand a new job to the queue. The row is the truth: if the queue is down the job stays
/// queued and is announced again later, so the submit still succeeds.
async fn announce(state: &AppState, row: &JobRow) {
    tracing::info!(job_id = %row.id, server_id = %row.server_id, kind = %row.kind, "job queued");
    match state.queue.publish(row.id.clone()).await {
        Ok(()) if state.broker.is_some() => {
            let store = state.store.clone();
            let id = row.id.clone();
            actix_web::rt::spawn(async move {
                let _ = store.mark_published(id).await;
            });
        }
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(job_id = %row.id, error = %e, "job stays queued until the broker is back (outbox)");
            // A worker in this process (serve) can take it at once; others poll the database.
            if let Some(d) = &state.dispatcher {
                d.do_send(crate::actors::messages::Delivery {
                    job_id: row.id.clone(),
                    ack: None,
                });
            }
        }
    }
}

/// Submit a command job
///
/// Runs `command args` on the server. With an `idempotency_key` already used, the first
/// job is returned (200) and nothing new is queued.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    operation_id = "submit_command_job",
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 201, description = "The job, queued.", body = JobView),
        (status = 200, description = "The job an earlier submit with the same `idempotency_key` made; nothing new is queued.", body = JobView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub async fn submit_command(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(req): JsonBody<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, JobKind::Command, req).await
}

/// Submit a shell-script job
///
/// Runs `script` with `shell` (default `/bin/bash`), `args` as `$1…`. With an
/// `idempotency_key` already used, the first job is returned (200) and nothing new is queued.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/script",
    operation_id = "submit_script_job",
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 201, description = "The job, queued.", body = JobView),
        (status = 200, description = "The job an earlier submit with the same `idempotency_key` made; nothing new is queued.", body = JobView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub async fn submit_script(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(req): JsonBody<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, JobKind::Script, req).await
}

/// One job
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, job_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(job_view(&row)))
}

/// Query of `GET /jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs with this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Only jobs of this server.
    #[param(value_type = Option<uuid::Uuid>)]
    server_id: Option<String>,
    /// Jobs per page, 1 to 1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// The `limit` of a paged list: 1 to 1000, 50 when absent.
pub(super) fn page_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw.filter(|s| !s.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::Invalid(FieldError::new(
                    "limit",
                    format!("{l:?} is not a number from 1 to 1000"),
                ))
            }),
        None => Ok(50),
    }
}

/// List jobs
///
/// Newest first; `cursor` pages on from a previous `next_cursor`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs.", body = JobList),
        (status = 401, response = Unauthorized),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<JobStatus>()
                .map_err(|m| ApiError::Invalid(FieldError::new("status", m)))?,
        ),
        None => None,
    };
    let limit = page_limit(q.limit.as_deref())?;
    let server_id = match q.server_id.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(parse_id("server_id", s)?.to_string()),
        None => None,
    };
    let before = match q.cursor.as_deref().filter(|s| !s.is_empty()) {
        Some(c) => Some(parse_id("cursor", c)?.to_string()),
        None => None,
    };
    let (rows, next) = state
        .store
        .list_jobs(JobFilter {
            status,
            server_id,
            limit,
            before,
        })
        .await?;
    let jobs: Vec<Value> = rows.iter().map(job_view).collect();
    Ok(HttpResponse::Ok().json(json!({ "jobs": jobs, "limit": limit, "next_cursor": next })))
}

/// Cancel a job: a queued one ends `canceled` at once; a running one is asked to stop (its
/// worker kills the remote process group). 409 when it had already ended.
pub(crate) async fn cancel_job(
    state: &AppState,
    id: uuid::Uuid,
) -> Result<(&'static str, JobRow), ApiError> {
    let (outcome, row) = state
        .store
        .request_cancel(id)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("job {id}")))?;
    let message = match outcome {
        CancelOutcome::AlreadyFinished(st) => {
            return Err(ApiError::Conflict(format!(
                "job {id} has already ended ({st}); it cannot be canceled"
            )));
        }
        CancelOutcome::CanceledQueued => {
            state
                .events
                .publish(crate::events::JobEvent::Status(std::sync::Arc::new(
                    row.clone(),
                )));
            "job canceled before it started"
        }
        CancelOutcome::Requested => {
            if let Some(d) = &state.dispatcher {
                d.do_send(CancelJob {
                    job_id: row.id.clone(),
                    reason: StopReason::Canceled,
                });
            }
            // Workers elsewhere hear it on the control exchange (and from the database at
            // their next heartbeat if the broker is away).
            if let Some(b) = &state.broker {
                let msg = crate::queue::rabbit::ControlMsg::Cancel {
                    job_id: row.id.clone(),
                };
                if let Err(e) = b.publish_control(&msg).await {
                    tracing::warn!(job_id = %id, error = %e, "cancel goes through the database");
                }
            }
            "cancel requested: the job's remote processes are being stopped"
        }
    };
    Ok((message, row))
}

/// Cancel a job
///
/// A queued job ends `canceled` at once; a running one is asked to stop (its remote
/// processes are killed). 409 if it had already ended.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "Canceled, or the stop is under way.", body = CancelResult),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let (message, row) = cancel_job(&state, id).await?;
    tracing::info!(job_id = %id, "{message}");
    state
        .audit(
            &caller,
            "job.cancel",
            "job",
            id,
            json!({ "result": message }),
        )
        .await;
    Ok(HttpResponse::Ok().json(json!({ "message": message, "job": job_view(&row) })))
}

/// Body of `POST /jobs/{id}/duplicate`: overrides of the copy, both optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DuplicateRequest {
    /// Run the copy on this server instead.
    #[schema(format = Uuid)]
    server_id: Option<String>,
    /// Seconds allowed to the copy instead.
    timeout: Option<i64>,
}

/// Duplicate a job
///
/// A new job with the old one's command or script, with optional overrides.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/duplicate",
    operation_id = "duplicate_job",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The id of the job to copy.")),
    request_body = Option<DuplicateRequest>,
    responses(
        (status = 201, description = "The new job, queued.", body = DuplicateResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub async fn duplicate(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(req): JsonBody<DuplicateRequest>,
) -> Result<HttpResponse, ApiError> {
    state.limit_submissions(&caller)?;
    let original = load(&state, job_id(&path)?).await?;
    let server = match &req.server_id {
        Some(s) => resolve_server(&state, Some(s)).await?,
        None => resolve_server(&state, Some(&original.server_id)).await?,
    };
    let mut spec = original.spec();
    if let Some(t) = req.timeout {
        let max = state.settings.jobs.max_timeout_secs;
        if !(1..=max).contains(&t) {
            return Err(ApiError::Invalid(FieldError::new(
                "timeout",
                format!("{t} is out of range (1-{max} seconds)"),
            )));
        }
        spec.timeout_secs = t;
    }
    let (row, _) = state
        .store
        .insert_job(spec, server.clone(), Some(original.id.clone()))
        .await
        .map_err(|e| ApiError::from_store(e, || format!("server {server}")))?;
    announce(&state, &row).await;
    let detail = json!({ "duplicated_from": original.id, "server_id": row.server_id });
    state
        .audit(&caller, "job.duplicate", "job", &row.id, detail)
        .await;
    Ok(HttpResponse::Created().json(json!({
        "message": "job duplicated",
        "original_job": original.id,
        "new_job": job_view(&row),
    })))
}

/// Query of `GET /jobs/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `json` (default): the seed's shape; `chunks`: the output as stored, chunk by chunk.
    #[param(pattern = "^(json|chunks)?$")]
    format: Option<String>,
}

async fn all_output(state: &AppState, id: &str) -> Result<Vec<crate::store::ChunkRow>, ApiError> {
    let mut out = Vec::new();
    let mut after = -1;
    loop {
        let page = state.store.read_output(id.to_string(), after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let n = page.len();
        out.extend(page);
        if n < 5000 {
            break;
        }
    }
    Ok(out)
}

/// A job's output as JSON
///
/// The seed's shape (stdout, stderr and both interleaved in arrival order), or with
/// `?format=chunks` the chunks as stored. Bytes that are not UTF-8 are replaced.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/logs",
    operation_id = "get_job_logs",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id."), LogsQuery),
    responses(
        (status = 200, description = "`JobLogs`, or with `?format=chunks` an array of `OutputChunk`.", body = LogsResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    )
)]
pub async fn logs(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, job_id(&path)?).await?;
    let chunks = all_output(&state, &row.id).await?;
    match query.format.as_deref() {
        Some("chunks") => {
            let list: Vec<Value> = chunks
                .iter()
                .map(|c| {
                    json!({
                        "seq": c.seq,
                        "stream": match c.stream() { OutputStream::Stdout => "stdout", OutputStream::Stderr => "stderr" },
                        "data": String::from_utf8_lossy(&c.data),
                        "at": Micros(c.at),
                    })
                })
                .collect();
            return Ok(HttpResponse::Ok().json(list));
        }
        None | Some("") | Some("json") => {}
        Some(other) => {
            return Err(ApiError::Invalid(FieldError::new(
                "format",
                format!("{other:?} is not \"json\" or \"chunks\""),
            )));
        }
    }
    let (mut stdout, mut stderr, mut output) = (Vec::new(), Vec::new(), Vec::new());
    for c in &chunks {
        match c.stream() {
            OutputStream::Stdout => stdout.extend_from_slice(&c.data),
            OutputStream::Stderr => stderr.extend_from_slice(&c.data),
        }
        output.extend_from_slice(&c.data);
    }
    let duration = match (row.started_at, row.finished_at) {
        (Some(s), Some(f)) => Some((f - s) as f64 / 1_000_000.0),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(json!({
        "job_id": row.id,
        "status": row.status,
        "exit_code": row.exit_code,
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "output": String::from_utf8_lossy(&output),
        "started_at": row.started_at.map(Micros),
        "finished_at": row.finished_at.map(Micros),
        "duration": duration,
        "truncated": row.output_truncated,
    })))
}

async fn raw(
    state: &AppState,
    raw_id: &str,
    stream: OutputStream,
) -> Result<HttpResponse, ApiError> {
    let row = load(state, job_id(raw_id)?).await?;
    let chunks = all_output(state, &row.id).await?;
    let mut body = Vec::new();
    for c in chunks.iter().filter(|c| c.stream() == stream) {
        body.extend_from_slice(&c.data);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(body))
}

/// A job's raw stdout
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/stdout",
    operation_id = "get_job_stdout",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The stdout bytes stored so far, as the command wrote them (not necessarily UTF-8).", body = String, content_type = "text/plain"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn stdout(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    raw(&state, &path, OutputStream::Stdout).await
}

/// A job's raw stderr
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/stderr",
    operation_id = "get_job_stderr",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The stderr bytes stored so far, as the command wrote them (not necessarily UTF-8).", body = String, content_type = "text/plain"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn stderr(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    raw(&state, &path, OutputStream::Stderr).await
}
