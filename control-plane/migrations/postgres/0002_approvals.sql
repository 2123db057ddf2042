-- Just-in-time approvals (issue 5). Times are Unix milliseconds (UTC), so
-- expiry comparisons are the same integer arithmetic in SQLite and PostgreSQL.
-- `status` holds what was decided; `expired` and `consumed` are derived from
-- `expires_ms` and `consumed_ms` when read. `model` is '' when the request
-- named none, so the binding compares with plain `=` in both dialects.
CREATE TABLE approvals (
    id                 TEXT    PRIMARY KEY,
    status             TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    mode               TEXT    NOT NULL CHECK (mode IN ('hold', 'ticket')),
    issuer             TEXT    NOT NULL,
    subject            TEXT    NOT NULL,
    email              TEXT,
    groups_json        TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    model              TEXT    NOT NULL DEFAULT '',
    route              TEXT    NOT NULL,
    rule               TEXT    NOT NULL,
    policy_version     BIGINT  NOT NULL,
    body_sha256        TEXT    NOT NULL,
    masked_prompt      TEXT    NOT NULL,
    approvers_json     TEXT    NOT NULL,
    created_ms         BIGINT  NOT NULL,
    expires_ms         BIGINT  NOT NULL,
    decided_by_issuer  TEXT,
    decided_by_subject TEXT,
    decided_by_email   TEXT,
    decided_ms         BIGINT,
    reason             TEXT,
    consumed_ms        BIGINT
);

CREATE INDEX approvals_binding ON approvals (subject, body_sha256, rule);
CREATE INDEX approvals_created ON approvals (created_ms);
