//! Clerk's v2 session tokens, as Clerk mints them (the active organization in `o`, its role key
//! without the `org:` prefix, a 60 s lifetime), decide access like the template tokens.

use crate::support;

use support::start_with;
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

#[tokio::test]
async fn v2_session_tokens_carry_the_role_of_their_o_claim() {
    let env = start_with(false).await;
    env.workspace("org_a").await;
    let mut c = env.client().await;
    let docs = c
        .create_room(env.issuers.session(
            "user_1",
            "org_a",
            "org:member",
            pb::CreateRoomRequest {
                clerk_org_id: "org_a".into(),
                kind: pb::RoomKind::Document.into(),
                name: "r".into(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap();
    let item = c
        .create_room_item(env.issuers.session(
            "user_1",
            "org_a",
            "org:member",
            pb::CreateRoomItemRequest {
                room_id: docs.id.clone(),
                kind: pb::ItemKind::Document.into(),
                name: "mine".into(),
                language: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let delete = || pb::DeleteRoomItemRequest {
        kind: pb::ItemKind::Document.into(),
        item_id: item.id.clone(),
    };
    // `rol: "member"`: another member may not delete it; `rol: "admin"` may.
    let refused = c
        .delete_room_item(
            env.issuers
                .session("user_2", "org_a", "org:member", delete()),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    c.delete_room_item(
        env.issuers
            .session("user_3", "org_a", "org:admin", delete()),
    )
    .await
    .unwrap();
    assert_eq!(env.count("documents").await, 0);

    // A pending session (an organization still to choose) is signed out.
    let clerk = &env.issuers.clerk;
    let org = stand_ins::OrgClaim {
        id: "org_a".into(),
        role: "org:member".into(),
        slug: String::new(),
    };
    let pending = clerk.sign(&clerk.session_claims("user_1", Some(&org), Some("pending")));
    let list = pb::ListChannelsRequest {
        clerk_org_id: "org_a".into(),
        ..Default::default()
    };
    let refused = c
        .list_channels(support::bearer(list, &pending))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}
