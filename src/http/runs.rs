//! `/api/v1/runs`: one command on many servers — start, read, list, cancel, rerun,
//! summarize (the stream: `run_stream`).

use actix_web::http::StatusCode;
use actix_web::{Responder, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::{
    AppState, BadRequest, Conflict, Errors, InvalidField, JsonBody, NotFound, OptionalJsonBody,
    PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, UnsupportedMediaType, optional_id,
    page_limit,
};
use crate::domain::{FieldError, HostStatus, RunId, RunRequest, RunStatus};
use crate::engine::RerunOnly;
pub use crate::engine::views::{RunView, StrategyView, TargetsView};
use crate::error::ApiError;
use crate::store::RunFilter;

/// The run a path names; not a UUID: it names nothing (404).
pub(super) fn run_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("run {raw:?} does not exist")))
}

/// Start a run
///
/// One job per target server, admitted as `strategy` says. The targets are resolved now:
/// a selector matching no active server, an unknown server, a batch of 0 or a percentage
/// over 100 is a 422 naming the field, and nothing is created.
#[utoipa::path(
    operation_id = "start_run",
    tag = "runs",
    request_body = RunRequest,
    responses(
        (status = 201, description = "The run, its first hosts started.", body = RunView),
        Errors<(BadRequest, Unauthorized, PayloadTooLarge, UnsupportedMediaType, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[post("/runs")]
pub async fn start_run(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(request): JsonBody<RunRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<RunView>>, ApiError> {
    state.limit_submissions(&caller)?;
    let run = state.engine.start_run(&caller.actor(), request).await?;
    Ok(web::Json(RunView::of(&run))
        .customize()
        .with_status(StatusCode::CREATED))
}

/// One run
#[utoipa::path(
    operation_id = "get_run",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run's id.")),
    responses(
        (status = 200, description = "The run.", body = RunView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/runs/{id}")]
pub async fn get_run(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<RunView>, ApiError> {
    let run = state.engine.run(&caller.actor(), run_id(&path)?).await?;
    Ok(web::Json(RunView::of(&run)))
}

/// Query of `GET /runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunListQuery {
    /// Only runs with one of these statuses, comma-separated (`queued,running`).
    #[param(value_type = Option<Vec<RunStatus>>, style = Form, explode = false)]
    status: Option<String>,
    /// Runs per page, 1 to 1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// `GET /api/v1/runs`: a page of runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// The runs.
    runs: Vec<RunView>,
    /// The page size used.
    limit: i64,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true, format = Uuid)]
    next_cursor: Option<String>,
}

/// List runs
///
/// Newest first; `cursor` pages on from a previous `next_cursor`.
#[utoipa::path(
    operation_id = "list_runs",
    tag = "runs",
    params(RunListQuery),
    responses(
        (status = 200, description = "A page of runs.", body = RunList),
        Errors<(BadRequest, Unauthorized, InvalidField, Unavailable)>,
    )
)]
#[get("/runs")]
pub async fn list_runs(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    query: web::Query<RunListQuery>,
) -> Result<web::Json<RunList>, ApiError> {
    let q = query.into_inner();
    let statuses = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(raw) => raw
            .split(',')
            .map(|s| s.trim().parse::<RunStatus>())
            .collect::<Result<_, _>>()
            .map_err(|m| FieldError::new("status", m))?,
    };
    let filter = RunFilter {
        statuses,
        limit: page_limit(q.limit.as_deref())?,
        before: optional_id::<uuid::Uuid>("cursor", q.cursor.as_deref())?.map(|u| u.to_string()),
        within: None,
    };
    let limit = filter.limit;
    let (runs, next_cursor) = state.engine.runs(&caller.actor(), filter).await?;
    Ok(web::Json(RunList {
        runs: runs.iter().map(RunView::of).collect(),
        limit,
        next_cursor,
    }))
}

/// Cancel a run
///
/// Hosts not started are skipped, running ones canceled (their remote processes killed).
/// 409 if the run had already ended.
#[utoipa::path(
    operation_id = "cancel_run",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run's id.")),
    responses(
        (status = 200, description = "The run, its hosts stopping.", body = RunView),
        Errors<(Unauthorized, NotFound, Conflict, Unavailable)>,
    )
)]
#[post("/runs/{id}/cancel")]
pub async fn cancel_run(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<RunView>, ApiError> {
    let run = state
        .engine
        .cancel_run(&caller.actor(), run_id(&path)?)
        .await?;
    Ok(web::Json(RunView::of(&run)))
}

/// Body of `POST /runs/{id}/rerun`, optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RerunRequest {
    /// `failed` (default: the failed, timed-out, unreachable, skipped and canceled hosts) or
    /// `all`.
    only: Option<RerunOnly>,
}

/// Rerun a run
///
/// A new run of the same job and strategy (`rerun_of` names this one) over the hosts that
/// did not complete, or all of them. 409 while the run has not ended; 422 when every host
/// completed and `only` is `failed`.
#[utoipa::path(
    operation_id = "rerun_run",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run's id.")),
    request_body = Option<RerunRequest>,
    responses(
        (status = 201, description = "The new run.", body = RunView),
        Errors<(BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, TooManyRequests, Unavailable)>,
    )
)]
#[post("/runs/{id}/rerun")]
pub async fn rerun_run(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    OptionalJsonBody(request): OptionalJsonBody<RerunRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<RunView>>, ApiError> {
    state.limit_submissions(&caller)?;
    let id = run_id(&path)?;
    let only = request.only.unwrap_or_default();
    let run = state.engine.rerun(&caller.actor(), id, only).await?;
    Ok(web::Json(RunView::of(&run))
        .customize()
        .with_status(StatusCode::CREATED))
}

/// Hosts that printed the same output and ended the same way.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputGroupView {
    /// The hosts' server names, in run order.
    servers: Vec<String>,
    /// Their server ids, in the same order.
    server_ids: Vec<String>,
    /// How they ended.
    status: HostStatus,
    /// Their exit code.
    #[schema(required = true)]
    exit_code: Option<i32>,
    /// SHA-256 of the output (stdout and stderr as they came), hex.
    output_sha256: String,
    /// Output bytes.
    output_bytes: u64,
    /// The output's first 4 KiB, as text (bytes that are not UTF-8 replaced).
    sample: String,
}

/// A run's output, grouped
///
/// Hosts grouped by identical output and exit code (what `dshbak -c` does to pssh output),
/// in the order each group's first host appears.
#[utoipa::path(
    operation_id = "run_summary",
    tag = "runs",
    params(("id" = uuid::Uuid, Path, description = "The run's id.")),
    responses(
        (status = 200, description = "The groups.", body = Vec<OutputGroupView>),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/runs/{id}/summary")]
pub async fn run_summary(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<Vec<OutputGroupView>>, ApiError> {
    let (run, groups) = state
        .engine
        .run_summary(&caller.actor(), run_id(&path)?)
        .await?;
    let views = groups
        .into_iter()
        .map(|g| OutputGroupView {
            servers: (g.hosts.iter())
                .map(|&i| run.hosts[i].host.server_name.clone())
                .collect(),
            server_ids: (g.hosts.iter())
                .map(|&i| run.hosts[i].host.server_id.clone())
                .collect(),
            status: g.status,
            exit_code: g.exit_code,
            output_sha256: g.output_sha256,
            output_bytes: g.output_bytes,
            sample: String::from_utf8_lossy(&g.sample).into_owned(),
        })
        .collect();
    Ok(web::Json(views))
}
