//! Dashboard sessions: one row per logged-in browser, keyed by the SHA-256 of its session id
//! (never the id itself). Expired rows are removed when they are next read and whenever a
//! session is opened.

use diesel::prelude::*;

use super::schema::dashboard_sessions;
use super::{Store, StoreError};

/// One session.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = dashboard_sessions)]
pub struct SessionRow {
    /// The SHA-256 of the session id, in hex.
    pub id_hash: String,
    /// The SHA-256 of the token it was opened with, in hex.
    pub token_hash: String,
    /// The token's name: who the audit says acted.
    pub name: String,
    /// When it was opened, in microseconds since the epoch.
    pub created_at: i64,
    /// When it was last used (updated at most once every `touch_every` micros).
    pub seen_at: i64,
}

impl Store {
    /// Store a new session, and remove those not seen since `expired_before`.
    pub async fn insert_session(
        &self,
        row: SessionRow,
        expired_before: i64,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::delete(
                dashboard_sessions::table.filter(dashboard_sessions::seen_at.lt(expired_before)),
            )
            .execute(conn)?;
            diesel::insert_into(dashboard_sessions::table)
                .values(&row)
                .execute(conn)?;
            Ok(())
        })
        .await
    }

    /// The session of `id_hash` if it was seen since `expired_before` (an older one is
    /// removed). Its `seen_at` becomes `now` when it is older than `now - touch_every`, so a
    /// page that polls does not write on every request.
    pub async fn touch_session(
        &self,
        id_hash: String,
        now: i64,
        expired_before: i64,
        touch_every: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.run(move |conn| {
            let this = dashboard_sessions::table.filter(dashboard_sessions::id_hash.eq(&id_hash));
            let Some(mut row) = this
                .select(SessionRow::as_select())
                .first(conn)
                .optional()?
            else {
                return Ok(None);
            };
            if row.seen_at < expired_before {
                diesel::delete(this).execute(conn)?;
                return Ok(None);
            }
            if row.seen_at < now - touch_every {
                diesel::update(this)
                    .set(dashboard_sessions::seen_at.eq(now))
                    .execute(conn)?;
                row.seen_at = now;
            }
            Ok(Some(row))
        })
        .await
    }

    /// End the session of `id_hash` (nothing if there is none).
    pub async fn delete_session(&self, id_hash: String) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::delete(
                dashboard_sessions::table.filter(dashboard_sessions::id_hash.eq(id_hash)),
            )
            .execute(conn)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::TestDb;
    use super::*;

    fn row(id: &str, seen_at: i64) -> SessionRow {
        SessionRow {
            id_hash: id.into(),
            token_hash: "t".into(),
            name: "ops".into(),
            created_at: seen_at,
            seen_at,
        }
    }

    async fn sessions_expire_when_idle(db: TestDb) {
        let store = db.open().await;
        store.insert_session(row("a", 1_000), 0).await.unwrap();
        store.insert_session(row("b", 1_000), 0).await.unwrap();
        // Seen recently: not written again.
        let a = store
            .touch_session("a".into(), 1_050, 500, 100)
            .await
            .unwrap();
        assert_eq!(a.map(|r| r.seen_at), Some(1_000));
        // Past `touch_every`: its clock moves.
        let a = store
            .touch_session("a".into(), 1_200, 500, 100)
            .await
            .unwrap();
        assert_eq!(a.map(|r| r.seen_at), Some(1_200));
        // Idle past the limit: gone, and removed.
        assert!(
            store
                .touch_session("b".into(), 3_000, 1_100, 100)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .touch_session("b".into(), 0, 0, 100)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .touch_session("a".into(), 1_300, 1_100, 100)
                .await
                .unwrap()
                .is_some()
        );
        // A new session sweeps the expired ones.
        store.insert_session(row("c", 9_000), 5_000).await.unwrap();
        assert!(
            store
                .touch_session("a".into(), 0, 0, 100)
                .await
                .unwrap()
                .is_none()
        );
        store.delete_session("c".into()).await.unwrap();
        assert!(
            store
                .touch_session("c".into(), 9_000, 0, 100)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn sessions_expire_when_idle_sqlite() {
        sessions_expire_when_idle(TestDb::sqlite()).await;
    }

    #[tokio::test]
    async fn sessions_expire_when_idle_postgres() {
        if let Some(db) = TestDb::postgres() {
            sessions_expire_when_idle(db).await;
        }
    }
}
