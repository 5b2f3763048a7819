-- Each scenario's key for signing its results (HMAC-SHA256, crates/core/src/signing.rs): made with the
-- scenario from the server's strong random source (gen_random_uuid), handed only to its
-- runner; the inbox stores only results that verify.
ALTER TABLE scenarios ADD COLUMN results_key bytea NOT NULL
    DEFAULT sha256((gen_random_uuid()::text || gen_random_uuid()::text)::bytea);
