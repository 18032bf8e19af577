-- ratesync: read a rate key without changing it.
-- KEYS[1]  state key;  ARGV[1] kind (1 token bucket, 2 sliding window)
-- Returns  {now_us, tat_us} for a bucket (tat 0: none), {now_us, grant_us...} for a window.
local now = now_us()
if tonumber(ARGV[1]) == 1 then
  return {now, tonumber(redis.call('GET', KEYS[1]) or '0')}
end
local out = {now}
for _, g in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = tonumber(g)
end
return out
