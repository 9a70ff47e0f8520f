-- Stop polling a video nobody waits on any more (its fan-out took every watch out of its
-- waiting watches, a chunk at a time) -- unless a watch registered meanwhile: then poll it
-- again at once. KEYS: the video's waiting watches, poll schedule, video hash. ARGV: video id,
-- now ms.
if redis.call('HLEN', KEYS[1]) > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'phase', 'poll', 'notFound', 0)
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 0
