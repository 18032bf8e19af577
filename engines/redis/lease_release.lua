-- ratesync: free a holder's slot and wake waiters everywhere.
-- KEYS[1]  sorted set: holder id -> lease expiry (us)
-- ARGV     holder, release channel
-- Returns  1 when the holder had a slot.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return removed
