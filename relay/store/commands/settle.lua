-- Record delivery attempts and move each watch on. KEYS: delivery schedule, status counters.
-- ARGV: watch key prefix, attempt records kept, tenant key prefix, then per attempt
-- (few values: each one costs Redis an allocation): watch id, its claim's deadline (the
-- token), the watch's new delivery state (the ``st`` field), the record's number
-- (negative: check it against records written since the claim read the watch -- a claim
-- from the schedule may have had an owner before, one made with its event never), the
-- attempt record, and what follows -- 'r<ms>' for a retry (due that long after Redis' now:
-- one clock, whatever the worker's says), else
-- '<final status>|<tenant>'. (Numbers as plain decimal integers: the records kept and a
-- record's number are compared by their digits, and the number names its slot as it is.)
-- A claim still held (the schedule's score is its token) is a watch still delivering that
-- event: its new state and its record ('#<n>') are one write -- numbered after any record
-- written since the claim read the watch (a late one of a lapsed claim). Otherwise
-- (cancelled, redelivered, taken over) only the record is kept, if the watch is there and
-- does not have it already among the records numbered from the attempt's own number on
-- (safe to run twice, also after others' records came in between). A final watch joins
-- its tenant's index of that status. Returns each watch's status.
local W = 6
-- (KEYS[3..]: the dashboard's minute counts, see the end; their values close ARGV)
local n = (#ARGV - 3 - (#KEYS > 2 and 2 * (#KEYS - 2) + 1 or 0)) / W
local members = {}
for k = 1, n do members[k] = ARGV[4 + (k - 1) * W] end
local held = redis.call('ZMSCORE', KEYS[1], unpack(members))
local statuses, due, gone, counts, finals, ends = {}, {}, {}, {}, {}, {}
-- a final watch joins its index at Redis' time, the clock retention and recovery read it by,
-- and a retry is due by it
local t = redis.call('TIME')
local now, kept = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(ARGV[2])
-- (per attempt, the common path converts no number: a string made into a number costs a
-- strtod and a number made into a string an sprintf, each more than the HSET's own work;
-- `python bench/redis_cost.py --callgrind` counts them)
local now_s, kept_len = string.format('%d', now), #ARGV[2]
for k = 1, n do
  local i = 4 + (k - 1) * W
  local wid, next = ARGV[i], ARGV[i + 5]
  local key = ARGV[1] .. wid
  local status, seq
  local h, no = held[k], ARGV[i + 3]
  -- (the score as ZMSCORE writes it is the token as the caller wrote it; else as numbers)
  if h and (h == ARGV[i + 1] or tonumber(h) == tonumber(ARGV[i + 1])) then
    local check = string.byte(no, 1) == 45 -- '-'
    if check then
      seq = -tonumber(no)
      no = tostring(seq)
    elseif #no >= kept_len then -- (shorter: a smaller number than kept, none to drop)
      seq = tonumber(no)
    end
    local st, slot = ARGV[i + 2], '#' .. no
    if check and (redis.call('HGET', key, slot) or ARGV[i + 4]) ~= ARGV[i + 4] then
      -- a record came after this claim read the watch (an attempt made under a claim that
      -- lapsed, settled late): this one goes after it, not over it
      local s, a, _, rest = string.match(st, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
      local r = tonumber(string.match(redis.call('HGET', key, 'st'), '^[^|]*|[^|]*|([^|]*)|'))
      -- (a second run of this very call, its reply lost, finds its record last: the same)
      seq = redis.call('HGET', key, '#' .. r) == ARGV[i + 4] and r or r + 1
      st, slot = s .. '|' .. a .. '|' .. seq .. '|' .. rest, '#' .. seq
    end
    redis.call('HSET', key, 'st', st, slot, ARGV[i + 4])
    if string.byte(next, 1) == 114 then -- 'r': a retry
      status = 'delivering'
      gone[wid], due[wid] = nil, string.format('%d', now + tonumber(string.sub(next, 2)))
    else
      -- (a call's outcomes are few: each is parsed once, its counts and index kept)
      local final = ends[next]
      if not final then
        local s, tenant = string.match(next, '^([^|]*)|(.*)$')
        local index = ARGV[3] .. tenant .. ':s:' .. s
        counts[tenant] = counts[tenant] or {}
        finals[index] = finals[index] or {}
        final = {s, counts[tenant], finals[index]}
        ends[next] = final
      end
      status = final[1]
      gone[wid], due[wid] = true, nil
      local c, f = final[2], final[3]
      c['delivering'] = (c['delivering'] or 0) - 1
      c[status] = (c[status] or 0) + 1
      f[#f + 1] = now_s
      f[#f + 1] = wid
    end
  else
    -- not ours any more: keep the record if the watch is there, change nothing else
    local st = redis.call('HGET', key, 'st')
    if st then
      local s, a, r, rest = string.match(st, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
      status, r = s, tonumber(r)
      -- a second run of this very call (its reply was lost; others' records may have come
      -- since) finds its record among those numbered from its own number on (the claim
      -- read the watch before it: its record went there or after): done
      local from, have = math.max(math.abs(tonumber(ARGV[i + 3])), r - kept + 1, 1), false
      if from <= r then
        local slots = {}
        for j = from, r do slots[#slots + 1] = '#' .. j end
        for _, v in ipairs(redis.call('HMGET', key, unpack(slots))) do
          if v == ARGV[i + 4] then have = true break end
        end
      end
      if not have then
        seq = r + 1
        redis.call('HSET', key, 'st', s .. '|' .. a .. '|' .. seq .. '|' .. rest,
          '#' .. seq, ARGV[i + 4])
      end
    end
  end
  if seq and seq > kept then redis.call('HDEL', key, '#' .. (seq - kept)) end
  statuses[k] = status or false
end
-- the schedule, the indexes and the counters change once per call
local zadd, zrem = {}, {}
for wid, at in pairs(due) do
  zadd[#zadd + 1] = at
  zadd[#zadd + 1] = wid
end
for wid in pairs(gone) do zrem[#zrem + 1] = wid end
if #zadd > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(zadd)) end
if #zrem > 0 then redis.call('ZREM', KEYS[1], unpack(zrem)) end
for index, members in pairs(finals) do redis.call('ZADD', index, unpack(members)) end
for tenant, deltas in pairs(counts) do
  for status, delta in pairs(deltas) do
    if delta ~= 0 then
      redis.call('HINCRBY', KEYS[2], status, delta)
      redis.call('HINCRBY', ARGV[3] .. tenant .. ':n', status, delta)
    end
  end
end
-- The dashboard's attempts per minute per tenant (issue 17): KEYS[3..] one hash per tenant
-- of this call, cr:t:{tenant}:m:{minute}; ARGV closes with their TTL (seconds) and, per
-- key, its ok and fail counts. One HINCRBY per count and one EXPIRE per key per call.
if #KEYS > 2 then
  local m = #ARGV - 2 * (#KEYS - 2)
  for j = 3, #KEYS do
    local at = m + 2 * (j - 3)
    if ARGV[at + 1] ~= '0' then redis.call('HINCRBY', KEYS[j], 'ok', ARGV[at + 1]) end
    if ARGV[at + 2] ~= '0' then redis.call('HINCRBY', KEYS[j], 'fail', ARGV[at + 2]) end
    redis.call('EXPIRE', KEYS[j], ARGV[m])
  end
end
return statuses
