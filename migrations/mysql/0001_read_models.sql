-- Tally's read models on MySQL and MariaDB: the twin of migrations/sqlite/0001_read_models.sql,
-- with the same tables and columns (tally-projections runs the same queries on both).
--
-- Every row here can be rebuilt by replaying the log from offset 0 into an empty store, so these
-- tables are never the source of truth. Only the projector writes them, and it writes each
-- batch of records together with its row in projection_offsets, in one transaction.
--
-- Money is DECIMAL(28,4): exact, four decimals for any currency's scale, 28 digits because that
-- is all rust_decimal holds. Ids are lowercase hyphenated UUIDs in CHAR(36); times are BIGINT
-- milliseconds since the Unix epoch, UTC by construction. Every table is InnoDB in utf8mb4 with
-- the binary collation, so ids, keys and codes compare byte for byte, as SQLite compares them.
-- Integers are signed BIGINT with CHECKs, which sqlx reads as i64 like SQLite's INTEGER.
-- Text bounded by the domain gets a VARCHAR of that bound (tally-domain's contact.rs and
-- phone.rs, the processor's PROVIDER_TEXT_CHARS_MAX); strict mode refuses anything longer.

-- One row per opened account: who holds it and what it holds.
CREATE TABLE accounts (
    account_id        CHAR(36)      NOT NULL PRIMARY KEY,
    name              VARCHAR(100)  NOT NULL,
    email             VARCHAR(254)  NOT NULL,
    phone_number      VARCHAR(32)   NOT NULL,
    -- Billing address; every field is optional.
    address_line1     VARCHAR(200),
    address_line2     VARCHAR(200),
    city              VARCHAR(200),
    state             VARCHAR(200),
    postal_code       VARCHAR(200),
    country           VARCHAR(200),
    currency          CHAR(3)       NOT NULL,
    -- Posted money: credits less debits and posted reservations.
    balance           DECIMAL(28,4) NOT NULL,
    -- Money held by open reservations.
    held              DECIMAL(28,4) NOT NULL,
    -- balance - held: what a new debit or reservation may take.
    available         DECIMAL(28,4) NOT NULL,
    -- Sequence number of the last event of the account's stream applied to this row.
    sequence          BIGINT        NOT NULL CHECK (sequence > 0),
    -- The command id of the last AccountOpened or AccountUpdated; the API waits on it.
    last_causation_id CHAR(36)      NOT NULL,
    created_at_ms     BIGINT        NOT NULL,
    updated_at_ms     BIGINT        NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per transaction, from the moment its command is in the log. The status only moves
-- forward: ACCEPTED (command in the log), PROCESSING (started), then SUCCESSFUL or FAILED.
CREATE TABLE transactions (
    transaction_id     CHAR(36)      NOT NULL PRIMARY KEY,
    account_id         CHAR(36)      NOT NULL,
    -- ADD_MONEY, SEND_AIRTIME, ADMIN_CREDIT or ADMIN_DEBIT.
    transaction_type   VARCHAR(32)   NOT NULL,
    status             VARCHAR(16)   NOT NULL
        CHECK (status IN ('ACCEPTED', 'PROCESSING', 'SUCCESSFUL', 'FAILED')),
    amount             DECIMAL(28,4) NOT NULL,
    currency           CHAR(3)       NOT NULL,
    -- The phone topped up by SEND_AIRTIME; NULL for other types.
    phone_number       VARCHAR(32),
    -- A stable snake_case code, set when the status is FAILED.
    failure_reason     VARCHAR(64),
    -- The airtime provider's reference, set when a SEND_AIRTIME succeeds.
    provider_reference VARCHAR(200),
    created_at_ms      BIGINT        NOT NULL,
    updated_at_ms      BIGINT        NOT NULL,
    -- An account's transactions, newest or oldest first.
    INDEX transactions_by_account (account_id, created_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One line per event that moves posted money (AccountCredited, AccountDebited,
-- ReservationPosted), keyed by its place in the account's stream.
CREATE TABLE statement_lines (
    account_id     CHAR(36)      NOT NULL,
    sequence       BIGINT        NOT NULL CHECK (sequence > 0),
    transaction_id CHAR(36)      NOT NULL,
    entry          VARCHAR(6)    NOT NULL CHECK (entry IN ('CREDIT', 'DEBIT')),
    amount         DECIMAL(28,4) NOT NULL,
    balance_after  DECIMAL(28,4) NOT NULL,
    occurred_at_ms BIGINT        NOT NULL,
    PRIMARY KEY (account_id, sequence)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Every event of every account stream as it was decided: the audit view. Events of a stream
-- whose account was never opened (a transaction that failed with account_not_found) are kept
-- too, so there is deliberately no foreign key to accounts. The primary key serves the audit
-- pages and the stream heads the projector loads (account_id, then sequence).
CREATE TABLE account_events (
    account_id     CHAR(36)    NOT NULL,
    sequence       BIGINT      NOT NULL CHECK (sequence > 0),
    event_id       CHAR(36)    NOT NULL UNIQUE,
    event_type     VARCHAR(64) NOT NULL,
    event_version  INT         NOT NULL,
    occurred_at_ms BIGINT      NOT NULL,
    correlation_id CHAR(36)    NOT NULL,
    causation_id   CHAR(36)    NOT NULL,
    -- Where the event sits in the log.
    log_topic      VARCHAR(64) NOT NULL,
    log_partition  INT         NOT NULL CHECK (log_partition >= 0),
    log_offset     BIGINT      NOT NULL CHECK (log_offset >= 0),
    -- The event payload as JSON text, exactly the `event` field of its envelope. MEDIUMTEXT,
    -- not JSON: MariaDB's JSON is LONGTEXT under another name, and nothing queries inside it.
    payload        MEDIUMTEXT  NOT NULL,
    PRIMARY KEY (account_id, sequence)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- How far each projection has read each log partition: the next offset to apply. Written in the
-- same transaction as the rows, which is what makes a projection exactly-once; the log's own
-- consumer-group offsets are never used. `partition_no` because PARTITION is reserved here.
CREATE TABLE projection_offsets (
    projection      VARCHAR(64) NOT NULL,
    topic           VARCHAR(64) NOT NULL,
    partition_no    INT         NOT NULL CHECK (partition_no >= 0),
    next_offset     BIGINT      NOT NULL CHECK (next_offset >= 0),
    -- Records of this partition that could not be decoded and were skipped; someone must look.
    skipped_records BIGINT      NOT NULL DEFAULT 0 CHECK (skipped_records >= 0),
    PRIMARY KEY (projection, topic, partition_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
