"""Lua sources run atomically by Redis, through ``redis_wire.ScriptClient``.

Each script is one round trip (``EVALSHA``, sent as ``EVAL`` on ``NOSCRIPT``).
Time is passed in by the caller, from its injected clock, so Redis' own clock
never matters and tests with a fake clock work.

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

# The sliding window, as Lua functions shared by SLIDING_WINDOW, REFUND and ADMIT.
#
# A counter's hash holds one field per unix second (what was counted in it)
# and three bookkeeping fields: ``_t`` the sum of those buckets, ``_at`` the
# latest second the window was moved to, ``_o`` the oldest second whose
# bucket is not zero (absent: look it up). Invariant: only buckets of the
# seconds ``_at - 59 .. _at`` exist and ``_t`` is their sum. So a check in the
# same second as the last one reads three fields and writes two (no bucket
# scan: with a full window the scan cost ~100 µs of Redis time per call), and
# moving the window deletes only the buckets that left it. The bucket list is
# read whole only for a refusal's Retry-After.
#
# window(key, now): the counter moved to max(now, _at) (a replica whose clock is
# behind counts in the latest second, which only keeps it in the window longer);
# a missing ``_at`` (a new key, or one written before these fields) is rebuilt
# from the buckets. count(key, w, amount) adds to the current bucket.
# allowed_answer / refused_answer: {allowed, used, reset, retry (-1: never)},
# exactly as ``rate_limiter.decide`` computes them for the caller's ``now``.
_WINDOW = """
local WND = 60

local function is_second(field)
  return string.sub(field, 1, 1) ~= '_'
end

-- The buckets of seconds from .. to (to >= from): their field names and values.
local function buckets(key, from, to)
  local fields = {}
  for sec = from, to do
    fields[#fields + 1] = tostring(sec)
  end
  return fields, redis.call('HMGET', key, unpack(fields))
end

local function first_nonzero(key, from, to)
  if to < from then
    return nil
  end
  local fields, values = buckets(key, from, to)
  for i = 1, #fields do
    if values[i] and tonumber(values[i]) > 0 then
      return from + i - 1
    end
  end
  return nil
end

local function rebuild(key, now)
  local flat = redis.call('HGETALL', key)
  local w = {t = 0, at = now, o = nil, dirty = true}
  local stale = {}
  for i = 1, #flat, 2 do
    if is_second(flat[i]) then
      local sec = tonumber(flat[i])
      if sec > w.at then
        w.at = sec
      end
    end
  end
  for i = 1, #flat, 2 do
    if is_second(flat[i]) then
      local sec = tonumber(flat[i])
      if sec < w.at - WND + 1 then
        stale[#stale + 1] = flat[i]
      else
        local n = tonumber(flat[i + 1])
        w.t = w.t + n
        if n > 0 and (w.o == nil or sec < w.o) then
          w.o = sec
        end
      end
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  return w
end

local function window(key, now)
  local m = redis.call('HMGET', key, '_t', '_at', '_o')
  local w
  if m[2] then
    w = {t = tonumber(m[1]), at = tonumber(m[2]), o = m[3] and tonumber(m[3]) or nil, dirty = false}
  elseif redis.call('EXISTS', key) == 1 then
    w = rebuild(key, now)
  else
    return {t = 0, at = now, o = nil, dirty = false, new = true}
  end
  if now > w.at then
    local from, to = w.at - WND + 1, now - WND
    if to >= w.at then
      redis.call('DEL', key)
      w.t, w.o = 0, nil
    elseif to >= from then
      local fields, values = buckets(key, from, to)
      for i = 1, #fields do
        if values[i] then
          w.t = w.t - tonumber(values[i])
        end
      end
      redis.call('HDEL', key, unpack(fields))
    end
    w.at = now
    w.dirty = true
  end
  if w.t <= 0 then
    w.t, w.o = 0, nil
  elseif w.o == nil or w.o < w.at - WND + 1 then
    local from = w.at - WND + 1
    if w.o ~= nil and w.o + 1 > from then
      from = w.o + 1
    end
    w.o = first_nonzero(key, from, w.at)
    w.dirty = true
  end
  return w
end

local function save(key, w, ttl)
  if w.o then
    redis.call('HSET', key, '_t', w.t, '_at', w.at, '_o', w.o)
  else
    redis.call('HSET', key, '_t', w.t, '_at', w.at)
    redis.call('HDEL', key, '_o')
  end
  redis.call('EXPIRE', key, ttl)
end

local function count(key, w, amount, ttl)
  redis.call('HINCRBY', key, tostring(w.at), amount)
  w.t = w.t + amount
  if w.o == nil then
    w.o = w.at
    w.dirty = true
  end
  if w.dirty or w.new then
    save(key, w, ttl)
    w.dirty = false
  else  -- the same second as the last call: only the total moves (the TTL was set then)
    redis.call('HINCRBY', key, '_t', amount)
  end
end

local function settle_window(key, w, ttl)
  if w.dirty and not w.new then
    save(key, w, ttl)
  end
end

local function allowed_answer(w, now)
  local reset = 0
  if w.o ~= nil then
    reset = w.o + WND - now
  end
  return {1, w.t, reset, 0}
end

local function refused_answer(key, w, now, limit, amount)
  local secs, counts = {}, {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    if is_second(flat[i]) then
      local n = tonumber(flat[i + 1])
      if n > 0 then
        local sec = tonumber(flat[i])
        secs[#secs + 1] = sec
        counts[sec] = n
      end
    end
  end
  table.sort(secs)
  local reset = 0
  if #secs > 0 then
    reset = secs[1] + WND - now
  end
  local retry = -1
  if amount <= limit then
    local left = w.t
    for _, sec in ipairs(secs) do
      left = left - counts[sec]
      if left + amount <= limit then
        retry = sec + WND - now
        break
      end
    end
  end
  return {0, w.t, reset, retry}
end
"""

# KEYS[1]  the counter's hash
# ARGV[1]  now, in unix seconds (integer)
# ARGV[2]  limit (ignored unless mode = 1)
# ARGV[3]  amount to count
# ARGV[4]  window, in seconds (60; the scripts hold it as WND)
# ARGV[5]  key TTL, in seconds
# ARGV[6]  mode: 1 = admit iff used + amount <= limit, then count; 0 = count unconditionally;
#          -1 = read only (it may still drop buckets that left the window)
# Returns {allowed (0/1), used after this call, reset seconds, retry-after seconds (-1: never)}.
SLIDING_WINDOW = (
    _WINDOW
    + """
local now, limit, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, mode = tonumber(ARGV[5]), tonumber(ARGV[6])
local w = window(KEYS[1], now)
if mode == 1 and w.t + amount > limit then
  settle_window(KEYS[1], w, ttl)
  return refused_answer(KEYS[1], w, now, limit, amount)
end
if mode ~= -1 and amount > 0 then
  count(KEYS[1], w, amount, ttl)
else
  settle_window(KEYS[1], w, ttl)
end
return allowed_answer(w, now)
"""
)

# KEYS[1] the counter's hash; ARGV[1] the unix second a hit counted in; ARGV[2] the amount.
# Takes the amount back (a request refused after its rate check); a gone bucket stays gone.
REFUND = """
local field, amount = ARGV[1], tonumber(ARGV[2])
local n = redis.call('HGET', KEYS[1], field)
if n and redis.call('HEXISTS', KEYS[1], '_at') == 1 then
  local taken = math.min(tonumber(n), amount)
  redis.call('HINCRBY', KEYS[1], '_t', -taken)
  if tonumber(n) - taken > 0 then
    redis.call('HSET', KEYS[1], field, tonumber(n) - taken)
  else
    redis.call('HDEL', KEYS[1], field)
    if redis.call('HGET', KEYS[1], '_o') == field then
      redis.call('HDEL', KEYS[1], '_o')
    end
  end
elseif n then
  local left = tonumber(n) - amount
  if left > 0 then
    redis.call('HSET', KEYS[1], field, left)
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
return 0
"""

# The spend reservation of KEYS[1] (hash: committed, reserved, r:<id>) and KEYS[2]
# (sorted set of open reservations by expiry), from
# ARGV[1..9]: ledger, resync(0/1), worst, cap (-1 = none), now_ms, expiry_ms, id, key_ttl_s,
# floor (the least the request can run with: its prompt and one token).
# ``committed`` is seeded from the ledger only when the hash is missing (and raised to it
# on a resync); the keys get their TTL when created (the hash when seeded, the set when
# its first member arrives), which outlives the month they count.
# Admitted holding the worst case when it fits beside the settled and reserved money, or
# holding all the room left when the month cannot pay the worst case but the floor fits
# (``spend_guard`` has the rules).
# Returns {admitted (0/1), committed, reserved (after), reservations expired now, held}.
# Idempotent by reservation id: the client retries a call once after a timeout even if
# the script already ran, so when ``r:<id>`` exists this is that retry: it answers
# "admitted" again and holds nothing more.
_SPEND = """
local function reserve_spend(h, z)
  local m = redis.call('HMGET', h, 'r:' .. ARGV[7], 'committed', 'reserved')
  local committed, reserved = tonumber(m[2]), tonumber(m[3])
  if m[1] then
    return {1, committed, reserved, 0, tonumber(m[1])}
  end
  local ledger = tonumber(ARGV[1])
  local created = committed == nil
  if created or (ARGV[2] == '1' and ledger > committed) then
    committed = ledger
  end
  reserved = reserved or 0
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[5])
  if #gone > 0 then
    for _, rid in ipairs(gone) do
      local held = redis.call('HGET', h, 'r:' .. rid)
      if held then
        redis.call('HDEL', h, 'r:' .. rid)
        reserved = reserved - tonumber(held)
      end
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[5])
  end
  local worst, cap, floor = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[9])
  local held = worst
  if cap >= 0 then
    local left = cap - committed
    local room = left - reserved
    if room < held then
      if held <= left or room < floor then
        redis.call('HSET', h, 'committed', committed, 'reserved', reserved)
        if created then
          redis.call('EXPIRE', h, ARGV[8])
        end
        return {0, committed, reserved, #gone, 0}
      end
      held = room
    end
  end
  redis.call('HSET', h, 'committed', committed, 'reserved', reserved + held,
    'r:' .. ARGV[7], held)
  if created then
    redis.call('EXPIRE', h, ARGV[8])
  end
  if redis.call('ZADD', z, ARGV[6], ARGV[7]) == 1 and redis.call('ZCARD', z) == 1 then
    redis.call('EXPIRE', z, ARGV[8])
  end
  return {1, committed, reserved + held, #gone, held}
end
"""

RESERVE = _SPEND + "\nreturn reserve_spend(KEYS[1], KEYS[2])\n"

# KEYS[1], KEYS[2]  the spend keys, as RESERVE; KEYS[3..]  one rate counter per check
# ARGV[1..9]  as RESERVE; ARGV[10] now (unix s); ARGV[11] window; ARGV[12] counter TTL;
#             then per check (KEYS[i]): ARGV[2i+7] limit, ARGV[2i+8] amount
# Returns {0, check index (1-based), used, reset, retry} when a check refuses (nothing
# written); else {1, admitted, committed, reserved, expired, held, then used, reset, retry
# per check} — the counters counted only when admitted. A retry of a call that admitted
# (its reservation ``r:<id>`` exists) counts nothing again and admits again: the
# reservation id is the request's marker.
ADMIT = (
    _WINDOW
    + _SPEND
    + """
local now, ttl = tonumber(ARGV[10]), tonumber(ARGV[12])
if redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[7]) == 1 then
  local spend = reserve_spend(KEYS[1], KEYS[2])
  local out = {1, spend[1], spend[2], spend[3], spend[4], spend[5]}
  for i = 3, #KEYS do
    local w = window(KEYS[i], now)
    settle_window(KEYS[i], w, ttl)
    local a = allowed_answer(w, now)
    out[#out + 1] = a[2]
    out[#out + 1] = a[3]
    out[#out + 1] = a[4]
  end
  return out
end
local windows = {}
for i = 3, #KEYS do
  local limit, amount = tonumber(ARGV[2 * i + 7]), tonumber(ARGV[2 * i + 8])
  local w = window(KEYS[i], now)
  if w.t + amount > limit then
    settle_window(KEYS[i], w, ttl)
    local a = refused_answer(KEYS[i], w, now, limit, amount)
    return {0, i - 2, a[2], a[3], a[4]}
  end
  windows[i] = w
end
local spend = reserve_spend(KEYS[1], KEYS[2])
local out = {1, spend[1], spend[2], spend[3], spend[4], spend[5]}
for i = 3, #KEYS do
  local amount = tonumber(ARGV[2 * i + 8])
  local w = windows[i]
  if spend[1] == 1 and amount > 0 then
    count(KEYS[i], w, amount, ttl)
  else
    settle_window(KEYS[i], w, ttl)
  end
  if spend[1] == 1 then
    local a = allowed_answer(w, now)
    out[#out + 1] = a[2]
    out[#out + 1] = a[3]
    out[#out + 1] = a[4]
  end
end
return out
"""
)
