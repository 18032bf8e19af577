-- Key $4's newest $5 decisions in [$1, $2) microseconds, of policy $3.
SELECT origin, seq, ts, key, policy, window_name, tier, path, method, allowed, action, count, lim, cost, ip, usr, host, config_version
FROM {t}ratesync_decisions
WHERE key = $4 AND ts >= $1 AND ts < $2 AND (CAST($3 AS TEXT) IS NULL OR policy = CAST($3 AS TEXT))
ORDER BY ts DESC, origin DESC, seq DESC
LIMIT $5
