DROP INDEX quarantined_deliveries_closed_idx;
DROP TABLE clerk_instances;
