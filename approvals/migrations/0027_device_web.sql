-- Device web UIs (issue 18): where a device serves its UI (`https://HOST:PORT` or
-- `http://HOST:PORT`) and, for HTTPS, the SHA-256 (hex) of the certificate it presents, pinned at
-- enrolment as SSH host keys are: the broker trusts that certificate and no other.
CREATE TABLE device_web (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    url TEXT NOT NULL,
    cert_sha256 TEXT,
    created BIGINT NOT NULL,
    PRIMARY KEY (site, device),
    FOREIGN KEY (site, device) REFERENCES devices (site, name) ON DELETE CASCADE
);

-- One-time sign-in links printed by `ssh VENDOR:web@broker`: the SHA-256 of the link's token, whose
-- vendor, valid for a minute, used once.
CREATE TABLE web_entries (
    token_hash TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors (name),
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    used BIGINT
);

-- Browser sessions a link opened: the SHA-256 of the session cookie, whose vendor, until when
-- (the end of the vendor's web grants when it opened; every request is checked again anyway).
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    vendor TEXT NOT NULL REFERENCES vendors (name),
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    ended BIGINT
);
