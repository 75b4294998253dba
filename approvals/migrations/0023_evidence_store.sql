-- When a session's sealed recording was copied to the shared evidence store (NULL: not yet, or
-- the node keeps recordings locally only).
ALTER TABLE sessions ADD COLUMN evidence_stored BIGINT;
