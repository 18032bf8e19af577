-- ratesync: take (or renew) a concurrency slot (docs/design.md, "Leases").
-- KEYS[1]  sorted set: holder id -> lease expiry (us)
-- KEYS[2]  sorted set: fenced holder id -> fence expiry (us), see lease_release
-- ARGV     holder, lease_us, max
-- Returns  {1, holders} when held, {0, us until the earliest lease runs out}.
local holder, lease, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
local n = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], holder) then
  local fence = redis.call('ZSCORE', KEYS[2], holder)
  if n >= max or (fence and tonumber(fence) > now) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local retry = 0
    if first[2] then retry = tonumber(first[2]) - now end
    return {0, retry}
  end
  n = n + 1
end
redis.call('ZADD', KEYS[1], fmt(now + lease), holder)
-- Every lease ends within `lease` of now, so the set outlives none of them.
redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
return {1, n}
