-- Events name the scenario only; the camera URL (credentials included) stays in scenarios.
-- Rows written before this release carried it in their payload, which the relay published.
UPDATE outbox SET payload = payload - 'camera_url' WHERE payload ? 'camera_url';
