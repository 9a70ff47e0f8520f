-- Put back one batch of a tenant's failed watches: each goes to 'delivering' with its event
-- unchanged (same event id), due at Redis' now, on the retry schedule from its first step;
-- its attempt numbers and records go on (attempt n+1 after n; 'base' = n).
-- KEYS: the tenant's index of failed watches (zset, scored by when each became failed), the
-- delivery schedule, the status counters, the tenant's status counters.
-- ARGV: since ms, until ms (exclusive), now ms, watch key prefix, then the batch: the ids
-- the caller read from the index (oldest first; it closed their origins' circuits).
-- Takes every id of the batch still in the index within the range out of it: a watch that
-- is failed is put back; any other entry (a watch redelivered or put back meanwhile, or
-- gone) is stale and only dropped -- so a second recover running beside this one never
-- finds the same watch failed twice. Returns the number of watches put back.
local ids = {}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 0 end
local since, until_ms, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
-- due at Redis' now (one clock for every replica)
local t = redis.call('TIME')
local due_at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken, due = {}, {}
for k, wid in ipairs(ids) do
  local score = scores[k] and tonumber(scores[k])
  if score and score >= since and score < until_ms then
    taken[#taken + 1] = wid
    local key = ARGV[4] .. wid
    local st = redis.call('HGET', key, 'st')
    if st then
      local status, attempt, records, delivered, last_type =
        string.match(st, '^([^|]*)|([^|]*)|([^|]*)|[^|]*|([^|]*)|([^|]*)|')
      if status == 'failed' then
        -- attempt numbers go on; 'base' (the last attempt before this series) starts the
        -- retry schedule again from its first step
        redis.call('HSET', key, 'st', 'delivering|' .. attempt .. '|' .. records .. '|' ..
          now .. '|' .. delivered .. '|' .. last_type .. '|', 'base', attempt)
        due[#due + 1] = due_at
        due[#due + 1] = wid
      end
    end
  end
end
if #taken > 0 then redis.call('ZREM', KEYS[1], unpack(taken)) end
local moved = #due / 2
if moved > 0 then
  redis.call('ZADD', KEYS[2], unpack(due))
  for _, counts in ipairs({KEYS[3], KEYS[4]}) do
    redis.call('HINCRBY', counts, 'failed', -moved)
    redis.call('HINCRBY', counts, 'delivering', moved)
  end
end
return moved
