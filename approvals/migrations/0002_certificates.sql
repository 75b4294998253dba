-- Vendor certificates issued by `postern vendor cert`: lets the broker name an expired or
-- revoked certificate, and lets auditors list what was issued to whom.
CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors(name),
    key_id TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    valid_after BIGINT NOT NULL,
    valid_before BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL
);
CREATE INDEX certificates_key ON certificates (key_fingerprint);
