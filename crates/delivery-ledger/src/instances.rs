//! The Clerk instances (`ins_...`) a service applied webhooks of, kept in `clerk_instances`:
//! `instance_id` (primary key), `first_seen_at`, `confirmed_at` (an operator's confirmation
//! for reconcile, NULL until one). Reconcile compares them with the instance its secret key
//! belongs to before it deletes anything.
//!
//! Every sync command names its instance; [`Instances::note`] writes each id once (a process
//! remembers the ids it wrote, so the hot path costs a set lookup).

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use input_validation::Invalid;
use service_runtime::prepared;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Longest instance id accepted.
pub const MAX_ID: usize = 64;

/// Checks a Clerk instance id: `ins_` and letters or digits.
pub fn check(field: &str, id: &str) -> Result<(), Invalid> {
    let ok = id.len() <= MAX_ID
        && id
            .strip_prefix("ins_")
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{field} must be a Clerk instance id (ins_ and letters or digits, at most {MAX_ID} characters)"
        )))
    }
}

/// A recorded instance.
#[derive(Debug, Clone, QueryableByName)]
pub struct Recorded {
    #[diesel(sql_type = Text)]
    pub instance_id: String,
    #[diesel(sql_type = Timestamptz)]
    pub first_seen_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// The ids this process has written (shared by the service's handlers).
#[derive(Debug, Clone, Default)]
pub struct Instances {
    written: Arc<Mutex<HashSet<String>>>,
}

impl Instances {
    /// Records `id` (checked by the caller) unless this process did already. Concurrent first
    /// sightings both insert; the second changes nothing.
    pub async fn note(&self, conn: &mut AsyncPgConnection, id: &str) -> diesel::QueryResult<()> {
        if self.known(id) {
            return Ok(());
        }
        prepared(
            "INSERT INTO clerk_instances (instance_id) VALUES ($1) ON CONFLICT (instance_id) DO NOTHING",
        )
        .bind::<Text, _>(id)
        .execute(conn)
        .await?;
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
        Ok(())
    }

    /// Whether this process wrote `id` already.
    pub fn known(&self, id: &str) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

/// Every recorded instance, oldest first.
pub async fn list(conn: &mut AsyncPgConnection) -> diesel::QueryResult<Vec<Recorded>> {
    prepared(
        "SELECT instance_id, first_seen_at, confirmed_at FROM clerk_instances
          ORDER BY first_seen_at, instance_id",
    )
    .load(conn)
    .await
}

/// Records an operator's confirmation of `id` (now).
pub async fn confirm(conn: &mut AsyncPgConnection, id: &str) -> diesel::QueryResult<()> {
    prepared(
        "INSERT INTO clerk_instances (instance_id, confirmed_at) VALUES ($1, now())
         ON CONFLICT (instance_id) DO UPDATE SET confirmed_at = now()",
    )
    .bind::<Text, _>(id)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_checked() {
        for ok in ["ins_29w83yT7CwllvXylYLxcslj88O9", "ins_1"] {
            assert!(check("instance_id", ok).is_ok(), "{ok}");
        }
        let long = format!("ins_{}", "a".repeat(MAX_ID));
        for bad in ["", "ins_", "org_1", "ins_a b", "ins_a-b", long.as_str()] {
            assert!(check("instance_id", bad).is_err(), "{bad}");
        }
    }
}
