//! Who may enter a Liveblocks room: the room id names a room (`room:`) or an item (`doc:`,
//! `code:`, `whiteboard:`), which names its workspace; a user whose active organization is
//! that workspace and whose membership stands enters it with the permissions of their role.

use super::access::{Caller, check_standing, require_active_user};
use crate::error::Error;
use crate::model::ItemKind;
use crate::model::kinds::ROOM_PREFIX;
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::AsyncPgConnection;
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;

/// Longest Liveblocks room id (Liveblocks' limit).
pub const MAX_ROOM_ID: usize = 128;

/// Full access to the room's storage, presence and comments.
pub const WRITE: &[&str] = &["room:write"];
/// Sees the room and shows their own presence; changes nothing.
pub const READ: &[&str] = &["room:read", "room:presence:write"];

/// What a Liveblocks room id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveblocksRoom {
    /// A room's own (presence) room, `room:{id}`.
    Room(Uuid),
    /// An item's room, `{prefix}:{id}`.
    Item(ItemKind, Uuid),
}

impl LiveblocksRoom {
    /// Reads `{prefix}:{uuid}` with one of our prefixes; anything else is INVALID_ARGUMENT.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Invalid(format!(
                "room_id must be `room:`, `doc:`, `code:` or `whiteboard:` and a UUID (at most {MAX_ROOM_ID} characters)"
            ))
        };
        if id.len() > MAX_ROOM_ID {
            return Err(bad());
        }
        let (prefix, rest) = id.split_once(':').ok_or_else(bad)?;
        let uuid = Uuid::try_parse(rest).map_err(|_| bad())?;
        // Only the canonical spelling names a room: the id is Liveblocks' key as we write it.
        if uuid.to_string() != rest {
            return Err(bad());
        }
        if prefix == ROOM_PREFIX {
            return Ok(Self::Room(uuid));
        }
        ItemKind::ALL
            .into_iter()
            .find(|k| k.prefix() == prefix)
            .map(|k| Self::Item(k, uuid))
            .ok_or_else(bad)
    }

    /// The room id as Liveblocks knows it.
    pub fn id(self) -> String {
        match self {
            Self::Room(id) => crate::model::RoomKind::liveblocks_room(id),
            Self::Item(kind, id) => kind.liveblocks_room(id),
        }
    }

    /// Select `clerk_org_id` of the owner of the room or item: in organization `$1` the row
    /// `$2`; nothing for a deleted room or workspace.
    fn owner_sql(self) -> &'static str {
        macro_rules! item {
            ($table:literal) => {
                concat!(
                    "SELECT w.clerk_org_id FROM workspaces w JOIN ",
                    $table,
                    " i ON i.workspace_id = w.id",
                    " JOIN rooms r ON r.workspace_id = i.workspace_id AND r.id = i.room_id",
                    " WHERE w.clerk_org_id = $1 AND i.id = $2",
                    " AND r.deleted_at IS NULL AND w.deleted_at IS NULL"
                )
            };
        }
        match self {
            Self::Room(_) => {
                "SELECT w.clerk_org_id FROM workspaces w JOIN rooms r ON r.workspace_id = w.id
                  WHERE w.clerk_org_id = $1 AND r.id = $2
                    AND r.deleted_at IS NULL AND w.deleted_at IS NULL"
            }
            Self::Item(ItemKind::Document, _) => item!("documents"),
            Self::Item(ItemKind::CodeFile, _) => item!("code_files"),
            Self::Item(ItemKind::Whiteboard, _) => item!("whiteboards"),
        }
    }

    fn uuid(self) -> Uuid {
        match self {
            Self::Room(id) | Self::Item(_, id) => id,
        }
    }
}

/// The permissions a caller gets on its workspace's rooms: editors (`ORG_EDITOR_ROLES`, by
/// default admins and members) edit documents, code and whiteboards; any other role only
/// reads and shows presence.
pub fn permissions_for(caller: &Caller) -> &'static [&'static str] {
    if caller.edits_rooms() { WRITE } else { READ }
}

/// Who enters which room with which permissions (what Liveblocks is asked to sign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEntry {
    pub room_id: String,
    pub user_id: String,
    /// The token's `name` made displayable as Clerk's names are stored
    /// ([`input_validation::claimed_name`]); none when nothing visible is left.
    pub name: Option<String>,
    /// The token's `picture` when it is an `https` URL ([`input_validation::claimed_image_url`]).
    pub avatar: Option<String>,
    pub permissions: &'static [&'static str],
}

/// Decides whether `caller` may enter `room`: NOT_FOUND when the caller's active organization
/// has no such live room (whether another organization has one is never told), PERMISSION_DENIED
/// for services, for users with no active organization, and for users removed (or whose
/// membership was removed or role changed) after their token.
pub async fn room_entry(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room: LiveblocksRoom,
) -> Result<RoomEntry, Error> {
    let Caller::User {
        id,
        org_id,
        name,
        avatar,
        ..
    } = caller
    else {
        return Err(Error::Denied(
            "Liveblocks room tokens are issued to users only".into(),
        ));
    };
    #[derive(QueryableByName)]
    struct Owner {
        #[diesel(sql_type = Text)]
        clerk_org_id: String,
    }
    let Some(org) = org_id else {
        return Err(Error::Denied(
            "Liveblocks room tokens need an active organization: choose one in Clerk".into(),
        ));
    };
    // The caller's standing first: a member removed since their token was issued learns
    // nothing of which rooms exist.
    check_standing(conn, caller, org).await?;
    require_active_user(conn, caller).await?;
    let owner: Owner = prepared(room.owner_sql())
        .bind::<Text, _>(org)
        .bind::<SqlUuid, _>(room.uuid())
        .one(conn)
        .await
        .optional()?
        .ok_or_else(|| {
            Error::NotFound("no such Liveblocks room in your active workspace".into())
        })?;
    caller.check_org(&owner.clerk_org_id)?;
    Ok(RoomEntry {
        room_id: room.id(),
        user_id: id.clone(),
        // Other users see both: the token's raw claims could reorder a name or point an image
        // at any scheme.
        name: name.as_deref().and_then(input_validation::claimed_name),
        avatar: avatar
            .as_deref()
            .and_then(input_validation::claimed_image_url)
            .map(str::to_owned),
        permissions: permissions_for(caller),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::roles::Roles;

    #[test]
    fn room_ids_parse_only_with_our_prefixes_and_canonical_uuids() {
        let id = Uuid::now_v7();
        for (text, want) in [
            (format!("room:{id}"), LiveblocksRoom::Room(id)),
            (
                format!("doc:{id}"),
                LiveblocksRoom::Item(ItemKind::Document, id),
            ),
            (
                format!("code:{id}"),
                LiveblocksRoom::Item(ItemKind::CodeFile, id),
            ),
            (
                format!("whiteboard:{id}"),
                LiveblocksRoom::Item(ItemKind::Whiteboard, id),
            ),
        ] {
            assert_eq!(LiveblocksRoom::parse(&text).unwrap(), want);
            assert_eq!(want.id(), text);
        }
        let upper = id.to_string().to_uppercase();
        for bad in [
            String::new(),
            id.to_string(),
            format!("sheet:{id}"),
            format!("doc:{upper}"),
            format!("doc:{id}x"),
            format!("doc:{id}:x"),
            "doc:*".to_owned(),
        ] {
            assert!(LiveblocksRoom::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A user whose token states `role` in its active organization (none: no organization).
    fn user(role: Option<&str>, roles: &Roles) -> Caller {
        let org = role.map(|r| token_auth::ActiveOrg {
            id: "org_1".into(),
            slug: None,
            role: r.into(),
        });
        let principal = token_auth::Principal::User(token_auth::UserPrincipal {
            user_id: "user_1".into(),
            name: None,
            email: None,
            picture: None,
            org,
            issued_at: 0,
            expires_at: 0,
            actor: None,
        });
        Caller::from_principal(Some(&principal), roles).unwrap()
    }

    #[test]
    fn editors_and_admins_write_other_roles_read() {
        let defaults = Roles::default();
        for (role, want) in [
            (Some("org:admin"), WRITE),
            (Some("org:member"), WRITE),
            (Some("org:billing"), READ),
            (None, READ),
        ] {
            assert_eq!(permissions_for(&user(role, &defaults)), want, "{role:?}");
        }
        let key = |k| crate::model::Role::key(k).unwrap();
        let renamed = Roles::new(vec![key("org:owner")], vec![key("org:editor")]);
        for (role, want) in [
            ("org:owner", WRITE),
            ("org:editor", WRITE),
            ("org:admin", READ),
            ("org:member", READ),
        ] {
            assert_eq!(permissions_for(&user(Some(role), &renamed)), want, "{role}");
        }
    }
}
