-- ratesync: reserve the earliest rate slot within max_wait (docs/design.md, Promises: 4).
-- KEYS[1]  state key
-- ARGV     kind, p1, p2 (see lib.lua), max_wait_us (-1: unbounded), cost (absent: 1)
-- Returns  {1, wait_us, slot_us} when reserved, {0, retry_after_us, now_us} when not.
local kind, p1, p2 = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local cost = tonumber(ARGV[5] or '1')
local now = now_us()
-- A cost above the burst (kind 1) or the limit (kind 2) never fits.
if cost < 1 or (kind == 1 and cost > p2) or (kind == 2 and cost > p1) then
  return {0, 0, now}
end
local at, tat = earliest(KEYS[1], kind, p1, p2, now, cost)
local wait = at - now
if max_wait >= 0 and wait > max_wait then
  return {0, wait, now}
end
commit(KEYS[1], kind, p1, p2, now, at, tat, cost)
return {1, wait, at}
