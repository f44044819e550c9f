//! A pooled connection lent to one user call, and what its caller's going away leaves behind.
//!
//! A call dropped mid-statement (its deadline passed, its client reset the stream) drops its
//! future, not PostgreSQL's work: the statement was sent and runs on, and the connection goes
//! back to the pool with it still running. The user's turn ([`Turn`]) went with the future,
//! so a user who gives up on their calls could keep any number of statements running, each
//! holding a pooled connection, and other users' calls would wait for the pool. A [`Lent`]
//! connection not [`returned`](Lent::returned) keeps the call's turn in a task of its own
//! until the connection has answered everything sent on it, and only then goes back to the
//! pool. One that does not answer within [`DRAIN_WITHIN`] (no statement timeout, a peer gone
//! silent) or fails is closed instead, and the turn ends with it.

use crate::user_quotas::Turn;
use diesel_async::AsyncPgConnection;
use diesel_async::SimpleAsyncConnection;
use diesel_async::pooled_connection::deadpool::Object;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// The longest an abandoned connection is waited for before it is closed: past the services'
/// statement timeout (10 s by default), so only a connection that would hang is closed.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(30);

/// A pooled connection lent to one call, with the call's turn.
pub struct Lent {
    conn: Option<Object<AsyncPgConnection>>,
    turn: Option<Turn>,
    within: Duration,
}

impl Lent {
    /// `conn`, lent to a call that holds `turn` (none: a service's call).
    pub fn new(conn: Object<AsyncPgConnection>, turn: Option<Turn>) -> Self {
        Self {
            conn: Some(conn),
            turn,
            within: DRAIN_WITHIN,
        }
    }

    /// Waits at most `within` for the connection, if abandoned, instead of [`DRAIN_WITHIN`].
    #[must_use]
    pub fn draining_within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    /// The call got its answer: the connection goes back to the pool as it is.
    pub fn returned(mut self) {
        self.conn.take();
    }
}

impl Deref for Lent {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        self.conn
            .as_ref()
            .expect("a lent connection is held until dropped")
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn
            .as_mut()
            .expect("a lent connection is held until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Not returned: the call was dropped, maybe mid-statement. An empty statement answers
        // only after everything sent before it, so its answer is the end of the abandoned one.
        let (Some(mut conn), turn) = (self.conn.take(), self.turn.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let within = self.within;
        runtime.spawn(async move {
            let _turn = turn;
            let answered = tokio::time::timeout(within, conn.batch_execute("")).await;
            if !matches!(answered, Ok(Ok(()))) {
                // It does not answer: closed instead of going back to the pool.
                drop(Object::take(conn));
            }
        });
    }
}
