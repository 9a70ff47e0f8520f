-- Send a watch's last event again as a new series of attempts (same event id).
-- KEYS: state hash, delivery schedule, the status counters. ARGV: watch id, now ms, tenant
-- key prefix, tenant. Returns 'ok', or the status for a watch in a state that has nothing
-- to redeliver.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'delivered' and status ~= 'failed' and status ~= 'disabled' then
  return status
end
redis.call('HSET', KEYS[1], 'status', 'delivering', 'attempt', 0, 'lastError', '',
  'updated', ARGV[2])
local counts = ARGV[3] .. ARGV[4] .. ':n'
redis.call('HINCRBY', KEYS[3], status, -1)
redis.call('HINCRBY', KEYS[3], 'delivering', 1)
redis.call('HINCRBY', counts, status, -1)
redis.call('HINCRBY', counts, 'delivering', 1)
redis.call('ZREM', ARGV[3] .. ARGV[4] .. ':s:' .. status, ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 'ok'
