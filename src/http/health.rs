//! `GET /health`: is the database reachable, which queue is in use. `GET /health/ready`:
//! may this process be sent work now (the database answers and, where a broker is
//! configured, the broker is connected), for orchestrators and load balancers.

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
    answer(h.database.is_ok(), view)
}

/// 200 with `view` when `ok`, else 503 with it.
fn answer(ok: bool, view: impl Serialize) -> HttpResponse {
    if ok {
        HttpResponse::Ok().json(view)
    } else {
        HttpResponse::ServiceUnavailable().json(view)
    }
}

/// `GET /health/ready`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Readiness)]
pub struct ReadyView {
    /// `ready`, or `not ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// Whether the database answers.
    database: bool,
    /// Whether the broker is connected; null when no broker is configured.
    #[schema(required = true)]
    broker: Option<bool>,
}

/// Readiness
///
/// 200 when this process can take work now: the database answers and, where RabbitMQ is
/// configured, the broker is connected; 503 until then. `/health` is liveness and says
/// what is down. Needs no token; says nothing secret.
#[utoipa::path(
    operation_id = "ready",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = ReadyView),
        (status = 503, description = "Not ready: the database or the broker is not reachable.", body = ReadyView),
    )
)]
#[get(
    "/health/ready",
    wrap = "actix_web::middleware::from_fn(super::auth::loopback_guard)",
    wrap = "actix_web::middleware::from_fn(super::metrics::track)"
)]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let h = state.engine.health().await;
    let broker = (h.queue == "rabbitmq").then_some(h.queue_connected);
    let ready = h.database.is_ok() && broker != Some(false);
    let view = ReadyView {
        status: if ready { "ready" } else { "not ready" },
        database: h.database.is_ok(),
        broker,
    };
    answer(ready, view)
}

/// What a process that is still waiting for its database says (see `app`): `/health` and
/// `/health/ready` answer 503 with their usual bodies, every other path 503 with the error
/// body (`unavailable`). Made from the settings alone: there is no engine yet.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Whether a broker is configured.
    pub broker: bool,
}

/// The routes of a [`Waiting`] process.
pub fn configure_waiting(cfg: &mut web::ServiceConfig, waiting: Waiting) {
    cfg.app_data(web::Data::new(waiting))
        .route("/health", web::get().to(waiting_health))
        .route("/health/ready", web::get().to(waiting_ready))
        .default_service(web::to(waiting_other));
}

async fn waiting_health(waiting: web::Data<Waiting>) -> HttpResponse {
    answer(
        false,
        HealthView {
            status: "unavailable",
            database: "error: database unreachable".into(),
            database_backend: waiting.backend,
            queue: if waiting.broker { "rabbitmq" } else { "memory" },
            queue_connected: false,
            version: env!("CARGO_PKG_VERSION"),
        },
    )
}

async fn waiting_ready(waiting: web::Data<Waiting>) -> HttpResponse {
    answer(
        false,
        ReadyView {
            status: "not ready",
            database: false,
            broker: waiting.broker.then_some(false),
        },
    )
}

async fn waiting_other() -> Result<HttpResponse, crate::error::ApiError> {
    Err(crate::error::ApiError::Unavailable(
        "the service is starting: its database is not reachable yet".into(),
    ))
}
