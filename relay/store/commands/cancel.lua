-- Cancel a watch. KEYS: watch hash, delivery schedule, the video's watch set, the status
-- counters, the video hash.
-- ARGV: watch id, now ms, tenant key prefix. Returns the previous status (false if there is
-- no watch). A watch that never saw its video's final status keeps the last one seen.
local h = redis.call('HMGET', KEYS[1], 'status', 'tenant', 'vStatus')
local status, tenant = h[1], h[2]
if not status then return false end
if status ~= 'cancelled' then
  local fields = {'status', 'cancelled', 'updated', ARGV[2]}
  if not h[3] or h[3] == '' then
    local v = redis.call('HMGET', KEYS[5], 'status', 'progress')
    fields[5], fields[6], fields[7], fields[8] = 'vStatus', v[1] or '', 'vProgress', v[2] or ''
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  local counts = ARGV[3] .. tenant .. ':n'
  redis.call('HINCRBY', KEYS[4], status, -1)
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
  redis.call('HINCRBY', counts, status, -1)
  redis.call('HINCRBY', counts, 'cancelled', 1)
  if status ~= 'watching' and status ~= 'delivering' then
    redis.call('ZREM', ARGV[3] .. tenant .. ':s:' .. status, ARGV[1])
  end
  redis.call('ZADD', ARGV[3] .. tenant .. ':s:cancelled', ARGV[2], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return status
