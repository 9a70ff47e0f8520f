-- Claim due videos and return, for each, its poll state and how many watches wait on it
-- (their ids are read only when the video is final, a bounded chunk at a time).
-- KEYS: the poll schedule. ARGV: now ms, lease deadline ms, limit, video key prefix, the
-- suffix of a video's waiting watches.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local out, leased = {}, {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
  out[i] = {due[i], redis.call('HGETALL', ARGV[4] .. due[i]),
            redis.call('HLEN', ARGV[4] .. due[i] .. ARGV[5])}
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
