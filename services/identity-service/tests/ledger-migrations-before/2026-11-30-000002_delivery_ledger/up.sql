-- Signed deliveries that could not be applied (unparseable, or refused by this service), kept
-- so that `webhook-gateway replay-quarantined` can apply them under the same event id once the
-- code accepts them. Bodies go after QUARANTINE_RETENTION_DAYS; open records stay.
CREATE TABLE quarantined_deliveries (
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
CREATE INDEX quarantined_deliveries_state_idx ON quarantined_deliveries (state, received_at, svix_id);

-- What the sync commands did, per minute: each replica adds its counts every few seconds.
CREATE TABLE sync_outcomes (
    minute  timestamptz NOT NULL,
    command text NOT NULL,
    outcome text NOT NULL,
    count   bigint NOT NULL,
    last_at timestamptz NOT NULL,
    PRIMARY KEY (minute, command, outcome)
);
