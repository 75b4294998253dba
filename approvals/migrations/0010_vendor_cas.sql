-- Vendor CA public keys, one or more per broker node, so that every node sharing the database
-- trusts certificates issued on any of them (the CA private key stays where certificates are
-- issued).
CREATE TABLE vendor_cas (
    public_key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    created BIGINT NOT NULL
);
