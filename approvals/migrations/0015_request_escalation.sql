-- A pending request still undecided past `approval_slo` is escalated once: when, as set by the one
-- node whose conditional update won (NULL: not escalated). Expiry past `request_ttl` uses the
-- existing `expired` status.
ALTER TABLE requests ADD COLUMN escalated_at BIGINT;
