-- Versioned policy documents. Each `warden policy push` (later work) adds a
-- row; exactly one row at most is active at a time.
CREATE TABLE policy_versions (
    version    BIGINT      PRIMARY KEY,
    author     TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sha256     TEXT        NOT NULL,
    message    TEXT        NOT NULL DEFAULT '',
    document   TEXT        NOT NULL,
    active     BOOLEAN     NOT NULL DEFAULT FALSE
);

-- At most one active version.
CREATE UNIQUE INDEX policy_versions_one_active ON policy_versions (active) WHERE active;
