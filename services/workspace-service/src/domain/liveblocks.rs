//! The Liveblocks outbox: a room whose rows are deleted is queued in `liveblocks_cleanup_jobs`
//! by the same transaction, so its deletion at Liveblocks is never lost; the clean-up worker
//! (`workers::liveblocks`) drains the table. The purge queues the rooms it deletes in its own SQL.

use diesel::sql_types::{Array, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::prepared;

/// Queues Liveblocks rooms for deletion (inside the caller's transaction).
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    room_ids: &[String],
) -> diesel::QueryResult<usize> {
    prepared(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) SELECT unnest($1::text[]) ON CONFLICT (room_id) DO NOTHING",
    )
    .bind::<Array<Text>, _>(room_ids)
    .execute(conn)
    .await
}
