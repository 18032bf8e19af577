-- Key $4's decisions by path in [$1, $2) microseconds, of policy $3, most first.
SELECT COALESCE(path, '') AS p,
       CAST(count(*) AS BIGINT) AS total,
       CAST(sum(CASE WHEN allowed THEN 0 ELSE 1 END) AS BIGINT) AS blocked
FROM {t}ratesync_decisions
WHERE key = $4 AND ts >= $1 AND ts < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
GROUP BY 1
ORDER BY total DESC, COALESCE(path, '') {binary}
LIMIT 20
