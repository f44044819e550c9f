//! The purge of a workspace's messages, newest first, in windows of time across all of its
//! channels at once (or of one channel's messages, in windows of that channel alone).
//!
//! One window is one range of `created_at` in every channel: PostgreSQL reads it through the
//! channels' index into one bitmap and deletes in physical order, so a page that holds
//! messages of several channels is visited once, not once per channel. Windows are sized
//! from the rows the last one held, and each delete takes at most twice the chunk's rows:
//! a window that held more is deleted again (its rest) before any other. Lanes take windows
//! from one shared cursor, so they delete neighbouring ranges at once.

use super::PurgeKind;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::Settled;
use service_runtime::prepared;
use tokio::sync::Mutex;
use uuid::Uuid;

/// The newest message at or below `$2` in any of the channels `$1` of workspace `$3` (one
/// index probe each).
const NEWEST: &str = "SELECT max(t.created_at) AS at FROM unnest($1::uuid[]) AS c(id)
     CROSS JOIN LATERAL (SELECT created_at FROM messages
                          WHERE workspace_id = $3 AND channel_id = c.id AND created_at <= $2
                          ORDER BY created_at DESC, id DESC LIMIT 1) t";

/// Deletes at most `$4` messages of channels `$1` of workspace `$5` in `($3, $2]` (no lower
/// end: `$3` NULL).
const WINDOW: &str = "WITH gone AS (
        DELETE FROM messages WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM messages
             WHERE workspace_id = $5 AND channel_id = ANY($1) AND created_at <= $2
               AND created_at > $3 LIMIT $4))
        RETURNING 1)
     SELECT count(*) AS n FROM gone";
const WINDOW_TO_THE_END: &str = "WITH gone AS (
        DELETE FROM messages WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM messages
             WHERE workspace_id = $5 AND channel_id = ANY($1) AND created_at <= $2
               AND $3::timestamptz IS NULL LIMIT $4))
        RETURNING 1)
     SELECT count(*) AS n FROM gone";

/// The channels of a workspace.
const CHANNELS_OF: &str = "SELECT id FROM channels WHERE workspace_id = $1";

/// The workspace of a hidden channel (none once it is purged, or while it is live).
const WORKSPACE_OF: &str =
    "SELECT workspace_id AS id FROM channels WHERE id = $1 AND deleted_at IS NOT NULL";

/// The width of the first window: small, so that even a dense workspace starts with a small
/// chunk; it grows at most fourfold per window.
const FIRST_WIDTH: TimeDelta = TimeDelta::milliseconds(1);

/// One range of time: `(lo, hi]`, or `(-infinity, hi]` without `lo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    hi: DateTime<Utc>,
    lo: Option<DateTime<Utc>>,
}

/// Where the windows are.
#[derive(Debug)]
enum Cursor {
    /// Nothing read yet.
    Start,
    /// Every message above this time is deleted or in a window being deleted.
    At(DateTime<Utc>),
    /// No message is left below the windows taken.
    Drained,
}

/// The channels whose messages the windows delete, and their workspace.
#[derive(Debug, Clone)]
struct Channels {
    workspace: Uuid,
    ids: Vec<Uuid>,
}

#[derive(Debug)]
struct State {
    /// Loaded with the first window.
    channels: Option<Channels>,
    cursor: Cursor,
    width: TimeDelta,
    /// Windows that held more than one delete took, to be finished first (put back once that
    /// delete committed: a delete that began before would find the same rows, locked).
    unfinished: Vec<Window>,
}

/// The messages' windows of one purge attempt, shared by its lanes.
pub(super) struct Windows {
    kind: PurgeKind,
    /// The workspace's or the channel's id.
    target: Uuid,
    limit: i64,
    state: Mutex<State>,
}

impl Windows {
    pub(super) fn new(kind: PurgeKind, target: Uuid, limit: i64) -> Self {
        Self {
            kind,
            target,
            limit,
            state: Mutex::new(State {
                channels: None,
                cursor: Cursor::Start,
                width: FIRST_WIDTH,
                unfinished: Vec::new(),
            }),
        }
    }

    /// Deletes the next window in the caller's transaction: the rows deleted and the rest of
    /// the window to [`Windows::put_back`] after the commit, or `None` when no window is left.
    pub(super) async fn chunk(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> QueryResult<Option<(i64, Vec<Window>)>> {
        let Some((channels, window, width)) = self.take(conn).await? else {
            return Ok(None);
        };
        let cap = self.limit.saturating_mul(2);
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let c: Count = prepared(if window.lo.is_some() {
            WINDOW
        } else {
            WINDOW_TO_THE_END
        })
        .bind::<Array<SqlUuid>, _>(&channels.ids)
        .bind::<Timestamptz, _>(window.hi)
        .bind::<Nullable<Timestamptz>, _>(window.lo)
        .bind::<BigInt, _>(cap)
        .bind::<SqlUuid, _>(channels.workspace)
        .one(conn)
        .await?;
        let mut state = self.state.lock().await;
        if c.n > 0 {
            // Sized from this window's own span (the rest of a window is narrower than the
            // width it was taken with).
            let used = window.lo.map_or(width, |lo| window.hi - lo);
            let scale = (self.limit as f64 / c.n as f64).clamp(0.25, 4.0);
            state.width = scaled(used, scale);
        }
        let mut rest = Vec::new();
        if c.n >= cap {
            // The rest of the window goes next, in halves, so that each delete reads less.
            rest = split(window, state.width);
        } else if c.n == 0
            && let Cursor::At(at) = state.cursor
        {
            // An empty window: skip the gap below it to the next message.
            state.cursor = match newest(conn, &channels, at).await? {
                Some(next) => Cursor::At(next),
                None => Cursor::Drained,
            };
        }
        Ok(Some((c.n, rest)))
    }

    /// Puts back the rest of windows whose delete committed.
    pub(super) async fn put_back(&self, rest: Vec<Window>) {
        if !rest.is_empty() {
            self.state.lock().await.unfinished.extend(rest);
        }
    }

    /// Takes the next window: an unfinished one, or the one below the cursor.
    async fn take(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> QueryResult<Option<(Channels, Window, TimeDelta)>> {
        let mut state = self.state.lock().await;
        let channels = match &state.channels {
            Some(channels) => channels.clone(),
            None => {
                let channels = self.channels(conn).await?;
                state.channels = Some(channels.clone());
                channels
            }
        };
        let width = state.width;
        if let Some(window) = state.unfinished.pop() {
            return Ok(Some((channels, window, width)));
        }
        let hi = match state.cursor {
            Cursor::Drained => return Ok(None),
            Cursor::At(at) => at,
            Cursor::Start => match newest(conn, &channels, DateTime::<Utc>::MAX_UTC).await? {
                Some(at) => at,
                None => {
                    state.cursor = Cursor::Drained;
                    return Ok(None);
                }
            },
        };
        let lo = hi.checked_sub_signed(width).filter(|lo| *lo > floor());
        state.cursor = match lo {
            Some(lo) => Cursor::At(lo),
            None => Cursor::Drained,
        };
        Ok(Some((channels, Window { hi, lo }, width)))
    }

    /// The channels whose messages this purge deletes: none for a channel that is not hidden.
    async fn channels(&self, conn: &mut AsyncPgConnection) -> QueryResult<Channels> {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        Ok(match self.kind {
            PurgeKind::Channel => {
                let ws: Option<Id> = prepared(WORKSPACE_OF)
                    .bind::<SqlUuid, _>(self.target)
                    .one(conn)
                    .await
                    .optional()?;
                match ws {
                    Some(ws) => Channels {
                        workspace: ws.id,
                        ids: vec![self.target],
                    },
                    None => Channels {
                        workspace: Uuid::nil(),
                        ids: Vec::new(),
                    },
                }
            }
            PurgeKind::Workspace | PurgeKind::Room => {
                let ids: Vec<Id> = prepared(CHANNELS_OF)
                    .bind::<SqlUuid, _>(self.target)
                    .load(conn)
                    .await?;
                Channels {
                    workspace: self.target,
                    ids: ids.into_iter().map(|c| c.id).collect(),
                }
            }
        })
    }
}

/// The newest message at or below `at` in `channels`.
async fn newest(
    conn: &mut AsyncPgConnection,
    channels: &Channels,
    at: DateTime<Utc>,
) -> QueryResult<Option<DateTime<Utc>>> {
    #[derive(QueryableByName)]
    struct At {
        #[diesel(sql_type = Nullable<Timestamptz>)]
        at: Option<DateTime<Utc>>,
    }
    let row: At = prepared(NEWEST)
        .bind::<Array<SqlUuid>, _>(&channels.ids)
        .bind::<Timestamptz, _>(at)
        .bind::<SqlUuid, _>(channels.workspace)
        .one(conn)
        .await?;
    Ok(row.at)
}

/// The older and the newer half of `window` (a window with no lower end keeps `width` of
/// it in the newer half); one window when it cannot be split.
fn split(window: Window, width: TimeDelta) -> Vec<Window> {
    let mid = match window.lo {
        // Whole microseconds, as PostgreSQL stores them.
        Some(lo) => (window.hi - lo)
            .num_microseconds()
            .map(|span| lo + TimeDelta::microseconds(span / 2))
            .filter(|mid| *mid > lo),
        None => window
            .hi
            .checked_sub_signed(width)
            .filter(|mid| *mid > floor()),
    };
    match mid {
        Some(mid) if mid < window.hi => vec![
            Window {
                hi: mid,
                lo: window.lo,
            },
            Window {
                hi: window.hi,
                lo: Some(mid),
            },
        ],
        _ => vec![window],
    }
}

/// `width` times `scale`, at least a microsecond.
fn scaled(width: TimeDelta, scale: f64) -> TimeDelta {
    let micros = (width.num_microseconds().unwrap_or(i64::MAX) as f64 * scale)
        .clamp(1.0, i64::MAX as f64 / 2.0);
    TimeDelta::microseconds(micros as i64)
}

/// Below this, windows have no lower end (the year 1; PostgreSQL's own lowest time is older).
fn floor() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_splits_into_halves_that_cover_it() {
        let hi = DateTime::from_timestamp_micros(1_800_000_000_123_457).expect("a time");
        let lo = hi - TimeDelta::seconds(10);
        let halves = split(Window { hi, lo: Some(lo) }, TimeDelta::seconds(1));
        assert_eq!(halves.len(), 2);
        assert_eq!(halves[0].lo, Some(lo));
        assert_eq!(halves[0].hi, hi - TimeDelta::seconds(5));
        assert_eq!(halves[1].lo, Some(halves[0].hi));
        assert_eq!(halves[1].hi, hi);
        // The newer half is taken first (the stack's top).
        let open = split(Window { hi, lo: None }, TimeDelta::seconds(1));
        assert_eq!(open[0].lo, None);
        assert_eq!(open[1].lo, Some(hi - TimeDelta::seconds(1)));
        let tiny = Window {
            hi,
            lo: Some(hi - TimeDelta::microseconds(1)),
        };
        assert_eq!(split(tiny, TimeDelta::seconds(1)), vec![tiny]);
        // An odd number of microseconds splits on a whole one.
        let odd = split(
            Window {
                hi,
                lo: Some(hi - TimeDelta::microseconds(3)),
            },
            TimeDelta::seconds(1),
        );
        assert_eq!(odd[0].hi, hi - TimeDelta::microseconds(2));
    }

    #[test]
    fn widths_scale_within_bounds() {
        let w = TimeDelta::seconds(10);
        assert_eq!(scaled(w, 4.0), TimeDelta::seconds(40));
        assert_eq!(scaled(w, 0.25), TimeDelta::microseconds(2_500_000));
        assert_eq!(
            scaled(TimeDelta::microseconds(1), 0.25),
            TimeDelta::microseconds(1)
        );
        assert!(scaled(TimeDelta::MAX, 4.0) > TimeDelta::zero());
    }

    #[test]
    fn the_floor_is_a_time_postgres_stores() {
        assert!(floor() > DateTime::<Utc>::MIN_UTC);
        assert_eq!(floor().format("%Y-%m-%d").to_string(), "0001-01-01");
    }
}
