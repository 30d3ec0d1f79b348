//! `GET /health`: is the database reachable, which queue is in use.

use actix_web::get;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthView {
    /// `ok`, or `unavailable` when the database does not answer.
    #[schema(example = "ok")]
    status: &'static str,
    /// `ok`, or `error: database unreachable` (the cause, which names the database's host and
    /// user, goes to the log).
    #[schema(example = "ok")]
    database: String,
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    database_backend: &'static str,
    /// `rabbitmq` or `memory`.
    #[schema(example = "memory")]
    queue: &'static str,
    /// Whether the queue can take messages now.
    queue_connected: bool,
    /// The service's version.
    version: &'static str,
}

/// Health
///
/// 200 when the database answers, 503 when it does not. Needs no token; says nothing
/// secret.
#[utoipa::path(
    operation_id = "health",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The database answers.", body = HealthView),
        (status = 503, description = "The database does not answer.", body = HealthView),
    )
)]
#[get(
    "/health",
    wrap = "actix_web::middleware::from_fn(super::auth::loopback_guard)",
    wrap = "actix_web::middleware::from_fn(super::metrics::track)"
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let h = state.engine.health().await;
    let view = HealthView {
        status: if h.database.is_ok() {
            "ok"
        } else {
            "unavailable"
        },
        database: match &h.database {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "health: the database does not answer");
                "error: database unreachable".to_string()
            }
        },
        database_backend: h.backend.as_str(),
        queue: h.queue,
        queue_connected: h.queue_connected,
        version: env!("CARGO_PKG_VERSION"),
    };
    if h.database.is_ok() {
        HttpResponse::Ok().json(view)
    } else {
        HttpResponse::ServiceUnavailable().json(view)
    }
}
