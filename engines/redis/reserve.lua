-- ratesync: reserve the earliest rate slot within max_wait (docs/design.md, Promises: 4).
-- KEYS[1]  state key
-- ARGV     kind, p1, p2 (see lib.lua), max_wait_us (-1: unbounded), cost (absent: 1)
-- Returns  {1, wait_us, slot_us} when reserved, {0, retry_after_us, now_us} when not.
local kind, p1, p2 = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
return reserve_one(KEYS[1], kind, p1, p2, now_us(), tonumber(ARGV[4]), tonumber(ARGV[5] or '1'))
