//! `GET /api/v1/openapi.json`, and what the document says beside its routes: the API's
//! description, the bearer scheme, the tags, and the error responses handlers refer to.
//!
//! The routes and their schemas are not listed here: [`super::document`] collects them
//! from the handlers as [`super::register`] mounts them.

use actix_web::HttpResponse;
use actix_web::get;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, response::Response};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, ErrorBody};

/// The document's frame: what [`super::document`] adds the routes to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "job-executor",
        description = "Run shell jobs on remote machines over SSH: submit, follow, cancel, \
            and read their output.\n\n\
            **Authentication.** When tokens are configured every route under `/api/v1` needs \
            `Authorization: Bearer TOKEN` (401 otherwise); without tokens the service listens \
            on loopback only and needs none, but serves only loopback `Host` names and \
            refuses a change (POST, PUT, PATCH, DELETE) from another `Origin` (403). \
            `/health` and `/metrics` never need one.\n\n\
            **Bodies** are JSON, sent with `Content-Type: application/json` (415 otherwise).\n\n\
            **Errors.** Every error is JSON, `{\"error\", \"code\"}` plus `\"field\"` for a \
            422 (`ErrorBody`). A path no route matches is a 404, a method a path does not \
            take a 405 (`method_not_allowed`), both with that body. A fault of the service \
            is a 500 whose message says only that something failed.\n\n\
            **Times** are RFC 3339 in UTC with microseconds; **ids** are UUIDs; an id that is \
            not a UUID names nothing (404).",
        license(name = "MIT"),
    ),
    components(
        // `OutputEvent`: the `data:` of the stream's `output` events, which no JSON body names.
        schemas(
            ErrorBody,
            super::stream::OutputEvent,
            super::run_stream::HostEvent,
            super::run_stream::HostOutputEvent,
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
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
        (name = "templates", description = "Saved run requests with typed parameters, launched by name."),
        (name = "schedules", description = "Templates launched on a cron timer, each fire time exactly once."),
        (name = "webhooks", description = "Signed, retried deliveries of job, run and schedule events."),
        (name = "runs", description = "One command on many servers: labels, selectors, rolling batches, failure thresholds."),
        (name = "audit", description = "Who did what."),
        (name = "access", description = "The caller's token: its name, role and scope."),
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

/// This document
#[utoipa::path(
    operation_id = "openapi",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3 document of this API.", body = Object),
        (status = 401, response = Unauthorized),
    )
)]
#[get("/openapi.json")]
pub async fn serve() -> Result<HttpResponse, ApiError> {
    let json = super::SERVED
        .json
        .as_ref()
        .map_err(|e| ApiError::Internal(format!("cannot encode the OpenAPI document: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json.as_str()))
}

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
    ($($(#[$doc:meta])* $name:ident = $status:literal => $description:literal $(, $header:literal : $about:literal)?;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description, &[$(($header, $about))?]))
            }
        }

        impl ErrorResponse for $name {
            const STATUS: &'static str = stringify!($status);
            const NAME: &'static str = stringify!($name);
        }
    )*};
}

use utoipa::PartialSchema as _;

error_responses! {
    /// 400 `bad_request`.
    BadRequest = 400 => "The body is not JSON, or not a JSON object.";
    /// 401 `unauthorized`.
    Unauthorized = 401 => "Tokens are configured and the request has none, or not a valid one.",
        "WWW-Authenticate": "`Bearer`.";
    /// 403 `forbidden`.
    Forbidden = 403 => "The token's role or scope does not allow this (the message names the \
        role and the action), or, without tokens, the request comes from a foreign host name \
        or origin.";
    /// 404 `not_found`.
    NotFound = 404 => "The id names nothing (an id that is not a UUID included).";
    /// 409 `conflict`.
    Conflict = 409 => "The change conflicts with the current state (a job that already ended, \
        a server with queued or running jobs, a name already taken).";
    /// 413 `payload_too_large`.
    PayloadTooLarge = 413 => "The body is larger than `http.max_body_bytes`.";
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType = 415 => "There is a body, and `Content-Type` does not say \
        `application/json`.";
    /// 422 `invalid_field`.
    InvalidField = 422 => "A field is invalid; `field` names it and `error` says why.";
    /// 429 `too_many_requests`.
    TooManyRequests = 429 => "A rate or count limit of the caller was reached (job submissions \
        per minute, open streams).",
        "Retry-After": "Seconds to wait before trying again.";
    /// 503 `unavailable`.
    Unavailable = 503 => "The database (or the queue) cannot be reached.";
}

/// One of the error responses above: its status and the component that describes it.
pub trait ErrorResponse {
    /// The HTTP status, as the document's responses key it.
    const STATUS: &'static str;
    /// The name of its component (`#/components/responses/NAME`).
    const NAME: &'static str;
}

/// The error responses of a route, each a reference to its component:
/// `responses((status = 200, …), Errors<(Unauthorized, NotFound, Unavailable)>)`.
pub struct Errors<T>(std::marker::PhantomData<T>);

/// `Errors` of every tuple of [`ErrorResponse`]s up to the length given.
macro_rules! error_sets {
    () => {};
    ($first:ident $($rest:ident)*) => {
        impl<$first: ErrorResponse, $($rest: ErrorResponse),*> utoipa::IntoResponses
            for Errors<($first, $($rest,)*)>
        {
            fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
                [$first::STATUS, $($rest::STATUS),*]
                    .into_iter()
                    .zip([$first::NAME, $($rest::NAME),*])
                    .map(|(status, name)| (status.to_string(), Ref::from_response_name(name).into()))
                    .collect()
            }
        }
        error_sets!($($rest)*);
    };
}

error_sets!(A B C D E F G H I);

/// Add the 403 response to every operation under `prefix`: any of them may be refused by a
/// role, and, without tokens, by the loopback guard.
pub fn forbidden_everywhere(doc: &mut utoipa::openapi::OpenApi, prefix: &str) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with(prefix) {
            continue;
        }
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            (op.responses.responses)
                .entry(Forbidden::STATUS.to_string())
                .or_insert_with(|| Ref::from_response_name(Forbidden::NAME).into());
        }
    }
}

/// A request type that serves several routes, with the rules of one route stated in a
/// schema of its own, derived from the type's: the fields it refuses are left out, the ones
/// it requires are required.
struct Narrowed {
    /// The route's operation.
    operation_id: &'static str,
    /// The request type's schema.
    base: &'static str,
    /// The route's schema.
    name: &'static str,
    /// What the route's schema says.
    description: &'static str,
    /// Fields the route refuses (a 422 names them).
    refused: &'static [&'static str],
    /// Fields the route requires (a 422 names them when missing).
    required: &'static [&'static str],
}

const NARROWED: &[Narrowed] = &[
    Narrowed {
        operation_id: "submit_command_job",
        base: "JobRequest",
        name: "CommandJobRequest",
        description: "A command job: `command` is required; `script` and `shell` belong to \
            script jobs.",
        refused: &["script", "shell"],
        required: &["command"],
    },
    Narrowed {
        operation_id: "submit_script_job",
        base: "JobRequest",
        name: "ScriptJobRequest",
        description: "A script job: `script` is required; `command` belongs to command jobs.",
        refused: &["command"],
        required: &["script"],
    },
    Narrowed {
        operation_id: "create_server",
        base: "ServerPatch",
        name: "ServerCreate",
        description: "A new server: `name`, `hostname` and `user` are required, and the \
            credential of `auth_type` (`password`, or a private key that decodes).",
        refused: &[],
        required: &["name", "hostname", "user"],
    },
];

/// Give each route of [`NARROWED`] its own body schema.
pub(super) fn narrow_bodies(doc: &mut utoipa::openapi::OpenApi) {
    for n in NARROWED {
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let Some(RefOr::T(Schema::Object(base))) = components.schemas.get(n.base) else {
            continue;
        };
        let mut object = base.clone();
        for field in n.refused {
            object.properties.shift_remove(*field);
        }
        object.required = n.required.iter().map(|f| f.to_string()).collect();
        object.description = Some(n.description.to_string());
        components
            .schemas
            .insert(n.name.to_string(), Schema::Object(object).into());
        let operations = doc.paths.paths.values_mut().flat_map(|item| {
            [item.post.as_mut(), item.put.as_mut()]
                .into_iter()
                .flatten()
        });
        for op in operations.filter(|op| op.operation_id.as_deref() == Some(n.operation_id)) {
            for content in op
                .request_body
                .iter_mut()
                .flat_map(|b| b.content.values_mut())
            {
                content.schema = Some(Ref::from_schema_name(n.name).into());
            }
        }
    }
}
