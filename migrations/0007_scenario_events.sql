-- What runners saw happen (crates/core/src/events.rs SceneEvent): zone entries and exits, line crossings,
-- dwell, camera health. The id is derived from what the event is, so a replayed or re-produced
-- record is stored once.
CREATE TABLE scenario_events (
    event_id      uuid PRIMARY KEY,
    scenario_uuid uuid NOT NULL REFERENCES scenarios ON DELETE CASCADE,
    kind          text NOT NULL,
    frame_number  bigint NOT NULL CHECK (frame_number >= 0),
    occurred_at   timestamptz NOT NULL,
    zone          text,
    line          text,
    direction     text CHECK (direction IN ('in', 'out')),
    track_id      bigint,
    class         text,
    dwell_seconds double precision,
    detail        text,
    stored_at     timestamptz NOT NULL DEFAULT now()
);
-- Pages of a scenario's events in frame order (the API's keyset).
CREATE INDEX scenario_events_by_scenario ON scenario_events (scenario_uuid, frame_number, event_id);
