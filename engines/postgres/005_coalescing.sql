-- ratesync PostgreSQL schema, version 5: several requests of one key decided
-- in one call (docs/design.md, Coalescing). Mirrors
-- engines/redis/reserve_many.lua: each request exactly as reserve_n would
-- decide it after the one before, on one reading of the clock, under one row
-- lock, and one write at the end.

-- The state after a grant of p_cost that starts at p_at (no earlier than
-- earliest_n said): the TAT moves p_cost intervals, the window records p_at
-- p_cost times and keeps its last p1 grants.
CREATE OR REPLACE FUNCTION __SCHEMA__.after_grant_n(
  p_kind int, p1 bigint, p_at bigint, p_tat bigint, p_grants bigint[], p_cost int,
  OUT tat_us bigint, OUT grants bigint[])
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  n int;
BEGIN
  IF p_kind = 1 THEN
    tat_us := greatest(p_tat, p_at) + p1 * p_cost;
    grants := '{}';
  ELSE
    tat_us := 0;
    grants := coalesce(p_grants, '{}') || array_fill(p_at, ARRAY[p_cost]);
    n := cardinality(grants);
    IF n > p1 THEN grants := grants[n - p1 + 1 : n]; END IF;
  END IF;
END $$;

-- Stores a state after_grant_n computed; rows expire a second after they
-- stop mattering (a full bucket, an empty window).
CREATE OR REPLACE FUNCTION __SCHEMA__.store_rate(
  p_key text, p_kind int, p2 bigint, p_tat bigint, p_grants bigint[])
RETURNS void
LANGUAGE sql AS $$
  UPDATE __SCHEMA__.rate SET tat = p_tat, grants = p_grants,
    expires_at = CASE WHEN p_kind = 1 THEN p_tat
                      ELSE coalesce(p_grants[cardinality(p_grants)], 0) + p2 END + 1000000
  WHERE key = p_key
$$;

-- Version 4's commit, now the two steps above.
CREATE OR REPLACE FUNCTION __SCHEMA__.commit_grant_n(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_at bigint, p_tat bigint, p_grants bigint[],
  p_cost int)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  a record;
BEGIN
  SELECT * INTO a FROM __SCHEMA__.after_grant_n(p_kind, p1, p_at, p_tat, p_grants, p_cost);
  PERFORM __SCHEMA__.store_rate(p_key, p_kind, p2, a.tat_us, a.grants);
END $$;

-- Decides request i (cost p_costs[i], bound p_max_waits[i] us, -1:
-- unbounded) for every i in order; answers reserve_n's three values for
-- each, as three arrays.
CREATE OR REPLACE FUNCTION __SCHEMA__.reserve_many(
  p_key text, p_kind int, p1 bigint, p2 bigint, p_max_waits bigint[], p_costs int[],
  OUT granted boolean[], OUT wait_us bigint[], OUT slot_us bigint[])
LANGUAGE plpgsql AS $$
DECLARE
  s record;
  e record;
  a record;
  v_now bigint;
  v_tat bigint;
  v_grants bigint[];
  c int;
  w bigint;
  changed boolean := false;
BEGIN
  granted := '{}';
  wait_us := '{}';
  slot_us := '{}';
  SELECT * INTO s FROM __SCHEMA__.lock_rate(p_key);
  v_now := __SCHEMA__.now_us();
  v_tat := s.tat;
  v_grants := s.grants;
  FOR i IN 1 .. coalesce(cardinality(p_costs), 0) LOOP
    c := p_costs[i];
    IF c < 1 OR (p_kind = 1 AND c > p2) OR (p_kind = 2 AND c > p1) THEN
      granted := granted || false;
      wait_us := wait_us || 0::bigint;
      slot_us := slot_us || v_now;
      CONTINUE;
    END IF;
    SELECT * INTO e FROM __SCHEMA__.earliest_n(p_kind, p1, p2, v_now, v_tat, v_grants, c);
    w := e.at_us - v_now;
    IF p_max_waits[i] >= 0 AND w > p_max_waits[i] THEN
      granted := granted || false;
      wait_us := wait_us || w;
      slot_us := slot_us || v_now;
      CONTINUE;
    END IF;
    SELECT * INTO a FROM __SCHEMA__.after_grant_n(p_kind, p1, e.at_us, e.tat_us, v_grants, c);
    v_tat := a.tat_us;
    v_grants := a.grants;
    changed := true;
    granted := granted || true;
    wait_us := wait_us || w;
    slot_us := slot_us || e.at_us;
  END LOOP;
  IF changed THEN
    PERFORM __SCHEMA__.store_rate(p_key, p_kind, p2, v_tat, v_grants);
  END IF;
END $$;
