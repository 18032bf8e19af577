-- Key $4's decisions in [$1, $2), of policy $3 (NULL: every policy).
SELECT CAST(COALESCE(sum(decisions), 0) AS BIGINT),
       CAST(COALESCE(sum(CASE WHEN allowed THEN decisions ELSE 0 END), 0) AS BIGINT)
FROM {t}ratesync_decision_minutes
WHERE key = $4 AND minute >= $1 AND minute < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
