//! `webhook-gateway reconcile`, the built binary, against the stand-in of Clerk's Backend API
//! and the real services, at the edges of its guards: moving a deployment to another Clerk
//! instance, a cursor whose user Clerk deleted between pages, the deletion budget's counts,
//! more deletion candidates than one page, and a list that answers 404. Each test checks the
//! databases afterwards.

use crate::reconcile_guards::*;
use crate::support::*;
use serde_json::{Value, json};
use stand_ins::{ClerkApiStandIn, DEFAULT_INSTANCE, membership_json, org_json, user_json};

/// `--instance K` when the services recorded only other instances stops before listing (a
/// backfill would copy K's data into ours); `--move-to-instance K` moves the deployment only
/// with `--allow-mass-delete` (none of K's oldest users is ours): K is recorded as confirmed,
/// its data copied in and ours deleted.
#[tokio::test]
async fn another_instance_is_moved_to_only_with_move_to_instance() {
    let (s, _ours) = backfilled(30, 3, 3).await;
    let before = held(&s).await;
    let other = another_instance().await;
    let confirmed = "SELECT count(*) FROM clerk_instances \
                     WHERE instance_id = 'ins_otherinstance' AND confirmed_at IS NOT NULL";
    for args in [
        ["--instance", "ins_otherinstance"],
        ["--move-to-instance", DEFAULT_INSTANCE],
    ] {
        let ran = reconcile(&s, &other.base_url(), &args, &[]).await;
        assert_eq!(ran.code, Some(1), "{args:?}: {}", ran.stderr);
        assert!(
            ran.last_line.contains("ins_otherinstance") && ran.last_line.contains(DEFAULT_INSTANCE),
            "one line names both instances: {}",
            ran.last_line
        );
    }
    assert!(
        other.calls().iter().all(|c| c.path == "/v1/instance"),
        "nothing listed: {:?}",
        other.calls()
    );
    assert_eq!(held(&s).await, before, "nothing deleted");
    assert_eq!(copied_in(&s).await, 0);
    for db in [s._dbs.0.url(), s.workspace_db()] {
        assert_eq!(service_harness::scalar(db, confirmed).await, 0);
    }

    // Moving to K, whose users are none of ours, also needs the mass deletion allowed: alone,
    // it stops before it lists, writes or records anything.
    let args = ["--move-to-instance", "ins_otherinstance"];
    let moved = reconcile(&s, &other.base_url(), &args, &[]).await;
    assert_eq!(moved.code, Some(1), "{}", moved.stderr);
    assert!(
        moved
            .last_line
            .contains("none of the 1 oldest and newest users")
            && moved.last_line.contains("--allow-mass-delete"),
        "{}",
        moved.last_line
    );
    assert_eq!(held(&s).await, before, "nothing deleted");
    assert_eq!(copied_in(&s).await, 0);
    for db in [s._dbs.0.url(), s.workspace_db()] {
        assert_eq!(service_harness::scalar(db, confirmed).await, 0);
    }
    // With it, K is confirmed, its data copied in and ours deleted.
    let moved = reconcile(
        &s,
        &other.base_url(),
        &[
            "--move-to-instance",
            "ins_otherinstance",
            "--allow-mass-delete",
        ],
        &[],
    )
    .await;
    assert_eq!(moved.code, Some(0), "{}", moved.stderr);
    assert_eq!(moved.count("users", "deleted"), 30);
    assert_eq!(copied_in(&s).await, 1);
    assert_eq!(held(&s).await, (1, 0, 0));
    for db in [s._dbs.0.url(), s.workspace_db()] {
        assert_eq!(service_harness::scalar(db, confirmed).await, 1);
    }
    // Later runs with K's key need no flag.
    let later = reconcile(&s, &other.base_url(), &[], &[]).await;
    assert_eq!(later.code, Some(0), "{}", later.stderr);
}

/// The `starting_after` cursor of each list request.
fn user_cursors(api: &ClerkApiStandIn) -> Vec<(Option<String>, u16)> {
    api.calls()
        .into_iter()
        .filter(|c| c.path == "/v1/users")
        .map(|c| {
            let cursor = c.query.iter().find(|(k, _)| k == "starting_after");
            (cursor.map(|(_, v)| v.clone()), c.status)
        })
        .collect()
}

/// Users deleted in Clerk right after a page lists them, the page's last among them: Clerk
/// refuses that cursor, and the listing goes on from an earlier id of the same page, listing
/// every other user once. More refusals than the bound stop the run, deleting nothing.
#[tokio::test]
async fn a_cursor_whose_user_was_deleted_between_pages_pages_from_an_earlier_id() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 1300, 0, 0);
    api.remove_users_when_listed(&[user_id(499), user_id(498)]);
    let ran = reconcile(
        &s,
        &api.base_url(),
        &["--only", "users", "--instance", DEFAULT_INSTANCE],
        &[],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        user_cursors(&api),
        vec![
            (None, 200),
            (Some(user_id(499)), 422),
            (Some(user_id(498)), 422),
            (Some(user_id(497)), 200),
            (Some(user_id(999)), 200),
        ]
    );
    assert_eq!(ran.count("users", "listed"), 1300, "each listed once");
    assert_eq!(ran.count("users", "created"), 1300);
    assert_eq!(held(&s).await.0, 1300);

    // A deletion of the page's last eleven users outlasts the bound: the run stops.
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 1300, 0, 0);
    api.remove_users_when_listed(&(489..500).map(user_id).collect::<Vec<_>>());
    api.remove_user(&user_id(1200));
    let ran = reconcile(&s, &api.base_url(), &["--only", "users"], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("422") && ran.last_line.contains("/users"),
        "{}",
        ran.last_line
    );
    assert_eq!(user_cursors(&api).len(), 12, "{:?}", user_cursors(&api));
    assert_eq!(held(&s).await.0, 1300, "nothing deleted");
}

/// A user and an organization held with an earlier `created_at` than Clerk lists (a webhook
/// said so) sit in an early page's stretch, which does not list them; a later page does. They
/// are not missing.
#[tokio::test]
async fn a_candidate_that_a_later_page_lists_is_not_counted_missing() {
    let (s, api) = backfilled(600, 250, 0).await;
    // The webhooks' `created_at` are years before Clerk's listing: held first in the order.
    let (code, _) = s
        .send(
            "msg_early_u",
            &user_event("user.updated", &user_id(450), "G", C + 10_000),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = s
        .send(
            "msg_early_o",
            &org_event("organization.updated", &org_id(200), "X", C + 10_000),
        )
        .await;
    assert_eq!(code, 200);
    api.remove_user(&user_id(7));
    api.remove_user(&user_id(8));
    api.remove_org(&org_id(9));
    let pages = [("CLERK_API_PAGE_SIZE", "100")];
    let only = ["--only", "users,organizations"];
    for args in [&[only[0], only[1], "--dry-run"][..], &only] {
        let ran = reconcile(&s, &api.base_url(), args, &pages).await;
        assert_eq!(ran.code, Some(0), "{args:?}: {}", ran.stderr);
        for (kind, missing) in [("users", 2), ("organizations", 1)] {
            assert_eq!(
                (ran.count(kind, "missing"), ran.count(kind, "kept")),
                (missing, 0),
                "{args:?} {kind}: {}",
                ran.summary
            );
        }
    }
    assert!(s.user(&user_id(450)).await.is_some());
    assert_eq!(held(&s).await, (598, 249, 0));
}

/// The 1 % budget is of what was held when the run started: users this run creates do not
/// raise it.
#[tokio::test]
async fn the_budget_is_one_percent_of_what_was_held_when_the_run_started() {
    let (s, api) = backfilled(2600, 0, 0).await;
    for i in 100..130 {
        api.remove_user(&user_id(i));
    }
    for i in 2600..3600 {
        let t = C + i as i64;
        api.put_user(user_json(&user_id(i), "N", "n@example.org", t, t));
    }
    let ran = reconcile(&s, &api.base_url(), &["--only", "users"], &[]).await;
    assert_eq!(ran.count("users", "created"), 1000);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let users = ran.kind("users");
    assert_eq!(
        (
            users["missing"].as_u64(),
            users["budget"].as_u64(),
            users["deleted"].as_u64()
        ),
        (Some(30), Some(26), Some(0)),
        "{}",
        ran.summary
    );
    assert_eq!(held(&s).await.0, 3600);
}

/// Memberships over their budget: users and organizations are not deleted either (deleting
/// them removes memberships); the run reports all of it and exits 1.
#[tokio::test]
async fn memberships_over_budget_stop_every_deletion() {
    let (s, api) = backfilled(40, 4, 10).await;
    // Organization o has users o to o + 9; user 30 has none.
    for o in 0..3 {
        for k in 0..10 {
            api.remove_membership(&membership_id(o, o + k));
        }
    }
    api.remove_user(&user_id(30));
    api.remove_org(&org_id(3));
    let before = held(&s).await;
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("memberships: 30")
            && ran.last_line.contains("none was deleted either"),
        "{}",
        ran.last_line
    );
    for kind in ["users", "organizations", "memberships"] {
        assert_eq!(ran.count(kind, "deleted"), 0, "{kind}: {}", ran.summary);
    }
    assert_eq!(
        (
            ran.count("users", "missing"),
            ran.count("organizations", "missing")
        ),
        (1, 1)
    );
    assert_eq!(held(&s).await, before, "nothing deleted");
    let forced = reconcile(&s, &api.base_url(), &["--allow-mass-delete"], &[]).await;
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    assert_eq!(held(&s).await, (39, 3, 0));
}

/// More deletion candidates of each kind than the services give in one page (500): the sweep
/// asks for the next page after the last key of the one before, so every candidate is
/// confirmed once. Ten of each kind, first in the services' order, are still in Clerk but do
/// not parse in its listing (so the listing does not show them): they are kept, once each, and
/// the page after them does not list them again.
#[tokio::test]
async fn candidates_beyond_one_page_are_each_confirmed_once() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    // Organizations 0 and 1 have 300 members each (users 0 to 300); 2 to 521 none.
    seed(&api, 1200, 2, 300);
    for o in 2..522 {
        let t = C + o as i64;
        api.put_org(org_json(&org_id(o), "O", &user_id(0), t, t));
    }
    let first = reconcile(&s, &api.base_url(), &["--instance", DEFAULT_INSTANCE], &[]).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(held(&s).await, (1200, 522, 600));

    // Users 590 to 599, organizations 2 to 11 and organization 0's first ten memberships stay
    // in Clerk but do not parse; the rest after them is deleted in Clerk.
    for i in 590..600 {
        api.put_user(json!({"id": user_id(i), "object": "user", "created_at": C + i as i64}));
    }
    for i in 600..1200 {
        api.remove_user(&user_id(i));
    }
    for o in 2..12 {
        let t = C + o as i64;
        let mut org = org_json(&org_id(o), "O", &user_id(0), t, t);
        org.as_object_mut().unwrap().remove("created_at");
        api.put_org(org);
    }
    for o in 12..522 {
        api.remove_org(&org_id(o));
    }
    for o in 0..2 {
        for k in 0..300 {
            let u = o + k;
            if o == 0 && u < 10 {
                let t = C + u as i64;
                let mut m =
                    membership_json(&membership_id(o, u), &org_id(o), &user_id(u), "", t, t);
                m["role"] = Value::Null;
                api.put_membership(m);
            } else {
                api.remove_membership(&membership_id(o, u));
            }
        }
    }
    let ran = reconcile(&s, &api.base_url(), &["--allow-mass-delete"], &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for (kind, missing, deleted) in [
        ("users", 610, 600),
        ("organizations", 520, 510),
        ("memberships", 600, 590),
    ] {
        assert_eq!(
            (
                ran.count(kind, "missing"),
                ran.count(kind, "deleted"),
                ran.count(kind, "kept")
            ),
            (missing, deleted, 10),
            "{kind}: {}",
            ran.summary
        );
    }
    assert_eq!(held(&s).await, (600, 12, 10));
}

/// An address whose `GET /instance` answers but whose lists all answer a plain 404 (a proxy
/// that passes only some routes): the run stops at its first list, names it, and deletes
/// nothing; the other case of an address without `/v1` (every route 404) is
/// `reconcile_guards::an_address_without_v1_deletes_nothing_and_exits_1`.
#[tokio::test]
async fn lists_that_answer_404_stop_the_run_at_the_first_list() {
    let (s, api) = backfilled(40, 4, 3).await;
    let before = held(&s).await;
    remove_some(&api);
    for list in [
        "/v1/users",
        "/v1/organizations",
        "/v1/organization_memberships",
    ] {
        api.block_path(list);
    }
    let calls_before = api.calls().len();
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line
            .starts_with("webhook-gateway reconcile: stopped: users:")
            && ran.last_line.contains("404 on /users")
            && ran.last_line.contains("CLERK_API_URL"),
        "{}",
        ran.last_line
    );
    let calls: Vec<_> = api.calls()[calls_before..]
        .iter()
        .map(|c| (c.path.clone(), c.status))
        .collect();
    assert_eq!(
        calls,
        [
            ("/v1/instance".to_owned(), 200),
            ("/v1/users".to_owned(), 404)
        ],
        "past GET /instance, the first list stops the run"
    );
    assert_eq!(held(&s).await, before, "nothing deleted");
}
