-- Users and API keys for the API's authentication (tally-api, src/auth/store.rs).
--
-- Kept portable for the MySQL twin: ids are UUID strings, times are INTEGER milliseconds
-- since the Unix epoch, booleans are INTEGER 0/1, roles are a comma list (`user,admin`).
-- The MySQL version needs VARCHAR lengths where TEXT is keyed or indexed.

CREATE TABLE users (
    uid TEXT NOT NULL PRIMARY KEY,
    -- The username as the user typed it.
    username TEXT NOT NULL,
    -- ASCII lowercase of username: usernames are unique regardless of case.
    username_lower TEXT NOT NULL UNIQUE,
    -- bcrypt hash in its modular crypt form ($2b$12$...).
    password_hash TEXT NOT NULL,
    roles TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE api_keys (
    key_id TEXT NOT NULL PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES users (uid),
    description TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the whole key; the key itself is never stored.
    key_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    -- Set once when the owner deletes the key; NULL while the key is live.
    revoked_at_ms INTEGER NULL
);

CREATE INDEX api_keys_by_uid ON api_keys (uid);
