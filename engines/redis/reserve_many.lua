-- ratesync: decide several requests of one key in their order, in one call
-- (docs/design.md, Coalescing): each exactly as reserve.lua would, one after
-- the other, on one reading of the server's clock.
-- KEYS[1]  state key
-- ARGV     kind, p1, p2 (see lib.lua), then max_wait_us (-1: unbounded) and
--          cost of each request
-- Returns  reserve.lua's three numbers for each request, one list.
local kind, p1, p2 = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
local out = {}
for i = 4, #ARGV - 1, 2 do
  local r = reserve_one(KEYS[1], kind, p1, p2, now, tonumber(ARGV[i]), tonumber(ARGV[i + 1]))
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
end
return out
