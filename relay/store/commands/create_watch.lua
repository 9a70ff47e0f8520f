-- Register a watch: its registration and state, the tenant's indexes, the video's waiting
-- watches (-> tenant:origin-tag), the video's poll (NX: a video already scheduled keeps its slot, a
-- claimed one its lease), its expiry, the status counters. The tenant indexes are ordered
-- by Redis' clock.
-- With an Idempotency-Key (KEYS[11]), the key's record and the watch are made together, so
-- however requests with one key interleave, one of them creates and the others find it:
-- a record naming a watch that exists wins; one naming no watch (left by a failed create of
-- an older version) is replaced. The watch remembers its record ('idem') for retention.
-- Safe to run twice (a client retry after a lost reply): the second run finds the watch.
-- KEYS: registration, state hash, tenant index, tenant-video index, the video's waiting
-- watches, poll schedule, expiry schedule, status counters, the tenant's status counters,
-- the set of tenants, [idempotency record].
-- ARGV: watch id, registration JSON, secrets JSON, created ms, video id, tenant, expires ms
-- (expires - created: the expiry's delay from Redis' now),
-- the delivery state of a new watch, live watches the tenant may hold, watch key prefix,
-- its entry in the video's waiting watches ('tenant:origin-tag'), watches the tenant may
-- hold in all (final ones are kept for the retention), [idempotency record JSON, its TTL
-- s, '1': replay only (Redis is near full: answer a watch made with this key, write
-- nothing)].
-- Returns {'created'}, {'exists', record JSON} (a watch made with this key, or this very
-- watch on a re-run), {'full', live} (the tenant holds its maximum of live watches),
-- {'stored', n} (its maximum of watches in all), or {'refused'} (replay only, and no watch
-- was made with this key).
local idem = KEYS[11]
if idem then
  local prior = redis.call('GET', idem)
  if prior then
    local ok, rec = pcall(cjson.decode, prior)
    if ok and type(rec) == 'table' and type(rec.watchId) == 'string' and
        redis.call('EXISTS', ARGV[10] .. rec.watchId) == 1 then
      return {'exists', prior}
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists', ''} end
if ARGV[15] == '1' then return {'refused'} end
-- (the tenant's counts per status: six fields at most)
local counts, n, stored = redis.call('HGETALL', KEYS[9]), 0, 0
for i = 1, #counts, 2 do
  local k = tonumber(counts[i + 1]) or 0
  stored = stored + k
  if counts[i] == 'watching' or counts[i] == 'delivering' then n = n + k end
end
if n >= tonumber(ARGV[9]) then return {'full', tostring(n)} end
if stored >= tonumber(ARGV[12]) then return {'stored', tostring(stored)} end
redis.call('SET', KEYS[1], ARGV[2])
if idem then
  redis.call('SET', idem, ARGV[13], 'EX', ARGV[14])
  redis.call('HSET', KEYS[2], 'video', ARGV[5], 'st', ARGV[8], 'secrets', ARGV[3], 'idem', idem)
else
  redis.call('HSET', KEYS[2], 'video', ARGV[5], 'st', ARGV[8], 'secrets', ARGV[3])
end
-- listing order: Redis' clock in microseconds, one clock for every API replica
local t = redis.call('TIME')
local order = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[3], order, ARGV[1])
redis.call('ZADD', KEYS[4], order, ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[11])
-- its video's first poll is due at Redis' now and its expiry the timeout after it (the
-- caller's created and expires ms say only how long that is: its clock may be off)
local now = math.floor(order / 1000)
redis.call('ZADD', KEYS[6], 'NX', now, ARGV[5])
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[7]) - tonumber(ARGV[4]), ARGV[1])
redis.call('HINCRBY', KEYS[8], 'watching', 1)
redis.call('HINCRBY', KEYS[9], 'watching', 1)
redis.call('SADD', KEYS[10], ARGV[6])
return {'created'}
