-- What the console shows: each scenario's latest analysed frame time and rate (kept by the
-- inbox with the results), and JPEG snapshots of analysed frames (crates/core/src/db/snapshots.rs).
ALTER TABLE scenarios ADD COLUMN last_frame_at timestamptz, ADD COLUMN analysed_fps real;

-- The latest periodic snapshot of a scenario and those taken for its events (`event_ids`);
-- older periodic ones are deleted as newer ones arrive, event ones beyond
-- `inbox.snapshots_per_scenario`.
CREATE TABLE scenario_snapshots (
    scenario_uuid uuid NOT NULL REFERENCES scenarios ON DELETE CASCADE,
    frame_number  bigint NOT NULL CHECK (frame_number >= 0),
    captured_at   timestamptz NOT NULL,
    jpeg          bytea NOT NULL,
    width         int NOT NULL,
    height        int NOT NULL,
    -- The analysed frame's size: detections are in its pixels.
    frame_width   int NOT NULL,
    frame_height  int NOT NULL,
    detections    jsonb NOT NULL,
    event_ids     uuid[] NOT NULL DEFAULT '{}',
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scenario_uuid, frame_number)
);
