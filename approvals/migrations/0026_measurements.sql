-- When the revision last moved (Unix milliseconds): what a revocation's propagation is measured
-- from. Every change that bumps `revision` sets it in the same transaction.
INSERT INTO meta (key, value) VALUES ('revision_ms', 0);

-- Measured durations behind the operator's SLOs (`postern report`, the metrics endpoint):
-- `certificate_issuance` (a certificate request to its certificate registered),
-- `revocation_propagation` (a revoking change committed to the live session it ended closed),
-- `edge_propagation` (a policy change committed to a site edge holding it). `at` is when the
-- measurement finished (Unix milliseconds); `subject` names the certificate, session or edge.
CREATE TABLE slo_samples (
    kind TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    millis BIGINT NOT NULL,
    subject TEXT NOT NULL
);
CREATE INDEX slo_samples_kind_at ON slo_samples (kind, at_ms);

-- What the metrics job and `postern report` read often, at the estate's scale: decisions since
-- the last read, the live grants (most grants are history), sessions in the report's window.
CREATE INDEX requests_decided ON requests (decided_at);
CREATE INDEX grants_until ON grants (valid_until);
-- Standing grants are found by their length: few grants are long, most are history.
CREATE INDEX grants_length ON grants ((valid_until - valid_from));
CREATE INDEX sessions_started ON sessions (started);
CREATE INDEX requests_escalated ON requests (escalated_at);
CREATE INDEX sessions_unstored ON sessions (node, evidence_stored);
