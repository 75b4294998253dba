-- Signed checkpoints of each node's audit log head (the whole signed checkpoint in `body`, as
-- JSON), one sink off the broker host: `postern checkpoints export` reads them and `postern
-- verify` checks the local log against them. Written in the SQL SQLite and PostgreSQL share.
CREATE TABLE checkpoints (
    installation TEXT NOT NULL,
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    time BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (installation, node, seq)
);
