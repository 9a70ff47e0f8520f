-- Re-sealing after a RELAY_SECRETS_KEY rotation (`clip-relay secrets reseal`): put the
-- re-sealed forms of watches' stored secrets in place, each only if what the caller read
-- is still there. A secret rotated, a watch purged or re-sealed by another run in between
-- wins: its value is left as it is now (whoever wrote it sealed it with the newest key).
-- KEYS: none (each watch's keys are made from ARGV[1] and its id, as the scripts that
-- handle claimed watches do).
-- ARGV: watch key prefix, registration key suffix, then per watch (few: each an EXISTS, two
-- compares and at most two writes): its id, the SHA-1 (hex) of its state's 'secrets' field
-- as read ('' = leave it), the new field, the SHA-1 of its registration (JSON) as read ('' =
-- leave it), the new registration. (Hashes, not the values read: a plain secret or
-- credential would show in SLOWLOG and MONITOR.)
-- The registration keeps its time to live, if it has one (KEEPTTL).
-- Returns per watch what was left because it changed since it was read: 0 nothing, 1 the
-- secrets, 2 the registration, 3 both; 4 the watch is gone (purged: nothing written).
local left = {}
for i = 3, #ARGV, 5 do
  local key, code = ARGV[1] .. ARGV[i], 0
  if redis.call('EXISTS', key, key .. ARGV[2]) == 0 then
    code = 4
  elseif ARGV[i + 1] ~= '' then
    local now = redis.call('HGET', key, 'secrets')
    if now and redis.sha1hex(now) == ARGV[i + 1] then
      redis.call('HSET', key, 'secrets', ARGV[i + 2])
    else
      code = 1
    end
  end
  if code ~= 4 and ARGV[i + 3] ~= '' then
    local reg = key .. ARGV[2]
    local now = redis.call('GET', reg)
    if now and redis.sha1hex(now) == ARGV[i + 3] then
      redis.call('SET', reg, ARGV[i + 4], 'KEEPTTL')
    else
      code = code + 2
    end
  end
  left[#left + 1] = code
end
return left
