//! Group commit and coalesced lookups. A batch of webhook upserts gives the outcomes and the end state of applying
//! the same commands one at a time (newest first for each user), against a real PostgreSQL.

use crate::support;

use chrono::{DateTime, TimeZone, Utc};
use identity_service::users::{self, DeleteUser, Outcome, UpsertUser};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use service_runtime::db::build_pool;
use std::sync::atomic::{AtomicU32, Ordering};

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

/// A Clerk event: its id always carries the same content.
#[derive(Debug, Clone)]
struct Ev {
    id: usize,
    user: usize,
    secs: i64,
}

fn command(ns: &str, e: &Ev) -> UpsertUser {
    UpsertUser {
        event_id: format!("{ns}-ev{}", e.id),
        occurred_at: at(e.secs),
        clerk_id: format!("user_{ns}_{}", e.user),
        name: format!("name{}", e.id),
        email: format!("e{}@example.com", e.id),
        image_url: String::new(),
        created_at: Some(at(0)),
        event_time: None,
        tokens_revoked_at: None,
    }
}

type Row = (String, String, Option<DateTime<Utc>>, bool);

/// Users of namespace `ns`, without the prefix: (suffix, name, source time, deleted).
async fn state(db: &tokio_postgres::Client, ns: &str) -> Vec<Row> {
    let prefix = format!("user_{ns}_");
    db.query(
        "SELECT clerk_id, name, source_updated_at, deleted_at IS NOT NULL FROM users
         WHERE clerk_id LIKE $1 || '%' ORDER BY clerk_id",
        &[&prefix],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let id: String = r.get(0);
        let t: Option<std::time::SystemTime> = r.get(2);
        (
            id[prefix.len()..].to_owned(),
            r.get(1),
            t.map(DateTime::<Utc>::from),
            r.get(3),
        )
    })
    .collect()
}

#[test]
fn a_batch_equals_the_commands_one_at_a_time_newest_first() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(support::database());
    let pool = build_pool(db.url(), 4, identity_service::PLANS).unwrap();
    let direct = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    });
    let case = AtomicU32::new(0);
    // Events over 3 users with clashing times; some applied before the batch; a user maybe
    // deleted before; the batch picks deliveries from the events, repeats included.
    let strategy = (
        prop::collection::vec((0usize..3, 0i64..6), 1..10),
        prop::collection::vec(any::<bool>(), 10),
        prop::option::of(0usize..3),
        prop::collection::vec(0usize..10, 1..16),
    );
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    runner
        .run(&strategy, |(evs, before, deleted, picks)| {
            let n = case.fetch_add(1, Ordering::SeqCst);
            let events: Vec<Ev> = evs
                .iter()
                .enumerate()
                .map(|(id, &(user, secs))| Ev { id, user, secs })
                .collect();
            let batch: Vec<Ev> = picks
                .iter()
                .map(|p| events[p % events.len()].clone())
                .collect();
            let (one, many) = (format!("s{n}"), format!("b{n}"));
            let (expected, got) = rt.block_on(async {
                // The same history in both namespaces.
                for ns in [&one, &many] {
                    for e in events.iter().filter(|e| before[e.id]) {
                        users::upsert_user(&pool, command(ns, e)).await.unwrap();
                    }
                    if let Some(u) = deleted {
                        users::delete_user(
                            &pool,
                            DeleteUser {
                                event_id: format!("{ns}-del"),
                                occurred_at: Some(at(3)),
                                clerk_id: format!("user_{ns}_{u}"),
                            },
                        )
                        .await
                        .unwrap();
                    }
                }
                // One at a time, newest first: by time, then the greater event id (neither has
                // an event time); repeats of one event in delivery order.
                let mut order: Vec<usize> = (0..batch.len()).collect();
                order.sort_by_key(|&i| {
                    let id = command(&one, &batch[i]).event_id;
                    (std::cmp::Reverse(batch[i].secs), std::cmp::Reverse(id), i)
                });
                let mut expected = vec![Outcome::Duplicate; batch.len()];
                for i in order {
                    expected[i] = users::upsert_user(&pool, command(&one, &batch[i]))
                        .await
                        .unwrap();
                }
                let cmds: Vec<UpsertUser> = batch.iter().map(|e| command(&many, e)).collect();
                let got = users::upsert_users(&pool, &cmds).await.unwrap();
                (
                    (expected, state(&direct, &one).await),
                    (got, state(&direct, &many).await),
                )
            });
            prop_assert_eq!(&got.0, &expected.0, "outcomes of {:?}", batch);
            prop_assert_eq!(&got.1, &expected.1, "end state after {:?}", batch);
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn concurrent_upserts_share_statements_and_each_gets_its_own_outcome() {
    let env = support::start_with(|c| c.group_commit_slots = 1).await;
    // 8 users x 8 events, each event delivered twice, all at once.
    let calls = (0..128).map(|i| {
        let env = &env;
        async move {
            let (user, version) = ((i / 2) % 8, (i / 2) / 8);
            let mut c = env.client().await;
            let r = c
                .upsert_user(env.service(vbase_proto::identity::v1::UpsertUserCommand {
                    event_id: format!("evt_{user}_{version}"),
                    occurred_at: support::ts(1_700_000_000 + version as i64),
                    clerk_id: format!("user_gc{user}"),
                    name: format!("v{version}"),
                    email: "gc@example.com".into(),
                    image_url: String::new(),
                    created_at: support::ts(1_700_000_000),
                    event_time: None,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            (format!("evt_{user}_{version}"), r.outcome)
        }
    });
    let results = futures::future::join_all(calls).await;
    use vbase_proto::identity::v1::CommandOutcome as O;
    for event in 0..64 {
        let id = format!("evt_{}_{}", event % 8, event / 8);
        let outcomes: Vec<i32> = results
            .iter()
            .filter(|(e, _)| *e == id)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(outcomes.len(), 2);
        assert_eq!(
            outcomes
                .iter()
                .filter(|&&o| o == O::Duplicate as i32)
                .count(),
            1,
            "{id}: one delivery is the duplicate of the other, got {outcomes:?}"
        );
    }
    let mut c = env.client().await;
    for user in 0..8 {
        let u = c
            .get_user(env.service(vbase_proto::identity::v1::GetUserRequest {
                clerk_id: format!("user_gc{user}"),
            }))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert_eq!(u.name, "v7", "user_gc{user} holds its newest version");
    }
}

fn upsert(
    event: &str,
    user: &str,
    name: &str,
    secs: i64,
) -> vbase_proto::identity::v1::UpsertUserCommand {
    vbase_proto::identity::v1::UpsertUserCommand {
        event_id: event.into(),
        occurred_at: support::ts(1_700_000_000 + secs),
        clerk_id: user.into(),
        name: name.into(),
        email: "b@example.com".into(),
        image_url: String::new(),
        created_at: support::ts(1_700_000_000),
        event_time: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn upsert_users_answers_each_command_as_if_sent_alone() {
    use vbase_proto::identity::v1::{CommandOutcome as O, UpsertUsersCommand};
    let env = support::start().await;
    let mut c = env.client().await;
    let mut bad_id = upsert("evt_b3", "not-a-clerk-id", "X", 1);
    bad_id.clerk_id = "robert'); DROP TABLE users;--".into();
    let results = c
        .upsert_users(env.service(UpsertUsersCommand {
            commands: vec![
                upsert("evt_b1", "user_b1", "First", 1),
                upsert("evt_b1", "user_b1", "First", 1),
                bad_id,
                upsert("evt_b2", "user_b1", "Older", 0),
                upsert("evt_b4", "user_b2", "Other", 5),
            ],
        }))
        .await
        .unwrap()
        .into_inner()
        .results;
    let got: Vec<(i32, i32)> = results.iter().map(|r| (r.code, r.outcome)).collect();
    assert_eq!(
        got,
        vec![
            (0, O::Applied as i32),
            (0, O::Duplicate as i32),
            (tonic::Code::InvalidArgument as i32, O::Unspecified as i32),
            (0, O::Stale as i32),
            (0, O::Applied as i32),
        ]
    );
    assert!(
        results[2].message.contains("clerk_id"),
        "{}",
        results[2].message
    );
    let name = |id: &'static str| {
        let env = &env;
        async move {
            env.client()
                .await
                .get_user(env.service(vbase_proto::identity::v1::GetUserRequest {
                    clerk_id: id.into(),
                }))
                .await
                .map(|r| r.into_inner().user.unwrap().name)
        }
    };
    assert_eq!(name("user_b1").await.unwrap(), "First");
    assert_eq!(name("user_b2").await.unwrap(), "Other");
}

#[tokio::test]
async fn upsert_users_refuses_oversized_calls_and_user_tokens_and_writes_nothing() {
    use vbase_proto::identity::v1::UpsertUsersCommand;
    let env = support::start().await;
    let mut c = env.client().await;
    let many: Vec<_> = (0..101)
        .map(|i| upsert(&format!("evt_m{i}"), &format!("user_m{i}"), "M", 1))
        .collect();
    let err = c
        .upsert_users(env.service(UpsertUsersCommand { commands: many }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 100"), "{}", err.message());
    let err = c
        .upsert_users(env.user(
            "user_m0",
            UpsertUsersCommand {
                commands: vec![upsert("evt_u", "user_m0", "M", 1)],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    for id in ["user_m0", "user_m100"] {
        let r = c
            .get_user(env.service(vbase_proto::identity::v1::GetUserRequest {
                clerk_id: id.into(),
            }))
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn concurrent_lookups_share_queries_and_each_gets_its_own_user() {
    use vbase_proto::identity::v1::{DeleteUserCommand, GetCurrentUserRequest, GetUserRequest};
    let env = support::start_with(|c| c.lookup_slots = 1).await;
    let mut c = env.client().await;
    for u in 0..20 {
        c.upsert_user(env.service(upsert(
            &format!("evt_l{u}"),
            &format!("user_l{u}"),
            &format!("L{u}"),
            1,
        )))
        .await
        .unwrap();
    }
    c.delete_user(env.service(DeleteUserCommand {
        event_id: "evt_ldel".into(),
        occurred_at: support::ts(1_700_000_100),
        clerk_id: "user_l19".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    // 20 known (one deleted) and 10 unknown ids, each asked 3 times, by services and by the
    // users themselves, all at once: the deleted user's own token is refused, the unknown are
    // not found.
    let asks = (0..90).map(|i| {
        let env = &env;
        async move {
            let u = i % 30;
            let id = format!("user_l{u}");
            let mut c = env.client().await;
            let by_service = i % 2 == 0;
            let r = if by_service {
                c.get_user(env.service(GetUserRequest {
                    clerk_id: id.clone(),
                }))
                .await
                .map(|r| r.into_inner().user.unwrap().name)
            } else {
                c.get_current_user(env.user(&id, GetCurrentUserRequest {}))
                    .await
                    .map(|r| r.into_inner().user.unwrap().name)
            };
            (u, by_service, r)
        }
    });
    for (u, by_service, r) in futures::future::join_all(asks).await {
        if u < 19 {
            assert_eq!(r.unwrap(), format!("L{u}"));
        } else if u == 19 && !by_service {
            assert_eq!(
                r.unwrap_err().code(),
                tonic::Code::PermissionDenied,
                "user_l{u}"
            );
        } else {
            assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound, "user_l{u}");
        }
    }
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_replayed_so_only_the_bad_command_fails() {
    use identity_service::batch::UpsertBatcher;
    let db = support::database().await;
    let pool = build_pool(db.url(), 4, identity_service::PLANS).unwrap();
    let (direct, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Input validation lets this name through; the database does not.
    direct
        .batch_execute("ALTER TABLE users ADD CONSTRAINT no_poison CHECK (name <> 'Poison')")
        .await
        .unwrap();
    let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let batcher = UpsertBatcher::start(pool, 1, move |n| seen.lock().unwrap().push(n));
    let cmds: Vec<UpsertUser> = (0..10)
        .map(|i| {
            let mut c = command(
                "r",
                &Ev {
                    id: i,
                    user: i,
                    secs: 1,
                },
            );
            if i == 4 {
                c.name = "Poison".into();
            }
            c
        })
        .collect();
    let results = futures::future::join_all(cmds.into_iter().map(|c| batcher.upsert(c))).await;
    assert_eq!(
        *sizes.lock().unwrap(),
        vec![10],
        "the ten went as one batch"
    );
    for (i, r) in results.iter().enumerate() {
        if i == 4 {
            assert!(r.is_err(), "the poisoned command fails: {r:?}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&Outcome::Applied), "command {i}");
        }
    }
    let names = state(&direct, "r").await;
    assert_eq!(names.len(), 9);
    assert!(names.iter().all(|(_, name, _, _)| name != "Poison"));
}

#[derive(diesel::QueryableByName)]
struct Plans {
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    generic_plans: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    custom_plans: i64,
}

#[tokio::test]
async fn batched_lookups_and_upserts_are_planned_once_not_on_every_execution() {
    use diesel_async::RunQueryDsl;
    let db = support::database().await;
    // One connection, so every statement below runs on the session whose plans are read.
    let pool = build_pool(db.url(), 1, identity_service::PLANS).unwrap();
    for round in 0..8 {
        let cmds: Vec<UpsertUser> = (0..4)
            .map(|u| {
                command(
                    "g",
                    &Ev {
                        id: round * 4 + u,
                        user: u,
                        secs: round as i64,
                    },
                )
            })
            .collect();
        users::upsert_users(&pool, &cmds).await.unwrap();
        let ids: Vec<String> = (0..4).map(|u| format!("user_g_{u}")).collect();
        assert_eq!(users::get_users(&pool, &ids).await.unwrap().len(), 4);
    }
    let mut conn = pool.get().await.unwrap();
    let plans: Vec<Plans> = diesel::sql_query(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
         WHERE (statement LIKE '%ANY%' OR statement LIKE '%unnest%')
           AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let names: Vec<&str> = plans.iter().map(|p| p.statement.as_str()).collect();
    assert_eq!(plans.len(), 2, "the lookup and the upsert: {names:#?}");
    for p in plans {
        // PostgreSQL's default plans these again for every array it is given.
        assert_eq!(
            (p.generic_plans, p.custom_plans),
            (8, 0),
            "planned once, reused 8 times: {}",
            p.statement
        );
    }
}
