-- Record delivery attempts and move each watch on. KEYS: delivery schedule, status counters.
-- ARGV: watch key prefix, now ms, attempt records kept, tenant key prefix, then per attempt:
-- watch id, event type, outcome (ok|retry|failed|disabled), next due ms, attempt number,
-- last error, the attempt record. The record goes into the watch's hash ('#<n>', the oldest
-- beyond those kept dropped) with its state change: one read and one write per attempt.
-- A final watch joins its tenant's index of that status. Returns the status each watch has
-- afterwards.
local statuses, due, gone, counts, finals = {}, {}, {}, {}, {}
local now, kept = ARGV[2], tonumber(ARGV[3])
for i = 5, #ARGV, 7 do
  local wid, etype, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local watch = ARGV[1] .. wid
  local h = redis.call('HMGET', watch, 'status', 'event', 'n', 'tenant')
  local status = h[1]
  if not status then
    gone[wid], due[wid] = true, nil  -- the watch is gone: nothing to record
  else
    local seq = tonumber(h[3] or '0') + 1
    local fields = {'n', seq, '#' .. seq, ARGV[i + 6]}
    if status ~= 'delivering' or h[2] ~= etype then
      -- cancelled, or already moved on: only a watch that stopped delivering leaves
      if status ~= 'delivering' then gone[wid], due[wid] = true, nil end
    else
      local k = #fields
      fields[k + 1], fields[k + 2] = 'attempt', ARGV[i + 4]
      fields[k + 3], fields[k + 4] = 'updated', now
      fields[k + 5], fields[k + 6] = 'lastError', ARGV[i + 5]
      if outcome == 'retry' then
        gone[wid], due[wid] = nil, ARGV[i + 3]
      else
        status = outcome == 'ok' and 'delivered' or outcome
        fields[k + 7], fields[k + 8] = 'status', status
        fields[k + 9], fields[k + 10] = 'lastType', etype
        if outcome == 'ok' then fields[k + 11], fields[k + 12] = 'deliveredAt', now end
        gone[wid], due[wid] = true, nil
        local tenant = h[4]
        counts[tenant] = counts[tenant] or {}
        counts[tenant]['delivering'] = (counts[tenant]['delivering'] or 0) - 1
        counts[tenant][status] = (counts[tenant][status] or 0) + 1
        local index = ARGV[4] .. tenant .. ':s:' .. status
        finals[index] = finals[index] or {}
        local f = finals[index]
        f[#f + 1] = now
        f[#f + 1] = wid
      end
    end
    redis.call('HSET', watch, unpack(fields))
    if seq > kept then redis.call('HDEL', watch, '#' .. (seq - kept)) end
  end
  statuses[#statuses + 1] = status or false
end
-- the schedule, the indexes and the counters change once per call
local zadd, zrem = {}, {}
for wid, at in pairs(due) do
  zadd[#zadd + 1] = at
  zadd[#zadd + 1] = wid
end
for wid in pairs(gone) do zrem[#zrem + 1] = wid end
if #zadd > 0 then redis.call('ZADD', KEYS[1], unpack(zadd)) end
if #zrem > 0 then redis.call('ZREM', KEYS[1], unpack(zrem)) end
for index, members in pairs(finals) do redis.call('ZADD', index, unpack(members)) end
for tenant, deltas in pairs(counts) do
  for status, delta in pairs(deltas) do
    if delta ~= 0 then
      redis.call('HINCRBY', KEYS[2], status, delta)
      redis.call('HINCRBY', ARGV[4] .. tenant .. ':n', status, delta)
    end
  end
end
return statuses
