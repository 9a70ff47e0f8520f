-- Register a watch: its hash, the tenant's indexes, the video's waiting set, the video's
-- poll (NX: a video already scheduled keeps its slot, a claimed one its lease), the expiry
-- timer as an arq job, the status counters. The tenant indexes are ordered by Redis' clock.
-- KEYS: watch hash, tenant index, tenant-video index, video watch set, poll schedule, arq job
-- key, arq queue, status counters, the tenant's status counters, the set of tenants.
-- ARGV: watch id, created ms, video id, job bytes, job ttl ms, job due ms, job id, tenant,
-- then the hash's fields as name, value pairs.
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
-- listing order: Redis' clock in microseconds, one clock for every API replica
local t = redis.call('TIME')
local order = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[2], order, ARGV[1])
redis.call('ZADD', KEYS[3], order, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[3])
redis.call('SET', KEYS[6], ARGV[4], 'PX', ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[6], ARGV[7])
redis.call('HINCRBY', KEYS[8], 'watching', 1)
redis.call('HINCRBY', KEYS[9], 'watching', 1)
redis.call('SADD', KEYS[10], ARGV[8])
return 1
