-- Give watches of one video their final event, once each. KEYS: delivery schedule, the
-- video's watch set, status counters. ARGV: watch key prefix, event key prefix, now ms, the
-- event type, clips-fetched ms ('' if none), video status ('' to leave it) -- the same for
-- every event of a call -- then per watch: watch id, event id, body. A watch that is not
-- watching, or already has its event, is left alone (and leaves the video's set). Returns
-- the positions (1-based) of the events created.
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
