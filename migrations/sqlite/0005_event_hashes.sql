-- Each event's place in the hash chain of its partition of the events topic, as its envelope
-- carries it: the hash of the event before it in the partition (32 zero bytes for the first)
-- and its own, SHA-256 over that hash and the event's canonical bytes (docs/auditing.md).
-- 64 lowercase hex digits each; NULL for an event written before events were chained.
ALTER TABLE account_events ADD COLUMN previous_hash TEXT;
ALTER TABLE account_events ADD COLUMN hash TEXT;
