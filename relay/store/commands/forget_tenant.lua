-- Forget a tenant that holds no watch any more (its API key removed, its last watch purged):
-- take it out of the set of tenants and delete its status counters, so neither outlives it
-- and the sweeper stops visiting it. Atomic against create_watch, which adds both back.
-- KEYS: the set of tenants, the tenant's index of watches, the tenant's status counters,
-- then its indexes of final watches (one per final status). ARGV: the tenant.
-- Returns 1 (forgotten) or 0 (it holds watches, or a counter is not 0: left as it is).
-- Bounded: a few EXISTS and the counters' six fields.
for i = 2, #KEYS do
  if i ~= 3 and redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for _, n in ipairs(redis.call('HVALS', KEYS[3])) do
  if n ~= '0' then return 0 end
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
return 1
