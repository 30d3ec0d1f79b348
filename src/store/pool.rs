//! The connection pool's manager: diesel's, with a cheaper check on checkout.
//!
//! r2d2 can test a connection each time it is handed out (on PostgreSQL: a `SELECT 1`
//! round trip), so that one a restarted server closed is replaced instead of failing the
//! caller's statement. Under load that test was a third of all the statements PostgreSQL
//! ran (7 per trivial job, beside 16 that did the work). A connection that answered a
//! statement less than [`FRESH`] ago is handed out untested: a server that went away since
//! must also have come back within that time for the test to have made any difference
//! (while it is down, the test and the statement fail alike), and a restart takes longer
//! than that. A connection whose last use failed is always tested.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use diesel::r2d2::{ConnectionManager, ManageConnection};

use super::DbConnection;

/// How recently a connection must have answered to be handed out untested.
pub(super) const FRESH: Duration = Duration::from_millis(100);

/// A pooled connection, and when it last answered a statement.
pub struct Pooled {
    conn: DbConnection,
    answered: Option<Instant>,
}

impl Pooled {
    /// Record how the last use went: a failure (whatever its cause) makes the next
    /// checkout test the connection.
    pub(super) fn used(&mut self, ok: bool) {
        self.answered = ok.then(Instant::now);
    }
}

impl Deref for Pooled {
    type Target = DbConnection;
    fn deref(&self) -> &DbConnection {
        &self.conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut DbConnection {
        &mut self.conn
    }
}

/// diesel's manager, testing on checkout only connections not [`FRESH`].
#[derive(Debug)]
pub(super) struct Manager(pub(super) ConnectionManager<DbConnection>);

impl ManageConnection for Manager {
    type Connection = Pooled;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Pooled, Self::Error> {
        Ok(Pooled {
            conn: self.0.connect()?,
            answered: Some(Instant::now()),
        })
    }

    fn is_valid(&self, pooled: &mut Pooled) -> Result<(), Self::Error> {
        if pooled.answered.is_some_and(|at| at.elapsed() < FRESH) {
            return Ok(());
        }
        self.0.is_valid(&mut pooled.conn)?;
        pooled.answered = Some(Instant::now());
        Ok(())
    }

    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        self.0.has_broken(&mut pooled.conn)
    }
}
