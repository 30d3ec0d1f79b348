//! `/api/v1/jobs`: submit, read, list, cancel, duplicate, and the job's output.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::{AppState, JsonBody};
use crate::actors::messages::{CancelJob, StopReason};
use crate::domain::{
    FieldError, JobKind, JobRequest, JobSpec, JobStatus, Micros, OutputStream, parse_id,
};
use crate::error::ApiError;
use crate::store::{CancelOutcome, JobFilter, JobRow, StoreError};

/// The job object of the API.
pub fn job_view(row: &JobRow) -> Value {
    let env: Value = serde_json::from_str(&row.env).unwrap_or_else(|_| json!({}));
    json!({
        "id": row.id,
        "kind": row.kind,
        "command": row.command,
        "args": row.args,
        "script": row.script,
        "shell": row.shell,
        "server_id": row.server_id,
        "timeout": row.timeout_secs,
        "env": env,
        "cwd": row.cwd,
        "status": row.status,
        "exit_code": row.exit_code,
        "error": row.error,
        "created_at": Micros(row.created_at),
        "started_at": row.started_at.map(Micros),
        "finished_at": row.finished_at.map(Micros),
        "duplicated_from": row.duplicated_from,
        "worker": row.worker,
        "idempotency_key": row.idempotency_key,
        "retry_safe": row.retry_safe,
        "attempts": row.attempts,
        "cancel_requested": row.cancel_requested,
        "output_bytes": row.output_bytes,
        "output_truncated": row.output_truncated,
    })
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
    let server = resolve_server(state, req.server_id.as_deref()).await?;
    let spec = JobSpec::from_request(kind, req, &state.settings.jobs.limits())?;
    let (row, created) = state
        .store
        .insert_job(spec, server.clone(), None)
        .await
        .map_err(|e| ApiError::from_store(e, || format!("server {server}")))?;
    if !created {
        return Ok(HttpResponse::Ok().json(job_view(&row)));
    }
    announce(state, &row).await;
    let detail = json!({ "kind": row.kind, "server_id": row.server_id });
    state
        .audit(caller, "job.submit", "job", &row.id, detail)
        .await;
    Ok(HttpResponse::Created().json(job_view(&row)))
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
                d.do_send(crate::actors::messages::Delivery(row.id.clone(), None));
            }
        }
    }
}

/// `POST /jobs`
pub async fn submit_command(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(req): JsonBody<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, JobKind::Command, req).await
}

/// `POST /jobs/script`
pub async fn submit_script(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(req): JsonBody<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    submit(&state, &caller, JobKind::Script, req).await
}

/// `GET /jobs/{id}`
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = load(&state, job_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(job_view(&row)))
}

/// Query of `GET /jobs`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    server_id: Option<String>,
    limit: Option<String>,
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

/// `GET /jobs`: newest first; `cursor` pages on from a previous `next_cursor`.
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

/// `POST /jobs/{id}/cancel`: 200 with the job; 409 if it had already ended.
pub async fn cancel(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
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

/// Body of `POST /jobs/{id}/duplicate`.
#[derive(Debug, Default, Deserialize)]
pub struct DuplicateRequest {
    server_id: Option<String>,
    timeout: Option<i64>,
}

/// `POST /jobs/{id}/duplicate`: a new job from an old one, with optional overrides.
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
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
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

/// `GET /jobs/{id}/logs`: the seed's JSON shape, or `?format=chunks`.
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

/// `GET /jobs/{id}/stdout`: the raw bytes.
pub async fn stdout(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    raw(&state, &path, OutputStream::Stdout).await
}

/// `GET /jobs/{id}/stderr`: the raw bytes.
pub async fn stderr(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    raw(&state, &path, OutputStream::Stderr).await
}
