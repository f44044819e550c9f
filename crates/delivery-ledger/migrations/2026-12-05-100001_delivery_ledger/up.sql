-- The delivery ledger's tables, the same in both services' databases. `IF NOT EXISTS`: a
-- database migrated before the ledger owned its migrations has these tables already, created
-- by the service's own migrations with the same definitions; they are kept with their rows.

-- Signed deliveries that could not be applied (unparseable, or refused by this service), kept
-- so that `webhook-gateway replay-quarantined` can apply them under the same event id once the
-- code accepts them. Bodies go after QUARANTINE_RETENTION_DAYS; open records stay.
CREATE TABLE IF NOT EXISTS quarantined_deliveries (
    svix_id         text PRIMARY KEY,
    event_type      text NOT NULL,
    reason          text NOT NULL,
    body            bytea,
    received_at     timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 1,
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved', 'discarded')),
    resolution      text NOT NULL DEFAULT '',
    closed_at       timestamptz,
    body_removed_at timestamptz
);
CREATE INDEX IF NOT EXISTS quarantined_deliveries_state_idx
    ON quarantined_deliveries (state, received_at, svix_id);
-- Closed quarantined deliveries go a retention after they were closed (open ones keep their
-- bodies until then).
CREATE INDEX IF NOT EXISTS quarantined_deliveries_closed_idx ON quarantined_deliveries (closed_at)
    WHERE state <> 'open';

-- What the sync commands did, per minute: each replica adds its counts every few seconds.
CREATE TABLE IF NOT EXISTS sync_outcomes (
    minute  timestamptz NOT NULL,
    command text NOT NULL,
    outcome text NOT NULL,
    count   bigint NOT NULL,
    last_at timestamptz NOT NULL,
    PRIMARY KEY (minute, command, outcome)
);

-- Reconcile runs as `webhook-gateway reconcile` reported them when they finished, for the
-- operators (ListReconcileRuns); the last 1,000 are kept.
CREATE TABLE IF NOT EXISTS reconcile_runs (
    run_id      uuid PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT now(),
    completed   boolean NOT NULL,
    dry_run     boolean NOT NULL,
    error       text NOT NULL,
    summary     text NOT NULL
);
CREATE INDEX IF NOT EXISTS reconcile_runs_finished_idx ON reconcile_runs (finished_at);

-- The Clerk instances (`ins_...`) whose webhooks this service applied, and an operator's
-- confirmation of one (`webhook-gateway reconcile --instance`): reconcile deletes only with a
-- secret key of the instance these name, so a key of another instance can never delete what
-- it cannot see.
CREATE TABLE IF NOT EXISTS clerk_instances (
    instance_id   text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    confirmed_at  timestamptz
);
