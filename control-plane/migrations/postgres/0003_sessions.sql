-- Recorded sessions (issue 6): one row per gateway record, chained by hashes.
-- `seq` is assigned by the control plane in order (1, 2, 3, ...) inside one
-- locked transaction, so a gap means a deleted row. `record` is the canonical
-- JSON (keys sorted) of what the gateway sent; `hash` is
-- sha256_hex(prev_hash || "\n" || record) and `prev_hash` the previous row's
-- hash (64 zeros for the first), so editing, deleting or moving a row shows.
-- `received_at` is RFC 3339 UTC text, written by the control plane.
CREATE TABLE sessions (
    seq         BIGINT  PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    received_at TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    decision    TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);

CREATE INDEX sessions_subject ON sessions (subject, seq);
CREATE INDEX sessions_hash ON sessions (hash);
