-- Register a watch: its registration and state, the tenant's indexes, the video's waiting
-- watches (-> tenant), the video's poll (NX: a video already scheduled keeps its slot, a
-- claimed one its lease), its expiry, the status counters. The tenant indexes are ordered
-- by Redis' clock.
-- KEYS: registration, state hash, tenant index, tenant-video index, the video's waiting
-- watches, poll schedule, expiry schedule, status counters, the tenant's status counters,
-- the set of tenants.
-- ARGV: watch id, registration JSON, secrets JSON, created ms, video id, tenant, expires ms,
-- the delivery state of a new watch.
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'video', ARGV[5], 'st', ARGV[8], 'secrets', ARGV[3])
-- listing order: Redis' clock in microseconds, one clock for every API replica
local t = redis.call('TIME')
local order = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[3], order, ARGV[1])
redis.call('ZADD', KEYS[4], order, ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[6])
redis.call('ZADD', KEYS[6], 'NX', ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[7], ARGV[1])
redis.call('HINCRBY', KEYS[8], 'watching', 1)
redis.call('HINCRBY', KEYS[9], 'watching', 1)
redis.call('SADD', KEYS[10], ARGV[6])
return 1
