//! Workers whose pooled connections reached a read-only server (a standby, or an old primary
//! back as one behind a pooler) while new connections reach a writable one, and no call of the
//! service is made: the read-only answer the worker's own statements meet retires the stale
//! connections, and the jobs complete; a job whose own work met it is tried again without the
//! attempt counting toward dead.
//!
//! The stale connections are sessions opened while the database's default was
//! `default_transaction_read_only = on`: they stay read-only after it is reset, as sessions on a
//! standby do, while sessions opened after take writes.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ephemeral_postgres::{TestDatabase, TestDatabases};
use job_queue::{Attempt, JobHandler, JobRunner, JobTable, Leased, RunnerSettings, job_table};
use service_runtime::Pool;
use service_runtime::Settled;
use service_runtime::db::{DbFailure, PlanCache, build_pool, classify};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

static JOBS: JobTable = job_table!("test_jobs", "id", "text");

const TABLE: &str = "CREATE TABLE test_jobs (
    id              text PRIMARY KEY,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    lease_token     uuid,
    last_error      text,
    dead_at         timestamptz,
    round           integer NOT NULL DEFAULT 0
);
CREATE INDEX test_jobs_due_idx ON test_jobs (next_attempt_at) WHERE dead_at IS NULL;";

async fn database() -> TestDatabase {
    TestDatabases::shared()
        .await
        .create("job_queue", |url| async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            for statement in TABLE.split(';').filter(|s| !s.trim().is_empty()) {
                diesel::sql_query(statement).execute(&mut conn).await?;
            }
            Ok(())
        })
        .await
        .unwrap()
}

async fn sql(conn: &mut AsyncPgConnection, statement: &str) {
    diesel::sql_query(statement).execute(conn).await.unwrap();
}

/// A pool of `size` connections, all opened while the database is read-only: stale sessions
/// that stay read-only.
async fn stale_pool(db: &TestDatabase, admin: &mut AsyncPgConnection, size: usize) -> Pool {
    let name = db.name();
    sql(
        admin,
        &format!("ALTER DATABASE \"{name}\" SET default_transaction_read_only = on"),
    )
    .await;
    let pool = build_pool(db.url(), size, PlanCache::Auto).unwrap();
    let mut held = Vec::new();
    for _ in 0..size {
        let mut c = pool.get().await.unwrap();
        let e = diesel::sql_query("UPDATE test_jobs SET attempts = attempts")
            .execute(&mut c)
            .await
            .unwrap_err();
        assert!(service_runtime::db::is_read_only_server(&e), "{e}");
        held.push(c);
    }
    drop(held);
    sql(
        admin,
        &format!("ALTER DATABASE \"{name}\" RESET default_transaction_read_only"),
    )
    .await;
    pool
}

/// Writes on its own pool for each job (as the purge does), and records the attempts it saw.
struct Writer {
    pool: Pool,
    seen: Arc<Mutex<Vec<(String, i32)>>>,
}

#[tonic::async_trait]
impl JobHandler for Writer {
    async fn attempt(&self, job: &Leased, _token: Uuid) -> Attempt {
        self.seen
            .lock()
            .unwrap()
            .push((job.key.clone(), job.attempts));
        let Ok(mut conn) = self.pool.get().await else {
            return Attempt::Deferred {
                after: Duration::ZERO,
                error: "no connection".into(),
            };
        };
        let written = diesel::sql_query("UPDATE test_jobs SET last_error = NULL WHERE id = $1")
            .bind::<diesel::sql_types::Text, _>(&job.key)
            .execute(&mut conn)
            .await;
        match written {
            Ok(_) => Attempt::Done,
            Err(e) if classify(&e) == DbFailure::Unavailable => Attempt::Deferred {
                after: Duration::ZERO,
                error: e.to_string(),
            },
            Err(e) => Attempt::Dead {
                error: e.to_string(),
            },
        }
    }
}

/// Runs a runner over `pool` until `key` is gone from the table (10 s at most), then stops it.
async fn drain(pool: Pool, handler: Writer, admin: &mut AsyncPgConnection, key: &str) {
    let settings = RunnerSettings {
        concurrency: 1,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(50),
        max_attempts: 1,
        prefetch: 0,
        attempt_max: Duration::ZERO,
        breaker: None,
    };
    let runner = JobRunner::new(pool, &JOBS, handler, settings, Arc::new(Notify::new()));
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    #[derive(diesel::QueryableByName)]
    struct Left {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    loop {
        let left: Left = diesel::sql_query("SELECT count(*) AS n FROM test_jobs WHERE id = $1")
            .bind::<diesel::sql_types::Text, _>(key)
            .one(admin)
            .await
            .unwrap();
        if left.n == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job {key} not done in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
}

#[tokio::test]
async fn workers_retire_connections_to_a_read_only_server_and_their_jobs_complete() {
    let db = database().await;
    // Opened while the database takes writes: stays writable.
    let mut admin = AsyncPgConnection::establish(db.url()).await.unwrap();

    // The runner's own statements (the lease) meet the read-only server.
    let runner_pool = stale_pool(&db, &mut admin, 2).await;
    sql(&mut admin, "INSERT INTO test_jobs (id) VALUES ('a')").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fresh = build_pool(db.url(), 1, PlanCache::Auto).unwrap();
    let handler = Writer {
        pool: fresh,
        seen: Arc::clone(&seen),
    };
    drain(runner_pool, handler, &mut admin, "a").await;
    assert_eq!(*seen.lock().unwrap(), [("a".to_owned(), 1)]);

    // The job's own work meets it: tried again, the attempt not counted (max_attempts is 1).
    let work_pool = stale_pool(&db, &mut admin, 1).await;
    sql(&mut admin, "INSERT INTO test_jobs (id) VALUES ('b')").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Writer {
        pool: work_pool,
        seen: Arc::clone(&seen),
    };
    let runner_pool = build_pool(db.url(), 2, PlanCache::Auto).unwrap();
    drain(runner_pool, handler, &mut admin, "b").await;
    assert_eq!(
        *seen.lock().unwrap(),
        [("b".to_owned(), 1), ("b".to_owned(), 1)]
    );
}
