-- Put back one batch of a tenant's failed watches: each goes to 'delivering' with its event
-- unchanged (same event id), due at Redis' now, on the retry schedule from its first step;
-- its attempt numbers and records go on (attempt n+1 after n; 'base' = n).
-- KEYS: the tenant's index of failed watches (zset, scored by when each became failed), the
-- delivery schedule, the status counters, the tenant's status counters.
-- ARGV: since ms, until ms (exclusive), batch size, now ms, watch key prefix.
-- Reads at most one batch of the index, oldest first, and takes every entry it read out of
-- the index: a watch that is failed is put back; any other entry (a watch redelivered or
-- put back meanwhile, or gone) is stale and only dropped -- so a second recover running
-- beside this one never finds the same watch failed twice. Returns {entries read, watches
-- put back}; fewer read than the batch size: the range is done.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
if #ids == 0 then return {0, 0} end
local now = ARGV[4]
-- due at Redis' now (one clock for every replica)
local t = redis.call('TIME')
local due_at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = {}
for _, wid in ipairs(ids) do
  local key = ARGV[5] .. wid
  local st = redis.call('HGET', key, 'st')
  if st then
    local status, attempt, records, delivered, last_type =
      string.match(st, '^([^|]*)|([^|]*)|([^|]*)|[^|]*|([^|]*)|([^|]*)|')
    if status == 'failed' then
      -- attempt numbers go on; 'base' (the last attempt before this series) starts the
      -- retry schedule again from its first step
      redis.call('HSET', key, 'st', 'delivering|' .. attempt .. '|' .. records .. '|' .. now ..
        '|' .. delivered .. '|' .. last_type .. '|', 'base', attempt)
      due[#due + 1] = due_at
      due[#due + 1] = wid
    end
  end
end
redis.call('ZREM', KEYS[1], unpack(ids))
local moved = #due / 2
if moved > 0 then
  redis.call('ZADD', KEYS[2], unpack(due))
  for _, counts in ipairs({KEYS[3], KEYS[4]}) do
    redis.call('HINCRBY', counts, 'failed', -moved)
    redis.call('HINCRBY', counts, 'delivering', moved)
  end
end
return {#ids, moved}
