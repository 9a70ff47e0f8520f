-- Close callback origins' circuits in every worker (an operator's redeliver or recover):
-- publish the origin tag ('*': every origin) on ARGV[3], and record it (KEYS[1], a sorted
-- set: tag -> Redis' ms of its last close) for a worker whose feed is reconnecting, which
-- reads the closes it missed once it is subscribed again. Records older than ARGV[2] ms
-- are dropped here, and the set lives ARGV[2] ms after the last close.
-- ARGV: the origin tag, the records' life (ms), the channel. Returns Redis' ms now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return now
