//! Queries on `audit_log`: who did what, when, from where.

use diesel::prelude::*;

use super::schema::audit_log;
use super::{Store, StoreError};
use crate::domain::{Actor, Micros};

/// One audit record.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = audit_log)]
pub struct AuditRow {
    /// UUIDv7: sorts by time.
    pub id: String,
    /// When, in microseconds since the epoch.
    pub at: i64,
    /// The token's name, `anonymous` without authentication, or `system`.
    pub actor: String,
    /// The caller's address, when the action came over HTTP.
    pub peer: Option<String>,
    /// `job.submit`, `server.update`, `server.host_key_pinned`, …
    pub action: String,
    /// `job` or `server`.
    pub target_kind: String,
    /// The job's or server's id.
    pub target_id: Option<String>,
    /// JSON with what changed (never a secret).
    pub detail: String,
}

/// A new audit record, before it has an id and a time.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who.
    pub actor: String,
    /// From where.
    pub peer: Option<String>,
    /// What.
    pub action: &'static str,
    /// On what kind of thing.
    pub target_kind: &'static str,
    /// On which.
    pub target_id: Option<String>,
    /// Details (JSON object).
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// The record of `action` by `actor` on `target_id` (a `target_kind`).
    pub fn by(
        actor: &Actor,
        action: &'static str,
        target_kind: &'static str,
        target_id: impl ToString,
        detail: serde_json::Value,
    ) -> Self {
        AuditEntry {
            actor: actor.name.clone(),
            peer: actor.peer.clone(),
            action,
            target_kind,
            target_id: Some(target_id.to_string()),
            detail,
        }
    }
}

/// Which audit records to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this action.
    pub action: Option<String>,
    /// Only this job or server.
    pub target_id: Option<String>,
    /// Page size.
    pub limit: i64,
    /// Records older than this id (the previous page's `next_cursor`).
    pub before: Option<String>,
}

impl Store {
    /// Record an action.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.run(move |conn| insert(conn, entry)).await
    }

    /// Audit records, newest first.
    pub async fn list_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        self.run(move |conn| {
            let mut query = audit_log::table
                .select(AuditRow::as_select())
                .order(audit_log::id.desc())
                .limit(filter.limit)
                .into_boxed();
            if let Some(action) = filter.action {
                query = query.filter(audit_log::action.eq(action));
            }
            if let Some(target) = filter.target_id {
                query = query.filter(audit_log::target_id.eq(target));
            }
            if let Some(before) = filter.before {
                query = query.filter(audit_log::id.lt(before));
            }
            Ok(query.load(conn)?)
        })
        .await
    }
}

/// Write `entry` on `conn` (inside the caller's transaction, when it has one).
pub(super) fn insert(conn: &mut super::DbConnection, entry: AuditEntry) -> Result<(), StoreError> {
    diesel::insert_into(audit_log::table)
        .values(&row_of(entry))
        .execute(conn)?;
    Ok(())
}

/// The record `entry` makes, with its id and time.
pub(super) fn row_of(entry: AuditEntry) -> AuditRow {
    AuditRow {
        id: uuid::Uuid::now_v7().to_string(),
        at: Micros::now().0,
        actor: entry.actor,
        peer: entry.peer,
        action: entry.action.to_string(),
        target_kind: entry.target_kind.to_string(),
        target_id: entry.target_id,
        detail: entry.detail.to_string(),
    }
}
