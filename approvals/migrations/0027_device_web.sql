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
