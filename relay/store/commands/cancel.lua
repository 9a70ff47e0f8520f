-- Cancel a watch. KEYS: watch hash, delivery schedule, the video's watch set, the status
-- counters.
-- ARGV: watch id, now ms. Returns the previous status (false if there is no watch).
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
