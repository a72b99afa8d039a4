"""Lua sources run atomically by Redis; registered with redis-py's ``register_script``.

Each script is one round trip (``EVALSHA``, with redis-py reloading it on
``NOSCRIPT``). Time is passed in by the caller, from its injected clock, so
Redis' own clock never matters and tests with a fake clock work.

``SLIDING_WINDOW`` keeps one hash per counter: field = unix second, value =
what was counted in that second. It mirrors ``rate_limiter.decide`` exactly
(the tests run both backends through the same cases).
"""

from __future__ import annotations

# KEYS[1]  the counter's hash
# ARGV[1]  now, in unix seconds (integer)
# ARGV[2]  limit (ignored unless mode = 1)
# ARGV[3]  amount to count
# ARGV[4]  window, in seconds (60)
# ARGV[5]  key TTL, in seconds
# ARGV[6]  mode: 1 = admit iff used + amount <= limit, then count; 0 = count unconditionally;
#          -1 = read only
# Returns {allowed (0/1), used after this call, reset seconds, retry-after seconds (-1: never)}.
SLIDING_WINDOW = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local mode = tonumber(ARGV[6])
local oldest = now - window + 1
local flat = redis.call('HGETALL', KEYS[1])
local total = 0
local secs = {}
local counts = {}
local stale = {}
for i = 1, #flat, 2 do
  local sec = tonumber(flat[i])
  if sec < oldest then
    stale[#stale + 1] = flat[i]
  else
    local n = tonumber(flat[i + 1])
    total = total + n
    secs[#secs + 1] = sec
    counts[sec] = n
  end
end
if mode ~= -1 and #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
end
local allowed = 0
if mode == 0 or (mode == 1 and total + amount <= limit) then
  allowed = 1
  if amount > 0 then
    redis.call('HINCRBY', KEYS[1], tostring(now), amount)
    redis.call('EXPIRE', KEYS[1], ttl)
    if counts[now] == nil then
      secs[#secs + 1] = now
      counts[now] = 0
    end
    counts[now] = counts[now] + amount
    total = total + amount
  end
end
table.sort(secs)
local reset = 0
for _, sec in ipairs(secs) do
  if counts[sec] > 0 then
    reset = sec + window - now
    break
  end
end
local retry = 0
if allowed == 0 then
  retry = -1
  if amount <= limit then
    local left = total
    for _, sec in ipairs(secs) do
      left = left - counts[sec]
      if left + amount <= limit then
        retry = sec + window - now
        break
      end
    end
  end
end
return {allowed, total, reset, retry}
"""
