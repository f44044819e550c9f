DROP TABLE sync_outcomes;
DROP TABLE quarantined_deliveries;
