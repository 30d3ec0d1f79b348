//! Storage: one diesel code path over SQLite and PostgreSQL.
//!
//! Owns the connection pool, the embedded migrations and every query. Callers get plain
//! rows and domain values; nothing outside this module builds SQL. Diesel is synchronous, so
//! reads run on tokio's blocking pool through [`Store::run`]; the writes every job makes
//! (its insert, claim, output and end) go through `Store::write`, which on
//! SQLite commits them in groups on one writer thread, and a checkpointer thread copies the
//! WAL into the database file after them (see `writer`). On PostgreSQL a pooled connection
//! is tested before it is handed out only if it has not answered for a moment (see `pool`).
//!
//! Where the two backends need different SQL (claims with `FOR UPDATE SKIP LOCKED`, say),
//! match on [`DbConnection`]; everything else is written once against the multi-backend.

/// The queries every definition kept under a unique name (templates, schedules, webhooks)
/// makes the same way: insert, get by id or name, list by name, replace whole. A name
/// already taken is a conflict that names it. Invoked in the module of `$table`, with
/// `diesel::prelude::*`, `Store`, `StoreError` and `conflict_on_unique` in scope.
macro_rules! named_rows {
    ($what:literal, $table:ident, $row:ty, $insert:ident, $get:ident, $list:ident, $update:ident) => {
        fn taken(name: &str) -> String {
            format!(concat!("a ", $what, " named {:?} already exists"), name)
        }

        impl Store {
            #[doc = concat!("Insert a ", $what, ".")]
            pub async fn $insert(&self, row: $row) -> Result<$row, StoreError> {
                self.run(move |conn| {
                    diesel::insert_into($table::table)
                        .values(&row)
                        .execute(conn)
                        .map_err(|e| conflict_on_unique(e, || taken(&row.name)))?;
                    Ok(row)
                })
                .await
            }

            #[doc = concat!("A ", $what, " by id or by name.")]
            pub async fn $get(&self, name_or_id: String) -> Result<$row, StoreError> {
                self.run(move |conn| {
                    $table::table
                        .filter($table::id.eq(&name_or_id).or($table::name.eq(&name_or_id)))
                        .select(<$row>::as_select())
                        .first(conn)
                        .optional()?
                        .ok_or(StoreError::NotFound)
                })
                .await
            }

            #[doc = concat!("Every ", $what, ", by name.")]
            pub async fn $list(&self) -> Result<Vec<$row>, StoreError> {
                self.run(|conn| {
                    Ok($table::table
                        .order($table::name.asc())
                        .select(<$row>::as_select())
                        .load(conn)?)
                })
                .await
            }

            #[doc = concat!("Replace a ", $what, "'s row whole (the caller keeps its id and creation time).")]
            pub async fn $update(&self, row: $row) -> Result<$row, StoreError> {
                self.run(move |conn| {
                    let n = diesel::update($table::table.find(&row.id))
                        .set(&row)
                        .execute(conn)
                        .map_err(|e| conflict_on_unique(e, || taken(&row.name)))?;
                    if n == 0 {
                        return Err(StoreError::NotFound);
                    }
                    Ok(row)
                })
                .await
            }
        }
    };
}

mod audit;
mod connect;
mod hot;
mod jobs;
mod models;
mod outbox;
mod pool;
mod retention;
mod runs;
mod schedules;
pub mod schema;
mod servers;
mod sessions;
mod templates;
mod types;
mod webhooks;
mod writer;
pub use servers::{UpdateError, Updated};

pub use audit::{AuditEntry, AuditFilter, AuditRow};
pub use jobs::{
    CancelOutcome, ChunkPlace, ChunkRow, Finish, JobFilter, JobRow, LostJob, NewChunk,
    OutputExtent, Placement, ServerKey,
};
pub use models::{ServerRow, server_secrets};
pub use outbox::{Attempt, DeliveryRow, WebhookRow, envelope};
pub use retention::{Cursor, Step};
pub use runs::{Advanced, Run, RunFilter, RunHost, RunHostRow, RunRow};
pub use schedules::{FireRow, ScheduleRow};
pub use sessions::SessionRow;
pub use templates::TemplateRow;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use pool::{Manager, Pooled};

use crate::secrets::{Keyring, SecretsError};
use crate::settings::{DatabaseKind, DatabaseSettings, Settings};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The largest SQLite database that is rewritten at open to turn on incremental vacuum.
pub const AUTO_VACUUM_MAX_BYTES: i64 = 64 * 1024 * 1024;

/// A connection to whichever database the settings chose.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// PostgreSQL.
    Pg(PgConnection),
    /// SQLite.
    Sqlite(SqliteConnection),
}

/// Which backend a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Name for `/health` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// What can go wrong in the store. The HTTP layer maps these to statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// The change conflicts with the current state (a unique name, a busy server…).
    #[error("{0}")]
    Conflict(String),
    /// No connection could be had: the database is down or the pool is exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the connection for a reason waiting does not mend: its
    /// certificate, TLS, authentication, a database or role that does not exist, a bad URL.
    #[error("the database refused the connection: {0}")]
    Refused(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Stored secrets could not be sealed or opened.
    #[error("stored secrets: {0}")]
    Secrets(#[from] SecretsError),
}

impl From<diesel::r2d2::PoolError> for StoreError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

#[derive(Debug)]
struct SqlitePragmas {
    busy_timeout_ms: u64,
}

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        if let DbConnection::Sqlite(c) = conn {
            c.batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = {};",
                self.busy_timeout_ms,
                writer::WAL_BOUND_PAGES,
            ))
            .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

impl CustomizeConnection<Pooled, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut Pooled) -> Result<(), diesel::r2d2::Error> {
        CustomizeConnection::<DbConnection, _>::on_acquire(self, conn)
    }
}

/// The database: a pool of connections and the queries over it. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    backend: Backend,
    keyring: std::sync::Arc<Keyring>,
    /// SQLite's group-committing writer ([`Store::write`]); `None` on PostgreSQL.
    writer: Option<std::sync::Arc<writer::Writer>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Open the database the settings describe, apply pending migrations, load the secret
    /// key (see [`crate::secrets`]) and seal any secret still stored under an older key.
    pub async fn open(settings: &Settings) -> Result<Self, StoreError> {
        let keyring = std::sync::Arc::new(Keyring::from_settings(settings)?);
        Self::open_with(&settings.database, keyring).await
    }

    /// Like [`Store::open`], with a keyring made by the caller.
    pub async fn open_with(
        settings: &DatabaseSettings,
        keyring: std::sync::Arc<Keyring>,
    ) -> Result<Self, StoreError> {
        let settings = settings.clone();
        let store = tokio::task::spawn_blocking(move || Self::open_blocking(&settings, keyring))
            .await
            .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;
        let resealed = store.reseal_servers().await?;
        if resealed > 0 {
            tracing::info!(
                servers = resealed,
                key_version = store.keyring.current(),
                "sealed stored secrets under the current key"
            );
        }
        Ok(store)
    }

    /// The keys that seal stored secrets.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn open_blocking(
        settings: &DatabaseSettings,
        keyring: std::sync::Arc<Keyring>,
    ) -> Result<Self, StoreError> {
        let (url, backend) = match settings.kind() {
            DatabaseKind::Sqlite(path) => {
                if path.trim().is_empty() {
                    return Err(StoreError::Unavailable("the SQLite path is empty".into()));
                }
                if let Some(dir) = std::path::Path::new(&path).parent()
                    && !dir.as_os_str().is_empty()
                    && !dir.exists()
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                create_private_file(&path)?;
                (path, Backend::Sqlite)
            }
            DatabaseKind::Postgres(url) => {
                let url = connect::libpq_url(&url, settings.connect_timeout_secs)?;
                let redact = |e: StoreError| match e {
                    StoreError::Unavailable(m) => {
                        StoreError::Unavailable(redact_pool_error(&m, settings))
                    }
                    StoreError::Refused(m) => StoreError::Refused(redact_pool_error(&m, settings)),
                    other => other,
                };
                match connect::probe(&url).map_err(redact)? {
                    Some(version) => tracing::info!(
                        database = %settings.redacted_url(),
                        tls = %version,
                        "the PostgreSQL connection is encrypted"
                    ),
                    None if connect::plain_asked(&url) => tracing::info!(
                        database = %settings.redacted_url(),
                        "the PostgreSQL connection is plain text, as sslmode=disable asks"
                    ),
                    None => tracing::warn!(
                        database = %settings.redacted_url(),
                        "the PostgreSQL connection is NOT encrypted (plain text): the URL's \
                         sslmode allows that (libpq's default, prefer, falls back to plain \
                         text when the server offers no TLS); set sslmode=verify-full (or \
                         require) to refuse it"
                    ),
                }
                (url, Backend::Postgres)
            }
        };
        let pragmas = SqlitePragmas {
            busy_timeout_ms: settings.busy_timeout_ms,
        };
        let writer = match backend {
            Backend::Sqlite => {
                use diesel::Connection;
                let open = || {
                    let mut conn = SqliteConnection::establish(&url)
                        .map(DbConnection::Sqlite)
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    pragmas
                        .on_acquire(&mut conn)
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    Ok::<_, StoreError>(conn)
                };
                Some(std::sync::Arc::new(writer::Writer::start(
                    open()?,
                    open()?,
                )?))
            }
            Backend::Postgres => None,
        };
        let manager = Manager(ConnectionManager::<DbConnection>::new(url));
        let pool = Pool::builder()
            .max_size(settings.pool_size.max(1))
            .connection_timeout(Duration::from_secs(settings.connect_timeout_secs.max(1)))
            .connection_customizer(Box::new(pragmas))
            // A SQLite connection cannot break; a PostgreSQL one is tested before use unless
            // it answered just now (a server restarted since is replaced, not handed out:
            // see `pool`).
            .test_on_check_out(backend == Backend::Postgres)
            .build(manager)
            .map_err(|e| StoreError::Unavailable(redact_pool_error(&e.to_string(), settings)))?;
        let store = Store {
            pool,
            backend,
            keyring,
            writer,
        };
        if backend == Backend::Sqlite {
            store.incremental_vacuum_blocking();
        }
        store.migrate_blocking()?;
        Ok(store)
    }

    /// SQLite: make the database give freed pages back to the file system on request
    /// (`auto_vacuum = INCREMENTAL`, what a prune's incremental vacuum needs). The mode of a
    /// database that has pages already only changes with a `VACUUM`, which rewrites the
    /// file: done here while it is small (a new database, or one under
    /// [`AUTO_VACUUM_MAX_BYTES`]); a larger one is left as it is, with a warning. A failure
    /// is logged: the database works without it, its prunes just do not shrink the file.
    fn incremental_vacuum_blocking(&self) {
        let done = self.conn().map_err(|e| e.to_string()).and_then(|mut conn| {
            let DbConnection::Sqlite(c) = &mut **conn else {
                return Ok(());
            };
            let value = |c: &mut SqliteConnection, sql| {
                retention::sqlite_value(c, sql).map_err(|e| e.to_string())
            };
            // 2: INCREMENTAL.
            if value(c, "SELECT auto_vacuum AS value FROM pragma_auto_vacuum()")? == 2 {
                return Ok(());
            }
            let bytes = value(
                c,
                "SELECT page_count * page_size AS value FROM pragma_page_count(), pragma_page_size()",
            )?;
            if bytes > AUTO_VACUUM_MAX_BYTES {
                tracing::warn!(
                    bytes,
                    "the SQLite database was made without incremental vacuum: prunes free its \
                     pages for reuse but do not shrink the file (run `VACUUM` on it once, with \
                     the service stopped, after `PRAGMA auto_vacuum = INCREMENTAL`)"
                );
                return Ok(());
            }
            c.batch_execute("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
                .map_err(|e| e.to_string())
        });
        if let Err(e) = done {
            tracing::warn!(error = %e, "cannot turn on incremental vacuum on the SQLite database");
        }
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn conn(&self) -> Result<PooledConnection<Manager>, StoreError> {
        Ok(self.pool.get()?)
    }

    /// Apply pending migrations. Several processes may start at once on a new database (an
    /// api and its workers): on PostgreSQL they take turns under an advisory lock; on both
    /// backends a loser of a race tries again, and then finds the work done.
    fn migrate_blocking(&self) -> Result<Vec<String>, StoreError> {
        /// The advisory lock key of migrations ("jobexec" in ASCII).
        const MIGRATION_LOCK: i64 = 0x006a_6f62_6578_6563;
        let mut last = String::new();
        for attempt in 0..5u64 {
            let mut conn = self.conn()?;
            let applied = match &mut **conn {
                DbConnection::Sqlite(c) => c
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
                DbConnection::Pg(c) => {
                    c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
                    let r = c
                        .run_pending_migrations(POSTGRES_MIGRATIONS)
                        .map(|v| v.iter().map(|m| m.to_string()).collect::<Vec<_>>());
                    let _ =
                        c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
                    r
                }
            };
            match applied {
                Ok(v) => return Ok(v),
                Err(e) => {
                    last = e.to_string();
                    std::thread::sleep(std::time::Duration::from_millis(100 * (attempt + 1)));
                }
            }
        }
        Err(StoreError::Migration(last))
    }

    /// Apply pending migrations; returns the versions applied (empty when up to date).
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.migrate_blocking())
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration task failed: {e}")))?
    }

    /// Run `f` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = store.conn()?;
            let out = f(&mut conn);
            conn.used(out.is_ok());
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// A trivial round trip, for `/health`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.batch_execute("SELECT 1")?;
            Ok(())
        })
        .await
    }
}

/// Create the SQLite file at `path` readable by its owner only, before SQLite opens it:
/// SQLite gives the `-wal` and `-shm` files it makes beside a database the database's mode,
/// so none of the three is ever readable by others, whatever the umask. An existing file
/// (and `:memory:` or a `file:` URI) is left as it is.
fn create_private_file(path: &str) -> Result<(), StoreError> {
    if path == ":memory:" || path.starts_with("file:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(StoreError::Unavailable(
            format!("cannot create the database {path}: {e}"),
        )),
        _ => Ok(()),
    }
}

/// r2d2 errors may quote the URL; keep its password out of them.
fn redact_pool_error(msg: &str, settings: &DatabaseSettings) -> String {
    use secrecy::ExposeSecret;
    let url = settings.url.expose_secret();
    if url.is_empty() {
        return msg.to_string();
    }
    msg.replace(url, &settings.redacted_url())
}

/// Map a unique-constraint violation to [`StoreError::Conflict`] with `message`.
pub(crate) fn conflict_on_unique(
    e: diesel::result::Error,
    message: impl FnOnce() -> String,
) -> StoreError {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => StoreError::Conflict(message()),
        diesel::result::Error::NotFound => StoreError::NotFound,
        other => StoreError::Database(other),
    }
}

/// Run `f` in a write transaction. On SQLite the transaction is `BEGIN IMMEDIATE`, so it takes
/// the write lock up front and waits for it (busy timeout) instead of failing with "database
/// is locked" when a read inside it would later need upgrading to a write.
pub(crate) fn write_tx<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    E: From<diesel::result::Error>,
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
{
    use diesel::Connection;
    match conn {
        DbConnection::Pg(_) => conn.transaction(f),
        DbConnection::Sqlite(_) => {
            conn.batch_execute("BEGIN IMMEDIATE")?;
            match f(conn) {
                Ok(v) => {
                    if let Err(e) = conn.batch_execute("COMMIT") {
                        let _ = conn.batch_execute("ROLLBACK");
                        return Err(e.into());
                    }
                    Ok(v)
                }
                Err(e) => {
                    let _ = conn.batch_execute("ROLLBACK");
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use diesel::Connection;
    use secrecy::SecretString;

    /// A database made for one test: an SQLite file in a temporary directory, or a PostgreSQL
    /// database dropped at the end (`None` when no PostgreSQL answers).
    pub(crate) struct TestDb {
        pub(crate) url: String,
        pub(crate) dir: Option<tempfile::TempDir>,
        pg_name: Option<String>,
    }

    const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    impl TestDb {
        pub(crate) fn sqlite() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let url = dir.path().join("jobs.db").display().to_string();
            TestDb {
                url,
                dir: Some(dir),
                pg_name: None,
            }
        }

        pub(crate) fn postgres() -> Option<Self> {
            let admin = std::env::var("JOBEXEC_TEST_POSTGRES_URL").unwrap_or(PG_ADMIN.into());
            let mut conn = match PgConnection::establish(&admin) {
                Ok(conn) => conn,
                // CI has PostgreSQL: a test that cannot reach it fails there, never skips.
                Err(e) if std::env::var_os("CI").is_some() => {
                    panic!("CI: PostgreSQL at {admin} is needed: {e}")
                }
                Err(e) => {
                    eprintln!("skipped: no PostgreSQL at {admin} ({e})");
                    return None;
                }
            };
            let name = format!("jobexec_unit_{}", uuid::Uuid::new_v4().simple());
            conn.batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            Some(TestDb {
                url: format!("{base}/{name}"),
                dir: None,
                pg_name: Some(name),
            })
        }

        /// A store on it (a pool of four) with a fresh key.
        pub(crate) async fn open(&self) -> Store {
            let env = std::collections::HashMap::from([
                ("DATABASE_URL".to_string(), self.url.clone()),
                ("JOBEXEC__DATABASE__POOL_SIZE".to_string(), "4".to_string()),
            ]);
            let settings = Settings::load_from(None, &env).unwrap();
            let key = crate::secrets::generate_entry(1).unwrap();
            let keyring = Keyring::from_text(&SecretString::from(key)).unwrap();
            Store::open_with(&settings.database, std::sync::Arc::new(keyring))
                .await
                .unwrap()
        }
    }

    /// A valid server, `web-1` on 127.0.0.1 with a password: what the store's tests store.
    pub(crate) fn server_draft() -> crate::domain::ServerDraft {
        let input = crate::domain::ServerPatch {
            name: Some("web-1".into()),
            hostname: Some("127.0.0.1".into()),
            user: Some("deploy".into()),
            password: Some("hunter2".to_string().into()),
            ..Default::default()
        };
        crate::domain::ServerDraft::create(input, 1).unwrap()
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let admin = std::env::var("JOBEXEC_TEST_POSTGRES_URL").unwrap_or(PG_ADMIN.into());
            if let Some(name) = &self.pg_name
                && let Ok(mut conn) = PgConnection::establish(&admin)
            {
                let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }

    /// Finding 9: the database, its `-wal` and its `-shm` are readable by their owner only
    /// from the moment they exist, whatever the umask.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_sqlite_database_and_its_wal_and_shm_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let db = TestDb::sqlite();
        let store = db.open().await;
        store.ping().await.unwrap();
        let dir = db.dir.as_ref().unwrap().path();
        for name in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
}
