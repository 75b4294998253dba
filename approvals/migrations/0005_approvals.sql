-- Approvers (accountable owners of sites or regions) and vendors' access requests.
CREATE TABLE approvers (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    totp_secret TEXT NOT NULL,
    totp_last_step BIGINT NOT NULL DEFAULT -1,
    sites TEXT NOT NULL,
    regions TEXT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL
);

CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors(name),
    site TEXT NOT NULL REFERENCES sites(name),
    device TEXT NOT NULL,
    function TEXT NOT NULL REFERENCES functions(name),
    reason TEXT NOT NULL,
    duration BIGINT NOT NULL,
    status TEXT NOT NULL,
    created BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT,
    decision_reason TEXT,
    grant_id TEXT
);
CREATE INDEX requests_status_site ON requests (status, site);
CREATE INDEX requests_vendor ON requests (vendor, created);
