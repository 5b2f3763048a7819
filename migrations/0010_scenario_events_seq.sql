-- The order events were stored in: what pages and streams follow. Frame order is not enough:
-- an `object_left` of a lost track names the frame it was last seen in, earlier than events
-- stored before it, and one frame's events may be stored by two inbox batches.
ALTER TABLE scenario_events ADD COLUMN seq bigserial;
CREATE UNIQUE INDEX scenario_events_by_seq ON scenario_events (scenario_uuid, seq);
