//! Read receipts: how far each user has read each channel, and the unread counts that follow.

use super::access::workspace_for;
use super::access::{Caller, channel_scope, hold_channel, parent_gone, require_active_user};
use crate::error::Error;
use crate::model::OrgId;
use crate::schema::messages;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use uuid::Uuid;

fn reader(caller: &Caller, what: &str) -> Result<String, Error> {
    caller
        .user_id()
        .map(str::to_owned)
        .ok_or_else(|| Error::Denied(format!("{what} belong to users: call with a user token")))
}

/// Marks a channel read for the calling user up to `message_id`, or up to the newest message
/// the channel holds now: a message still being posted, which the user cannot have seen, stays
/// unread (a receipt at "now" would pass it), unless a later post committed before it (posts
/// are dated at their insert, numbered at their commit). Never moves back; watchers of the channel hear
/// each receipt that moved. `None` when the user has read nothing of a channel without
/// messages.
pub async fn mark_read(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    channel_id: Uuid,
    message_id: Option<Uuid>,
) -> Result<Option<DateTime<Utc>>, Error> {
    let user = reader(caller, "read receipts")?;
    let workspace = channel_scope(conn, caller, channel_id).await?;
    require_active_user(conn, caller).await?;
    let at = match message_id {
        None => match newest(conn, workspace, channel_id).await? {
            Some(at) => at,
            None => return receipt(conn, workspace, channel_id, &user).await,
        },
        Some(mid) => messages::table
            .filter(
                messages::workspace_id
                    .eq(workspace)
                    .and(messages::id.eq(mid))
                    .and(messages::channel_id.eq(channel_id)),
            )
            .select(messages::created_at)
            .limit(1)
            .one(conn)
            .await
            .optional()?
            .ok_or_else(|| Error::NotFound("no such message in this channel".into()))?,
    };
    #[derive(QueryableByName)]
    struct At {
        #[diesel(sql_type = Timestamptz)]
        last_read_at: DateTime<Utc>,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        moved: bool,
    }
    conn.transaction::<_, Error, _>(async |conn| {
        hold_channel(conn, caller, workspace, channel_id, "channel").await?;
        let r: At = prepared(
            "WITH before AS (
                 SELECT last_read_at FROM read_receipts
                  WHERE workspace_id = $4 AND channel_id = $1 AND clerk_user_id = $2)
             INSERT INTO read_receipts (workspace_id, channel_id, clerk_user_id, last_read_at)
             VALUES ($4, $1, $2, $3)
             ON CONFLICT (workspace_id, channel_id, clerk_user_id) DO UPDATE
               SET last_read_at = GREATEST(read_receipts.last_read_at, EXCLUDED.last_read_at)
             RETURNING last_read_at,
                       last_read_at IS DISTINCT FROM (SELECT last_read_at FROM before) AS moved",
        )
        .bind::<SqlUuid, _>(channel_id)
        .bind::<Text, _>(&user)
        .bind::<Timestamptz, _>(at)
        .bind::<SqlUuid, _>(workspace)
        .one(conn)
        .await
        .map_err(parent_gone(caller, "channel"))?;
        if r.moved {
            let read = vbase_proto::workspace::v1::ReadReceipt {
                clerk_user_id: user.clone(),
                last_read_at: Some(vbase_proto::timestamp_from_millis(
                    r.last_read_at.timestamp_millis(),
                )),
            };
            let event = vbase_proto::workspace::v1::channel_event::Event::Read(read);
            super::changes::record_channel(conn, workspace, channel_id, event)
                .await?
                .or_deleted()?;
        }
        Ok(Some(r.last_read_at))
    })
    .await
}

/// When the newest message of a channel was posted, if it has any.
async fn newest(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel_id: Uuid,
) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(messages::table
        .filter(
            messages::workspace_id
                .eq(workspace)
                .and(messages::channel_id.eq(channel_id)),
        )
        .select(diesel::dsl::max(messages::created_at))
        .one(conn)
        .await?)
}

/// The user's receipt for a channel, unchanged.
async fn receipt(
    conn: &mut AsyncPgConnection,
    workspace: Uuid,
    channel_id: Uuid,
    user: &str,
) -> Result<Option<DateTime<Utc>>, Error> {
    #[derive(QueryableByName)]
    struct At {
        #[diesel(sql_type = Timestamptz)]
        last_read_at: DateTime<Utc>,
    }
    let at: Option<At> = prepared(
        "SELECT last_read_at FROM read_receipts
          WHERE workspace_id = $1 AND channel_id = $2 AND clerk_user_id = $3",
    )
    .bind::<SqlUuid, _>(workspace)
    .bind::<SqlUuid, _>(channel_id)
    .bind::<Text, _>(user)
    .one(conn)
    .await
    .optional()?;
    Ok(at.map(|a| a.last_read_at))
}

/// Unread messages per channel for the calling user (others' messages after their receipt).
/// Unread messages counted per channel at most (clients show "999+").
pub const UNREAD_COUNT_CAP: i64 = 1000;
/// Channels counted per call at most (the oldest first).
pub const UNREAD_CHANNELS_MAX: i64 = 500;

/// Unread counts of the workspace's oldest [`UNREAD_CHANNELS_MAX`] channels for the caller,
/// each at most [`UNREAD_COUNT_CAP`], and whether there are more channels: the cost is bounded
/// whatever the workspace's size. Each count reads the channel's newest messages through its
/// index (`ORDER BY created_at DESC`): without the order, a workspace whose messages sit in a
/// few channels planned a scan of the whole table per channel, to find its first thousand.
pub async fn unread_counts(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    org: &OrgId,
) -> Result<(Vec<(Uuid, i64)>, bool), Error> {
    let user = reader(caller, "unread counts")?;
    let ws = workspace_for(conn, caller, org).await?;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = BigInt)]
        unread: i64,
    }
    let rows: Vec<Row> = prepared(
        "SELECT c.id, (SELECT count(*) FROM (
                           SELECT 1 FROM messages m
                            WHERE m.workspace_id = $1 AND m.channel_id = c.id
                              AND m.author_clerk_id <> $2
                              AND m.created_at > COALESCE(r.last_read_at, '-infinity')
                            ORDER BY m.created_at DESC
                            LIMIT $3) unread) AS unread
         FROM channels c
         LEFT JOIN read_receipts r
                ON r.workspace_id = $1 AND r.channel_id = c.id AND r.clerk_user_id = $2
         WHERE c.workspace_id = $1 AND c.deleted_at IS NULL
         ORDER BY c.created_at, c.id
         LIMIT $4",
    )
    .bind::<SqlUuid, _>(ws.id)
    .bind::<Text, _>(&user)
    .bind::<BigInt, _>(UNREAD_COUNT_CAP)
    .bind::<BigInt, _>(UNREAD_CHANNELS_MAX + 1)
    .load(conn)
    .await?;
    let more = rows.len() as i64 > UNREAD_CHANNELS_MAX;
    Ok((
        rows.into_iter()
            .take(UNREAD_CHANNELS_MAX as usize)
            .map(|r| (r.id, r.unread))
            .collect(),
        more,
    ))
}
