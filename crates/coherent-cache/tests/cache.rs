//! The cache's own guarantees: its memory bound, a miss that raced an invalidation, and
//! answering only while its notifications are heard (against a real PostgreSQL).

use coherent_cache::{Coherent, listen};
use ephemeral_postgres::TestDatabases;
use std::time::Duration;
use tokio_postgres::NoTls;

/// How many notification connections this test's database has.
const LISTENERS: &str = "SELECT count(*) FROM pg_stat_activity
                          WHERE application_name = 'coherent-cache' AND datname = current_database()";
/// Cuts them.
const CUT: &str = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                    WHERE application_name = 'coherent-cache' AND datname = current_database()";

fn cache(bytes: u64) -> Coherent<String, String> {
    Coherent::new(bytes, |k, v| (k.len() + v.len() + 48) as u64)
}

#[test]
fn memory_stays_within_the_bound_under_many_callers() {
    let c = cache(64 * 1024);
    for i in 0..20_000 {
        let t = c.ticket();
        c.insert(t, format!("user_{i:08}"), "x".repeat(100));
    }
    assert!(
        c.bytes() <= c.capacity(),
        "{} > {}",
        c.bytes(),
        c.capacity()
    );
    assert!(c.len() < 20_000 && c.len() > 100, "{}", c.len());
}

#[test]
fn a_read_that_raced_an_invalidation_is_not_kept() {
    let c = cache(1 << 20);
    let before = c.ticket();
    c.invalidate(&"someone else".to_owned());
    c.insert(before, "k".into(), "read before the change".into());
    assert!(c.is_empty());
    let after = c.ticket();
    c.insert(after, "k".into(), "read after".into());
    assert_eq!(c.len(), 1);
}

/// Forgetting by a predicate or forgetting everything (what a dropped notification and a lost
/// connection do) also keeps a read that started before it from being stored: that read may
/// hold what the forgotten change replaced.
#[test]
fn a_read_that_raced_a_bulk_forget_is_not_kept() {
    let c = cache(1 << 20);
    let forgets: [(&str, &dyn Fn()); 2] = [
        ("invalidate_where", &|| c.invalidate_where(|_| true)),
        ("clear", &|| c.clear()),
    ];
    for (name, forget) in forgets {
        let before = c.ticket();
        forget();
        c.insert(before, "k".into(), "read before the change".into());
        assert!(c.is_empty(), "kept across {name}");
    }
}

/// PostgreSQL folds an unquoted LISTEN name to lowercase: a name it would fold could never be
/// heard, so it is refused where the cache is subscribed.
#[test]
#[should_panic(expected = "must be a lowercase identifier")]
fn a_channel_postgres_would_fold_is_refused() {
    coherent_cache::subscribe(&cache(1 << 20), "Cache_Users", &[], |_, _| {});
}

#[test]
fn capacity_zero_holds_nothing() {
    let c = cache(0);
    c.insert(c.ticket(), "k".into(), "v".into());
    assert!(c.is_empty() && !c.fresh());
    // A cache turned off counts nothing: its lookups are not the cache failing to answer.
    assert_eq!(c.get(&"k".to_owned()), None);
    assert_eq!(c.stats(), coherent_cache::Stats::default());
}

#[tokio::test]
async fn answers_only_while_it_hears_its_notifications() {
    let db = TestDatabases::shared()
        .await
        .create("coherent_cache", |_| async { Ok(()) })
        .await
        .unwrap();
    let c = cache(1 << 20);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listen(
        c.clone(),
        db.url().to_owned(),
        NoTls,
        "cache_test",
        &[],
        |c: &Coherent<String, String>, key: &str| c.invalidate(&key.to_owned()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    assert!(c.caught_up(Duration::from_secs(10)).await);
    assert!(c.fresh());
    c.insert(c.ticket(), "k".into(), "v".into());
    assert_eq!(c.get(&"k".to_owned()).as_deref(), Some("v"));
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.read_through), (1, 0, 0), "{s:?}");
    assert!(s.answering && s.entries == 1 && s.bytes > 0, "{s:?}");

    // A change's notification takes the key out.
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("SELECT pg_notify('cache_test', 'k')")
        .await
        .unwrap();
    assert!(c.caught_up(Duration::from_secs(5)).await);
    assert_eq!(c.get(&"k".to_owned()), None);
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.invalidations), (1, 1, 1), "{s:?}");

    // The connection hangs (its server process stopped): nothing is heard, so within the
    // bound nothing is served, without any error to tell.
    c.insert(c.ticket(), "k".into(), "v".into());
    let backend = client
        .query_one(
            "SELECT pid FROM pg_stat_activity
              WHERE application_name = 'coherent-cache' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i32>(0)
        .to_string();
    let signal = |s: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([s, &backend])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    tokio::time::sleep(coherent_cache::FRESH_FOR + Duration::from_millis(20)).await;
    let hung = (c.fresh(), c.get(&"k".to_owned()));
    signal("-CONT");
    assert_eq!(hung, (false, None));
    // Counted as a lookup the cache could not answer, not as a miss.
    let s = c.stats();
    assert_eq!((s.misses, s.read_through), (1, 1), "{s:?}");
    assert!(c.caught_up(Duration::from_secs(5)).await);
    assert_eq!(c.stats().connection_losses, 0);

    // The connection cut: what was cached is forgotten (changes made until the new connection
    // listens are not heard).
    let listeners = client.query_one(LISTENERS, &[]).await.unwrap();
    assert_eq!(listeners.get::<_, i64>(0), 1);
    c.insert(c.ticket(), "k".into(), "v".into());
    // A read that started before the cut, stored after: it may hold what went unheard.
    let before_cut = c.ticket();
    client.batch_execute(CUT).await.unwrap();
    // Back (a new connection, whose pings come back), and empty.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = client.query_one(LISTENERS, &[]).await.unwrap();
            if n.get::<_, i64>(0) == 1 && c.caught_up(Duration::from_secs(1)).await {
                return;
            }
        }
    })
    .await
    .unwrap();
    assert!(c.fresh());
    assert_eq!(c.get(&"k".to_owned()), None);
    assert!(c.is_empty());
    c.insert(before_cut, "k".into(), "read before the cut".into());
    assert!(c.is_empty(), "a read from before the cut was kept");
    let s = c.stats();
    assert_eq!((s.connection_losses, s.entries), (1, 0), "{s:?}");
    let _ = stop_tx.send(());
    task.await.unwrap();
}

/// A database it cannot reach: every lookup is read through, and failed attempts to connect
/// are not counted as lost connections (the metric an operator reads for flapping sessions).
#[tokio::test]
async fn unreachable_it_reads_through_and_counts_no_lost_connection() {
    let c = cache(1 << 20);
    let port = ephemeral_postgres::unused_local_port().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listen(
        c.clone(),
        format!("postgres://nobody@127.0.0.1:{port}/none"),
        NoTls,
        "cache_test",
        &[],
        |c: &Coherent<String, String>, key: &str| c.invalidate(&key.to_owned()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // Several attempts (100 ms, then 200 ms apart).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.get(&"k".to_owned()), None);
    let s = c.stats();
    assert_eq!(
        (s.answering, s.read_through, s.connection_losses),
        (false, 1, 0),
        "{s:?}"
    );
    let _ = stop_tx.send(());
    task.await.unwrap();
}

/// A burst of notifications faster than the cache applies them (a bulk statement, a backfill)
/// is not queued without bound: what does not fit in the queue is dropped, each dropped change
/// empties the cache (so nothing it named can be served), and every notification is either
/// applied or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queue_empties_the_cache_instead_of_growing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const BURST: usize = 3 * coherent_cache::QUEUE;
    let db = TestDatabases::shared()
        .await
        .create("coherent_cache", |_| async { Ok(()) })
        .await
        .unwrap();
    let c = cache(1 << 20);
    // A bystander on the same connection: the burst is not for it.
    let bystander = cache(1 << 20);
    let applied = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let applied = applied.clone();
        move |c: &Coherent<String, String>, key: &str| {
            // A slow first application: the burst arrives meanwhile.
            if applied.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1_500));
            }
            c.invalidate(&key.to_owned());
        }
    };
    let task = tokio::spawn(coherent_cache::listen_all(
        [
            coherent_cache::subscribe(&c, "cache_burst", &[], slow),
            coherent_cache::subscribe(&bystander, "cache_bystander", &[], |c, key: &str| {
                c.invalidate(&key.to_owned())
            }),
        ]
        .into_iter()
        .flatten()
        .collect(),
        db.url().to_owned(),
        NoTls,
        async move {
            let _ = stop_rx.await;
        },
    ));
    assert!(c.caught_up(Duration::from_secs(10)).await);
    c.insert(c.ticket(), "k".into(), "v".into());
    bystander.insert(bystander.ticket(), "k".into(), "v".into());

    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SELECT pg_notify('cache_burst', 'b' || g) FROM generate_series(1, {BURST}) g"
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while applied.load(Ordering::SeqCst) + (c.dropped() as usize) < BURST {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every notification applied or dropped");
    assert_eq!(applied.load(Ordering::SeqCst) + c.dropped() as usize, BURST);
    assert!(
        c.dropped() > 0,
        "nothing dropped: the queue grew with the burst"
    );
    assert!(applied.load(Ordering::SeqCst) < BURST);
    // Emptied, not only unable to answer: a dropped change could have named any key.
    assert!(c.is_empty(), "a dropped change could have named it");

    // It works again once caught up; the bystander lost nothing to the burst.
    assert!(c.caught_up(Duration::from_secs(10)).await);
    c.insert(c.ticket(), "k".into(), "v2".into());
    assert_eq!(c.get(&"k".to_owned()).as_deref(), Some("v2"));
    assert_eq!(bystander.dropped(), 0);
    assert_eq!(bystander.get(&"k".to_owned()).as_deref(), Some("v"));
    let _ = stop_tx.send(());
    task.await.unwrap();
}

/// Several caches on one connection: each applies only its own channel's notifications, one
/// ping keeps them all answering, and a cut empties them all until the connection is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_sharing_a_connection_each_hear_their_own_channel() {
    use coherent_cache::{listen_all, subscribe};
    let db = TestDatabases::shared()
        .await
        .create("coherent_cache", |_| async { Ok(()) })
        .await
        .unwrap();
    let (a, b) = (cache(1 << 20), cache(1 << 20));
    let off = cache(0);
    let forget = |c: &Coherent<String, String>, key: &str| c.invalidate(&key.to_owned());
    let subscriptions: Vec<_> = [
        subscribe(&a, "cache_a", &[], forget),
        subscribe(&b, "cache_b", &[], forget),
        subscribe(&off, "cache_off", &[], forget),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(
        subscriptions.len(),
        2,
        "a cache turned off is not subscribed"
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listen_all(
        subscriptions,
        db.url().to_owned(),
        NoTls,
        async move {
            let _ = stop_rx.await;
        },
    ));
    assert!(a.caught_up(Duration::from_secs(10)).await);
    assert!(b.caught_up(Duration::from_secs(1)).await);
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let count = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    assert_eq!(count(client.query_one(LISTENERS, &[]).await.unwrap()), 1);

    for c in [&a, &b] {
        c.insert(c.ticket(), "k".into(), "v".into());
        c.insert(c.ticket(), "j".into(), "v".into());
    }
    client
        .batch_execute("SELECT pg_notify('cache_a', 'k'); SELECT pg_notify('cache_b', 'j')")
        .await
        .unwrap();
    assert!(a.caught_up(Duration::from_secs(5)).await);
    assert_eq!(
        (a.get(&"k".to_owned()), a.get(&"j".to_owned()).as_deref()),
        (None, Some("v")),
        "a applies cache_a only"
    );
    assert_eq!(
        (b.get(&"k".to_owned()).as_deref(), b.get(&"j".to_owned())),
        (Some("v"), None),
        "b applies cache_b only"
    );
    assert!(a.fresh() && b.fresh());

    // The connection cut: both forget everything, and both answer again once it is back.
    client.batch_execute(CUT).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while a.stats().connection_losses == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the cut is noticed");
    assert!(a.is_empty() && b.is_empty());
    assert_eq!(b.stats().connection_losses, 1);
    assert!(a.caught_up(Duration::from_secs(10)).await);
    assert!(b.caught_up(Duration::from_secs(1)).await);
    assert_eq!(count(client.query_one(LISTENERS, &[]).await.unwrap()), 1);
    let _ = stop_tx.send(());
    task.await.unwrap();
}

/// A cache answers only while the triggers that send its notifications exist and are enabled:
/// without them a change would never be heard, and the cache would serve it stale for good.
#[tokio::test]
async fn answers_only_while_its_triggers_fire() {
    let db = TestDatabases::shared()
        .await
        .create("coherent_cache_triggers", |_| async { Ok(()) })
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE items (id text PRIMARY KEY);
             CREATE FUNCTION notify_items() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('cache_items', COALESCE(NEW.id, OLD.id)); RETURN NULL; END $$;",
        )
        .await
        .unwrap();
    const TRIGGERS: &[coherent_cache::Trigger] = &[("items", "items_rows")];
    let c = cache(1 << 20);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(listen(
        c.clone(),
        db.url().to_owned(),
        NoTls,
        "cache_items",
        TRIGGERS,
        |c: &Coherent<String, String>, key: &str| c.invalidate(&key.to_owned()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // Not created yet: the cache never starts answering.
    assert!(!c.caught_up(Duration::from_secs(2)).await);
    assert!(!c.fresh() && !c.stats().answering);

    client
        .batch_execute(
            "CREATE TRIGGER items_rows AFTER INSERT OR UPDATE OR DELETE ON items
                 FOR EACH ROW EXECUTE FUNCTION notify_items()",
        )
        .await
        .unwrap();
    assert!(c.caught_up(Duration::from_secs(10)).await);
    c.insert(c.ticket(), "k".into(), "v".into());
    assert_eq!(c.get(&"k".to_owned()).as_deref(), Some("v"));

    // Each change to a trigger while listening empties the cache within the check's period:
    // disabled (it stops answering until enabled again), disabled and enabled again in one
    // transaction that wrote unannounced, and its function replaced.
    let emptied = async |change: &str| {
        // Held, whether or not a late ping keeps it from answering this instant.
        c.insert(c.ticket(), "k".into(), "v".into());
        assert_eq!(c.len(), 1, "before: {change}");
        let losses = c.stats().connection_losses;
        client.batch_execute(change).await.unwrap();
        let deadline = tokio::time::Instant::now()
            + coherent_cache::TRIGGERS_CHECKED_EVERY
            + Duration::from_secs(3);
        while c.stats().connection_losses == losses {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still listening after: {change}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(c.is_empty(), "emptied after: {change}");
    };
    emptied("ALTER TABLE items DISABLE TRIGGER items_rows").await;
    assert!(!c.caught_up(Duration::from_secs(2)).await);
    client
        .batch_execute("ALTER TABLE items ENABLE TRIGGER items_rows")
        .await
        .unwrap();
    assert!(c.caught_up(Duration::from_secs(10)).await);
    emptied(
        "BEGIN; ALTER TABLE items DISABLE TRIGGER items_rows; INSERT INTO items VALUES ('k');
         ALTER TABLE items ENABLE TRIGGER items_rows; COMMIT",
    )
    .await;
    assert!(c.caught_up(Duration::from_secs(10)).await);
    emptied(
        "CREATE OR REPLACE FUNCTION notify_items() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RETURN NULL; END $$",
    )
    .await;
    assert!(c.caught_up(Duration::from_secs(10)).await);
    let _ = stop_tx.send(());
    task.await.unwrap();
}
