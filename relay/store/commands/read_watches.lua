-- Read watches: the hash fields asked for, in order, per watch (false for a missing one).
-- A watch without a video status of its own (it is still watching, or was cancelled before
-- the video was seen) shows its video's, read once per video per call.
-- ARGV: watch key prefix, video key prefix, number of fields, the fields (they include
-- 'video', 'vStatus' and 'vProgress'), then the watch ids.
local nf = tonumber(ARGV[3])
local fields = {unpack(ARGV, 4, 3 + nf)}
local iv, is, ip
for i = 1, nf do
  if fields[i] == 'video' then iv = i elseif fields[i] == 'vStatus' then is = i
  elseif fields[i] == 'vProgress' then ip = i end
end
local videos, out = {}, {}
for i = 4 + nf, #ARGV do
  local h = redis.call('HMGET', ARGV[1] .. ARGV[i], unpack(fields))
  if not h[iv] then
    out[#out + 1] = false
  else
    if not h[is] or h[is] == '' then
      local v = videos[h[iv]]
      if not v then
        v = redis.call('HMGET', ARGV[2] .. h[iv], 'status', 'progress')
        videos[h[iv]] = v
      end
      h[is], h[ip] = v[1], v[2]
    end
    out[#out + 1] = h
  end
end
return out
