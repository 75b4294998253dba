-- Secrets at rest: the data keys that seal device credentials and TOTP secrets, each stored wrapped
-- by the master key (`wrap:v1:<master key id>:<base64>`). The master key itself is a file outside
-- the database. Written in the SQL SQLite and PostgreSQL share.
CREATE TABLE data_keys (
    id TEXT PRIMARY KEY,
    wrapped TEXT NOT NULL,
    created BIGINT NOT NULL
);
