-- Retention: delete up to ARGV[2] of a tenant's watches final in one status for longer than
-- ARGV[1] ms (by Redis' clock), each with everything it owns: its registration and state
-- hash (attempt records live in it), its members of the tenant's indexes, any leftover
-- member of the delivery and expiry schedules and of its video's waiting watches, its share
-- of its clips document (deleted with the last event that uses it), its idempotency record
-- (state field 'idem', when there is one); the status counters go down with it. A member of
-- the final index whose watch is no longer in that status (redelivered meanwhile) only
-- leaves the index: a watch 'watching' or 'delivering' is never touched. One call reads and
-- removes its members atomically, so two sweepers never delete one watch twice.
-- KEYS: the tenant's index of the status, the tenant's index of watches, the tenant's status
-- counters, the status counters, delivery schedule, expiry schedule, poll schedule (only
-- rebuilt, below: released videos leave it, not deleted watches).
-- ARGV: retention ms, limit, the status, watch key prefix, registration key suffix, the
-- tenant's key prefix ('cr:t:{tenant}'), video key prefix, suffix of a video's waiting
-- watches, clips document key prefix, the size of a zset rebuilt (see below).
-- ARGV[10]: a zset this small or smaller that Redis still keeps as a skiplist is rebuilt --
-- unless a member is longer than ARGV[11] (zset-max-listpack-value: it would stay one).
-- Redis never gives back a zset's hash table after ZREMs: a tenant index or a schedule
-- that once held 50,000 members would keep ~0.6 MB for good (the poll schedule as well: it
-- is rebuilt here, the sweep being the one that runs once in a while). Rebuilt (at most ARGV[10]
-- members, the same members and scores) it is a compact listpack again.
-- Returns {watches deleted, index members read} (members read < limit: nothing older left).
-- Its first write is a ZREM, which Redis allows at maxmemory (noeviction), and a script that
-- has written may go on: a full Redis runs it, and retention frees memory by itself
-- (tests/test_retention.py). Keep a write that may grow memory from coming first.
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {0, 0} end
redis.call('ZREM', KEYS[1], unpack(ids))
local status = ARGV[3]
local gone = {}
for i = 1, #ids do
  local wid = ids[i]
  local key = ARGV[4] .. wid
  local h = redis.call('HMGET', key, 'st', 'video', 'ev', 'idem')
  local st, video = h[1], h[2]
  if st and string.match(st, '^([^|]*)|') == status then
    gone[#gone + 1] = wid
    redis.call('DEL', key, key .. ARGV[5])
    -- (the index members are gone already and Redis does not undo a script's writes when
    -- it fails part-way: nothing below may raise, or the rest of the batch would be kept
    -- for good -- a state without its video, a document or a record of an odd type)
    if video then
      redis.call('ZREM', ARGV[6] .. ':v:' .. video .. ':w', wid)
      redis.call('HDEL', ARGV[7] .. video .. ARGV[8], wid)
      local etype, at = string.match(h[3] or '', '^([^|]*)|([^|]*)|')
      if etype == 'clips.ready' then
        local doc = ARGV[9] .. video .. ':' .. at
        local refs = redis.pcall('HINCRBY', doc, 'refs', -1)
        if type(refs) == 'number' and refs <= 0 then redis.call('DEL', doc) end
      end
    end
    if h[4] then
      -- the record may have expired (24 h) and the key made another watch since: only its own
      local rec = redis.pcall('GET', h[4])
      if type(rec) == 'string' and string.find(rec, '"' .. wid .. '"', 1, true) then
        redis.call('DEL', h[4])
      end
    end
  end
end
local n = #gone
if n > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[5], unpack(gone))
  redis.call('ZREM', KEYS[6], unpack(gone))
  redis.call('HINCRBY', KEYS[3], status, -n)
  redis.call('HINCRBY', KEYS[4], status, -n)
end
local small, longest = tonumber(ARGV[10]), tonumber(ARGV[11] or '64')
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[5], KEYS[6], KEYS[7]}) do
  local card = redis.call('ZCARD', key)
  if card > 0 and card <= small and redis.call('OBJECT', 'ENCODING', key) == 'skiplist' then
    local rows = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local args, fits = {}, true
    for i = 1, #rows, 2 do
      if #rows[i] > longest then fits = false break end
      args[i], args[i + 1] = rows[i + 1], rows[i]
    end
    if fits then
      redis.call('DEL', key)
      redis.call('ZADD', key, unpack(args))
    end
  end
end
return {n, #ids}
