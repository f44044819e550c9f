DROP TABLE clerk_instances;
DROP TABLE reconcile_runs;
DROP TABLE sync_outcomes;
DROP TABLE quarantined_deliveries;
