-- Grants name the devices they cover: a comma-separated list of device names at the grant's site,
-- empty for every device there (operator grants made without --device, and grants made before
-- this column existed, which covered the whole site).
ALTER TABLE grants ADD COLUMN devices TEXT NOT NULL DEFAULT '';

-- One open request per vendor, site, device and function at a time. Older duplicates left from
-- before this rule are closed (the newest stays pending) so that the index can be built.
UPDATE requests SET status = 'expired',
       decision_reason = 'superseded by a later request for the same device and function'
 WHERE status = 'pending'
   AND EXISTS (SELECT 1 FROM requests later
                WHERE later.status = 'pending'
                  AND later.vendor = requests.vendor
                  AND later.site = requests.site
                  AND later.device = requests.device
                  AND later.function = requests.function
                  AND (later.created > requests.created
                       OR (later.created = requests.created AND later.id > requests.id)));
-- A partial unique index (SQLite and PostgreSQL both have them): two nodes filing the same
-- request at once cannot both succeed.
CREATE UNIQUE INDEX requests_one_pending ON requests (vendor, site, device, function)
    WHERE status = 'pending';
