-- The registration (spec) and status of many watches, in one reply. ARGV: watch key
-- prefix, watch ids... Returns [spec, status] per watch (nil for a missing watch).
local out = {}
for i = 2, #ARGV do
  out[i - 1] = redis.call('HMGET', ARGV[1] .. ARGV[i], 'spec', 'status')
end
return out
