-- Wakes event streams (GET /api/v1/scenario/{uuid}/events/stream), as results' do.
CREATE FUNCTION scenario_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vap_events', s.scenario_uuid::text)
       FROM (SELECT DISTINCT scenario_uuid FROM new_rows) s;
    RETURN NULL;
END $$;
CREATE TRIGGER scenario_events_notify AFTER INSERT ON scenario_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION scenario_events_notify();
