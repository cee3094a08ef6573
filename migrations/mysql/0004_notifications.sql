-- The notifier's delivery log and the API's notification requests: the twin of
-- migrations/sqlite/0004_notifications.sql, with the same tables, columns and index.
-- Times are UTC milliseconds.
--
-- status is PENDING until it settles as SENT, FAILED (refused for good) or DEAD (given up after
-- the last attempt). A sender claims a PENDING row that is due by setting claimed_by and
-- lease_until_ms in one conditional UPDATE; a lease that runs out (its sender died) frees the
-- row for another.
CREATE TABLE notification_deliveries (
    notification_id    CHAR(36)    NOT NULL PRIMARY KEY,
    channel            VARCHAR(8)  NOT NULL,
    -- An email address (at most 254 bytes) or an E.164 number.
    recipient          VARCHAR(320) NOT NULL,
    -- The NotificationRequested event as JSON: everything needed to render and send it.
    request            MEDIUMTEXT  NOT NULL,
    status             VARCHAR(8)  NOT NULL,
    attempts           BIGINT      NOT NULL,
    last_error         TEXT,
    -- The server's or provider's id for the message it accepted.
    provider_reference TEXT,
    claimed_by         VARCHAR(64),
    lease_until_ms     BIGINT,
    created_at_ms      BIGINT      NOT NULL,
    updated_at_ms      BIGINT      NOT NULL,
    next_attempt_at_ms BIGINT      NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The senders look for due PENDING rows.
CREATE INDEX notification_deliveries_due
    ON notification_deliveries (status, next_attempt_at_ms);

-- Notifications asked for through the API, recorded before their event is appended, so that a
-- status poll right after the 202 finds them before the notifier has read them.
CREATE TABLE notification_requests (
    notification_id CHAR(36)     NOT NULL PRIMARY KEY,
    channel         VARCHAR(8)   NOT NULL,
    recipient       VARCHAR(320) NOT NULL,
    requested_by    CHAR(36)     NOT NULL,
    created_at_ms   BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
