-- Webhook deliveries give up after webhooks.max_age_secs (gave_up_at), are shared out by
-- receiver (scheme://host:port, without user-info or path), and the sender finds what is due
-- through an index instead of scanning every pending row.
ALTER TABLE webhook_deliveries
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN gave_up_at timestamptz,
    ADD COLUMN receiver text NOT NULL
        GENERATED ALWAYS AS (lower(COALESCE(substring(url from '^([A-Za-z][A-Za-z0-9+.-]*://)'), '')) ||
                             lower(COALESCE(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#]*)'), ''))) STORED;
DROP INDEX webhook_deliveries_pending;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (scenario_uuid, url, id)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
