-- Claim due videos (score <= Redis' clock now) for a lease of ARGV[1] ms from Redis' now,
-- and return, for each, its poll state and how many watches wait on it (their ids are read
-- only when the video is final, a bounded chunk at a time).
-- KEYS: the poll schedule. ARGV: lease ms, limit, video key prefix, the suffix of a video's
-- waiting watches. Returns {the lease deadline ms (the claims' token), rows...}.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', deadline, 'LIMIT', 0, tonumber(ARGV[2]))
deadline = deadline + tonumber(ARGV[1])
local out, leased = {deadline}, {}
if #due == 0 then return out end
for i = 1, #due do
  leased[2 * i - 1] = deadline
  leased[2 * i] = due[i]
  out[i + 1] = {due[i], redis.call('HGETALL', ARGV[3] .. due[i]),
                redis.call('HLEN', ARGV[3] .. due[i] .. ARGV[4])}
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
