-- Break-glass access, the approvers' web logins and the notification outbox.

-- Vendor organisations pre-approved to open an emergency function at once (comma-separated).
ALTER TABLE functions ADD COLUMN emergency_orgs TEXT NOT NULL DEFAULT '';
-- The break-glass opening a session came from, if any (the session is flagged for review).
ALTER TABLE sessions ADD COLUMN breakglass TEXT;

CREATE TABLE breakglass (
    id TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors(name),
    org TEXT NOT NULL,
    site TEXT NOT NULL REFERENCES sites(name),
    device TEXT NOT NULL,
    function TEXT NOT NULL REFERENCES functions(name),
    reason TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    opened BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    reviewed_at BIGINT,
    reviewed_by TEXT,
    review_note TEXT
);
CREATE INDEX breakglass_review ON breakglass (reviewed_at, site);

-- A signed-in approver: the cookie holds a random token, the database only its SHA-256.
CREATE TABLE web_logins (
    token_hash TEXT PRIMARY KEY,
    approver TEXT NOT NULL REFERENCES approvers(name),
    csrf TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL
);

-- Webhook notifications, written in the same place as the change they report and delivered by
-- the serving nodes with retries, so a slow or dead receiver never holds up a session.
CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    created BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    delivered_at BIGINT,
    failed_at BIGINT,
    last_error TEXT
);
CREATE INDEX notifications_due ON notifications (delivered_at, failed_at, next_attempt_ms);
