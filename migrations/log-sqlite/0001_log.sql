-- The embedded event log: records by topic partition, the next offset of every partition,
-- and consumer groups with their generations and committed offsets.
--
-- Offsets and generations are INTEGER (SQLite's signed 64 bits); the adapter converts them to
-- and from u64 and refuses values that do not fit.

-- Settings fixed when the log was created. Exactly one row.
CREATE TABLE log_meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    partition_count INTEGER NOT NULL CHECK (partition_count > 0)
);

-- Every record ever appended. Offsets are gapless from 0 within a (topic, partition_no).
-- A rowid table rather than WITHOUT ROWID because payloads can be large.
CREATE TABLE log_records (
    topic         TEXT    NOT NULL,
    partition_no  INTEGER NOT NULL CHECK (partition_no >= 0),
    record_offset INTEGER NOT NULL CHECK (record_offset >= 0),
    record_key    TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    PRIMARY KEY (topic, partition_no, record_offset)
);

-- One past the last offset of each partition that has records, written in the same
-- transaction as the records, so start-up need not scan log_records.
CREATE TABLE log_partitions (
    topic        TEXT    NOT NULL,
    partition_no INTEGER NOT NULL CHECK (partition_no >= 0),
    next_offset  INTEGER NOT NULL CHECK (next_offset > 0),
    PRIMARY KEY (topic, partition_no)
) WITHOUT ROWID;

-- The current generation of each consumer group. Joining a group increments it, which fences
-- the member of the previous generation.
CREATE TABLE consumer_groups (
    group_name TEXT    NOT NULL PRIMARY KEY,
    generation INTEGER NOT NULL CHECK (generation > 0)
) WITHOUT ROWID;

-- The next offset each group will read from each partition.
CREATE TABLE consumer_offsets (
    group_name   TEXT    NOT NULL REFERENCES consumer_groups (group_name),
    topic        TEXT    NOT NULL,
    partition_no INTEGER NOT NULL CHECK (partition_no >= 0),
    next_offset  INTEGER NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (group_name, topic, partition_no)
) WITHOUT ROWID;
