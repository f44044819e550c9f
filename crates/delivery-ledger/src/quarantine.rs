//! Signed deliveries that could not be applied, kept in `quarantined_deliveries`:
//! `svix_id` (primary key), `event_type`, `reason`, `body` (bytea), `received_at`,
//! `last_attempt_at`, `attempts`, `state` (`open`, `resolved`, `discarded`), `resolution`,
//! `closed_at`, `body_removed_at`. An open delivery keeps its body, so it can always be
//! replayed; a closed one goes, body and all, a retention after it was closed. (Bodies removed
//! by an earlier rule, which counted from receipt, show as `body_removed`.)

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Binary, Bool, Double, Integer, Nullable, Text, Timestamptz};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use input_validation::Invalid;
use service_runtime::{Settled, prepared};
use std::time::Duration;
use vbase_proto::ops::v1 as pb;

/// Largest body kept (the gateway reads at most this much).
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest reason kept; longer ones are cut.
pub const MAX_REASON: usize = 1000;

/// Where a quarantined delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Resolved,
    Discarded,
}

impl State {
    fn sql(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Resolved => "resolved",
            State::Discarded => "discarded",
        }
    }

    /// The state a proto value names (unspecified reads as open).
    pub fn from_proto(s: pb::QuarantineState) -> Self {
        match s {
            pb::QuarantineState::Unspecified | pb::QuarantineState::Open => State::Open,
            pb::QuarantineState::Resolved => State::Resolved,
            pb::QuarantineState::Discarded => State::Discarded,
        }
    }

    fn proto(s: &str) -> pb::QuarantineState {
        match s {
            "open" => pb::QuarantineState::Open,
            "resolved" => pb::QuarantineState::Resolved,
            "discarded" => pb::QuarantineState::Discarded,
            _ => pb::QuarantineState::Unspecified,
        }
    }
}

/// A delivery to keep, checked.
#[derive(Debug, Clone)]
pub struct Intake {
    pub svix_id: String,
    pub event_type: String,
    pub reason: String,
    pub body: Vec<u8>,
}

fn cut(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(max)
        .collect()
}

impl Intake {
    /// Checks a `QuarantineDeliveryRequest`: a delivery id, a body of at most 1 MiB; the type
    /// and reason are kept cut to length (they are diagnostics, never refused).
    pub fn check(r: pb::QuarantineDeliveryRequest) -> Result<Self, Invalid> {
        input_validation::event_id(&r.svix_id).map_err(|_| {
            Invalid(
                "svix_id must be the delivery id (svix-id), 1 to 200 printable characters".into(),
            )
        })?;
        if r.body.is_empty() || r.body.len() > MAX_BODY {
            return Err(Invalid(format!(
                "body must be the delivery's raw body, 1 byte to 1 MiB (got {} bytes)",
                r.body.len()
            )));
        }
        Ok(Self {
            svix_id: r.svix_id,
            event_type: cut(&r.event_type, 100),
            reason: cut(&r.reason, MAX_REASON),
            body: r.body,
        })
    }
}

/// A stored delivery.
#[derive(Debug, Clone, QueryableByName)]
pub struct Record {
    #[diesel(sql_type = Text)]
    pub svix_id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Nullable<Binary>)]
    pub body: Option<Vec<u8>>,
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub last_attempt_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Text)]
    pub resolution: String,
    #[diesel(sql_type = Bool)]
    pub body_removed: bool,
}

impl Record {
    /// The proto form (the body when it was read).
    pub fn into_proto(self) -> pb::QuarantinedDelivery {
        pb::QuarantinedDelivery {
            svix_id: self.svix_id,
            event_type: self.event_type,
            reason: self.reason,
            received_at: Some(super::ts(self.received_at)),
            last_attempt_at: Some(super::ts(self.last_attempt_at)),
            attempts: self.attempts,
            state: State::proto(&self.state) as i32,
            resolution: self.resolution,
            body: self.body.unwrap_or_default(),
            body_removed: self.body_removed,
        }
    }
}

/// Where a listing continues: after this (received_at, svix_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    micros: i64,
    svix_id: String,
}

impl PageToken {
    /// The token after `r`.
    pub fn of(r: &Record) -> Self {
        Self {
            micros: r.received_at.timestamp_micros(),
            svix_id: r.svix_id.clone(),
        }
    }

    /// Parses a token of a previous answer (empty: the first page).
    pub fn parse(token: &str) -> Result<Option<Self>, Invalid> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            Invalid("page_token is not one this service gave out; start again without it".into())
        };
        let (micros, svix_id) = token.split_once('/').ok_or_else(bad)?;
        let micros = micros.parse::<i64>().map_err(|_| bad())?;
        input_validation::event_id(svix_id).map_err(|_| bad())?;
        Ok(Some(Self {
            micros,
            svix_id: svix_id.to_owned(),
        }))
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.micros, self.svix_id)
    }
}

#[derive(QueryableByName)]
struct Kept {
    #[diesel(sql_type = Bool)]
    first: bool,
    #[diesel(sql_type = Bool)]
    open: bool,
}

/// Keeps `d`: a new record, or a repeat of an open one (attempts counted up, the latest
/// reason and body kept). A resolved or discarded record is left alone. Returns (first, open).
pub async fn keep(conn: &mut AsyncPgConnection, d: &Intake) -> diesel::QueryResult<(bool, bool)> {
    let k: Kept = prepared(
        "INSERT INTO quarantined_deliveries AS q (svix_id, event_type, reason, body)
              VALUES ($1, $2, $3, $4)
         ON CONFLICT (svix_id) DO UPDATE
                 SET reason = EXCLUDED.reason, body = EXCLUDED.body, body_removed_at = NULL,
                     event_type = EXCLUDED.event_type,
                     attempts = q.attempts + 1, last_attempt_at = now()
               WHERE q.state = 'open'
         RETURNING (xmax = 0) AS first, true AS open",
    )
    .bind::<Text, _>(&d.svix_id)
    .bind::<Text, _>(&d.event_type)
    .bind::<Text, _>(&d.reason)
    .bind::<Binary, _>(&d.body)
    .one(conn)
    .await
    .or_else(|e| match e {
        // The conflict's WHERE excluded it: resolved or discarded before.
        diesel::result::Error::NotFound => Ok(Kept {
            first: false,
            open: false,
        }),
        e => Err(e),
    })?;
    Ok((k.first, k.open))
}

/// Most body bytes a listing page carries before its last row: a page ends once its bodies
/// pass this, so with the last body (at most [`MAX_BODY`]) it stays under 3 MiB, within
/// gRPC's default 4 MiB message limit, and a service never holds a hundred bodies for one call.
pub const MAX_PAGE_BODY_BYTES: i64 = 2 * 1024 * 1024;

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    /// Oldest first.
    pub records: Vec<Record>,
    /// Whether records follow the last one.
    pub more: bool,
}

#[derive(QueryableByName)]
struct Listed {
    #[diesel(embed)]
    record: Record,
    /// Rows read for the page, including those cut by the byte cap.
    #[diesel(sql_type = BigInt)]
    fetched: i64,
}

/// Records in `state`, oldest first, after `after`: at most `limit`, and with bodies (only
/// when asked) at most those that begin before [`MAX_PAGE_BODY_BYTES`], always at least one.
pub async fn list(
    conn: &mut AsyncPgConnection,
    state: State,
    after: Option<&PageToken>,
    limit: i64,
    with_bodies: bool,
) -> diesel::QueryResult<Page> {
    // One more row than the page is read to tell whether more follow; `before` is the body
    // bytes of the page's rows ahead of each one. Bodies of the rows cut are never read out.
    let rows: Vec<Listed> = prepared(
        "SELECT svix_id, event_type, reason, CASE WHEN $5 THEN body END AS body,
                received_at, last_attempt_at, attempts, state, resolution, body_removed, fetched
           FROM (SELECT p.*, count(*) OVER () AS fetched
                   FROM (SELECT svix_id, event_type, reason, body, received_at, last_attempt_at,
                                attempts, state, resolution,
                                body_removed_at IS NOT NULL AS body_removed,
                                COALESCE(sum(octet_length(body)) OVER w, 0)
                                    - COALESCE(octet_length(body), 0) AS before
                           FROM quarantined_deliveries
                          WHERE state = $1
                            AND ($2::bigint IS NULL
                                 OR (received_at, svix_id) > (to_timestamp($2::bigint / 1e6), $3))
                         WINDOW w AS (ORDER BY received_at, svix_id ROWS UNBOUNDED PRECEDING)
                          ORDER BY received_at, svix_id
                          LIMIT $4 + 1) p) c
          WHERE NOT $5 OR before < $6
          ORDER BY received_at, svix_id",
    )
    .bind::<Text, _>(state.sql())
    .bind::<Nullable<BigInt>, _>(after.map(|a| a.micros))
    .bind::<Text, _>(after.map_or("", |a| a.svix_id.as_str()))
    .bind::<BigInt, _>(limit)
    .bind::<Bool, _>(with_bodies)
    .bind::<BigInt, _>(MAX_PAGE_BODY_BYTES)
    .load(conn)
    .await?;
    let fetched = rows.as_slice().first().map_or(0, |r| r.fetched);
    let records: Vec<Record> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| r.record)
        .collect();
    Ok(Page {
        more: fetched > records.len() as i64,
        records,
    })
}

/// One record with its body.
pub async fn get(
    conn: &mut AsyncPgConnection,
    svix_id: &str,
) -> diesel::QueryResult<Option<Record>> {
    prepared(
        "SELECT svix_id, event_type, reason, body, received_at, last_attempt_at, attempts, state,
                resolution, body_removed_at IS NOT NULL AS body_removed
           FROM quarantined_deliveries WHERE svix_id = $1",
    )
    .bind::<Text, _>(svix_id)
    .one(conn)
    .await
    .optional()
}

/// Closes an open record as `state` with `resolution`; false when it was not open.
pub async fn close(
    conn: &mut AsyncPgConnection,
    svix_id: &str,
    state: State,
    resolution: &str,
) -> diesel::QueryResult<bool> {
    let n = prepared(
        "UPDATE quarantined_deliveries SET state = $2, resolution = $3, closed_at = now()
          WHERE svix_id = $1 AND state = 'open'",
    )
    .bind::<Text, _>(svix_id)
    .bind::<Text, _>(state.sql())
    .bind::<Text, _>(resolution)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Removes the records resolved or discarded more than `retention` ago, with their bodies.
/// Open records are never touched. Returns the records removed.
pub async fn apply_retention(
    conn: &mut AsyncPgConnection,
    retention: Duration,
) -> diesel::QueryResult<usize> {
    prepared(
        "DELETE FROM quarantined_deliveries
          WHERE state <> 'open'
            AND COALESCE(closed_at, received_at) < now() - make_interval(secs => $1)",
    )
    .bind::<Double, _>(retention.as_secs_f64())
    .execute(conn)
    .await
}

/// Counts for the sync status and the gauges.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Counts {
    #[diesel(sql_type = BigInt)]
    pub open: i64,
    #[diesel(sql_type = Double)]
    pub oldest_open_seconds: f64,
    #[diesel(sql_type = BigInt)]
    pub last_hour: i64,
    #[diesel(sql_type = BigInt)]
    pub last_day: i64,
}

/// Open records, the oldest one's age, and records first received in the last hour and day.
pub async fn counts(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Counts> {
    prepared(
        "SELECT count(*) FILTER (WHERE state = 'open') AS open,
                COALESCE(EXTRACT(EPOCH FROM now() - min(received_at) FILTER (WHERE state = 'open')), 0)::float8
                    AS oldest_open_seconds,
                count(*) FILTER (WHERE received_at > now() - interval '1 hour') AS last_hour,
                count(*) FILTER (WHERE received_at > now() - interval '1 day') AS last_day
           FROM quarantined_deliveries",
    )
    .one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_others() {
        let t = PageToken {
            micros: 1_764_500_000_000_123,
            svix_id: "msg_2abc".into(),
        };
        assert_eq!(PageToken::parse(&t.to_string()).unwrap(), Some(t));
        assert_eq!(PageToken::parse("").unwrap(), None);
        for bad in ["x", "12", "a/msg_1", "12/", "12/has space"] {
            assert!(PageToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intake_refuses_what_cannot_be_kept_and_cuts_diagnostics() {
        let ok = pb::QuarantineDeliveryRequest {
            svix_id: "msg_1".into(),
            event_type: "user.updated".into(),
            reason: format!("bad\u{7}{}", "x".repeat(5000)),
            body: b"{}".to_vec(),
        };
        let d = Intake::check(ok.clone()).unwrap();
        assert_eq!(d.reason.chars().count(), MAX_REASON);
        assert!(!d.reason.contains('\u{7}'));
        for bad in [
            pb::QuarantineDeliveryRequest {
                svix_id: String::new(),
                ..ok.clone()
            },
            pb::QuarantineDeliveryRequest {
                body: Vec::new(),
                ..ok.clone()
            },
            pb::QuarantineDeliveryRequest {
                body: vec![b'x'; MAX_BODY + 1],
                ..ok
            },
        ] {
            assert!(Intake::check(bad).is_err());
        }
    }
}
