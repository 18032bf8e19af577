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

-- Counted windows (kind 3), mirroring src/counter.rs: grants counted per
-- slot of `width` us in a hash (field: slot number); a decision counts the
-- last `span` slots, the current one included (span 1: a fixed window).
-- Returns the slot counts from the oldest counted slot to the current one,
-- that slot, and their sum; drops fields that no longer count.
local function counted_read(key, width, span, now)
  local slot = math.floor(now / width)
  local first = slot - span + 1
  if first < 0 then first = 0 end
  local counts, sum = {}, 0
  for s = first, slot do counts[s - first + 1] = 0 end
  local raw = redis.call('HGETALL', key)
  for i = 1, #raw, 2 do
    local s, n = tonumber(raw[i]), tonumber(raw[i + 1])
    if s < first then
      redis.call('HDEL', key, raw[i])
    elseif s <= slot then
      counts[s - first + 1] = n
      sum = sum + n
    else
      -- A slot ahead of the server's clock (it stepped back): still counts.
      counts[#counts] = counts[#counts] + n
      sum = sum + n
    end
  end
  return counts, first, sum
end

-- Microseconds until `cost` more fit in a counted window (0: now).
local function counted_retry(counts, first, sum, limit, width, span, now, cost)
  if cost > limit then return width * math.max(span - 1, 1) end
  if sum + cost <= limit then return 0 end
  local left = sum
  for i = 1, #counts do
    left = left - counts[i]
    if left + cost <= limit then
      return (first + i - 1 + span) * width - now
    end
  end
  return width * span
end
