-- Stop polling a video nobody waits on any more (its fan-out took every watch out of its
-- waiting watches, a chunk at a time) -- unless a watch registered meanwhile: then poll it
-- again at once (Redis' clock). Only while the caller's claim of the video holds: its
-- lease deadline, the token, is still the video's score; a stale poller changes nothing.
-- KEYS: the video's waiting watches, poll schedule, video hash. ARGV: video id, the claim's
-- token (ms). Returns 1 (polled again), 0 (released) or -1 (not our claim any more).
if tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1])) ~= tonumber(ARGV[2]) then return -1 end
if redis.call('HLEN', KEYS[1]) > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
  redis.call('HSET', KEYS[3], 'phase', 'poll', 'notFound', 0)
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 0
