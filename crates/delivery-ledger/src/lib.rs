//! What both services record about the Clerk deliveries they receive, in their own database:
//!
//! - [`quarantine`]: signed deliveries that could not be applied, kept with their raw body so
//!   that `webhook-gateway replay-quarantined` can apply them with newer code; bodies go after
//!   the retention, the record stays.
//! - [`tally`]: per-minute counts of what each sync command did (applied, duplicate, stale),
//!   written by each replica every few seconds, so an operator's sync status covers every
//!   replica without a write per webhook.
//! - [`runs`]: reconcile runs as the gateway reported them when they finished.
//! - [`instances`]: the Clerk instances whose webhooks were applied (reconcile deletes only
//!   with a key of that instance).
//!
//! [`Ledger`] serves them through [`grpc`]: `vbase.ops.v1.DeliveryIntakeService` for the
//! webhook gateway and `vbase.ops.v1.DeliveryAdminService` for operators, which each service
//! mounts with [`Ledger::mount`]. The tables are created by this crate's [`migrations`], which
//! each service applies with its own.

pub mod grpc;
pub mod instances;
pub mod migrations;
pub mod quarantine;
pub mod runs;
pub mod tally;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use service_runtime::Pool;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tonic::Status;
use vbase_proto::ops::v1 as pb;

pub use tally::Tally;

/// Settings of the ledger.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// Days a resolved or discarded delivery is kept, with its body, after it was closed (1 to
    /// 365). An open delivery keeps its body until then.
    #[arg(long, env = "QUARANTINE_RETENTION_DAYS", default_value_t = 14)]
    pub quarantine_retention_days: u32,
}

impl Default for LedgerArgs {
    fn default() -> Self {
        Self {
            quarantine_retention_days: 14,
        }
    }
}

impl LedgerArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=365).contains(&self.quarantine_retention_days) {
            return Err(format!(
                "QUARANTINE_RETENTION_DAYS ({}) must be from 1 to 365",
                self.quarantine_retention_days
            ));
        }
        Ok(())
    }

    /// The retention as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.quarantine_retention_days) * 86_400)
    }
}

/// A reconcile run's report, checked against the run it finishes ([`Ledger::check_run`]).
pub struct RunReport<'a> {
    id: uuid::Uuid,
    run: &'a pb::ReconcileRun,
}

/// The ledger of one service, over its database.
#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
    tally: Tally,
    retention: Duration,
    gauges: Gauges,
    instances: instances::Instances,
}

/// The quarantine's gauges, sampled by the upkeep.
#[derive(Debug, Clone, Default)]
struct Gauges {
    open: Gauge,
    oldest_open_seconds: Gauge<f64, AtomicU64>,
}

/// How often the tally is written and the retention applied.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl Ledger {
    /// A ledger over `pool`; `tally` is the one the service's command metrics feed. Registers
    /// `quarantine_open_deliveries` and `quarantine_oldest_open_seconds`.
    pub fn new(pool: Pool, tally: Tally, args: &LedgerArgs, registry: &mut Registry) -> Self {
        let gauges = Gauges::default();
        registry.register(
            "quarantine_open_deliveries",
            "Signed deliveries kept in quarantine, waiting for a replay or a discard",
            gauges.open.clone(),
        );
        registry.register(
            "quarantine_oldest_open_seconds",
            "Age of the oldest delivery waiting in quarantine",
            gauges.oldest_open_seconds.clone(),
        );
        Self {
            pool,
            tally,
            retention: args.retention(),
            gauges,
            instances: instances::Instances::default(),
        }
    }

    async fn conn(
        &self,
    ) -> Result<
        diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>,
        Status,
    > {
        self.pool
            .get()
            .await
            .map_err(|e| service_runtime::db::pool_status(&e))
    }

    /// Writes the tally every few seconds and applies the retention every hour, until `stop`;
    /// then writes the tally once more. Its errors are classified as the calls' are, so a
    /// read-only server retires the stale connections.
    pub async fn upkeep(self, stop: impl Future<Output = ()>) {
        use service_runtime::db::classify;
        tokio::pin!(stop);
        let mut last_retention: Option<tokio::time::Instant> = None;
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = &mut stop => true,
            };
            match self.pool.get().await {
                Ok(mut conn) => {
                    if let Err(e) = self.tally.flush(&mut conn).await {
                        classify(&e);
                        tracing::warn!(error = %e, "writing the sync tally failed; kept for the next try");
                    }
                    match quarantine::counts(&mut conn).await {
                        Ok(c) => {
                            self.gauges.open.set(c.open);
                            self.gauges.oldest_open_seconds.set(c.oldest_open_seconds);
                        }
                        Err(e) => {
                            classify(&e);
                            tracing::warn!(error = %e, "counting the quarantine failed")
                        }
                    }
                    if !stopping && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                        last_retention = Some(tokio::time::Instant::now());
                        match quarantine::apply_retention(&mut conn, self.retention).await {
                            Ok(0) => {}
                            Ok(records) => tracing::info!(
                                records,
                                "quarantine retention removed deliveries closed before it"
                            ),
                            Err(e) => {
                                classify(&e);
                                tracing::warn!(error = %e, "quarantine retention failed")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ledger upkeep: no database connection"),
            }
            if stopping {
                return;
            }
        }
    }

    /// `QuarantineDelivery` (gateway only).
    pub(crate) async fn quarantine(
        &self,
        r: pb::QuarantineDeliveryRequest,
    ) -> Result<pb::QuarantineDeliveryResponse, Status> {
        let d = quarantine::Intake::check(r)?;
        let mut conn = self.conn().await?;
        let (first, open) = quarantine::keep(&mut conn, &d)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))?;
        tracing::warn!(
            svix_id = d.svix_id,
            event_type = d.event_type,
            first,
            "delivery quarantined"
        );
        Ok(pb::QuarantineDeliveryResponse { first, open })
    }

    /// `ListQuarantined`: bodies only when `bodies_allowed` (the gateway's replay).
    pub(crate) async fn list(
        &self,
        r: pb::ListQuarantinedRequest,
        bodies_allowed: bool,
    ) -> Result<pb::ListQuarantinedResponse, Status> {
        let limit = input_validation::page_size(r.page_size, 100, 500)?;
        // Unspecified reads as open.
        let state = pb::QuarantineState::try_from(r.state)
            .map(quarantine::State::from_proto)
            .map_err(|_| {
                Status::invalid_argument(format!("state {} is not a QuarantineState", r.state))
            })?;
        let after = quarantine::PageToken::parse(&r.page_token)?;
        let with_bodies = bodies_allowed && r.with_bodies;
        let mut conn = self.conn().await?;
        // A page with bodies may end before `limit` rows (quarantine::MAX_PAGE_BODY_BYTES):
        // its token still continues after its last row.
        let page = quarantine::list(&mut conn, state, after.as_ref(), limit, with_bodies)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))?;
        let next_page_token = match (page.more, page.records.last()) {
            (true, Some(last)) => quarantine::PageToken::of(last).to_string(),
            _ => String::new(),
        };
        Ok(pb::ListQuarantinedResponse {
            deliveries: page
                .records
                .into_iter()
                .map(quarantine::Record::into_proto)
                .collect(),
            next_page_token,
        })
    }

    /// `GetQuarantined`, with the body.
    pub(crate) async fn get(
        &self,
        r: pb::GetQuarantinedRequest,
    ) -> Result<pb::QuarantinedDelivery, Status> {
        input_validation::event_id(&r.svix_id).map_err(|_| {
            Status::invalid_argument(
                "svix_id must be a delivery id (svix-id), 1 to 200 printable characters",
            )
        })?;
        let mut conn = self.conn().await?;
        quarantine::get(&mut conn, &r.svix_id)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))?
            .map(quarantine::Record::into_proto)
            .ok_or_else(|| Status::not_found(format!("no quarantined delivery {}", r.svix_id)))
    }

    /// `ResolveQuarantined` (gateway only).
    pub(crate) async fn resolve(
        &self,
        r: pb::ResolveQuarantinedRequest,
    ) -> Result<pb::ResolveQuarantinedResponse, Status> {
        input_validation::event_id(&r.svix_id)?;
        let resolution = input_validation::required_text("resolution", &r.resolution, 500)?;
        let mut conn = self.conn().await?;
        let resolved = quarantine::close(
            &mut conn,
            &r.svix_id,
            quarantine::State::Resolved,
            &resolution,
        )
        .await
        .map_err(|e| service_runtime::db::status_for(&e))?;
        Ok(pb::ResolveQuarantinedResponse { resolved })
    }

    /// `DiscardQuarantined` (operators).
    pub(crate) async fn discard(
        &self,
        r: pb::DiscardQuarantinedRequest,
    ) -> Result<pb::DiscardQuarantinedResponse, Status> {
        input_validation::event_id(&r.svix_id).map_err(|_| {
            Status::invalid_argument(
                "svix_id must be a delivery id (svix-id), 1 to 200 printable characters",
            )
        })?;
        let reason = input_validation::required_text("reason", &r.reason, 500)?;
        let mut conn = self.conn().await?;
        let discarded =
            quarantine::close(&mut conn, &r.svix_id, quarantine::State::Discarded, &reason)
                .await
                .map_err(|e| service_runtime::db::status_for(&e))?;
        if discarded {
            tracing::info!(
                svix_id = r.svix_id,
                "quarantined delivery discarded by an operator"
            );
        }
        Ok(pb::DiscardQuarantinedResponse { discarded })
    }

    /// `GetSyncStatus` (operators).
    pub(crate) async fn status(&self) -> Result<pb::GetSyncStatusResponse, Status> {
        let mut conn = self.conn().await?;
        let db = |e: diesel::result::Error| service_runtime::db::status_for(&e);
        let commands = tally::status(&mut conn).await.map_err(db)?;
        let q = quarantine::counts(&mut conn).await.map_err(db)?;
        let now = Utc::now();
        Ok(pb::GetSyncStatusResponse {
            commands: commands
                .into_iter()
                .map(|c| pb::CommandStatus {
                    command: c.command,
                    last_applied_at: c.last_applied_at.map(ts),
                    last_applied_age_seconds: c
                        .last_applied_at
                        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0),
                    last_hour: Some(pb::OutcomeCounts {
                        applied: c.applied_hour,
                        duplicate: c.duplicate_hour,
                        stale: c.stale_hour,
                    }),
                    last_day: Some(pb::OutcomeCounts {
                        applied: c.applied_day,
                        duplicate: c.duplicate_day,
                        stale: c.stale_day,
                    }),
                })
                .collect(),
            quarantine_open: q.open,
            quarantine_oldest_open_seconds: q.oldest_open_seconds,
            quarantined_last_hour: q.last_hour,
            quarantined_last_day: q.last_day,
            as_of: Some(ts(now)),
        })
    }

    /// Records that a sync command came from Clerk instance `id` (empty: a command of reconcile,
    /// which names none). Checks the id: a bad one is [`Error::Invalid`](service_runtime::Error).
    pub async fn note_instance(&self, id: &str) -> Result<(), service_runtime::Error> {
        if id.is_empty() || self.instances.known(id) {
            return Ok(());
        }
        instances::check("instance_id", id)?;
        let mut conn = self.pool.get().await?;
        Ok(self.instances.note(&mut conn, id).await?)
    }

    /// `ListClerkInstances` (gateway only).
    pub(crate) async fn clerk_instances(&self) -> Result<pb::ListClerkInstancesResponse, Status> {
        let mut conn = self.conn().await?;
        let rows = instances::list(&mut conn)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))?;
        Ok(pb::ListClerkInstancesResponse {
            instances: rows
                .into_iter()
                .map(|r| pb::ClerkInstance {
                    instance_id: r.instance_id,
                    first_seen_at: Some(ts(r.first_seen_at)),
                    confirmed_at: r.confirmed_at.map(ts),
                })
                .collect(),
        })
    }

    /// `ConfirmClerkInstance` (gateway only).
    pub(crate) async fn confirm_clerk_instance(
        &self,
        r: pb::ConfirmClerkInstanceRequest,
    ) -> Result<pb::ConfirmClerkInstanceResponse, Status> {
        instances::check("instance_id", &r.instance_id)?;
        let mut conn = self.conn().await?;
        instances::confirm(&mut conn, &r.instance_id)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))?;
        tracing::info!(
            instance_id = r.instance_id,
            "Clerk instance confirmed for reconcile"
        );
        Ok(pb::ConfirmClerkInstanceResponse {})
    }

    /// Checks the report `FinishReconcile` carries for run `run_id` (none is fine), before the
    /// call changes anything: a report must name that run.
    pub fn check_run(
        run: Option<&pb::ReconcileRun>,
        run_id: uuid::Uuid,
    ) -> Result<Option<RunReport<'_>>, Status> {
        let Some(run) = run else { return Ok(None) };
        let id = runs::check(run)?;
        if id != run_id {
            return Err(Status::invalid_argument(format!(
                "run.run_id must be the run being finished ({run_id}), got {id}"
            )));
        }
        Ok(Some(RunReport { id, run }))
    }

    /// Records a finished reconcile run's report, checked by [`Ledger::check_run`].
    pub async fn record_run(&self, report: Option<RunReport<'_>>) -> Result<(), Status> {
        let Some(RunReport { id, run }) = report else {
            return Ok(());
        };
        let mut conn = self.conn().await?;
        runs::record(&mut conn, id, run)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))
    }

    /// `ListReconcileRuns` (operators).
    pub(crate) async fn runs(
        &self,
        r: pb::ListReconcileRunsRequest,
    ) -> Result<pb::ListReconcileRunsResponse, Status> {
        let limit = input_validation::page_size(r.page_size, 20, 100)?;
        let mut conn = self.conn().await?;
        let runs = runs::list(&mut conn, limit)
            .await
            .map_err(|e| service_runtime::db::status_for(&e))?;
        Ok(pb::ListReconcileRunsResponse { runs })
    }
}
