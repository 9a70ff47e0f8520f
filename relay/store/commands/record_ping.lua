-- Record one watch.ping attempt beside a watch's attempt records, its status untouched.
-- KEYS: the watch's state hash, and (optional) its tenant's attempt counts of this minute
-- (the dashboard's, as settle.lua counts them). ARGV: the attempt record, ping records kept,
-- then with the counts: 'ok' or 'fail', and their TTL (seconds).
-- Pings are numbered on their own ('p<k>', k counted in 'pn'), apart from the event's
-- records ('#<n>', numbered by finalize and settle): a ping made while the watch waits for
-- its video keeps its record when the event's attempts start numbering from 1. The oldest
-- ping record beyond the kept number is dropped.
-- Safe to run twice: a second run of this very call finds its record last (a ping's record
-- holds its own event id) and adds nothing. Returns the ping's number (false: no watch).
if redis.call('HEXISTS', KEYS[1], 'st') == 0 then return false end
local last = tonumber(redis.call('HGET', KEYS[1], 'pn') or '0')
if last > 0 and redis.call('HGET', KEYS[1], 'p' .. last) == ARGV[1] then return last end
local k = last + 1
redis.call('HSET', KEYS[1], 'pn', k, 'p' .. k, ARGV[1])
local kept = tonumber(ARGV[2])
if k > kept then redis.call('HDEL', KEYS[1], 'p' .. (k - kept)) end
if KEYS[2] then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return k
