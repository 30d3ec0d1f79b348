//! Queries on `servers`.

use diesel::prelude::*;

use super::schema::{jobs, servers};
use super::{AuditEntry, ServerRow, Store, StoreError, conflict_on_unique};
use crate::domain::{Actor, FieldError, HostKeyCheck, JobStatus, Micros, ServerDraft};

/// A server as an update left it, and the host key it had before (read in the same
/// transaction).
#[derive(Debug)]
pub struct Updated {
    /// The server now.
    pub row: ServerRow,
    /// Its pinned host key before the update.
    pub previous_host_key: Option<String>,
}

/// Why an update could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The merged server is invalid.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<diesel::result::Error> for UpdateError {
    fn from(e: diesel::result::Error) -> Self {
        UpdateError::Store(StoreError::from(e))
    }
}

fn name_taken(name: &str) -> String {
    format!("a server named {name:?} already exists")
}

pub(super) fn find(conn: &mut super::DbConnection, id: &str) -> Result<ServerRow, StoreError> {
    // `get_result`, not `first`: see `jobs::find`.
    servers::table
        .find(id)
        .select(ServerRow::as_select())
        .get_result(conn)
        .optional()?
        .ok_or(StoreError::NotFound)
}

/// The server named `name`.
pub(super) fn find_by_name(
    conn: &mut super::DbConnection,
    name: &str,
) -> Result<ServerRow, StoreError> {
    servers::table
        .filter(servers::name.eq(name))
        .select(ServerRow::as_select())
        .get_result(conn)
        .optional()?
        .ok_or(StoreError::NotFound)
}

/// The row, locked against other writers until the caller's transaction ends: on
/// PostgreSQL `SELECT … FOR UPDATE` (a concurrent first-use pin waits, then sees the row this
/// transaction wrote); SQLite's write transaction holds the whole database already.
fn find_for_update(conn: &mut super::DbConnection, id: &str) -> Result<ServerRow, StoreError> {
    let query = servers::table.find(id).select(ServerRow::as_select());
    match conn {
        super::DbConnection::Pg(c) => query.for_update().first(c).optional()?,
        super::DbConnection::Sqlite(_) => return find(conn, id),
    }
    .ok_or(StoreError::NotFound)
}

impl Store {
    /// Insert a new server.
    pub async fn insert_server(&self, draft: ServerDraft) -> Result<ServerRow, StoreError> {
        let keyring = self.keyring.clone();
        self.run(move |conn| {
            let row = ServerRow::new(uuid::Uuid::now_v7(), &draft, Micros::now(), &keyring)?;
            diesel::insert_into(servers::table)
                .values(&row)
                .execute(conn)
                .map_err(|e| conflict_on_unique(e, || name_taken(&row.name)))?;
            Ok(row)
        })
        .await
    }

    /// One server by id.
    pub async fn get_server(&self, id: uuid::Uuid) -> Result<ServerRow, StoreError> {
        self.run(move |conn| find(conn, &id.to_string())).await
    }

    /// One server by name.
    pub async fn get_server_by_name(&self, name: String) -> Result<ServerRow, StoreError> {
        self.run(move |conn| find_by_name(conn, &name)).await
    }

    /// All servers, by name.
    pub async fn list_servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        self.run(|conn| {
            Ok(servers::table
                .order(servers::name.asc())
                .select(ServerRow::as_select())
                .load(conn)?)
        })
        .await
    }

    /// Read, change and write a server in one transaction, the row locked from the read on
    /// (so a first-use pin made meanwhile is neither lost nor overwritten). `change` gets the
    /// stored state as a draft and returns the new one (or why not).
    pub async fn update_server<F>(&self, id: uuid::Uuid, change: F) -> Result<Updated, UpdateError>
    where
        F: FnOnce(ServerDraft) -> Result<ServerDraft, FieldError> + Send + 'static,
    {
        let keyring = self.keyring.clone();
        self.run(move |conn| {
            Ok(super::write_tx::<_, UpdateError, _>(conn, |conn| {
                let mut row = find_for_update(conn, &id.to_string())?;
                let previous_host_key = row.host_key.clone();
                let draft = change(row.to_draft(&keyring).map_err(StoreError::from)?)?;
                row.apply(&draft, Micros::now(), &keyring)
                    .map_err(StoreError::from)?;
                diesel::update(servers::table.find(&row.id))
                    .set(&row)
                    .execute(conn)
                    .map_err(|e| conflict_on_unique(e, || name_taken(&row.name)))?;
                Ok(Updated {
                    row,
                    previous_host_key,
                })
            }))
        })
        .await?
    }

    /// Delete a server, refused while it has queued or running jobs; returns what it was.
    pub async fn delete_server(&self, id: uuid::Uuid) -> Result<ServerRow, StoreError> {
        self.run(move |conn| {
            super::write_tx::<_, StoreError, _>(conn, |conn| {
                let id = id.to_string();
                let row = find(conn, &id)?;
                let active: i64 = jobs::table
                    .filter(jobs::server_id.eq(&id))
                    .filter(jobs::status.eq_any([
                        JobStatus::Queued,
                        JobStatus::Running,
                    ]))
                    .count()
                    .get_result(conn)?;
                if active > 0 {
                    return Err(StoreError::Conflict(format!(
                        "server {id} has {active} queued or running job(s); cancel them or wait before deleting it"
                    )));
                }
                diesel::delete(servers::table.find(&id)).execute(conn)?;
                Ok(row)
            })
        })
        .await
    }

    /// The server as a draft with its secrets opened (for a connection).
    pub fn open_server(&self, row: &ServerRow) -> Result<ServerDraft, StoreError> {
        row.to_draft(&self.keyring).map_err(|e| {
            StoreError::Secrets(crate::secrets::SecretsError::BadKey(format!(
                "cannot open the secrets of server {}: {e}",
                row.name
            )))
        })
    }

    /// Seal again, under the current key, every server whose secrets an older key sealed.
    /// Rows sealed under a version newer than this process knows are left alone, and so are
    /// rows marked unsealed (version 0): they are refused when read, never sealed as if they
    /// were genuine. Returns how many rows changed.
    pub async fn reseal_servers(&self) -> Result<usize, StoreError> {
        let keyring = self.keyring.clone();
        self.run(move |conn| {
            let current = keyring.current();
            super::write_tx::<_, StoreError, _>(conn, |conn| {
                let stale: Vec<ServerRow> = servers::table
                    .filter(servers::secret_version.between(1, current - 1))
                    .select(ServerRow::as_select())
                    .load(conn)?;
                for mut row in stale.iter().cloned() {
                    let secrets = super::server_secrets(&row, &keyring)?;
                    row.seal_secrets(&secrets, &keyring)?;
                    diesel::update(servers::table.find(&row.id))
                        .set((
                            servers::password.eq(&row.password),
                            servers::private_key.eq(&row.private_key),
                            servers::private_key_passphrase.eq(&row.private_key_passphrase),
                            servers::secret_version.eq(row.secret_version),
                        ))
                        .execute(conn)?;
                }
                Ok(stale.len())
            })
        })
        .await
    }

    /// Replace the pinned host key (a deliberate acceptance of a changed key), recording
    /// `record` in the same transaction.
    pub async fn repin_host_key(
        &self,
        id: uuid::Uuid,
        key: String,
        record: AuditEntry,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.transaction(|conn| {
                let n = diesel::update(servers::table.find(id.to_string()))
                    .set((
                        servers::host_key.eq(Some(key)),
                        servers::updated_at.eq(Micros::now().0),
                    ))
                    .execute(conn)?;
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                super::audit::insert(conn, record)
            })
        })
        .await
    }

    /// Pin `key` (an OpenSSH public key line, whose fingerprint is `fingerprint`) on `row`
    /// when its policy is trust on first use and nothing is pinned yet, with the audit record
    /// of `actor` pinning it `by` some means, in one conditional update: of two first
    /// connections only one pins. Returns whether this call pinned it. The one place a
    /// first-use pin is made: the connection test and a worker's first connection call it.
    pub async fn pin_on_first_use(
        &self,
        row: &ServerRow,
        key: String,
        fingerprint: &str,
        actor: &Actor,
        by: &'static str,
    ) -> Result<bool, StoreError> {
        if row.host_key.is_some() || row.host_key_check != HostKeyCheck::Tofu {
            return Ok(false);
        }
        let detail = serde_json::json!({ "fingerprint": fingerprint, "by": by });
        let record = AuditEntry::by(actor, "server.host_key_pinned", "server", &row.id, detail);
        let id = row.id.clone();
        let pinned = self
            .run(move |conn| {
                conn.transaction(|conn| {
                    let n =
                        diesel::update(servers::table.find(id).filter(servers::host_key.is_null()))
                            .set((
                                servers::host_key.eq(Some(key)),
                                servers::updated_at.eq(Micros::now().0),
                            ))
                            .execute(conn)?;
                    if n == 1 {
                        super::audit::insert(conn, record)?;
                    }
                    Ok(n == 1)
                })
            })
            .await?;
        if pinned {
            tracing::info!(server_id = %row.id, %fingerprint, by, "host key pinned on first use");
        }
        Ok(pinned)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{TestDb, server_draft as draft};
    use super::*;
    use crate::domain::ServerPatch;

    /// Finding 6: an update that read the row before a first-use pin committed does not
    /// write the pin away (on PostgreSQL the update locks the row it read).
    async fn an_update_keeps_a_concurrent_first_use_pin(db: TestDb) {
        let store = db.open().await;
        let row = store.insert_server(draft()).await.unwrap();
        let id = uuid::Uuid::parse_str(&row.id).unwrap();
        let (read, was_read) = std::sync::mpsc::channel();
        let update = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .update_server(id, move |d| {
                        read.send(()).unwrap();
                        std::thread::sleep(Duration::from_millis(500));
                        d.patch(ServerPatch {
                            port: Some(2222),
                            ..Default::default()
                        })
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || was_read.recv().unwrap())
            .await
            .unwrap();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let pinned = store
            .pin_on_first_use(&row, key.into(), "SHA256:x", &Actor::system(), "test")
            .await
            .unwrap();
        update.await.unwrap().unwrap();
        let now = store.get_server(id).await.unwrap();
        assert!(pinned);
        assert_eq!(now.port, 2222);
        assert_eq!(now.host_key.as_deref(), Some(key), "the pin was lost");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_update_keeps_a_concurrent_first_use_pin_sqlite() {
        an_update_keeps_a_concurrent_first_use_pin(TestDb::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_update_keeps_a_concurrent_first_use_pin_postgres() {
        if let Some(db) = TestDb::postgres() {
            an_update_keeps_a_concurrent_first_use_pin(db).await;
        }
    }

    /// Finding 10: a row that claims `secret_version` 0 (stored as given) is refused, not
    /// read as plaintext, and opening the store does not seal it as if it were genuine.
    #[tokio::test]
    async fn an_unsealed_row_is_refused() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        let row = store.insert_server(draft()).await.unwrap();
        let id = row.id.clone();
        store
            .run(move |conn| {
                diesel::update(servers::table.find(id))
                    .set((
                        servers::password.eq(Some(b"planted".to_vec())),
                        servers::secret_version.eq(0),
                    ))
                    .execute(conn)?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.reseal_servers().await.unwrap(), 0);
        let row = store
            .get_server(uuid::Uuid::parse_str(&row.id).unwrap())
            .await
            .unwrap();
        assert_eq!(row.secret_version, 0);
        let err = store.open_server(&row).unwrap_err().to_string();
        assert!(err.contains("secret_version 0"), "{err}");
    }
}
