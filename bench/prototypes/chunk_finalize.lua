-- PROTOTYPE (bench only, not the product's): the chunk layout's finalize. A chunk of one
-- video's watches gets its event as one hash; per watch only the waiting hash's check
-- (one HMGET for all), its entry pointed at the chunk (one HSET for all), its secrets read
-- (the sender signs with them) and its expiry member dropped (one ZREM for all).
-- KEYS: delivery schedule, the video's waiting watches, status counters, the chunk's hash,
-- expiry schedule, tenant key prefix's counts hash of the chunk's tenant.
-- ARGV: chunk member, lease ms, event ('type|at|progress|status|error'), watch key prefix,
-- then the watch ids. Returns {the claim's deadline, then per watch made: id, secrets}.
local ids = {}
for i = 5, #ARGV do ids[i - 4] = ARGV[i] end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = string.format('%d', now + tonumber(ARGV[2]))
local waiting = redis.call('HMGET', KEYS[2], unpack(ids))
local tag = 'c' .. ARGV[1]
local made, entries, out = {}, {}, {deadline}
for i = 1, #ids do
  local e = waiting[i]
  if e and string.byte(e, 1) ~= 99 then -- 'c': already in a chunk
    local id = ids[i]
    made[#made + 1] = id
    entries[#entries + 1] = id
    entries[#entries + 1] = tag
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', ARGV[4] .. id, 'secrets')
  end
end
local n = #made
if n == 0 then return out end
redis.call('HSET', KEYS[2], unpack(entries))
redis.call('HSET', KEYS[4], 'ev', ARGV[3], 'ids', table.concat(made, ','), 'n', n)
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
redis.call('ZREM', KEYS[5], unpack(made))
redis.call('HINCRBY', KEYS[3], 'watching', -n)
redis.call('HINCRBY', KEYS[3], 'delivering', n)
redis.call('HINCRBY', KEYS[6], 'watching', -n)
redis.call('HINCRBY', KEYS[6], 'delivering', n)
return out
