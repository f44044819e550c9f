//! `webhook-gateway reconcile`: makes our data equal to Clerk's by paging its Backend API.
//!
//! Per kind (users, organizations, memberships): page Clerk's listing oldest first (the next
//! page is fetched while the current one is compared and applied); ask the owning service how
//! each item compares with what it holds ([`Comparison`](vbase_proto::identity::v1::Comparison),
//! which also records the item as seen by the run); send what is missing or older as the
//! ordinary sync commands, with `occurred_at` = the resource's `updated_at` and an event id that
//! names the run, so the services' ordering guard decides exactly as for a webhook and a newer
//! webhook is never rolled back. What is deleted here but listed is asked of Clerk alone: gone
//! there, a race (stale); still there, a deletion Clerk never made, which writes nothing and
//! fails the run ([`deleted_here`]). Only when every listing was read to its end: ask the service
//! for what it holds that the run did not see (created before the run started), confirm each
//! with Clerk (its own GET answering 404 `resource_not_found`), and delete it, as of Clerk's
//! answer: no change Clerk made before it, delivered later, brings it back. Memory holds a
//! page or two, whatever the number of resources.
//!
//! Two guards stand before any deletion: the key must belong to the Clerk instance whose
//! webhooks the services applied ([`pin`]), and a kind deletes nothing when more of it is
//! missing from Clerk than its budget allows (`RECONCILE_MAX_DELETES`, else 1 % of what was
//! held when the run started; `--allow-mass-delete`). Memberships over their budget stop the
//! users' and organizations' deletions too, as those remove memberships.

pub mod config;
mod ctx;
mod deleted_here;
mod items;
mod kinds;
mod listing;
mod members;
pub mod pin;
pub mod retry;
pub mod summary;

use crate::clerk_api::{ApiError, ClerkBackend, ClerkHttp};
use crate::forward::{Downstream, ForwardError};
use config::{Kind, ReconcileConfig};
use std::time::Instant;
use summary::{KindSummary, Summary};

/// The oldest, and the newest, users of the key's instance a run looks for here when the
/// services' records do not vouch for the instance (nothing recorded, several instances,
/// `--instance` or `--move-to-instance`).
const PROBED_USERS: usize = 20;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Clerk(#[from] ApiError),
    /// A listing Clerk answered in a way that cannot be trusted.
    #[error("{0}")]
    Listing(String),
    /// The key belongs to another Clerk instance than `--instance` names.
    #[error("{0}")]
    Instance(String),
    /// A service could not be reached or failed (not a refusal of one item).
    #[error("services: {0}")]
    Services(String),
}

// No `From<tonic::Status>`: a call to a service answers through `Retrier::call`, which takes
// `forward::failure`'s classification.
impl From<ForwardError> for RunError {
    fn from(e: ForwardError) -> Self {
        RunError::Services(e.to_string())
    }
}

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dry_run: bool,
    pub kinds: Vec<Kind>,
    /// One user or organization only.
    pub scope: Scope,
    pub page_size: usize,
    /// `--instance`: the Clerk instance the key must belong to.
    pub instance: Option<String>,
    /// `--move-to-instance`: move this deployment to the key's instance.
    pub move_to_instance: Option<String>,
    /// `--allow-mass-delete`.
    pub allow_mass_delete: bool,
    /// `RECONCILE_MAX_DELETES` (default: the larger of 25 and 1 % of what was held at the start).
    pub max_deletes: Option<u64>,
    /// How calls to the services that failed for a moment are repeated (`RECONCILE_SERVICE_*`).
    pub retry: retry::RetryPolicy,
}

/// The part of Clerk a run covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    User(String),
    Org(String),
}

impl Scope {
    /// The user of a run for one user.
    fn user(&self) -> Option<&str> {
        match self {
            Scope::User(id) => Some(id),
            _ => None,
        }
    }

    /// The id the services filter candidates by (empty: all).
    fn id(&self) -> &str {
        match self {
            Scope::All => "",
            Scope::User(id) | Scope::Org(id) => id,
        }
    }
}

/// Runs `webhook-gateway reconcile`: builds the clients from `config` and runs the plan.
pub async fn execute(config: &ReconcileConfig) -> anyhow::Result<Summary> {
    config.check().map_err(anyhow::Error::msg)?;
    let clerk = ClerkHttp::new(config.clerk.http()).map_err(anyhow::Error::msg)?;
    let metrics = crate::metrics::Metrics::register(&mut Default::default());
    let downstream = config.downstream.connect(metrics, 4)?;
    let scope = match (&config.user, &config.org) {
        (Some(u), _) => Scope::User(u.clone()),
        (None, Some(o)) => Scope::Org(o.clone()),
        (None, None) => Scope::All,
    };
    let plan = Plan {
        dry_run: config.dry_run,
        kinds: config.kinds(),
        scope,
        page_size: config.clerk.clerk_api_page_size,
        instance: config.instance.clone(),
        move_to_instance: config.move_to_instance.clone(),
        allow_mass_delete: config.allow_mass_delete,
        max_deletes: config.reconcile_max_deletes,
        retry: retry::RetryPolicy::from(&config.service_retry),
    };
    Ok(run(&clerk, &downstream, &plan).await)
}

/// Runs `plan` against `clerk` and the services. Never fails: a run that stops, refuses to
/// delete, or finds resources deleted here that Clerk still has, says why in
/// [`Summary::error`] and has `completed == false` (the command exits 1).
pub async fn run(clerk: &impl ClerkBackend, downstream: &Downstream, plan: &Plan) -> Summary {
    let started = Instant::now();
    let ctx = ctx::Ctx::new(clerk, downstream, plan);
    let requests_before = clerk.requests();
    tracing::info!(run_id = %ctx.run, dry_run = plan.dry_run, kinds = ?plan.kinds, "reconcile started");
    let mut summaries: Vec<KindSummary> = plan.kinds.iter().map(|k| KindSummary::new(*k)).collect();
    let mut error = None;
    let mut refusals = Vec::new();
    // Which instance the key belongs to, before anything is listed: a key of another instance
    // than the flags name, or than the services recorded, stops here.
    let flags = pin::Flags {
        instance: plan.instance.as_deref(),
        move_to: plan.move_to_instance.as_deref(),
    };
    let (instance, mut pin) = match pin::check(clerk, downstream, &ctx.retry, flags).await {
        Ok((key, pin)) => (Some(key), Some(pin)),
        Err(e) => {
            error = Some(format!("Clerk instance: {e}"));
            (None, None)
        }
    };
    // Unless the services' records vouch for the key's instance, the users held here must be
    // that instance's before the run lists (and copies in) anything, deletes, or records the
    // instance as confirmed: some of its oldest or newest users must be held. Only an explicit
    // move (`--move-to-instance` with `--allow-mass-delete`) goes past that; the budget's flag
    // alone does not, as it is what an operator adds to get past a refusal to delete.
    let moving = plan.move_to_instance.is_some() && plan.allow_mass_delete;
    if let (Some(key), Some(p)) = (&instance, &pin)
        && !matches!(p, pin::Pin::Allowed { confirm: false, .. })
        && !moving
    {
        match kinds::probe_users(&ctx, PROBED_USERS).await {
            Ok(p) if p.foreign() => {
                error = Some(format!(
                    "none of the {} oldest and newest users of Clerk instance {key} \
                     (CLERK_SECRET_KEY's) is among the {} users held here: the key is probably \
                     another instance's; no user, organization or membership was written or \
                     deleted, and no instance recorded (check the Secret; if this deployment \
                     really moves to {key}, run with --move-to-instance {key} \
                     --allow-mass-delete)",
                    p.listed, p.held
                ));
                pin = None;
            }
            Ok(_) => {}
            Err(e) => {
                error = Some(format!(
                    "comparing Clerk's oldest and newest users with those held here: {e}"
                ));
                pin = None;
            }
        }
    }
    // First every listing, then the deletions (memberships first, users last), and those only
    // when every listing completed: a membership Clerk no longer has is deleted as itself, not
    // as a side effect of its organization's or user's deletion, so a dry run reports exactly
    // what the run applies.
    if pin.is_some() {
        for (kind, s) in plan.kinds.iter().zip(summaries.iter_mut()) {
            let result = measured(&ctx, s, async |s| match kind {
                Kind::Users => kinds::users(&ctx, s).await,
                Kind::Organizations => kinds::organizations(&ctx, s).await,
                Kind::Memberships => kinds::memberships(&ctx, s).await,
            })
            .await;
            if let Err(e) = result {
                error = Some(format!("{}: {e}", kind.name()));
                break;
            }
        }
    }
    let mut deletions_allowed = false;
    if let (None, Some(pin)) = (&error, &pin) {
        let mode = match pin {
            pin::Pin::Allowed { instance, confirm } => {
                deletions_allowed = true;
                if *confirm
                    && !plan.dry_run
                    && let Err(e) = pin::confirm(downstream, &ctx.retry, instance).await
                {
                    error = Some(format!("confirming the Clerk instance: {e}"));
                }
                ctx::Sweep::Delete
            }
            pin::Pin::Refused(why) => {
                refusals.push(why.clone());
                ctx::Sweep::CountOnly
            }
        };
        let mut mode = mode;
        for (kind, s) in plan.kinds.iter().zip(summaries.iter_mut()).rev() {
            if error.is_some() {
                break;
            }
            let result = measured(&ctx, s, async |s| match kind {
                Kind::Users => kinds::sweep_users(&ctx, s, mode).await,
                Kind::Organizations => kinds::sweep_organizations(&ctx, s, mode).await,
                Kind::Memberships => kinds::sweep_memberships(&ctx, s, mode).await,
            })
            .await;
            match result {
                Ok(None) => {}
                Ok(Some(refused)) => {
                    refusals.push(refused);
                    if *kind == Kind::Memberships && plan.kinds.len() > 1 {
                        // Deleting a user or an organization deletes its memberships: none
                        // goes either.
                        mode = ctx::Sweep::CountOnly;
                        refusals.push(
                            "users and organizations: none was deleted either (their deletion \
                             removes their memberships)"
                                .into(),
                        );
                    }
                }
                Err(e) => error = Some(format!("{} deletions: {e}", kind.name())),
            }
        }
    }
    if error.is_none() && !refusals.is_empty() {
        error = Some(refusals.join("; "));
    }
    // Deleted here, live in Clerk: nothing was written for them, and the run fails so someone
    // looks (also after a stop, with what the run saw before it).
    if let Some(line) = deleted_here::message(&summaries) {
        error = Some(match error {
            Some(e) => format!("{e}; {line}"),
            None => line,
        });
    }
    match &error {
        Some(e) => tracing::error!(error = %e, "reconcile stopped"),
        None => tracing::info!("reconcile completed"),
    }
    // Kinds not reached report nothing.
    summaries.retain(|s| s.listing_complete || s.listed > 0 || s.requests > 0);
    for s in &summaries {
        tracing::info!(
            kind = s.kind,
            listed = s.listed,
            created = s.created,
            updated = s.updated,
            unchanged = s.unchanged,
            missing = s.missing,
            deleted = s.deleted,
            budget = s.budget,
            stale = s.stale,
            deleted_here_live_in_clerk = s.deleted_here_live_in_clerk,
            refused = s.refused,
            kept = s.kept,
            requests = s.requests,
            service_retries = s.service_retries,
            listing_complete = s.listing_complete,
            "reconcile kind"
        );
    }
    let summary = Summary {
        run_id: ctx.run.to_string(),
        dry_run: plan.dry_run,
        completed: error.is_none(),
        error,
        instance,
        deletions_allowed,
        requests: clerk.requests() - requests_before,
        service_retries: ctx.retry.retries(),
        duration_secs: started.elapsed().as_secs_f64(),
        kinds: summaries,
    };
    ctx.finish(Some(summary.record())).await;
    summary
}

/// Runs one step of a kind, adding its Clerk requests, its repeated service calls and its
/// time to the kind's summary.
async fn measured<T, C: ClerkBackend>(
    ctx: &ctx::Ctx<'_, C>,
    s: &mut KindSummary,
    step: impl AsyncFnOnce(&mut KindSummary) -> Result<T, RunError>,
) -> Result<T, RunError> {
    let (t, before, retries) = (Instant::now(), ctx.clerk.requests(), ctx.retry.retries());
    let r = step(s).await;
    s.requests += ctx.clerk.requests() - before;
    s.service_retries += ctx.retry.retries() - retries;
    s.duration_secs += t.elapsed().as_secs_f64();
    r
}
