-- What each camera looks for (lib/options.rs): model, fps, classes, min_confidence, mask, name.
-- Scenarios created before this have '{}': the configured defaults.
ALTER TABLE scenarios ADD COLUMN options jsonb NOT NULL DEFAULT '{}';
