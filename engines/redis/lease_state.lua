-- ratesync: live holders of a concurrency key, without changing it.
-- KEYS[1]  sorted set: holder id -> lease expiry (us)
-- Returns  {now_us, holders, earliest expiry us (0: none)}
local now = now_us()
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. fmt(now), '+inf', 'WITHSCORES')
local first = 0
if #live > 0 then first = tonumber(live[2]) end
return {now, #live / 2, first}
