-- ratesync: reserve one rate slot on every key within max_wait, or none (check_all).
-- KEYS     one state key per item (distinct)
-- ARGV     max_wait_us (-1: unbounded), then kind, p1, p2 for each key
-- Returns  {1, wait_us, slot_us} with the latest slot, or {0, retry_after_us, index (1-based)}.
-- Every key is charged at the latest slot, the time the caller actually proceeds.
local max_wait = tonumber(ARGV[1])
local now = now_us()
local plans = {}
local latest = now
for i = 1, #KEYS do
  local kind, p1, p2 = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local at, tat = earliest(KEYS[i], kind, p1, p2, now)
  if max_wait >= 0 and at - now > max_wait then
    return {0, at - now, i}
  end
  if at > latest then latest = at end
  plans[i] = {kind, p1, p2, tat}
end
for i = 1, #KEYS do
  local p = plans[i]
  commit(KEYS[i], p[1], p[2], p[3], now, latest, p[4])
end
return {1, latest - now, latest}
