-- ratesync: one policy check on one key (mirrors src/policy/decide.rs).
-- KEYS[1]   the key's ban (SET to the ban's end, us);  KEYS[1 + i] window i's state
-- ARGV      cost, shadow (1: never ban), commit (0: dry run), then per
--           window: kind, p1, p2, p3, action (1 throttle, 2 monitor,
--           3 block), block_us. kind 1 token bucket (p1 emission us, p2
--           burst), 2 exact sliding window (p1 limit, p2 window us), 3
--           counted (p1 limit, p2 slot width us, p3 span).
-- Returns   {ban_left_us, ban_started, now_us, fits, states}: ban_left_us
--           > 0 with ban_started 0 when a ban refused before any window;
--           fits[i] 0 when window i had room, else us until it would;
--           states[i] the window's state after the check (a bucket's
--           {tat}, a window's grants, a counted window's {first, counts...}).
-- A request an enforcing window refuses takes from no window.
local cost, shadow, commit_it = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3] == '1'
local now = now_us()
local ban = tonumber(redis.call('GET', KEYS[1]) or '0')
if ban > now then
  return {ban - now, 0, now, {}, {}}
end
local n = #KEYS - 1
local w, fits, plans, refused = {}, {}, {}, false
for i = 1, n do
  local a = 4 + 6 * (i - 1)
  w[i] = {tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
          tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])}
  local kind, p1, p2, p3 = w[i][1], w[i][2], w[i][3], w[i][4]
  local key = KEYS[1 + i]
  if kind == 3 then
    local counts, first, sum = counted_read(key, p2, p3, now)
    fits[i] = counted_retry(counts, first, sum, p1, p2, p3, now, cost)
    plans[i] = {first, counts}
  elseif (kind == 1 and cost > p2) or (kind == 2 and cost > p1) then
    fits[i] = (kind == 1) and p1 * p2 or p2
  else
    local at, tat = earliest(key, kind, p1, p2, now, cost)
    fits[i] = at - now
    plans[i] = tat
  end
  if fits[i] > 0 and w[i][5] ~= 2 then refused = true end
end
local ban_us = 0
for i = 1, n do
  local kind, p1, p2 = w[i][1], w[i][2], w[i][3]
  if commit_it and not refused and fits[i] == 0 then
    if kind == 3 then
      local slot = math.floor(now / p2)
      redis.call('HINCRBY', KEYS[1 + i], fmt(slot), cost)
      redis.call('PEXPIRE', KEYS[1 + i], math.ceil(((slot + w[i][4]) * p2 - now) / 1000) + 1000)
      local counts = plans[i][2]
      counts[#counts] = counts[#counts] + cost
    elseif kind == 1 then
      commit(KEYS[1 + i], kind, p1, p2, now, now, plans[i], cost)
      plans[i] = math.max(plans[i], now) + p1 * cost
    else
      -- An exact window's log forgets by time only, never by count (a
      -- reload may change the limit while a check under the old one runs;
      -- src/window.rs, forget_before).
      local key = KEYS[1 + i]
      for _ = 1, cost do redis.call('RPUSH', key, fmt(now)) end
      while true do
        local head = redis.call('LINDEX', key, 0)
        if not head or tonumber(head) > now - p2 then break end
        redis.call('LPOP', key)
      end
      redis.call('PEXPIRE', key, math.ceil(p2 / 1000) + 1000)
    end
  end
  if fits[i] > 0 and w[i][5] == 3 and not shadow and w[i][6] > ban_us then
    ban_us = w[i][6]
  end
end
if commit_it and ban_us > 0 then
  redis.call('SET', KEYS[1], fmt(now + ban_us), 'PX', math.ceil(ban_us / 1000) + 1000)
end
-- The states as they now are: known here for buckets and counted windows,
-- read back for exact windows.
local states = {}
for i = 1, n do
  local kind = w[i][1]
  if kind == 1 then
    states[i] = {plans[i] or tonumber(redis.call('GET', KEYS[1 + i]) or '0')}
  elseif kind == 2 then
    local s = {}
    for _, g in ipairs(redis.call('LRANGE', KEYS[1 + i], 0, -1)) do s[#s + 1] = tonumber(g) end
    states[i] = s
  else
    local s = {plans[i][1]}
    for j, c in ipairs(plans[i][2]) do s[j + 1] = c end
    states[i] = s
  end
end
return {ban_us, (ban_us > 0) and 1 or 0, now, fits, states}
