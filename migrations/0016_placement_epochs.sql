-- Fencing: every placement of a scenario's runner takes the next epoch, before the runner
-- starts. The inbox stores only records of the current one; a runner that was replaced (its
-- host cut off, or a twin Nomad kept running) cannot write anything once a later one exists.
ALTER TABLE scenarios ADD COLUMN placement_epoch bigint NOT NULL DEFAULT 0;

-- The worker's placement, and its last move off a host that stopped answering: where from,
-- when and why, the host's last answer, and the capture time of the first result after it.
ALTER TABLE workers
    ADD COLUMN epoch               bigint,
    ADD COLUMN previous_node       text,
    ADD COLUMN moved_at            timestamptz,
    ADD COLUMN moved_reason        text,
    ADD COLUMN host_last_answer_at timestamptz,
    ADD COLUMN recovered_at        timestamptz;

-- The few workers whose first result after a move is still awaited.
CREATE INDEX workers_awaiting_recovery ON workers (scenario_uuid)
    WHERE moved_at IS NOT NULL AND recovered_at IS NULL;
