-- ratesync: extend a holder's lease; 0 when it was lost (expired or never held).
-- KEYS[1]  sorted set: holder id -> lease expiry (us)
-- ARGV     holder, lease_us
local holder, lease = ARGV[1], tonumber(ARGV[2])
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
if not redis.call('ZSCORE', KEYS[1], holder) then
  return 0
end
redis.call('ZADD', KEYS[1], fmt(now + lease), holder)
redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
return 1
