//! Reads from streaming replicas: a read goes to a replica connection only when that server has
//! replayed what the primary had `max_lag` ago (judged per server, so one lagging replica of two
//! behind one URL serves nothing stale), a caller's read after its own write waits (bounded) for
//! the replica to replay it, else goes to the primary; a read URL leading to a primary, a
//! standby that stopped receiving WAL, and a standby that stopped answering send reads to the
//! primary.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;
use ephemeral_postgres::{PgCluster, PgClusterOptions};
use service_runtime::Settled;
use service_runtime::db::{PlanCache, Pool, build_pool};
use service_runtime::replica::{ReadLabels, ReadPool, ReplicaMetrics, commit_lsn};
use std::time::{Duration, Instant};

#[derive(QueryableByName)]
struct Recovery {
    #[diesel(sql_type = Bool)]
    r: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Whether `pool` gave a replica's connection, and how many rows of `t` it sees.
async fn read(pool: &ReadPool, after: Option<&service_runtime::replica::Lsn>) -> (bool, i64) {
    let mut c = pool.get(after).await.unwrap();
    let on_replica = diesel::sql_query("SELECT pg_is_in_recovery() AS r")
        .one::<Recovery>(&mut c)
        .await
        .unwrap()
        .r;
    let n = diesel::sql_query("SELECT count(*) AS n FROM t")
        .one::<Count>(&mut c)
        .await
        .unwrap()
        .n;
    (on_replica, n)
}

async fn admin(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

fn reads(metrics: &ReplicaMetrics, target: &'static str, reason: &'static str) -> u64 {
    metrics
        .reads
        .get_or_create(&ReadLabels { target, reason })
        .get()
}

/// A primary and `n` standbys streaming from it, with table `t`.
async fn clusters(n: usize) -> (PgCluster, Vec<PgCluster>) {
    let (p, s) = tokio::task::spawn_blocking(move || {
        PgCluster::start_with_standbys(PgClusterOptions::default(), n).unwrap()
    })
    .await
    .unwrap();
    admin(&p.url("postgres"), "CREATE TABLE t (v int)").await;
    (p, s)
}

/// A read pool whose sampler runs in the background (dropped with the returned sender).
fn read_pool(
    writes: &Pool,
    replica_url: &str,
    size: usize,
    max_lag: Duration,
    own_write_wait: Duration,
    metrics: &ReplicaMetrics,
) -> (ReadPool, tokio::sync::oneshot::Sender<()>) {
    let replica = build_pool(replica_url, size, PlanCache::Auto).unwrap();
    let pool = ReadPool::new(
        writes.clone(),
        Some(replica),
        max_lag,
        own_write_wait,
        metrics.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pool.clone().sample_loop(async move {
        let _ = stopped.await;
    }));
    (pool, stop)
}

async fn insert(writes: &Pool, v: i32) {
    let mut w = writes.get().await.unwrap();
    diesel::sql_query(format!("INSERT INTO t VALUES ({v})"))
        .execute(&mut w)
        .await
        .unwrap();
}

/// Waits until `f` holds, up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reads_go_to_the_replica_while_it_keeps_up_and_callers_read_their_writes() {
    let (primary, standbys) = clusters(1).await;
    let standby = &standbys[0];
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();
    let metrics = ReplicaMetrics::default();
    let max_lag = Duration::from_millis(1_000);
    let (pool, _stop) = read_pool(
        &writes,
        &standby.url("postgres"),
        2,
        max_lag,
        Duration::from_millis(1000),
        &metrics,
    );
    // An idle replica that has replayed all the primary wrote serves.
    eventually("the replica serves", || async { read(&pool, None).await.0 }).await;
    assert_eq!(metrics.lag_seconds.get(), 0.0);

    // A caller's write, then its read: the replica serves it once it has replayed the write.
    let mut w = writes.get().await.unwrap();
    diesel::sql_query("INSERT INTO t VALUES (1)")
        .execute(&mut w)
        .await
        .unwrap();
    let lsn = commit_lsn(&mut w).await.unwrap();
    assert_eq!(read(&pool, Some(&lsn)).await, (true, 1));

    // Replay paused: the caller's next write is not on the replica; its read goes to the
    // primary after the bounded wait, and sees it.
    admin(&standby.url("postgres"), "SELECT pg_wal_replay_pause()").await;
    diesel::sql_query("INSERT INTO t VALUES (2)")
        .execute(&mut w)
        .await
        .unwrap();
    let lsn = commit_lsn(&mut w).await.unwrap();
    let at = Instant::now();
    assert_eq!(read(&pool, Some(&lsn)).await, (false, 2));
    // Another caller reads the (stale) replica while the write is younger than the limit...
    let stale = read(&pool, None).await;
    if at.elapsed() < max_lag / 2 {
        assert_eq!(stale, (true, 1));
    }
    // ...then the primary.
    tokio::time::sleep(max_lag + Duration::from_millis(100)).await;
    assert_eq!(read(&pool, None).await, (false, 2));
    assert!(reads(&metrics, "primary", "lagging") > 0);
    assert!(
        metrics.lag_seconds.get() > max_lag.as_secs_f64(),
        "{}",
        metrics.lag_seconds.get()
    );

    // Replay resumed: the replica catches up and serves again.
    admin(&standby.url("postgres"), "SELECT pg_wal_replay_resume()").await;
    eventually("the replica serves again", || async {
        read(&pool, Some(&lsn)).await == (true, 2)
    })
    .await;
    drop(w);
    drop((primary, standbys));
}

/// A write's LSN just past a new segment's header (after a WAL switch, nothing written to
/// it): an idle standby that replayed everything is at it, and serves the writer's read.
#[tokio::test]
async fn an_idle_replica_reaches_a_commit_lsn_at_a_segment_start() {
    let (primary, standbys) = clusters(1).await;
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();
    let metrics = ReplicaMetrics::default();
    let (pool, _stop) = read_pool(
        &writes,
        &standbys[0].url("postgres"),
        2,
        Duration::from_millis(1_000),
        Duration::from_millis(1_000),
        &metrics,
    );
    insert(&writes, 1).await;
    admin(&primary.url("postgres"), "SELECT pg_switch_wal()").await;
    let mut w = writes.get().await.unwrap();
    let lsn = commit_lsn(&mut w).await.unwrap();
    // Every sample kept is after the switch.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Within 5 s (the primary writes a running-transactions record every 15 s, which would
    // move the replica past the segment's header).
    let start = Instant::now();
    while !read(&pool, None).await.0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the replica serves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read(&pool, Some(&lsn)).await, (true, 1), "after {lsn}");
    drop(w);
    drop((primary, standbys));
}

/// Two standbys behind one URL (as CloudNativePG's `-ro` service), replay paused on one: no
/// read sees data older than the limit, though the other standby keeps serving.
#[tokio::test]
async fn one_lagging_replica_of_two_behind_one_url_serves_nothing_stale() {
    let (primary, standbys) = clusters(2).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?load_balance_hosts=random",
        standbys[0].port(),
        standbys[1].port()
    );
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();
    let metrics = ReplicaMetrics::default();
    let max_lag = Duration::from_millis(500);
    let (pool, _stop) = read_pool(&writes, &url, 8, max_lag, Duration::ZERO, &metrics);
    eventually("the replicas serve", || async { read(&pool, None).await.0 }).await;
    // The pool's connections reach both standbys.
    {
        let mut ports = std::collections::BTreeSet::new();
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut c = pool.get(None).await.unwrap();
            #[derive(QueryableByName)]
            struct Port {
                #[diesel(sql_type = diesel::sql_types::Integer)]
                port: i32,
            }
            let p = diesel::sql_query("SELECT inet_server_port() AS port")
                .one::<Port>(&mut c)
                .await
                .unwrap()
                .port;
            ports.insert(p);
            held.push(c);
        }
        assert!(ports.len() >= 2, "connections on {ports:?} only");
    }
    admin(&standbys[1].url("postgres"), "SELECT pg_wal_replay_pause()").await;

    // Rows committed every 20 ms for 4 s, each with its commit time; reads meanwhile.
    let committed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let writer = {
        let (writes, committed) = (writes.clone(), committed.clone());
        tokio::spawn(async move {
            for v in 0..200 {
                insert(&writes, v).await;
                committed.lock().unwrap().push(Instant::now());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut replica_reads = 0;
    while !writer.is_finished() {
        let start = Instant::now();
        let must_see = committed
            .lock()
            .unwrap()
            .iter()
            .filter(|at| start.duration_since(**at) > max_lag)
            .count() as i64;
        let (on_replica, n) = read(&pool, None).await;
        assert!(
            n >= must_see,
            "read {n} rows (replica: {on_replica}); {must_see} were committed over {max_lag:?} before"
        );
        replica_reads += on_replica as u64;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    assert!(replica_reads > 0, "the standby replaying served no read");
    assert!(reads(&metrics, "primary", "lagging") > 0);
    admin(
        &standbys[1].url("postgres"),
        "SELECT pg_wal_replay_resume()",
    )
    .await;
    drop((primary, standbys));
}

/// A read URL leading to a primary, and a standby that stopped receiving WAL (it has replayed
/// all it received): reads go to the primary.
#[tokio::test]
async fn a_primary_as_replica_and_a_standby_cut_off_from_wal_do_not_serve() {
    let (primary, standbys) = clusters(1).await;
    let standby = &standbys[0];
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();

    let metrics = ReplicaMetrics::default();
    let (pool, _stop) = read_pool(
        &writes,
        &primary.url("postgres"),
        2,
        Duration::from_millis(500),
        Duration::ZERO,
        &metrics,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert!(!read(&pool, None).await.0);
    }
    assert_eq!(reads(&metrics, "primary", "not_replica"), 3);
    assert_eq!(reads(&metrics, "replica", "fresh"), 0);

    let metrics = ReplicaMetrics::default();
    let max_lag = Duration::from_millis(500);
    let (pool, _stop) = read_pool(
        &writes,
        &standby.url("postgres"),
        2,
        max_lag,
        Duration::ZERO,
        &metrics,
    );
    eventually("the replica serves", || async { read(&pool, None).await.0 }).await;
    // The standby's WAL receiver pointed nowhere: it receives nothing more.
    admin(
        &standby.url("postgres"),
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'",
    )
    .await;
    admin(&standby.url("postgres"), "SELECT pg_reload_conf()").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    insert(&writes, 1).await;
    tokio::time::sleep(max_lag + Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(read(&pool, None).await, (false, 1));
    }
    assert!(reads(&metrics, "primary", "lagging") >= 3);
    drop((primary, standbys));
}

/// The pids of the server processes of `cluster` (postmaster and children).
fn server_pids(cluster: &PgCluster) -> Vec<String> {
    let pid = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_owned();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .unwrap();
    let mut pids = vec![pid];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned),
    );
    pids
}

fn signal(pids: &[String], sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(sig)
        .args(pids)
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pids:?}");
}

/// A standby that stops answering (SIGSTOP: no reset, no answer): reads keep being answered,
/// by the primary, each within a bound.
#[tokio::test]
async fn a_replica_that_stops_answering_does_not_hang_reads() {
    let (primary, standbys) = clusters(1).await;
    let standby = &standbys[0];
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();
    let metrics = ReplicaMetrics::default();
    let (pool, _stop) = read_pool(
        &writes,
        &standby.url("postgres"),
        2,
        Duration::from_millis(1_000),
        Duration::from_millis(100),
        &metrics,
    );
    eventually("the replica serves", || async { read(&pool, None).await.0 }).await;
    let pids = server_pids(standby);
    signal(&pids, "-STOP");
    let mut slowest = Duration::ZERO;
    let mut result = Ok(());
    for v in 0..20 {
        insert(&writes, v).await;
        let start = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(3), read(&pool, None)).await;
        slowest = slowest.max(start.elapsed());
        if read != Ok((false, i64::from(v) + 1)) {
            result = Err(format!("read {v}: {read:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&pids, "-CONT");
    result.unwrap();
    // Checkout and the freshness check give up after 250 ms each; the rest is slack for a
    // loaded machine (a hung read would wait for TCP, minutes).
    assert!(
        slowest < Duration::from_millis(1_500),
        "slowest read {slowest:?}"
    );
    drop((primary, standbys));
}

/// A read that fails on the replica because its connection was cut (or a conflict with
/// recovery cancelled it) is read again on the primary; one that fails for another reason
/// answers its error.
#[tokio::test]
async fn a_read_that_fails_on_the_replica_is_read_again_on_the_primary() {
    let (primary, standbys) = clusters(1).await;
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();
    insert(&writes, 1).await;
    let metrics = ReplicaMetrics::default();
    let (pool, _stop) = read_pool(
        &writes,
        &standbys[0].url("postgres"),
        2,
        Duration::from_millis(1_000),
        Duration::ZERO,
        &metrics,
    );
    eventually("the replica serves", || async { read(&pool, None).await.0 }).await;
    let answer = pool
        .read(None, async |conn, on_replica| {
            if on_replica {
                // The server ends this connection: 57P01, UNAVAILABLE.
                diesel::sql_query("SELECT pg_terminate_backend(pg_backend_pid())")
                    .execute(conn)
                    .await?;
            }
            let n = diesel::sql_query("SELECT count(*) AS n FROM t")
                .one::<Count>(conn)
                .await?
                .n;
            Ok((on_replica, n))
        })
        .await;
    assert_eq!(answer.unwrap(), (false, 1));
    assert_eq!(reads(&metrics, "primary", "replica_error"), 1);

    let answer = pool
        .read(None, async |conn, _| {
            diesel::sql_query("SELECT no_such_column FROM t")
                .execute(conn)
                .await?;
            Ok(())
        })
        .await;
    assert!(answer.is_err());
    assert_eq!(reads(&metrics, "primary", "replica_error"), 1);
    drop((primary, standbys));
}

/// The sampler asks the primary on a connection of its own: with the primary's pool all taken,
/// the replica keeps serving.
#[tokio::test]
async fn a_busy_primary_pool_does_not_stop_the_sampler() {
    let (primary, standbys) = clusters(1).await;
    let writes = build_pool(&primary.url("postgres"), 1, PlanCache::Auto).unwrap();
    let sampler = build_pool(&primary.url("postgres"), 1, PlanCache::Auto).unwrap();
    let replica = build_pool(&standbys[0].url("postgres"), 2, PlanCache::Auto).unwrap();
    let pool = ReadPool::new(
        writes.clone(),
        Some(replica),
        Duration::from_millis(500),
        Duration::ZERO,
        ReplicaMetrics::default(),
    )
    .with_sampler(sampler);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pool.clone().sample_loop(async move {
        let _ = stopped.await;
    }));
    eventually("the replica serves", || async { read(&pool, None).await.0 }).await;
    let held = writes.get().await.unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let routed = tokio::time::timeout(Duration::from_secs(1), pool.get_routed(None)).await;
        assert!(
            matches!(routed, Ok(Ok((_, true)))),
            "after {:?}: not the replica's",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((held, stop));
    drop((primary, standbys));
}

/// Reads waiting for the replica to replay their caller's write hold a replica connection each:
/// at most a quarter of the pool waits, the others go to the primary at once, and reads that
/// wait for nothing keep the replica. A forged position (`x-vbase-lsn` is the caller's header)
/// cannot take the pool.
#[tokio::test]
async fn reads_waiting_for_a_position_take_at_most_a_quarter_of_the_replica_pool() {
    let (primary, standbys) = clusters(1).await;
    let standby = &standbys[0];
    let writes = build_pool(&primary.url("postgres"), 4, PlanCache::Auto).unwrap();
    let metrics = ReplicaMetrics::default();
    let wait = Duration::from_secs(3);
    let (pool, _stop) = read_pool(
        &writes,
        &standby.url("postgres"),
        8,
        Duration::from_secs(30),
        wait,
        &metrics,
    );
    eventually("the replica serves", || async { read(&pool, None).await.0 }).await;
    // A position no replica reaches.
    let forged = service_runtime::replica::Lsn::unknown();
    let started = Instant::now();
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (pool, forged) = (pool.clone(), forged.clone());
        waiting.spawn(async move {
            let read = read(&pool, Some(&forged)).await;
            (read.0, Instant::now())
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(read(&pool, None).await.0, "the replica still serves");
    let mut prompt = 0;
    while let Some(done) = waiting.join_next().await {
        let (on_replica, at) = done.unwrap();
        assert!(!on_replica, "a position no replica reached was read there");
        if at - started < wait / 2 {
            prompt += 1;
        }
    }
    assert_eq!(
        prompt, 4,
        "two of eight connections wait, the other four reads go at once"
    );
    assert_eq!(reads(&metrics, "primary", "own_write"), 6);
    drop((primary, standbys));
}
