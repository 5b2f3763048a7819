-- Records a consumer could not apply (malformed, or refused by PostgreSQL), kept with where
-- they came from and why, so one bad record never stops its partition.
CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    consumer      text NOT NULL,
    topic         text NOT NULL,
    partition     integer NOT NULL,
    record_offset bigint NOT NULL,
    reason        text NOT NULL,
    record_key    bytea,
    record_value  bytea,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, topic, partition, record_offset)
);
