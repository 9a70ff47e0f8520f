-- Give watches of one video their final event, once each, and schedule its delivery: the
-- first ARGV[5] created are claimed at once by the caller (score = its lease deadline
-- ARGV[4]), the others are due now, for any worker. Every watch of the call leaves the
-- video's waiting set; a watch that is not watching, or has its event, is left alone.
-- Nothing per watch but its event state is written: the body is built from the watch and,
-- for clips.ready, the video's clips document, kept once (KEYS[4]: written when given and
-- newer, with a reference per event that uses it).
-- KEYS: delivery schedule, the video's watch set, status counters, clips document, video
-- hash, arq queue.
-- ARGV: watch key prefix, at ms, event type, lease deadline ms, number to claim, video
-- status ('' = the video hash's), video progress, video error, clips document ('' none),
-- clips fetched ms, arq job key prefix, tenant key prefix, number of fields, the fields
-- (with 'tenant', 'status', 'event'), then the watch ids.
-- Returns, per event created, {its position (1-based), the watch's fields as read}.
local at, etype = ARGV[2], ARGV[3]
local nf = tonumber(ARGV[13])
local fields = {unpack(ARGV, 14, 13 + nf)}
local it, ist, iev
for i = 1, nf do
  if fields[i] == 'tenant' then it = i elseif fields[i] == 'status' then ist = i
  elseif fields[i] == 'event' then iev = i end
end
local vstatus, vprogress = ARGV[6], ARGV[7]
if vstatus == '' then
  local v = redis.call('HMGET', KEYS[5], 'status', 'progress')
  vstatus, vprogress = v[1] or '', v[2] or ''
end
local set = {'status', 'delivering', 'event', etype, 'attempt', 0, 'updated', at,
  'finalAt', at, 'vStatus', vstatus, 'vProgress', vprogress}
if ARGV[8] ~= '' then
  set[15] = 'vError'
  set[16] = ARGV[8]
end
local claim, deadline = tonumber(ARGV[5]), ARGV[4]
local out, scheduled, served, jobs, tenants = {}, {}, {}, {}, {}
local n = 0
for i = 14 + nf, #ARGV do
  local wid = ARGV[i]
  local watch = ARGV[1] .. wid
  local h = redis.call('HMGET', watch, unpack(fields))
  if h[ist] == 'watching' and (not h[iev] or h[iev] == '') then
    redis.call('HSET', watch, unpack(set))
    if etype ~= 'watch.expired' then
      -- its expiry timer has nothing left to do (the expiry job itself runs this otherwise)
      redis.call('DEL', ARGV[11] .. 'expire:' .. wid)
      jobs[#jobs + 1] = 'expire:' .. wid
    end
    n = n + 1
    scheduled[2 * n - 1] = n <= claim and deadline or at
    scheduled[2 * n] = wid
    tenants[h[it]] = (tenants[h[it]] or 0) + 1
    out[n] = {i - 13 - nf, h}
  end
  served[#served + 1] = wid
end
if #served > 0 then redis.call('SREM', KEYS[2], unpack(served)) end
if n == 0 then return out end
redis.call('ZADD', KEYS[1], 'NX', unpack(scheduled))
if #jobs > 0 then redis.call('ZREM', KEYS[6], unpack(jobs)) end
redis.call('HINCRBY', KEYS[3], 'watching', -n)
redis.call('HINCRBY', KEYS[3], 'delivering', n)
for tenant, k in pairs(tenants) do
  redis.call('HINCRBY', ARGV[12] .. tenant .. ':n', 'watching', -k)
  redis.call('HINCRBY', ARGV[12] .. tenant .. ':n', 'delivering', k)
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
