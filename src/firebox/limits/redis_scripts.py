"""Lua sources run atomically by Redis; registered with redis-py's ``register_script``.

Each script is one round trip (``EVALSHA``, with redis-py reloading it on
``NOSCRIPT``). Time is passed in by the caller, from its injected clock, so
Redis' own clock never matters and tests with a fake clock work.

``SLIDING_WINDOW`` keeps one hash per counter: field = unix second, value =
what was counted in that second. It mirrors ``rate_limiter.decide`` exactly
(the tests run both backends through the same cases).

``RESERVE`` is the spend guard's reservation (see ``redis_spend_guard``).
``ADMIT`` is both in one call, for admission when the limiter and the guard
share a Redis: every rate counter is checked, then the spend reserved, and
the counters are written only once both said yes, so a request refused for
its spend uses up nothing of the rate window. Its keys span two hash tags,
so it needs a single Redis (not a cluster), which is what the deployment
runs; a cluster would need the account's counters under the spend hash tag.
"""

from __future__ import annotations

# The sliding window, as Lua functions shared by SLIDING_WINDOW and ADMIT.
# load_window: the buckets of KEYS[i] inside the window (stale ones deleted if ``prune``).
# count: adds ``amount`` to bucket ``now``. answer: {allowed, used, reset, retry (-1: never)}.
_WINDOW = """
local function load_window(key, now, wnd, prune)
  local oldest = now - wnd + 1
  local flat = redis.call('HGETALL', key)
  local w = {total = 0, secs = {}, counts = {}}
  local stale = {}
  for i = 1, #flat, 2 do
    local sec = tonumber(flat[i])
    if sec < oldest then
      stale[#stale + 1] = flat[i]
    else
      local n = tonumber(flat[i + 1])
      w.total = w.total + n
      w.secs[#w.secs + 1] = sec
      w.counts[sec] = n
    end
  end
  if prune and #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  return w
end

local function count(key, w, now, amount, ttl)
  redis.call('HINCRBY', key, tostring(now), amount)
  redis.call('EXPIRE', key, ttl)
  if w.counts[now] == nil then
    w.secs[#w.secs + 1] = now
    w.counts[now] = 0
  end
  w.counts[now] = w.counts[now] + amount
  w.total = w.total + amount
end

local function answer(w, now, wnd, limit, amount, allowed)
  table.sort(w.secs)
  local reset = 0
  for _, sec in ipairs(w.secs) do
    if w.counts[sec] > 0 then
      reset = sec + wnd - now
      break
    end
  end
  local retry = 0
  if allowed == 0 then
    retry = -1
    if amount <= limit then
      local left = w.total
      for _, sec in ipairs(w.secs) do
        left = left - w.counts[sec]
        if left + amount <= limit then
          retry = sec + wnd - now
          break
        end
      end
    end
  end
  return {allowed, w.total, reset, retry}
end
"""

# KEYS[1]  the counter's hash
# ARGV[1]  now, in unix seconds (integer)
# ARGV[2]  limit (ignored unless mode = 1)
# ARGV[3]  amount to count
# ARGV[4]  window, in seconds (60)
# ARGV[5]  key TTL, in seconds
# ARGV[6]  mode: 1 = admit iff used + amount <= limit, then count; 0 = count unconditionally;
#          -1 = read only
# Returns {allowed (0/1), used after this call, reset seconds, retry-after seconds (-1: never)}.
SLIDING_WINDOW = (
    _WINDOW
    + """
local now, limit, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wnd, ttl, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local w = load_window(KEYS[1], now, wnd, mode ~= -1)
local allowed = 0
if mode == 0 or (mode == 1 and w.total + amount <= limit) then
  allowed = 1
  if amount > 0 then
    count(KEYS[1], w, now, amount, ttl)
  end
end
return answer(w, now, wnd, limit, amount, allowed)
"""
)

# KEYS[1] the counter's hash; ARGV[1] the unix second a hit counted in; ARGV[2] the amount.
# Takes the amount back (a request refused after its rate check); a gone bucket stays gone.
REFUND = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then
  local left = tonumber(n) - tonumber(ARGV[2])
  if left > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], left)
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
end
return 0
"""

# The spend reservation of KEYS[1] (hash: committed, reserved, r:<id>) and KEYS[2]
# (sorted set of open reservations by expiry), from
# ARGV[1..8]: ledger, resync(0/1), worst, cap (-1 = none), now_ms, expiry_ms, id, key_ttl_s.
# ``committed`` is seeded from the ledger only when the hash is missing.
# Returns {admitted (0/1), committed, reserved (after), reservations expired now}.
# Idempotent by reservation id: the client retries a call once after a timeout even if
# the script already ran, so when ``r:<id>`` exists this is that retry: it answers
# "admitted" again and holds nothing more.
_SPEND = """
local function reserve_spend(h, z)
  if redis.call('HEXISTS', h, 'r:' .. ARGV[7]) == 1 then
    local c = tonumber(redis.call('HGET', h, 'committed'))
    return {1, c, tonumber(redis.call('HGET', h, 'reserved')), 0}
  end
  redis.call('HSETNX', h, 'committed', ARGV[1])
  redis.call('HSETNX', h, 'reserved', '0')
  local worst = tonumber(ARGV[3])
  local cap = tonumber(ARGV[4])
  if ARGV[2] == '1' and tonumber(ARGV[1]) > tonumber(redis.call('HGET', h, 'committed')) then
    redis.call('HSET', h, 'committed', ARGV[1])
  end
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[5])
  if #gone > 0 then
    for _, rid in ipairs(gone) do
      local m = redis.call('HGET', h, 'r:' .. rid)
      if m then
        redis.call('HDEL', h, 'r:' .. rid)
        redis.call('HINCRBY', h, 'reserved', '-' .. m)
      end
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[5])
  end
  local committed = tonumber(redis.call('HGET', h, 'committed'))
  local reserved = tonumber(redis.call('HGET', h, 'reserved'))
  if cap >= 0 and committed + reserved + worst > cap then
    return {0, committed, reserved, #gone}
  end
  redis.call('HINCRBY', h, 'reserved', ARGV[3])
  redis.call('HSET', h, 'r:' .. ARGV[7], ARGV[3])
  redis.call('ZADD', z, ARGV[6], ARGV[7])
  redis.call('EXPIRE', h, ARGV[8])
  redis.call('EXPIRE', z, ARGV[8])
  return {1, committed, reserved + worst, #gone}
end
"""

RESERVE = _SPEND + "\nreturn reserve_spend(KEYS[1], KEYS[2])\n"

# KEYS[1], KEYS[2]  the spend keys, as RESERVE; KEYS[3..]  one rate counter per check
# ARGV[1..8]  as RESERVE; ARGV[9] now (unix s); ARGV[10] window; ARGV[11] counter TTL;
#             then per check (KEYS[i]): ARGV[2i+6] limit, ARGV[2i+7] amount
# Returns {0, check index (1-based), used, reset, retry} when a check refuses (nothing
# written); else {1, admitted, committed, reserved, expired, then used, reset, retry per
# check} — the counters counted only when admitted. A retry of a call that admitted
# (its reservation ``r:<id>`` exists) counts nothing again and admits again: the
# reservation id is the request's marker.
ADMIT = (
    _WINDOW
    + _SPEND
    + """
local now, wnd, ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
if redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[7]) == 1 then
  local spend = reserve_spend(KEYS[1], KEYS[2])
  local out = {1, spend[1], spend[2], spend[3], spend[4]}
  for i = 3, #KEYS do
    local limit, amount = tonumber(ARGV[2 * i + 6]), tonumber(ARGV[2 * i + 7])
    local a = answer(load_window(KEYS[i], now, wnd, false), now, wnd, limit, amount, 1)
    out[#out + 1] = a[2]
    out[#out + 1] = a[3]
    out[#out + 1] = a[4]
  end
  return out
end
local windows = {}
for i = 3, #KEYS do
  local limit, amount = tonumber(ARGV[2 * i + 6]), tonumber(ARGV[2 * i + 7])
  local w = load_window(KEYS[i], now, wnd, true)
  if w.total + amount > limit then
    local a = answer(w, now, wnd, limit, amount, 0)
    return {0, i - 2, a[2], a[3], a[4]}
  end
  windows[i] = w
end
local spend = reserve_spend(KEYS[1], KEYS[2])
local out = {1, spend[1], spend[2], spend[3], spend[4]}
if spend[1] == 0 then
  return out
end
for i = 3, #KEYS do
  local limit, amount = tonumber(ARGV[2 * i + 6]), tonumber(ARGV[2 * i + 7])
  local w = windows[i]
  if amount > 0 then
    count(KEYS[i], w, now, amount, ttl)
  end
  local a = answer(w, now, wnd, limit, amount, 1)
  out[#out + 1] = a[2]
  out[#out + 1] = a[3]
  out[#out + 1] = a[4]
end
return out
"""
)
