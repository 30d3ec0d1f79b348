//! SQLite's writes, committed in groups.
//!
//! SQLite takes one writer at a time, and a commit costs much the same for one row as for
//! many: the WAL frames of the pages it touched, their checksums, a checkpoint now and then.
//! One thread owns a connection for the hot writes ([`Store::write`]): it takes every write
//! waiting, runs each under a savepoint of its own inside one `BEGIN IMMEDIATE … COMMIT`, and
//! answers each only once the group is committed. A caller sees what it would have seen
//! with a transaction of its own — its write is durable before the answer comes (a claim is
//! committed before its job starts), and a write that fails rolls back alone.
//!
//! A second thread, the checkpointer, copies the WAL back into the database file on a
//! connection of its own, a moment after the writes that grew it: a commit only appends
//! to the WAL, where SQLite would otherwise run the checkpoint inside the commit that
//! crossed its threshold — a stall of milliseconds for whoever waits on that group, and for
//! a job's 32 MiB of output a second full write on the writer's thread. The connections keep
//! SQLite's own automatic checkpoint only as a bound ([`WAL_BOUND_PAGES`]) the WAL reaches
//! if the checkpointer cannot keep up.
//!
//! On PostgreSQL a write is a transaction on a pooled connection, as before: its server
//! commits concurrent transactions on its own.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use tokio::sync::oneshot;

use super::{DbConnection, Store, StoreError};

/// The most writes one group commits.
const MAX_GROUP: usize = 128;

/// The WAL's size, in pages, past which a connection's commit checkpoints it itself
/// (SQLite's `wal_autocheckpoint`; its default is 1000). The checkpointer runs long before.
pub(super) const WAL_BOUND_PAGES: u32 = 16_384;

/// How long the checkpointer lets writes gather after a commit before it checkpoints them:
/// one checkpoint (and its `fsync` of the database file) per pause, not per commit.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(50);

/// The writer of a SQLite store.
pub(super) struct Writer {
    tx: mpsc::Sender<Box<dyn Staged>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    /// Start the writer thread on `conn` and the checkpointer on `checkpoints`; both end
    /// when the last [`Store`] clone is dropped.
    pub(super) fn start(conn: DbConnection, checkpoints: DbConnection) -> Result<Self, StoreError> {
        let cannot =
            |e: std::io::Error| StoreError::Unavailable(format!("cannot start the writer: {e}"));
        let (grew, wal) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint(checkpoints, &wal))
            .map_err(cannot)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(conn, &rx, &grew))
            .map_err(cannot)?;
        Ok(Self { tx })
    }
}

/// Checkpoint the WAL a pause after each commit that grew it (commits during the pause
/// share the checkpoint), until the writer is gone. A `PASSIVE` checkpoint takes no lock a
/// writer or a reader waits on: it copies what no reader still needs, and the WAL starts
/// over once all of it is copied.
fn checkpoint(mut conn: DbConnection, grew: &mpsc::Receiver<()>) {
    while grew.recv().is_ok() {
        std::thread::sleep(CHECKPOINT_PAUSE);
        while grew.try_recv().is_ok() {}
        if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(error = %e, "cannot checkpoint the database's WAL");
        }
    }
}

/// A write waiting for its group.
trait Staged: Send {
    /// Run the write; `false` when it failed (and its changes must be rolled back).
    fn run(&mut self, conn: &mut DbConnection) -> bool;
    /// It could not run: answer `error`.
    fn refuse(&mut self, error: String);
    /// Answer the caller, now that its group is committed — or the commit's error.
    fn answer(self: Box<Self>, commit: Result<(), &str>);
}

/// One caller's write and where its answer goes.
struct Write<T, F> {
    f: Option<F>,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Staged for Write<T, F>
where
    T: Send,
    F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &mut DbConnection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "database task failed: a write panicked".into(),
            ))
        });
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn refuse(&mut self, error: String) {
        self.f = None;
        self.out = Some(Err(StoreError::Unavailable(error)));
    }

    fn answer(self: Box<Self>, commit: Result<(), &str>) {
        let out = match (self.out, commit) {
            (Some(Ok(_)), Err(e)) => Err(StoreError::Unavailable(format!(
                "the write was not committed: {e}"
            ))),
            (Some(out), _) => out,
            (None, _) => Err(StoreError::Unavailable("the write did not run".into())),
        };
        // A caller that went away does not want it.
        let _ = self.reply.send(out);
    }
}

/// Take writes as they come and commit them in groups, until every sender is gone; tell
/// the checkpointer (`grew`) after each group.
fn serve(
    mut conn: DbConnection,
    rx: &mpsc::Receiver<Box<dyn Staged>>,
    grew: &mpsc::SyncSender<()>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        commit(&mut conn, group);
        // Full: a checkpoint is due already.
        let _ = grew.try_send(());
    }
}

/// Run `group` in one transaction, each write under its own savepoint (a group of one needs
/// none), and answer them all after the commit.
fn commit(conn: &mut DbConnection, mut group: Vec<Box<dyn Staged>>) {
    if let Err(e) = conn.batch_execute("BEGIN IMMEDIATE") {
        let e = e.to_string();
        for mut w in group {
            w.refuse(format!("cannot begin a write: {e}"));
            w.answer(Ok(()));
        }
        return;
    }
    if let [only] = group.as_mut_slice() {
        if !only.run(conn) {
            let _ = conn.batch_execute("ROLLBACK");
            group.into_iter().for_each(|w| w.answer(Ok(())));
            return;
        }
    } else {
        for w in &mut group {
            if let Err(e) = conn.batch_execute("SAVEPOINT w") {
                w.refuse(format!("cannot begin a write: {e}"));
                continue;
            }
            let undo = if w.run(conn) {
                "RELEASE w"
            } else {
                "ROLLBACK TO w; RELEASE w"
            };
            if let Err(e) = conn.batch_execute(undo) {
                tracing::warn!(error = %e, "cannot end a write's savepoint");
            }
        }
    }
    let committed = conn.batch_execute("COMMIT").map_err(|e| {
        let _ = conn.batch_execute("ROLLBACK");
        e.to_string()
    });
    let commit = committed.as_ref().map(|_| ()).map_err(String::as_str);
    for w in group {
        w.answer(commit);
    }
}

impl Store {
    /// Run `f` as one atomic write: on SQLite in the writer's next group (see the module
    /// docs: `f` must not open a transaction itself; it runs inside one), on PostgreSQL in
    /// a transaction of its own on the pool. The answer comes once the write is committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_in(f, true).await
    }

    /// [`Store::write`] for a write whose statements need no transaction around them (one
    /// update, and a read of what it changed): on PostgreSQL each commits on its own, with
    /// no `BEGIN` and `COMMIT` round trips; on SQLite it joins the writer's next group.
    pub(crate) async fn write_plain<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_in(f, false).await
    }

    /// `f` through the writer on SQLite; on PostgreSQL on the pool, in a transaction when
    /// `transaction` says so.
    async fn write_in<T, F>(&self, f: F, transaction: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.writer {
            Some(writer) => writer.write(f).await,
            None if transaction => self.run(move |conn| super::write_tx(conn, f)).await,
            None => self.run(f).await,
        }
    }
}

impl Writer {
    /// Stage `f` for the next group and wait for its answer.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let stopped = || StoreError::Unavailable("the database writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        let staged = Box::new(Write {
            f: Some(f),
            out: None,
            reply,
        });
        self.tx.send(staged).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use super::super::tests::TestDb;
    use super::*;

    /// Create a table of the test's own, through the writer.
    async fn create(store: &Store, sql: &'static str) {
        store
            .write(move |conn| {
                conn.batch_execute(sql)?;
                Ok(())
            })
            .await
            .unwrap();
    }

    /// A write that inserts `n` into the test's own table.
    fn insert(n: i64) -> impl FnOnce(&mut DbConnection) -> Result<i64, StoreError> + Send {
        move |conn| {
            conn.batch_execute(&format!("INSERT INTO w_test (n) VALUES ({n})"))?;
            Ok(n)
        }
    }

    async fn count(store: &Store) -> Vec<i64> {
        store
            .run(|conn| {
                #[derive(diesel::QueryableByName)]
                struct N {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let rows: Vec<N> = diesel::RunQueryDsl::load(
                    diesel::sql_query("SELECT n FROM w_test ORDER BY n"),
                    conn,
                )?;
                Ok(rows.into_iter().map(|r| r.n).collect())
            })
            .await
            .unwrap()
    }

    /// Writes sent together are committed as one group; the one that fails (here a
    /// duplicate key, and one that panics) rolls back alone and gets its error; the others
    /// are stored and answered; the writer goes on after the panic.
    #[tokio::test]
    async fn a_group_commits_the_writes_that_succeed_and_only_those() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        assert!(
            store.writer.is_some(),
            "SQLite stores write through the writer"
        );
        create(&store, "CREATE TABLE w_test (n INTEGER PRIMARY KEY)").await;
        let mut writes = Vec::new();
        for n in [1, 2, 2, 3] {
            let store = store.clone();
            writes.push(tokio::spawn(async move { store.write(insert(n)).await }));
        }
        let panics = store.clone();
        writes.push(tokio::spawn(async move {
            panics
                .write(|conn| {
                    conn.batch_execute("INSERT INTO w_test (n) VALUES (99)")?;
                    panic!("a write that panics half way")
                })
                .await
        }));
        let mut ok = Vec::new();
        let mut failed = 0;
        for w in writes {
            match w.await.unwrap() {
                Ok(n) => ok.push(n),
                Err(_) => failed += 1,
            }
        }
        ok.sort_unstable();
        assert_eq!(ok, vec![1, 2, 3]);
        assert_eq!(failed, 2, "the second 2 and the panic fail");
        assert_eq!(count(&store).await, vec![1, 2, 3], "99 was rolled back");
        assert_eq!(
            store.write(insert(4)).await.unwrap(),
            4,
            "the writer goes on"
        );
    }

    /// An answer comes only after the commit: what a write returned is there for a read on
    /// another connection at once.
    #[tokio::test]
    async fn an_answered_write_is_committed() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        create(&store, "CREATE TABLE w_test (n INTEGER PRIMARY KEY)").await;
        for n in 0..50 {
            store.write(insert(n)).await.unwrap();
            assert_eq!(count(&store).await.len() as i64, n + 1);
        }
    }

    /// The checkpointer copies committed writes into the database file a moment later:
    /// 4 MB written through the writer (a WAL of about 1,000 pages, far below the commits'
    /// own bound of [`WAL_BOUND_PAGES`]) reach the file itself, with no commit waiting on it.
    #[tokio::test]
    async fn the_checkpointer_moves_the_wal_into_the_database_file() {
        let db = TestDb::sqlite();
        let store = db.open().await;
        create(
            &store,
            "CREATE TABLE w_blob (n INTEGER PRIMARY KEY, b BLOB)",
        )
        .await;
        let file = || std::fs::metadata(&db.url).unwrap().len();
        let before = file();
        for n in 0..64 {
            store
                .write(move |conn| {
                    conn.batch_execute(&format!(
                        "INSERT INTO w_blob (n, b) VALUES ({n}, randomblob(65536))"
                    ))?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file() < before + 4_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file is still {} bytes (was {before}): nothing checkpointed it",
                file()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
