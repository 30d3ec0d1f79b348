//! `GET /api/v1/audit`: who did what.

use actix_web::get;
use actix_web::web;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState, BadRequest, Errors, InvalidField, Unauthorized, Unavailable, optional_id, page_limit,
};
use crate::domain::Micros;
use crate::error::ApiError;
use crate::store::{AuditFilter, AuditRow};

/// Query of `GET /audit`.
#[derive(Debug, Deserialize, IntoParams)]
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

/// `GET /api/v1/audit`: a page of entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The entries.
    entries: Vec<AuditEntryView>,
    /// The page size used.
    limit: i64,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required = true, format = Uuid)]
    next_cursor: Option<String>,
}

/// One audited action.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditEntryView {
    /// The entry's id.
    #[schema(format = Uuid)]
    id: String,
    /// When it happened.
    at: Micros,
    /// The token's name, `anonymous` when authentication is off, `library` or `system`.
    actor: String,
    /// The caller's address.
    #[schema(required = true)]
    peer: Option<String>,
    /// What was done: `job.submit`, `job.cancel`, `job.duplicate`, `server.create`,
    /// `server.update`, `server.delete`, `server.test`, `server.host_key_pinned`,
    /// `server.host_key_changed`.
    action: String,
    /// `job` or `server`.
    target_kind: String,
    /// The job's or server's id.
    #[schema(required = true, format = Uuid)]
    target_id: Option<String>,
    /// Details of the action (never a secret).
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

impl From<AuditRow> for AuditEntryView {
    fn from(r: AuditRow) -> Self {
        AuditEntryView {
            detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null),
            id: r.id,
            at: Micros(r.at),
            actor: r.actor,
            peer: r.peer,
            action: r.action,
            target_kind: r.target_kind,
            target_id: r.target_id,
        }
    }
}

/// The audit log
///
/// Who did what, newest first, paged like `GET /jobs`.
#[utoipa::path(
    operation_id = "list_audit",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries.", body = AuditPage),
        Errors<(BadRequest, Unauthorized, InvalidField, Unavailable)>,
    )
)]
#[get("/audit")]
pub async fn list_audit(
    state: web::Data<AppState>,
    caller: web::ReqData<super::auth::Caller>,
    query: web::Query<AuditQuery>,
) -> Result<web::Json<AuditPage>, ApiError> {
    let q = query.into_inner();
    let limit = page_limit(q.limit.as_deref())?;
    let before: Option<uuid::Uuid> = optional_id("cursor", q.cursor.as_deref())?;
    let target_id: Option<uuid::Uuid> = optional_id("target_id", q.target_id.as_deref())?;
    let mut rows = state
        .engine
        .audit_log(
            &caller.actor(),
            AuditFilter {
                action: q.action,
                target_id: target_id.map(|t| t.to_string()),
                limit: limit + 1,
                before: before.map(|b| b.to_string()),
            },
        )
        .await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > page;
    rows.truncate(page);
    let next_cursor = more.then(|| rows.last().map(|r| r.id.clone())).flatten();
    Ok(web::Json(AuditPage {
        entries: rows.into_iter().map(AuditEntryView::from).collect(),
        limit,
        next_cursor,
    }))
}
