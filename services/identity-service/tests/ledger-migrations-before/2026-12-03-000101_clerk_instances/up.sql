-- The Clerk instances (`ins_...`) whose webhooks this service applied, and an operator's
-- confirmation of one (`webhook-gateway reconcile --instance`): reconcile deletes only with a
-- secret key of the instance these name, so a key of another instance can never delete what
-- it cannot see.
CREATE TABLE clerk_instances (
    instance_id   text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    confirmed_at  timestamptz
);

-- Closed quarantined deliveries go a retention after they were closed (open ones keep their
-- bodies until then).
CREATE INDEX quarantined_deliveries_closed_idx ON quarantined_deliveries (closed_at)
    WHERE state <> 'open';
