-- Scenarios, their outbox, workers, stored results and consumer positions.

CREATE TABLE scenarios (
    scenario_uuid    uuid PRIMARY KEY,
    -- Keyset pagination walks this; a sequence is cheaper and stricter than (created_at, uuid).
    seq              bigserial NOT NULL UNIQUE,
    camera_url       text NOT NULL,
    status           text NOT NULL CHECK (status IN (
                        'init_startup', 'in_startup_processing', 'active',
                        'init_shutdown', 'in_shutdown_processing', 'inactive', 'failed')),
    error            text,
    frames_processed bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scenarios_status_seq ON scenarios (status, seq);

-- Events written in the same transaction as the scenario change; vap-relay publishes them.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    scenario_uuid uuid NOT NULL,
    event_type    text NOT NULL CHECK (event_type IN ('init_scenario', 'shutdown_scenario')),
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
-- Lets the relay find an earlier unpublished event of the same scenario quickly.
CREATE INDEX outbox_unpublished_by_scenario ON outbox (scenario_uuid, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- No NOTIFY trigger here on purpose: a transaction that NOTIFYs holds a database-wide lock
-- through its commit, which serialised every POST (measured 4.6x slower). Writers wake the
-- relay after committing instead (db::outbox::OutboxWaker).

-- A POST retried with the same Idempotency-Key gets the first answer back.
CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    request_hash  text NOT NULL,
    -- Deferred: the key is claimed before the scenario row exists, to serialise twins early.
    scenario_uuid uuid NOT NULL REFERENCES scenarios ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per scenario: where its runner is placed (filled by vap-orchestrator).
CREATE TABLE workers (
    scenario_uuid uuid PRIMARY KEY REFERENCES scenarios ON DELETE CASCADE,
    backend       text NOT NULL CHECK (backend IN ('nomad', 'systemd', 'local')),
    backend_ref   text,
    node          text,
    status        text NOT NULL CHECK (status IN (
                     'waiting', 'starting', 'running', 'stopping', 'stopped', 'failed')),
    restarts      integer NOT NULL DEFAULT 0,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_status ON workers (status);

CREATE TABLE scenario_results (
    scenario_uuid uuid NOT NULL REFERENCES scenarios ON DELETE CASCADE,
    frame_number  bigint NOT NULL CHECK (frame_number >= 0),
    captured_at   timestamptz NOT NULL,
    detections    jsonb NOT NULL,
    -- Whatever else the runner sent (model, inference time, frame size).
    extra         jsonb NOT NULL DEFAULT '{}',
    stored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scenario_uuid, frame_number)
);

-- Wakes SSE streams: one notification per scenario per inserting statement.
CREATE FUNCTION scenario_results_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vap_results', s.scenario_uuid::text)
       FROM (SELECT DISTINCT scenario_uuid FROM new_rows) s;
    RETURN NULL;
END $$;
CREATE TRIGGER scenario_results_notify AFTER INSERT ON scenario_results
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scenario_results_notify();

-- Kafka positions of consumers that keep their own offsets (rskafka has no consumer groups).
-- Advanced in the same transaction as the rows a consumer writes: exactly-once effects.
CREATE TABLE consumer_positions (
    consumer       text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    high_watermark bigint,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
