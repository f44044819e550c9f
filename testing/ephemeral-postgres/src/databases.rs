//! One isolated, migrated database per test, cloned from a template.

use crate::cluster::{PgCluster, PgClusterOptions};
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::NoTls;

/// Hands out databases on one server: `DATABASE_URL`'s, or a cluster started for this process.
#[derive(Debug)]
pub struct TestDatabases {
    admin_url: String,
    /// Drop test databases when done (on a server we did not start; ours is deleted whole).
    drop_after: bool,
    cluster: Option<PgCluster>,
    templates: Mutex<HashSet<String>>,
}

/// A database for one test; dropped (on a shared server) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
    admin_url: String,
    drop_after: bool,
}

impl TestDatabase {
    /// Connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection URL of the app role ([`crate::APP_ROLE`]): it may read and write the tables,
    /// and run no DDL, as a service does in production.
    pub fn app_url(&self) -> String {
        crate::roles::app_role_url(&self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !self.drop_after {
            return;
        }
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs synchronously, possibly inside a runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(c) = connect(&admin).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Replaces the database name in a `postgres://` URL (keeps user, host and query).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Creates the app role if needed and grants it the tables of the database at `url` (as its
/// owner), with the runbook's own grants: for a database that is not a [`TestDatabase`].
pub async fn grant_app_role(url: &str) -> Result<()> {
    let c = connect(url).await?;
    c.batch_execute(&crate::roles::create_app_role())
        .await
        .context("creating the app role")?;
    let owner: String = c.query_one("SELECT current_user::text", &[]).await?.get(0);
    c.batch_execute(&crate::roles::role_grants(
        &owner,
        crate::roles::APP_ROLE,
        "public",
    ))
    .await
    .context("granting the app role (deploy/database-roles.sql)")?;
    Ok(())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| "connecting to PostgreSQL".to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

static SHARED: OnceCell<TestDatabases> = OnceCell::const_new();

impl TestDatabases {
    /// The process-wide instance: `DATABASE_URL`'s server when set, else a cluster started now
    /// and removed when the process exits.
    pub async fn shared() -> &'static TestDatabases {
        SHARED
            .get_or_init(|| async { Self::new().await.expect("a PostgreSQL server for tests") })
            .await
    }

    async fn new() -> Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            return Ok(Self {
                admin_url: url,
                drop_after: true,
                cluster: None,
                templates: Mutex::new(HashSet::new()),
            });
        }
        let cluster = tokio::task::spawn_blocking(|| {
            let c = PgCluster::start(PgClusterOptions::default())?;
            c.wait_ready(Duration::from_secs(30))?;
            Ok::<_, anyhow::Error>(c)
        })
        .await??;
        Ok(Self {
            admin_url: cluster.url("postgres"),
            drop_after: false,
            cluster: Some(cluster),
            templates: Mutex::new(HashSet::new()),
        })
    }

    /// Wraps an existing server (admin URL) or cluster.
    pub fn on_cluster(cluster: PgCluster) -> Self {
        Self {
            admin_url: cluster.url("postgres"),
            drop_after: false,
            cluster: Some(cluster),
            templates: Mutex::new(HashSet::new()),
        }
    }

    /// The cluster these databases live on, if this instance started it.
    pub fn cluster(&self) -> Option<&PgCluster> {
        self.cluster.as_ref()
    }

    /// A new empty database cloned from template `template` (created and migrated once with
    /// `migrate`, which receives the template's URL and must close its connections when done).
    /// The app role ([`crate::APP_ROLE`]) may read and write every table the template's owner
    /// creates in its `public` schema, then and later (`deploy/database-roles.sql`).
    pub async fn create<F, Fut>(&self, template: &str, migrate: F) -> Result<TestDatabase>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        // `_r`: templates whose app role is granted (older ones on a shared server are not).
        let template = format!("tpl_{template}_r");
        let admin = connect(&self.admin_url).await?;
        {
            let mut known = self.templates.lock().await;
            if !known.contains(&template) {
                // Several test processes may share the server: one migrates, the others wait.
                admin
                    .execute("SELECT pg_advisory_lock(hashtext($1))", &[&template])
                    .await?;
                let exists = admin
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
                    .await?
                    .is_some();
                let result = if exists {
                    Ok(())
                } else {
                    admin
                        .batch_execute(&format!("CREATE DATABASE \"{template}\""))
                        .await?;
                    let url = with_database(&self.admin_url, &template);
                    let r = match migrate(url.clone()).await {
                        Ok(()) => grant_app_role(&url).await,
                        Err(e) => Err(e),
                    };
                    if r.is_err() {
                        let _ = admin
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{template}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                    r
                };
                // CREATE DATABASE ... TEMPLATE waits while anyone is connected to the template.
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&template],
                    )
                    .await?;
                admin
                    .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&template])
                    .await?;
                result.context("migrating the template database")?;
                known.insert(template.clone());
            }
        }
        let name = format!("t_{}", uuid_like());
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\" STRATEGY FILE_COPY"
            ))
            .await
            .context("cloning the template database")?;
        Ok(TestDatabase {
            url: with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
            drop_after: self.drop_after,
        })
    }
}

/// A unique lowercase name part (time + counter + pid), without pulling in a UUID crate.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }

    #[tokio::test]
    async fn clones_are_isolated_and_carry_the_template_schema() {
        let dbs = TestDatabases::shared().await;
        let migrate = |url: String| async move {
            let c = connect(&url).await?;
            c.batch_execute("CREATE TABLE marker (v int); INSERT INTO marker VALUES (1)")
                .await?;
            Ok(())
        };
        let a = dbs.create("selftest", migrate).await.unwrap();
        let b = dbs.create("selftest", |_| async { Ok(()) }).await.unwrap();
        let ca = connect(a.url()).await.unwrap();
        let cb = connect(b.url()).await.unwrap();
        ca.batch_execute("INSERT INTO marker VALUES (2)")
            .await
            .unwrap();
        let count = |c: tokio_postgres::Client| async move {
            c.query_one("SELECT count(*) FROM marker", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        assert_eq!(count(ca).await, 2);
        assert_eq!(count(cb).await, 1);
    }

    #[test]
    fn paused_cluster_refuses_then_resumes() {
        let c = PgCluster::start(PgClusterOptions::default()).unwrap();
        c.wait_ready(Duration::from_secs(10)).unwrap();
        c.pause().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", c.port())).is_err());
        c.resume().unwrap();
        c.wait_ready(Duration::from_secs(10)).unwrap();
        let dir = c.dir().to_path_buf();
        drop(c);
        assert!(!dir.exists(), "cluster files left behind");
    }
}
