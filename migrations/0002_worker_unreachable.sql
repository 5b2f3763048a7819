-- A runner last seen on a host that does not answer now (systemd nodes over ssh): left alone,
-- its slot kept, until the host answers again.
ALTER TABLE workers DROP CONSTRAINT workers_status_check;
ALTER TABLE workers ADD CONSTRAINT workers_status_check CHECK (status IN (
    'waiting', 'starting', 'running', 'stopping', 'stopped', 'failed', 'unreachable'));
