-- Give watches of one video their final event, once each, and schedule its delivery: the
-- first ARGV[5] created are claimed at once by the caller (score = its lease deadline
-- ARGV[4]), the others are due now, for any worker. A watch gets the event while it waits
-- on the video (KEYS[2], watch -> tenant: cancelling or expiring takes it out); every watch
-- of the call leaves it. Per watch only its event state is written: its body is built from
-- the watch and, for clips.ready, the video's clips document, kept once (KEYS[4]: written
-- when given and newer, with a reference per event that uses it).
-- KEYS: delivery schedule, the video's waiting watches, status counters, clips document,
-- video hash, expiry schedule.
-- ARGV: watch key prefix, at ms, event type, lease deadline ms, number to claim, video
-- status ('' = the video hash's), video progress, video error, clips document ('' none),
-- clips fetched ms, tenant key prefix, then the watch ids.
-- Returns {the number of events created, then the ids of those claimed} (the caller reads
-- the claimed watches afterwards, outside the script: one MGET and a pipeline).
local at, etype = ARGV[2], ARGV[3]
local ids = {unpack(ARGV, 12)}
if #ids == 0 then return {0} end
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
local claim, deadline = tonumber(ARGV[5]), ARGV[4]
local out, scheduled, made, tenants = {0}, {}, {}, {}
local n = 0
for i = 1, #ids do
  local tenant = waiting[i]
  if tenant then
    local key = ARGV[1] .. ids[i]
    redis.call('HSET', key, 'st', st, 'ev', ev)
    n = n + 1
    made[n] = ids[i]
    tenants[tenant] = (tenants[tenant] or 0) + 1
    if n <= claim then
      scheduled[2 * n - 1] = deadline
      out[n + 1] = ids[i]
    else
      scheduled[2 * n - 1] = at
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
