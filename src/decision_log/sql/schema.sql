-- The decision log's tables, the same in PostgreSQL and SQLite. Times are
-- whole numbers (microseconds for events, seconds for minutes) so both
-- sinks compare and bucket them alike, without time zones.

-- One row per logged decision. (origin, seq) is the event's id, so a batch
-- written twice is kept once.
CREATE TABLE IF NOT EXISTS {t}ratesync_decisions (
    origin bigint NOT NULL,
    seq bigint NOT NULL,
    ts bigint NOT NULL,
    key text NOT NULL,
    policy text NOT NULL,
    window_name text NOT NULL,
    tier text,
    path text,
    method text,
    allowed boolean NOT NULL,
    action text NOT NULL,
    count bigint NOT NULL,
    lim bigint,
    cost bigint NOT NULL,
    ip text,
    usr text,
    host text NOT NULL,
    config_version bigint NOT NULL,
    PRIMARY KEY (origin, seq)
);
CREATE INDEX IF NOT EXISTS ratesync_decisions_ts ON {t}ratesync_decisions (ts);
CREATE INDEX IF NOT EXISTS ratesync_decisions_key_ts ON {t}ratesync_decisions (key, ts);
CREATE INDEX IF NOT EXISTS ratesync_decisions_allowed_ts ON {t}ratesync_decisions (allowed, ts);

-- Decisions per minute per (policy, window, key, allowed): what reports
-- over weeks read instead of one row per request.
CREATE TABLE IF NOT EXISTS {t}ratesync_decision_minutes (
    minute bigint NOT NULL,
    policy text NOT NULL,
    window_name text NOT NULL,
    key text NOT NULL,
    allowed boolean NOT NULL,
    decisions bigint NOT NULL,
    cost bigint NOT NULL,
    PRIMARY KEY (minute, policy, window_name, key, allowed)
);
CREATE INDEX IF NOT EXISTS ratesync_decision_minutes_key ON {t}ratesync_decision_minutes (key, minute);

-- The audit trail: append-only, each record's hash chained to the last.
CREATE TABLE IF NOT EXISTS {t}ratesync_audit (
    seq bigint PRIMARY KEY,
    ts bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    policy text NOT NULL,
    subject text NOT NULL,
    detail text NOT NULL,
    prev text NOT NULL,
    hash text NOT NULL
);
