-- Close callback origins' circuits in every worker (an operator's redeliver or recover):
-- publish each origin tag ('*': every origin) on ARGV[2], and record it (KEYS[1], a sorted
-- set: tag -> Redis' ms of its last close) for a worker whose feed is reconnecting, which
-- reads the closes it missed once it is subscribed again. Records older than ARGV[1] ms
-- are dropped here, and the set lives ARGV[1] ms after the last close.
-- ARGV: the records' life (ms), the channel, then the origin tags (a recover's batch: at
-- most one per watch of it). Returns Redis' ms now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local scored = {}
for i = 3, #ARGV do
  scored[#scored + 1] = now
  scored[#scored + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[1], unpack(scored))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
for i = 3, #ARGV do redis.call('PUBLISH', ARGV[2], ARGV[i]) end
return now
