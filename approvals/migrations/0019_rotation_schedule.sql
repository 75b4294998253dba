-- Scheduled rotation: a node claims a device before rotating it, so that of several nodes sharing
-- the database exactly one rotates a due device. A claim older than the lease (a node that died
-- mid-rotation) may be taken over.
CREATE TABLE device_rotation_claims (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    node TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (site, device),
    FOREIGN KEY (site, device) REFERENCES devices (site, name) ON DELETE CASCADE
);

-- Functions whose sessions each end with a rotation of the device's credential (break-glass: one
-- session, one credential). A function without a row does not rotate.
CREATE TABLE function_rotation (
    function TEXT PRIMARY KEY REFERENCES functions (name) ON DELETE CASCADE,
    after_session BIGINT NOT NULL DEFAULT 0
);
