-- One-time enrolment codes (`postern vendor invite`): only the code's SHA-256 is stored. A code
-- is burnt by setting `used_at` (with the key it certified) in the same transaction that gives
-- the vendor a new TOTP secret; `used_at IS NULL` in that update makes two racing uses one win.
CREATE TABLE vendor_invites (
    code_hash TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors(name),
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    used_at BIGINT,
    used_key TEXT
);
CREATE INDEX vendor_invites_vendor ON vendor_invites (vendor);
