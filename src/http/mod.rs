//! The HTTP API: routes per resource, the JSON body extractor, the JSON 404/405.
//!
//! Handlers read like a paragraph: parse, act through the store or the supervisor, respond.
//! They own no state; everything they need arrives as [`AppState`].

mod body;
mod health;
pub mod jobs;
mod servers;

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
}

/// Register every route on an actix-web app (or a scope of the embedding program's app).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health::health)).service(
        web::scope("/api/v1")
            .service(
                web::resource("/jobs")
                    .route(web::get().to(jobs::list))
                    .route(web::post().to(jobs::submit_command))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/script")
                    .route(web::post().to(jobs::submit_script))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/{id}")
                    .route(web::get().to(jobs::get))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/{id}/cancel")
                    .route(web::post().to(jobs::cancel))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/{id}/duplicate")
                    .route(web::post().to(jobs::duplicate))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/{id}/logs")
                    .route(web::get().to(jobs::logs))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/{id}/stdout")
                    .route(web::get().to(jobs::stdout))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/jobs/{id}/stderr")
                    .route(web::get().to(jobs::stderr))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/servers")
                    .route(web::get().to(servers::list))
                    .route(web::post().to(servers::create))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/servers/{id}")
                    .route(web::get().to(servers::get))
                    .route(web::put().to(servers::update))
                    .route(web::delete().to(servers::delete))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/servers/{id}/test")
                    .route(web::post().to(servers::test))
                    .default_service(web::to(method_not_allowed)),
            ),
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
