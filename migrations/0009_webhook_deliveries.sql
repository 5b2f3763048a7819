-- Each scene event due to a webhook receiver, written in the inbox's transaction with the event
-- (nothing is lost when vap restarts), sent by the relay (crates/relay/src/webhooks.rs) until acknowledged.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    event_id        uuid NOT NULL REFERENCES scenario_events ON DELETE CASCADE,
    scenario_uuid   uuid NOT NULL,
    url             text NOT NULL,
    delivered_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    UNIQUE (event_id, url)
);
-- The oldest pending delivery of each scenario and receiver goes first.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (scenario_uuid, url, id) WHERE delivered_at IS NULL;
