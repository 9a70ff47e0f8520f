-- Read one batch of a tenant's failed watches for a recover: the oldest ARGV[3] ids of its
-- index (KEYS[1], scored by when each became failed) in [ARGV[1], ARGV[2]) ms, and each
-- one's registration (false: gone), so the caller can close their callbacks' origins'
-- circuits before it puts them back (recover.lua).
-- ARGV: since ms, until ms (exclusive), batch size, watch key prefix, registration suffix.
-- Returns {ids, registrations}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
local regs = {}
for i, wid in ipairs(ids) do
  regs[i] = redis.call('GET', ARGV[4] .. wid .. ARGV[5])
end
return {ids, regs}
