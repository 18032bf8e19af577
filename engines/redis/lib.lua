-- ratesync: helpers prepended to every script (Redis has no script includes).
-- Times are integer microseconds on the server's clock (TIME). Numbers are
-- written back with string.format('%.0f'), because Lua's default number
-- formatting keeps only 14 significant digits and a microsecond timestamp
-- has 16.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- The earliest start (us) of a grant of `cost` (nil: 1) for one key, and
-- the state commit() needs: the bucket's theoretical arrival time (kind 1).
-- kind 1: token bucket (GCRA); p1 = emission interval us, p2 = burst.
-- kind 2: sliding window; p1 = limit, p2 = window us.
-- Mirrors src/gcra.rs (decide) and src/window.rs (decide_n); the caller
-- never asks a cost above the burst or limit.
local function earliest(key, kind, p1, p2, now, cost)
  cost = cost or 1
  if kind == 1 then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local allow_at = tat - p1 * (p2 - cost)
    if allow_at < now then allow_at = now end
    return allow_at, tat
  else
    local n = redis.call('LLEN', key)
    local at = now
    if n > 0 then
      local last = tonumber(redis.call('LINDEX', key, -1))
      if last > at then at = last end
    end
    if n + cost > p1 then
      -- The grant `limit - cost + 1` places back must have left the window
      -- (s - window, s]: then `cost` more make `limit`.
      local oldest = tonumber(redis.call('LINDEX', key, -(p1 - cost + 1)))
      if oldest + p2 > at then at = oldest + p2 end
    end
    return at, at
  end
end

-- Stores a grant of `cost` (nil: 1) that starts at `at`, no earlier than
-- earliest() said. A start later than the earliest (check_all waits for its
-- slowest key) is charged from when it is used: the bucket's TAT moves to
-- max(tat, at) plus `cost` intervals, the window records `at` `cost` times.
-- Keys expire once they hold nothing.
local function commit(key, kind, p1, p2, now, at, tat, cost)
  cost = cost or 1
  if kind == 1 then
    local value = math.max(tat, at) + p1 * cost
    redis.call('SET', key, fmt(value), 'PX', math.ceil((value - now) / 1000) + 1000)
  else
    for _ = 1, cost do
      redis.call('RPUSH', key, fmt(at))
    end
    redis.call('LTRIM', key, -p1, -1)
    redis.call('PEXPIRE', key, math.ceil((at + p2 - now) / 1000) + 1000)
  end
end

-- Reserves the earliest slot of a grant of `cost` within `max_wait` us
-- (-1: unbounded) at `now`: {1, wait_us, slot_us} when reserved,
-- {0, retry_after_us, now_us} when not. A cost above the burst (kind 1) or
-- the limit (kind 2) never fits: {0, 0, now_us}.
local function reserve_one(key, kind, p1, p2, now, max_wait, cost)
  if cost < 1 or (kind == 1 and cost > p2) or (kind == 2 and cost > p1) then
    return {0, 0, now}
  end
  local at, tat = earliest(key, kind, p1, p2, now, cost)
  local wait = at - now
  if max_wait >= 0 and wait > max_wait then
    return {0, wait, now}
  end
  commit(key, kind, p1, p2, now, at, tat, cost)
  return {1, wait, at}
end
