//! Users whose sessions Clerk revoked all at once (a ban): every token issued before the
//! revocation is refused ([`super::standing`]); tokens issued after it pass, so an unban needs
//! nothing here. Only the latest time is kept.

use super::Outcome;
use crate::error::Error;
use crate::model::{EventId, UserId};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use service_runtime::db::record_delivery;
use service_runtime::prepared;

/// A banned user's state, validated.
#[derive(Debug, Clone)]
pub struct RevokeUserTokens {
    pub event_id: EventId,
    /// When the sessions were revoked, or a later time at which the user was still banned.
    pub revoked_at: DateTime<Utc>,
    pub user: UserId,
}

/// Records the revocation: `Applied` when it moved the user's revocation time later,
/// `Stale` when a later one was stored, `Duplicate` for an event id seen before.
pub async fn revoke_user_tokens(
    conn: &mut AsyncPgConnection,
    cmd: &RevokeUserTokens,
) -> Result<Outcome, Error> {
    conn.transaction::<_, Error, _>(async |conn| {
        if !record_delivery(conn, cmd.event_id.as_str()).await? {
            return Ok(Outcome::Duplicate);
        }
        // Written only when later: an unchanged row notifies no cache.
        let written = prepared(
            "INSERT INTO user_revocations AS r (clerk_user_id, revoked_at) VALUES ($1, $2)
             ON CONFLICT (clerk_user_id) DO UPDATE SET revoked_at = EXCLUDED.revoked_at
              WHERE r.revoked_at < EXCLUDED.revoked_at",
        )
        .bind::<Text, _>(cmd.user.as_str())
        .bind::<Timestamptz, _>(cmd.revoked_at)
        .execute(conn)
        .await?;
        Ok(if written == 1 {
            Outcome::Applied
        } else {
            Outcome::Stale
        })
    })
    .await
}
