-- Analysis read models on MySQL and MariaDB: the twin of migrations/sqlite/0006_analysis.sql,
-- with the same tables and columns (tally-projections, src/analysis.rs; docs/read-models.md).
--
-- The projector keeps them in the same transaction as the `transactions` rows they count. Each
-- transaction is counted once, in the row of the UTC day it was created and of the status it
-- has now: when its status moves on, the projector takes it out of its old row and adds it to
-- the new one. So at every commit each table equals a GROUP BY over `transactions`, and a
-- replay into an empty store builds the same rows. A row whose count falls to zero is deleted.
--
-- Days are CHAR(10) 'YYYY-MM-DD' text, as on SQLite, so both read back the same way; cast to
-- DATE in a query that wants date arithmetic.

-- Per UTC day of creation, transaction type, currency and current status.
CREATE TABLE daily_transaction_volumes (
    day               CHAR(10)      NOT NULL,
    transaction_type  VARCHAR(32)   NOT NULL,
    currency          CHAR(3)       NOT NULL,
    status            VARCHAR(16)   NOT NULL
        CHECK (status IN ('ACCEPTED', 'PROCESSING', 'SUCCESSFUL', 'FAILED')),
    transaction_count BIGINT        NOT NULL CHECK (transaction_count > 0),
    -- The sum of the amounts of the transactions counted.
    amount_total      DECIMAL(28,4) NOT NULL,
    PRIMARY KEY (day, transaction_type, currency, status)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- SEND_AIRTIME transactions per UTC day of creation, destination country calling code (E.164,
-- without the '+': '254', '1'), currency and current status.
CREATE TABLE daily_airtime_destinations (
    day               CHAR(10)      NOT NULL,
    calling_code      VARCHAR(3)    NOT NULL,
    currency          CHAR(3)       NOT NULL,
    status            VARCHAR(16)   NOT NULL
        CHECK (status IN ('ACCEPTED', 'PROCESSING', 'SUCCESSFUL', 'FAILED')),
    transaction_count BIGINT        NOT NULL CHECK (transaction_count > 0),
    amount_total      DECIMAL(28,4) NOT NULL,
    PRIMARY KEY (day, calling_code, currency, status)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- GET /transactions and `tally export` page every account's transactions by creation time.
CREATE INDEX transactions_by_created ON transactions (created_at_ms, transaction_id);

-- A store that already holds transactions gets its analysis rows now, so that the projector's
-- next move of one of them finds the row it takes it out of. DECIMAL sums are exact; the day
-- is counted from the epoch, so no session time zone enters it.
INSERT INTO daily_transaction_volumes
    (day, transaction_type, currency, status, transaction_count, amount_total)
SELECT DATE_FORMAT(DATE_ADD('1970-01-01', INTERVAL created_at_ms DIV 86400000 DAY),
                   '%Y-%m-%d') AS day,
       transaction_type, currency, status, COUNT(*), SUM(amount)
FROM transactions
GROUP BY day, transaction_type, currency, status;

INSERT INTO daily_airtime_destinations
    (day, calling_code, currency, status, transaction_count, amount_total)
SELECT DATE_FORMAT(DATE_ADD('1970-01-01', INTERVAL created_at_ms DIV 86400000 DAY),
                   '%Y-%m-%d') AS day,
       CASE
           WHEN SUBSTR(phone_number, 2, 1) IN ('1', '7') THEN SUBSTR(phone_number, 2, 1)
           WHEN SUBSTR(phone_number, 2, 2) IN (
               '20', '27', '30', '31', '32', '33', '34', '36', '39', '40', '41', '43', '44',
               '45', '46', '47', '48', '49', '51', '52', '53', '54', '55', '56', '57', '58',
               '60', '61', '62', '63', '64', '65', '66', '81', '82', '84', '86', '90', '91',
               '92', '93', '94', '95', '98'
           ) THEN SUBSTR(phone_number, 2, 2)
           ELSE SUBSTR(phone_number, 2, 3)
       END AS calling_code,
       currency, status, COUNT(*), SUM(amount)
FROM transactions
WHERE transaction_type = 'SEND_AIRTIME' AND phone_number IS NOT NULL
GROUP BY day, calling_code, currency, status;
