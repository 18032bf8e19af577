-- ratesync: free a holder's slot and wake waiters everywhere.
-- KEYS[1]  sorted set: holder id -> lease expiry (us)
-- KEYS[2]  sorted set: fenced holder id -> fence expiry (us)
-- ARGV     holder, release channel, fence_us
-- Returns  1 when the holder had a slot. A holder that had none is fenced
-- for fence_us: an acquire of it still on its way (its caller gave up at
-- response_timeout) is refused when it arrives, instead of taking a slot
-- that nobody would release.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('PUBLISH', ARGV[2], '1')
  return 1
end
local fence_us = tonumber(ARGV[3])
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
redis.call('ZADD', KEYS[2], fmt(now + fence_us), ARGV[1])
redis.call('PEXPIRE', KEYS[2], math.ceil(fence_us / 1000) + 1000)
return 0
