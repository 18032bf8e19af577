-- Up to $2 audit records after place $1, in order.
SELECT seq, ts, actor, action, policy, subject, detail, prev, hash
FROM {t}ratesync_audit WHERE seq > $1 ORDER BY seq LIMIT $2
