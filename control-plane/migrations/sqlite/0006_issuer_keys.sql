-- Issue 18: the keys of the control plane's own SAML-backed OIDC issuer
-- (<public-url>/idp), in generations: every replica signs and publishes
-- the same keys, and a new generation is added every 30 days (published an
-- hour before it signs). The PEM text is PKCS#8, as jwt-simple writes it.
-- Times are milliseconds since the epoch.
CREATE TABLE issuer_keys (
    -- Which issuer: 'saml'.
    issuer       TEXT    NOT NULL,
    -- 1, 2, 3, ...: the first replica to add a generation wins it.
    generation   INTEGER  NOT NULL,
    rs256_pem    TEXT    NOT NULL,
    es256_pem    TEXT    NOT NULL,
    ed25519_pem  TEXT    NOT NULL,
    created_ms   INTEGER  NOT NULL,
    PRIMARY KEY (issuer, generation)
);
