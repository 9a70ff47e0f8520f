-- Claim up to ARGV[3] due members of a schedule (score <= ARGV[1]) by moving their score to
-- the lease deadline ARGV[2] (a worker that dies holding one loses it after the lease).
-- KEYS: the schedule. Returns the members claimed.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local leased = {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
end
redis.call('ZADD', KEYS[1], unpack(leased))
return due
