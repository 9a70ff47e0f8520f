-- Claim up to ARGV[3] due deliveries (score <= ARGV[1]) by moving their score to the lease
-- deadline ARGV[2]: a worker that dies holding a claim loses it when the lease passes, and
-- another worker claims the member again. Returns, for each, the watch's fields (ARGV[6]
-- of them, named after it) and when its video's clips document was fetched (false if
-- none), read once per video: a batch costs one round trip, and the worker builds the
-- bodies. KEYS: the delivery schedule. ARGV: now ms, lease deadline ms, limit, watch key
-- prefix, clips document key prefix, number of fields, the fields (with 'video').
-- (It reads keys derived from the claimed members, as only a single Redis or Sentinel
-- allows -- which is also all that arq supports.)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #due == 0 then return {} end
local nf = tonumber(ARGV[6])
local fields = {unpack(ARGV, 7, 6 + nf)}
local iv
for i = 1, nf do if fields[i] == 'video' then iv = i end end
local out, leased, fetched = {}, {}, {}
for i = 1, #due do
  leased[2 * i - 1] = ARGV[2]
  leased[2 * i] = due[i]
  local h = redis.call('HMGET', ARGV[4] .. due[i], unpack(fields))
  local at = false
  if h[iv] then
    at = fetched[h[iv]]
    if at == nil then
      at = redis.call('HGET', ARGV[5] .. h[iv], 'at')
      fetched[h[iv]] = at
    end
  end
  out[i] = {due[i], h, at}
end
redis.call('ZADD', KEYS[1], unpack(leased))
return out
