-- Site edges: the same binary at a site, dialing out to the central over mutually authenticated
-- TLS. `token_hash` is the SHA-256 of the one-time join token's secret (the token itself is shown
-- once); `token_used` marks it spent. `cert_serial` is the serial of the edge's current client
-- certificate: the central accepts no other (a certificate replaced by a renewal, or of a revoked
-- edge, is refused). `connected_since`/`last_seen`/`remote_addr`/`node` are written by the node
-- holding the edge's connection; an edge not seen for a while is offline.
CREATE TABLE edges (
    name TEXT PRIMARY KEY,
    region TEXT,
    created BIGINT NOT NULL,
    token_hash TEXT,
    token_expires BIGINT,
    token_used BIGINT,
    cert_serial TEXT,
    cert_not_after BIGINT,
    ttl BIGINT NOT NULL,
    revoked BIGINT,
    connected_since BIGINT,
    last_seen BIGINT,
    remote_addr TEXT,
    node TEXT
);

-- A site is served by at most one edge; sites without a row are reached directly.
CREATE TABLE edge_sites (
    site TEXT PRIMARY KEY REFERENCES sites (name) ON DELETE CASCADE,
    edge TEXT NOT NULL REFERENCES edges (name) ON DELETE CASCADE
);
