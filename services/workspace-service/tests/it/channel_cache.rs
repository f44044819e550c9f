//! The channel cache (each workspace's channels, `ListChannels` pages cut from memory) is
//! coherent: a change is read back at once on the replica that made it and within the bound
//! on another, a change made by any path (a hand-run statement) is heard, a replica that loses
//! its notification connection forgets what it cached, and pages cut from memory are the pages
//! the database gives, for lists it keeps and for lists too long to keep.

use crate::support::{Env, second_replica, start_with};
use service_runtime::read_after::LSN_METADATA;
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tonic::transport::Channel;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_service_client::WorkspaceServiceClient;

/// A change is seen by every replica this long after its command was answered (the access
/// cache's bound; the channel cache listens the same way).
const BOUND: Duration = Duration::from_millis(100);

type Client = WorkspaceServiceClient<Channel>;

/// Every channel name of `org` a member reads, paging by `size`.
async fn names(env: &Env, c: &mut Client, org: &str, size: i32) -> Vec<String> {
    let (mut names, mut token) = (Vec::new(), String::new());
    for _ in 0..1000 {
        let page = c
            .list_channels(env.member(
                "user_m",
                org,
                pb::ListChannelsRequest {
                    clerk_org_id: org.into(),
                    page_size: size,
                    page_token: token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.channels.len() <= size as usize);
        names.extend(page.channels.into_iter().map(|ch| ch.name));
        if page.next_page_token.is_empty() {
            return names;
        }
        token = page.next_page_token;
    }
    panic!("more than 1000 pages of {size}: the pages do not end");
}

/// The names of the live (not deleted) channels of `org` in the database, in page order.
async fn stored(env: &Env, org: &str) -> Vec<String> {
    service_harness::strings(
        env.db.url(),
        &format!(
            "SELECT c.name FROM channels c JOIN workspaces w ON w.id = c.workspace_id
              WHERE w.clerk_org_id = '{org}' AND c.deleted_at IS NULL ORDER BY c.created_at, c.id"
        ),
    )
    .await
}

/// Reads a few times, apart, so the replica's caches (which answer once their listener heard
/// a ping) hold the caller's access and the workspace's channels.
async fn prime(env: &Env, c: &mut Client, org: &str) {
    for _ in 0..5 {
        names(env, c, org, 100).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Replica A (which made the change) lists `expected` at once, replica B within the bound.
async fn seen(env: &Env, [a, b]: [&Client; 2], what: &str, expected: &[String], answered: Instant) {
    let (mut a, mut b) = (a.clone(), b.clone());
    assert_eq!(
        names(env, &mut a, "org_c", 1).await,
        expected,
        "{what}: replica A"
    );
    sleep_until(answered + BOUND).await;
    assert_eq!(
        names(env, &mut b, "org_c", 1).await,
        expected,
        "{what}: replica B"
    );
}

/// Writes a channel into `org` with the triggers off (nobody hears of it) until a read
/// through `c` does not show it, which only the replica's cache can answer; its name. On a
/// loaded machine the cache may miss its bound for a moment and read through (then it holds
/// the channel): it tries again with another.
async fn hide_a_channel(env: &Env, c: &mut Client, org: &str) -> String {
    for attempt in 0..5 {
        prime(env, c, org).await;
        let name = format!("hidden{attempt}");
        service_harness::execute(
            env.db.url(),
            &format!(
                "SET session_replication_role = replica;
                 INSERT INTO channels (id, workspace_id, name, created_by)
                 SELECT gen_random_uuid(), id, '{name}', 'test' FROM workspaces WHERE clerk_org_id = '{org}'"
            ),
        )
        .await;
        if !names(env, c, org, 100).await.contains(&name) {
            return name;
        }
    }
    panic!("never served from the cache");
}

fn channel_request(org: &str, name: &str) -> pb::CreateChannelRequest {
    pb::CreateChannelRequest {
        clerk_org_id: org.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn each_channel_change_is_read_back_at_once_here_and_within_the_bound_on_another_replica() {
    let env = start_with(false).await;
    env.workspace("org_c").await;
    let (_b, mut b) = second_replica(&env).await;
    let mut a = env.client().await;
    prime(&env, &mut a, "org_c").await;
    prime(&env, &mut b, "org_c").await;

    // Created, renamed and deleted through replica A.
    let created = a
        .create_channel(env.member("user_m", "org_c", channel_request("org_c", "plans")))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    let mut answered = Instant::now();
    let mut expected = vec!["general".to_owned(), "plans".to_owned()];
    let replicas = [&a, &b];
    seen(&env, replicas, "created", &expected, answered).await;

    a.rename_channel(env.admin(
        "user_a",
        "org_c",
        pb::RenameChannelRequest {
            channel_id: created.id.clone(),
            name: "roadmap".into(),
        },
    ))
    .await
    .unwrap();
    answered = Instant::now();
    expected[1] = "roadmap".into();
    seen(&env, [&a, &b], "renamed", &expected, answered).await;

    a.delete_channel(env.admin(
        "user_a",
        "org_c",
        pb::DeleteChannelRequest {
            channel_id: created.id,
        },
    ))
    .await
    .unwrap();
    answered = Instant::now();
    expected.pop();
    seen(&env, [&a, &b], "deleted", &expected, answered).await;

    // A statement run by hand: no replica wrote it, both hear it from PostgreSQL.
    prime(&env, &mut a, "org_c").await;
    service_harness::execute(
        env.db.url(),
        "UPDATE channels SET name = 'by-hand' WHERE name = 'general'",
    )
    .await;
    let done = Instant::now();
    sleep_until(done + BOUND).await;
    for (c, which) in [(&mut a, "A"), (&mut b, "B")] {
        assert_eq!(
            names(&env, c, "org_c", 10).await,
            ["by-hand"],
            "a hand-run rename: replica {which}"
        );
    }
}

/// The replica that wrote forgets the list before it answers, without waiting for the
/// notification: with the channels' trigger function made silent (nothing announced) and the
/// cache then shown to answer, it reads its own create, rename and delete back at once.
#[tokio::test]
async fn the_replica_that_wrote_reads_it_back_without_a_notification() {
    let env = start_with(false).await;
    env.workspace("org_w").await;
    let mut a = env.client().await;
    // A trigger changed while listening empties the caches and listens anew, which then takes
    // the silent function as it is.
    let losses = r#"cache_connection_losses_total{cache="channels"}"#;
    env.metric_reaches(r#"cache_answering{cache="channels"}"#, |v| v == 1.0)
        .await;
    service_harness::execute(
        env.db.url(),
        "CREATE OR REPLACE FUNCTION notify_channels() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN RETURN NULL; END $$",
    )
    .await;
    env.metric_reaches(losses, |v| v == 1.0).await;
    env.metric_reaches(r#"cache_answering{cache="channels"}"#, |v| v == 1.0)
        .await;
    hide_a_channel(&env, &mut a, "org_w").await;
    let created = a
        .create_channel(env.member("user_m", "org_w", channel_request("org_w", "quiet")))
        .await
        .unwrap()
        .into_inner()
        .channel
        .unwrap();
    let listed = names(&env, &mut a, "org_w", 10).await;
    assert!(listed.contains(&"quiet".to_owned()), "created: {listed:?}");
    assert_eq!(listed, stored(&env, "org_w").await, "created");
    a.rename_channel(env.admin(
        "user_a",
        "org_w",
        pb::RenameChannelRequest {
            channel_id: created.id.clone(),
            name: "hushed".into(),
        },
    ))
    .await
    .unwrap();
    let listed = names(&env, &mut a, "org_w", 10).await;
    assert!(listed.contains(&"hushed".to_owned()), "renamed: {listed:?}");
    assert_eq!(listed, stored(&env, "org_w").await, "renamed");
    a.delete_channel(env.admin(
        "user_a",
        "org_w",
        pb::DeleteChannelRequest {
            channel_id: created.id,
        },
    ))
    .await
    .unwrap();
    let listed = names(&env, &mut a, "org_w", 10).await;
    assert!(
        !listed.contains(&"hushed".to_owned()),
        "deleted: {listed:?}"
    );
    assert_eq!(listed, stored(&env, "org_w").await, "deleted");
    // Still the session that took the silent function: no notification reached the cache.
    assert_eq!(env.metric(losses).await, Some(1.0));
}

/// A read that carries a position (`x-vbase-lsn`, as a write through another process
/// answered it) reads the database, not what this replica cached before hearing of the write.
#[tokio::test]
async fn a_read_that_carries_a_position_reads_past_the_cache() {
    let env = start_with(false).await;
    env.workspace("org_l").await;
    let mut c = env.client().await;
    let hidden = hide_a_channel(&env, &mut c, "org_l").await;
    let lsn = service_harness::strings(env.db.url(), "SELECT pg_current_wal_lsn()::text").await;
    let mut req = env.member(
        "user_m",
        "org_l",
        pb::ListChannelsRequest {
            clerk_org_id: "org_l".into(),
            ..Default::default()
        },
    );
    req.metadata_mut()
        .insert(LSN_METADATA, lsn[0].parse().unwrap());
    let read: Vec<String> = c
        .list_channels(req)
        .await
        .unwrap()
        .into_inner()
        .channels
        .into_iter()
        .map(|ch| ch.name)
        .collect();
    assert!(read.contains(&hidden), "{read:?}");
    assert_eq!(read, stored(&env, "org_l").await);
}

/// Pages are cut from the cached list (a channel written with the triggers off is not in
/// them), they are the database's pages (also among channels created at the same instant),
/// and a replica that loses its notification connection forgets the list: once it listens
/// again it reads the database.
#[tokio::test]
async fn pages_come_from_the_cache_until_its_notifications_are_lost() {
    let env = start_with(false).await;
    env.workspace("org_p").await;
    let mut c = env.client().await;
    for i in 0..7 {
        let name = format!("c{i}");
        c.create_channel(env.member("user_m", "org_p", channel_request("org_p", &name)))
            .await
            .unwrap();
    }
    // Four at one instant: their order is their ids'.
    service_harness::execute(
        env.db.url(),
        "INSERT INTO channels (id, workspace_id, name, created_by)
         SELECT gen_random_uuid(), w.id, 'same' || i, 'test'
           FROM workspaces w, generate_series(1, 4) i WHERE w.clerk_org_id = 'org_p'",
    )
    .await;
    let name = hide_a_channel(&env, &mut c, "org_p").await;
    let cached = names(&env, &mut c, "org_p", 100).await;
    let mut without = stored(&env, "org_p").await;
    without.retain(|n| *n != name);
    assert_eq!(cached, without, "the cached list is the database's");
    let mut compared = 0;
    for size in [1, 2, 3, 8] {
        let paged = names(&env, &mut c, "org_p", size).await;
        if paged.contains(&name) {
            // The cache missed its bound and read through: nothing left to compare.
            continue;
        }
        assert_eq!(paged, cached, "pages of {size} cut from the cached list");
        compared += 1;
    }
    assert!(compared > 0, "no page was cut from the cache");
    // What the caches did shows on /metrics.
    for cache in ["access", "channels"] {
        let hits = format!("cache_lookups_total{{cache=\"{cache}\",result=\"hit\"}}");
        assert!(env.metric(&hits).await.unwrap() >= 1.0, "{hits}");
        for series in ["cache_bytes", "cache_entries"] {
            let series = format!("{series}{{cache=\"{cache}\"}}");
            assert!(env.metric(&series).await.unwrap() >= 1.0, "{series}");
        }
        let losses = format!("cache_connection_losses_total{{cache=\"{cache}\"}}");
        assert_eq!(env.metric(&losses).await, Some(0.0), "{losses}");
    }

    // The notification connections (the access cache's and the channel cache's) cut: once
    // listening again, the list is read anew.
    service_harness::cut_cache_notifications(env.db.url(), 1).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            names(&env, &mut c, "org_p", 100).await.contains(&name),
            "after the cut, the list is read again"
        );
    }
    for cache in ["access", "channels"] {
        let losses = format!("cache_connection_losses_total{{cache=\"{cache}\"}}");
        assert_eq!(env.metric(&losses).await, Some(1.0), "{losses}");
        // Answering again (its pings come back every 20 ms; a loaded machine may delay one).
        let answering = format!("cache_answering{{cache=\"{cache}\"}}");
        env.metric_reaches(&answering, |v| v == 1.0).await;
    }
}

/// A workspace with more channels than the cache keeps whole is paged from the database, in
/// the same order.
#[tokio::test]
async fn a_list_too_long_to_keep_is_paged_from_the_database() {
    let env = start_with(false).await;
    env.workspace("org_l").await;
    let mut c = env.client().await;
    service_harness::execute(
        env.db.url(),
        "INSERT INTO channels (id, workspace_id, name, created_by, created_at)
         SELECT gen_random_uuid(), w.id, 'c' || i, 'test', now() + i * interval '1 ms'
           FROM workspaces w, generate_series(1, 300) i WHERE w.clerk_org_id = 'org_l'",
    )
    .await;
    prime(&env, &mut c, "org_l").await;
    let expected = stored(&env, "org_l").await;
    assert_eq!(expected.len(), 301);
    for size in [7, 100] {
        assert_eq!(
            names(&env, &mut c, "org_l", size).await,
            expected,
            "pages of {size}"
        );
    }
}

/// The cache listeners' PostgreSQL sessions, stopped (SIGSTOP) until dropped: their
/// notifications and pings wait, as behind a stalled connection.
struct Stalled(Vec<i64>);

impl Stalled {
    /// Stops the `listeners` (two at most) cache listeners of `env`'s database.
    async fn listeners(env: &Env, listeners: i64) -> Self {
        let of = |f: &str| {
            format!(
                "SELECT {f}(pid) FROM pg_stat_activity
                  WHERE application_name = 'coherent-cache' AND datname = current_database()"
            )
        };
        assert_eq!(
            service_harness::scalar(env.db.url(), &of("count")).await,
            listeners
        );
        let mut pids = vec![service_harness::scalar(env.db.url(), &of("min")).await];
        pids.push(service_harness::scalar(env.db.url(), &of("max")).await);
        pids.dedup();
        for _ in 0..5 {
            let stalled = Self(pids.clone());
            stalled.signal("-STOP");
            // A session stopped while it held the notification queue's lock would hold up
            // every NOTIFY of the cluster: then let it go and stop it again.
            let notify =
                service_harness::execute(env.db.url(), "SELECT pg_notify('stall_probe', '')");
            if tokio::time::timeout(Duration::from_secs(1), notify)
                .await
                .is_ok()
            {
                return stalled;
            }
        }
        panic!("the listeners could not be stopped outside the notification queue's lock");
    }

    fn signal(&self, signal: &str) {
        for pid in &self.0 {
            let sent = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .unwrap();
            assert!(sent.success(), "kill {signal} {pid}");
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// A watcher is told of a workspace's change only once its replica's caches heard it (or no
/// longer answer): read back there at once, the change is in the list, even when the caches'
/// notifications stall.
#[tokio::test]
async fn a_watcher_told_of_a_change_reads_it_back_on_its_replica() {
    let env = start_with(false).await;
    env.workspace("org_f").await;
    let (_b, mut b) = second_replica(&env).await;
    let mut a = env.client().await;
    prime(&env, &mut b, "org_f").await;
    let mut w = b
        .watch_workspace(env.member(
            "user_m",
            "org_f",
            pb::WatchWorkspaceRequest {
                clerk_org_id: "org_f".into(),
                resume_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let next = async |w: &mut tonic::Streaming<pb::WorkspaceEvent>| {
        tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap()
    };
    next(&mut w).await; // caught up
    // B's channel cache holds the list and answers until its last ping is 80 ms old.
    let stalled = Stalled::listeners(&env, 2).await;
    a.create_channel(env.admin(
        "user_a",
        "org_f",
        pb::CreateChannelRequest {
            clerk_org_id: "org_f".into(),
            name: "fresh".into(),
        },
    ))
    .await
    .unwrap();
    let told = next(&mut w).await;
    assert!(
        matches!(
            told.event,
            Some(pb::workspace_event::Event::ChannelCreated(ref c)) if c.name == "fresh"
        ),
        "{told:?}"
    );
    let listed = names(&env, &mut b, "org_f", 100).await;
    drop(stalled);
    assert!(
        listed.contains(&"fresh".to_owned()),
        "told, then not listed: {listed:?}"
    );
}
