-- Give watches of one video their final event, once each, and schedule its delivery: the
-- first ARGV[5] created (of those not paced) are claimed at once by the caller (score = its lease deadline,
-- Redis' clock now + ARGV[4] ms), the others are due now (Redis' clock), for any worker. A
-- watch gets the event while it waits on the video (KEYS[2], watch -> tenant:origin-tag:
-- cancelling or expiring takes it out); every watch of the call leaves it. Per watch only its event
-- state is written: its body is built from the watch and, for clips.ready, the video's
-- clips document, kept once (KEYS[4]: written when given and newer, with a reference per
-- event that uses it).
-- A poller's fan-out passes its claim of the video's poll (the lease deadline, its token):
-- once that claim is no longer its own (lapsed and taken over, or released), it writes
-- nothing and gets -1.
-- KEYS: delivery schedule, the video's waiting watches, status counters, clips document,
-- video hash, expiry schedule, poll schedule.
-- ARGV: watch key prefix, at ms, event type, lease ms, number to claim, video status ('' =
-- the video hash's), video progress, video error, clips document ('' none, '=' stored by an
-- earlier chunk), clips fetched
-- ms, tenant key prefix, video id, the poll claim's token ('' = none to check), then the
-- watch ids, each 'id' or 'id@ms': due that many ms after now, never claimed (a fan-out
-- paces the events of an origin that would not start them soon).
-- Returns {the number of events created (-1: not our poll claim; -2: the document said
-- stored is gone, send it), the claims' lease
-- deadline, the new 'st' and 'ev' fields (the same for every watch of the call), then per
-- watch claimed its id and its 'secrets'} (the caller reads their registrations
-- afterwards, outside the script: one MGET; the rest of what sending needs is here).
local at, etype = ARGV[2], ARGV[3]
local ids, later = {}, {}
for i = 14, #ARGV do
  local a = ARGV[i]
  local cut = string.find(a, '@', 1, true)
  if cut then
    ids[i - 13] = string.sub(a, 1, cut - 1)
    later[i - 13] = tonumber(string.sub(a, cut + 1))
  else
    ids[i - 13] = a
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[4])
-- (the scores as strings, made once: a number is made into a string anew, an sprintf, for
-- every member it scores)
local now_s, deadline_s = string.format('%d', now), string.format('%d', deadline)
if ARGV[13] ~= '' and tonumber(redis.call('ZSCORE', KEYS[7], ARGV[12])) ~= tonumber(ARGV[13]) then
  return {-1, deadline}
end
if #ids == 0 then return {0, deadline} end
-- '=': the caller stored the clips document with an earlier chunk; if it is gone since (its
-- events delivered and purged by a retention shorter than the fan-out), nothing is written
-- and -2 asks for the document again
if ARGV[9] == '=' then
  if redis.call('HEXISTS', KEYS[4], 'doc') == 0 then return {-2, deadline} end
  ARGV[9] = ''
end
local waiting = redis.call('HMGET', KEYS[2], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
local vstatus, vprogress = ARGV[6], ARGV[7]
if vstatus == '' then
  local v = redis.call('HMGET', KEYS[5], 'status', 'progress')
  vstatus, vprogress = v[1] or '', v[2] or ''
end
local ev = etype .. '|' .. at .. '|' .. vprogress .. '|' .. string.gsub(vstatus, '|', '/') ..
  '|' .. ARGV[8]
local st = 'delivering|0|0|' .. at .. '|||' 
local claim = tonumber(ARGV[5])
local out, scheduled, made, tenants = {0, deadline, st, ev}, {}, {}, {}
local n, claimed, of = 0, 0, {}
for i = 1, #ids do
  local entry = waiting[i]
  if entry then
    -- 'tenant:origin-tag' (a plain tenant before); a call has few, each matched once
    local tenant = of[entry]
    if not tenant then
      tenant = string.match(entry, '^[^:]*')
      of[entry] = tenant
    end
    local key = ARGV[1] .. ids[i]
    redis.call('HSET', key, 'st', st, 'ev', ev)
    n = n + 1
    made[n] = ids[i]
    tenants[tenant] = (tenants[tenant] or 0) + 1
    if later[i] then
      scheduled[2 * n - 1] = now + later[i]
    elseif claimed < claim then
      claimed = claimed + 1
      scheduled[2 * n - 1] = deadline_s
      out[2 * claimed + 3] = ids[i]
      out[2 * claimed + 4] = redis.call('HGET', key, 'secrets')
    else
      scheduled[2 * n - 1] = now_s
    end
    scheduled[2 * n] = ids[i]
  end
end
out[1] = n
if n == 0 then return out end
redis.call('ZADD', KEYS[1], 'NX', unpack(scheduled))
redis.call('ZREM', KEYS[6], unpack(made))
redis.call('HINCRBY', KEYS[3], 'watching', -n)
redis.call('HINCRBY', KEYS[3], 'delivering', n)
for tenant, k in pairs(tenants) do
  redis.call('HINCRBY', ARGV[11] .. tenant .. ':n', 'watching', -k)
  redis.call('HINCRBY', ARGV[11] .. tenant .. ':n', 'delivering', k)
end
if etype == 'clips.ready' then
  if ARGV[9] ~= '' then
    local cur = redis.call('HGET', KEYS[4], 'at')
    if not cur or tonumber(cur) < tonumber(ARGV[10]) then
      redis.call('HSET', KEYS[4], 'doc', ARGV[9], 'at', ARGV[10])
    end
  end
  redis.call('HINCRBY', KEYS[4], 'refs', n)
end
return out
