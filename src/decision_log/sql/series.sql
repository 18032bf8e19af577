-- Admitted and refused per $4 seconds in [$1, $2), of policy $3 (NULL: every policy).
SELECT CAST((minute / $4) * $4 AS BIGINT) AS at,
       CAST(sum(CASE WHEN allowed THEN decisions ELSE 0 END) AS BIGINT),
       CAST(sum(CASE WHEN allowed THEN 0 ELSE decisions END) AS BIGINT)
FROM {t}ratesync_decision_minutes
WHERE minute >= $1 AND minute < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
GROUP BY 1
ORDER BY 1
