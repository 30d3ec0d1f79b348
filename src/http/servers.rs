//! `/api/v1/servers`: the server registry and the connection test.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::auth::Caller;
use super::openapi::{
    BadRequest, Conflict, InvalidField, Message, NotFound, PayloadTooLarge, ServerList, TestResult,
    Unauthorized, Unavailable,
};
use super::{AppState, JsonBody};
use crate::domain::{AuthType, HostKeyCheck, Micros, ServerDraft, ServerPatch, parse_id};
use crate::error::ApiError;
use crate::ssh::{self, SshOptions, SshTarget};
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
    #[schema(value_type = AuthType)]
    auth_type: String,
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
    #[schema(value_type = HostKeyCheck)]
    host_key_check: String,
    /// How many jobs may run on it at once.
    max_concurrent_jobs: i32,
    /// When it was registered.
    created_at: Micros,
    /// When it was last changed.
    updated_at: Micros,
}

impl From<ServerRow> for ServerView {
    fn from(row: ServerRow) -> Self {
        let host_key_fingerprint = row.host_key.as_deref().map(ssh::pinned_fingerprint);
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
        }
    }
}

fn server_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    parse_id("id", raw).map_err(|_| ApiError::NotFound(format!("server {raw:?} does not exist")))
}

fn missing(id: uuid::Uuid) -> impl FnOnce() -> String {
    move || format!("server {id}")
}

/// The names of the fields a patch sets (never their values: some are secrets).
fn fields_set(p: &ServerPatch) -> Vec<&'static str> {
    [
        ("name", p.name.is_some()),
        ("hostname", p.hostname.is_some()),
        ("port", p.port.is_some()),
        ("user", p.user.is_some()),
        ("auth_type", p.auth_type.is_some()),
        ("password", p.password.is_some()),
        (
            "private_key",
            p.private_key.is_some() || p.pem_file.is_some(),
        ),
        ("private_key_passphrase", p.private_key_passphrase.is_some()),
        ("is_active", p.is_active.is_some()),
        ("host_key", p.host_key.is_some()),
        ("host_key_check", p.host_key_check.is_some()),
        ("max_concurrent_jobs", p.max_concurrent_jobs.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// Register a server
#[utoipa::path(
    post,
    path = "/api/v1/servers",
    operation_id = "create_server",
    tag = "servers",
    request_body = ServerPatch,
    responses(
        (status = 201, description = "The server.", body = ServerView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    JsonBody(input): JsonBody<ServerPatch>,
) -> Result<HttpResponse, ApiError> {
    let fields = fields_set(&input);
    let draft = ServerDraft::create(input, state.settings.ssh.default_max_concurrent_jobs)?;
    let row = state.store.insert_server(draft).await?;
    tracing::info!(server_id = %row.id, name = %row.name, "server created");
    let detail =
        serde_json::json!({ "name": row.name, "hostname": row.hostname, "fields": fields });
    state
        .audit(&caller, "server.create", "server", &row.id, detail)
        .await;
    Ok(HttpResponse::Created().json(ServerView::from(row)))
}

/// List servers
#[utoipa::path(
    get,
    path = "/api/v1/servers",
    operation_id = "list_servers",
    tag = "servers",
    responses(
        (status = 200, description = "Every server.", body = ServerList),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_servers().await?;
    let servers: Vec<ServerView> = rows.into_iter().map(ServerView::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "servers": servers })))
}

/// One server
#[utoipa::path(
    get,
    path = "/api/v1/servers/{id}",
    operation_id = "get_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "The server.", body = ServerView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    let row = state
        .store
        .get_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    Ok(HttpResponse::Ok().json(ServerView::from(row)))
}

/// Update a server
///
/// Omitted fields keep their value; the result is validated whole.
#[utoipa::path(
    put,
    path = "/api/v1/servers/{id}",
    operation_id = "update_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    request_body = ServerPatch,
    responses(
        (status = 200, description = "The server as updated.", body = ServerView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    )
)]
pub async fn update(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<ServerPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    let fields = fields_set(&input);
    let before = state
        .store
        .get_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    let row = state
        .store
        .update_server(id, move |draft| draft.patch(input))
        .await
        .map_err(|e| match e {
            crate::store::UpdateError::Invalid(f) => ApiError::Invalid(f),
            crate::store::UpdateError::Store(s) => ApiError::from_store(s, missing(id)),
        })?;
    tracing::info!(server_id = %row.id, "server updated");
    state
        .audit(
            &caller,
            "server.update",
            "server",
            &row.id,
            serde_json::json!({ "fields": fields }),
        )
        .await;
    if before.host_key != row.host_key {
        let detail = serde_json::json!({
            "old_fingerprint": before.host_key.as_deref().map(ssh::pinned_fingerprint),
            "new_fingerprint": row.host_key.as_deref().map(ssh::pinned_fingerprint),
            "by": "update",
        });
        state
            .audit(
                &caller,
                "server.host_key_changed",
                "server",
                &row.id,
                detail,
            )
            .await;
    }
    Ok(HttpResponse::Ok().json(ServerView::from(row)))
}

/// Delete a server
///
/// Refused (409) while it has queued or running jobs.
#[utoipa::path(
    delete,
    path = "/api/v1/servers/{id}",
    operation_id = "delete_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    responses(
        (status = 200, description = "Deleted.", body = Message),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    )
)]
pub async fn delete(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    let row = state
        .store
        .get_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    state
        .store
        .delete_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    tracing::info!(server_id = %id, "server deleted");
    state
        .audit(
            &caller,
            "server.delete",
            "server",
            id,
            serde_json::json!({ "name": row.name, "hostname": row.hostname }),
        )
        .await;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": format!("server {id} deleted") })))
}

/// Options of the connection test.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestOptions {
    /// Pin whatever key the server presents now (after a deliberate host key change).
    #[serde(default)]
    accept_host_key: bool,
}

/// Test the connection to a server
///
/// Connect, authenticate, run `true`, within a bounded time. A failed test is still a 200
/// whose `ok` is false and whose `error` says why. On trust on first use, a successful test
/// pins the key the server presented; with `{"accept_host_key": true}` it replaces the
/// pinned key with the one presented now.
#[utoipa::path(
    post,
    path = "/api/v1/servers/{id}/test",
    operation_id = "test_server",
    tag = "servers",
    params(("id" = uuid::Uuid, Path, description = "The server's id.")),
    request_body = Option<TestOptions>,
    responses(
        (status = 200, description = "The outcome, failed or not.", body = TestResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    )
)]
pub async fn test(
    state: web::Data<AppState>,
    caller: web::ReqData<Caller>,
    path: web::Path<String>,
    JsonBody(options): JsonBody<TestOptions>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    let row = state
        .store
        .get_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    let opts = SshOptions::from_settings(&state.settings.ssh);
    let bound = Duration::from_secs(state.settings.ssh.test_timeout_secs.max(1));
    let failed = |error: String| ssh::TestReport {
        ok: false,
        latency_ms: 0,
        host_key_fingerprint: None,
        error: Some(error),
        host_key: None,
    };
    let mut accepted: Option<String> = None;
    let report = match state
        .store
        .open_server(&row)
        .map_err(|e| ssh::SshError::Credentials(e.to_string()))
        .and_then(|draft| SshTarget::from_server(&draft))
    {
        Ok(mut target) => {
            let mut probe_failed = None;
            if options.accept_host_key {
                // Learn the key now presented (no credentials are sent), then test against it.
                match ssh::probe_host_key(&target, &opts).await {
                    Ok(key) => {
                        let line = ssh::openssh_line(&key);
                        target.pinned = Some(line.clone());
                        accepted = Some(line);
                    }
                    Err(e) => probe_failed = Some(failed(e.to_string())),
                }
            }
            match probe_failed {
                Some(report) => report,
                None => ssh::test_connection(&target, &opts, bound).await,
            }
        }
        Err(e) => failed(e.to_string()),
    };
    let mut pinned = false;
    if report.ok
        && let Some(line) = accepted
    {
        state.store.repin_host_key(id, line.clone()).await?;
        pinned = true;
        let detail = serde_json::json!({
            "old_fingerprint": row.host_key.as_deref().map(ssh::pinned_fingerprint),
            "new_fingerprint": ssh::pinned_fingerprint(&line),
            "by": "accept_host_key",
        });
        tracing::info!(server_id = %id, fingerprint = ?report.host_key_fingerprint, "host key accepted");
        state
            .audit(&caller, "server.host_key_changed", "server", id, detail)
            .await;
    } else if report.ok
        && row.host_key.is_none()
        && row.host_key_check == crate::domain::HostKeyCheck::Tofu.as_str()
        && let Some(key) = report.host_key.clone()
    {
        pinned = state.store.pin_host_key(id, key).await?;
        if pinned {
            tracing::info!(server_id = %id, fingerprint = ?report.host_key_fingerprint, "host key pinned on first use");
            let detail = serde_json::json!({
                "fingerprint": report.host_key_fingerprint,
                "by": "connection test",
            });
            state
                .audit(&caller, "server.host_key_pinned", "server", id, detail)
                .await;
        }
    }
    tracing::info!(server_id = %id, ok = report.ok, latency_ms = report.latency_ms, error = ?report.error, "connection test");
    state
        .audit(
            &caller,
            "server.test",
            "server",
            id,
            serde_json::json!({ "ok": report.ok, "error": report.error }),
        )
        .await;
    let mut body = serde_json::to_value(&report)
        .map_err(|e| ApiError::Internal(format!("cannot encode the report: {e}")))?;
    body["host_key_pinned"] = serde_json::Value::Bool(pinned);
    Ok(HttpResponse::Ok().json(body))
}
