-- Versioned policy documents. Each `warden policy push` (later work) adds a
-- row; exactly one row at most is active at a time.
--
-- `created_at` is an RFC 3339 UTC timestamp with milliseconds
-- (e.g. 2025-01-31T12:00:00.000Z); SQLite has no timestamp type.
CREATE TABLE policy_versions (
    version    INTEGER PRIMARY KEY,
    author     TEXT    NOT NULL,
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    sha256     TEXT    NOT NULL,
    message    TEXT    NOT NULL DEFAULT '',
    document   TEXT    NOT NULL,
    active     BOOLEAN NOT NULL DEFAULT FALSE CHECK (active IN (0, 1))
);

-- At most one active version.
CREATE UNIQUE INDEX policy_versions_one_active ON policy_versions (active) WHERE active;
