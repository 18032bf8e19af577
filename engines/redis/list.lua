-- ratesync: a policy's allow or deny list, shared by every host.
-- KEYS[1]  the list: a sorted set, member the entry, score its expiry (us; 0: never)
-- ARGV     'add', entry, ttl_us (-1: never) | 'remove', entry | 'read'
-- Returns  add and remove: 1 when the list changed, else 0; read: {now_us,
--          {entry, expiry, ...}}. Expired entries are dropped first.
local now = now_us()
redis.call('ZREMRANGEBYSCORE', KEYS[1], 1, now)
local op = ARGV[1]
if op == 'add' then
  local ttl = tonumber(ARGV[3])
  local exp = 0
  if ttl >= 0 then exp = now + ttl end
  local old = redis.call('ZSCORE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[1], fmt(exp), ARGV[2])
  if old and tonumber(old) == exp then return 0 end
  return 1
elseif op == 'remove' then
  return redis.call('ZREM', KEYS[1], ARGV[2])
end
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
