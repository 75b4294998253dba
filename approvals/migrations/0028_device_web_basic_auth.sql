-- Device web UIs behind HTTP basic auth (issue 18): the user Postern signs in to the UI as, and
-- its password sealed like every other device secret (the row is the associated data), so the
-- vendor uses the UI without ever seeing the credential.
ALTER TABLE device_web ADD COLUMN basic_user TEXT;
ALTER TABLE device_web ADD COLUMN basic_password TEXT;
