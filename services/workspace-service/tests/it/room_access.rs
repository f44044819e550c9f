//! `AuthorizeLiveblocksRoom`: a member of the room's workspace gets a Liveblocks access token
//! for exactly that room, with their role's permissions and Clerk's name and avatar; anyone
//! else gets none, and Liveblocks being down answers UNAVAILABLE quickly.

use crate::support::{self, Env, bearer};
use serde_json::json;
use stand_ins::{LiveblocksMode, OrgClaim};
use std::time::{Duration, Instant};
use tonic::{Code, Request};
use vbase_proto::workspace::v1 as pb;
use workspace_service::MIN_SWEEP_AFTER_SECS;

pub(crate) const ORG: &str = "org_a";

/// A user token of the kind the seed's `convex` template makes, with a `picture`.
pub(crate) fn token_of(env: &Env, user: &str, org: &str, role: &str) -> String {
    let org = OrgClaim {
        id: org.into(),
        role: role.into(),
        slug: String::new(),
    };
    let mut claims = env
        .issuers
        .clerk
        .claims(user, "Ada Lovelace", "ada@example.com", Some(&org));
    claims["picture"] = json!("https://img.clerk.com/ada.png");
    env.issuers.clerk.sign(&claims)
}

pub(crate) fn ask(token: &str, room_id: &str) -> Request<pb::AuthorizeLiveblocksRoomRequest> {
    bearer(
        pb::AuthorizeLiveblocksRoomRequest {
            room_id: room_id.into(),
        },
        token,
    )
}

/// Workspace [`ORG`] with members, a document room and a document in it: (room, doc) ids
/// as Liveblocks knows them.
pub(crate) async fn fixture(env: &Env) -> (String, String) {
    env.workspace(ORG).await;
    let mut c = env.client().await;
    for (user, role) in [
        ("user_m", "org:member"),
        ("user_a", "org:admin"),
        ("user_g", "org:guest"),
    ] {
        c.upsert_membership(env.service(support::membership(
            &format!("m-{user}"),
            1,
            ORG,
            user,
            role,
        )))
        .await
        .unwrap();
    }
    let room = c
        .create_room(env.member(
            "user_m",
            ORG,
            pb::CreateRoomRequest {
                clerk_org_id: ORG.into(),
                kind: pb::RoomKind::Document.into(),
                name: "Docs".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let doc = c
        .create_room_item(env.member(
            "user_m",
            ORG,
            pb::CreateRoomItemRequest {
                room_id: room.id.clone(),
                kind: pb::ItemKind::Document.into(),
                name: "Plan".into(),
                language: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    (room.liveblocks_room_id, doc.liveblocks_room_id)
}

#[tokio::test]
async fn a_member_gets_a_token_for_exactly_that_room_with_their_role_and_info() {
    let env = support::start().await;
    let (room, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let cases = [
        ("user_m", "org:member", &doc, vec!["room:write"]),
        ("user_a", "org:admin", &room, vec!["room:write"]),
        (
            "user_g",
            "org:guest",
            &doc,
            vec!["room:read", "room:presence:write"],
        ),
    ];
    for (user, role, id, perms) in &cases {
        let answer = c
            .authorize_liveblocks_room(ask(&token_of(&env, user, ORG, role), id))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.token.starts_with("ey"), "a JWT: {}", answer.token);
        assert_eq!(&answer.permissions, perms);
    }
    let issued = env.liveblocks.authorizations();
    assert_eq!(issued.len(), cases.len());
    for (grant, (user, _, id, perms)) in issued.iter().zip(&cases) {
        assert_eq!(grant.user_id, *user);
        assert_eq!(
            grant.user_info,
            json!({"name": "Ada Lovelace", "avatar": "https://img.clerk.com/ada.png"})
        );
        let want: Vec<String> = perms.iter().map(|p| (*p).to_owned()).collect();
        assert_eq!(grant.permissions, vec![((*id).clone(), want)]);
    }
}

/// A user whose name and avatar would pass Liveblocks' 1024-character `userInfo` (which it
/// refuses) still gets a token: the avatar is left out, the name shortened to fit.
#[tokio::test]
async fn a_user_with_a_very_long_name_still_gets_a_token() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let org = OrgClaim {
        id: ORG.into(),
        role: "org:member".into(),
        slug: String::new(),
    };
    let long_name = "Ada ".repeat(300);
    let mut claims = env
        .issuers
        .clerk
        .claims("user_m", &long_name, "ada@example.com", Some(&org));
    claims["picture"] = json!(format!("https://img.clerk.com/{}", "a".repeat(900)));
    let token = env.issuers.clerk.sign(&claims);
    let answer = env
        .client()
        .await
        .authorize_liveblocks_room(ask(&token, &doc))
        .await
        .expect("a token despite the long name")
        .into_inner();
    assert!(answer.token.starts_with("ey"));
    let info = &env.liveblocks.authorizations()[0].user_info;
    assert!(info.to_string().chars().count() <= 1024, "{info}");
    assert!(
        info.get("avatar").is_none(),
        "the avatar goes first: {info}"
    );
    assert!(long_name.starts_with(info["name"].as_str().unwrap()));
}

/// Liveblocks shows `userInfo` to the room's other users: the token's name is made
/// displayable as Clerk's names are stored (no bidirectional controls or invisible characters;
/// none when nothing visible is left), and its picture is sent only when it is an `https` URL.
#[tokio::test]
async fn the_user_info_others_see_is_cleaned_name_and_https_picture_only() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let org = OrgClaim {
        id: ORG.into(),
        role: "org:member".into(),
        slug: String::new(),
    };
    let cases = [
        (
            "report\u{202E}fdp.exe\u{200B}",
            "javascript:alert(1)",
            json!({"name": "reportfdp.exe"}),
        ),
        (
            "\u{200B}\u{3164}",
            "https://img.clerk.com/ada.png",
            json!({"avatar": "https://img.clerk.com/ada.png"}),
        ),
        (
            "Ada\u{2066} Lovelace",
            "http://img.clerk.com/ada.png",
            json!({"name": "Ada Lovelace"}),
        ),
    ];
    for (name, picture, _) in &cases {
        let mut claims = env
            .issuers
            .clerk
            .claims("user_m", name, "ada@example.com", Some(&org));
        claims["picture"] = json!(picture);
        let token = env.issuers.clerk.sign(&claims);
        env.client()
            .await
            .authorize_liveblocks_room(ask(&token, &doc))
            .await
            .unwrap();
    }
    let issued = env.liveblocks.authorizations();
    assert_eq!(issued.len(), cases.len());
    for (grant, (name, _, want)) in issued.iter().zip(&cases) {
        assert_eq!(&grant.user_info, want, "{name:?}");
    }
}

#[tokio::test]
async fn others_get_no_token() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    env.workspace("org_b").await;
    let mut c = env.client().await;
    // Active in another workspace: told no more than of a room that does not exist.
    let outsider = token_of(&env, "user_b", "org_b", "org:admin");
    let refused = c
        .authorize_liveblocks_room(ask(&outsider, &doc))
        .await
        .unwrap_err();
    let unknown = c
        .authorize_liveblocks_room(ask(&outsider, &format!("doc:{}", uuid::Uuid::now_v7())))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (unknown.code(), unknown.message()),
        "another workspace's room answers as one that does not exist"
    );
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    // Active in none.
    let none = c
        .authorize_liveblocks_room(env.issuers.user(
            "user_m",
            pb::AuthorizeLiveblocksRoomRequest {
                room_id: doc.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::PermissionDenied, "{none:?}");
    // Services are not people.
    let service = c
        .authorize_liveblocks_room(env.service(pb::AuthorizeLiveblocksRoomRequest {
            room_id: doc.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(service.code(), Code::PermissionDenied, "{service:?}");
    // Not our ids, wildcards included.
    for bad in ["doc:*", "doc:", "sheet:1", &format!("{doc}*")] {
        let invalid = c
            .authorize_liveblocks_room(ask(&token_of(&env, "user_m", ORG, "org:member"), bad))
            .await
            .unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument, "{bad}: {invalid:?}");
    }
    assert_eq!(env.liveblocks.authorize_requests(), 0);
}

#[tokio::test]
async fn a_removed_member_is_refused_at_once() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let token = token_of(&env, "user_m", ORG, "org:member");
    c.authorize_liveblocks_room(ask(&token, &doc))
        .await
        .unwrap();
    let after_now = token_auth::signing::now_secs() + 2;
    c.delete_membership(env.service(pb::DeleteMembershipCommand {
        event_id: "remove".into(),
        occurred_at: support::ts(after_now),
        clerk_org_id: ORG.into(),
        clerk_user_id: "user_m".into(),
        event_time: support::ts(after_now),
        ..Default::default()
    }))
    .await
    .unwrap();
    let refused = c
        .authorize_liveblocks_room(ask(&token, &doc))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("removed"), "{refused:?}");
    // Nor does the removed member learn which rooms exist: one that never did is refused alike.
    let unknown = format!("doc:{}", uuid::Uuid::now_v7());
    let refused = c
        .authorize_liveblocks_room(ask(&token, &unknown))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(env.liveblocks.authorizations().len(), 1);
}

/// A token outlives its call, so it is decided on the database, never on the replica's access
/// cache: a removal the replica has not heard of yet (its notification still on the way) gets
/// none, even while the cache still lets the member read.
#[tokio::test]
async fn a_removal_not_heard_yet_gets_no_token() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let token = token_of(&env, "user_m", ORG, "org:member");
    let list = || {
        bearer(
            pb::ListChannelsRequest {
                clerk_org_id: ORG.into(),
                ..Default::default()
            },
            &token,
        )
    };
    // The removal, unheard: the cache goes on letting the member read.
    support::remove_unheard(&env, &mut c, "user_m", list).await;
    let refused = c
        .authorize_liveblocks_room(ask(&token, &doc))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(env.liveblocks.authorizations().is_empty());
}

#[tokio::test]
async fn rooms_that_are_gone_are_not_found() {
    let env = support::start().await;
    let (room, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let token = token_of(&env, "user_m", ORG, "org:member");
    let unknown = format!("doc:{}", uuid::Uuid::now_v7());
    let missing = c
        .authorize_liveblocks_room(ask(&token, &unknown))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    c.delete_workspace(env.service(support::delete_ws("del", 2, ORG)))
        .await
        .unwrap();
    for id in [&room, &doc] {
        let gone = c
            .authorize_liveblocks_room(ask(&token, id))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{id}: {gone:?}");
    }
    assert_eq!(env.liveblocks.authorize_requests(), 0);
}

/// A deleted room is hidden at once and purged later: until the purge has run, its row and its
/// documents' rows are still there, and neither its own room nor a document's gets a token
/// (NOT_FOUND, Liveblocks never asked), as for a room that never existed.
#[tokio::test]
async fn a_deleted_room_not_purged_yet_is_not_found() {
    let env = support::start().await;
    let (room, doc) = fixture(&env).await;
    let mut c = env.client().await;
    // Holds the room's purge back: it deletes the documents first, then the room.
    let _purge_held = env.hold("LOCK TABLE documents IN SHARE MODE").await;
    c.delete_room(env.admin(
        "user_a",
        ORG,
        pb::DeleteRoomRequest {
            room_id: room.strip_prefix("room:").unwrap().into(),
        },
    ))
    .await
    .unwrap();
    let token = token_of(&env, "user_m", ORG, "org:member");
    for id in [&room, &doc] {
        let gone = c
            .authorize_liveblocks_room(ask(&token, id))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{id}: {gone:?}");
    }
    assert_eq!(
        (
            env.scalar("SELECT count(*) FROM rooms WHERE deleted_at IS NOT NULL")
                .await,
            env.count("documents").await
        ),
        (1, 1),
        "hidden, not purged yet"
    );
    assert_eq!(env.liveblocks.authorize_requests(), 0);
}

#[tokio::test]
async fn liveblocks_down_answers_unavailable_quickly() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let token = token_of(&env, "user_m", ORG, "org:member");
    let unavailable = |r: Result<_, tonic::Status>| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(!e.message().contains("ey"), "{e:?}");
    };

    // A hung Liveblocks: the call ends at the room-token timeout (3 s), not the client's.
    env.liveblocks.set_latency(Duration::from_secs(30));
    let started = Instant::now();
    unavailable(c.authorize_liveblocks_room(ask(&token, &doc)).await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    env.liveblocks.set_latency(Duration::ZERO);

    // Down: refused at once; the hung call and four of these are five failures in a row,
    // after which the gate answers without asking.
    env.liveblocks.set_mode(LiveblocksMode::Down);
    for _ in 0..4 {
        let started = Instant::now();
        unavailable(c.authorize_liveblocks_room(ask(&token, &doc)).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let asked = env.liveblocks.authorize_requests();
    unavailable(c.authorize_liveblocks_room(ask(&token, &doc)).await);
    assert_eq!(env.liveblocks.authorize_requests(), asked);

    // Back up: after the cooldown the next call goes through.
    env.liveblocks.set_mode(LiveblocksMode::Up);
    support::eventually("gate open", Duration::from_secs(10), || {
        let mut c = c.clone();
        let token = token.clone();
        let doc = doc.clone();
        async move { c.authorize_liveblocks_room(ask(&token, &doc)).await.is_ok() }
    })
    .await;
}

#[tokio::test]
async fn without_a_key_no_token_is_issued() {
    let env = support::start_with(false).await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let token = token_of(&env, "user_m", ORG, "org:member");
    let e = c
        .authorize_liveblocks_room(ask(&token, &doc))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(env.liveblocks.authorize_requests(), 0);
}

#[tokio::test]
async fn each_outcome_is_counted() {
    let env = support::start().await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let member = token_of(&env, "user_m", ORG, "org:member");
    let unknown = format!("doc:{}", uuid::Uuid::now_v7());
    let count = |outcome: &'static str| {
        let env = &env;
        async move {
            env.metric(&format!(
                "liveblocks_room_tokens_total{{outcome=\"{outcome}\"}}"
            ))
            .await
        }
    };
    assert_eq!(
        count("granted").await,
        Some(0.0),
        "every outcome from the start"
    );
    c.authorize_liveblocks_room(ask(&member, &doc))
        .await
        .unwrap();
    c.authorize_liveblocks_room(ask(&member, &doc))
        .await
        .unwrap();
    // Active in no organization: denied.
    let _ = c
        .authorize_liveblocks_room(env.issuers.user(
            "user_x",
            pb::AuthorizeLiveblocksRoomRequest {
                room_id: doc.clone(),
            },
        ))
        .await;
    let _ = c.authorize_liveblocks_room(ask(&member, &unknown)).await;
    let _ = c.authorize_liveblocks_room(ask(&member, "sheet:1")).await;
    env.liveblocks.set_mode(LiveblocksMode::Down);
    let _ = c.authorize_liveblocks_room(ask(&member, &doc)).await;
    for (outcome, want) in [
        ("granted", 2.0),
        ("denied", 1.0),
        ("not_found", 1.0),
        ("invalid", 1.0),
        ("unavailable", 1.0),
        ("error", 0.0),
    ] {
        assert_eq!(count(outcome).await, Some(want), "{outcome}");
    }
}

/// Liveblocks creates a room when a client connects to it, and a client keeps its token for up
/// to an hour: one issued before a document's deletion can bring its room back after the
/// clean-up deleted it. The clean-up deletes the room again once such tokens have expired
/// (`LIVEBLOCKS_SWEEP_AFTER_SECS` after the document's deletion), then forgets it.
#[tokio::test]
async fn a_room_brought_back_by_a_token_held_across_its_deletion_is_deleted_again() {
    let env = support::start_custom(true, |c| {
        c.liveblocks.liveblocks_sweep_after_secs = MIN_SWEEP_AFTER_SECS
    })
    .await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let held = c
        .authorize_liveblocks_room(ask(&token_of(&env, "user_m", ORG, "org:member"), &doc))
        .await
        .unwrap()
        .into_inner()
        .token;
    c.delete_room_item(env.member(
        "user_m",
        ORG,
        pb::DeleteRoomItemRequest {
            kind: pb::ItemKind::Document.into(),
            item_id: doc.strip_prefix("doc:").unwrap().into(),
        },
    ))
    .await
    .unwrap();
    let deletions = |env: &Env| {
        let doc = doc.clone();
        env.liveblocks
            .deleted()
            .into_iter()
            .filter(|r| *r == doc)
            .count()
    };
    support::eventually("the room deleted", Duration::from_secs(10), || async {
        deletions(&env) == 1
    })
    .await;
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM liveblocks_cleanup_jobs WHERE round = 1 AND enqueued_at > now()"
        )
        .await,
        1,
        "its second deletion is scheduled"
    );
    // A client that held the token reconnects: the room is back. Then the tokens issued before
    // the deletion have expired: the sweep is due (the hour passes in the database).
    env.liveblocks.connect(&held, &doc).unwrap();
    env.sql(
        "UPDATE liveblocks_cleanup_jobs SET enqueued_at = now(), next_attempt_at = now() WHERE round = 1",
    )
    .await;
    support::eventually(
        "the room deleted again",
        Duration::from_secs(15),
        || async { deletions(&env) == 2 },
    )
    .await;
    support::eventually("the job forgotten", Duration::from_secs(10), || async {
        env.count("liveblocks_cleanup_jobs").await == 0
    })
    .await;
    assert!(
        env.liveblocks.connect(&held, "doc:other").is_err(),
        "the stand-in admits a token to its room only"
    );
}

/// The sweep after a deletion must outlive every token issued before it, and Liveblocks
/// publishes no token lifetime: a token whose own `exp` lives longer than
/// `LIVEBLOCKS_SWEEP_AFTER_SECS` less a minute is withheld (INTERNAL, counted), never handed
/// to the client; an hour's token passes.
#[tokio::test]
async fn a_token_living_longer_than_the_sweep_allows_is_withheld() {
    let env =
        support::start_custom(true, |c| c.liveblocks.liveblocks_sweep_after_secs = 3900).await;
    let (_, doc) = fixture(&env).await;
    let mut c = env.client().await;
    let member = token_of(&env, "user_m", ORG, "org:member");

    env.liveblocks.set_token_secs(2 * 3600);
    let e = c
        .authorize_liveblocks_room(ask(&member, &doc))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(!e.message().contains("ey"), "{e:?}");
    assert_eq!(
        env.liveblocks.authorizations().len(),
        1,
        "Liveblocks was asked"
    );
    assert_eq!(
        env.metric(r#"liveblocks_room_tokens_total{outcome="too_long_lived"}"#)
            .await,
        Some(1.0)
    );
    // Just past the bound: 3900 - 60 s.
    env.liveblocks.set_token_secs(3841);
    c.authorize_liveblocks_room(ask(&member, &doc))
        .await
        .unwrap_err();

    env.liveblocks.set_token_secs(3600);
    let token = c
        .authorize_liveblocks_room(ask(&member, &doc))
        .await
        .unwrap()
        .into_inner()
        .token;
    env.liveblocks.connect(&token, &doc).unwrap();
    assert_eq!(
        env.metric(r#"liveblocks_room_tokens_total{outcome="too_long_lived"}"#)
            .await,
        Some(2.0)
    );
}
