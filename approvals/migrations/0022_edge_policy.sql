-- Signed policy bundles for edges. `box_key` is the X25519 public key the edge announced over its
-- authenticated link: secrets in its bundles are sealed to it. `policy_version` goes up by one
-- whenever the bundle's contents (`policy_digest`, SHA-256 over them) change; `policy_issued` is
-- when that version was made. `policy_acked` is the version the edge last confirmed holding, at
-- `policy_acked_at`.
ALTER TABLE edges ADD COLUMN box_key TEXT;
ALTER TABLE edges ADD COLUMN policy_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE edges ADD COLUMN policy_digest TEXT;
ALTER TABLE edges ADD COLUMN policy_issued BIGINT;
ALTER TABLE edges ADD COLUMN policy_acked BIGINT;
ALTER TABLE edges ADD COLUMN policy_acked_at BIGINT;
