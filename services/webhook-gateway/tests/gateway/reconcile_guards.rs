//! `webhook-gateway reconcile`, the built binary, against the stand-in of Clerk's Backend API
//! and the real services: what it must never delete (an address that is not Clerk's API, a key
//! of another instance, more than the budget), and how it speaks Clerk's API (users by cursor,
//! only the parameters each endpoint documents). Each test checks the databases afterwards.

use crate::support::*;
use serde_json::{Value, json};
use stand_ins::{
    ClerkApiStandIn, DEFAULT_INSTANCE, EmptyList, membership_json, org_json, user_json,
};
use std::collections::BTreeMap;

pub(crate) const KEY: &str = "sk_test_standin_key";
/// Clerk's clock for the seeded data (ms).
pub(crate) const C: i64 = 1_762_000_000_000;

/// What a run of the binary said.
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    /// The `--json` summary.
    pub(crate) summary: Value,
    /// The last line on stderr.
    pub(crate) last_line: String,
    pub(crate) stderr: String,
}

impl Ran {
    pub(crate) fn kind(&self, kind: &str) -> &Value {
        self.summary["kinds"]
            .as_array()
            .and_then(|k| k.iter().find(|k| k["kind"] == kind))
            .unwrap_or_else(|| panic!("no {kind} in {}", self.summary))
    }

    pub(crate) fn count(&self, kind: &str, field: &str) -> u64 {
        self.kind(kind)[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{kind}.{field} in {}", self.summary))
    }
}

/// Runs `webhook-gateway reconcile --json <args>` against `base_url` and the stack's services.
pub(crate) async fn reconcile(
    s: &Stack,
    base_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Ran {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-gateway"));
    c.arg("reconcile")
        .arg("--json")
        .args(args)
        .env_clear()
        .env("CLERK_SECRET_KEY", KEY)
        .env("CLERK_API_URL", base_url)
        .env("CLERK_API_MAX_REQUESTS", "10000")
        .env("CLERK_API_WINDOW_SECS", "1")
        .env("CLERK_API_MAX_RETRIES", "1")
        .env("CLERK_API_RETRY_BASE_MS", "20")
        .env("CLERK_API_TIMEOUT_SECS", "10")
        .env("IDENTITY_SERVICE_URL", &s.downstream.identity_service_url)
        .env("WORKSPACE_SERVICE_URL", &s.downstream.workspace_service_url)
        .env(
            "SERVICE_JWT_SIGNING_KEY_FILE",
            s.issuers
                .keys
                .signing_key_file_of(token_auth::GATEWAY_SUBJECT),
        )
        .env("LOG_FORMAT", "json")
        .envs(env.iter().copied());
    // The stand-in and the services run on this test's runtime: wait off it.
    let out = tokio::task::spawn_blocking(move || c.output().expect("the binary runs"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ran {
        code: out.status.code(),
        summary: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        last_line: stderr.lines().last().unwrap_or_default().to_owned(),
        stderr,
    }
}

pub(crate) fn user_id(i: usize) -> String {
    format!("user_g{i:05}")
}

pub(crate) fn org_id(i: usize) -> String {
    format!("org_g{i:04}")
}

pub(crate) fn membership_id(o: usize, u: usize) -> String {
    format!("orgmem_g{o}x{u}")
}

/// `users` users; `orgs` organizations with `per_org` members each.
pub(crate) fn seed(api: &ClerkApiStandIn, users: usize, orgs: usize, per_org: usize) {
    for i in 0..users {
        let id = user_id(i);
        let t = C + i as i64;
        api.put_user(user_json(&id, "G", &format!("{id}@example.org"), t, t));
    }
    for o in 0..orgs {
        let t = C + o as i64;
        api.put_org(org_json(&org_id(o), &format!("Org {o}"), &user_id(0), t, t));
        for k in 0..per_org {
            let u = (o + k) % users;
            api.put_membership(membership_json(
                &membership_id(o, u),
                &org_id(o),
                &user_id(u),
                "org:member",
                t + k as i64,
                t + k as i64,
            ));
        }
    }
}

/// Clerk's API with a valid key of another instance, `ins_otherinstance`, holding one user of
/// its own, `user_elsewhere`.
pub(crate) async fn another_instance() -> ClerkApiStandIn {
    let other = ClerkApiStandIn::start(KEY).await.unwrap();
    other.set_instance("ins_otherinstance");
    other.put_user(user_json("user_elsewhere", "E", "e@example.org", C, C));
    other
}

/// Whether [`another_instance`]'s user was copied in (1) or not (0).
pub(crate) async fn copied_in(s: &Stack) -> i64 {
    let elsewhere = "SELECT count(*) FROM users WHERE clerk_id = 'user_elsewhere'";
    service_harness::scalar(s._dbs.0.url(), elsewhere).await
}

/// The seeded data, backfilled by a first run that confirms the stand-in's instance.
pub(crate) async fn backfilled(
    users: usize,
    orgs: usize,
    per_org: usize,
) -> (Stack, ClerkApiStandIn) {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, users, orgs, per_org);
    let first = reconcile(&s, &api.base_url(), &["--instance", DEFAULT_INSTANCE], &[]).await;
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.count("users", "created"), users as u64);
    (s, api)
}

/// (live users, live workspaces, live memberships) held. A deleted organization's memberships
/// are gone for every call at once, as its workspace is, and their rows go with the purge in
/// the background: not counted, whether or not the purge has run yet.
pub(crate) async fn held(s: &Stack) -> (i64, i64, i64) {
    (
        service_harness::scalar(
            s._dbs.0.url(),
            "SELECT count(*) FROM users WHERE deleted_at IS NULL",
        )
        .await,
        service_harness::scalar(
            s.workspace_db(),
            "SELECT count(*) FROM workspaces WHERE deleted_at IS NULL",
        )
        .await,
        service_harness::scalar(
            s.workspace_db(),
            "SELECT count(*) FROM memberships m WHERE NOT m.deleted AND NOT EXISTS \
             (SELECT FROM workspace_tombstones t WHERE t.clerk_org_id = m.clerk_org_id)",
        )
        .await,
    )
}

/// Removes one user, one organization and one membership from Clerk: a run that deletes
/// anything would delete these.
pub(crate) fn remove_some(api: &ClerkApiStandIn) {
    api.remove_user(&user_id(7));
    api.remove_org(&org_id(1));
    api.remove_membership(&membership_id(2, 2));
}

#[tokio::test]
async fn an_address_without_v1_deletes_nothing_and_exits_1() {
    let (s, api) = backfilled(40, 4, 3).await;
    let before = held(&s).await;
    remove_some(&api);
    // Every route of the stand-in answers a plain 404 without the version path.
    let root = api.base_url().trim_end_matches("/v1").to_owned();
    let ran = reconcile(&s, &root, &[], &[]).await;
    assert_eq!(held(&s).await, before, "nothing deleted: {}", ran.last_line);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line
            .starts_with("webhook-gateway reconcile: stopped:")
            && ran.last_line.contains("404")
            && ran.last_line.contains("/instance")
            && ran.last_line.contains("CLERK_API_URL"),
        "one line names the path and the status: {}",
        ran.last_line
    );
}

/// A proxy that answers a plain 404 (not Clerk's `resource_not_found`) on one list, then on
/// one resource's GET: the run stops before its sweep, and a plain 404 never confirms a
/// deletion.
#[tokio::test]
async fn a_404_on_a_list_or_without_resource_not_found_deletes_nothing() {
    let (s, api) = backfilled(40, 4, 3).await;
    let before = held(&s).await;
    remove_some(&api);
    api.block_path("/v1/organization_memberships");
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("404") && ran.last_line.contains("/organization_memberships"),
        "{}",
        ran.last_line
    );
    assert_eq!(
        ran.count("users", "deleted"),
        0,
        "the users' listing completed, but a failed listing stops every deletion"
    );
    assert_eq!(held(&s).await, before, "nothing deleted");

    // The listings answer; the removed user's own GET answers a plain 404 (a proxy again).
    let api2 = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api2, 40, 4, 3);
    api2.remove_user(&user_id(7));
    api2.block_path(&format!("/v1/users/{}", user_id(7)));
    let ran = reconcile(&s, &api2.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("404") && ran.last_line.contains(&user_id(7)),
        "{}",
        ran.last_line
    );
    assert_eq!(held(&s).await, before, "a plain 404 confirms nothing");
}

/// A deleted organization's memberships are settled by the organization's own GET (404
/// `resource_not_found`, which the spec documents); the membership list of a deleted
/// organization, whose answer the spec leaves open (here a plain 404, as a proxy might give),
/// is not asked.
#[tokio::test]
async fn a_deleted_organizations_memberships_go_by_the_organizations_own_404() {
    let (s, api) = backfilled(30, 3, 3).await;
    let before = held(&s).await;
    api.remove_org(&org_id(1));
    for u in 1..4 {
        api.remove_membership(&membership_id(1, u));
    }
    api.block_path(&format!("/v1/organizations/{}/memberships", org_id(1)));
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        held(&s).await,
        (before.0, before.1 - 1, before.2 - 3),
        "{}",
        ran.last_line
    );
}

#[tokio::test]
async fn a_key_of_another_instance_deletes_nothing() {
    let (s, _ours) = backfilled(30, 3, 3).await;
    let before = held(&s).await;
    // A valid key of another instance: it lists that instance's data, none of ours.
    let other = another_instance().await;
    let ran = reconcile(&s, &other.base_url(), &[], &[]).await;
    let after = held(&s).await;
    assert_eq!(
        (after.1, after.2),
        (before.1, before.2),
        "no workspace or membership deleted: {}",
        ran.last_line
    );
    assert_eq!(
        service_harness::scalar(
            s._dbs.0.url(),
            "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL"
        )
        .await,
        0,
        "no user deleted"
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("ins_otherinstance") && ran.last_line.contains(DEFAULT_INSTANCE),
        "one line names both instances: {}",
        ran.last_line
    );
    assert_eq!(
        copied_in(&s).await,
        0,
        "nothing of the other instance copied in"
    );
    // Naming the expected instance stops such a run before it reads or writes anything.
    let ran = reconcile(
        &s,
        &other.base_url(),
        &["--instance", DEFAULT_INSTANCE],
        &[],
    )
    .await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("ins_otherinstance") && ran.last_line.contains("--instance"),
        "{}",
        ran.last_line
    );
    assert_eq!(
        other
            .calls()
            .iter()
            .filter(|c| c.path == "/v1/users")
            .count(),
        0,
        "neither run listed anything"
    );
}

#[tokio::test]
async fn a_budget_exceeded_deletes_nothing_of_that_kind_and_allow_mass_delete_goes_through() {
    let (s, api) = backfilled(100, 4, 3).await;
    // 30 users gone from Clerk: more than the budget, the larger of 25 and 1 % of 100. One
    // organization gone: within its budget.
    for i in 50..80 {
        api.remove_user(&user_id(i));
    }
    api.remove_org(&org_id(3));
    for k in 0..3 {
        api.remove_membership(&membership_id(3, (3 + k) % 100));
    }
    let dry = reconcile(&s, &api.base_url(), &["--dry-run"], &[]).await;
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("users: 30")
            && ran.last_line.contains("--reconcile-max-deletes 30")
            && ran.last_line.contains("--allow-mass-delete"),
        "{}",
        ran.last_line
    );
    for r in [&dry, &ran] {
        let users = r.kind("users");
        assert_eq!(
            (
                users["missing"].clone(),
                users["budget"].clone(),
                users["over_budget"].clone(),
                users["deleted"].clone()
            ),
            (json!(30), json!(25), json!(true), json!(0)),
            "the dry run shows the same figures: {}",
            r.summary
        );
    }
    // The first ten missing ids are named, to look up in Clerk before lifting the budget.
    let sample: Vec<String> = (50..60).map(user_id).collect();
    for r in [&dry, &ran] {
        assert_eq!(
            r.kind("users")["missing_sample"],
            json!(sample),
            "{}",
            r.summary
        );
    }
    assert!(
        ran.last_line.contains(&sample.join(" ")),
        "{}",
        ran.last_line
    );
    assert_eq!(dry.code, Some(1));
    assert_eq!(held(&s).await.0, 100, "no user deleted");
    assert_eq!(
        ran.count("organizations", "deleted"),
        1,
        "other kinds go on"
    );
    assert_eq!(held(&s).await.1, 3);

    // RECONCILE_MAX_DELETES raises the budget; --allow-mass-delete lifts it.
    let within = reconcile(
        &s,
        &api.base_url(),
        &["--dry-run"],
        &[("RECONCILE_MAX_DELETES", "30")],
    )
    .await;
    assert_eq!(within.code, Some(0), "{}", within.stderr);
    assert_eq!(within.count("users", "deleted"), 30);
    assert_eq!(held(&s).await.0, 100, "a dry run deletes nothing");
    let forced = reconcile(&s, &api.base_url(), &["--allow-mass-delete"], &[]).await;
    assert_eq!(forced.code, Some(0), "{}", forced.stderr);
    assert_eq!(forced.count("users", "deleted"), 30);
    assert_eq!(held(&s).await.0, 70);
    assert_eq!(
        service_harness::scalar(
            s._dbs.0.url(),
            &format!(
                "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL AND clerk_id BETWEEN '{}' AND '{}'",
                user_id(50),
                user_id(79)
            )
        )
        .await,
        30
    );
}

/// A cursor that Clerk does not apply (every page answers as the first) stops the run at the
/// second page, instead of reading the first page again until the Job's deadline, also when
/// that page holds a user without a position; nothing is deleted.
#[tokio::test]
async fn a_cursor_clerk_does_not_apply_stops_the_run() {
    let (s, api) = backfilled(1200, 0, 0).await;
    api.remove_user(&user_id(5));
    // The oldest user is one that does not parse (no position): kept on every page.
    api.put_user(json!({"id": "user_unreadable", "object": "user", "created_at": C - 1}));
    api.ignore_cursor(true);
    let ran = reconcile(&s, &api.base_url(), &["--only", "users"], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("did not apply the cursor"),
        "{}",
        ran.last_line
    );
    assert_eq!(ran.count("users", "deleted"), 0);
    assert_eq!(held(&s).await.0, 1200, "nothing deleted");
    let pages = api.calls().iter().filter(|c| c.path == "/v1/users").count();
    assert!(pages <= 1 + 2 + 2, "the first run's pages and two: {pages}");
}

/// Lists answered `{"data":[]}` with no `total_count`, or `[]`, where Clerk answers
/// `{data, total_count}` (a proxy or a cache in front of Clerk) are not Clerk's answer: the run stops at the first, and no membership is deleted (before, the
/// empty listing made every membership a candidate, and each one's own check, the same empty
/// list, agreed it was gone).
#[tokio::test]
async fn lists_answered_empty_without_their_count_delete_nothing() {
    let (s, api) = backfilled(10, 2, 3).await;
    let before = held(&s).await;
    for shape in [EmptyList::Wrapped, EmptyList::Bare] {
        api.answer_lists_empty(Some(shape));
        let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
        assert_eq!(ran.code, Some(1), "{shape:?}: {}", ran.stderr);
        assert!(ran.last_line.contains("total_count"), "{}", ran.last_line);
        assert_eq!(held(&s).await, before, "{shape:?}: nothing deleted");
    }
}

/// Clerk's specification names user fields as the sort keys of membership lists; should
/// `created_at` turn out to be the user's, the pages' stretches would be wrong. A listing that
/// does not come in the memberships' creation order stops the run and deletes nothing; in
/// order, the same run deletes the membership Clerk no longer has.
#[tokio::test]
async fn memberships_listed_out_of_creation_order_delete_nothing() {
    let (s, api) = backfilled(10, 2, 3).await;
    // The first user's newest membership: ordered by user, it comes first.
    api.put_membership(membership_json(
        "orgmem_late",
        &org_id(1),
        &user_id(0),
        "org:member",
        C + 100,
        C + 100,
    ));
    api.remove_membership(&membership_id(0, 2));
    let removed_held = async || {
        service_harness::scalar(
            s.workspace_db(),
            &format!(
                "SELECT count(*) FROM memberships WHERE NOT deleted AND clerk_membership_id = '{}'",
                membership_id(0, 2)
            ),
        )
        .await
    };
    api.order_memberships_by_user(true);
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.last_line.contains("creation order")
            && ran.last_line.contains("/organization_memberships"),
        "{}",
        ran.last_line
    );
    assert_eq!(ran.count("memberships", "deleted"), 0);
    assert_eq!(removed_held().await, 1, "nothing deleted");

    api.order_memberships_by_user(false);
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(removed_held().await, 0, "in order, the run deletes it");
}

#[tokio::test]
async fn thirteen_hundred_users_are_paged_by_cursor_only() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 1300, 0, 0);
    let ran = reconcile(
        &s,
        &api.base_url(),
        &["--only", "users", "--instance", DEFAULT_INSTANCE],
        &[],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(held(&s).await.0, 1300);
    let pages: Vec<BTreeMap<String, String>> = api
        .calls()
        .into_iter()
        .filter(|c| c.path == "/v1/users")
        .map(|c| c.query.into_iter().collect())
        .collect();
    // Oldest first: user i was created at C + i, so the cursors are users 499 and 999.
    let expected = [None, Some(user_id(499)), Some(user_id(999))];
    assert_eq!(pages.len(), 3, "{pages:?}");
    for (page, cursor) in pages.iter().zip(expected) {
        assert_eq!(page.get("starting_after"), cursor.as_ref(), "{page:?}");
        assert_eq!(
            page.get("order_by").map(String::as_str),
            Some("+created_at")
        );
        assert_eq!(page.get("limit").map(String::as_str), Some("500"));
        assert!(!page.contains_key("offset"), "no offset: {page:?}");
    }
    for c in api.calls() {
        assert_eq!(c.api_version.as_deref(), Some("2026-05-12"), "{c:?}");
        assert_eq!(c.status, 200, "{c:?}");
    }
    // A second run finds every user in step.
    let again = reconcile(&s, &api.base_url(), &["--only", "users"], &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(again.count("users", "unchanged"), 1300);
}

#[tokio::test]
async fn a_removed_membership_is_found_and_deleted_with_no_undocumented_parameter() {
    let (s, api) = backfilled(20, 3, 4).await;
    // A listed membership whose user Clerk does not say: refused, the run goes on.
    let mut odd = membership_json("orgmem_odd", &org_id(0), &user_id(19), "org:member", C, C);
    odd.as_object_mut().unwrap().remove("public_user_data");
    api.put_membership(odd);
    let gone = (org_id(1), user_id(2));
    api.remove_membership(&membership_id(1, 2));
    let calls_before = api.calls().len();
    let ran = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.count("memberships", "deleted"), 1, "{}", ran.summary);
    assert_eq!(ran.count("memberships", "refused"), 1);
    assert_eq!(
        service_harness::scalar(
            s.workspace_db(),
            &format!(
                "SELECT count(*) FROM memberships WHERE clerk_org_id = '{}' AND clerk_user_id = '{}' AND deleted",
                gone.0, gone.1
            )
        )
        .await,
        1
    );
    // One user's memberships (GET /users/{id}/organization_memberships: limit and offset only).
    let one = reconcile(&s, &api.base_url(), &["--user", &user_id(3)], &[]).await;
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    let calls = &api.calls()[calls_before..];
    let confirm = calls
        .iter()
        .find(|c| c.path == format!("/v1/organizations/{}/memberships", gone.0))
        .expect("the removal was confirmed through the organization's members");
    assert!(
        confirm.query.contains(&("user_id".into(), gone.1.clone())),
        "{confirm:?}"
    );
    let user_list = calls
        .iter()
        .find(|c| c.path.ends_with("/organization_memberships") && c.path.starts_with("/v1/users/"))
        .expect("the user's memberships were listed");
    assert!(
        user_list
            .parameters()
            .iter()
            .all(|p| ["limit", "offset"].contains(p)),
        "{user_list:?}"
    );
    for c in calls {
        assert_eq!(
            c.status / 100,
            2,
            "every request was one Clerk takes: {c:?}"
        );
    }
    // The stand-in refuses what Clerk refuses: the parameter the old code sent.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/users/{}/organization_memberships?order_by=%2Bcreated_at",
            api.base_url(),
            user_id(3)
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("form_param_unknown"));
}

/// The instance the services record from the webhooks they apply pins deletion: a key of that
/// instance deletes with no flag, a key of another one deletes nothing.
#[tokio::test]
async fn the_instance_of_applied_webhooks_pins_deletion() {
    let s = stack(SECRET).await;
    for (id, user) in [("msg_p1", "user_pinned1"), ("msg_p2", "user_pinned2")] {
        let (code, _) = s.send(id, &user_event("user.created", user, "P", C)).await;
        assert_eq!(code, 200);
    }
    for db in [s._dbs.0.url(), s.workspace_db()] {
        assert_eq!(
            service_harness::scalar(
                db,
                &format!(
                    "SELECT count(*) FROM clerk_instances WHERE instance_id = '{DEFAULT_INSTANCE}'"
                )
            )
            .await,
            i64::from(db == s._dbs.0.url()),
            "user.created is applied by identity-service only"
        );
    }
    // Another instance's key: the run stops before its listing, nothing goes.
    let other = ClerkApiStandIn::start(KEY).await.unwrap();
    other.set_instance("ins_otherinstance");
    let ran = reconcile(&s, &other.base_url(), &["--only", "users"], &[]).await;
    assert_eq!(held(&s).await.0, 2, "{}", ran.last_line);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.last_line.contains("ins_otherinstance"),
        "{}",
        ran.last_line
    );
    // The key of the webhooks' instance, whose listing has only user_pinned2.
    let ours = ClerkApiStandIn::start(KEY).await.unwrap();
    ours.put_user(user_json("user_pinned2", "P", "p@example.org", C, C));
    let ran = reconcile(&s, &ours.base_url(), &["--only", "users"], &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.count("users", "deleted"), 1);
    assert!(s.user("user_pinned1").await.is_none());
    assert!(s.user("user_pinned2").await.is_some());
}

/// Nothing recorded yet (no webhook applied, no `--instance`): a run backfills, deletes nothing,
/// and says which flag would let it.
/// With no instance recorded (a deployment filled by reconcile alone), a key of another
/// instance is found by what it lacks: none of the oldest or newest users it lists is held here, so the
/// run stops before it lists further, copies in, deletes or records anything; also when the
/// operator follows a refusal's advice and names the key's own instance.
#[tokio::test]
async fn with_nothing_recorded_a_key_of_another_instance_is_found_by_what_it_lacks() {
    let s = stack(SECRET).await;
    let ours = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&ours, 30, 3, 3);
    let first = reconcile(&s, &ours.base_url(), &[], &[]).await;
    assert_eq!(first.count("users", "created"), 30, "{}", first.last_line);
    let before = held(&s).await;
    let other = another_instance().await;
    let scoped = [
        "--user",
        "user_elsewhere",
        "--instance",
        "ins_otherinstance",
    ];
    // The budget's flag, which an operator adds to get past a refusal, does not skip the check.
    for flags in [
        &[][..],
        &["--instance", "ins_otherinstance"][..],
        &scoped[..],
        &["--allow-mass-delete"][..],
        &["--instance", "ins_otherinstance", "--allow-mass-delete"][..],
    ] {
        let ran = reconcile(&s, &other.base_url(), flags, &[]).await;
        assert_eq!(ran.code, Some(1), "{flags:?}: {}", ran.stderr);
        assert!(
            ran.last_line.contains("ins_otherinstance")
                && ran
                    .last_line
                    .contains("none of the 1 oldest and newest users")
                && ran.last_line.contains("among the 30 users held here"),
            "{flags:?}: {}",
            ran.last_line
        );
        assert_eq!(held(&s).await, before, "{flags:?}: nothing deleted");
    }
    assert_eq!(
        copied_in(&s).await,
        0,
        "nothing of the other instance copied in"
    );
    // Each of the five runs read the 20 oldest and the 20 newest users, and nothing else.
    let read: Vec<_> = other
        .calls()
        .into_iter()
        .map(|c| (c.path, c.query))
        .collect();
    let limit = ("limit".to_owned(), "20".to_owned());
    let oldest = ("order_by".to_owned(), "+created_at".to_owned());
    let probes = [
        ("/v1/users".to_owned(), vec![limit.clone(), oldest]),
        ("/v1/users".to_owned(), vec![limit]),
    ];
    let listed: Vec<_> = read.iter().filter(|r| r.0 != "/v1/instance").collect();
    assert_eq!(listed.len(), 10, "{read:?}");
    assert!(listed.iter().all(|r| probes.contains(r)), "{read:?}");
    for db in [s._dbs.0.url(), s.workspace_db()] {
        let confirmed = "SELECT count(*) FROM clerk_instances WHERE confirmed_at IS NOT NULL";
        assert_eq!(
            service_harness::scalar(db, confirmed).await,
            0,
            "no instance recorded"
        );
    }
    // The probe's comparison records nothing: its run is forgotten.
    assert_eq!(
        service_harness::scalar(s._dbs.0.url(), "SELECT count(*) FROM reconcile_candidates").await,
        0
    );
    // The key of this deployment's instance has them: the same advice goes through.
    let confirmed = reconcile(&s, &ours.base_url(), &["--instance", DEFAULT_INSTANCE], &[]).await;
    assert_eq!(confirmed.code, Some(0), "{}", confirmed.stderr);
}

#[tokio::test]
async fn with_no_instance_recorded_a_run_backfills_and_deletes_nothing() {
    let s = stack(SECRET).await;
    let api = ClerkApiStandIn::start(KEY).await.unwrap();
    seed(&api, 30, 3, 3);
    let first = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(
        first.count("users", "created"),
        30,
        "creating and updating run"
    );
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    assert!(
        first.last_line.contains("no Clerk instance is recorded")
            && first
                .last_line
                .contains(&format!("--instance {DEFAULT_INSTANCE}")),
        "{}",
        first.last_line
    );
    remove_some(&api);
    let second = reconcile(&s, &api.base_url(), &[], &[]).await;
    assert_eq!(
        held(&s).await,
        (30, 3, 9),
        "nothing deleted: {}",
        second.last_line
    );
    assert_eq!(second.code, Some(1));
    assert_eq!(
        (
            second.count("users", "missing"),
            second.count("users", "deleted")
        ),
        (1, 0)
    );
    // Confirmed once, the same run deletes.
    let confirmed = reconcile(&s, &api.base_url(), &["--instance", DEFAULT_INSTANCE], &[]).await;
    assert_eq!(confirmed.code, Some(0), "{}", confirmed.stderr);
    assert_eq!(held(&s).await, (29, 2, 5));
}
