-- ratesync: take (or renew) a concurrency slot (DESIGN.md §3.6).
-- KEYS[1]  sorted set: holder id -> lease expiry (us)
-- ARGV     holder, lease_us, max
-- Returns  {1, holders} when held, {0, us until the earliest lease runs out}.
local holder, lease, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
local n = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], holder) then
  if n >= max then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tonumber(first[2]) - now}
  end
  n = n + 1
end
redis.call('ZADD', KEYS[1], fmt(now + lease), holder)
-- Every lease ends within `lease` of now, so the set outlives none of them.
redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
return {1, n}
