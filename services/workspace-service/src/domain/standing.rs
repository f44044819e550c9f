//! What decides a user's access to a workspace, as stored: the workspace, the user's
//! membership, whether the user was removed and when Clerk last revoked all their sessions. One statement by key, cached per replica by
//! (organization, user) in an [`AccessCache`]; the token's issue time is applied afterwards
//! ([`AccessFacts::standing`]), so one entry serves every token of the caller.

use super::workspaces::WorkspaceRecord;
use crate::error::Error;
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::AsyncPgConnection;
use service_runtime::Settled;
use service_runtime::prepared;
use std::sync::Arc;
use uuid::Uuid;

/// The replica's cache of [`AccessFacts`] by (Clerk organization id, Clerk user id).
pub type AccessCache = coherent_cache::Coherent<(String, String), Arc<AccessFacts>>;

/// The channel the database's triggers notify with the keys of changed rows.
pub const NOTIFY_CHANNEL: &str = "vbase_access";

/// The triggers that send [`NOTIFY_CHANNEL`]'s notifications (migration `access_notifications`).
pub const NOTIFY_TRIGGERS: &[coherent_cache::Trigger] = &[
    ("memberships", "access_rows"),
    ("memberships", "access_update"),
    ("memberships", "access_truncate"),
    ("removed_users", "access_rows"),
    ("removed_users", "access_truncate"),
    ("user_revocations", "access_rows"),
    ("user_revocations", "access_truncate"),
    ("workspaces", "access_rows"),
    ("workspaces", "access_update"),
    ("workspaces", "access_truncate"),
];

/// An access cache of at most `bytes` (0: off).
pub fn access_cache(bytes: u64) -> AccessCache {
    AccessCache::new(bytes, |(org, user), facts| {
        (std::mem::size_of::<((String, String), Arc<AccessFacts>)>()
            + std::mem::size_of::<AccessFacts>()
            + 64
            + org.len()
            + user.len()
            + facts.heap_bytes()) as u64
    })
}

/// Applies one notification of [`NOTIFY_CHANNEL`] (see the migration that adds its triggers).
pub fn apply_notification(cache: &AccessCache, payload: &str) {
    let mut parts = payload.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("m"), Some(org), Some(user)) => cache.invalidate(&(org.to_owned(), user.to_owned())),
        (Some("u"), Some(user), None) => cache.invalidate_where(|(_, u)| u == user),
        (Some("w"), Some(org), None) => cache.invalidate_where(|(o, _)| o == org),
        _ => cache.clear(),
    }
}

/// The stored facts; the workspace is absent when none live has the organization's id.
#[derive(Debug, Clone)]
pub struct AccessFacts {
    pub workspace: Option<WorkspaceRecord>,
    removed_at: Option<DateTime<Utc>>,
    /// When Clerk last revoked all the user's sessions (a ban: `user_revocations`).
    revoked_at: Option<DateTime<Utc>>,
    membership: Option<Membership>,
}

#[derive(Debug, Clone)]
struct Membership {
    deleted: bool,
    role: String,
    /// When it was deleted, or last changed.
    changed_at: Option<DateTime<Utc>>,
}

/// How long before a token's `iat` a change still counts as made after it. `iat` has whole
/// seconds (a token minted at 12:00:00.8, after a removal at 12:00:00.5, says 12:00:00), and
/// the webhook's time and the token's come from different Clerk clocks (a second allowed).
/// Counting a change early refuses only a token minted within that margin after it and after
/// a later change that undid it (a member removed and added back at once, a role changed and
/// changed back) until that later change's webhook arrives: the margin stays short.
pub const ISSUED_AT_MARGIN_SECS: i64 = 1;

impl AccessFacts {
    /// What changed after a token issued at `issued_at` (seconds), or at most
    /// [`ISSUED_AT_MARGIN_SECS`] before it. A ban counts like a removal: Clerk revoked every
    /// session of the user, so every token issued before the revocation is refused, while one
    /// issued after it (after an unban: Clerk lets no banned user sign in) passes.
    pub fn standing(&self, issued_at: i64) -> Standing {
        let issued = DateTime::from_timestamp(issued_at.saturating_sub(ISSUED_AT_MARGIN_SECS), 0)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let changed = self
            .membership
            .as_ref()
            .filter(|m| m.changed_at.is_some_and(|at| at >= issued));
        Standing {
            removed: self.removed_at.is_some_and(|at| at >= issued),
            revoked: self.revoked_at.is_some_and(|at| at >= issued),
            membership_deleted: changed.map(|m| m.deleted),
            role: changed.map(|m| m.role.clone()),
        }
    }

    fn heap_bytes(&self) -> usize {
        let w = self.workspace.as_ref().map_or(0, |w| {
            std::mem::size_of::<WorkspaceRecord>()
                + w.clerk_org_id.len()
                + w.name.len()
                + w.slug.as_ref().map_or(0, String::len)
                + w.owner_clerk_id.as_ref().map_or(0, String::len)
        });
        w + self.membership.as_ref().map_or(0, |m| m.role.len())
    }
}

/// One row of `facts_sql!`.
#[derive(QueryableByName)]
pub struct FactsRow {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    clerk_org_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    slug: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    owner_clerk_id: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    source_updated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    updated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    removed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    revoked_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Bool>)]
    membership_deleted: Option<bool>,
    #[diesel(sql_type = Nullable<Text>)]
    role: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    membership_changed_at: Option<DateTime<Utc>>,
}

impl FactsRow {
    fn facts(self) -> AccessFacts {
        let workspace = match (
            self.id,
            self.clerk_org_id,
            self.name,
            self.source_updated_at,
            self.created_at,
            self.updated_at,
        ) {
            (Some(id), Some(clerk_org_id), Some(name), Some(s), Some(c), Some(u)) => {
                Some(WorkspaceRecord {
                    id,
                    clerk_org_id,
                    name,
                    slug: self.slug,
                    owner_clerk_id: self.owner_clerk_id,
                    source_updated_at: s,
                    created_at: c,
                    updated_at: u,
                })
            }
            _ => None,
        };
        let membership = match (self.membership_deleted, self.role) {
            (Some(deleted), Some(role)) => Some(Membership {
                deleted,
                role,
                changed_at: self.membership_changed_at,
            }),
            _ => None,
        };
        AccessFacts {
            workspace,
            removed_at: self.removed_at,
            revoked_at: self.revoked_at,
            membership,
        }
    }
}

/// The statement that reads the facts of user `$2` in organization `$1`: one row, the
/// workspace's columns null when none is live. A statement that reads more in the same round
/// trip selects from it as a subquery (`concat!(facts_sql!(), ...)`).
macro_rules! facts_sql {
    () => {
        "SELECT w.id, w.clerk_org_id, w.name, w.slug, w.owner_clerk_id, w.source_updated_at,
                w.created_at, w.updated_at,
                (SELECT removed_at FROM removed_users WHERE clerk_user_id = $2) AS removed_at,
                (SELECT revoked_at FROM user_revocations WHERE clerk_user_id = $2) AS revoked_at,
                m.deleted AS membership_deleted, m.role,
                CASE WHEN m.deleted THEN m.deleted_at ELSE m.source_updated_at END AS membership_changed_at
           FROM (SELECT 1) one
           LEFT JOIN workspaces w ON w.clerk_org_id = $1 AND w.deleted_at IS NULL
           LEFT JOIN memberships m ON m.workspace_id = w.id AND m.clerk_user_id = $2"
    };
}
pub(crate) use facts_sql;

/// The facts for `user` in `org`: from the cache when it may answer, else one statement whose
/// answer the cache keeps (unless a change was heard meanwhile). A call reading a database
/// replica (`on_replica`) that the cache cannot answer is sent to the primary
/// ([`ON_PRIMARY`]): the replica's rows may predate a revocation.
pub async fn access_facts(
    conn: &mut AsyncPgConnection,
    cache: Option<&AccessCache>,
    on_replica: bool,
    org: &str,
    user: &str,
) -> Result<Arc<AccessFacts>, Error> {
    let pending = match cached(cache, org, user) {
        Ok(hit) => return Ok(hit),
        Err(_) if on_replica => return Err(ON_PRIMARY),
        Err(pending) => pending,
    };
    let row: FactsRow = prepared(facts_sql!())
        .bind::<Text, _>(org)
        .bind::<Text, _>(user)
        .one(conn)
        .await?;
    Ok(pending.remember(row))
}

/// A user's access that the cache could not answer, on a database replica: read again on the
/// primary.
pub const ON_PRIMARY: Error =
    Error::OnPrimary("an access check the cache could not answer is made on the primary");

/// The cached facts for `user` in `org`, or what it takes to remember the facts a statement
/// reads now ([`Pending::remember`]).
pub fn cached<'c>(
    cache: Option<&'c AccessCache>,
    org: &str,
    user: &str,
) -> Result<Arc<AccessFacts>, Pending<'c>> {
    let key = (org.to_owned(), user.to_owned());
    if let Some(hit) = cache.and_then(|c| c.get(&key)) {
        return Ok(hit);
    }
    // Taken before the statement: a change heard while it runs keeps its answer out.
    let ticket = cache.map(|c| (c, c.ticket()));
    Err(Pending { ticket, key })
}

/// A cache miss whose facts are being read.
pub struct Pending<'c> {
    ticket: Option<(&'c AccessCache, coherent_cache::Ticket)>,
    key: (String, String),
}

impl Pending<'_> {
    /// The facts `row` holds, kept in the cache unless a change was heard since the miss.
    /// Only rows read on the primary come here: a replica's miss goes there first
    /// ([`ON_PRIMARY`]).
    pub fn remember(self, row: FactsRow) -> Arc<AccessFacts> {
        let facts = Arc::new(row.facts());
        if let Some((c, t)) = self.ticket {
            c.insert(t, self.key, facts.clone());
        }
        facts
    }
}

/// What our data learned about a user after their token was issued.
#[derive(Debug)]
pub struct Standing {
    removed: bool,
    revoked: bool,
    membership_deleted: Option<bool>,
    role: Option<String>,
}

impl Standing {
    /// Refuses a user deleted or banned, or whose membership was removed or role changed,
    /// after the token stating `role` was issued.
    pub fn verdict(&self, role: Option<&String>) -> Result<(), Error> {
        if self.removed {
            return Err(Error::Denied(
                "this user was deleted in Clerk after the token was issued".into(),
            ));
        }
        if self.revoked {
            return Err(Error::Denied(
                "this user's sessions were revoked in Clerk (banned or deprovisioned) after the token was issued"
                    .into(),
            ));
        }
        match (self.membership_deleted, &self.role) {
            (Some(true), _) => Err(Error::Denied(
                "your membership of this workspace was removed after the token was issued".into(),
            )),
            (Some(false), Some(now)) if Some(now) != role => Err(Error::Denied(format!(
                "your role in this workspace changed to {now} after the token was issued: get a fresh token"
            ))),
            _ => Ok(()),
        }
    }
}
