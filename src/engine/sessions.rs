//! Dashboard sessions, kept in the database (so a restart keeps them, and every api process
//! sharing the database knows them). The HTTP layer makes the ids, keeps them in the cookie
//! and hashes them; this module stores, finds and ends sessions by those hashes.

use std::time::Duration;

use super::{Engine, Error};
use crate::domain::Micros;
use crate::store::SessionRow;

/// A session not used for this long has ended.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 60 * 60);

/// A session's last use is written at most this often (a polling page does not write on
/// every request); so a session may end up to this much before [`SESSION_IDLE`] is over.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Engine {
    /// Store a new session for the token named `name` (its SHA-256 `token_hash`), keyed by
    /// `id_hash`, the SHA-256 of its id (both hex). Expired sessions are removed meanwhile.
    pub async fn open_session(
        &self,
        id_hash: String,
        token_hash: String,
        name: String,
    ) -> Result<(), Error> {
        let now = Micros::now().0;
        let row = SessionRow {
            id_hash,
            token_hash,
            name,
            created_at: now,
            seen_at: now,
        };
        let expired_before = now - micros(SESSION_IDLE);
        Ok(self.store.insert_session(row, expired_before).await?)
    }

    /// The live session keyed by `id_hash`, its idle clock restarted; `None` when there is
    /// none or it has been idle past [`SESSION_IDLE`] (it is then removed).
    pub async fn session(&self, id_hash: String) -> Result<Option<SessionRow>, Error> {
        let now = Micros::now().0;
        let expired_before = now - micros(SESSION_IDLE);
        let found = (self.store)
            .touch_session(id_hash, now, expired_before, micros(TOUCH_EVERY))
            .await?;
        Ok(found)
    }

    /// End the session keyed by `id_hash` (nothing if there is none).
    pub async fn close_session(&self, id_hash: String) -> Result<(), Error> {
        Ok(self.store.delete_session(id_hash).await?)
    }
}
