-- PROTOTYPE (bench only, not the product's): the chunk layout's settle. Each chunk whose
-- every attempt ended in a 2xx is one write of its outcomes (the attempt records packed in
-- one value), one member off the schedule and one into the tenant's index of final
-- chunks. (The exceptions -- a retry, a failure -- would leave their chunk for a state of
-- their own, as a watch has today: not prototyped.)
-- KEYS: delivery schedule, status counters, the tenant's index of final chunks, the
-- tenant's counts, the tenant's attempts of this minute (the dashboard's), then each
-- chunk's hash. ARGV: per chunk its member, its claim's token,
-- its watches' number and their records packed.
local n = #ARGV / 4
local members = {}
for k = 1, n do members[k] = ARGV[(k - 1) * 4 + 1] end
local held = redis.call('ZMSCORE', KEYS[1], unpack(members))
local t = redis.call('TIME')
local now_s = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local done, index, delivered, out = {}, {}, 0, {}
for k = 1, n do
  local i = (k - 1) * 4 + 1
  if held[k] == ARGV[i + 1] then
    redis.call('HSET', KEYS[5 + k], 'out', ARGV[i + 3])
    done[#done + 1] = ARGV[i]
    index[#index + 1] = now_s
    index[#index + 1] = ARGV[i]
    delivered = delivered + tonumber(ARGV[i + 2])
    out[k] = 1
  else
    out[k] = 0
  end
end
if #done > 0 then
  redis.call('ZREM', KEYS[1], unpack(done))
  redis.call('ZADD', KEYS[3], unpack(index))
  redis.call('HINCRBY', KEYS[2], 'delivering', -delivered)
  redis.call('HINCRBY', KEYS[2], 'delivered', delivered)
  redis.call('HINCRBY', KEYS[4], 'delivering', -delivered)
  redis.call('HINCRBY', KEYS[4], 'delivered', delivered)
  redis.call('HINCRBY', KEYS[5], 'ok', delivered)
  redis.call('EXPIRE', KEYS[5], 90000)
end
return out
