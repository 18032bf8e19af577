-- One audit record.
INSERT INTO {t}ratesync_audit (seq, ts, actor, action, policy, subject, detail, prev, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
