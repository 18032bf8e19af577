-- ratesync: ban a policy key by hand, or lift its ban.
-- KEYS[1]  the key's ban;  ARGV[1] the ban's length in us (-1: lift it)
-- Returns  1 when a ban held before, else 0. A longer ban already there stays.
local now = now_us()
local ban = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = (ban > now) and 1 or 0
local len = tonumber(ARGV[1])
if len < 0 then
  redis.call('DEL', KEYS[1])
elseif now + len > ban then
  redis.call('SET', KEYS[1], fmt(now + len), 'PX', math.ceil(len / 1000) + 1000)
end
return held
