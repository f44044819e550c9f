//! Hand-written SQL that PostgreSQL parses and plans once per connection.
//!
//! `diesel::sql_query` marks every statement unsafe to cache, so each call sends Parse and
//! Describe, waits for the answer, then sends Bind and Execute: two round trips, and the
//! server parses and plans the statement every time. A [`Prepared`] statement is a
//! `&'static str` (a bounded set, so diesel's per-connection statement cache cannot grow
//! without end): the first call on a connection prepares a named statement, later calls only
//! bind and execute it.
//!
//! The statement text numbers its own parameters (`$1`, `$2`, … in any order, each as often as
//! needed), and the values are bound in that numeric order. Diesel writes one placeholder per
//! bound value into the SQL it generates; those go into a leading comment
//! (`/* $1$2$3 */ <statement>`), where PostgreSQL ignores them.
//!
//! Name the columns a statement returns (no `SELECT *`): PostgreSQL refuses to run a prepared
//! statement whose result columns changed under it ("cached plan must not change result type"),
//! which a migration adding a column would cause on connections that are already open.
//!
//! ```ignore
//! let n = prepared("UPDATE t SET name = $2 WHERE id = $1")
//!     .bind::<Text, _>(id)
//!     .bind::<Text, _>(name)
//!     .execute(&mut conn)
//!     .await?;
//! ```

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use std::marker::PhantomData;

/// Starts a cached statement; add its parameters with [`Prepared::bind`], in numeric order.
pub fn prepared(sql: &'static str) -> Prepared<()> {
    Prepared { sql, binds: () }
}

/// A hand-written statement with its bound values; run it with `diesel_async::RunQueryDsl`
/// and read rows through `QueryableByName`, as with `sql_query`.
#[must_use = "a statement runs only when executed or loaded"]
#[derive(Debug, Clone, Copy)]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// One bound value of SQL type `ST`.
#[derive(Debug, Clone, Copy)]
pub struct Bound<ST, V> {
    value: V,
    _type: PhantomData<ST>,
}

impl<B> Prepared<B> {
    /// Binds the next parameter (`$1` first) as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Prepared<(B, Bound<ST, V>)> {
        Prepared {
            sql: self.sql,
            binds: (
                self.binds,
                Bound {
                    value,
                    _type: PhantomData,
                },
            ),
        }
    }
}

/// The bound values of a statement, walked first to last.
pub trait BindList {
    /// Pushes every value in order.
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()>;
}

impl BindList for () {
    fn push<'b>(&'b self, _out: &mut AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        Ok(())
    }
}

impl<P, ST, V> BindList for (P, Bound<ST, V>)
where
    P: BindList,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        self.0.push(out)?;
        out.push_bind_param::<ST, V>(&self.1.value)
    }
}

impl<B: BindList> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        // Never `out.unsafe_to_cache_prepared()`: caching is the point. The SQL is static,
        // so the cache holds one entry per call site (keyed by text and bind types).
        out.push_sql("/* ");
        self.binds.push(&mut out)?;
        out.push_sql(" */ ");
        out.push_sql(self.sql);
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}
