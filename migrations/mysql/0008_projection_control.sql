-- The twin of migrations/sqlite/0008_projection_control.sql: one row per projection, beside
-- the tables it writes but never swapped with them.
--
-- `generation` moves each time `tally replay --swap` puts a rebuilt set of projected tables in
-- place of the live one. A projector reads the row first in every batch, under a shared lock,
-- and resumes from the store's offsets when it has moved; a swap that holds the row
-- exclusively knows that no batch is in flight and none can start.
--
-- `swap_token` is written into a rebuilt store by the swap and read back through the live
-- store's connection, to make sure that both name the same database before any table moves.
CREATE TABLE projection_control (
    projection VARCHAR(64) NOT NULL PRIMARY KEY,
    generation BIGINT      NOT NULL CHECK (generation >= 0),
    swap_token VARCHAR(64) NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO projection_control (projection, generation) VALUES ('projector', 0);
