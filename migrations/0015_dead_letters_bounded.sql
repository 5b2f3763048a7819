-- Records set aside keep their first bytes only (value_bytes says how long the record was),
-- and are pruned by age and by count (retention.dead_letters_*), per scenario and in all.
ALTER TABLE dead_letters ADD COLUMN value_bytes integer;
UPDATE dead_letters SET value_bytes = length(record_value), record_value = substring(record_value FROM 1 FOR 4096)
 WHERE length(record_value) > 4096;
CREATE INDEX dead_letters_by_key ON dead_letters (record_key, id);
CREATE INDEX dead_letters_by_time ON dead_letters (received_at);
