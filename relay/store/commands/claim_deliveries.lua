-- Claim up to ARGV[3] due deliveries (score <= ARGV[1]) by moving their score to the lease
-- deadline ARGV[2]: a worker that dies holding a claim loses it when the lease passes, and
-- another worker claims the member again. Returns, for each, the watch's registration, the
-- state fields sending needs, and when its video's clips document was fetched (read once
-- per video): a batch costs one round trip, and the worker builds the bodies.
-- KEYS: the delivery schedule. ARGV: now ms, lease deadline ms, limit, watch key prefix,
-- registration key suffix, clips document key prefix, then the state fields.
-- (It reads keys derived from the claimed members, as only a single Redis or Sentinel
-- allows -- which is also all that arq supports.)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local fields = {'video', unpack(ARGV, 7)}
local out, leased, fetched = {}, {}, {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
  local key = ARGV[4] .. due[i]
  local reg = redis.call('GET', key .. ARGV[5])
  if reg then
    local h = redis.call('HMGET', key, unpack(fields))
    local video = h[1]
    local at = fetched[video]
    if at == nil then
      at = redis.call('HGET', ARGV[6] .. video, 'at')
      fetched[video] = at
    end
    out[i] = {due[i], reg, h, at}
  else
    out[i] = {due[i], false, false, false}
  end
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
