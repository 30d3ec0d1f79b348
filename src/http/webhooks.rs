//! `/api/v1/webhooks`: where events are posted — create, read, list, replace, delete, the
//! deliveries of each, and redelivery by hand.

use actix_web::http::StatusCode;
use actix_web::{Responder, delete, get, post, put, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::{
    AppState, BadRequest, Conflict, Errors, InvalidField, JsonBody, NotFound, PayloadTooLarge,
    Unauthorized, Unavailable, UnsupportedMediaType, page_limit,
};
use crate::domain::Micros;
use crate::engine::WebhookRequest;
use crate::error::ApiError;
use crate::store::{DeliveryRow, WebhookRow};

/// The webhook object. Its secret is never shown: `has_secret` says whether deliveries are
/// signed.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// Its id.
    #[schema(format = Uuid)]
    id: String,
    /// Its unique name.
    name: String,
    /// Where deliveries are posted (without a query string or credentials).
    url: String,
    /// The events it wants.
    events: Vec<String>,
    /// Which jobs and runs.
    filter: FilterView,
    /// Whether deliveries carry `X-JobExec-Signature`.
    has_secret: bool,
    /// Whether events are delivered.
    active: bool,
    /// When it was created.
    created_at: Micros,
    /// When it was last changed.
    updated_at: Micros,
}

impl WebhookView {
    fn of(row: &WebhookRow) -> Self {
        WebhookView {
            id: row.id.clone(),
            name: row.name.clone(),
            url: crate::settings::redact_url(&row.url),
            events: row.event_names(),
            filter: FilterView {
                selector: row.selector.clone(),
                template_id: row.template_id.clone(),
            },
            has_secret: row.sealed_secret.is_some(),
            active: row.active,
            created_at: Micros(row.created_at),
            updated_at: Micros(row.updated_at),
        }
    }
}

/// A webhook's `filter` as saved.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilterView {
    /// Only jobs and runs on servers this selector matches.
    #[schema(required = true)]
    selector: Option<String>,
    /// Only jobs and runs of this template (its id), and its schedules' skipped fires.
    #[schema(required = true, format = Uuid)]
    template_id: Option<String>,
}

/// One delivery: an event for one webhook, attempted until delivered or out of attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The id every attempt carries in `X-JobExec-Delivery`.
    #[schema(format = Uuid)]
    delivery_id: String,
    /// The event.
    event: String,
    /// The job, run or schedule it is about.
    #[schema(format = Uuid)]
    subject_id: String,
    /// `pending`, `delivered` or `failed`.
    status: String,
    /// Attempts made.
    attempts: i32,
    /// The last attempt's HTTP status.
    #[schema(required = true)]
    last_status_code: Option<i32>,
    /// Why the last attempt failed.
    #[schema(required = true)]
    last_error: Option<String>,
    /// When the next attempt is due (pending only).
    #[schema(required = true)]
    next_attempt_at: Option<Micros>,
    /// When the event happened.
    created_at: Micros,
}

impl DeliveryView {
    fn of(d: DeliveryRow) -> Self {
        DeliveryView {
            next_attempt_at: (d.status == "pending").then_some(Micros(d.next_attempt_at)),
            delivery_id: d.id,
            event: d.event,
            subject_id: d.subject_id,
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: Micros(d.created_at),
        }
    }
}

/// `GET /api/v1/webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// Every webhook, by name.
    webhooks: Vec<WebhookView>,
}

/// `GET /api/v1/webhooks/{name_or_id}/deliveries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    deliveries: Vec<DeliveryView>,
}

/// Query of the deliveries list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// How many, 1 to 1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// Save a webhook
///
/// `events` (any of `job.completed`, `job.failed`, `job.timed_out`, `job.canceled`,
/// `job.recovered`, `run.finished`, `schedule.fire_skipped`), an optional `filter`, an
/// optional signing `secret` (write-only, sealed at rest).
#[utoipa::path(
    operation_id = "create_webhook",
    tag = "webhooks",
    request_body = WebhookRequest,
    responses(
        (status = 201, description = "The webhook.", body = WebhookView),
        Errors<(BadRequest, Unauthorized, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[post("/webhooks")]
pub async fn create_webhook(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(request): JsonBody<WebhookRequest>,
) -> Result<actix_web::CustomizeResponder<web::Json<WebhookView>>, ApiError> {
    let row = state
        .engine
        .create_webhook(&caller.actor(), request)
        .await?;
    Ok(web::Json(WebhookView::of(&row))
        .customize()
        .with_status(StatusCode::CREATED))
}

/// List webhooks
#[utoipa::path(
    operation_id = "list_webhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "Every webhook, by name.", body = WebhookList),
        Errors<(Unauthorized, Unavailable)>,
    )
)]
#[get("/webhooks")]
pub async fn list_webhooks(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
) -> Result<web::Json<WebhookList>, ApiError> {
    let rows = state.engine.webhooks(&caller.actor()).await?;
    Ok(web::Json(WebhookList {
        webhooks: rows.iter().map(WebhookView::of).collect(),
    }))
}

/// One webhook
#[utoipa::path(
    operation_id = "get_webhook",
    tag = "webhooks",
    params(("name_or_id" = String, Path, description = "The webhook's name or id.")),
    responses(
        (status = 200, description = "The webhook.", body = WebhookView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/webhooks/{name_or_id}")]
pub async fn get_webhook(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<WebhookView>, ApiError> {
    Ok(web::Json(WebhookView::of(
        &state.engine.webhook(&caller.actor(), &path).await?,
    )))
}

/// Replace a webhook
///
/// The whole definition; the secret stays as it was unless `secret` is given (`""`
/// removes it).
#[utoipa::path(
    operation_id = "update_webhook",
    tag = "webhooks",
    params(("name_or_id" = String, Path, description = "The webhook's name or id.")),
    request_body = WebhookRequest,
    responses(
        (status = 200, description = "The webhook.", body = WebhookView),
        Errors<(BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[put("/webhooks/{name_or_id}")]
pub async fn update_webhook(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(request): JsonBody<WebhookRequest>,
) -> Result<web::Json<WebhookView>, ApiError> {
    let row = (state.engine)
        .update_webhook(&caller.actor(), &path, request)
        .await?;
    Ok(web::Json(WebhookView::of(&row)))
}

/// Delete a webhook
///
/// Its deliveries, pending or not, go with it.
#[utoipa::path(
    operation_id = "delete_webhook",
    tag = "webhooks",
    params(("name_or_id" = String, Path, description = "The webhook's name or id.")),
    responses(
        (status = 204, description = "Deleted."),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[delete("/webhooks/{name_or_id}")]
pub async fn delete_webhook(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<actix_web::HttpResponse, ApiError> {
    state.engine.delete_webhook(&caller.actor(), &path).await?;
    Ok(actix_web::HttpResponse::NoContent().finish())
}

/// A webhook's deliveries
#[utoipa::path(
    operation_id = "list_deliveries",
    tag = "webhooks",
    params(("name_or_id" = String, Path, description = "The webhook's name or id."), DeliveriesQuery),
    responses(
        (status = 200, description = "Newest first.", body = DeliveryList),
        Errors<(BadRequest, Unauthorized, NotFound, InvalidField, Unavailable)>,
    )
)]
#[get("/webhooks/{name_or_id}/deliveries")]
pub async fn list_deliveries(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    query: web::Query<DeliveriesQuery>,
) -> Result<web::Json<DeliveryList>, ApiError> {
    let limit = page_limit(query.limit.as_deref())?;
    let rows = state
        .engine
        .deliveries(&caller.actor(), &path, limit)
        .await?;
    Ok(web::Json(DeliveryList {
        deliveries: rows.into_iter().map(DeliveryView::of).collect(),
    }))
}

/// Redeliver
///
/// The delivery is attempted again now, with the same delivery id and its attempts counted
/// afresh (whether it was delivered, failed or pending).
#[utoipa::path(
    operation_id = "redeliver",
    tag = "webhooks",
    params(
        ("name_or_id" = String, Path, description = "The webhook's name or id."),
        ("delivery_id" = String, Path, description = "The delivery's id."),
    ),
    responses(
        (status = 202, description = "Pending again.", body = DeliveryView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[post("/webhooks/{name_or_id}/deliveries/{delivery_id}/redeliver")]
pub async fn redeliver(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<(String, String)>,
) -> Result<actix_web::CustomizeResponder<web::Json<DeliveryView>>, ApiError> {
    let (hook, delivery) = path.into_inner();
    let row = (state.engine)
        .redeliver(&caller.actor(), &hook, &delivery)
        .await?;
    Ok(web::Json(DeliveryView::of(row))
        .customize()
        .with_status(StatusCode::ACCEPTED))
}
