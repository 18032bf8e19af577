-- Decisions by policy and deciding window in [$1, $2), of policy $3 (NULL: every policy).
SELECT policy, window_name,
       CAST(sum(decisions) AS BIGINT) AS hits,
       CAST(sum(CASE WHEN allowed THEN 0 ELSE decisions END) AS BIGINT) AS blocks
FROM {t}ratesync_decision_minutes
WHERE minute >= $1 AND minute < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
GROUP BY policy, window_name
ORDER BY policy {binary}, window_name {binary}
