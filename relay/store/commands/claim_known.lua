-- Claim deliveries whose event the caller already holds (its poller just created them), so
-- nothing is read back but what may have changed since: the attempt count and the secrets
-- (a rotation). A member is claimed as claim_deliveries.lua would claim it -- due, and still
-- delivering that same event -- by moving its score to the lease deadline; anything else
-- (claimed by another worker, cancelled, another event) is left alone.
-- KEYS: the delivery schedule. ARGV: now ms, lease deadline ms, watch key prefix, then per
-- delivery: watch id, event id. Returns {watch id, attempt, secrets} for each claimed one.
local out, leased = {}, {}
local now = tonumber(ARGV[1])
for i = 4, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now then
    local h = redis.call('HMGET', ARGV[3] .. ARGV[i], 'status', 'eventId', 'attempt', 'secrets')
    if h[1] == 'delivering' and h[2] == ARGV[i + 1] then
      leased[#leased + 1] = ARGV[2]
      leased[#leased + 1] = ARGV[i]
      out[#out + 1] = {ARGV[i], h[3], h[4]}
    end
  end
end
if #leased > 0 then redis.call('ZADD', KEYS[1], unpack(leased)) end
return out
