-- ratesync PostgreSQL schema, version 3: forgetting one key's state
-- (`ratesync reset`), mirrored by engines/redis/reset.lua.

-- Deletes the key's rate row and its leases, and wakes the key's waiters
-- (the slots they wait for are free now). Fences stay: they expire by
-- themselves, so a released holder's late acquire is still refused.
-- Returns the rows deleted.
CREATE OR REPLACE FUNCTION __SCHEMA__.reset(p_key text)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  m bigint;
BEGIN
  DELETE FROM __SCHEMA__.rate WHERE key = p_key;
  GET DIAGNOSTICS n = ROW_COUNT;
  DELETE FROM __SCHEMA__.lease WHERE key = p_key;
  GET DIAGNOSTICS m = ROW_COUNT;
  PERFORM pg_notify('__SCHEMA___released', encode(sha256(convert_to(p_key, 'UTF8')), 'hex'));
  RETURN n + m;
END
$$;
