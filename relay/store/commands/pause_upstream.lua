-- Pause every worker's upstream requests for ARGV[1] ms from Redis' clock now, keeping a
-- later pause already set. A new pause is published on ARGV[2] (its length, ms), so a worker
-- holding tokens of this second learns of it without asking. KEYS: the pause key (holds the
-- pause's end, Redis ms).
local t = redis.call('TIME')
local pause_end = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
if pause_end > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], pause_end, 'PX', math.max(tonumber(ARGV[1]), 1))
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return 0
