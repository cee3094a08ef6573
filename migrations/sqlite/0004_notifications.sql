-- The notifier's delivery log: one row per notification, written when the notifier first reads
-- it from the notifications topic (a redelivered notification finds its row and adds none),
-- then claimed, tried and settled by the notifier's senders. Times are UTC milliseconds.
--
-- status is PENDING until it settles as SENT, FAILED (refused for good) or DEAD (given up after
-- the last attempt). A sender claims a PENDING row that is due by setting claimed_by and
-- lease_until_ms in one conditional UPDATE; a lease that runs out (its sender died) frees the
-- row for another.
CREATE TABLE notification_deliveries (
    notification_id    TEXT    NOT NULL PRIMARY KEY,
    channel            TEXT    NOT NULL,
    recipient          TEXT    NOT NULL,
    -- The NotificationRequested event as JSON: everything needed to render and send it.
    request            TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    attempts           INTEGER NOT NULL,
    last_error         TEXT,
    -- The server's or provider's id for the message it accepted.
    provider_reference TEXT,
    claimed_by         TEXT,
    lease_until_ms     INTEGER,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL
);

-- The senders look for due PENDING rows.
CREATE INDEX notification_deliveries_due
    ON notification_deliveries (status, next_attempt_at_ms);

-- Notifications asked for through the API, recorded before their event is appended, so that a
-- status poll right after the 202 finds them before the notifier has read them.
CREATE TABLE notification_requests (
    notification_id TEXT    NOT NULL PRIMARY KEY,
    channel         TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL
);
