-- Key $4's first and last logged decision (microseconds) in [$1, $2) microseconds, of policy $3.
SELECT min(ts), max(ts)
FROM {t}ratesync_decisions
WHERE key = $4 AND ts >= $1 AND ts < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
