//! The HTTP API: routes per resource, the JSON body extractor, the JSON 404/405.
//!
//! Handlers read like a paragraph: parse, act through the store or the supervisor, respond.
//! They own no state; everything they need arrives as [`AppState`].

mod audit;
pub mod auth;
mod body;
mod health;
pub mod jobs;
pub mod limits;
mod servers;
pub mod stream;

pub use body::JsonBody;

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::settings::Settings;
use crate::store::Store;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The settings the process started with.
    pub settings: std::sync::Arc<Settings>,
    /// The queue new jobs are announced on.
    pub queue: std::sync::Arc<dyn crate::queue::JobQueue>,
    /// The process's event bus.
    pub events: crate::events::EventBus,
    /// The dispatcher, for cancels of jobs running in this process.
    pub dispatcher: Option<actix::Addr<crate::actors::Dispatcher>>,
    /// The broker, when one is configured (cancels to other processes).
    pub broker: Option<std::sync::Arc<crate::queue::rabbit::RabbitBroker>>,
    /// The API tokens (none: authentication off).
    pub tokens: std::sync::Arc<auth::Tokens>,
    /// Per-caller rate and stream limits.
    pub limits: std::sync::Arc<limits::Limits>,
}

impl AppState {
    /// Take one submission from the caller's rate (429 past it).
    pub fn limit_submissions(&self, caller: &auth::Caller) -> Result<(), ApiError> {
        self.limits.submit(&caller.limit_key(self.tokens.enabled()))
    }

    /// Record what `caller` did. A failure to record is logged; the action stands.
    pub async fn audit(
        &self,
        caller: &auth::Caller,
        action: &'static str,
        target_kind: &'static str,
        target_id: impl ToString,
        detail: serde_json::Value,
    ) {
        let target_id = target_id.to_string();
        let entry = crate::store::AuditEntry {
            actor: caller.name.clone(),
            peer: Some(caller.peer.clone()),
            action,
            target_kind,
            target_id: Some(target_id.clone()),
            detail,
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!(action, target_id = %target_id, error = %e, "cannot write the audit record");
        }
    }
}

/// A resource whose other methods answer a JSON 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Register every route on an actix-web app (or a scope of the embedding program's app).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::{delete, get, post, put};
    cfg.route("/health", get().to(health::health)).service(
        web::scope("/api/v1")
            .wrap(actix_web::middleware::from_fn(auth::authenticate))
            .service(resource("/audit").route(get().to(audit::list)))
            .service(
                resource("/jobs")
                    .route(get().to(jobs::list))
                    .route(post().to(jobs::submit_command)),
            )
            // Before `/jobs/{id}`, which would otherwise take "script" for an id.
            .service(resource("/jobs/script").route(post().to(jobs::submit_script)))
            .service(resource("/jobs/{id}").route(get().to(jobs::get)))
            .service(resource("/jobs/{id}/cancel").route(post().to(jobs::cancel)))
            .service(resource("/jobs/{id}/duplicate").route(post().to(jobs::duplicate)))
            .service(resource("/jobs/{id}/logs").route(get().to(jobs::logs)))
            .service(resource("/jobs/{id}/stdout").route(get().to(jobs::stdout)))
            .service(resource("/jobs/{id}/stderr").route(get().to(jobs::stderr)))
            .service(resource("/jobs/{id}/stream").route(get().to(stream::stream)))
            .service(
                resource("/servers")
                    .route(get().to(servers::list))
                    .route(post().to(servers::create)),
            )
            .service(
                resource("/servers/{id}")
                    .route(get().to(servers::get))
                    .route(put().to(servers::update))
                    .route(delete().to(servers::delete)),
            )
            .service(resource("/servers/{id}/test").route(post().to(servers::test))),
    );
}

/// JSON 404 for paths no route matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.path()
    )))
}
