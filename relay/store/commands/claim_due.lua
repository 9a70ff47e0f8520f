-- Claim up to ARGV[2] due members of a schedule (score <= Redis' clock now) by moving their
-- score to the lease deadline, Redis' now + ARGV[1] ms (a worker that dies holding one loses
-- it after the lease). Every worker reads one clock, Redis', so a worker whose own clock is
-- off neither takes a live claim early nor leaves due work late.
-- KEYS: the schedule. Returns {the lease deadline ms (the claims' token), members...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return {deadline} end
local leased = {}
for i = 1, #due do
  leased[2 * i - 1] = deadline
  leased[2 * i] = due[i]
end
redis.call('ZADD', KEYS[1], unpack(leased))
return {deadline, unpack(due)}
