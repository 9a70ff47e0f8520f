-- Record delivery attempts and move each watch on. KEYS: delivery schedule, status counters.
-- ARGV: watch key prefix, attempts key suffix, now ms, attempts kept, then per attempt: watch
-- id, the outcome as a JSON array [event id, outcome (ok|retry|failed|disabled), next due ms,
-- attempt number, last error], the attempt record. Returns the status each watch has
-- afterwards.
local statuses, due, gone, counts = {}, {}, {}, {}
local kept = tonumber(ARGV[4])
for i = 5, #ARGV, 3 do
  local wid = ARGV[i]
  local eid, outcome, next_due, attempt, last_error = unpack(cjson.decode(ARGV[i + 1]))
  local watch = ARGV[1] .. wid
  local attempts = watch .. ARGV[2]
  if redis.call('RPUSH', attempts, ARGV[i + 2]) > kept then
    redis.call('LTRIM', attempts, -kept, -1)
  end
  local h = redis.call('HMGET', watch, 'status', 'eventId', 'eventType')
  local status = h[1]
  if status ~= 'delivering' or h[2] ~= eid then
    -- cancelled, or already moved on: only a watch that stopped delivering leaves
    if status ~= 'delivering' then gone[wid], due[wid] = true, nil end
  elseif outcome == 'retry' then
    redis.call('HSET', watch, 'attempt', attempt, 'updatedAt', ARGV[3], 'lastError', last_error)
    gone[wid], due[wid] = nil, next_due
  else
    status = outcome == 'ok' and 'delivered' or outcome
    local fields = {'attempt', attempt, 'updatedAt', ARGV[3], 'lastError', last_error,
      'status', status, 'lastEventType', h[3]}
    if outcome == 'ok' then
      fields[11] = 'deliveredAt'
      fields[12] = ARGV[3]
    end
    redis.call('HSET', watch, unpack(fields))
    gone[wid], due[wid] = true, nil
    counts['delivering'] = (counts['delivering'] or 0) - 1
    counts[status] = (counts[status] or 0) + 1
  end
  statuses[#statuses + 1] = status or false
end
-- the schedule and the counters change once per call (per watch, the last change counts)
local zadd, zrem = {}, {}
for wid, at in pairs(due) do
  zadd[#zadd + 1] = at
  zadd[#zadd + 1] = wid
end
for wid in pairs(gone) do zrem[#zrem + 1] = wid end
if #zadd > 0 then redis.call('ZADD', KEYS[1], unpack(zadd)) end
if #zrem > 0 then redis.call('ZREM', KEYS[1], unpack(zrem)) end
for status, delta in pairs(counts) do
  if delta ~= 0 then redis.call('HINCRBY', KEYS[2], status, delta) end
end
return statuses
