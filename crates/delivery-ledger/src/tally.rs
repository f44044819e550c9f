//! Per-minute counts of what each sync command did, in `sync_outcomes` (`minute`, `command`,
//! `outcome`, `count`, `last_at`). Each replica counts in memory and adds its counts every few
//! seconds with one statement, so the table stays small and no webhook waits on it; counts of
//! the last seconds before a crash are lost (they are status, not data). Rows older than two
//! days go at each write.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use service_runtime::prepared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The outcomes counted.
pub const OUTCOMES: [&str; 3] = ["applied", "duplicate", "stale"];

#[derive(Debug, Clone, Copy)]
struct Count {
    n: i64,
    last_at: DateTime<Utc>,
}

type Key = (DateTime<Utc>, &'static str, &'static str);

/// Counts not yet written.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    counts: Arc<Mutex<HashMap<Key, Count>>>,
}

impl Tally {
    /// Counts one command's outcome now (outcomes other than [`OUTCOMES`] are not kept).
    pub fn record(&self, command: &'static str, outcome: &'static str) {
        let Some(outcome) = OUTCOMES.iter().copied().find(|o| *o == outcome) else {
            return;
        };
        let now = Utc::now();
        let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts
            .entry((minute, command, outcome))
            .or_insert(Count { n: 0, last_at: now });
        c.n += 1;
        c.last_at = c.last_at.max(now);
    }

    fn take(&self) -> HashMap<Key, Count> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn put_back(&self, taken: HashMap<Key, Count>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (k, c) in taken {
            let e = counts.entry(k).or_insert(Count {
                n: 0,
                last_at: c.last_at,
            });
            e.n += c.n;
            e.last_at = e.last_at.max(c.last_at);
        }
    }

    /// Adds the counts to the table (one statement) and drops rows older than two days; on
    /// failure the counts are kept for the next try.
    pub async fn flush(&self, conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
        let taken = self.take();
        if taken.is_empty() {
            return Ok(());
        }
        let mut minutes = Vec::with_capacity(taken.len());
        let mut commands = Vec::with_capacity(taken.len());
        let mut outcomes = Vec::with_capacity(taken.len());
        let mut ns = Vec::with_capacity(taken.len());
        let mut lasts = Vec::with_capacity(taken.len());
        for ((m, c, o), n) in &taken {
            minutes.push(*m);
            commands.push(*c);
            outcomes.push(*o);
            ns.push(n.n);
            lasts.push(n.last_at);
        }
        let written = prepared(
            "WITH added AS (
                 INSERT INTO sync_outcomes AS s (minute, command, outcome, count, last_at)
                 SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
                 ON CONFLICT (minute, command, outcome) DO UPDATE
                    SET count = s.count + EXCLUDED.count, last_at = greatest(s.last_at, EXCLUDED.last_at)
                 RETURNING 1)
             DELETE FROM sync_outcomes WHERE minute < now() - interval '2 days'",
        )
        .bind::<Array<Timestamptz>, _>(&minutes)
        .bind::<Array<Text>, _>(&commands)
        .bind::<Array<Text>, _>(&outcomes)
        .bind::<Array<BigInt>, _>(&ns)
        .bind::<Array<Timestamptz>, _>(&lasts)
        .execute(conn)
        .await;
        if let Err(e) = written {
            self.put_back(taken);
            return Err(e);
        }
        Ok(())
    }
}

/// One command's status over the last day.
#[derive(Debug, Clone, QueryableByName)]
pub struct CommandRow {
    #[diesel(sql_type = Text)]
    pub command: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_applied_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub applied_hour: i64,
    #[diesel(sql_type = BigInt)]
    pub duplicate_hour: i64,
    #[diesel(sql_type = BigInt)]
    pub stale_hour: i64,
    #[diesel(sql_type = BigInt)]
    pub applied_day: i64,
    #[diesel(sql_type = BigInt)]
    pub duplicate_day: i64,
    #[diesel(sql_type = BigInt)]
    pub stale_day: i64,
}

/// Every command that ran in the last day, by name.
pub async fn status(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<CommandRow>> {
    prepared(
        "SELECT command,
                max(last_at) FILTER (WHERE outcome = 'applied') AS last_applied_at,
                COALESCE(sum(count) FILTER (WHERE outcome = 'applied' AND minute >= now() - interval '1 hour'), 0)::bigint AS applied_hour,
                COALESCE(sum(count) FILTER (WHERE outcome = 'duplicate' AND minute >= now() - interval '1 hour'), 0)::bigint AS duplicate_hour,
                COALESCE(sum(count) FILTER (WHERE outcome = 'stale' AND minute >= now() - interval '1 hour'), 0)::bigint AS stale_hour,
                COALESCE(sum(count) FILTER (WHERE outcome = 'applied'), 0)::bigint AS applied_day,
                COALESCE(sum(count) FILTER (WHERE outcome = 'duplicate'), 0)::bigint AS duplicate_day,
                COALESCE(sum(count) FILTER (WHERE outcome = 'stale'), 0)::bigint AS stale_day
           FROM sync_outcomes
          WHERE minute >= now() - interval '1 day'
          GROUP BY command
          ORDER BY command",
    )
    .load(conn)
    .await
}
