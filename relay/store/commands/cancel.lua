-- Cancel a watch. KEYS: state hash, delivery schedule, the video's waiting watches, the
-- status counters, the video hash, the expiry schedule.
-- ARGV: watch id, tenant key prefix, tenant (the time is Redis' own). Returns the previous
-- status (false if there is no watch). A watch that never had its event keeps the video's last status seen.
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return false end
local status, rest = string.match(st, '^([^|]*)|[^|]*|[^|]*|[^|]*|(.*)$')
local attempt, records = string.match(st, '^[^|]*|([^|]*)|([^|]*)|')
if status ~= 'cancelled' then
  -- by Redis' clock, the final index's score and the watch's updatedAt alike: retention and
  -- recovery read the index by that clock, and a listing is in the order its times show
  local t = redis.call('TIME')
  local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local fields = {'st', 'cancelled|' .. attempt .. '|' .. records .. '|' .. at .. '|' .. rest}
  if status == 'watching' then
    local v = redis.call('HMGET', KEYS[5], 'status', 'progress')
    fields[3], fields[4] = 'vSeen', (v[2] or '') .. '|' .. (v[1] or '')
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  local counts = ARGV[2] .. ARGV[3] .. ':n'
  redis.call('HINCRBY', KEYS[4], status, -1)
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
  redis.call('HINCRBY', counts, status, -1)
  redis.call('HINCRBY', counts, 'cancelled', 1)
  if status ~= 'watching' and status ~= 'delivering' then
    redis.call('ZREM', ARGV[2] .. ARGV[3] .. ':s:' .. status, ARGV[1])
  end
  redis.call('ZADD', ARGV[2] .. ARGV[3] .. ':s:cancelled', at, ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return status
