-- Take up to ARGV[2] tokens from the upstream budget of the current second of Redis' clock
-- (ARGV[1] = cap): one clock for every worker, so a worker whose clock is off counts in the
-- same buckets as the others. KEYS: the rate key prefix, the pause key (set after a 429).
-- A request sent in the last ARGV[3] ms of a second (the margin) may reach the upstream in
-- the next one: tokens granted before the margin live until it starts, and tokens granted
-- in it are charged to both seconds, so that neither second's count at the upstream can
-- exceed the cap while polls are not held back when the budget is far from spent.
-- Returns {granted, ms}: granted > 0 with the ms the tokens may be sent in (their life); 0
-- when the budget is spent, with the ms to the next second; -1 while paused, with the ms
-- left of the pause.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(redis.call('GET', KEYS[2]) or '0')
if pause > now then return {-1, pause - now} end
local key = KEYS[1] .. t[1]
local left = 1000 - now % 1000
local margin = tonumber(ARGV[3])
local cap = tonumber(ARGV[1])
local grant = math.min(tonumber(ARGV[2]), cap - tonumber(redis.call('GET', key) or '0'))
local life = left - margin
if left <= margin then -- (in the margin: charged to the next second too)
  local later = KEYS[1] .. (tonumber(t[1]) + 1)
  grant = math.min(grant, cap - tonumber(redis.call('GET', later) or '0'))
  life = left
  if grant > 0 then
    redis.call('INCRBY', later, grant)
    redis.call('PEXPIRE', later, 2000)
  end
end
if grant <= 0 then return {0, left} end
redis.call('INCRBY', key, grant)
redis.call('PEXPIRE', key, 2000)
return {grant, life}
