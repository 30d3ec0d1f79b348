//! `GET /health`: is the database reachable, which queue is in use.

use actix_web::{HttpResponse, web};

use super::AppState;
use super::openapi::Health;

/// Health
///
/// 200 when the database answers, 503 when it does not. Needs no token; says nothing
/// secret.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "The database answers.", body = Health),
        (status = 503, description = "The database does not answer.", body = Health),
    )
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let db = state.store.ping().await;
    let body = serde_json::json!({
        "status": if db.is_ok() { "ok" } else { "unavailable" },
        "database": match &db { Ok(()) => "ok".to_string(), Err(e) => format!("error: {e}") },
        "database_backend": state.store.backend().as_str(),
        "queue": state.queue.kind(),
        "queue_connected": state.queue.is_up(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if db.is_ok() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
