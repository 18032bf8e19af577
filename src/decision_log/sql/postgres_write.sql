-- PostgreSQL: a batch of events, and their rollups, in one statement (so
-- all or nothing). Events already written (same origin and seq) are
-- skipped, and only the rows inserted now are added to the rollups, so a
-- batch sent again after an unclear failure counts once. The rollup rows
-- are upserted in key order: two hosts writing the same minutes lock them
-- in one order and cannot deadlock.
WITH ins AS (
    INSERT INTO {t}ratesync_decisions
        (origin, seq, ts, key, policy, window_name, tier, path, method, allowed, action, count, lim, cost, ip, usr, host, config_version)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::boolean[], $11::text[], $12::bigint[],
                         $13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::bigint[])
    ON CONFLICT (origin, seq) DO NOTHING
    RETURNING ts, policy, window_name, key, allowed, cost
), up AS (
    INSERT INTO {t}ratesync_decision_minutes AS m (minute, policy, window_name, key, allowed, decisions, cost)
    SELECT (ts / 60000000) * 60, policy, window_name, key, allowed, count(*), sum(cost)
    FROM ins
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (minute, policy, window_name, key, allowed)
    DO UPDATE SET decisions = m.decisions + excluded.decisions, cost = m.cost + excluded.cost
    RETURNING 1
)
SELECT CAST(count(*) AS BIGINT) FROM ins
