//! `/api/v1/schedules`: templates launched on a cron timer — create, read, list, replace,
//! delete, pause, resume, and the preview of fire times.

use actix_web::http::StatusCode;
use actix_web::{Responder, delete, get, post, put, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::{
    AppState, BadRequest, Conflict, Errors, InvalidField, JsonBody, NotFound, PayloadTooLarge,
    Unauthorized, Unavailable, UnsupportedMediaType,
};
use crate::domain::{FieldError, Fire, Micros, Overlap};
use crate::engine::{Schedule, ScheduleRequest};
use crate::error::ApiError;

/// One fire of a schedule.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireView {
    /// The fire time.
    fire_at: Micros,
    /// `launched` (`run_id`), `skipped` (the previous run was still going), `queued` (it
    /// waits for the previous run), `failed` (the launch was refused: `detail`), or
    /// `claimed` (being launched, or lost with the process that claimed it).
    status: String,
    /// The run it launched.
    #[schema(required = true, format = Uuid)]
    run_id: Option<String>,
    /// Why it was skipped, queued or failed.
    #[schema(required = true)]
    detail: Option<String>,
}

/// The schedule object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    /// Its id.
    #[schema(format = Uuid)]
    id: String,
    /// Its unique name.
    name: String,
    /// The template it launches.
    #[schema(format = Uuid)]
    template_id: String,
    /// The template's name.
    template: String,
    /// The parameters it launches with (secret ones are never shown).
    #[schema(value_type = Object)]
    parameters: Value,
    /// The cron expression.
    cron: String,
    /// The IANA time zone it is read in.
    timezone: String,
    /// What a fire does while the previous run still goes.
    overlap: Overlap,
    /// How far back missed fires are made up, in seconds.
    catch_up_secs: i64,
    /// Paused: nothing fires.
    paused: bool,
    /// The next fire time (null when paused, or when the expression never matches again).
    #[schema(required = true)]
    next_fire_at: Option<Micros>,
    /// The same, on the schedule's wall clock (RFC 3339 with the zone's offset).
    #[schema(required = true)]
    next_fire_local: Option<String>,
    /// The last fire time claimed.
    #[schema(required = true)]
    last_fired_at: Option<Micros>,
    /// The last fires, newest first (up to 10).
    last_fires: Vec<FireView>,
    /// When it was created.
    created_at: Micros,
    /// When it was last changed.
    updated_at: Micros,
    /// The scope of the token that created or last changed it, a selector over server
    /// labels: its runs start only on servers it matches (null: any server).
    #[schema(required = true)]
    scope: Option<String>,
}

impl ScheduleView {
    fn of(s: Schedule) -> Self {
        let row = s.row;
        ScheduleView {
            last_fired_at: s.fires.first().map(|f| Micros(f.fire_at)),
            last_fires: (s.fires.into_iter())
                .map(|f| FireView {
                    fire_at: Micros(f.fire_at),
                    status: f.status,
                    run_id: f.run_id,
                    detail: f.detail,
                })
                .collect(),
            next_fire_at: s.next.as_ref().map(|f| f.at),
            next_fire_local: s.next.map(|f| f.local),
            id: row.id,
            name: row.name,
            template_id: row.template_id,
            template: s.template_name,
            parameters: serde_json::from_str(&row.parameters).unwrap_or(Value::Null),
            cron: row.cron,
            timezone: row.timezone,
            overlap: row.overlap.parse().unwrap_or_default(),
            catch_up_secs: row.catch_up_secs,
            paused: row.paused,
            created_at: Micros(row.created_at),
            updated_at: Micros(row.updated_at),
            scope: row.scope,
        }
    }
}

/// `GET /api/v1/schedules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// Every schedule, by name.
    schedules: Vec<ScheduleView>,
}

/// Save a schedule
///
/// Checked whole when saved: the cron expression (the 422 says which field), the time
/// zone, the template (it must exist) and its parameters (as a launch would check them).
#[utoipa::path(
    operation_id = "create_schedule",
    tag = "schedules",
    request_body = ScheduleRequest,
    responses(
        (status = 201, description = "The schedule.", body = ScheduleView),
        Errors<(BadRequest, Unauthorized, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[post("/schedules")]
pub async fn create_schedule(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(request): JsonBody<ScheduleRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<ScheduleView>>, ApiError> {
    let s = state
        .engine
        .create_schedule(&caller.actor(), request)
        .await?;
    Ok(web::Json(ScheduleView::of(s))
        .customize()
        .with_status(StatusCode::CREATED))
}

/// List schedules
#[utoipa::path(
    operation_id = "list_schedules",
    tag = "schedules",
    responses(
        (status = 200, description = "Every schedule, by name.", body = ScheduleList),
        Errors<(Unauthorized, Unavailable)>,
    )
)]
#[get("/schedules")]
pub async fn list_schedules(
    state: web::Data<AppState>,
) -> Result<web::Json<ScheduleList>, ApiError> {
    let all = state.engine.schedules().await?;
    Ok(web::Json(ScheduleList {
        schedules: all.into_iter().map(ScheduleView::of).collect(),
    }))
}

/// Query of `GET /schedules/preview`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// The cron expression (5 fields, or 6 with seconds first).
    cron: String,
    /// The IANA time zone (default `UTC`).
    timezone: Option<String>,
    /// Fire times after this instant (RFC 3339; default now).
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// How many, 1 to 100 (default 10).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    count: Option<String>,
}

/// `GET /api/v1/schedules/preview`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    /// The next fire times, in UTC and on the zone's wall clock.
    fires: Vec<Fire>,
}

/// Preview fire times
///
/// The next fire times of an expression in a zone, by the rules schedules fire by: a local
/// time that does not exist (spring forward) fires once at the first instant after the
/// gap; one that occurs twice (fall back) fires once, the first time.
#[utoipa::path(
    operation_id = "preview_schedule",
    tag = "schedules",
    params(PreviewQuery),
    responses(
        (status = 200, description = "The fire times.", body = Preview),
        Errors<(BadRequest, Unauthorized, InvalidField)>,
    )
)]
#[get("/schedules/preview")]
pub async fn preview(
    state: web::Data<AppState>,
    query: web::Query<PreviewQuery>,
) -> Result<web::Json<Preview>, ApiError> {
    let q = query.into_inner();
    let from = (q.from.as_deref())
        .map(|f| {
            chrono::DateTime::parse_from_rfc3339(f)
                .map(|t| Micros(t.timestamp_micros()))
                .map_err(|_| FieldError::new("from", format!("{f:?} is not an RFC 3339 time")))
        })
        .transpose()?;
    let count = match q.count.as_deref() {
        None => 10,
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                FieldError::new("count", format!("{c:?} is not a number from 1 to 100"))
            })?,
    };
    let fires = state
        .engine
        .preview(&q.cron, q.timezone.as_deref(), from, count)?;
    Ok(web::Json(Preview { fires }))
}

/// One schedule
///
/// With its next fire time and its last fires.
#[utoipa::path(
    operation_id = "get_schedule",
    tag = "schedules",
    params(("name_or_id" = String, Path, description = "The schedule's name or id.")),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/schedules/{name_or_id}")]
pub async fn get_schedule(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<web::Json<ScheduleView>, ApiError> {
    Ok(web::Json(ScheduleView::of(
        state.engine.schedule(&path).await?,
    )))
}

/// Replace a schedule
///
/// The whole definition, checked as a create is; it fires from now on.
#[utoipa::path(
    operation_id = "update_schedule",
    tag = "schedules",
    params(("name_or_id" = String, Path, description = "The schedule's name or id.")),
    request_body = ScheduleRequest,
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView),
        Errors<(BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[put("/schedules/{name_or_id}")]
pub async fn update_schedule(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(request): JsonBody<ScheduleRequest>,
) -> Result<web::Json<ScheduleView>, ApiError> {
    let s = state
        .engine
        .update_schedule(&caller.actor(), &path, request)
        .await?;
    Ok(web::Json(ScheduleView::of(s)))
}

/// A confirmation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleDeleted {
    /// What was done.
    message: String,
}

/// Delete a schedule
///
/// Its runs stay.
#[utoipa::path(
    operation_id = "delete_schedule",
    tag = "schedules",
    params(("name_or_id" = String, Path, description = "The schedule's name or id.")),
    responses(
        (status = 200, description = "Deleted.", body = ScheduleDeleted),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[delete("/schedules/{name_or_id}")]
pub async fn delete_schedule(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<ScheduleDeleted>, ApiError> {
    state.engine.delete_schedule(&caller.actor(), &path).await?;
    Ok(web::Json(ScheduleDeleted {
        message: format!("schedule {} deleted", path.as_str()),
    }))
}

/// Pause a schedule
///
/// Nothing fires until it is resumed.
#[utoipa::path(
    operation_id = "pause_schedule",
    tag = "schedules",
    params(("name_or_id" = String, Path, description = "The schedule's name or id.")),
    responses(
        (status = 200, description = "The schedule, paused.", body = ScheduleView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[post("/schedules/{name_or_id}/pause")]
pub async fn pause_schedule(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<ScheduleView>, ApiError> {
    set_paused(&state, &caller, &path, true).await
}

/// Pause (`true`) or resume a schedule; its view.
async fn set_paused(
    state: &AppState,
    caller: &Caller,
    name_or_id: &str,
    paused: bool,
) -> Result<web::Json<ScheduleView>, ApiError> {
    let s = (state.engine)
        .pause_schedule(&caller.actor(), name_or_id, paused)
        .await?;
    Ok(web::Json(ScheduleView::of(s)))
}

/// Resume a schedule
///
/// It fires from now on; what fell while it was paused is not made up.
#[utoipa::path(
    operation_id = "resume_schedule",
    tag = "schedules",
    params(("name_or_id" = String, Path, description = "The schedule's name or id.")),
    responses(
        (status = 200, description = "The schedule, running.", body = ScheduleView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[post("/schedules/{name_or_id}/resume")]
pub async fn resume_schedule(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<ScheduleView>, ApiError> {
    set_paused(&state, &caller, &path, false).await
}
