-- Issue 18: what the control plane's own issuers hand out once and take
-- back once, kept where every replica finds it: authorization codes and
-- refresh tokens ('code:<issuer path>', 'refresh:<issuer path>'), SAML
-- sign-ins waiting for the IdP ('saml_request') and SAML message ids already
-- accepted ('saml_seen'). A code, token or RelayState is stored only as
-- its SHA-256. Taking a row deletes it, so only one replica can.
CREATE TABLE one_time_grants (
    hash        TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    expires_ms  BIGINT  NOT NULL
);

CREATE INDEX one_time_grants_expiry ON one_time_grants (expires_ms);
CREATE INDEX one_time_grants_kind ON one_time_grants (kind, expires_ms);
