-- Unbrokered access paths found by `postern scan`: one row per way into a device that is not
-- Postern's. `kind` is `key` (an authorized_keys entry: `location` is the file, `ident` the key's
-- fingerprint) or `port` (a listening remote-access service: `location` is `tcp`, `ident` the
-- port). A path not seen by a later scan of its device gets `closed_at`; seen again, it opens anew.
CREATE TABLE unbrokered_paths (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    location TEXT NOT NULL,
    ident TEXT NOT NULL,
    comment TEXT NOT NULL,
    options TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    closed_at BIGINT,
    PRIMARY KEY (site, device, kind, location, ident),
    FOREIGN KEY (site, device) REFERENCES devices (site, name) ON DELETE CASCADE
);
CREATE INDEX unbrokered_paths_open ON unbrokered_paths (closed_at);
