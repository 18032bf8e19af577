-- ratesync PostgreSQL schema, version 1. Applied once per schema by the engine,
-- inside a transaction holding an advisory lock; __SCHEMA__ is replaced with
-- the configured schema name.
--
-- Times are integer microseconds since the epoch on the server's clock
-- (clock_timestamp(), read after the row lock is taken). The tables are
-- UNLOGGED: limiter state is short-lived, so it skips the WAL and commits do
-- not wait for a disk flush. A server crash empties them (a clean restart
-- keeps them), which forgets current buckets once: see the README.

CREATE UNLOGGED TABLE IF NOT EXISTS __SCHEMA__.rate (
  key        text   PRIMARY KEY,
  tat        bigint NOT NULL DEFAULT 0,    -- token bucket: theoretical arrival time
  grants     bigint[] NOT NULL DEFAULT '{}', -- sliding window: the last `limit` grants
  expires_at bigint NOT NULL               -- after this the row holds nothing
);
CREATE INDEX IF NOT EXISTS rate_expires_at ON __SCHEMA__.rate (expires_at);

CREATE UNLOGGED TABLE IF NOT EXISTS __SCHEMA__.lease (
  key        text   NOT NULL,
  holder     text   NOT NULL,
  expires_at bigint NOT NULL,
  PRIMARY KEY (key, holder)
);
CREATE INDEX IF NOT EXISTS lease_expires_at ON __SCHEMA__.lease (expires_at);

CREATE OR REPLACE FUNCTION __SCHEMA__.now_us() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
$$;

-- The earliest start of one more grant, and the bucket's TAT for commit().
-- kind 1: token bucket (GCRA); p1 = emission interval us, p2 = burst.
-- kind 2: sliding window; p1 = limit, p2 = window us.
CREATE OR REPLACE FUNCTION __SCHEMA__.earliest(
  p_kind int, p1 bigint, p2 bigint, p_now bigint, p_tat bigint, p_grants bigint[],
  OUT at_us bigint, OUT tat_us bigint)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  n int := coalesce(cardinality(p_grants), 0);
BEGIN
  IF p_kind = 1 THEN
    tat_us := greatest(p_tat, p_now);
    at_us := greatest(tat_us - p1 * (p2 - 1), p_now);
  ELSE
    at_us := p_now;
    IF n > 0 THEN at_us := greatest(at_us, p_grants[n]); END IF;
    -- The grant `limit` places back must have left the window (s - window, s].
    IF n >= p1 THEN at_us := greatest(at_us, p_grants[n - p1 + 1] + p2); END IF;
    tat_us := at_us;
  END IF;
END $$;

-- Stores a grant that starts at p_at (no earlier than earliest() said). A
-- later start (check_all waits for its slowest key) is charged from when it is
-- used. The row is kept until it holds nothing, plus a second.
CREATE OR REPLACE FUNCTION __SCHEMA__.commit_grant(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_at bigint, p_tat bigint, p_grants bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v bigint;
  g bigint[];
  n int;
BEGIN
  IF p_kind = 1 THEN
    v := greatest(p_tat, p_at) + p1;
    UPDATE __SCHEMA__.rate SET tat = v, grants = '{}', expires_at = v + 1000000 WHERE key = p_key;
  ELSE
    g := p_grants || p_at;
    n := cardinality(g);
    IF n > p1 THEN g := g[n - p1 + 1 : n]; END IF;
    UPDATE __SCHEMA__.rate SET tat = 0, grants = g, expires_at = p_at + p2 + 1000000 WHERE key = p_key;
  END IF;
END $$;

-- Locks the state row of p_key, creating it if absent (a sweep may delete an
-- idle row between the insert and the lock, hence the loop).
CREATE OR REPLACE FUNCTION __SCHEMA__.lock_rate(p_key text, OUT tat bigint, OUT grants bigint[])
LANGUAGE plpgsql AS $$
BEGIN
  LOOP
    SELECT r.tat, r.grants INTO tat, grants FROM __SCHEMA__.rate r WHERE r.key = p_key FOR UPDATE;
    EXIT WHEN FOUND;
    INSERT INTO __SCHEMA__.rate (key, expires_at) VALUES (p_key, 0) ON CONFLICT (key) DO NOTHING;
  END LOOP;
END $$;

-- Reserves the earliest rate slot within p_max_wait us (-1: unbounded).
-- Returns (true, wait, slot) when reserved, (false, retry_after, now) when not.
CREATE OR REPLACE FUNCTION __SCHEMA__.reserve(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_max_wait bigint,
  OUT granted boolean, OUT wait_us bigint, OUT slot_us bigint)
LANGUAGE plpgsql AS $$
DECLARE
  s record;
  e record;
  v_now bigint;
BEGIN
  SELECT * INTO s FROM __SCHEMA__.lock_rate(p_key);
  v_now := __SCHEMA__.now_us();
  SELECT * INTO e FROM __SCHEMA__.earliest(p_kind, p1, p2, v_now, s.tat, s.grants);
  wait_us := e.at_us - v_now;
  IF p_max_wait >= 0 AND wait_us > p_max_wait THEN
    granted := false;
    slot_us := v_now;
    RETURN;
  END IF;
  PERFORM __SCHEMA__.commit_grant(p_key, p_kind, p1, p2, e.at_us, e.tat_us, s.grants);
  granted := true;
  slot_us := e.at_us;
END $$;

-- Reserves one slot on every key within p_max_wait, or none (check_all).
-- Keys must be distinct. Returns (true, wait, 0) or (false, retry_after, index (1-based)).
CREATE OR REPLACE FUNCTION __SCHEMA__.reserve_all(
  p_keys text[], p_kinds int[], p1s bigint[], p2s bigint[], p_max_wait bigint,
  OUT granted boolean, OUT wait_us bigint, OUT refused int)
LANGUAGE plpgsql AS $$
DECLARE
  k text;
  s record;
  e record;
  v_now bigint;
  latest bigint;
  i int;
BEGIN
  -- Lock in key order, so two batches sharing keys cannot deadlock.
  FOR k IN SELECT DISTINCT x FROM unnest(p_keys) AS x ORDER BY x LOOP
    PERFORM __SCHEMA__.lock_rate(k);
  END LOOP;
  v_now := __SCHEMA__.now_us();
  latest := v_now;
  FOR i IN 1 .. cardinality(p_keys) LOOP
    SELECT r.tat, r.grants INTO s FROM __SCHEMA__.rate r WHERE r.key = p_keys[i];
    SELECT * INTO e FROM __SCHEMA__.earliest(p_kinds[i], p1s[i], p2s[i], v_now, s.tat, s.grants);
    IF p_max_wait >= 0 AND e.at_us - v_now > p_max_wait THEN
      granted := false;
      wait_us := e.at_us - v_now;
      refused := i;
      RETURN;
    END IF;
    latest := greatest(latest, e.at_us);
  END LOOP;
  FOR i IN 1 .. cardinality(p_keys) LOOP
    SELECT r.tat, r.grants INTO s FROM __SCHEMA__.rate r WHERE r.key = p_keys[i];
    SELECT * INTO e FROM __SCHEMA__.earliest(p_kinds[i], p1s[i], p2s[i], v_now, s.tat, s.grants);
    PERFORM __SCHEMA__.commit_grant(p_keys[i], p_kinds[i], p1s[i], p2s[i], latest, e.tat_us, s.grants);
  END LOOP;
  granted := true;
  wait_us := latest - v_now;
  refused := 0;
END $$;

-- A key's rate state, unchanged: (now, tat, grants).
CREATE OR REPLACE FUNCTION __SCHEMA__.rate_state(p_key text,
  OUT now_us bigint, OUT tat bigint, OUT grants bigint[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
  SELECT r.tat, r.grants INTO tat, grants FROM __SCHEMA__.rate r WHERE r.key = p_key;
  now_us := __SCHEMA__.now_us();
  tat := coalesce(tat, 0);
  grants := coalesce(grants, '{}');
END $$;

-- Takes (or renews) a concurrency slot. Returns (true, holders) when held,
-- (false, us until the earliest lease runs out) when every slot is taken.
CREATE OR REPLACE FUNCTION __SCHEMA__.lease_acquire(
  p_key text, p_holder text, p_lease bigint, p_max int,
  OUT acquired boolean, OUT n bigint)
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint;
  first_expiry bigint;
BEGIN
  -- One key's holders are counted and changed by one transaction at a time.
  PERFORM pg_advisory_xact_lock(hashtext('__SCHEMA__.lease'), hashtext(p_key));
  v_now := __SCHEMA__.now_us();
  DELETE FROM __SCHEMA__.lease WHERE key = p_key AND expires_at <= v_now;
  UPDATE __SCHEMA__.lease SET expires_at = v_now + p_lease WHERE key = p_key AND holder = p_holder;
  IF FOUND THEN
    acquired := true;
    SELECT count(*) INTO n FROM __SCHEMA__.lease WHERE key = p_key;
    RETURN;
  END IF;
  SELECT count(*), min(expires_at) INTO n, first_expiry FROM __SCHEMA__.lease WHERE key = p_key;
  IF n >= p_max THEN
    acquired := false;
    n := first_expiry - v_now;
    RETURN;
  END IF;
  INSERT INTO __SCHEMA__.lease (key, holder, expires_at) VALUES (p_key, p_holder, v_now + p_lease);
  acquired := true;
  n := n + 1;
END $$;

-- Extends a live lease; false when it was lost (expired or never held).
CREATE OR REPLACE FUNCTION __SCHEMA__.lease_renew(p_key text, p_holder text, p_lease bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := __SCHEMA__.now_us();
BEGIN
  UPDATE __SCHEMA__.lease SET expires_at = v_now + p_lease
   WHERE key = p_key AND holder = p_holder AND expires_at > v_now;
  RETURN FOUND;
END $$;

-- Frees a slot and wakes waiters everywhere (delivered at commit). The
-- payload is the key's SHA-256, so any key fits NOTIFY's 8000-byte limit.
CREATE OR REPLACE FUNCTION __SCHEMA__.lease_release(p_key text, p_holder text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM __SCHEMA__.lease WHERE key = p_key AND holder = p_holder;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pg_notify('__SCHEMA___released', encode(sha256(convert_to(p_key, 'UTF8')), 'hex'));
  RETURN true;
END $$;

-- Live holders of a key, unchanged: (now, holders, earliest expiry or 0).
CREATE OR REPLACE FUNCTION __SCHEMA__.lease_state(p_key text,
  OUT now_us bigint, OUT holders bigint, OUT first_expiry bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  now_us := __SCHEMA__.now_us();
  SELECT count(*), coalesce(min(l.expires_at), 0) INTO holders, first_expiry
    FROM __SCHEMA__.lease l WHERE l.key = p_key AND l.expires_at > now_us;
END $$;

-- Deletes up to p_limit idle rows of each table; rows in use are skipped.
-- Returns how many were deleted.
CREATE OR REPLACE FUNCTION __SCHEMA__.sweep(p_limit int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := __SCHEMA__.now_us();
  a bigint;
  b bigint;
BEGIN
  DELETE FROM __SCHEMA__.rate WHERE key IN (
    SELECT key FROM __SCHEMA__.rate WHERE expires_at < v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS a = ROW_COUNT;
  DELETE FROM __SCHEMA__.lease WHERE (key, holder) IN (
    SELECT key, holder FROM __SCHEMA__.lease WHERE expires_at <= v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS b = ROW_COUNT;
  RETURN a + b;
END $$;
