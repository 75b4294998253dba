-- Device credential rotation: one row per device, replaced by every attempt. `credential_set` is
-- when the credential in use was set by a rotation (NULL: the one given at enrolment, so its age
-- runs from `devices.created`); `last_result` is `ok` or the step that failed, with its error.
CREATE TABLE device_rotations (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    credential_set BIGINT,
    last_at BIGINT NOT NULL,
    last_result TEXT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (site, device),
    FOREIGN KEY (site, device) REFERENCES devices (site, name) ON DELETE CASCADE
);
