-- Postern directory, grants and sessions. Times are Unix seconds; booleans are 0/1 integers so
-- that one set of runtime queries serves SQLite and PostgreSQL through sqlx's Any driver.
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('revision', 0);

CREATE TABLE vendors (
    name TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    contract_end BIGINT,
    disabled BIGINT NOT NULL DEFAULT 0,
    totp_secret TEXT NOT NULL,
    totp_last_step BIGINT NOT NULL DEFAULT -1,
    created BIGINT NOT NULL
);

CREATE TABLE sites (
    name TEXT PRIMARY KEY,
    region TEXT,
    created BIGINT NOT NULL
);

CREATE TABLE devices (
    site TEXT NOT NULL REFERENCES sites(name),
    name TEXT NOT NULL,
    addr TEXT NOT NULL,
    login TEXT NOT NULL,
    credential_kind TEXT NOT NULL,
    credential TEXT NOT NULL,
    host_key TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (site, name)
);

CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    allow TEXT NOT NULL,
    login TEXT,
    max_window BIGINT NOT NULL,
    emergency BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL
);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors(name),
    site TEXT NOT NULL REFERENCES sites(name),
    function TEXT NOT NULL REFERENCES functions(name),
    valid_from BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    granted_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    created BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_by TEXT
);
CREATE INDEX grants_vendor_site ON grants (vendor, site);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    vendor TEXT NOT NULL,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    function TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    node TEXT NOT NULL,
    source TEXT NOT NULL,
    recording TEXT NOT NULL,
    started BIGINT NOT NULL,
    ended BIGINT,
    end_reason TEXT,
    kill_requested BIGINT NOT NULL DEFAULT 0,
    records BIGINT,
    final_hash TEXT
);
CREATE INDEX sessions_live ON sessions (ended, node);
