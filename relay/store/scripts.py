"""Lua scripts: every state change that must be atomic across API and worker replicas.

Each script is small and does one transition; the Python wrappers live in
:mod:`relay.store.gateway`.
Per-item work is as few calls as the transition allows; schedule changes and status counters
are applied once per call. Lua's ``unpack`` takes at most ~8,000 values, so callers keep
batches well below that (:data:`relay.store.gateway.SCRIPT_BATCH`).
"""

from __future__ import annotations

# Register a watch: the hash, the tenant's indexes, the video's waiting set, the video's
# poll (NX: a video already scheduled keeps its slot, a claimed one its lease), the expiry
# timer as an arq job, the status counter. The tenant indexes are ordered by Redis' clock.
# KEYS: watch hash, tenant index, tenant-video index, video watch set, poll schedule, arq job
# key, arq queue, status counters.
# ARGV: watch id, spec JSON, secrets JSON, created ms, video id, job bytes, job ttl ms,
# job due ms, job id.
CREATE_WATCH = """
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'secrets', ARGV[3], 'status', 'watching',
  'eventId', '')
-- listing order: Redis' clock in microseconds, one clock for every API replica
local t = redis.call('TIME')
local order = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[2], order, ARGV[1])
redis.call('ZADD', KEYS[3], order, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', ARGV[4], ARGV[5])
redis.call('SET', KEYS[6], ARGV[6], 'PX', ARGV[7])
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[9])
redis.call('HINCRBY', KEYS[8], 'watching', 1)
return 1
"""

# Claim up to ARGV[3] due deliveries (score <= ARGV[1]) by moving their score to the lease
# deadline ARGV[2]: a worker that dies holding a claim loses it when the lease passes, and
# another worker claims the member again. Returns, for each, the watch hash and the current
# event's body, so a batch costs one round trip. KEYS: the delivery schedule. ARGV: now ms,
# lease deadline ms, limit, watch key prefix, event key prefix.
# (It reads keys derived from the claimed members, as only a single Redis or Sentinel
# allows -- which is also all that arq supports.)
CLAIM_DELIVERIES = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local out = {}
local leased = {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
  local watch = redis.call('HGETALL', ARGV[4] .. due[i])
  local body = false
  for j = 1, #watch, 2 do
    if watch[j] == 'eventId' and watch[j + 1] ~= '' then
      body = redis.call('GET', ARGV[5] .. watch[j + 1])
    end
  end
  out[i] = {due[i], watch, body}
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
"""

# Extend claims that are still ours: a claim's lease deadline is its token. KEYS: the
# schedule. ARGV: the deadline we set (ms), the new deadline (ms), members...
# Returns the members whose claim was still ours, now extended.
EXTEND_CLAIMS = """
local ours = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    ours[#ours + 1] = ARGV[i]
  end
end
return ours
"""

# The registration (spec) and status of many watches, in one reply. ARGV: watch key
# prefix, watch ids... Returns [spec, status] per watch (nil for a missing watch).
WATCH_SPECS = """
local out = {}
for i = 2, #ARGV do
  out[i - 1] = redis.call('HMGET', ARGV[1] .. ARGV[i], 'spec', 'status')
end
return out
"""

# Claim due videos and return, for each, its poll state and waiting watches.
# KEYS: the poll schedule. ARGV: now ms, lease deadline ms, limit, video key prefix.
CLAIM_VIDEOS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local out, leased = {}, {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
  out[i] = {due[i], redis.call('HGETALL', ARGV[4] .. due[i]),
            redis.call('SMEMBERS', ARGV[4] .. due[i] .. ':w')}
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
"""

# Give watches of one video their final event, once each. KEYS: delivery schedule, the
# video's watch set, status counters. ARGV: watch key prefix, event key prefix, now ms, the
# event type, clips-fetched ms ('' if none), video status ('' to leave it) -- the same for
# every event of a call -- then per watch: watch id, event id, body. A watch that is not
# watching, or already has its event, is left alone (and leaves the video's set). Returns
# the positions (1-based) of the events created.
FINALIZE = """
local created, scheduled, served = {}, {}, {}
local n = 0
for i = 7, #ARGV, 3 do
  n = n + 1
  local wid = ARGV[i]
  local watch = ARGV[1] .. wid
  local h = redis.call('HMGET', watch, 'status', 'eventId')
  if h[1] == 'watching' and h[2] == '' then
    local fields = {'status', 'delivering', 'eventId', ARGV[i + 1], 'eventType', ARGV[4],
      'attempt', 0, 'updatedAt', ARGV[3], 'finalAt', ARGV[3], 'clipsAt', ARGV[5]}
    if ARGV[6] ~= '' then
      fields[15] = 'videoStatus'
      fields[16] = ARGV[6]
    end
    redis.call('HSET', watch, unpack(fields))
    redis.call('SET', ARGV[2] .. ARGV[i + 1], ARGV[i + 2])
    created[#created + 1] = n
    scheduled[#scheduled + 1] = ARGV[3]
    scheduled[#scheduled + 1] = wid
  end
  served[n] = wid
end
if #scheduled > 0 then
  redis.call('ZADD', KEYS[1], 'NX', unpack(scheduled))
  redis.call('HINCRBY', KEYS[3], 'watching', -#created)
  redis.call('HINCRBY', KEYS[3], 'delivering', #created)
end
if n > 0 then redis.call('SREM', KEYS[2], unpack(served)) end
return created
"""

# Claim deliveries whose event the caller already holds (its poller just created them), so
# nothing is read back but what may have changed since: the attempt count and the secrets
# (a rotation). A member is claimed as CLAIM_DELIVERIES would claim it -- due, and still
# delivering that same event -- by moving its score to the lease deadline; anything else
# (claimed by another worker, cancelled, another event) is left alone.
# KEYS: the delivery schedule. ARGV: now ms, lease deadline ms, watch key prefix, then per
# delivery: watch id, event id. Returns {watch id, attempt, secrets} for each claimed one.
CLAIM_KNOWN = """
local out, leased = {}, {}
local now = tonumber(ARGV[1])
for i = 4, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now then
    local h = redis.call('HMGET', ARGV[3] .. ARGV[i], 'status', 'eventId', 'attempt', 'secrets')
    if h[1] == 'delivering' and h[2] == ARGV[i + 1] then
      leased[#leased + 1] = ARGV[2]
      leased[#leased + 1] = ARGV[i]
      out[#out + 1] = {ARGV[i], h[3], h[4]}
    end
  end
end
if #leased > 0 then redis.call('ZADD', KEYS[1], unpack(leased)) end
return out
"""

# After a video's final fan-out: drop the watches that were served from the video's set and
# stop polling it -- unless a watch registered meanwhile, then poll again at once.
# KEYS: video watch set, poll schedule, video hash. ARGV: video id, now ms, watch ids...
RELEASE_VIDEO = """
for i = 3, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
if redis.call('SCARD', KEYS[1]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'phase', 'poll', 'notFound', 0)
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 0
"""

# Record delivery attempts and move each watch on. KEYS: delivery schedule, status counters.
# ARGV: watch key prefix, attempts key suffix, now ms, attempts kept, then per attempt: watch
# id, the outcome as a JSON array [event id, outcome (ok|retry|failed|disabled), next due ms,
# attempt number, last error], the attempt record. Returns the status each watch has
# afterwards.
SETTLE = """
local statuses, due, gone, counts = {}, {}, {}, {}
local kept = tonumber(ARGV[4])
for i = 5, #ARGV, 3 do
  local wid = ARGV[i]
  local eid, outcome, next_due, attempt, last_error = unpack(cjson.decode(ARGV[i + 1]))
  local watch = ARGV[1] .. wid
  local attempts = watch .. ARGV[2]
  if redis.call('RPUSH', attempts, ARGV[i + 2]) > kept then
    redis.call('LTRIM', attempts, -kept, -1)
  end
  local h = redis.call('HMGET', watch, 'status', 'eventId', 'eventType')
  local status = h[1]
  if status ~= 'delivering' or h[2] ~= eid then
    -- cancelled, or already moved on: only a watch that stopped delivering leaves
    if status ~= 'delivering' then gone[wid], due[wid] = true, nil end
  elseif outcome == 'retry' then
    redis.call('HSET', watch, 'attempt', attempt, 'updatedAt', ARGV[3], 'lastError', last_error)
    gone[wid], due[wid] = nil, next_due
  else
    status = outcome == 'ok' and 'delivered' or outcome
    local fields = {'attempt', attempt, 'updatedAt', ARGV[3], 'lastError', last_error,
      'status', status, 'lastEventType', h[3]}
    if outcome == 'ok' then
      fields[11] = 'deliveredAt'
      fields[12] = ARGV[3]
    end
    redis.call('HSET', watch, unpack(fields))
    gone[wid], due[wid] = true, nil
    counts['delivering'] = (counts['delivering'] or 0) - 1
    counts[status] = (counts[status] or 0) + 1
  end
  statuses[#statuses + 1] = status or false
end
-- the schedule and the counters change once per call (per watch, the last change counts)
local zadd, zrem = {}, {}
for wid, at in pairs(due) do
  zadd[#zadd + 1] = at
  zadd[#zadd + 1] = wid
end
for wid in pairs(gone) do zrem[#zrem + 1] = wid end
if #zadd > 0 then redis.call('ZADD', KEYS[1], unpack(zadd)) end
if #zrem > 0 then redis.call('ZREM', KEYS[1], unpack(zrem)) end
for status, delta in pairs(counts) do
  if delta ~= 0 then redis.call('HINCRBY', KEYS[2], status, delta) end
end
return statuses
"""

# Cancel a watch. KEYS: watch hash, delivery schedule, the video's watch set, the status
# counters.
# ARGV: watch id, now ms. Returns the previous status (false if there is no watch).
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updatedAt', ARGV[2])
  redis.call('HINCRBY', KEYS[4], status, -1)
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return status
"""

# Send a watch's last event again as a new series of attempts (same event id).
# KEYS: watch hash, delivery schedule, the status counters. ARGV: watch id, now ms.
# Returns 'ok', or the status for a watch in a state that has nothing to redeliver.
REDELIVER = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'delivered' and status ~= 'failed' and status ~= 'disabled' then
  return status
end
redis.call('HSET', KEYS[1], 'status', 'delivering', 'attempt', 0, 'lastError', '',
  'updatedAt', ARGV[2])
redis.call('HINCRBY', KEYS[3], status, -1)
redis.call('HINCRBY', KEYS[3], 'delivering', 1)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 'ok'
"""

# Rotate a watch's signing secret. KEYS: watch hash. ARGV: new sealed secret, now ms, when
# the current secret stops signing (ms). Secrets whose grace has passed are dropped.
# Returns the new secrets list (JSON), or false when there is no such watch.
ROTATE_KEYS = """
local raw = redis.call('HGET', KEYS[1], 'secrets')
if not raw then return false end
local now = tonumber(ARGV[2])
local out = {{ARGV[1], 0}}
for _, s in ipairs(cjson.decode(raw)) do
  local e = tonumber(s[2])
  if e == 0 then
    table.insert(out, {s[1], tonumber(ARGV[3])})
  elseif e > now then
    table.insert(out, {s[1], e})
  end
end
local encoded = cjson.encode(out)
redis.call('HSET', KEYS[1], 'secrets', encoded, 'updatedAt', ARGV[2])
return encoded
"""

# Pause every worker's upstream requests until ARGV[1] (ms), keeping a later pause already
# set. KEYS: the pause key. ARGV: until ms, now ms.
PAUSE_UPSTREAM = """
local pause_end = tonumber(ARGV[1])
if pause_end > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], pause_end, 'PX', math.max(pause_end - tonumber(ARGV[2]), 1))
end
return 0
"""

# Take up to ARGV[2] tokens from the upstream budget of the current second (ARGV[1] = cap,
# ARGV[3] = now ms). KEYS: the rate key prefix, the pause key (set after a 429).
# Returns the number granted (0 when this second's budget is spent), or minus the
# milliseconds left of a pause.
UPSTREAM_TOKENS = """
local now = tonumber(ARGV[3])
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return -(pause - now) end
local key = KEYS[1] .. math.floor(now / 1000)
local used = tonumber(redis.call('GET', key) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if grant <= 0 then return 0 end
redis.call('INCRBY', key, grant)
redis.call('PEXPIRE', key, 2000)
return grant
"""
