//! One row of a statement, read only once PostgreSQL has finished the statement.
//!
//! diesel-async's `get_result` and `first` return as soon as the first row arrives. Outside a
//! transaction PostgreSQL commits a statement after it has sent its rows (at the protocol's
//! Sync), so a write read that way is answered before it is committed. When the commit then
//! fails (the server stops, a synchronous standby never confirms, a deferred constraint refuses)
//! the caller was already told it succeeded, and a read that follows the answer may not see the
//! write yet. [`Settled::one`] waits for the end of the statement (ReadyForQuery), which comes
//! after its commit. `clippy.toml` refuses the early methods in the workspace.
//!
//! What no client can tell: a commit whose wait for the synchronous standby is cancelled
//! (`pg_cancel_backend`) is reported as done, with only a WARNING, though the standby may not
//! have it.

use diesel::result::{Error, QueryResult};
use diesel_async::methods::LoadQuery;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::future::Future;

/// [`Settled::one`] for every statement diesel-async can run.
pub trait Settled: Sized {
    /// The statement's first row (`Error::NotFound` when it returns none), once the statement
    /// has ended and, outside a transaction, committed. Add `.limit(1)` where `first` was
    /// meant; `diesel::OptionalExtension::optional` turns no row into `None`.
    fn one<'q, 'c, U>(
        self,
        conn: &'c mut AsyncPgConnection,
    ) -> impl Future<Output = QueryResult<U>> + Send + 'c
    where
        Self: LoadQuery<'q, AsyncPgConnection, U> + 'q,
        U: Send + 'c,
        'q: 'c;
}

impl<T: RunQueryDsl<AsyncPgConnection>> Settled for T {
    fn one<'q, 'c, U>(
        self,
        conn: &'c mut AsyncPgConnection,
    ) -> impl Future<Output = QueryResult<U>> + Send + 'c
    where
        Self: LoadQuery<'q, AsyncPgConnection, U> + 'q,
        U: Send + 'c,
        'q: 'c,
    {
        let rows = self.load::<U>(conn);
        async move { rows.await?.into_iter().next().ok_or(Error::NotFound) }
    }
}
