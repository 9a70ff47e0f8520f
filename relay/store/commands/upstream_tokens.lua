-- Take up to ARGV[2] tokens from the upstream budget of the current second of Redis' clock
-- (ARGV[1] = cap): one clock for every worker, so a worker whose clock is off counts in the
-- same buckets as the others. KEYS: the rate key prefix, the pause key (set after a 429).
-- The last ARGV[3] ms of each second grant nothing: a request sent then could reach the
-- upstream in the next second, on top of that second's budget.
-- Returns {granted, ms}: granted > 0 with the sending time left of this second (the
-- tokens' life);
-- 0 when this second's budget is spent or its sending time over, with the ms to the next
-- second; -1 while paused, with the ms left of the pause.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return {-1, pause - now} end
local key = KEYS[1] .. t[1]
local left = 1000 - now % 1000
local margin = tonumber(ARGV[3])
if left <= margin then return {0, left} end
local used = tonumber(redis.call('GET', key) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if grant <= 0 then return {0, left} end
redis.call('INCRBY', key, grant)
redis.call('PEXPIRE', key, 2000)
return {grant, left - margin}
