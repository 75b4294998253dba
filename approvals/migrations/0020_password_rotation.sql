-- Password rotation. `device_rotate_commands` holds the operator's command that changes a device
-- login's password (`{login}` and `{password}` are filled in when it runs).
CREATE TABLE device_rotate_commands (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    command TEXT NOT NULL,
    PRIMARY KEY (site, device),
    FOREIGN KEY (site, device) REFERENCES devices (site, name) ON DELETE CASCADE
);

-- A new password is set aside here (sealed, as every credential) before the command that applies
-- it runs. A rotation cut off between changing the password on the device and storing it thus
-- leaves a password Postern can still log in with: it is tried when the stored one is refused,
-- and adopted when it works. Storing a rotated credential removes the row.
CREATE TABLE device_pending_credentials (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    credential TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (site, device),
    FOREIGN KEY (site, device) REFERENCES devices (site, name) ON DELETE CASCADE
);
