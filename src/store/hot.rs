//! The updates every job makes — its claim, its process group, its end — as statements
//! the connection keeps prepared.
//!
//! Diesel prepares every `UPDATE` it builds anew each time (a changeset may change shape
//! from one call to the next), and on SQLite compiling this table's updates (their foreign
//! keys, their indexes) costs more than running them. These have a fixed text and a static
//! query id, so each connection's statement cache prepares them once. The claim and the
//! end return the row they changed ([`returning`]), so no read follows them.

use diesel::backend::Backend;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Untyped};
use diesel::sqlite::Sqlite;
use diesel::{OptionalExtension, QueryResult, RunQueryDsl};

use super::{DbConnection, JobRow};
use crate::domain::JobStatus;

/// Run `query` on whichever backend `conn` is: the number of rows it changed.
pub(super) fn execute<Q>(conn: &mut DbConnection, query: Q) -> QueryResult<usize>
where
    Q: QueryFragment<Pg> + QueryFragment<Sqlite> + QueryId + RunQueryDsl<diesel::PgConnection>,
    Q: RunQueryDsl<diesel::SqliteConnection>,
{
    match conn {
        DbConnection::Pg(c) => query.execute(c),
        DbConnection::Sqlite(c) => query.execute(c),
    }
}

/// `query` and the row it changed, if it changed one (`RETURNING *`: one round trip, not
/// an update and a read).
pub(super) fn returning<Q>(conn: &mut DbConnection, query: Q) -> QueryResult<Option<JobRow>>
where
    Q: QueryFragment<Pg> + QueryFragment<Sqlite> + QueryId,
{
    let query = Returning(query);
    match conn {
        DbConnection::Pg(c) => query.get_result(c).optional(),
        DbConnection::Sqlite(c) => query.get_result(c).optional(),
    }
}

/// An update with `RETURNING *`, whose row is read by column name.
struct Returning<Q>(Q);

impl<Q: QueryId> QueryId for Returning<Q> {
    type QueryId = Returning<Q::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q, DB> QueryFragment<DB> for Returning<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(" RETURNING *");
        Ok(())
    }
}

impl<Q> Query for Returning<Q> {
    type SqlType = Untyped;
}

impl<Q, Conn> RunQueryDsl<Conn> for Returning<Q> {}

/// Two inserts as one statement on PostgreSQL (`WITH first AS (INSERT …) INSERT …`): atomic
/// without a transaction around them, in one round trip.
pub(super) struct Both<A, B>(pub A, pub B);

impl<A, B> QueryFragment<Pg> for Both<A, B>
where
    A: QueryFragment<Pg>,
    B: QueryFragment<Pg>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH first AS (");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(") ");
        self.1.walk_ast(out.reborrow())
    }
}

impl<A, B> QueryId for Both<A, B> {
    type QueryId = ();
    // Prepared once per text, like the inserts it holds.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<A, B, Conn> RunQueryDsl<Conn> for Both<A, B> {}

/// An update of `jobs` that changes nothing while a webhook is active: a job's end with no
/// webhook to tell needs no transaction around it (see [`super::Store::finish_job`]).
pub(super) struct UnlessHooks<Q>(pub Q);

impl<Q: QueryId> QueryId for UnlessHooks<Q> {
    type QueryId = UnlessHooks<Q::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q, DB> QueryFragment<DB> for UnlessHooks<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(" AND NOT EXISTS (SELECT 1 FROM webhooks WHERE active)");
        Ok(())
    }
}

/// Claim a queued job on `server` whose cancel was not asked for: it is `running`, held by
/// `worker` until `lease_until`, started `now`, one attempt more.
pub(super) struct Claim<'a> {
    /// The job.
    pub id: &'a str,
    /// Its server, as the worker's slot was taken for.
    pub server: &'a str,
    /// The worker claiming it.
    pub worker: &'a str,
    /// The lease's end.
    pub lease_until: i64,
    /// Now.
    pub now: i64,
    /// A broker delivery brought it: it is marked published (it went through the broker).
    pub delivered: bool,
}

impl<DB> QueryFragment<DB> for Claim<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    bool: ToSql<Bool, DB>,
    DB: diesel::sql_types::HasSqlType<Bool>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE jobs SET status = 'running', worker = ");
        out.push_bind_param::<Text, str>(self.worker)?;
        out.push_sql(", lease_expires_at = ");
        out.push_bind_param::<BigInt, i64>(&self.lease_until)?;
        out.push_sql(", started_at = ");
        out.push_bind_param::<BigInt, i64>(&self.now)?;
        out.push_sql(", published = (published OR ");
        out.push_bind_param::<Bool, bool>(&self.delivered)?;
        out.push_sql("), attempts = attempts + 1 WHERE id = ");
        out.push_bind_param::<Text, str>(self.id)?;
        out.push_sql(" AND server_id = ");
        out.push_bind_param::<Text, str>(self.server)?;
        out.push_sql(" AND status = 'queued' AND cancel_requested = FALSE");
        Ok(())
    }
}

/// End a job, if its status is still one of `from` (at most two: see
/// [`JobStatus::sources_of`]): `status`, its exit code and error, its process group (if
/// given), finished `now`, its lease let go.
pub(super) struct Finish<'a> {
    /// The job.
    pub id: &'a str,
    /// The statuses it may end from.
    pub from: [&'static str; 2],
    /// The status it ends in.
    pub status: &'static str,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub error: Option<&'a str>,
    /// Its process group, if known (`None` keeps the stored one).
    pub pgid: Option<i64>,
    /// Now.
    pub now: i64,
}

impl<'a> Finish<'a> {
    /// The end `to` of job `id`.
    pub fn new(
        id: &'a str,
        to: JobStatus,
        exit_code: Option<i32>,
        error: Option<&'a str>,
        pgid: Option<i64>,
        now: i64,
    ) -> Self {
        let sources = JobStatus::sources_of(to);
        let first = sources.first().map_or("", |s| s.as_str());
        let second = sources.get(1).map_or(first, |s| s.as_str());
        debug_assert!(
            sources.len() <= 2,
            "{to}: more sources than the statement holds"
        );
        Self {
            id,
            from: [first, second],
            status: to.as_str(),
            exit_code,
            error,
            pgid,
            now,
        }
    }
}

impl<DB> QueryFragment<DB> for Finish<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    i32: ToSql<Integer, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE jobs SET status = ");
        out.push_bind_param::<Text, str>(self.status)?;
        out.push_sql(", exit_code = ");
        out.push_bind_param::<Nullable<Integer>, Option<i32>>(&self.exit_code)?;
        out.push_sql(", error = ");
        out.push_bind_param::<Nullable<Text>, Option<&str>>(&self.error)?;
        out.push_sql(", remote_pgid = COALESCE(");
        out.push_bind_param::<Nullable<BigInt>, Option<i64>>(&self.pgid)?;
        out.push_sql(", remote_pgid), finished_at = ");
        out.push_bind_param::<BigInt, i64>(&self.now)?;
        out.push_sql(", lease_expires_at = NULL WHERE id = ");
        out.push_bind_param::<Text, str>(self.id)?;
        out.push_sql(" AND status IN (");
        out.push_bind_param::<Text, str>(self.from[0])?;
        out.push_sql(", ");
        out.push_bind_param::<Text, str>(self.from[1])?;
        out.push_sql(")");
        Ok(())
    }
}

/// Record a job's remote process group.
pub(super) struct SetPgid<'a> {
    /// The job.
    pub id: &'a str,
    /// Its process group.
    pub pgid: i64,
}

impl<DB> QueryFragment<DB> for SetPgid<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE jobs SET remote_pgid = ");
        out.push_bind_param::<BigInt, i64>(&self.pgid)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, str>(self.id)?;
        Ok(())
    }
}

macro_rules! static_query {
    ($($ty:ident),*) => {$(
        impl QueryId for $ty<'_> {
            type QueryId = $ty<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl<Conn> RunQueryDsl<Conn> for $ty<'_> {}
    )*};
}

static_query!(Claim, Finish, SetPgid);
