//! A throwaway PostgreSQL for tests and the local stack, started from the machine's binaries.
//!
//! - [`PgCluster::start`] runs `initdb` + `pg_ctl start` in a temp dir on a free port (as the
//!   `postgres` OS user when we are root: PostgreSQL refuses to run as root). A watchdog process
//!   stops the cluster and deletes its directory when the owner goes away, even on a crash or
//!   SIGKILL, so nothing is left behind.
//! - [`PgCluster::start_standby`] adds a hot standby of a cluster (`pg_basebackup -R`, streaming
//!   its WAL; synchronously when the primary was started with
//!   [`PgClusterOptions::synchronous_standby`]) and [`PgCluster::promote`] makes it the primary:
//!   the failover tests stop the primary with [`PgCluster::crash`] and promote the standby.
//! - [`TestDatabases`] hands every test its own database, cloned (`STRATEGY FILE_COPY`, ~15 ms)
//!   from a template migrated once per server under an advisory lock. It uses `DATABASE_URL`'s
//!   server when set, else one shared [`PgCluster`] per process.
//! - Services under test connect as [`APP_ROLE`], which may read and write the tables and run
//!   no DDL, granted with `deploy/database-roles.sql` ([`role_grants`]), as in production.
//! - [`PgClusterOptions::tls`] starts a cluster that takes TCP connections over TLS alone, its
//!   server certificate signed by a CA made for it ([`PgCluster::ca_file`]).
//! - [`PgBouncer`] puts the machine's `pgbouncer` in front of a cluster, in session or
//!   transaction mode.
//! - [`unused_local_port`] picks the port for a local server (the cluster's, and the local
//!   stack's services) where no other process is handed it before the server binds it.

mod cluster;
mod databases;
mod pgbouncer;
mod port;
mod roles;
mod tls;

pub use cluster::{PgCluster, PgClusterOptions};
pub use databases::{TestDatabase, TestDatabases, grant_app_role, with_database};
pub use pgbouncer::{BouncerMode, PgBouncer};
pub use port::unused_local_port;
pub use roles::{APP_ROLE, app_role_url, create_role_sql, role_grants, with_user};
