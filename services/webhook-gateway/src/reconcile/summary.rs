//! What a reconcile run did, per kind: logged, printed, and in `--json`.

use super::config::Kind;
use serde::Serialize;
use std::fmt::Write as _;

/// How many of the missing ids a summary names.
pub const MISSING_SAMPLE: usize = 10;

/// Counts of one kind. In a dry run, `created`, `updated` and `deleted` count what the run
/// would have done.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KindSummary {
    pub kind: String,
    /// Listed by Clerk.
    pub listed: u64,
    pub created: u64,
    pub updated: u64,
    /// Held as listed.
    pub unchanged: u64,
    /// Held here but gone from Clerk (confirmed with Clerk's `resource_not_found`, or for a
    /// membership, absent from the organization's members).
    pub deleted: u64,
    /// Newer data is held here, or a deletion Clerk confirmed meanwhile (a webhook was
    /// faster): left alone.
    pub stale: u64,
    /// Deleted here, yet listed by Clerk and still found when asked for alone: a deletion
    /// Clerk never made. Each is logged with its id at error level; nothing is written, and the
    /// run fails (exit 1).
    pub deleted_here_live_in_clerk: u64,
    /// Listed by Clerk but not usable (does not parse, or a service refused it): logged with
    /// its id, nothing written.
    pub refused: u64,
    /// Not in the listing but still found in Clerk when checked: left alone.
    pub kept: u64,
    /// Held here (live, created before the run) and missing from Clerk's complete listing: what
    /// the run would delete once Clerk confirms each. Counted even when deletion is refused.
    pub missing: u64,
    /// The ids of the first [`MISSING_SAMPLE`] of those, by id: what to look up in Clerk's
    /// dashboard before lifting a budget.
    pub missing_sample: Vec<String>,
    /// The most this run may delete of this kind (RECONCILE_MAX_DELETES, or the larger of 25
    /// and 1 % of those held when the run started).
    pub budget: u64,
    /// More are missing than the budget allows: none of this kind was deleted.
    pub over_budget: bool,
    /// Clerk requests this kind made.
    pub requests: u64,
    /// Calls to the services this kind repeated after they failed for a moment (a service
    /// restarting, a failover, a deadline): see the warnings.
    pub service_retries: u64,
    pub duration_secs: f64,
    /// Whether Clerk's listing of this kind was read to its end (deletions need it).
    pub listing_complete: bool,
}

impl KindSummary {
    /// Adds the counts of `d` (one page's) to these.
    pub fn add(&mut self, d: &KindSummary) {
        self.listed += d.listed;
        self.created += d.created;
        self.updated += d.updated;
        self.unchanged += d.unchanged;
        self.deleted += d.deleted;
        self.stale += d.stale;
        self.deleted_here_live_in_clerk += d.deleted_here_live_in_clerk;
        self.refused += d.refused;
        self.kept += d.kept;
    }

    /// Empty counts for `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind: kind.name().to_owned(),
            ..Self::default()
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Names the run in every event id it sends (`reconcile-<run_id>-...`).
    pub run_id: String,
    pub dry_run: bool,
    /// Every kind finished, no deletion was refused, and nothing deleted here is live in Clerk.
    pub completed: bool,
    /// Why the run stopped, refused to delete, or failed (resources deleted here that Clerk
    /// still has), when it did.
    pub error: Option<String>,
    /// The Clerk instance CLERK_SECRET_KEY belongs to, once Clerk said.
    pub instance: Option<String>,
    /// Whether deletions were allowed (the key's instance is the one recorded here).
    pub deletions_allowed: bool,
    pub requests: u64,
    /// Calls to the services repeated after they failed for a moment, in all (the kinds' and
    /// the Clerk instance checks').
    pub service_retries: u64,
    pub duration_secs: f64,
    pub kinds: Vec<KindSummary>,
}

impl Summary {
    /// The run's record for the services (ListReconcileRuns): its outcome and this summary as
    /// JSON.
    pub fn record(&self) -> vbase_proto::ops::v1::ReconcileRun {
        vbase_proto::ops::v1::ReconcileRun {
            run_id: self.run_id.clone(),
            finished_at: None,
            completed: self.completed,
            dry_run: self.dry_run,
            error: self.error.clone().unwrap_or_default(),
            summary_json: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reconcile {} {}{} in {:.1} s, {} Clerk requests, {} service calls repeated",
            self.run_id,
            if self.completed {
                "completed"
            } else {
                "STOPPED"
            },
            if self.dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            },
            self.duration_secs,
            self.requests,
            self.service_retries
        );
        let _ = writeln!(
            out,
            "{:<14}{:>9}{:>9}{:>9}{:>10}{:>9}{:>9}{:>8}{:>8}{:>9}{:>7}{:>10}{:>9}",
            "kind",
            "listed",
            "created",
            "updated",
            "unchanged",
            "missing",
            "deleted",
            "budget",
            "stale",
            "refused",
            "kept",
            "requests",
            "retries"
        );
        for k in &self.kinds {
            let _ = writeln!(
                out,
                "{:<14}{:>9}{:>9}{:>9}{:>10}{:>9}{:>9}{:>8}{:>8}{:>9}{:>7}{:>10}{:>9}",
                k.kind,
                k.listed,
                k.created,
                k.updated,
                k.unchanged,
                k.missing,
                k.deleted,
                if k.over_budget {
                    format!("{}!", k.budget)
                } else {
                    k.budget.to_string()
                },
                k.stale,
                k.refused,
                k.kept,
                k.requests,
                k.service_retries
            );
        }
        for k in self.kinds.iter().filter(|k| !k.missing_sample.is_empty()) {
            let _ = writeln!(
                out,
                "{} missing from Clerk ({} of {}): {}",
                k.kind,
                k.missing_sample.len(),
                k.missing,
                k.missing_sample.join(" ")
            );
        }
        if let Some(i) = &self.instance {
            let _ = writeln!(
                out,
                "Clerk instance {i}: deletions {}",
                if self.deletions_allowed {
                    "allowed"
                } else {
                    "refused"
                }
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "stopped: {e}");
        }
        out
    }
}
