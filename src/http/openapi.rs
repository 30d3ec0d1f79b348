//! `GET /api/v1/openapi.json`: the OpenAPI 3 document of the API, generated from the code.
//!
//! Every handler carries its own `#[utoipa::path]` (method, path, parameters, body and every
//! response, errors included) next to its code; [`ApiDoc`] gathers them. The route table
//! [`super::ROUTES`] that `configure` registers is checked against this document by the
//! integration test `openapi`, in both directions, so a route cannot be added, removed or
//! moved without the document following.
//!
//! Most response bodies are typed ([`JobView`], `ServerView`, [`ErrorBody`]); the envelopes
//! that handlers build with `json!` are described here by schema structs
//! ([`JobList`], [`JobLogs`], …), and the same test compares the keys of real responses with
//! their properties, so these cannot drift either.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use serde_json::Value;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, response::Response};
use utoipa::{Modify, OpenApi, ToSchema};

use super::jobs::{DuplicateRequest, JobView};
use super::servers::{ServerView, TestOptions};
use crate::domain::ServerPatch;
use crate::domain::{AuthType, HostKeyCheck, JobKind, JobRequest, JobStatus, Micros, OutputStream};
use crate::error::{ApiError, ErrorBody};

/// The OpenAPI document: every route of [`super::ROUTES`], its schemas and responses.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "job-executor",
        description = "Run shell jobs on remote machines over SSH: submit, follow, cancel, \
            and read their output.\n\n\
            **Authentication.** When tokens are configured every route under `/api/v1` needs \
            `Authorization: Bearer TOKEN` (401 otherwise); without tokens the service listens \
            on loopback only and needs none. `/health` and `/metrics` never need one.\n\n\
            **Errors.** Every error is JSON, `{\"error\", \"code\"}` plus `\"field\"` for a \
            422 (`ErrorBody`). A path no route matches is a 404, a method a path does not \
            take a 405 (`method_not_allowed`), both with that body. A fault of the service \
            is a 500 whose message says only that something failed.\n\n\
            **Times** are RFC 3339 in UTC with microseconds; **ids** are UUIDs; an id that is \
            not a UUID names nothing (404).",
        license(name = "MIT"),
    ),
    paths(
        super::health::health,
        metrics_doc,
        super::audit::list,
        super::jobs::list,
        super::jobs::submit_command,
        super::jobs::submit_script,
        super::jobs::get,
        super::jobs::cancel,
        super::jobs::duplicate,
        super::jobs::logs,
        super::jobs::stdout,
        super::jobs::stderr,
        super::stream::stream,
        super::servers::list,
        super::servers::create,
        super::servers::get,
        super::servers::update,
        super::servers::delete,
        super::servers::test,
        serve,
    ),
    components(
        schemas(
            ErrorBody,
            JobRequest,
            DuplicateRequest,
            JobView,
            JobKind,
            JobStatus,
            JobList,
            CancelResult,
            DuplicateResult,
            JobLogs,
            OutputChunk,
            OutputStream,
            OutputEvent,
            ServerPatch,
            ServerView,
            AuthType,
            HostKeyCheck,
            ServerList,
            TestOptions,
            TestResult,
            Message,
            AuditPage,
            AuditEntry,
            Health,
            Micros,
        ),
        responses(
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            PayloadTooLarge,
            InvalidField,
            TooManyRequests,
            Unavailable,
        ),
    ),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Submit, follow, cancel and read the output of jobs."),
        (name = "servers", description = "The SSH servers jobs run on."),
        (name = "audit", description = "Who did what."),
        (name = "health", description = "Liveness and metrics; no token."),
        (name = "meta", description = "This document."),
    ),
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme the document's `security` names.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "One of the tokens of `auth.tokens`. Needed by every route under /api/v1 when \
                 tokens are configured; without tokens the service is loopback-only.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document, its version the crate's.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as JSON, made once.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| document().to_json().map_err(|e| e.to_string()));

/// This document
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3 document of this API.", body = Object),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn serve() -> Result<HttpResponse, ApiError> {
    let json = DOCUMENT
        .as_ref()
        .map_err(|e| ApiError::Internal(format!("cannot encode the OpenAPI document: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json.clone()))
}

/// Prometheus metrics
///
/// The Prometheus text exposition: job counts by status, queue depth, HTTP requests and
/// job durations of this process. Needs no token; shows nothing secret.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain"),
    )
)]
#[allow(dead_code)] // Documents `super::metrics::scrape`, which is served in its place.
fn metrics_doc() {}

// --- Error responses: `ErrorBody` with the status's meaning. ----------------------------

/// A JSON error response of `description`, with `headers` (name, description).
fn error_response(description: &str, headers: &[(&str, &str)]) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    for (name, about) in headers {
        let header = HeaderBuilder::new()
            .schema(String::schema())
            .description(Some(*about))
            .build();
        response = response.header(*name, header);
    }
    response.build().into()
}

macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident => $description:literal $(, $header:literal : $about:literal)?;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description, &[$(($header, $about))?]))
            }
        }
    )*};
}

use utoipa::PartialSchema as _;

error_responses! {
    /// 400 `bad_request`.
    BadRequest => "The body is not JSON, or not a JSON object.";
    /// 401 `unauthorized`.
    Unauthorized => "Tokens are configured and the request has none, or not a valid one.",
        "WWW-Authenticate": "`Bearer`.";
    /// 404 `not_found`.
    NotFound => "The id names nothing (an id that is not a UUID included).";
    /// 409 `conflict`.
    Conflict => "The change conflicts with the current state (a job that already ended, a \
        server with queued or running jobs, a name already taken).";
    /// 413 `payload_too_large`.
    PayloadTooLarge => "The body is larger than `http.max_body_bytes`.";
    /// 422 `invalid_field`.
    InvalidField => "A field is invalid; `field` names it and `error` says why.";
    /// 429 `too_many_requests`.
    TooManyRequests => "A rate or count limit of the caller was reached (job submissions per \
        minute, open streams).",
        "Retry-After": "Seconds to wait before trying again.";
    /// 503 `unavailable`.
    Unavailable => "The database (or the queue) cannot be reached.";
}

// --- Envelopes the handlers build with `json!`, described. -------------------------------

/// `GET /api/v1/jobs`: a page of jobs, newest first.
#[derive(Debug, ToSchema)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<JobView<'static>>,
    /// The page size used.
    pub limit: i64,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true, format = Uuid)]
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/jobs/{id}/cancel`.
#[derive(Debug, ToSchema)]
pub struct CancelResult {
    /// What happened: canceled before it started, or its remote processes are being stopped.
    pub message: String,
    /// The job as it is now.
    pub job: JobView<'static>,
}

/// `POST /api/v1/jobs/{id}/duplicate` (the seed's shape).
#[derive(Debug, ToSchema)]
pub struct DuplicateResult {
    /// `job duplicated`.
    pub message: String,
    /// The id of the job copied.
    #[schema(format = Uuid)]
    pub original_job: String,
    /// The new job.
    pub new_job: JobView<'static>,
}

/// `GET /api/v1/jobs/{id}/logs` (the seed's shape).
#[derive(Debug, ToSchema)]
pub struct JobLogs {
    /// The job's id.
    #[schema(format = Uuid)]
    pub job_id: String,
    /// The job's status.
    pub status: JobStatus,
    /// The exit code, null until known.
    #[schema(required = true)]
    pub exit_code: Option<i32>,
    /// Everything written to stdout so far.
    pub stdout: String,
    /// Everything written to stderr so far.
    pub stderr: String,
    /// stdout and stderr interleaved in arrival order.
    pub output: String,
    /// When it started.
    #[schema(required = true)]
    pub started_at: Option<Micros>,
    /// When it ended.
    #[schema(required = true)]
    pub finished_at: Option<Micros>,
    /// Seconds from start to end, null until it ended.
    #[schema(required = true)]
    pub duration: Option<f64>,
    /// Whether the output was cut at the configured cap.
    pub truncated: bool,
}

/// One stored chunk of output (`GET /api/v1/jobs/{id}/logs?format=chunks`).
#[derive(Debug, ToSchema)]
pub struct OutputChunk {
    /// Its sequence number in the job's output (the stream's event ids).
    pub seq: i64,
    /// Which stream it came from.
    pub stream: OutputStream,
    /// The bytes as text (bytes that are not UTF-8 are replaced).
    pub data: String,
    /// When it arrived.
    pub at: Micros,
}

/// `GET /api/v1/jobs/{id}/logs`: the seed's shape, or the chunks with `?format=chunks`.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum LogsResponse {
    /// Default (`?format=json`).
    Logs(JobLogs),
    /// `?format=chunks`.
    Chunks(Vec<OutputChunk>),
}

/// The `data:` of an `output` event of the stream.
#[derive(Debug, ToSchema)]
pub struct OutputEvent {
    /// The job's id.
    #[schema(format = Uuid)]
    pub job_id: String,
    /// The chunk's sequence number (also the event's `id:`).
    pub seq: i64,
    /// Which stream it came from.
    pub stream: OutputStream,
    /// `stream` is `stderr` (the seed's flag).
    pub is_stderr: bool,
    /// The text; a character split across chunks arrives whole, bytes that are not UTF-8
    /// are replaced.
    pub output: String,
    /// When it arrived.
    pub timestamp: Micros,
}

/// `GET /api/v1/servers`.
#[derive(Debug, ToSchema)]
pub struct ServerList {
    /// Every server.
    pub servers: Vec<ServerView>,
}

/// A confirmation (`DELETE /api/v1/servers/{id}`).
#[derive(Debug, ToSchema)]
pub struct Message {
    /// What was done.
    pub message: String,
}

/// `POST /api/v1/servers/{id}/test`.
#[derive(Debug, ToSchema)]
pub struct TestResult {
    /// Connected, authenticated, and `true` exited 0.
    pub ok: bool,
    /// Milliseconds the test took.
    pub latency_ms: u64,
    /// The `SHA256:` fingerprint of the key the server presented, when the key exchange got
    /// that far.
    #[schema(required = true)]
    pub host_key_fingerprint: Option<String>,
    /// Why it failed (host unreachable, authentication refused, host key changed — with
    /// both fingerprints —, timeout); null when `ok`.
    #[schema(required = true)]
    pub error: Option<String>,
    /// Whether this test pinned the presented key (trust on first use, or
    /// `accept_host_key`).
    pub host_key_pinned: bool,
}

/// `GET /api/v1/audit`: a page of entries, newest first.
#[derive(Debug, ToSchema)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// The page size used.
    pub limit: i64,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true, format = Uuid)]
    pub next_cursor: Option<String>,
}

/// One audited action.
#[derive(Debug, ToSchema)]
pub struct AuditEntry {
    /// The entry's id.
    #[schema(format = Uuid)]
    pub id: String,
    /// When it happened.
    pub at: Micros,
    /// The token's name, or `anonymous` when authentication is off.
    pub actor: String,
    /// The caller's address.
    #[schema(required = true)]
    pub peer: Option<String>,
    /// What was done: `job.submit`, `job.cancel`, `job.duplicate`, `server.create`,
    /// `server.update`, `server.delete`, `server.test`, `server.host_key_pinned`,
    /// `server.host_key_changed`.
    pub action: String,
    /// `job` or `server`.
    pub target_kind: String,
    /// The job's or server's id.
    #[schema(required = true, format = Uuid)]
    pub target_id: Option<String>,
    /// Details of the action (never a secret).
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// `GET /health`.
#[derive(Debug, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the database does not answer.
    #[schema(example = "ok")]
    pub status: String,
    /// `ok`, or `error: …` saying why.
    #[schema(example = "ok")]
    pub database: String,
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    pub database_backend: String,
    /// `rabbitmq` or `memory`.
    #[schema(example = "memory")]
    pub queue: String,
    /// Whether the queue can take messages now.
    pub queue_connected: bool,
    /// The service's version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_with_the_crate_version() {
        let doc: Value =
            serde_json::from_str(DOCUMENT.as_ref().expect("the document encodes")).expect("json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn the_routes_of_a_path_stand_together() {
        // `configure` makes one resource of each run of a path; a second run of the same
        // path would be shadowed by the first's JSON 405.
        let runs: Vec<&str> = super::super::ROUTES
            .chunk_by(|a, b| a.path == b.path)
            .filter_map(|run| run.first().map(|r| r.path))
            .collect();
        let mut unique = runs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            runs.len(),
            unique.len(),
            "a path's routes are split: {runs:?}"
        );
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
                ("TRACE", &item.trace),
            ];
            for (method, op) in ops {
                if op.is_some() {
                    documented.push((method.to_string(), path.clone()));
                }
            }
        }
        let mut routes: Vec<(String, String)> = super::super::ROUTES
            .iter()
            .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(routes, documented);
    }
}
