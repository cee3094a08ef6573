-- Tally's read models: tables the projector materializes from the event log (tally-projections).
--
-- Every row here can be rebuilt by replaying the log from offset 0 into an empty store, so these
-- tables are never the source of truth. Only the projector writes them, and it writes each
-- batch of records together with its row in projection_offsets, in one transaction.
--
-- Kept portable for the MySQL twin: money is an exact decimal string at the currency's scale
-- ("69.50", never REAL; DECIMAL(28,4) there), ids are lowercase hyphenated UUID strings,
-- times are INTEGER milliseconds since the Unix epoch (UTC). STRICT makes SQLite refuse a value
-- of the wrong type, so a REAL can never slip into a money column.

-- One row per opened account: who holds it and what it holds.
CREATE TABLE accounts (
    account_id        TEXT    NOT NULL PRIMARY KEY,
    name              TEXT    NOT NULL,
    email             TEXT    NOT NULL,
    phone_number      TEXT    NOT NULL,
    -- Billing address; every field is optional.
    address_line1     TEXT,
    address_line2     TEXT,
    city              TEXT,
    state             TEXT,
    postal_code       TEXT,
    country           TEXT,
    currency          TEXT    NOT NULL,
    -- Posted money: credits less debits and posted reservations.
    balance           TEXT    NOT NULL,
    -- Money held by open reservations.
    held              TEXT    NOT NULL,
    -- balance - held: what a new debit or reservation may take.
    available         TEXT    NOT NULL,
    -- Sequence number of the last event of the account's stream applied to this row.
    sequence          INTEGER NOT NULL CHECK (sequence > 0),
    -- The command id of the last AccountOpened or AccountUpdated; the API waits on it.
    last_causation_id TEXT    NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
) STRICT;

-- One row per transaction, from the moment its command is in the log. The status only moves
-- forward: ACCEPTED (command in the log), PROCESSING (started), then SUCCESSFUL or FAILED.
CREATE TABLE transactions (
    transaction_id     TEXT    NOT NULL PRIMARY KEY,
    account_id         TEXT    NOT NULL,
    -- ADD_MONEY, SEND_AIRTIME, ADMIN_CREDIT or ADMIN_DEBIT.
    transaction_type   TEXT    NOT NULL,
    status             TEXT    NOT NULL
        CHECK (status IN ('ACCEPTED', 'PROCESSING', 'SUCCESSFUL', 'FAILED')),
    amount             TEXT    NOT NULL,
    currency           TEXT    NOT NULL,
    -- The phone topped up by SEND_AIRTIME; NULL for other types.
    phone_number       TEXT,
    -- A stable snake_case code, set when the status is FAILED.
    failure_reason     TEXT,
    -- The airtime provider's reference, set when a SEND_AIRTIME succeeds.
    provider_reference TEXT,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL
) STRICT;

CREATE INDEX transactions_by_account ON transactions (account_id, created_at_ms);

-- One line per event that moves posted money (AccountCredited, AccountDebited,
-- ReservationPosted), keyed by its place in the account's stream.
CREATE TABLE statement_lines (
    account_id     TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence > 0),
    transaction_id TEXT    NOT NULL,
    entry          TEXT    NOT NULL CHECK (entry IN ('CREDIT', 'DEBIT')),
    amount         TEXT    NOT NULL,
    balance_after  TEXT    NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, sequence)
) STRICT, WITHOUT ROWID;

-- Every event of every account stream as it was decided: the audit view. Events of a stream
-- whose account was never opened (a transaction that failed with account_not_found) are kept
-- too, so there is deliberately no foreign key to accounts.
CREATE TABLE account_events (
    account_id     TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence > 0),
    event_id       TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    event_version  INTEGER NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    correlation_id TEXT    NOT NULL,
    causation_id   TEXT    NOT NULL,
    -- Where the event sits in the log.
    log_topic      TEXT    NOT NULL,
    log_partition  INTEGER NOT NULL CHECK (log_partition >= 0),
    log_offset     INTEGER NOT NULL CHECK (log_offset >= 0),
    -- The event payload as JSON, exactly the `event` field of its envelope.
    payload        TEXT    NOT NULL,
    PRIMARY KEY (account_id, sequence)
) STRICT;

-- How far each projection has read each log partition: the next offset to apply. Written in the
-- same transaction as the rows, which is what makes a projection exactly-once; the log's own
-- consumer-group offsets are never used. `partition_no` because PARTITION is reserved in MySQL.
CREATE TABLE projection_offsets (
    projection      TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    partition_no    INTEGER NOT NULL CHECK (partition_no >= 0),
    next_offset     INTEGER NOT NULL CHECK (next_offset >= 0),
    -- Records of this partition that could not be decoded and were skipped; someone must look.
    skipped_records INTEGER NOT NULL DEFAULT 0 CHECK (skipped_records >= 0),
    PRIMARY KEY (projection, topic, partition_no)
) STRICT, WITHOUT ROWID;
