-- ratesync PostgreSQL schema, version 4: weighted requests, a rate slot
-- that costs p_cost tokens (or window grants) at once. Mirrors
-- engines/redis/lib.lua (earliest, commit with cost) and src/gcra.rs,
-- src/window.rs (decide_n). The cost-1 functions of version 1 keep their
-- signatures and call these, so older builds on the same schema still work.

-- The earliest start of a grant of p_cost, and the bucket's TAT for commit.
-- kind 1: token bucket (GCRA); p1 = emission interval us, p2 = burst.
-- kind 2: sliding window; p1 = limit, p2 = window us.
CREATE OR REPLACE FUNCTION __SCHEMA__.earliest_n(
  p_kind int, p1 bigint, p2 bigint, p_now bigint, p_tat bigint, p_grants bigint[], p_cost int,
  OUT at_us bigint, OUT tat_us bigint)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  n int := coalesce(cardinality(p_grants), 0);
BEGIN
  IF p_kind = 1 THEN
    tat_us := greatest(p_tat, p_now);
    at_us := greatest(tat_us - p1 * (p2 - p_cost), p_now);
  ELSE
    at_us := p_now;
    IF n > 0 THEN at_us := greatest(at_us, p_grants[n]); END IF;
    -- The grant `limit - cost + 1` places back must have left the window.
    IF n + p_cost > p1 THEN at_us := greatest(at_us, p_grants[n + p_cost - p1] + p2); END IF;
    tat_us := at_us;
  END IF;
END $$;

CREATE OR REPLACE FUNCTION __SCHEMA__.earliest(
  p_kind int, p1 bigint, p2 bigint, p_now bigint, p_tat bigint, p_grants bigint[],
  OUT at_us bigint, OUT tat_us bigint)
LANGUAGE sql IMMUTABLE AS $$
  SELECT * FROM __SCHEMA__.earliest_n(p_kind, p1, p2, p_now, p_tat, p_grants, 1)
$$;

-- Stores a grant of p_cost that starts at p_at (no earlier than earliest_n
-- said): the TAT moves p_cost intervals, the window records p_at p_cost times.
CREATE OR REPLACE FUNCTION __SCHEMA__.commit_grant_n(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_at bigint, p_tat bigint, p_grants bigint[],
  p_cost int)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v bigint;
  g bigint[];
  n int;
BEGIN
  IF p_kind = 1 THEN
    v := greatest(p_tat, p_at) + p1 * p_cost;
    UPDATE __SCHEMA__.rate SET tat = v, grants = '{}', expires_at = v + 1000000 WHERE key = p_key;
  ELSE
    g := p_grants || array_fill(p_at, ARRAY[p_cost]);
    n := cardinality(g);
    IF n > p1 THEN g := g[n - p1 + 1 : n]; END IF;
    UPDATE __SCHEMA__.rate SET tat = 0, grants = g, expires_at = p_at + p2 + 1000000 WHERE key = p_key;
  END IF;
END $$;

CREATE OR REPLACE FUNCTION __SCHEMA__.commit_grant(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_at bigint, p_tat bigint, p_grants bigint[])
RETURNS void
LANGUAGE sql AS $$
  SELECT __SCHEMA__.commit_grant_n(p_key, p_kind, p1, p2, p_at, p_tat, p_grants, 1)
$$;

-- Reserves the earliest slot for p_cost within p_max_wait us (-1: unbounded).
-- Returns (true, wait, slot) when reserved, (false, retry_after, now) when
-- not; a cost above the burst or limit never fits: (false, 0, now).
CREATE OR REPLACE FUNCTION __SCHEMA__.reserve_n(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_max_wait bigint, p_cost int,
  OUT granted boolean, OUT wait_us bigint, OUT slot_us bigint)
LANGUAGE plpgsql AS $$
DECLARE
  s record;
  e record;
  v_now bigint;
BEGIN
  IF p_cost < 1 OR (p_kind = 1 AND p_cost > p2) OR (p_kind = 2 AND p_cost > p1) THEN
    granted := false;
    wait_us := 0;
    slot_us := __SCHEMA__.now_us();
    RETURN;
  END IF;
  SELECT * INTO s FROM __SCHEMA__.lock_rate(p_key);
  v_now := __SCHEMA__.now_us();
  SELECT * INTO e FROM __SCHEMA__.earliest_n(p_kind, p1, p2, v_now, s.tat, s.grants, p_cost);
  wait_us := e.at_us - v_now;
  IF p_max_wait >= 0 AND wait_us > p_max_wait THEN
    granted := false;
    slot_us := v_now;
    RETURN;
  END IF;
  PERFORM __SCHEMA__.commit_grant_n(p_key, p_kind, p1, p2, e.at_us, e.tat_us, s.grants, p_cost);
  granted := true;
  slot_us := e.at_us;
END $$;

CREATE OR REPLACE FUNCTION __SCHEMA__.reserve(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_max_wait bigint,
  OUT granted boolean, OUT wait_us bigint, OUT slot_us bigint)
LANGUAGE sql AS $$
  SELECT * FROM __SCHEMA__.reserve_n(p_key, p_kind, p1, p2, p_max_wait, 1)
$$;
