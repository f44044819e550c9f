//! A pooled connection lent to one user call, and what its caller's going away leaves behind.
//!
//! A call dropped mid-statement (its deadline passed, its client reset the stream) drops its
//! future, not PostgreSQL's work: the statement was sent and runs on, and the connection goes
//! back to the pool with it still running. The user's turn ([`Turn`]) went with the future,
//! so a user who gives up on their calls could keep any number of statements running, each
//! holding a pooled connection, and other users' calls would wait for the pool. A [`Lent`]
//! connection not [`returned`](Lent::returned) keeps the call's turn in a task of its own
//! until the connection has answered everything sent on it, and only then goes back to the
//! pool (or is closed, if it no longer answers).

use crate::user_quotas::Turn;
use diesel_async::AsyncPgConnection;
use diesel_async::SimpleAsyncConnection;
use diesel_async::pooled_connection::deadpool::Object;
use std::ops::{Deref, DerefMut};

/// A pooled connection lent to one call, with the call's turn.
pub struct Lent {
    conn: Option<Object<AsyncPgConnection>>,
    turn: Option<Turn>,
}

impl Lent {
    /// `conn`, lent to a call that holds `turn` (none: a service's call).
    pub fn new(conn: Object<AsyncPgConnection>, turn: Option<Turn>) -> Self {
        Self {
            conn: Some(conn),
            turn,
        }
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
        runtime.spawn(async move {
            let _turn = turn;
            if conn.batch_execute("").await.is_err() {
                // It no longer answers: closed instead of going back to the pool.
                drop(Object::take(conn));
            }
        });
    }
}
