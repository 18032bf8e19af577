-- The $4 keys refused most in [$1, $2), of policy $3 (NULL: every policy).
SELECT key,
       CAST(sum(CASE WHEN allowed THEN 0 ELSE decisions END) AS BIGINT) AS blocked,
       CAST(sum(decisions) AS BIGINT) AS total
FROM {t}ratesync_decision_minutes
WHERE minute >= $1 AND minute < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
GROUP BY key
HAVING sum(CASE WHEN allowed THEN 0 ELSE decisions END) > 0
ORDER BY blocked DESC, total DESC, key {binary}
LIMIT $4
