-- Requests made with an Idempotency-Key, written before their command is appended.
-- They answer a status poll that arrives before the projector has seen the command, and they
-- hold each caller's idempotency keys: one key, one request, one transaction.
CREATE TABLE transaction_requests (
    transaction_id   TEXT    NOT NULL PRIMARY KEY,
    account_id       TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT    NOT NULL,
    transaction_type TEXT    NOT NULL,
    amount           TEXT    NOT NULL,
    currency         TEXT    NOT NULL,
    phone_number     TEXT,
    created_at_ms    INTEGER NOT NULL,
    UNIQUE (requested_by, idempotency_key)
);

-- The API waits for the events of a command it appended by their causation id.
CREATE INDEX account_events_by_causation ON account_events (causation_id);
