-- Up to $2 events decided before $1 microseconds.
DELETE FROM {t}ratesync_decisions
WHERE {rowid} IN (SELECT {rowid} FROM {t}ratesync_decisions WHERE ts < $1 LIMIT $2)
