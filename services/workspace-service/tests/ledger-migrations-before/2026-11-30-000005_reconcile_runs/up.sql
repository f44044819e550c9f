-- Reconcile runs as `webhook-gateway reconcile` reported them when they finished, for the
-- operators (ListReconcileRuns); the last 1,000 are kept.
CREATE TABLE reconcile_runs (
    run_id      uuid PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT now(),
    completed   boolean NOT NULL,
    dry_run     boolean NOT NULL,
    error       text NOT NULL,
    summary     text NOT NULL
);
CREATE INDEX reconcile_runs_finished_idx ON reconcile_runs (finished_at);
