-- A pre-approved emergency function that an edge may still open (as break-glass, reviewed later)
-- once its policy is older than the offline grace.
ALTER TABLE functions ADD COLUMN offline_ok BIGINT NOT NULL DEFAULT 0;
