//! Property: any delivery order of a user's events, with duplicates, ends in the in-order state.

use crate::support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU32, Ordering};
use support::ts;
use vbase_proto::identity::v1 as pb;

const T0: i64 = 1_700_000_000;

#[derive(Debug, Clone)]
enum Event {
    Upsert { id: String, at: i64, name: String },
    Delete { id: String, at: i64 },
}

/// The stream Clerk would send for one user, in order: created, updates, maybe deleted.
fn stream(updates: usize, deleted: bool) -> Vec<Event> {
    let mut out: Vec<Event> = (0..=updates)
        .map(|i| Event::Upsert {
            id: format!("e{i}"),
            at: T0 + i as i64 * 10,
            name: format!("name{i}"),
        })
        .collect();
    if deleted {
        out.push(Event::Delete {
            id: "del".into(),
            at: T0 + (updates as i64 + 1) * 10,
        });
    }
    out
}

/// Applying the stream in order: the last state, or nothing after a delete.
fn in_order(events: &[Event]) -> Option<String> {
    let mut state = None;
    for e in events {
        match e {
            Event::Upsert { name, .. } => state = Some(name.clone()),
            Event::Delete { .. } => return None,
        }
    }
    state
}

#[test]
fn any_interleaving_with_duplicates_equals_the_in_order_result() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = rt.block_on(support::start());
    let case = AtomicU32::new(0);
    let strategy = (
        0usize..6,
        any::<bool>(),
        prop::collection::vec(any::<u32>(), 20),
        prop::collection::vec(0usize..20, 0..8),
    );
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    runner
        .run(&strategy, |(updates, deleted, keys, dups)| {
            let n = case.fetch_add(1, Ordering::SeqCst);
            let user = format!("user_prop{n}");
            let events = stream(updates, deleted);
            let expected = in_order(&events);
            // Deliveries: every event once plus duplicates, in a random order.
            let mut deliveries: Vec<Event> = events.clone();
            deliveries.extend(dups.iter().map(|d| events[d % events.len()].clone()));
            let mut order: Vec<usize> = (0..deliveries.len()).collect();
            order.sort_by_key(|&i| (keys[i % keys.len()], i));
            let final_name = rt.block_on(async {
                let mut c = env.client().await;
                for i in order {
                    match &deliveries[i] {
                        Event::Upsert { id, at, name } => {
                            c.upsert_user(env.service(pb::UpsertUserCommand {
                                event_id: format!("{user}-{id}"),
                                occurred_at: ts(*at),
                                clerk_id: user.clone(),
                                name: name.clone(),
                                email: "p@example.com".into(),
                                image_url: String::new(),
                                created_at: ts(T0),
                                event_time: None,
                                ..Default::default()
                            }))
                            .await
                            .unwrap();
                        }
                        Event::Delete { id, at } => {
                            c.delete_user(env.service(pb::DeleteUserCommand {
                                event_id: format!("{user}-{id}"),
                                occurred_at: ts(*at),
                                clerk_id: user.clone(),
                                ..Default::default()
                            }))
                            .await
                            .unwrap();
                        }
                    }
                }
                match c
                    .get_user(env.service(pb::GetUserRequest {
                        clerk_id: user.clone(),
                    }))
                    .await
                {
                    Ok(r) => r.into_inner().user.map(|u| u.name),
                    Err(s) if s.code() == tonic::Code::NotFound => None,
                    Err(s) => panic!("{s:?}"),
                }
            });
            prop_assert_eq!(final_name, expected);
            Ok(())
        })
        .unwrap();
}
