-- ratesync PostgreSQL schema, version 7: policies' allow and deny lists,
-- shared by every host. Mirrors engines/redis/list.lua.

CREATE UNLOGGED TABLE IF NOT EXISTS __SCHEMA__.policy_list (
  key        text   NOT NULL,   -- the list: a policy and `exempt` or `deny`
  entry      text   NOT NULL,
  expires_at bigint NOT NULL,   -- us; 0: never
  PRIMARY KEY (key, entry)
);

-- Adds (or renews) p_entry for p_ttl us (-1: never); true when the list changed.
CREATE OR REPLACE FUNCTION __SCHEMA__.policy_list_add(p_key text, p_entry text, p_ttl bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := __SCHEMA__.now_us();
  v_exp bigint := CASE WHEN p_ttl < 0 THEN 0 ELSE v_now + p_ttl END;
  v_old bigint;
BEGIN
  DELETE FROM __SCHEMA__.policy_list WHERE key = p_key AND expires_at > 0 AND expires_at <= v_now;
  SELECT l.expires_at INTO v_old FROM __SCHEMA__.policy_list l WHERE l.key = p_key AND l.entry = p_entry;
  INSERT INTO __SCHEMA__.policy_list (key, entry, expires_at) VALUES (p_key, p_entry, v_exp)
    ON CONFLICT (key, entry) DO UPDATE SET expires_at = EXCLUDED.expires_at;
  RETURN v_old IS DISTINCT FROM v_exp;
END $$;

-- Removes p_entry; true when it was there.
CREATE OR REPLACE FUNCTION __SCHEMA__.policy_list_remove(p_key text, p_entry text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM __SCHEMA__.policy_list WHERE key = p_key AND entry = p_entry;
  RETURN FOUND;
END $$;

-- The live entries with their expiry (0: never), and the server's time.
CREATE OR REPLACE FUNCTION __SCHEMA__.policy_list_read(p_key text)
RETURNS TABLE (now_us bigint, entry text, expires_at bigint)
LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := __SCHEMA__.now_us();
BEGIN
  DELETE FROM __SCHEMA__.policy_list l WHERE l.key = p_key AND l.expires_at > 0 AND l.expires_at <= v_now;
  RETURN QUERY SELECT v_now, l.entry, l.expires_at FROM __SCHEMA__.policy_list l WHERE l.key = p_key;
END $$;
