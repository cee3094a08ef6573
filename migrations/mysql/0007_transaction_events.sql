-- The events of one transaction, for GET /transaction/{id}/events: every event of a transaction
-- carries its id as correlation id, and all of them are in its account's stream.
CREATE INDEX account_events_by_correlation ON account_events (correlation_id, sequence);
