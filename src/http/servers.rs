//! `/api/v1/servers`: the server registry and the connection test.

use actix_web::http::StatusCode;
use actix_web::{Responder, web};
use actix_web::{delete, get, post, put};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::{
    AppState, BadRequest, Conflict, Errors, InvalidField, JsonBody, NotFound, OptionalJsonBody,
    PayloadTooLarge, Unauthorized, Unavailable, UnsupportedMediaType, server_id,
};
use crate::domain::{AuthType, HostKeyCheck, Micros, ServerPatch};
use crate::error::ApiError;
use crate::ssh;
use crate::store::ServerRow;

/// A server as the API shows it: secrets replaced by `has_*` flags.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerView {
    /// The server's id.
    #[schema(format = Uuid)]
    id: String,
    /// Unique name.
    name: String,
    /// Host name or address.
    hostname: String,
    /// TCP port.
    port: i32,
    /// Login user.
    user: String,
    /// How the worker authenticates.
    auth_type: AuthType,
    /// A password is stored (it is never shown).
    has_password: bool,
    /// A private key is stored (it is never shown).
    has_private_key: bool,
    /// A passphrase of the private key is stored (it is never shown).
    has_private_key_passphrase: bool,
    /// Whether jobs may run on it.
    is_active: bool,
    /// The pinned host key (`SHA256:` fingerprint or OpenSSH public key line), if any.
    #[schema(required = true)]
    host_key: Option<String>,
    /// The `SHA256:` fingerprint of the pinned key, if any.
    #[schema(required = true)]
    host_key_fingerprint: Option<String>,
    /// What the worker does with the key the server presents.
    host_key_check: HostKeyCheck,
    /// How many jobs may run on it at once.
    max_concurrent_jobs: i32,
    /// When it was registered.
    created_at: Micros,
    /// When it was last changed.
    updated_at: Micros,
    /// Labels, matched by run selectors.
    #[schema(value_type = BTreeMap<String, String>)]
    labels: crate::domain::Labels,
}

impl From<ServerRow> for ServerView {
    fn from(row: ServerRow) -> Self {
        let host_key_fingerprint = row.host_key.as_deref().map(ssh::pinned_fingerprint);
        let labels = row.labels();
        ServerView {
            has_password: row.password.is_some(),
            has_private_key: row.private_key.is_some(),
            has_private_key_passphrase: row.private_key_passphrase.is_some(),
            id: row.id,
            name: row.name,
            hostname: row.hostname,
            port: row.port,
            user: row.username,
            auth_type: row.auth_type,
            is_active: row.is_active,
            host_key: row.host_key,
            host_key_fingerprint,
            host_key_check: row.host_key_check,
            max_concurrent_jobs: row.max_concurrent_jobs,
            created_at: Micros(row.created_at),
            updated_at: Micros(row.updated_at),
            labels,
        }
    }
}

/// `GET /api/v1/servers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerList {
    /// Every server.
    servers: Vec<ServerView>,
}

/// A confirmation (`DELETE /api/v1/servers/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// What was done.
    message: String,
}

/// Register a server
#[utoipa::path(
    operation_id = "create_server",
    tag = "servers",
    request_body = ServerPatch,
    responses(
        (status = 201, description = "The server.", body = ServerView),
        Errors<(BadRequest, Unauthorized, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[post("/servers")]
pub async fn create_server(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(input): JsonBody<ServerPatch>,
) -> Result<actix_web::CustomizeResponder<web::Json<ServerView>>, ApiError> {
    let row = state.engine.create_server(&caller.actor(), input).await?;
    Ok(web::Json(ServerView::from(row))
        .customize()
        .with_status(StatusCode::CREATED))
}

/// Query of `GET /servers`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServerQuery {
    /// Only the servers a selector matches: `role=web,env=prod`, `key!=value`, `key`, `!key`
    /// (no spaces around terms).
    #[param(
        pattern = "^(!?[a-z0-9_./-]{1,63}|[a-z0-9_./-]{1,63}!?=([^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]([^,=!\\u0000-\\u001f\\u007f-\\u009f]{0,253}[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f])?)?)(,(!?[a-z0-9_./-]{1,63}|[a-z0-9_./-]{1,63}!?=([^\\s,=!\\u0000-\\u001f\\u007f-\\u009f]([^,=!\\u0000-\\u001f\\u007f-\\u009f]{0,253}[^\\s,=!\\u0000-\\u001f\\u007f-\\u009f])?)?))*$"
    )]
    labels: Option<String>,
}

/// List servers
///
/// By name; `labels` keeps only the servers its selector matches.
#[utoipa::path(
    operation_id = "list_servers",
    tag = "servers",
    params(ServerQuery),
    responses(
        (status = 200, description = "The servers, by name.", body = ServerList),
        Errors<(BadRequest, Unauthorized, InvalidField, Unavailable)>,
    )
)]
#[get("/servers")]
pub async fn list_servers(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    query: web::Query<ServerQuery>,
) -> Result<web::Json<ServerList>, ApiError> {
    let selector = (query.labels.as_deref())
        .map(|raw| crate::domain::Selector::parse("labels", raw))
        .transpose()?;
    let mut rows = state.engine.servers(&caller.actor()).await?;
    if let Some(sel) = selector {
        rows.retain(|row| sel.matches(&row.labels()));
    }
    Ok(web::Json(ServerList {
        servers: rows.into_iter().map(ServerView::from).collect(),
    }))
}

/// One server
#[utoipa::path(
    operation_id = "get_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "The server.", body = ServerView),
        Errors<(Unauthorized, NotFound, Unavailable)>,
    )
)]
#[get("/servers/{id}")]
pub async fn get_server(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<ServerView>, ApiError> {
    let row = state
        .engine
        .server(&caller.actor(), server_id(&path)?)
        .await?;
    Ok(web::Json(ServerView::from(row)))
}

/// Update a server
///
/// Omitted fields keep their value; the result is validated whole.
#[utoipa::path(
    operation_id = "update_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    request_body = ServerPatch,
    responses(
        (status = 200, description = "The server as updated.", body = ServerView),
        Errors<(BadRequest, Unauthorized, NotFound, Conflict, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[put("/servers/{id}")]
pub async fn update_server(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<ServerPatch>,
) -> Result<web::Json<ServerView>, ApiError> {
    let id = server_id(&path)?;
    let row = state
        .engine
        .update_server(&caller.actor(), id, input)
        .await?;
    Ok(web::Json(ServerView::from(row)))
}

/// Delete a server
///
/// Refused (409) while it has queued or running jobs.
#[utoipa::path(
    operation_id = "delete_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "Deleted.", body = Message),
        Errors<(Unauthorized, NotFound, Conflict, Unavailable)>,
    )
)]
#[delete("/servers/{id}")]
pub async fn delete_server(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<web::Json<Message>, ApiError> {
    let id = server_id(&path)?;
    state.engine.delete_server(&caller.actor(), id).await?;
    Ok(web::Json(Message {
        message: format!("server {id} deleted"),
    }))
}

/// Options of the connection test.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestOptions {
    /// Pin whatever key the server presents now (after a deliberate host key change).
    #[serde(default)]
    accept_host_key: bool,
}

/// `POST /api/v1/servers/{id}/test`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    /// Connected, authenticated, and `true` exited 0.
    ok: bool,
    /// Milliseconds the test took.
    latency_ms: u64,
    /// The `SHA256:` fingerprint of the key the server presented, when the key exchange got
    /// that far.
    #[schema(required = true)]
    host_key_fingerprint: Option<String>,
    /// Why it failed (host unreachable, authentication refused, host key changed — with
    /// both fingerprints —, timeout); null when `ok`.
    #[schema(required = true)]
    error: Option<String>,
    /// Whether this test pinned the presented key (trust on first use, or
    /// `accept_host_key`).
    host_key_pinned: bool,
}

/// Test the connection to a server
///
/// Connect, authenticate, run `true`, within a bounded time. A failed test is still a 200
/// whose `ok` is false and whose `error` says why. On trust on first use, a successful test
/// pins the key the server presented; with `{"accept_host_key": true}` it replaces the
/// pinned key with the one presented now.
#[utoipa::path(
    operation_id = "test_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    request_body = Option<TestOptions>,
    responses(
        (status = 200, description = "The outcome, failed or not.", body = TestResult),
        Errors<(BadRequest, Unauthorized, NotFound, PayloadTooLarge, UnsupportedMediaType, InvalidField, Unavailable)>,
    )
)]
#[post("/servers/{id}/test")]
pub async fn test_server(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    OptionalJsonBody(options): OptionalJsonBody<TestOptions>,
) -> Result<web::Json<TestResult>, ApiError> {
    let id = server_id(&path)?;
    let tested = state
        .engine
        .test_server(&caller.actor(), id, options.accept_host_key)
        .await?;
    let r = tested.report;
    Ok(web::Json(TestResult {
        ok: r.ok,
        latency_ms: r.latency_ms,
        host_key_fingerprint: r.host_key_fingerprint,
        error: r.error,
        host_key_pinned: tested.pinned,
    }))
}
