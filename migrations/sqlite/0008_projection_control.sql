-- One row per projection, beside the tables it writes but never swapped with them.
--
-- `generation` moves each time `tally replay --swap` puts a rebuilt set of projected tables in
-- place of the live one. A projector reads the row first in every batch and resumes from the
-- store's offsets when it has moved. On MySQL it reads it under a shared lock, so a swap that
-- holds the row exclusively knows that no batch is in flight and none can start.
--
-- `swap_token` is written into a rebuilt store by the swap and read back through the live
-- store's connection, to make sure that both name the same database before any table moves.
CREATE TABLE projection_control (
    projection TEXT    NOT NULL PRIMARY KEY,
    generation INTEGER NOT NULL CHECK (generation >= 0),
    swap_token TEXT
) STRICT;

INSERT INTO projection_control (projection, generation) VALUES ('projector', 0);
