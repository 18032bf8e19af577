-- SQLite: one event, skipped when written before (same origin and seq).
INSERT OR IGNORE INTO {t}ratesync_decisions
    (origin, seq, ts, key, policy, window_name, tier, path, method, allowed, action, count, lim, cost, ip, usr, host, config_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
