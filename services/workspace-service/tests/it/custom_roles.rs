//! An instance whose Creator role is `org:owner` and Default role `org:editor`
//! (`ORG_ADMIN_ROLES=org:owner`, `ORG_EDITOR_ROLES=org:owner,org:editor`): those roles
//! administer and edit, `org:admin` and `org:member` are ordinary custom roles, and a bad
//! setting stops the service before it serves.

use crate::room_access::{ask, token_of};
use crate::support::{self, Env};
use tonic::Code;
use vbase_proto::workspace::v1 as pb;
use workspace_service::RoleArgs;

const ORG: &str = "org_a";

/// The service with the owner/editor roles of the module's instance.
async fn start(with_worker: bool) -> Env {
    support::start_custom(with_worker, |c| {
        c.roles = RoleArgs {
            org_admin_roles: "org:owner".into(),
            org_editor_roles: "org:owner,org:editor".into(),
        }
    })
    .await
}

/// Workspace [`ORG`] with one member of each role (`user_<role>`).
async fn members(env: &Env, roles: &[&str]) {
    env.workspace(ORG).await;
    let mut c = env.client().await;
    for role in roles {
        let user = user(role);
        let event = format!("m-{user}");
        c.upsert_membership(env.service(support::membership(&event, 1, ORG, &user, role)))
            .await
            .unwrap();
    }
}

/// The member holding `role`: `org:owner` → `user_owner`.
fn user(role: &str) -> String {
    format!("user_{}", role.trim_start_matches("org:"))
}

/// A request of the member holding `role`, with a token stating it.
fn by<T>(env: &Env, role: &str, msg: T) -> tonic::Request<T> {
    env.issuers.member(&user(role), ORG, role, msg)
}

#[tokio::test]
async fn the_renamed_creator_role_administers_and_org_admin_no_longer_does() {
    let env = start(false).await;
    members(&env, &["org:owner", "org:admin", "org:editor"]).await;
    let mut c = env.client().await;
    let list = pb::ListChannelsRequest {
        clerk_org_id: ORG.into(),
        ..Default::default()
    };
    let channel = c.list_channels(by(&env, "org:editor", list)).await.unwrap();
    let channel = channel.into_inner().channels.remove(0);
    let post = pb::PostMessageRequest {
        channel_id: channel.id.clone(),
        body: "hello".into(),
        author_clerk_id: String::new(),
        request_id: String::new(),
    };
    let message = c.post_message(by(&env, "org:editor", post)).await.unwrap();
    let delete = || pb::DeleteMessageRequest {
        message_id: message.get_ref().message.as_ref().unwrap().id.clone(),
    };
    // org:admin is an ordinary role here: it may not delete another's message...
    let refused = c
        .delete_message(by(&env, "org:admin", delete()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("org:owner"), "{refused:?}");
    assert_eq!(env.count("messages").await, 1);
    // ...the Creator role may.
    let owner_token = || by(&env, "org:owner", delete());
    c.delete_message(owner_token()).await.unwrap();
    assert_eq!(env.count("messages").await, 0);
    let rename = |name: &str| pb::RenameChannelRequest {
        channel_id: channel.id.clone(),
        name: name.into(),
    };
    let refused = c
        .rename_channel(by(&env, "org:admin", rename("by-admin")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    c.rename_channel(by(&env, "org:owner", rename("by-owner")))
        .await
        .unwrap();
}

/// A custom admin role follows Clerk's changes as `org:admin` does: an owner demoted after
/// their token was issued is refused with that token, admin action or not.
#[tokio::test]
async fn a_demoted_owners_earlier_token_is_refused() {
    let env = start(false).await;
    members(&env, &["org:owner"]).await;
    let mut c = env.client().await;
    let list = pb::ListChannelsRequest {
        clerk_org_id: ORG.into(),
        ..Default::default()
    };
    let channel = c.list_channels(by(&env, "org:owner", list)).await.unwrap();
    let channel_id = channel.into_inner().channels.remove(0).id;
    let rename = |name: &str| {
        let rename = pb::RenameChannelRequest {
            channel_id: channel_id.clone(),
            name: name.into(),
        };
        by(&env, "org:owner", rename)
    };
    c.rename_channel(rename("first")).await.unwrap();
    let earlier = rename("second");
    let after_the_token = token_auth::signing::now_secs() - support::T0 + 2;
    c.upsert_membership(env.service(support::membership(
        "demote",
        after_the_token,
        ORG,
        &user("org:owner"),
        "org:editor",
    )))
    .await
    .unwrap();
    let refused = c.rename_channel(earlier).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("role in this workspace changed"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_renamed_default_role_edits_rooms_and_others_read() {
    let env = start(true).await;
    let roles = [
        "org:owner",
        "org:editor",
        "org:member",
        "org:admin",
        "org:guest",
    ];
    members(&env, &roles).await;
    let mut c = env.client().await;
    let room = pb::CreateRoomRequest {
        clerk_org_id: ORG.into(),
        kind: pb::RoomKind::Document.into(),
        name: "Docs".into(),
        request_id: String::new(),
    };
    let room = c.create_room(by(&env, "org:editor", room)).await.unwrap();
    let room_id = room.into_inner().room.unwrap().liveblocks_room_id;
    let write = vec!["room:write".to_owned()];
    let read = vec!["room:read".to_owned(), "room:presence:write".to_owned()];
    let want = [&write, &write, &read, &read, &read];
    for (role, perms) in roles.iter().zip(want) {
        let token = token_of(&env, &user(role), ORG, role);
        let answer = c.authorize_liveblocks_room(ask(&token, &room_id)).await;
        assert_eq!(&answer.unwrap().into_inner().permissions, perms, "{role}");
    }
    // What Liveblocks was asked to sign, not only what was answered.
    let asked = env.liveblocks.authorizations();
    assert_eq!(asked.len(), roles.len());
    for (grant, (role, perms)) in asked.iter().zip(roles.iter().zip(want)) {
        assert_eq!(grant.user_id, user(role));
        assert_eq!(grant.permissions, vec![(room_id.clone(), perms.clone())]);
    }
}

#[tokio::test]
async fn a_bad_role_setting_stops_the_service_naming_it() {
    let issuers = service_harness::Issuers::new().await;
    let db = "postgres://nobody@127.0.0.1:9/none";
    for (admins, editors, var) in [
        ("", "org:member", "ORG_ADMIN_ROLES"),
        ("org:Owner", "org:member", "ORG_ADMIN_ROLES"),
        ("org:owner", "org:editor,editor!", "ORG_EDITOR_ROLES"),
    ] {
        let mut cfg = support::config(db, &issuers, None);
        cfg.roles = RoleArgs {
            org_admin_roles: admins.into(),
            org_editor_roles: editors.into(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Accepted, the service would serve (it starts without its database) until stopped.
        let run = workspace_service::run(cfg, listener, std::future::pending());
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("{admins:?}/{editors:?} accepted: the service serves"))
            .unwrap_err();
        assert!(
            err.to_string().starts_with(var),
            "{admins:?}/{editors:?}: {err}"
        );
    }
}

/// Renaming a room item follows the roles that edit rooms: an editor renames anyone's, a role
/// that only reads rooms renames its own items and no one else's.
#[tokio::test]
async fn only_editors_rename_others_items() {
    let env = start(false).await;
    members(&env, &["org:editor", "org:member", "org:guest"]).await;
    let mut c = env.client().await;
    let room = c
        .create_room(by(
            &env,
            "org:editor",
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
    let mut create = async |role: &str, name: &str| {
        c.create_room_item(by(
            &env,
            role,
            pb::CreateRoomItemRequest {
                room_id: room.id.clone(),
                kind: pb::ItemKind::Document.into(),
                name: name.into(),
                language: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap()
        .id
    };
    let editors = create("org:editor", "Plan").await;
    let guests = create("org:guest", "Notes").await;
    let rename = |role: &str, id: &str, name: &str| {
        by(
            &env,
            role,
            pb::RenameRoomItemRequest {
                kind: pb::ItemKind::Document.into(),
                item_id: id.into(),
                name: name.into(),
            },
        )
    };
    let mut c = env.client().await;
    for reader in ["org:member", "org:guest"] {
        let refused = c
            .rename_room_item(rename(reader, &editors, "Mine now"))
            .await
            .expect_err("a reading role renames no one else's item");
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{reader}: {refused:?}"
        );
        assert!(
            refused.message().contains("ORG_EDITOR_ROLES"),
            "{refused:?}"
        );
    }
    c.rename_room_item(rename("org:guest", &guests, "My notes"))
        .await
        .expect("its own item");
    let renamed = c
        .rename_room_item(rename("org:editor", &guests, "Team notes"))
        .await
        .expect("an editor renames anyone's")
        .into_inner()
        .item
        .unwrap();
    assert_eq!(renamed.name, "Team notes");
}
