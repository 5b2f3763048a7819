-- What each camera looks for (crates/core/src/options.rs): model, fps, classes, min_confidence, mask, name.
-- Scenarios created before this have '{}': the configured defaults.
ALTER TABLE scenarios ADD COLUMN options jsonb NOT NULL DEFAULT '{}';
-- Counts PATCHes: a runner applies a change only when it is newer than what it runs.
ALTER TABLE scenarios ADD COLUMN options_revision bigint NOT NULL DEFAULT 0;

-- The digest of the options the orchestrator last gave the runner (at placement or by a
-- control record); a scenario whose options digest differs gets its runner told.
ALTER TABLE workers ADD COLUMN spec_digest text;

ALTER TABLE outbox DROP CONSTRAINT outbox_event_type_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_event_type_check
    CHECK (event_type IN ('init_scenario', 'shutdown_scenario', 'update_scenario'));
