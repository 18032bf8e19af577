-- The newest audit record's place and hash (none when the trail is empty).
SELECT seq, hash FROM {t}ratesync_audit ORDER BY seq DESC LIMIT 1
