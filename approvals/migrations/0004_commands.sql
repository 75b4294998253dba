-- The command log across sessions, extracted from each recording when the session ends.
CREATE TABLE commands (
    session TEXT NOT NULL,
    seq BIGINT NOT NULL,
    vendor TEXT NOT NULL,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    time_us BIGINT NOT NULL,
    offset_ms BIGINT NOT NULL,
    channel BIGINT NOT NULL,
    kind TEXT NOT NULL,
    command TEXT NOT NULL,
    PRIMARY KEY (session, seq)
);
CREATE INDEX commands_vendor_time ON commands (vendor, time_us);
CREATE INDEX commands_site_time ON commands (site, time_us);
