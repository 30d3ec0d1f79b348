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
pub mod metrics;
pub mod openapi;
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

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
}

impl HttpMethod {
    /// The method's name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    fn route(self) -> actix_web::Route {
        match self {
            Self::Get => web::get(),
            Self::Post => web::post(),
            Self::Put => web::put(),
            Self::Delete => web::delete(),
        }
    }
}

/// One route of [`ROUTES`]: a method on a path, and the handler that answers it.
#[derive(Debug, Clone, Copy)]
pub struct ApiRoute {
    /// The method.
    pub method: HttpMethod,
    /// The full path, `{name}` for a path segment (as the OpenAPI document spells it).
    pub path: &'static str,
    handler: fn(actix_web::Route) -> actix_web::Route,
}

const fn route(
    method: HttpMethod,
    path: &'static str,
    handler: fn(actix_web::Route) -> actix_web::Route,
) -> ApiRoute {
    ApiRoute {
        method,
        path,
        handler,
    }
}

/// The prefix of the versioned API; its routes need a token when tokens are configured.
pub const API_PREFIX: &str = "/api/v1";

/// Every route, in matching order: what [`configure`] registers, and what the OpenAPI
/// document ([`openapi`]) must cover, which the `openapi` tests check. Routes of one path
/// stand together (they make one resource).
pub const ROUTES: &[ApiRoute] = {
    use HttpMethod::{Delete, Get, Post, Put};
    &[
        route(Get, "/health", |r| r.to(health::health)),
        // Outside /api/v1: no token (scrapers send none); it shows nothing secret.
        route(Get, "/metrics", |r| r.to(metrics::scrape)),
        route(Get, "/api/v1/openapi.json", |r| r.to(openapi::serve)),
        route(Get, "/api/v1/audit", |r| r.to(audit::list)),
        route(Get, "/api/v1/jobs", |r| r.to(jobs::list)),
        route(Post, "/api/v1/jobs", |r| r.to(jobs::submit_command)),
        // Before `/jobs/{id}`, which would otherwise take "script" for an id.
        route(Post, "/api/v1/jobs/script", |r| r.to(jobs::submit_script)),
        route(Get, "/api/v1/jobs/{id}", |r| r.to(jobs::get)),
        route(Post, "/api/v1/jobs/{id}/cancel", |r| r.to(jobs::cancel)),
        route(Post, "/api/v1/jobs/{id}/duplicate", |r| {
            r.to(jobs::duplicate)
        }),
        route(Get, "/api/v1/jobs/{id}/logs", |r| r.to(jobs::logs)),
        route(Get, "/api/v1/jobs/{id}/stdout", |r| r.to(jobs::stdout)),
        route(Get, "/api/v1/jobs/{id}/stderr", |r| r.to(jobs::stderr)),
        route(Get, "/api/v1/jobs/{id}/stream", |r| r.to(stream::stream)),
        route(Get, "/api/v1/servers", |r| r.to(servers::list)),
        route(Post, "/api/v1/servers", |r| r.to(servers::create)),
        route(Get, "/api/v1/servers/{id}", |r| r.to(servers::get)),
        route(Put, "/api/v1/servers/{id}", |r| r.to(servers::update)),
        route(Delete, "/api/v1/servers/{id}", |r| r.to(servers::delete)),
        route(Post, "/api/v1/servers/{id}/test", |r| r.to(servers::test)),
    ]
};

/// Register every route of [`ROUTES`] on an actix-web app (or a scope of the embedding
/// program's app): those under [`API_PREFIX`] behind the token check.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use actix_web::middleware::from_fn;
    let mut api = web::scope(API_PREFIX);
    for group in ROUTES.chunk_by(|a, b| a.path == b.path) {
        let Some(first) = group.first() else { continue };
        let in_api = first
            .path
            .strip_prefix(API_PREFIX)
            .filter(|rest| rest.starts_with('/'));
        let mut res = resource(in_api.unwrap_or(first.path));
        for r in group {
            res = res.route((r.handler)(r.method.route()));
        }
        match in_api {
            Some(_) => api = api.service(res),
            None => {
                cfg.service(res.wrap(from_fn(metrics::track)));
            }
        }
    }
    cfg.service(
        api.wrap(from_fn(auth::authenticate))
            // Outermost, so a request the token check refuses is counted too.
            .wrap(from_fn(metrics::track)),
    );
}

/// JSON 404 for paths no route matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    metrics::count_unmatched(&req, actix_web::http::StatusCode::NOT_FOUND);
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
