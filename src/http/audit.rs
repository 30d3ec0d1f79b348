//! `GET /audit`: who did what, newest first, paged like `GET /jobs`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::jobs::page_limit;
use super::openapi::{AuditPage, InvalidField, Unauthorized, Unavailable};
use crate::domain::{Micros, parse_id};
use crate::error::ApiError;
use crate::store::AuditFilter;

/// Query of `GET /audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries of this action (e.g. `job.submit`, `server.update`).
    action: Option<String>,
    /// Only entries about this job or server.
    #[param(value_type = Option<uuid::Uuid>)]
    target_id: Option<String>,
    /// Entries per page, 1 to 1000 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor: Option<String>,
}

/// The audit log
///
/// Who did what, newest first, paged like `GET /jobs`.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "list_audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries.", body = AuditPage),
        (status = 401, response = Unauthorized),
        (status = 422, response = InvalidField),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = page_limit(q.limit.as_deref())?;
    let before = match q.cursor.as_deref().filter(|s| !s.is_empty()) {
        Some(c) => Some(parse_id("cursor", c)?.to_string()),
        None => None,
    };
    let target_id = match q.target_id.as_deref().filter(|s| !s.is_empty()) {
        Some(t) => Some(parse_id("target_id", t)?.to_string()),
        None => None,
    };
    let rows = state
        .store
        .list_audit(AuditFilter {
            action: q.action.filter(|a| !a.is_empty()),
            target_id,
            limit: limit + 1,
            before,
        })
        .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let rows = &rows[..rows.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
    let next = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    let entries: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "at": Micros(r.at),
                "actor": r.actor,
                "peer": r.peer,
                "action": r.action,
                "target_kind": r.target_kind,
                "target_id": r.target_id,
                "detail": serde_json::from_str::<serde_json::Value>(&r.detail)
                    .unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "entries": entries, "limit": limit, "next_cursor": next })))
}
