//! `/api/v1/servers`: the server registry and the connection test.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::{AppState, JsonBody};
use crate::domain::{Micros, ServerDraft, ServerPatch, parse_id};
use crate::error::ApiError;
use crate::ssh::{self, SshOptions, SshTarget};
use crate::store::ServerRow;

/// A server as the API shows it: secrets replaced by `has_*` flags.
#[derive(Debug, Serialize)]
pub struct ServerView {
    id: String,
    name: String,
    hostname: String,
    port: i32,
    user: String,
    auth_type: String,
    has_password: bool,
    has_private_key: bool,
    has_private_key_passphrase: bool,
    is_active: bool,
    host_key: Option<String>,
    host_key_fingerprint: Option<String>,
    host_key_check: String,
    max_concurrent_jobs: i32,
    created_at: Micros,
    updated_at: Micros,
}

impl From<ServerRow> for ServerView {
    fn from(row: ServerRow) -> Self {
        let host_key_fingerprint = row.host_key.as_ref().map(|k| {
            if k.starts_with("SHA256:") {
                k.clone()
            } else {
                russh::keys::PublicKey::from_openssh(k)
                    .map(|pk| ssh::fingerprint(&pk))
                    .unwrap_or_default()
            }
        });
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

/// `POST /servers`
pub async fn create(
    state: web::Data<AppState>,
    JsonBody(input): JsonBody<ServerPatch>,
) -> Result<HttpResponse, ApiError> {
    let draft = ServerDraft::create(input, state.settings.ssh.default_max_concurrent_jobs)?;
    let row = state.store.insert_server(draft).await?;
    tracing::info!(server_id = %row.id, name = %row.name, "server created");
    Ok(HttpResponse::Created().json(ServerView::from(row)))
}

/// `GET /servers`
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_servers().await?;
    let servers: Vec<ServerView> = rows.into_iter().map(ServerView::from).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "servers": servers })))
}

/// `GET /servers/{id}`
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

/// `PUT /servers/{id}`: omitted fields keep their value.
pub async fn update(
    state: web::Data<AppState>,
    path: web::Path<String>,
    JsonBody(input): JsonBody<ServerPatch>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    let row = state
        .store
        .update_server(id, move |draft| draft.patch(input))
        .await
        .map_err(|e| match e {
            crate::store::UpdateError::Invalid(f) => ApiError::Invalid(f),
            crate::store::UpdateError::Store(s) => ApiError::from_store(s, missing(id)),
        })?;
    tracing::info!(server_id = %row.id, "server updated");
    Ok(HttpResponse::Ok().json(ServerView::from(row)))
}

/// `DELETE /servers/{id}`: refused (409) while it has queued or running jobs.
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    state
        .store
        .delete_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    tracing::info!(server_id = %id, "server deleted");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "message": format!("server {id} deleted") })))
}

/// `POST /servers/{id}/test`: connect, authenticate, run `true`, within a bounded time.
/// A failed test is still a 200 whose `ok` is false and whose `error` says why. On trust on
/// first use, a successful test pins the key the server presented.
pub async fn test(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = server_id(&path)?;
    let row = state
        .store
        .get_server(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    let draft = row.to_draft();
    let opts = SshOptions::from_settings(&state.settings.ssh);
    let bound = Duration::from_secs(state.settings.ssh.test_timeout_secs.max(1));
    let report = match SshTarget::from_server(&draft) {
        Ok(target) => ssh::test_connection(&target, &opts, bound).await,
        Err(e) => ssh::TestReport {
            ok: false,
            latency_ms: 0,
            host_key_fingerprint: None,
            error: Some(e.to_string()),
            host_key: None,
        },
    };
    let mut pinned = false;
    if report.ok
        && draft.host_key.is_none()
        && draft.host_key_check == crate::domain::HostKeyCheck::Tofu
        && let Some(key) = report.host_key.clone()
    {
        pinned = state.store.pin_host_key(id, key).await?;
        if pinned {
            tracing::info!(server_id = %id, fingerprint = ?report.host_key_fingerprint, "host key pinned on first use");
        }
    }
    tracing::info!(server_id = %id, ok = report.ok, latency_ms = report.latency_ms, error = ?report.error, "connection test");
    let mut body = serde_json::to_value(&report)
        .map_err(|e| ApiError::Internal(format!("cannot encode the report: {e}")))?;
    body["host_key_pinned"] = serde_json::Value::Bool(pinned);
    Ok(HttpResponse::Ok().json(body))
}
