-- ratesync PostgreSQL schema, version 2: fences for released holders.
--
-- A caller that gives up on a slot request at response_timeout releases
-- the holder at once, on another connection, while the request may still
-- be on its way to the server. When the release finds no slot, it fences
-- the holder for p_fence us, and lease_acquire refuses a fenced holder, so
-- the late request cannot take a slot that nobody would release. Release
-- and acquire of one key take the same advisory lock, so each sees the
-- other's effect. Mirrors lease_release.lua and lease_acquire.lua.

CREATE UNLOGGED TABLE IF NOT EXISTS __SCHEMA__.lease_fence (
  key        text   NOT NULL,
  holder     text   NOT NULL,
  expires_at bigint NOT NULL,
  PRIMARY KEY (key, holder)
);
CREATE INDEX IF NOT EXISTS lease_fence_expires_at ON __SCHEMA__.lease_fence (expires_at);

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
  IF n >= p_max OR EXISTS (SELECT 1 FROM __SCHEMA__.lease_fence f
                            WHERE f.key = p_key AND f.holder = p_holder AND f.expires_at > v_now) THEN
    acquired := false;
    n := coalesce(first_expiry - v_now, 0);
    RETURN;
  END IF;
  INSERT INTO __SCHEMA__.lease (key, holder, expires_at) VALUES (p_key, p_holder, v_now + p_lease);
  acquired := true;
  n := n + 1;
END $$;

-- Frees a slot and wakes waiters everywhere (delivered at commit), or,
-- when the holder had none, fences it for p_fence us.
CREATE OR REPLACE FUNCTION __SCHEMA__.lease_release(p_key text, p_holder text, p_fence bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('__SCHEMA__.lease'), hashtext(p_key));
  DELETE FROM __SCHEMA__.lease WHERE key = p_key AND holder = p_holder;
  IF FOUND THEN
    PERFORM pg_notify('__SCHEMA___released', encode(sha256(convert_to(p_key, 'UTF8')), 'hex'));
    RETURN true;
  END IF;
  v_now := __SCHEMA__.now_us();
  INSERT INTO __SCHEMA__.lease_fence (key, holder, expires_at) VALUES (p_key, p_holder, v_now + p_fence)
    ON CONFLICT (key, holder) DO UPDATE SET expires_at = EXCLUDED.expires_at;
  RETURN false;
END $$;

-- Deletes up to p_limit idle rows of each table; rows in use are skipped.
-- Returns how many were deleted.
CREATE OR REPLACE FUNCTION __SCHEMA__.sweep(p_limit int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := __SCHEMA__.now_us();
  a bigint;
  b bigint;
  c bigint;
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
  RETURN a + b + c;
END $$;
