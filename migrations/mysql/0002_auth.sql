-- Users and API keys for the API's authentication (tally-api, src/auth/store.rs): the twin of
-- migrations/sqlite/0002_auth.sql, with the same tables and columns.
--
-- Ids are UUID strings, times are BIGINT milliseconds since the Unix epoch, booleans are
-- TINYINT 0/1, roles are a comma list (`user,admin`). The binary collation makes
-- username_lower unique byte for byte: the API lowercases it, the database does not fold case.

CREATE TABLE users (
    uid            CHAR(36)     NOT NULL PRIMARY KEY,
    -- The username as the user typed it (at most USERNAME_CHARS_MAX, 64, characters).
    username       VARCHAR(64)  NOT NULL,
    -- ASCII lowercase of username: usernames are unique regardless of case.
    username_lower VARCHAR(64)  NOT NULL UNIQUE,
    -- bcrypt hash in its modular crypt form ($2b$12$...).
    password_hash  VARCHAR(255) NOT NULL,
    roles          VARCHAR(255) NOT NULL,
    active         TINYINT      NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at_ms  BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE api_keys (
    key_id        CHAR(12)     NOT NULL PRIMARY KEY,
    uid           CHAR(36)     NOT NULL,
    -- At most DESCRIPTION_CHARS_MAX, 200, characters.
    description   VARCHAR(200) NOT NULL,
    -- Lowercase hex SHA-256 of the whole key; the key itself is never stored.
    key_hash      CHAR(64)     NOT NULL,
    created_at_ms BIGINT       NOT NULL,
    -- Set once when the owner deletes the key; NULL while the key is live.
    revoked_at_ms BIGINT       NULL,
    INDEX api_keys_by_uid (uid),
    CONSTRAINT api_keys_uid FOREIGN KEY (uid) REFERENCES users (uid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
