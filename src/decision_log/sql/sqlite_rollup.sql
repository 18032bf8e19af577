-- SQLite: adds $6 decisions costing $7 to one rollup row.
INSERT INTO {t}ratesync_decision_minutes AS m (minute, policy, window_name, key, allowed, decisions, cost)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (minute, policy, window_name, key, allowed)
DO UPDATE SET decisions = m.decisions + excluded.decisions, cost = m.cost + excluded.cost
