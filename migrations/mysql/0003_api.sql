-- Requests made with an Idempotency-Key, written before their command is appended: the twin of
-- migrations/sqlite/0003_api.sql, with the same table, columns and index.
-- They answer a status poll that arrives before the projector has seen the command, and they
-- hold each caller's idempotency keys: one key, one request, one transaction. The binary
-- collation keeps keys that differ only in case apart.
CREATE TABLE transaction_requests (
    transaction_id   CHAR(36)      NOT NULL PRIMARY KEY,
    account_id       CHAR(36)      NOT NULL,
    requested_by     CHAR(36)      NOT NULL,
    -- 1 to IDEMPOTENCY_KEY_BYTES_MAX (255) visible ASCII characters.
    idempotency_key  VARCHAR(255),
    -- Lowercase hex SHA-256 of the request.
    request_hash     CHAR(64)      NOT NULL,
    transaction_type VARCHAR(32)   NOT NULL,
    amount           DECIMAL(28,4) NOT NULL,
    currency         CHAR(3)       NOT NULL,
    phone_number     VARCHAR(32),
    created_at_ms    BIGINT        NOT NULL,
    UNIQUE (requested_by, idempotency_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The API waits for the events of a command it appended by their causation id.
CREATE INDEX account_events_by_causation ON account_events (causation_id);
