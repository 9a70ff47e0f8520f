-- Claim up to ARGV[3] due deliveries (score <= ARGV[1]) by moving their score to the lease
-- deadline ARGV[2]: a worker that dies holding a claim loses it when the lease passes, and
-- another worker claims the member again. Returns, for each, the watch hash and the current
-- event's body, so a batch costs one round trip. KEYS: the delivery schedule. ARGV: now ms,
-- lease deadline ms, limit, watch key prefix, event key prefix.
-- (It reads keys derived from the claimed members, as only a single Redis or Sentinel
-- allows -- which is also all that arq supports.)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local out = {}
local leased = {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
  local watch = redis.call('HGETALL', ARGV[4] .. due[i])
  local body = false
  for j = 1, #watch, 2 do
    if watch[j] == 'eventId' and watch[j + 1] ~= '' then
      body = redis.call('GET', ARGV[5] .. watch[j + 1])
    end
  end
  out[i] = {due[i], watch, body}
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
