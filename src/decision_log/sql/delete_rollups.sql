-- Up to $2 rollup rows of minutes before $1 seconds.
DELETE FROM {t}ratesync_decision_minutes
WHERE {rowid} IN (SELECT {rowid} FROM {t}ratesync_decision_minutes WHERE minute < $1 LIMIT $2)
