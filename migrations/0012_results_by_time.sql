-- Predictions by capture time (GET /api/v1/prediction/{uuid}?since=&until=): the range's
-- first and last frames are found by time, the page itself by the primary key. (On a large
-- table this takes a while, and the inbox waits for it.)
CREATE INDEX scenario_results_by_time ON scenario_results (scenario_uuid, captured_at, frame_number);
