//! `/api/v1/jobs`: submit, read, list, cancel, duplicate (the job's output: `output`).

use actix_web::http::StatusCode;
use actix_web::{Responder, web};
use actix_web::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::{
    AppState, BadRequest, Conflict, Errors, InvalidField, JsonBody, NotFound, OptionalJsonBody,
    PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, UnsupportedMediaType, job_id,
    optional_id, page_limit,
};
use crate::domain::{FieldError, JobKind, JobRequest, JobStatus};
pub use crate::engine::views::JobView;
use crate::error::ApiError;
use crate::store::JobFilter;

/// A submit's answer: 201 with the new job, or 200 with the job an earlier submit with the
/// same idempotency key made.
type SubmitResponse = actix_web::CustomizeResponder<web::Json<JobView>>;

async fn submit(
    state: &AppState,
    caller: &Caller,
    kind: JobKind,
    request: JobRequest,
) -> Result<SubmitResponse, ApiError> {
    state.limit_submissions(caller)?;
    let submitted = state.engine.submit(&caller.actor(), kind, request).await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(web::Json(JobView::of(&submitted.job))
        .customize()
        .with_status(status))
}

/// Submit a command job
///
/// Runs `command args` on the server. With an `idempotency_key` already used, the first
/// job is returned (200) and nothing new is queued.
#[utoipa::path(
    operation_id = "submit_command_job",
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 201, description = "The job, queued.", body = JobView),
        (status = 200, description = "The job an earlier submit with the same `idempotency_key` made; nothing new is queued.", body = JobView),
        Errors<(BadRequest, Unauthorized, PayloadTooLarge, UnsupportedMediaType, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[post("/jobs")]
pub async fn submit_command(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(request): JsonBody<JobRequest>,
) -> Result<SubmitResponse, ApiError> {
    submit(&state, &caller, JobKind::Command, request).await
}

/// Submit a shell-script job
///
/// Runs `script` with `shell` (default `/bin/bash`), `args` as `$1…`. With an
/// `idempotency_key` already used, the first job is returned (200) and nothing new is queued.
#[utoipa::path(
    operation_id = "submit_script_job",
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 201, description = "The job, queued.", body = JobView),
        (status = 200, description = "The job an earlier submit with the same `idempotency_key` made; nothing new is queued.", body = JobView),
        Errors<(BadRequest, Unauthorized, PayloadTooLarge, UnsupportedMediaType, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[post("/jobs/script")]
pub async fn submit_script(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(request): JsonBody<JobRequest>,
) -> Result<SubmitResponse, ApiError> {
    submit(&state, &caller, JobKind::Script, request).await
}

/// One job
#[utoipa::path(
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/jobs/{id}")]
pub async fn get_job(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    req: actix_web::HttpRequest,
) -> Result<web::Json<JobView>, ApiError> {
    // `GET /jobs/script` lands here (`{id}` takes any segment); it is the script route's.
    if path.as_str() == "script"
        && let Some(err) = super::method_not_allowed(&req)
    {
        return Err(err);
    }
    let job = state.engine.job(&caller.actor(), job_id(&path)?).await?;
    Ok(web::Json(JobView::of(&job)))
}

/// Query of `GET /jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs with one of these statuses, comma-separated (`queued,running`).
    #[param(value_type = Option<Vec<JobStatus>>, style = Form, explode = false)]
    status: Option<String>,
    /// Only jobs of this server.
    #[param(value_type = Option<uuid::Uuid>)]
    server_id: Option<String>,
    /// Only jobs of runs this template (a name or an id) launched.
    template: Option<String>,
    /// Only the jobs (one per host) of this run.
    #[param(value_type = Option<uuid::Uuid>)]
    run_id: Option<String>,
    /// Jobs per page, 1 to 1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// `GET /api/v1/jobs`: a page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// The jobs.
    jobs: Vec<JobView>,
    /// The page size used.
    limit: i64,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true, format = Uuid)]
    next_cursor: Option<String>,
}

/// Statuses from a comma-separated list; absent or empty (the empty list): any.
fn statuses(raw: Option<&str>) -> Result<Vec<JobStatus>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(str::trim)
        .map(|s| {
            s.parse::<JobStatus>()
                .map_err(|m| FieldError::new("status", m).into())
        })
        .collect()
}

/// List jobs
///
/// Newest first; `cursor` pages on from a previous `next_cursor`.
#[utoipa::path(
    operation_id = "list_jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs.", body = JobList),
        Errors<(BadRequest, Unauthorized, InvalidField, Unavailable)>,
    )
)]
#[get("/jobs")]
pub async fn list_jobs(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<JobList>, ApiError> {
    let q = query.into_inner();
    let template_id = match q.template.as_deref() {
        None => None,
        Some(t) => Some(
            state
                .engine
                .template(t)
                .await
                .map(|t| t.id)
                .map_err(|e| match e {
                    crate::engine::Error::NotFound(s) => ApiError::Invalid(FieldError::new(
                        "template",
                        format!("{s} does not exist"),
                    )),
                    other => other.into(),
                })?,
        ),
    };
    let run_id: Option<uuid::Uuid> = optional_id("run_id", q.run_id.as_deref())?;
    let filter = JobFilter {
        template_id,
        run_id: run_id.map(|r| r.to_string()),
        statuses: statuses(q.status.as_deref())?,
        limit: page_limit(q.limit.as_deref())?,
        server_id: optional_id("server_id", q.server_id.as_deref())?,
        before: optional_id("cursor", q.cursor.as_deref())?,
        within: None,
    };
    let limit = filter.limit;
    let (rows, next_cursor) = state.engine.jobs(&caller.actor(), filter).await?;
    Ok(web::Json(JobList {
        jobs: rows.iter().map(JobView::of).collect(),
        limit,
        next_cursor,
    }))
}

/// `POST /api/v1/jobs/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResult {
    /// What happened: canceled before it started, or its remote processes are being stopped.
    message: &'static str,
    /// The job as it is now.
    job: JobView,
}

/// Cancel a job
///
/// A queued job ends `canceled` at once; a running one is asked to stop (its remote
/// processes are killed). 409 if it had already ended.
#[utoipa::path(
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "Canceled, or the stop is under way.", body = CancelResult),
        Errors<(Unauthorized, NotFound, Conflict, Unavailable)>,
    )
)]
#[post("/jobs/{id}/cancel")]
pub async fn cancel_job(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<CancelResult>, ApiError> {
    let canceled = state.engine.cancel(&caller.actor(), job_id(&path)?).await?;
    Ok(web::Json(CancelResult {
        message: canceled.message,
        job: JobView::of(&canceled.job),
    }))
}

/// Body of `POST /jobs/{id}/duplicate`: overrides of the copy, both optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct DuplicateRequest {
    /// Run the copy on this server instead.
    #[schema(format = Uuid)]
    server_id: Option<String>,
    /// Seconds allowed to the copy instead.
    #[serde(default, deserialize_with = "crate::domain::whole_number")]
    #[schema(minimum = 1, maximum = 604800)]
    timeout: Option<i64>,
}

/// `POST /api/v1/jobs/{id}/duplicate` (the seed's shape).
#[derive(Debug, Serialize, ToSchema)]
pub struct DuplicateResult {
    /// `job duplicated`.
    message: &'static str,
    /// The id of the job copied.
    #[schema(format = Uuid)]
    original_job: String,
    /// The new job.
    new_job: JobView,
}

/// Duplicate a job
///
/// A new job with the old one's command or script, with optional overrides.
#[utoipa::path(
    operation_id = "duplicate_job",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The id of the job to copy.")),
    request_body = Option<DuplicateRequest>,
    responses(
        (status = 201, description = "The new job, queued.", body = DuplicateResult),
        Errors<(BadRequest, Unauthorized, NotFound, PayloadTooLarge, UnsupportedMediaType, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[post("/jobs/{id}/duplicate")]
pub async fn duplicate_job(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<DuplicateRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<DuplicateResult>>, ApiError> {
    state.limit_submissions(&caller)?;
    let id = job_id(&path)?;
    let server = request.server_id.as_deref().filter(|s| !s.is_empty());
    let copied = state
        .engine
        .duplicate(&caller.actor(), id, server, request.timeout)
        .await?;
    Ok(web::Json(DuplicateResult {
        message: "job duplicated",
        original_job: copied.original.id,
        new_job: JobView::of(&copied.job),
    })
    .customize()
    .with_status(StatusCode::CREATED))
}
