//! Who is calling, and where they may act: the workspace of a row is resolved and checked
//! against the caller's active organization before anything else happens.

use super::roles::Roles;
use super::standing::{AccessCache, access_facts};
use super::workspaces::{WorkspaceRecord, find_workspace};
use crate::error::Error;
use crate::model::OrgId;
use crate::model::RoomKind;
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::AsyncPgConnection;
use service_runtime::Settled;
use service_runtime::prepared;
use token_auth::Principal;
use uuid::Uuid;

/// The verified caller of a workspace RPC.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An internal service: may do everything.
    Service,
    /// A Clerk user with their active organization (if any) and role in it.
    User {
        /// `user_...`
        id: String,
        /// Active organization id.
        org_id: Option<String>,
        /// The active-organization role the token states (normalised).
        role: Option<String>,
        /// What each role may do here (the service's settings).
        roles: Roles,
        /// When the token was issued (`iat`, seconds): what the token says is as of then.
        issued_at: i64,
        /// Display name and avatar URL as Clerk put them in the token (`name`, `picture`).
        name: Option<String>,
        avatar: Option<String>,
        /// The replica's access cache, if it has one.
        access: Option<AccessCache>,
        /// The call reads a database replica, whose rows may be older than a change the cache
        /// already heard of: they neither fill the cache nor decide access.
        on_replica: bool,
    },
}

impl Caller {
    /// From the principal the auth layer verified; `roles` says what its role may do.
    pub fn from_principal(p: Option<&Principal>, roles: &Roles) -> Result<Self, Error> {
        match p {
            Some(Principal::Service(_)) => Ok(Caller::Service),
            Some(Principal::User(u)) => Ok(Caller::User {
                id: u.user_id.clone(),
                org_id: u.org.as_ref().map(|o| o.id.clone()),
                role: u.org.as_ref().map(|o| o.role.clone()),
                roles: roles.clone(),
                issued_at: u.issued_at,
                name: u.name.clone(),
                avatar: u.picture.clone(),
                access: None,
                on_replica: false,
            }),
            None => Err(Error::Denied("no verified caller".into())),
        }
    }

    /// The caller, checked against the replica's access cache `cache`.
    pub fn with_access(mut self, cache: Option<&AccessCache>) -> Self {
        if let Caller::User { access, .. } = &mut self {
            access.clone_from(&cache.cloned());
        }
        self
    }

    /// The caller of a call that reads a database replica: the access cache answers it, but a
    /// miss is decided on the primary ([`Error::OnPrimary`]): a replica's rows may predate a
    /// revocation, and, kept, would stay cached after the cache applied its notification.
    pub fn reading_replica(mut self) -> Self {
        if let Caller::User { on_replica, .. } = &mut self {
            *on_replica = true;
        }
        self
    }

    /// The caller of a read that must see a given position (`x-vbase-lsn`, or its own recent
    /// write): a change made through another process may not have reached this replica's
    /// caches yet, so it reads the database as with the caches off.
    pub fn reading_through(mut self) -> Self {
        if let Caller::User { access, .. } = &mut self {
            *access = None;
        }
        self
    }

    /// Whether this call's access is decided on the primary from the start: a user in their
    /// active organization whom this replica's access cache cannot answer now (a miss, a
    /// cache not answering or off, a read past the caches for a position).
    pub fn decides_on_primary(&self) -> bool {
        match self {
            Caller::User {
                id,
                org_id: Some(org),
                access,
                ..
            } => !access
                .as_ref()
                .is_some_and(|c| c.answers(&(org.clone(), id.clone()))),
            _ => false,
        }
    }

    /// Whether this call reads a database replica ([`Caller::reading_replica`]).
    pub fn on_replica(&self) -> bool {
        matches!(
            self,
            Caller::User {
                on_replica: true,
                ..
            }
        )
    }

    /// Whether what this call reads may fill the access cache.
    pub fn fills_access(&self) -> bool {
        match self {
            Caller::User { on_replica, .. } => !*on_replica,
            Caller::Service => false,
        }
    }

    /// The replica's access cache, for users.
    pub fn access(&self) -> Option<&AccessCache> {
        match self {
            Caller::User { access, .. } => access.as_ref(),
            Caller::Service => None,
        }
    }

    /// Passes when the caller may act in the workspace of Clerk organization `org`.
    pub fn check_org(&self, org: &str) -> Result<(), Error> {
        match self {
            Caller::Service => Ok(()),
            Caller::User {
                org_id: Some(o), ..
            } if o == org => Ok(()),
            Caller::User { org_id: None, .. } => Err(Error::Denied(
                "no active organization in the token: select the workspace in Clerk first".into(),
            )),
            Caller::User { .. } => Err(Error::Denied(
                "not in your active workspace: switch the active organization to act there".into(),
            )),
        }
    }

    /// Passes for services and users whose role is an admin role (`ORG_ADMIN_ROLES`; call
    /// after [`Caller::check_org`]).
    pub fn require_admin(&self, action: &str) -> Result<(), Error> {
        match self {
            Caller::Service => Ok(()),
            Caller::User {
                role: Some(role),
                roles,
                ..
            } if roles.administers(role) => Ok(()),
            Caller::User { roles, .. } => Err(Error::Denied(format!(
                "{action} needs an admin role ({})",
                roles.admin_names()
            ))),
        }
    }

    /// Whether the caller writes in Liveblocks rooms (`ORG_EDITOR_ROLES` and the admin roles);
    /// services enter no room.
    pub fn edits_rooms(&self) -> bool {
        match self {
            Caller::User {
                role: Some(role),
                roles,
                ..
            } => roles.edits_rooms(role),
            Caller::User { .. } | Caller::Service => false,
        }
    }

    /// Passes for the row's creator `created_by`, for users with an admin role and for services
    /// (call after the scope check).
    pub fn require_creator_or_admin(&self, created_by: &str, action: &str) -> Result<(), Error> {
        if self.user_id() == Some(created_by) {
            return Ok(());
        }
        self.require_admin(action)
    }

    /// Passes for the row's creator `created_by`, for users whose role edits rooms
    /// (`ORG_EDITOR_ROLES` and the admin roles) and for services (call after the scope check).
    pub fn require_creator_or_editor(&self, created_by: &str, action: &str) -> Result<(), Error> {
        match self {
            Caller::Service => Ok(()),
            Caller::User { id, .. } if id.as_str() == created_by => Ok(()),
            _ if self.edits_rooms() => Ok(()),
            Caller::User { .. } => Err(Error::Denied(format!(
                "{action} needs a role that edits rooms (ORG_EDITOR_ROLES or ORG_ADMIN_ROLES)"
            ))),
        }
    }

    /// The user id, for users.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Caller::Service => None,
            Caller::User { id, .. } => Some(id),
        }
    }

    /// What to record as creator.
    pub fn actor(&self) -> String {
        self.user_id().unwrap_or("service").to_owned()
    }
}

/// The answer for an id the caller cannot see: NOT_FOUND for services, PERMISSION_DENIED for
/// users (they must not learn whether another workspace holds it).
pub fn unseen(caller: &Caller, what: &str) -> Error {
    match caller {
        Caller::Service => Error::NotFound(format!("no such {what}")),
        Caller::User { .. } => Error::Denied(format!("{what} not found in your active workspace")),
    }
}

/// A write's row whose parent (`what`: its channel, room or workspace) was deleted after the
/// write's scope check passed: the foreign-key violation answers as the parent [`unseen`] (as
/// a call made after the deletion would be), any other error as itself.
pub fn parent_gone<'a>(
    caller: &'a Caller,
    what: &'a str,
) -> impl FnOnce(diesel::result::Error) -> Error + 'a {
    move |e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _,
        ) => unseen(caller, what),
        e => e.into(),
    }
}

/// Holds room `room` of `workspace` live until the caller's transaction ends: a share lock on
/// its row, which the room's deletion (an update of the row) waits for, and which waits for a
/// deletion under way and then finds the room deleted. A write in the room that takes it comes
/// wholly before the room's deletion, or is refused as [`unseen`] `what`.
pub async fn hold_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    workspace: Uuid,
    room: Uuid,
    what: &str,
) -> Result<(), Error> {
    let sql = "SELECT true AS _held FROM rooms
          WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL FOR SHARE";
    hold(conn, caller, sql, workspace, room, what).await
}

/// Holds channel `channel` of `workspace` live until the caller's transaction ends, as
/// [`hold_room`] holds a room: a write that takes it comes wholly before the channel's
/// deletion, or is refused as [`unseen`] `what`.
pub async fn hold_channel(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    workspace: Uuid,
    channel: Uuid,
    what: &str,
) -> Result<(), Error> {
    let sql = "SELECT true AS _held FROM channels
          WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL FOR SHARE";
    hold(conn, caller, sql, workspace, channel, what).await
}

async fn hold(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    sql: &'static str,
    workspace: Uuid,
    id: Uuid,
    what: &str,
) -> Result<(), Error> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        _held: bool,
    }
    let held: Option<Held> = prepared(sql)
        .bind::<SqlUuid, _>(workspace)
        .bind::<SqlUuid, _>(id)
        .one(conn)
        .await
        .optional()?;
    held.map(|_| ()).ok_or_else(|| unseen(caller, what))
}

/// Access follows Clerk's changes, not only the token: a user deleted, or whose membership of
/// `org` was removed or whose role there changed, after the token was issued is refused until
/// they get a fresh token (which then states the new role, or no longer names the workspace).
/// Services pass. One statement by key, or the replica's access cache.
pub async fn check_standing(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    org: &str,
) -> Result<(), Error> {
    let Caller::User {
        id,
        role,
        issued_at,
        ..
    } = caller
    else {
        return Ok(());
    };
    access_facts(conn, caller.access(), caller.on_replica(), org, id)
        .await?
        .standing(*issued_at)
        .verdict(role.as_ref())
}

/// The workspace of `org`, if the caller may act there. For a user, the workspace and what
/// decides their access come from one statement by key, or from the replica's access cache.
pub async fn workspace_for(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    org: &OrgId,
) -> Result<WorkspaceRecord, Error> {
    caller.check_org(org.as_str())?;
    let missing = || Error::NotFound(format!("workspace {org} is not synced (yet)"));
    let Caller::User {
        id,
        role,
        issued_at,
        ..
    } = caller
    else {
        return find_workspace(conn, org.as_str())
            .await?
            .ok_or_else(missing);
    };
    let facts = access_facts(conn, caller.access(), caller.on_replica(), org.as_str(), id).await?;
    let workspace = facts.workspace.clone().ok_or_else(missing)?;
    facts.standing(*issued_at).verdict(role.as_ref())?;
    Ok(workspace)
}

/// The workspace of a row and one detail of the row (a name or a kind).
#[derive(QueryableByName)]
struct Scope {
    #[diesel(sql_type = SqlUuid)]
    workspace_id: Uuid,
    #[diesel(sql_type = Text)]
    clerk_org_id: String,
    #[diesel(sql_type = Text)]
    detail: String,
}

/// The two lookups of a row by id for [`scope`]. Each selects `workspace_id`, `clerk_org_id`
/// and `detail`, and finds nothing in a deleted workspace or room (being purged), so those
/// answer as if they never existed.
pub struct ScopeSql {
    /// In workspace `$1`, the row `$2` (by its primary key): users' calls.
    pub in_workspace: &'static str,
    /// The row `$1` in any workspace (by the plain index on `id`): internal callers, whose
    /// token names no organization.
    pub by_id: &'static str,
}

/// The workspace a caller's lookups by id are confined to: for a user, the workspace of the
/// token's active organization, once their standing there is checked (a user with no active
/// organization, or whose organization has no workspace, sees nothing); `None` for services,
/// which may act in every workspace.
pub async fn lookup_workspace(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    what: &str,
) -> Result<Option<Uuid>, Error> {
    let Caller::User {
        id,
        org_id,
        role,
        issued_at,
        ..
    } = caller
    else {
        return Ok(None);
    };
    let Some(org) = org_id else {
        caller.check_org("")?;
        return Err(unseen(caller, what));
    };
    let facts = access_facts(conn, caller.access(), caller.on_replica(), org, id).await?;
    let workspace = facts
        .workspace
        .as_ref()
        .ok_or_else(|| unseen(caller, what))?
        .id;
    facts.standing(*issued_at).verdict(role.as_ref())?;
    Ok(Some(workspace))
}

/// Resolves the workspace of a child row and checks the caller may act there (see
/// [`ScopeSql`]); returns the row's workspace id and detail.
async fn scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    what: &str,
    sql: &ScopeSql,
    id: Uuid,
) -> Result<(Uuid, String), Error> {
    let found: Option<Scope> = match lookup_workspace(conn, caller, what).await? {
        Some(workspace) => prepared(sql.in_workspace)
            .bind::<SqlUuid, _>(workspace)
            .bind::<SqlUuid, _>(id)
            .one(conn)
            .await
            .optional()?,
        None => prepared(sql.by_id)
            .bind::<SqlUuid, _>(id)
            .one(conn)
            .await
            .optional()?,
    };
    let s = found.ok_or_else(|| unseen(caller, what))?;
    caller
        .check_org(&s.clerk_org_id)
        .map_err(|_| unseen(caller, what))?;
    Ok((s.workspace_id, s.detail))
}

const CHANNEL_SCOPE: ScopeSql = ScopeSql {
    in_workspace: "SELECT c.workspace_id, w.clerk_org_id, c.name AS detail
          FROM channels c JOIN workspaces w ON w.id = c.workspace_id
         WHERE c.workspace_id = $1 AND c.id = $2 AND c.deleted_at IS NULL AND w.deleted_at IS NULL",
    by_id: "SELECT c.workspace_id, w.clerk_org_id, c.name AS detail
          FROM channels c JOIN workspaces w ON w.id = c.workspace_id
         WHERE c.id = $1 AND c.deleted_at IS NULL AND w.deleted_at IS NULL",
};

const ROOM_SCOPE: ScopeSql = ScopeSql {
    in_workspace: "SELECT r.workspace_id, w.clerk_org_id, r.kind AS detail
          FROM rooms r JOIN workspaces w ON w.id = r.workspace_id
         WHERE r.workspace_id = $1 AND r.id = $2 AND r.deleted_at IS NULL AND w.deleted_at IS NULL",
    by_id: "SELECT r.workspace_id, w.clerk_org_id, r.kind AS detail
          FROM rooms r JOIN workspaces w ON w.id = r.workspace_id
         WHERE r.id = $1 AND r.deleted_at IS NULL AND w.deleted_at IS NULL",
};

/// Checks the caller may act on the channel; returns its workspace id.
pub async fn channel_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    channel_id: Uuid,
) -> Result<Uuid, Error> {
    scope(conn, caller, "channel", &CHANNEL_SCOPE, channel_id)
        .await
        .map(|(w, _)| w)
}

/// Checks the caller may act on the room; returns its workspace id and kind.
pub async fn room_scope(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    room_id: Uuid,
) -> Result<(Uuid, RoomKind), Error> {
    let (workspace, kind) = scope(conn, caller, "room", &ROOM_SCOPE, room_id).await?;
    Ok((
        workspace,
        RoomKind::from_db(&kind).map_err(|e| Error::Internal(e.to_string()))?,
    ))
}

/// Checks the caller may act on a row whose room is found by `sql` (see [`scope`]); returns
/// the row's workspace and detail (its creator, for room items).
pub async fn scope_through_room(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    what: &str,
    sql: &ScopeSql,
    id: Uuid,
) -> Result<(Uuid, String), Error> {
    scope(conn, caller, what, sql, id).await
}

/// Refuses writes by a user deleted in Clerk whose token is still valid.
pub async fn require_active_user(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
) -> Result<(), Error> {
    let Some(user) = caller.user_id() else {
        return Ok(());
    };
    #[derive(QueryableByName)]
    struct Removed {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        removed: bool,
    }
    let r: Removed =
        prepared("SELECT EXISTS (SELECT 1 FROM removed_users WHERE clerk_user_id = $1) AS removed")
            .bind::<Text, _>(user)
            .one(conn)
            .await?;
    if r.removed {
        return Err(Error::Denied(
            "this user was deleted in Clerk: its token no longer writes".into(),
        ));
    }
    Ok(())
}
