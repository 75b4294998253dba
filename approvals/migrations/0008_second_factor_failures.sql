-- Wrong second-factor codes (TOTP) per vendor or approver, shared by every broker node and kept
-- across restarts, for the exponential backoff in approvals::lockout. Counted only after the
-- first factor (certificate, password) passed, so a stranger cannot lock anyone out.
CREATE TABLE second_factor_failures (
    subject TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);
