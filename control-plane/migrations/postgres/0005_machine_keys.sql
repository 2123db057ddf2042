-- Issue 18: machine keys, for callers without a workload identity. Only the
-- SHA-256 of a key is stored; the key itself is shown once, when issued.
-- Times are milliseconds since the epoch.
CREATE TABLE machine_keys (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    -- The subject its requests are recorded under, and that subject's own
    -- token `sub` (for the self-approval check; the owner when unknown).
    owner       TEXT    NOT NULL,
    owner_sub   TEXT    NOT NULL,
    groups_json TEXT    NOT NULL,
    models_json TEXT    NOT NULL,
    sha256      TEXT    NOT NULL UNIQUE,
    created_by  TEXT    NOT NULL,
    created_ms  BIGINT  NOT NULL,
    expires_ms  BIGINT  NOT NULL,
    revoked_ms  BIGINT,
    revoked_by  TEXT,
    -- The key this one replaced (`rotate`).
    replaces    TEXT
);

CREATE INDEX machine_keys_owner ON machine_keys (owner);
CREATE INDEX machine_keys_live ON machine_keys (expires_ms) WHERE revoked_ms IS NULL;
