-- After a video's final fan-out: drop the watches that were served from the video's set and
-- stop polling it -- unless a watch registered meanwhile, then poll again at once.
-- KEYS: video watch set, poll schedule, video hash. ARGV: video id, now ms, watch ids...
for i = 3, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
if redis.call('SCARD', KEYS[1]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'phase', 'poll', 'notFound', 0)
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 0
