-- Which vendor CA signed each issued certificate (its SHA256 fingerprint as OpenSSH prints it),
-- so that retiring a CA revokes what it signed. Certificates issued before this column existed
-- have '' here: a retired CA's certificates stop working all the same, because the CA is no
-- longer trusted.
ALTER TABLE certificates ADD COLUMN ca TEXT NOT NULL DEFAULT '';
CREATE INDEX certificates_ca ON certificates (ca);
CREATE INDEX certificates_vendor ON certificates (vendor);

-- A retired vendor CA (unix seconds; NULL while trusted): every node stops trusting it. The row
-- stays so that a node restarting with the old key cannot register it again.
ALTER TABLE vendor_cas ADD COLUMN retired BIGINT;
