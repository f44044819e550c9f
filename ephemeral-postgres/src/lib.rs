//! A throwaway PostgreSQL for tests and the local stack, started from the machine's binaries.
//!
//! - [`PgCluster::start`] runs `initdb` + `pg_ctl start` in a temp dir on a free port (as the
//!   `postgres` OS user when we are root: PostgreSQL refuses to run as root). A watchdog process
//!   stops the cluster and deletes its directory when the owner goes away, even on a crash or
//!   SIGKILL, so nothing is left behind.
//! - [`TestDatabases`] hands every test its own database, cloned (`STRATEGY FILE_COPY`, ~15 ms)
//!   from a template migrated once per server under an advisory lock. It uses `DATABASE_URL`'s
//!   server when set, else one shared [`PgCluster`] per process.
//! - [`unused_local_port`] picks the port for a local server (the cluster's, and the local
//!   stack's services) where no other process is handed it before the server binds it.

mod cluster;
mod databases;
mod port;

pub use cluster::{PgCluster, PgClusterOptions};
pub use databases::{TestDatabase, TestDatabases, with_database};
pub use port::unused_local_port;
