-- ratesync PostgreSQL schema, version 6: policies. One check decides a
-- key's ban and every window of its policy under one row lock, in one
-- function call. Mirrors engines/redis/policy.lua and src/policy/decide.rs
-- (counted windows: src/counter.rs).
--
-- policy_key holds a key's ban and is the lock every check of the key takes;
-- policy_window holds each window's state, by the window's kind and name
-- (`p1:burst`), so a reloaded policy that changes a window's algorithm never
-- reads another algorithm's state.

CREATE UNLOGGED TABLE IF NOT EXISTS __SCHEMA__.policy_key (
  key          text   PRIMARY KEY,
  banned_until bigint NOT NULL DEFAULT 0,
  expires_at   bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS policy_key_expires_at ON __SCHEMA__.policy_key (expires_at);

CREATE UNLOGGED TABLE IF NOT EXISTS __SCHEMA__.policy_window (
  key        text     NOT NULL,
  win        text     NOT NULL,
  tat        bigint   NOT NULL DEFAULT 0,     -- token bucket
  grants     bigint[] NOT NULL DEFAULT '{}',  -- exact sliding window
  first_slot bigint   NOT NULL DEFAULT 0,     -- counted window: slot of counts[1]
  counts     bigint[] NOT NULL DEFAULT '{}',
  expires_at bigint   NOT NULL,
  PRIMARY KEY (key, win)
);
CREATE INDEX IF NOT EXISTS policy_window_expires_at ON __SCHEMA__.policy_window (expires_at);

-- Locks p_key's policy row, creating it if absent (a sweep may delete an
-- idle row between the insert and the lock, hence the loop).
CREATE OR REPLACE FUNCTION __SCHEMA__.lock_policy(p_key text, OUT banned_until bigint)
LANGUAGE plpgsql AS $$
BEGIN
  LOOP
    SELECT k.banned_until INTO banned_until FROM __SCHEMA__.policy_key k WHERE k.key = p_key FOR UPDATE;
    EXIT WHEN FOUND;
    INSERT INTO __SCHEMA__.policy_key (key, expires_at) VALUES (p_key, 0) ON CONFLICT (key) DO NOTHING;
  END LOOP;
END $$;

-- A counted window's counts from its oldest counted slot to now's slot
-- (width us, span slots), from the stored (first, counts); a slot ahead of
-- the clock (it stepped back) still counts, in now's slot.
CREATE OR REPLACE FUNCTION __SCHEMA__.counted_read(
  p_first bigint, p_counts bigint[], p_width bigint, p_span bigint, p_now bigint,
  OUT first_slot bigint, OUT counts bigint[], OUT total bigint)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  slot bigint := p_now / p_width;
  s bigint;
  j int;
  c bigint;
BEGIN
  first_slot := greatest(slot - p_span + 1, 0);
  counts := array_fill(0::bigint, ARRAY[(slot - first_slot + 1)::int]);
  total := 0;
  FOR j IN 1 .. coalesce(cardinality(p_counts), 0) LOOP
    s := p_first + j - 1;
    c := p_counts[j];
    IF s >= first_slot AND c > 0 THEN
      IF s > slot THEN s := slot; END IF;
      counts[s - first_slot + 1] := counts[s - first_slot + 1] + c;
      total := total + c;
    END IF;
  END LOOP;
END $$;

-- Microseconds until p_cost more fit in a counted window (0: now).
CREATE OR REPLACE FUNCTION __SCHEMA__.counted_retry(
  p_first bigint, p_counts bigint[], p_total bigint, p_limit bigint, p_width bigint,
  p_span bigint, p_now bigint, p_cost int)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  left_ bigint := p_total;
  j int;
BEGIN
  IF p_cost > p_limit THEN RETURN p_width * greatest(p_span - 1, 1); END IF;
  IF p_total + p_cost <= p_limit THEN RETURN 0; END IF;
  FOR j IN 1 .. cardinality(p_counts) LOOP
    left_ := left_ - p_counts[j];
    IF left_ + p_cost <= p_limit THEN
      RETURN (p_first + j - 1 + p_span) * p_width - p_now;
    END IF;
  END LOOP;
  RETURN p_width * p_span;
END $$;

-- One policy check. Per window i: p_wins[i] its state's name, kind, p1, p2,
-- p3 (kind 1 token bucket: emission us, burst; kind 2 exact sliding window:
-- limit, window us; kind 3 counted: limit, slot width us, span), action (1
-- throttle, 2 monitor, 3 block) and block us. Returns one row per window:
-- the ban set (us, 0: none), whether this check set it, the server's time,
-- the window's fit (0: room, else us until room) and its state after the
-- check; or one row with ban_us > 0, ban_started false and no window when
-- a ban refused the request first. A request an enforcing window refuses
-- takes from no window; with p_commit false nothing is stored.
CREATE OR REPLACE FUNCTION __SCHEMA__.policy_check(
  p_key text, p_wins text[], p_kinds int[], p1s bigint[], p2s bigint[], p3s bigint[],
  p_actions int[], p_blocks bigint[], p_cost int, p_shadow boolean, p_commit boolean)
RETURNS TABLE (ban_us bigint, ban_started boolean, now_us bigint, fit bigint,
               tat bigint, grants bigint[], first_slot bigint, counts bigint[])
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint;
  v_ban bigint;
  n int := cardinality(p_wins);
  i int;
  w record;
  e record;
  c record;
  fits bigint[] := '{}';
  tats bigint[] := '{}';
  grants_json jsonb[] := '{}';
  firsts bigint[] := '{}';
  counts_json jsonb[] := '{}';
  refused boolean := false;
  v_ban_us bigint := 0;
  g bigint[];
  v bigint;
  v_exp bigint;
BEGIN
  v_ban := __SCHEMA__.lock_policy(p_key);
  v_now := __SCHEMA__.now_us();
  IF v_ban > v_now THEN
    RETURN QUERY SELECT v_ban - v_now, false, v_now, NULL::bigint, NULL::bigint, NULL::bigint[], NULL::bigint, NULL::bigint[];
    RETURN;
  END IF;
  FOR i IN 1 .. n LOOP
    SELECT pw.tat, pw.grants, pw.first_slot, pw.counts INTO w FROM __SCHEMA__.policy_window pw
      WHERE pw.key = p_key AND pw.win = p_wins[i];
    IF NOT FOUND THEN
      SELECT 0::bigint AS tat, '{}'::bigint[] AS grants, 0::bigint AS first_slot, '{}'::bigint[] AS counts INTO w;
    END IF;
    IF p_kinds[i] = 3 THEN
      SELECT * INTO c FROM __SCHEMA__.counted_read(w.first_slot, w.counts, p2s[i], p3s[i], v_now);
      fits[i] := __SCHEMA__.counted_retry(c.first_slot, c.counts, c.total, p1s[i], p2s[i], p3s[i], v_now, p_cost);
      tats[i] := 0;
      grants_json[i] := '[]'::jsonb;
      firsts[i] := c.first_slot;
      counts_json[i] := to_jsonb(c.counts);
    ELSE
      IF (p_kinds[i] = 1 AND p_cost > p2s[i]) OR (p_kinds[i] = 2 AND p_cost > p1s[i]) THEN
        fits[i] := CASE WHEN p_kinds[i] = 1 THEN p1s[i] * p2s[i] ELSE p2s[i] END;
      ELSE
        SELECT * INTO e FROM __SCHEMA__.earliest_n(p_kinds[i], p1s[i], p2s[i], v_now, w.tat, w.grants, p_cost);
        fits[i] := e.at_us - v_now;
      END IF;
      tats[i] := w.tat;
      grants_json[i] := to_jsonb(w.grants);
      firsts[i] := 0;
      counts_json[i] := '[]'::jsonb;
    END IF;
    IF fits[i] > 0 AND p_actions[i] <> 2 THEN refused := true; END IF;
  END LOOP;
  FOR i IN 1 .. n LOOP
    IF fits[i] > 0 AND p_actions[i] = 3 AND NOT p_shadow THEN
      v_ban_us := greatest(v_ban_us, p_blocks[i]);
    END IF;
    IF p_commit AND NOT refused AND fits[i] = 0 THEN
      IF p_kinds[i] = 1 THEN
        v := greatest(tats[i], v_now) + p1s[i] * p_cost;
        tats[i] := v;
        v_exp := v + 1000000;
      ELSIF p_kinds[i] = 2 THEN
        -- The log forgets by time only, never by count (a reload may change
        -- the limit while a check under the old one runs; src/window.rs,
        -- forget_before).
        g := ARRAY(SELECT x FROM unnest(ARRAY(SELECT jsonb_array_elements_text(grants_json[i])::bigint)
                                       || array_fill(v_now, ARRAY[p_cost])) WITH ORDINALITY AS t(x, o)
                   WHERE x > v_now - p2s[i] ORDER BY o);
        grants_json[i] := to_jsonb(g);
        v_exp := v_now + p2s[i] + 1000000;
      ELSE
        g := ARRAY(SELECT jsonb_array_elements_text(counts_json[i])::bigint);
        g[cardinality(g)] := g[cardinality(g)] + p_cost;
        counts_json[i] := to_jsonb(g);
        v_exp := (v_now / p2s[i] + p3s[i]) * p2s[i] + 1000000;
      END IF;
      INSERT INTO __SCHEMA__.policy_window AS pw (key, win, tat, grants, first_slot, counts, expires_at)
        VALUES (p_key, p_wins[i],
                CASE WHEN p_kinds[i] = 1 THEN tats[i] ELSE 0 END,
                ARRAY(SELECT jsonb_array_elements_text(grants_json[i])::bigint),
                firsts[i],
                ARRAY(SELECT jsonb_array_elements_text(counts_json[i])::bigint),
                v_exp)
        ON CONFLICT (key, win) DO UPDATE SET tat = EXCLUDED.tat, grants = EXCLUDED.grants,
          first_slot = EXCLUDED.first_slot, counts = EXCLUDED.counts,
          expires_at = greatest(pw.expires_at, EXCLUDED.expires_at);
    END IF;
  END LOOP;
  IF p_commit AND v_ban_us > 0 THEN
    UPDATE __SCHEMA__.policy_key SET banned_until = v_now + v_ban_us, expires_at = v_now + v_ban_us + 1000000
      WHERE key = p_key;
  END IF;
  FOR i IN 1 .. n LOOP
    RETURN QUERY SELECT v_ban_us, v_ban_us > 0, v_now, fits[i], tats[i],
      ARRAY(SELECT jsonb_array_elements_text(grants_json[i])::bigint), firsts[i],
      ARRAY(SELECT jsonb_array_elements_text(counts_json[i])::bigint);
  END LOOP;
END $$;

-- Bans p_key for p_len us from now (a longer ban stays), or lifts its ban
-- (p_len < 0). Returns whether a ban held before.
CREATE OR REPLACE FUNCTION __SCHEMA__.policy_ban(p_key text, p_len bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_ban bigint;
  v_now bigint;
BEGIN
  v_ban := __SCHEMA__.lock_policy(p_key);
  v_now := __SCHEMA__.now_us();
  IF p_len < 0 THEN
    UPDATE __SCHEMA__.policy_key SET banned_until = 0, expires_at = 0 WHERE key = p_key;
  ELSIF v_now + p_len > v_ban THEN
    UPDATE __SCHEMA__.policy_key SET banned_until = v_now + p_len, expires_at = v_now + p_len + 1000000
      WHERE key = p_key;
  END IF;
  RETURN v_ban > v_now;
END $$;

CREATE OR REPLACE FUNCTION __SCHEMA__.sweep(p_limit int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := __SCHEMA__.now_us();
  a bigint;
  b bigint;
  c bigint;
  d bigint;
  e bigint;
BEGIN
  DELETE FROM __SCHEMA__.rate WHERE key IN (
    SELECT key FROM __SCHEMA__.rate WHERE expires_at < v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS a = ROW_COUNT;
  DELETE FROM __SCHEMA__.lease WHERE (key, holder) IN (
    SELECT key, holder FROM __SCHEMA__.lease WHERE expires_at <= v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS b = ROW_COUNT;
  DELETE FROM __SCHEMA__.lease_fence WHERE (key, holder) IN (
    SELECT key, holder FROM __SCHEMA__.lease_fence WHERE expires_at <= v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS c = ROW_COUNT;
  DELETE FROM __SCHEMA__.policy_key WHERE key IN (
    SELECT key FROM __SCHEMA__.policy_key WHERE expires_at < v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS d = ROW_COUNT;
  DELETE FROM __SCHEMA__.policy_window WHERE (key, win) IN (
    SELECT key, win FROM __SCHEMA__.policy_window WHERE expires_at < v_now
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS e = ROW_COUNT;
  RETURN a + b + c + d + e;
END $$;
