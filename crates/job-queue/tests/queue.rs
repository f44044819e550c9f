//! The job queue against PostgreSQL: a table of the documented shape, handlers that record what
//! they were given, and runners draining the table as a service's workers do.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ephemeral_postgres::{TestDatabase, TestDatabases};
use job_queue::{
    Attempt, BreakerSettings, JobHandler, JobRunner, JobState, JobTable, Leased, RunnerSettings,
    job_table,
};
use service_runtime::db::{PlanCache, build_pool};
use service_runtime::{Pool, Settled};
use std::sync::atomic::{AtomicBool, Ordering};
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

async fn database() -> (TestDatabase, Pool) {
    let db = TestDatabases::shared()
        .await
        .create("job_queue", |url| async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            for statement in TABLE.split(';').filter(|s| !s.trim().is_empty()) {
                diesel::sql_query(statement).execute(&mut conn).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let pool = build_pool(db.url(), 8, PlanCache::Auto).unwrap();
    (db, pool)
}

async fn enqueue(pool: &Pool, keys: impl IntoIterator<Item = String>) {
    let keys: Vec<String> = keys.into_iter().collect();
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query("INSERT INTO test_jobs (id) SELECT unnest($1::text[])")
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&keys)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// One row as the table holds it.
#[derive(Debug, diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    leased: bool,
}

async fn rows(pool: &Pool) -> Vec<Row> {
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "SELECT id, attempts, lease_token IS NOT NULL AS leased FROM test_jobs ORDER BY id",
    )
    .load(&mut conn)
    .await
    .unwrap()
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the handlers saw and how they answer.
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, i32)>>>,
    answer: fn(&Leased) -> Attempt,
    /// Each attempt takes this long.
    work: Duration,
    breaker_opened: Arc<AtomicBool>,
}

impl Recorder {
    fn new(answer: fn(&Leased) -> Attempt, work: Duration) -> Self {
        Self {
            seen: Arc::default(),
            answer,
            work,
            breaker_opened: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<(String, i32)> {
        self.seen.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl JobHandler for Recorder {
    async fn attempt(&self, job: &Leased, _token: Uuid) -> Attempt {
        self.seen
            .lock()
            .unwrap()
            .push((job.key.clone(), job.attempts));
        tokio::time::sleep(self.work).await;
        (self.answer)(job)
    }

    fn breaker_changed(&self, open: bool) {
        self.breaker_opened.store(open, Ordering::SeqCst);
    }
}

fn settings(concurrency: usize, prefetch: usize, max_attempts: i32) -> RunnerSettings {
    RunnerSettings {
        concurrency,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(20),
        max_attempts,
        prefetch,
        attempt_max: Duration::ZERO,
        breaker: None,
    }
}

/// Starts a runner; the sender stops it, the handle ends when it has.
fn start(
    pool: &Pool,
    handler: Recorder,
    settings: RunnerSettings,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let runner = JobRunner::new(
        pool.clone(),
        &JOBS,
        handler,
        settings,
        Arc::new(Notify::new()),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

async fn live(pool: &Pool) -> i64 {
    let mut conn = pool.get().await.unwrap();
    job_queue::depths(&mut conn, &JOBS).await.unwrap().live()
}

#[tokio::test]
async fn two_runners_do_every_job_once_and_delete_it() {
    let (_db, pool) = database().await;
    let keys: Vec<String> = (0..300).map(|i| format!("job{i:03}")).collect();
    enqueue(&pool, keys.clone()).await;
    let handler = Recorder::new(|_| Attempt::Done, Duration::from_millis(1));
    let a = start(&pool, handler.clone(), settings(4, 8, 5));
    let b = start(&pool, handler.clone(), settings(4, 8, 5));
    until("the table drained", async || live(&pool).await == 0).await;
    for (stop, run) in [a, b] {
        stop.send(()).unwrap();
        run.await.unwrap();
    }
    let mut seen: Vec<String> = handler.seen().into_iter().map(|(k, _)| k).collect();
    seen.sort();
    assert_eq!(seen, keys, "every job exactly once");
    assert!(rows(&pool).await.is_empty(), "done jobs are deleted");
}

#[tokio::test]
async fn a_failing_job_is_retried_then_dead_and_kept_until_an_operator_retries_it() {
    let (_db, pool) = database().await;
    enqueue(&pool, ["flaky".to_owned()]).await;
    let handler = Recorder::new(
        |_| Attempt::Retry {
            after: Duration::ZERO,
            error: "boom".into(),
        },
        Duration::ZERO,
    );
    let (stop, run) = start(&pool, handler.clone(), settings(1, 0, 3));
    until("the job is dead", async || {
        let mut conn = pool.get().await.unwrap();
        job_queue::depths(&mut conn, &JOBS).await.unwrap().dead == 1
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(
        handler.seen(),
        [
            ("flaky".into(), 1),
            ("flaky".into(), 2),
            ("flaky".into(), 3)
        ]
    );
    let mut conn = pool.get().await.unwrap();
    let dead = job_queue::list(&mut conn, &JOBS, Some(JobState::Dead), "", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].state(), JobState::Dead);
    assert_eq!(dead[0].attempts, 3);
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("boom") && error.contains("gave up after 3 attempts"),
        "{error}"
    );
    let retried = job_queue::retry_state(&mut conn, &JOBS, JobState::Dead)
        .await
        .unwrap();
    assert_eq!(retried, 1);
    let pending = job_queue::list(&mut conn, &JOBS, Some(JobState::Pending), "", 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 0);
}

/// A job whose worker died during its last attempt and the one more it is given (an
/// out-of-memory kill, say), so that no result was recorded, is buried when its lease expires
/// instead of being leased again: a job that kills its worker cannot take every replica down in
/// turn for ever. One whose last result alone went unrecorded gets that one more try.
#[tokio::test]
async fn a_job_whose_worker_died_in_its_last_attempts_is_dead_not_leased_again() {
    let (_db, pool) = database().await;
    enqueue(&pool, ["killer".to_owned(), "lost".to_owned()]).await;
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE test_jobs SET attempts = CASE id WHEN 'killer' THEN 4 ELSE 3 END,
                leased_until = now() - interval '1 second',
                lease_token = gen_random_uuid(), last_error = 'timed out'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let handler = Recorder::new(|_| Attempt::Done, Duration::ZERO);
    let (stop, run) = start(&pool, handler.clone(), settings(1, 0, 3));
    until("the abandoned job is dead", async || {
        let mut conn = pool.get().await.unwrap();
        job_queue::depths(&mut conn, &JOBS).await.unwrap().dead == 1
    })
    .await;
    until("the other job is done", async || {
        rows(&pool).await.len() == 1
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(
        handler.seen(),
        [("lost".into(), 4)],
        "the job whose last result was lost is tried once more; the abandoned one never"
    );
    let mut conn = pool.get().await.unwrap();
    let dead = job_queue::list(&mut conn, &JOBS, Some(JobState::Dead), "", 10)
        .await
        .unwrap();
    assert_eq!((dead[0].key.as_str(), dead[0].attempts), ("killer", 4));
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("stopped during its last attempts")
            && error.contains("gave up after 4 attempts")
            && error.contains("timed out"),
        "{error}"
    );
}

/// A handler that panics fails its attempt: retried, then dead with the panic as its error, and
/// the runner goes on with the other jobs.
#[tokio::test]
async fn a_panicking_handler_fails_its_attempts_until_the_job_is_dead() {
    let (_db, pool) = database().await;
    enqueue(&pool, ["bomb".to_owned(), "fine".to_owned()]).await;
    let handler = Recorder::new(
        |job| {
            assert_ne!(job.key, "bomb", "the handler's bug");
            Attempt::Done
        },
        Duration::ZERO,
    );
    let (stop, run) = start(&pool, handler.clone(), settings(1, 0, 2));
    until("the panicking job is dead", async || {
        let mut conn = pool.get().await.unwrap();
        job_queue::depths(&mut conn, &JOBS).await.unwrap().dead == 1
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let dead = job_queue::list(&mut conn, &JOBS, Some(JobState::Dead), "", 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].key.as_str(), dead[0].attempts), ("bomb", 2));
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("panicked") && error.contains("gave up after 2 attempts"),
        "{error}"
    );
    assert_eq!(
        rows(&pool).await.len(),
        1,
        "the other job was done and deleted"
    );
}

/// Records, as each attempt starts, how long its lease has left (by the database's clock).
#[derive(Clone)]
struct LeaseProbe {
    pool: Pool,
    left: Arc<Mutex<Vec<(String, i32, f64)>>>,
    work: Duration,
}

#[tonic::async_trait]
impl JobHandler for LeaseProbe {
    async fn attempt(&self, job: &Leased, _token: Uuid) -> Attempt {
        #[derive(diesel::QueryableByName)]
        struct Left {
            #[diesel(sql_type = diesel::sql_types::Double)]
            secs: f64,
        }
        let mut conn = self.pool.get().await.unwrap();
        let left: Left = diesel::sql_query(
            "SELECT extract(epoch FROM leased_until - now())::float8 AS secs FROM test_jobs WHERE id = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&job.key)
        .one(&mut conn)
        .await
        .unwrap();
        self.left
            .lock()
            .unwrap()
            .push((job.key.clone(), job.attempts, left.secs));
        tokio::time::sleep(self.work).await;
        Attempt::Done
    }
}

/// A job leased ahead starts only while its longest attempt still fits in its lease; one leased
/// too long ago is given back and leased afresh, its attempt not spent.
#[tokio::test]
async fn a_job_leased_ahead_starts_only_while_its_attempt_fits_in_its_lease() {
    let (_db, pool) = database().await;
    enqueue(&pool, (0..4).map(|i| format!("job{i}"))).await;
    let probe = LeaseProbe {
        pool: pool.clone(),
        left: Arc::default(),
        work: Duration::from_millis(300),
    };
    let runner = JobRunner::new(
        pool.clone(),
        &JOBS,
        probe.clone(),
        RunnerSettings {
            lease: Duration::from_secs(2),
            attempt_max: Duration::from_millis(1800),
            ..settings(1, 4, 5)
        },
        Arc::new(Notify::new()),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    until("every job done", async || live(&pool).await == 0).await;
    stop.send(()).unwrap();
    run.await.unwrap();
    let left = probe.left.lock().unwrap().clone();
    assert_eq!(left.len(), 4, "each job once: {left:?}");
    for (key, attempts, secs) in left {
        assert!(
            secs >= 1.75,
            "{key} started with {secs} s of its lease left"
        );
        assert_eq!(attempts, 1, "{key}: a lease given back spends no attempt");
    }
}

/// A job that ends its first round comes back for its next once due: scheduled meanwhile (not
/// pending, not aging, not taken or made due by an operator), then taken again with its round
/// counted and its attempts started again.
#[tokio::test]
async fn a_job_that_ends_a_round_comes_back_for_the_next_when_due() {
    let (_db, pool) = database().await;
    enqueue(&pool, ["twice".to_owned()]).await;
    let handler = Recorder::new(
        |job| match job.round {
            0 => Attempt::Later {
                after: Duration::from_millis(1500),
            },
            _ => Attempt::Done,
        },
        Duration::ZERO,
    );
    let (stop, run) = start(&pool, handler.clone(), settings(1, 0, 5));
    until("the first round done", async || {
        let mut conn = pool.get().await.unwrap();
        job_queue::depths(&mut conn, &JOBS).await.unwrap().scheduled == 1
    })
    .await;
    {
        let mut conn = pool.get().await.unwrap();
        let d = job_queue::depths(&mut conn, &JOBS).await.unwrap();
        assert_eq!((d.pending, d.failing, d.dead, d.live()), (0, 0, 0, 0));
        assert_eq!(d.oldest, 0.0, "a scheduled round does not age");
        let listed = job_queue::list(&mut conn, &JOBS, Some(JobState::Scheduled), "", 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state(), JobState::Scheduled);
        assert_eq!(listed[0].attempts, 0);
        assert_eq!(
            job_queue::retry_key(&mut conn, &JOBS, "twice")
                .await
                .unwrap(),
            0,
            "a scheduled round is not made due early"
        );
    }
    assert_eq!(
        handler.seen(),
        [("twice".into(), 1)],
        "not before it is due"
    );
    until("the second round done", async || {
        rows(&pool).await.is_empty()
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(handler.seen(), [("twice".into(), 1), ("twice".into(), 1)]);
}

#[tokio::test]
async fn a_permanent_failure_is_dead_at_once() {
    let (_db, pool) = database().await;
    enqueue(&pool, ["refused".to_owned()]).await;
    let handler = Recorder::new(
        |_| Attempt::Dead {
            error: "422".into(),
        },
        Duration::ZERO,
    );
    let (stop, run) = start(&pool, handler.clone(), settings(1, 0, 50));
    until("the job is dead", async || {
        let mut conn = pool.get().await.unwrap();
        job_queue::depths(&mut conn, &JOBS).await.unwrap().dead == 1
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(handler.seen().len(), 1);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        job_queue::retry_key(&mut conn, &JOBS, "refused")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn stopping_gives_back_the_jobs_leased_ahead_with_their_attempt() {
    let (_db, pool) = database().await;
    enqueue(&pool, (0..5).map(|i| format!("job{i}"))).await;
    // One slot, four leased ahead; the first job takes long enough to stop the runner during it.
    let handler = Recorder::new(|_| Attempt::Done, Duration::from_millis(300));
    let (stop, run) = start(&pool, handler.clone(), settings(1, 4, 5));
    until("the first job started", async || !handler.seen().is_empty()).await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(handler.seen().len(), 1, "only the job in flight ran");
    let left = rows(&pool).await;
    assert_eq!(left.len(), 4, "the job in flight finished and was recorded");
    for row in left {
        assert!(
            !row.leased && row.attempts == 0,
            "{} given back with its attempt: {row:?}",
            row.id
        );
    }
}

#[tokio::test]
async fn the_breaker_pauses_every_job_while_the_service_is_unavailable() {
    let (_db, pool) = database().await;
    enqueue(&pool, (0..10).map(|i| format!("job{i}"))).await;
    let handler = Recorder::new(
        |_| Attempt::Unavailable {
            after: Duration::ZERO,
            error: "503".into(),
            hold: None,
        },
        Duration::ZERO,
    );
    let mut s = settings(1, 0, 50);
    s.breaker = Some(BreakerSettings {
        failures: 3,
        cooldown_base: Duration::from_secs(60),
        cooldown_max: Duration::from_secs(60),
        probe_timeout: Duration::from_secs(30),
    });
    let (stop, run) = start(&pool, handler.clone(), s);
    until("the breaker opened", async || {
        AtomicBool::load(&handler.breaker_opened, Ordering::SeqCst)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    run.await.unwrap();
    assert_eq!(
        handler.seen().len(),
        3,
        "no job starts once the breaker is open"
    );
    assert_eq!(live(&pool).await, 10, "nothing is lost or dead");
}

/// Results finished together are recorded each on its own: a retry whose error PostgreSQL
/// could not store as it was (a NUL byte, from an upstream's answer say) is kept without it,
/// and neither it nor a failure to record one result loses the jobs done beside it.
#[tokio::test]
async fn results_are_recorded_each_on_its_own_and_errors_are_kept_storable() {
    let (_db, pool) = database().await;
    let keys: Vec<String> = (0..20).map(|i| format!("job{i:02}")).collect();
    enqueue(&pool, keys).await;
    let handler = Recorder::new(
        |job| {
            if job.key == "job07" {
                Attempt::Retry {
                    after: Duration::from_secs(3600),
                    error: format!("upstream said \0{}", "x".repeat(5000)),
                }
            } else {
                Attempt::Done
            }
        },
        Duration::from_millis(5),
    );
    let (stop, run) = start(&pool, handler.clone(), settings(8, 8, 5));
    until("every other job done, job07 waiting", async || {
        let rows = rows(&pool).await;
        rows.len() == 1 && rows[0].id == "job07" && !rows[0].leased
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let failing = job_queue::list(&mut conn, &JOBS, Some(JobState::Failing), "", 10)
        .await
        .unwrap();
    assert_eq!(failing.len(), 1);
    let error = failing[0].last_error.as_deref().unwrap_or_default();
    assert!(error.starts_with("upstream said x"), "{}", &error[..40]);
    assert_eq!(error.chars().count(), 2000);
}
