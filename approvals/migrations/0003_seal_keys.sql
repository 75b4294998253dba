-- Public keys that seal recordings, one per broker node, so any node (or an auditor with the
-- database) can check every node's seals.
CREATE TABLE seal_keys (
    public_key TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    created BIGINT NOT NULL
);
