-- ratesync: forget one key's state (`ratesync reset`).
-- KEYS[1]  the rate key;  KEYS[2]  the lease set (holder -> expiry)
-- ARGV     release channel
-- Returns  the number of keys deleted. Waiters of the key are woken: the
-- slots they wait for are free now. Fences stay (they expire by themselves),
-- so a released holder's late acquire is still refused.
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], '1')
return n
