-- Extend claims that are still ours: a claim's lease deadline is its token. KEYS: the
-- schedule. ARGV: the deadline we set (ms), the new deadline (ms), members...
-- Returns the members whose claim was still ours, now extended.
local ours = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    ours[#ours + 1] = ARGV[i]
  end
end
return ours
