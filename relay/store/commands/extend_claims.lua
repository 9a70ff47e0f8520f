-- Extend claims that are still ours: a claim's lease deadline is its token. KEYS: the
-- schedule. ARGV: the deadline we hold (ms), the lease (ms) from Redis' clock now (0: hand
-- the claims back, due now), members...
-- Returns {the new deadline (the new token), then the members whose claim was still ours,
-- now extended}.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local token = tonumber(ARGV[1])
local ours = {deadline}
for i = 3, #ARGV do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == token then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
    ours[#ours + 1] = ARGV[i]
  end
end
return ours
