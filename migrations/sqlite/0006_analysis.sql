-- Analysis read models (tally-projections, src/analysis.rs): daily counts and amounts of
-- transactions, and of airtime sends by destination, for analysts (docs/read-models.md).
--
-- The projector keeps them in the same transaction as the `transactions` rows they count. Each
-- transaction is counted once, in the row of the UTC day it was created and of the status it
-- has now: when its status moves on, the projector takes it out of its old row and adds it to
-- the new one. So at every commit each table equals a GROUP BY over `transactions`, and a
-- replay into an empty store builds the same rows. A row whose count falls to zero is deleted.
--
-- Portable like 0001: money is exact text at the currency's scale, days are 'YYYY-MM-DD' text.

-- Per UTC day of creation, transaction type, currency and current status.
CREATE TABLE daily_transaction_volumes (
    day               TEXT    NOT NULL CHECK (length(day) = 10),
    transaction_type  TEXT    NOT NULL,
    currency          TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('ACCEPTED', 'PROCESSING', 'SUCCESSFUL', 'FAILED')),
    transaction_count INTEGER NOT NULL CHECK (transaction_count > 0),
    -- The sum of the amounts of the transactions counted, at the currency's scale.
    amount_total      TEXT    NOT NULL,
    PRIMARY KEY (day, transaction_type, currency, status)
) STRICT, WITHOUT ROWID;

-- SEND_AIRTIME transactions per UTC day of creation, destination country calling code (E.164,
-- without the '+': '254', '1'), currency and current status.
CREATE TABLE daily_airtime_destinations (
    day               TEXT    NOT NULL CHECK (length(day) = 10),
    calling_code      TEXT    NOT NULL CHECK (length(calling_code) BETWEEN 1 AND 3),
    currency          TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('ACCEPTED', 'PROCESSING', 'SUCCESSFUL', 'FAILED')),
    transaction_count INTEGER NOT NULL CHECK (transaction_count > 0),
    amount_total      TEXT    NOT NULL,
    PRIMARY KEY (day, calling_code, currency, status)
) STRICT, WITHOUT ROWID;

-- GET /transactions and `tally export` page every account's transactions by creation time.
CREATE INDEX transactions_by_created ON transactions (created_at_ms, transaction_id);

-- A store that already holds transactions gets its analysis rows now, so that the projector's
-- next move of one of them finds the row it takes it out of. Amounts are summed exactly: every
-- amount of a currency is written at that currency's scale, so dropping the point gives whole
-- minor units, which SQLite adds as 64-bit integers (an overflow fails the migration loudly
-- rather than rounding), and the total is written back at the same scale.
CREATE TEMP VIEW analysis_backfill AS
SELECT date(created_at_ms / 1000, 'unixepoch') AS day,
       transaction_type,
       currency,
       status,
       phone_number,
       CAST(replace(amount, '.', '') AS INTEGER) AS minor_units,
       CASE instr(amount, '.') WHEN 0 THEN 0 ELSE length(amount) - instr(amount, '.') END
           AS scale
FROM transactions;

CREATE TEMP VIEW analysis_backfill_destinations AS
SELECT day,
       CASE
           WHEN substr(phone_number, 2, 1) IN ('1', '7') THEN substr(phone_number, 2, 1)
           WHEN substr(phone_number, 2, 2) IN (
               '20', '27', '30', '31', '32', '33', '34', '36', '39', '40', '41', '43', '44',
               '45', '46', '47', '48', '49', '51', '52', '53', '54', '55', '56', '57', '58',
               '60', '61', '62', '63', '64', '65', '66', '81', '82', '84', '86', '90', '91',
               '92', '93', '94', '95', '98'
           ) THEN substr(phone_number, 2, 2)
           ELSE substr(phone_number, 2, 3)
       END AS calling_code,
       currency,
       status,
       minor_units,
       scale
FROM analysis_backfill
WHERE transaction_type = 'SEND_AIRTIME' AND phone_number IS NOT NULL;

INSERT INTO daily_transaction_volumes
    (day, transaction_type, currency, status, transaction_count, amount_total)
SELECT day, transaction_type, currency, status, transaction_count,
       CASE scale
           WHEN 0 THEN CAST(minor_units AS TEXT)
           ELSE CAST(minor_units / unit AS TEXT) || '.'
                || substr(CAST(unit + minor_units % unit AS TEXT), 2)
       END
FROM (
    SELECT day, transaction_type, currency, status, COUNT(*) AS transaction_count,
           SUM(minor_units) AS minor_units, MAX(scale) AS scale,
           CASE MAX(scale) WHEN 1 THEN 10 WHEN 2 THEN 100 WHEN 3 THEN 1000 ELSE 10000 END
               AS unit
    FROM analysis_backfill
    GROUP BY day, transaction_type, currency, status
);

INSERT INTO daily_airtime_destinations
    (day, calling_code, currency, status, transaction_count, amount_total)
SELECT day, calling_code, currency, status, transaction_count,
       CASE scale
           WHEN 0 THEN CAST(minor_units AS TEXT)
           ELSE CAST(minor_units / unit AS TEXT) || '.'
                || substr(CAST(unit + minor_units % unit AS TEXT), 2)
       END
FROM (
    SELECT day, calling_code, currency, status, COUNT(*) AS transaction_count,
           SUM(minor_units) AS minor_units, MAX(scale) AS scale,
           CASE MAX(scale) WHEN 1 THEN 10 WHEN 2 THEN 100 WHEN 3 THEN 1000 ELSE 10000 END
               AS unit
    FROM analysis_backfill_destinations
    GROUP BY day, calling_code, currency, status
);

DROP VIEW analysis_backfill_destinations;
DROP VIEW analysis_backfill;
