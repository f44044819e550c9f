//! Channels of a workspace: created by members, renamed and deleted by admins.

use super::access::workspace_for;
use super::access::{Caller, channel_scope, require_active_user};
use super::changes::record_workspace;
use super::events::timestamp;
use super::listings::{Listed, Listing, ListingCache, MOST_LISTED};
use super::purge::hide_channel;
use super::standing;
use crate::error::Error;
use crate::model::paging::PageRequest;
use crate::model::{Cursor, OrgId, Page};
use crate::schema::channels;
use chrono::{DateTime, Utc};
use coherent_cache::Lookup;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use std::sync::Arc;
use uuid::Uuid;
use vbase_proto::workspace::v1 as pb;
use vbase_proto::workspace::v1::workspace_event::Event;

/// A channel.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = channels)]
pub struct ChannelRecord {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Listed for ChannelRecord {
    fn heap_bytes(&self) -> usize {
        self.name.len() + self.created_by.len()
    }
}

impl crate::model::paging::WireSize for ChannelRecord {
    fn wire_size(&self) -> usize {
        use crate::model::paging::{FIELD, TIMESTAMP, UUID, text};
        FIELD + 2 * UUID + text(&self.name) + TIMESTAMP
    }
}

/// The replica's cache of each workspace's channels (`ListChannels` pages cut from memory).
pub type ChannelList = ListingCache<ChannelRecord>;

/// The channel the database's triggers notify with the workspace id of changed channels.
pub const CHANNELS_NOTIFY: &str = "vbase_channels";

/// The triggers that send [`CHANNELS_NOTIFY`]'s notifications (migration
/// `channel_notifications`).
pub const CHANNELS_TRIGGERS: &[coherent_cache::Trigger] = &[
    ("channels", "channel_rows"),
    ("channels", "channel_truncate"),
];

/// Forgets the channels of `ws` cached here: after a write to them, so that this replica
/// reads it back at once (the others hear it from PostgreSQL).
fn forget(list: &ChannelList, ws: Uuid) {
    list.invalidate(&ws);
}

/// A checked channel name: 1..=80 of lowercase letters, digits, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelName(String);

impl ChannelName {
    /// Trims and lowercases `name`, then checks it.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let n = name.trim().to_lowercase();
        if n.is_empty()
            || n.len() > 80
            || !n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(Error::Invalid(format!(
                "channel name must be 1..=80 lowercase letters, digits, '-' or '_', got {:?}",
                name.chars().take(80).collect::<String>()
            )));
        }
        Ok(Self(n))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn name_taken(e: diesel::result::Error, name: &ChannelName) -> Error {
    match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Error::Exists(format!(
            "a channel named {:?} already exists in this workspace",
            name.as_str()
        )),
        other => other.into(),
    }
}

/// `CreateChannel`, validated.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub org: OrgId,
    pub name: ChannelName,
}

/// Creates a channel.
pub async fn create_channel(
    conn: &mut AsyncPgConnection,
    list: &ChannelList,
    caller: &Caller,
    new: &NewChannel,
) -> Result<ChannelRecord, Error> {
    let ws = workspace_for(conn, caller, &new.org).await?;
    require_active_user(conn, caller).await?;
    let created = conn
        .transaction::<_, Error, _>(async |conn| {
            let c = diesel::insert_into(channels::table)
                .values((
                    channels::id.eq(Uuid::now_v7()),
                    channels::workspace_id.eq(ws.id),
                    channels::name.eq(new.name.as_str()),
                    channels::created_by.eq(caller.actor()),
                ))
                .returning(ChannelRecord::as_returning())
                .one(conn)
                .await
                .map_err(|e| name_taken(e, &new.name))?;
            record_workspace(conn, ws.id, Event::ChannelCreated(c.clone().into()))
                .await?
                .or_deleted()?;
            Ok(c)
        })
        .await;
    forget(list, ws.id);
    created
}

/// Channels of a workspace, oldest first. A user whose access is not cached gets the access
/// facts and the page from one statement: one round trip, like a cached caller's.
pub async fn list_channels(
    conn: &mut AsyncPgConnection,
    list: &ChannelList,
    caller: &Caller,
    org: &OrgId,
    page: &PageRequest,
) -> Result<Page<ChannelRecord>, Error> {
    let (at, id) = page.after_parts();
    let rows = match caller {
        Caller::User {
            id: user,
            role,
            issued_at,
            ..
        } => {
            caller.check_org(org.as_str())?;
            match standing::cached(caller.access(), org.as_str(), user) {
                Ok(facts) => {
                    let ws = facts.workspace.as_ref().ok_or_else(|| not_synced(org))?;
                    facts.standing(*issued_at).verdict(role.as_ref())?;
                    cached_page(conn, list, caller.fills_access(), ws.id, page).await?
                }
                Err(_) if caller.on_replica() => return Err(standing::ON_PRIMARY),
                Err(pending) => {
                    let rows: Vec<FactsAndChannel> = prepared(FACTS_AND_CHANNELS)
                        .bind::<Text, _>(org.as_str())
                        .bind::<Text, _>(user)
                        .bind::<Nullable<Timestamptz>, _>(at)
                        .bind::<Nullable<SqlUuid>, _>(id)
                        .bind::<BigInt, _>(page.limit())
                        .load(conn)
                        .await?;
                    // At least one row: the facts' subquery always has one.
                    let mut rows = rows.into_iter();
                    let first = rows.next().ok_or_else(|| not_synced(org))?;
                    let (facts, first) = (first.facts, first.channel);
                    let facts = pending.remember(facts);
                    let ws = facts.workspace.as_ref().ok_or_else(|| not_synced(org))?.id;
                    facts.standing(*issued_at).verdict(role.as_ref())?;
                    std::iter::once(first)
                        .chain(rows.map(|r| r.channel))
                        .filter_map(|c| c.record(ws))
                        .collect()
                }
            }
        }
        Caller::Service => {
            let ws = workspace_for(conn, caller, org).await?;
            channels_after(conn, ws.id, page).await?
        }
    };
    Ok(page.page(rows, |c| Cursor {
        at: c.created_at,
        id: c.id,
    }))
}

fn not_synced(org: &OrgId) -> Error {
    Error::NotFound(format!("workspace {org} is not synced (yet)"))
}

/// A page of the channels of workspace `ws`, cut from the replica's cache when it may answer
/// (read whole into it on a miss when `fill`), else read from the database.
async fn cached_page(
    conn: &mut AsyncPgConnection,
    cache: &ChannelList,
    fill: bool,
    ws: Uuid,
    page: &PageRequest,
) -> Result<Vec<ChannelRecord>, Error> {
    let listing = match cache.lookup(&ws) {
        Lookup::Hit(hit) => hit,
        // The cache cannot answer now, or nothing read here would be kept (a database
        // replica's rows): read only the page.
        Lookup::Unanswered => return channels_after(conn, ws, page).await,
        Lookup::Miss if !fill => return channels_after(conn, ws, page).await,
        Lookup::Miss => {
            // Taken before the statement: a change heard while it runs keeps its answer out.
            let ticket = cache.ticket();
            let rows: Vec<ChannelRecord> = prepared(
                "SELECT id, workspace_id, name, created_by, created_at, updated_at FROM channels
                  WHERE workspace_id = $1 AND deleted_at IS NULL ORDER BY created_at, id LIMIT $2",
            )
            .bind::<SqlUuid, _>(ws)
            .bind::<BigInt, _>(MOST_LISTED as i64 + 1)
            .load(conn)
            .await?;
            let listing = Arc::new(Listing::of(rows));
            cache.insert(ticket, ws, listing.clone());
            listing
        }
    };
    let (at, id) = page.after_parts();
    match listing.after(at.zip(id), |c| (c.created_at, c.id), page.limit() as usize) {
        Some(rows) => Ok(rows),
        None => channels_after(conn, ws, page).await,
    }
}

/// A page of the channels of workspace `ws`.
async fn channels_after(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    page: &PageRequest,
) -> Result<Vec<ChannelRecord>, Error> {
    let (at, id) = page.after_parts();
    Ok(prepared(
        "SELECT id, workspace_id, name, created_by, created_at, updated_at FROM channels
          WHERE workspace_id = $1 AND deleted_at IS NULL
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<Timestamptz>, _>(at)
    .bind::<Nullable<SqlUuid>, _>(id)
    .bind::<BigInt, _>(page.limit())
    .load(conn)
    .await?)
}

/// The access facts of user `$2` in organization `$1`, each row with one channel of the page
/// (`$3`, `$4`: after; `$5`: limit) of the workspace found; one row without a channel when
/// there is none. `f.*` is the column list `facts_sql!` names, not a table's.
const FACTS_AND_CHANNELS: &str = concat!(
    "SELECT f.*, c.id AS channel_id, c.name AS channel_name, c.created_by AS channel_created_by,
            c.created_at AS channel_created_at, c.updated_at AS channel_updated_at
       FROM (",
    standing::facts_sql!(),
    ") f
       LEFT JOIN LATERAL (
         SELECT id, name, created_by, created_at, updated_at FROM channels
          WHERE workspace_id = f.id AND deleted_at IS NULL
            AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
          ORDER BY created_at, id LIMIT $5) c ON true
      ORDER BY c.created_at, c.id"
);

/// One row of [`FACTS_AND_CHANNELS`].
#[derive(QueryableByName)]
struct FactsAndChannel {
    /// The same in every row.
    #[diesel(embed)]
    facts: standing::FactsRow,
    #[diesel(embed)]
    channel: LateralChannel,
}

/// The channel of a row of [`FACTS_AND_CHANNELS`], if any.
#[derive(QueryableByName)]
struct LateralChannel {
    #[diesel(sql_type = Nullable<SqlUuid>)]
    channel_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    channel_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    channel_created_by: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    channel_created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    channel_updated_at: Option<DateTime<Utc>>,
}

impl LateralChannel {
    fn record(self, workspace_id: Uuid) -> Option<ChannelRecord> {
        Some(ChannelRecord {
            id: self.channel_id?,
            workspace_id,
            name: self.channel_name?,
            created_by: self.channel_created_by?,
            created_at: self.channel_created_at?,
            updated_at: self.channel_updated_at?,
        })
    }
}

/// Renames a channel (admins).
pub async fn rename_channel(
    conn: &mut AsyncPgConnection,
    list: &ChannelList,
    caller: &Caller,
    channel_id: Uuid,
    name: &ChannelName,
) -> Result<ChannelRecord, Error> {
    let ws = channel_scope(conn, caller, channel_id).await?;
    caller.require_admin("renaming a channel")?;
    let renamed = conn
        .transaction::<_, Error, _>(async |conn| {
            // A channel hidden since its scope was checked is not renamed (the update waits
            // for its deletion, then finds it hidden).
            let c = diesel::update(
                channels::table
                    .find((ws, channel_id))
                    .filter(channels::deleted_at.is_null()),
            )
            .set((
                channels::name.eq(name.as_str()),
                channels::updated_at.eq(diesel::dsl::now),
            ))
            .returning(ChannelRecord::as_returning())
            .one(conn)
            .await
            .map_err(|e| name_taken(e, name))?;
            record_workspace(conn, ws, Event::ChannelRenamed(c.clone().into()))
                .await?
                .or_deleted()?;
            Ok(c)
        })
        .await;
    forget(list, ws);
    renamed
}

/// Messages a deleted channel's answer counts at most: counting costs a read of each one's
/// index entry, and the answer must not wait for a channel of any size.
pub const DELETED_MESSAGES_COUNTED: i64 = 100_000;

/// What deleting a channel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelDeletion {
    /// The messages the channel held as it was hidden, at most [`DELETED_MESSAGES_COUNTED`]
    /// (0 when it was deleted already).
    pub messages: i64,
    /// Whether this call queued the purge of its rows.
    pub purge_queued: bool,
}

/// Deletes a channel (admins): hidden at once, with its messages and read receipts, from every
/// RPC; the purge worker deletes them in the background, in chunks, and the channel's row last.
pub async fn delete_channel(
    conn: &mut AsyncPgConnection,
    list: &ChannelList,
    caller: &Caller,
    channel_id: Uuid,
) -> Result<ChannelDeletion, Error> {
    let ws = channel_scope(conn, caller, channel_id).await?;
    caller.require_admin("deleting a channel")?;
    let deleted = conn
        .transaction::<_, Error, _>(async |conn| {
            if !hide_channel(conn, ws, channel_id).await? {
                return Ok(ChannelDeletion {
                    messages: 0,
                    purge_queued: false,
                });
            }
            #[derive(QueryableByName)]
            struct Held {
                #[diesel(sql_type = BigInt)]
                messages: i64,
            }
            // After the hide, which waited for the posts holding the channel: no other comes.
            // Before the workspace's numbering is taken, which every write there waits for.
            let held: Held = prepared(
                "SELECT count(*) AS messages FROM (SELECT 1 FROM messages
                  WHERE workspace_id = $1 AND channel_id = $2 LIMIT $3) m",
            )
            .bind::<SqlUuid, _>(ws)
            .bind::<SqlUuid, _>(channel_id)
            .bind::<BigInt, _>(DELETED_MESSAGES_COUNTED)
            .one(conn)
            .await?;
            record_workspace(conn, ws, Event::ChannelDeleted(channel_id.to_string()))
                .await?
                .or_deleted()?;
            Ok(ChannelDeletion {
                messages: held.messages,
                purge_queued: true,
            })
        })
        .await;
    forget(list, ws);
    deleted
}

impl From<ChannelRecord> for pb::Channel {
    fn from(ch: ChannelRecord) -> Self {
        pb::Channel {
            id: ch.id.to_string(),
            workspace_id: ch.workspace_id.to_string(),
            name: ch.name,
            created_at: Some(timestamp(ch.created_at)),
        }
    }
}
