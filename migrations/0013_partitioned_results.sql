-- Results and events partitioned by frame time (crates/relay/src/retention/partitions.rs): partitions are created
-- ahead by the relay and dropped whole after `retention.results_days`, which never blocks
-- writes (DETACH ... CONCURRENTLY). The partition key `frame_time` is the scenario's epoch
-- plus the frame number in milliseconds: the same for every delivery of a frame, as it must be
-- (a partitioned table's unique key holds its partition key, and a replayed file's capture
-- times differ). For a camera it is the capture time; for a file, its start plus media time.

-- Makes the partition [lower, upper) of `parent`, named by its lower bound. Attached rather
-- than created as PARTITION OF: ATTACH takes a lock that lets reads and writes go on.
CREATE FUNCTION vap_attach_partition(parent text, lower timestamptz, upper timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    name text := parent || '_p' || to_char(lower AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24');
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name, parent);
    -- Proves the bounds, so ATTACH skips scanning the (empty) table.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT bounds CHECK (frame_time >= %L AND frame_time < %L)',
                   name, lower, upper);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lower, upper);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT bounds', name);
    RETURN name;
END $$;

ALTER TABLE scenario_results RENAME TO scenario_results_old;
ALTER INDEX scenario_results_pkey RENAME TO scenario_results_old_pkey;
ALTER INDEX scenario_results_by_time RENAME TO scenario_results_old_by_time;
CREATE TABLE scenario_results (
    scenario_uuid uuid NOT NULL REFERENCES scenarios ON DELETE CASCADE,
    frame_number  bigint NOT NULL CHECK (frame_number >= 0),
    frame_time    timestamptz NOT NULL,
    captured_at   timestamptz NOT NULL,
    detections    jsonb NOT NULL,
    extra         jsonb NOT NULL DEFAULT '{}',
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scenario_uuid, frame_number, frame_time)
) PARTITION BY RANGE (frame_time);
CREATE INDEX scenario_results_by_time ON scenario_results (scenario_uuid, captured_at, frame_number);

ALTER TABLE scenario_events RENAME TO scenario_events_old;
ALTER INDEX scenario_events_pkey RENAME TO scenario_events_old_pkey;
ALTER INDEX scenario_events_by_scenario RENAME TO scenario_events_old_by_scenario;
ALTER INDEX scenario_events_by_seq RENAME TO scenario_events_old_by_seq;
-- The sequence goes on numbering the new table.
ALTER SEQUENCE scenario_events_seq_seq OWNED BY NONE;
CREATE TABLE scenario_events (
    event_id      uuid NOT NULL,
    scenario_uuid uuid NOT NULL REFERENCES scenarios ON DELETE CASCADE,
    kind          text NOT NULL,
    frame_number  bigint NOT NULL CHECK (frame_number >= 0),
    frame_time    timestamptz NOT NULL,
    occurred_at   timestamptz NOT NULL,
    zone          text,
    line          text,
    direction     text CHECK (direction IN ('in', 'out')),
    track_id      bigint,
    class         text,
    dwell_seconds double precision,
    detail        text,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    seq           bigint NOT NULL DEFAULT nextval('scenario_events_seq_seq'),
    PRIMARY KEY (event_id, frame_time)
) PARTITION BY RANGE (frame_time);
CREATE INDEX scenario_events_by_scenario ON scenario_events (scenario_uuid, frame_number, event_id);
-- Unique by the sequence; a partitioned index could only say so with frame_time in it.
CREATE INDEX scenario_events_by_seq ON scenario_events (scenario_uuid, seq);

-- Deliveries outlive no event: removed with their scenario, and with their event's partition
-- by frame time (a foreign key to a partitioned table would need frame_time too, and would make
-- dropping a partition check every delivery).
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_event_id_fkey;
ALTER TABLE webhook_deliveries ADD COLUMN frame_time timestamptz;
UPDATE webhook_deliveries d SET frame_time = s.created_at + e.frame_number * interval '1 millisecond'
  FROM scenario_events_old e JOIN scenarios s USING (scenario_uuid) WHERE e.event_id = d.event_id;
DELETE FROM webhook_deliveries WHERE frame_time IS NULL;
ALTER TABLE webhook_deliveries ALTER COLUMN frame_time SET NOT NULL;
ALTER TABLE webhook_deliveries ADD FOREIGN KEY (scenario_uuid) REFERENCES scenarios ON DELETE CASCADE;
CREATE INDEX webhook_deliveries_by_frame_time ON webhook_deliveries (frame_time);

-- A day's partition for each day that has rows, and for today.
DO $$
DECLARE day timestamptz;
BEGIN
    FOR day IN
        SELECT DISTINCT date_trunc('day', s.created_at + t.frame_number * interval '1 millisecond', 'UTC')
          FROM (SELECT scenario_uuid, frame_number FROM scenario_results_old
                UNION ALL SELECT scenario_uuid, frame_number FROM scenario_events_old) t
          JOIN scenarios s USING (scenario_uuid)
        UNION SELECT date_trunc('day', now(), 'UTC')
    LOOP
        PERFORM vap_attach_partition('scenario_results', day, day + interval '1 day');
        PERFORM vap_attach_partition('scenario_events', day, day + interval '1 day');
    END LOOP;
END $$;

INSERT INTO scenario_results (scenario_uuid, frame_number, frame_time, captured_at, detections, extra, stored_at)
SELECT r.scenario_uuid, r.frame_number, s.created_at + r.frame_number * interval '1 millisecond',
       r.captured_at, r.detections, r.extra, r.stored_at
  FROM scenario_results_old r JOIN scenarios s USING (scenario_uuid);
INSERT INTO scenario_events (event_id, scenario_uuid, kind, frame_number, frame_time, occurred_at, zone, line,
                             direction, track_id, class, dwell_seconds, detail, stored_at, seq)
SELECT e.event_id, e.scenario_uuid, e.kind, e.frame_number, s.created_at + e.frame_number * interval '1 millisecond',
       e.occurred_at, e.zone, e.line, e.direction, e.track_id, e.class, e.dwell_seconds, e.detail, e.stored_at, e.seq
  FROM scenario_events_old e JOIN scenarios s USING (scenario_uuid);
DROP TABLE scenario_results_old, scenario_events_old;
ALTER SEQUENCE scenario_events_seq_seq OWNED BY scenario_events.seq;

-- After the copy: moved rows wake no stream.
CREATE TRIGGER scenario_results_notify AFTER INSERT ON scenario_results
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scenario_results_notify();
CREATE TRIGGER scenario_events_notify AFTER INSERT ON scenario_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scenario_events_notify();
