//! The HTTP API: extract → engine → typed view.
//!
//! Each handler is an actix route (`#[get("/jobs/{id}")]`) carrying its own
//! `#[utoipa::path]`; [`register`] mounts them, and the same registration collects the
//! OpenAPI document ([`document`]), so a route cannot exist without being documented, nor
//! be documented without existing. Handlers parse the request, call one [`Engine`] use case
//! and return their view type (`Serialize + ToSchema`); errors are [`ApiError`], always JSON.
//! Requests nothing matches are answered by [`not_found`]: a 405 with `Allow` when the path
//! is a route's and the method is not, a 404 otherwise.

mod audit;
pub mod auth;
mod body;
pub mod dashboard;
mod health;
mod jobs;
pub mod limits;
pub mod metrics;
mod openapi;
mod output;
mod run_stream;
mod runs;
mod schedules;
pub use openapi::{
    BadRequest, Conflict, Errors, InvalidField, NotFound, PayloadTooLarge, TooManyRequests,
    Unauthorized, Unavailable, UnsupportedMediaType,
};
mod servers;
pub mod session;
mod stream;
mod templates;
mod webhooks;
mod whoami;

use std::sync::{Arc, LazyLock};

pub use body::{JsonBody, OptionalJsonBody};
pub use health::{Waiting, configure_waiting};

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use utoipa::OpenApi as _;
use utoipa_actix_web::scope;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::domain::{FieldError, JobId, ServerId};
use crate::engine::{Actor, Engine};
use crate::error::ApiError;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Every use case.
    pub engine: Engine,
    /// The API tokens (none: authentication off).
    pub tokens: Arc<auth::Tokens>,
    /// Per-caller rate and stream limits.
    pub limits: Arc<limits::Limits>,
}

impl AppState {
    /// The state of an API on `engine`, with the tokens and limits of its settings.
    pub fn new(engine: Engine) -> Result<Self, auth::TokenError> {
        let tokens = auth::Tokens::from_settings(&engine.settings().auth.tokens)?;
        Ok(Self::with_tokens(engine, tokens))
    }

    /// The state of an API on `engine` with these tokens.
    pub fn with_tokens(engine: Engine, tokens: auth::Tokens) -> Self {
        let limits = Arc::new(limits::Limits::new(&engine.settings().limits));
        AppState {
            engine,
            tokens: Arc::new(tokens),
            limits,
        }
    }

    /// The live dashboard session of the id `id`: stored, not idle too long, and its token
    /// still configured (a session whose token is gone is ended).
    pub async fn session(&self, id: &str) -> Result<Option<session::Session>, ApiError> {
        let key = session::id_hash(id);
        let Some(row) = self.engine.session(key.clone()).await? else {
            return Ok(None);
        };
        let Some(identity) = self.tokens.verify_hex_digest(&row.token_hash) else {
            self.engine.close_session(key).await?;
            return Ok(None);
        };
        Ok(Some(session::Session {
            identity,
            csrf: session::csrf_of(id),
        }))
    }

    /// Take one submission from the caller's rate (429 past it).
    fn limit_submissions(&self, caller: &auth::Caller) -> Result<(), ApiError> {
        self.limits.submit(&caller.limit_key(self.tokens.enabled()))
    }
}

impl auth::Caller {
    /// The caller as the engine records it.
    fn actor(&self) -> Actor {
        Actor {
            name: self.name.clone(),
            peer: Some(self.peer.clone()),
            access: self.access.clone(),
        }
    }
}

/// The prefix of the versioned API; its routes need a token when tokens are configured.
pub const API_PREFIX: &str = "/api/v1";

/// Mount every route on `cfg`: those under [`API_PREFIX`] behind the token check. What it
/// mounts is what [`document`] describes.
pub fn register(cfg: &mut ServiceConfig) {
    use actix_web::middleware::from_fn;
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("bad query string: {e}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::NotFound(format!("bad path: {e}")).into()),
    );
    let api = scope::scope(API_PREFIX)
        .service(openapi::serve)
        .service(audit::list_audit)
        .service(jobs::list_jobs)
        .service(jobs::submit_command)
        .service(jobs::submit_script)
        .service(jobs::get_job)
        .service(jobs::cancel_job)
        .service(jobs::duplicate_job)
        .service(output::job_logs)
        .service(output::job_stdout)
        .service(output::job_stderr)
        .service(output::job_output)
        .service(stream::follow_job)
        .service(servers::list_servers)
        .service(servers::create_server)
        .service(servers::get_server)
        .service(servers::update_server)
        .service(servers::delete_server)
        .service(servers::test_server)
        .service(runs::list_runs)
        .service(runs::start_run)
        .service(runs::get_run)
        .service(runs::cancel_run)
        .service(runs::rerun_run)
        .service(runs::run_summary)
        .service(run_stream::follow_run)
        .service(templates::list_templates)
        .service(templates::create_template)
        .service(templates::get_template)
        .service(templates::update_template)
        .service(templates::delete_template)
        .service(templates::launch_template)
        .service(schedules::list_schedules)
        .service(schedules::create_schedule)
        .service(schedules::preview)
        .service(schedules::get_schedule)
        .service(schedules::update_schedule)
        .service(schedules::delete_schedule)
        .service(schedules::pause_schedule)
        .service(schedules::resume_schedule)
        .service(webhooks::list_webhooks)
        .service(webhooks::create_webhook)
        .service(webhooks::get_webhook)
        .service(webhooks::update_webhook)
        .service(webhooks::delete_webhook)
        .service(webhooks::list_deliveries)
        .service(webhooks::redeliver)
        .service(whoami::whoami)
        .map(|api| {
            api.default_service(web::to(not_found))
                .wrap(from_fn(auth::authenticate))
                .wrap(from_fn(auth::loopback_guard))
                // Outermost, so a request the token check refuses is counted too.
                .wrap(from_fn(metrics::track))
        });
    cfg.service(api)
        // Outside /api/v1: no token (scrapers send none); they show nothing secret.
        .service(health::health)
        .service(health::ready)
        .service(metrics::scrape);
}

/// Register every route on an actix-web app (or a scope of the embedding program's app).
pub fn configure(cfg: &mut web::ServiceConfig) {
    register(&mut ServiceConfig::new(cfg));
}

/// The OpenAPI document of the routes [`register`] mounts, its version the crate's.
pub fn document() -> utoipa::openapi::OpenApi {
    use utoipa_actix_web::AppExt;
    let (_, mut doc) = actix_web::App::new()
        .into_utoipa_app()
        .openapi(openapi::ApiDoc::openapi())
        .configure(register)
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    openapi::narrow_bodies(&mut doc);
    openapi::forbidden_everywhere(&mut doc, API_PREFIX);
    doc
}

/// The document, made once, and the routes it lists.
struct Served {
    json: Result<String, serde_json::Error>,
    routes: Vec<(Method, String)>,
}

static SERVED: LazyLock<Served> = LazyLock::new(|| {
    let doc = document();
    let routes = (doc.paths.paths.iter())
        .flat_map(|(path, item)| {
            let ops = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ];
            ops.into_iter()
                .filter(|(_, op)| op.is_some())
                .map(|(method, _)| (method, path.clone()))
        })
        .collect();
    Served {
        json: doc.to_json(),
        routes,
    }
});

/// Every route: its method and its path as the document spells it (`{id}` for a segment).
pub fn routes() -> &'static [(Method, String)] {
    &SERVED.routes
}

/// Whether `path` is an instance of the route pattern `pattern` (actix's own matching).
fn matches(pattern: &str, path: &str) -> bool {
    actix_web::dev::ResourceDef::new(pattern).is_match(path)
}

/// The methods the route patterns that best match `path` take: of the patterns `path` is
/// an instance of, those with the most literal segments (`/jobs/script` is not `/jobs/{id}`).
fn allowed_methods(path: &str) -> Vec<&'static str> {
    let literal = |pattern: &str| pattern.split('/').filter(|s| !s.starts_with('{')).count();
    let matching: Vec<&(Method, String)> = routes()
        .iter()
        .filter(|(_, pattern)| matches(pattern, path))
        .collect();
    let best = matching.iter().map(|(_, p)| literal(p)).max().unwrap_or(0);
    matching
        .into_iter()
        .filter(|(_, p)| literal(p) == best)
        .map(|(method, _)| method.as_str())
        .collect()
}

/// The 405 of a request whose path is a route's and whose method is not.
fn method_not_allowed(req: &HttpRequest) -> Option<ApiError> {
    let allowed = allowed_methods(req.path().trim_end_matches('/'));
    (!allowed.is_empty()).then(|| ApiError::MethodNotAllowed {
        message: format!("{} is not allowed on {}", req.method(), req.path()),
        allow: allowed.join(", "),
    })
}

/// A request no route takes: 405 with the methods the path takes (`Allow`), or 404.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(err) = method_not_allowed(&req) {
        return Err(err);
    }
    metrics::count_unmatched(&req, actix_web::http::StatusCode::NOT_FOUND);
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// The job a path names; not a UUID: it names nothing (404).
fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("job {raw:?} does not exist")))
}

/// The server a path names; not a UUID: it names nothing (404).
fn server_id(raw: &str) -> Result<ServerId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("server {raw:?} does not exist")))
}

/// An optional id in a query string (`what` names the field of a 422); given, it must be a
/// UUID (an empty value is not one, and does not pass for "absent").
fn optional_id<T: std::str::FromStr>(
    what: &'static str,
    raw: Option<&str>,
) -> Result<Option<T>, ApiError> {
    raw.map(|s| {
        s.parse()
            .map_err(|_| FieldError::new(what, format!("{s:?} is not a UUID")).into())
    })
    .transpose()
}

/// The `limit` of a paged list: 1 to 1000, 50 when absent.
fn page_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    let Some(l) = raw else { return Ok(50) };
    l.parse::<i64>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| {
            FieldError::new("limit", format!("{l:?} is not a number from 1 to 1000")).into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_with_the_crate_version() {
        let json = SERVED.json.as_ref().expect("the document encodes");
        let doc: serde_json::Value = serde_json::from_str(json).expect("json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(routes().len() >= 20, "{:?}", routes());
    }

    #[test]
    fn the_per_route_bodies_require_what_validation_requires() {
        let doc = serde_json::to_value(document()).expect("json");
        let body = |path: &str, method: &str| {
            let schema = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"];
            let name = schema
                .as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default();
            doc["components"]["schemas"][name].clone()
        };
        let command = body("/api/v1/jobs", "post");
        assert_eq!(
            command["required"],
            serde_json::json!(["command"]),
            "{command}"
        );
        assert!(command["properties"].get("script").is_none(), "{command}");
        assert!(command["properties"].get("shell").is_none(), "{command}");
        let script = body("/api/v1/jobs/script", "post");
        assert_eq!(
            script["required"],
            serde_json::json!(["script"]),
            "{script}"
        );
        assert!(script["properties"].get("command").is_none(), "{script}");
        let create = body("/api/v1/servers", "post");
        let required = serde_json::json!(["name", "hostname", "user"]);
        assert_eq!(create["required"], required, "{create}");
        // An update requires nothing: omitted fields keep their value.
        let update = body("/api/v1/servers/{id}", "put");
        assert!(update["required"].is_null(), "{update}");
    }

    #[test]
    fn selectors_are_documented_as_they_are_parsed() {
        let doc = serde_json::to_value(document()).expect("json");
        let param = (doc["paths"]["/api/v1/servers"]["get"]["parameters"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == "labels"))
            .expect("the labels parameter");
        assert_eq!(param["schema"]["pattern"], crate::domain::SELECTOR_PATTERN);
        let targets = &doc["components"]["schemas"]["TargetsRequest"];
        assert_eq!(
            targets["properties"]["selector"]["pattern"],
            crate::domain::SELECTOR_PATTERN
        );
    }

    #[test]
    fn a_literal_segment_beats_a_parameter() {
        assert_eq!(allowed_methods("/api/v1/jobs/script"), vec!["POST"]);
        assert_eq!(allowed_methods("/api/v1/jobs/x"), vec!["GET"]);
        assert!(allowed_methods("/api/v1/nothing").is_empty());
    }

    #[test]
    fn route_patterns_match_their_instances_only() {
        assert!(matches("/api/v1/jobs/{id}", "/api/v1/jobs/x"));
        assert!(!matches("/api/v1/jobs/{id}", "/api/v1/jobs/x/y"));
        assert!(!matches("/api/v1/jobs/{id}", "/api/v1/jobs"));
        assert!(matches("/health", "/health"));
    }
}
