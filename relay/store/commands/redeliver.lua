-- Send a watch's last event again as a new series of attempts (same event id; attempt
-- numbers go on, the retry schedule starts again).
-- KEYS: state hash, delivery schedule, the status counters. ARGV: watch id, now ms, tenant
-- key prefix, tenant, this request's id (kept as 'rd': a second run of the same call
-- answers 'ok' again). Returns 'ok', or the status for a watch in a state that has nothing
-- to redeliver.
local cur = redis.call('HMGET', KEYS[1], 'st', 'rd')
local st = cur[1]
if not st then return false end
local status, attempt, records, delivered, last_type =
  string.match(st, '^([^|]*)|([^|]*)|([^|]*)|[^|]*|([^|]*)|([^|]*)|')
-- a second run of this very call (its reply was lost) finds its own request id, whatever
-- became of the redelivery since (delivered again already: not a third time)
if cur[2] == ARGV[5] then return 'ok' end
if status ~= 'delivered' and status ~= 'failed' and status ~= 'disabled' then
  return status
end
-- a new series: its attempts are numbered on ('base': the last attempt before it, so the
-- retry schedule runs from its first step)
redis.call('HSET', KEYS[1], 'st', 'delivering|' .. attempt .. '|' .. records .. '|' .. ARGV[2] ..
  '|' .. delivered .. '|' .. last_type .. '|', 'rd', ARGV[5], 'base', attempt)
local counts = ARGV[3] .. ARGV[4] .. ':n'
redis.call('HINCRBY', KEYS[3], status, -1)
redis.call('HINCRBY', KEYS[3], 'delivering', 1)
redis.call('HINCRBY', counts, status, -1)
redis.call('HINCRBY', counts, 'delivering', 1)
redis.call('ZREM', ARGV[3] .. ARGV[4] .. ':s:' .. status, ARGV[1])
-- due at Redis' now (one clock for every replica)
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 'ok'
