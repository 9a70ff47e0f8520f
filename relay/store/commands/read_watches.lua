-- Read watches: per watch, its registration and its state's fields asked for (false for a
-- missing watch). A watch without an event yet also gets its video's last seen status,
-- progress, when they changed and why its last poll failed, read once per video per call (a video id is [A-Za-z0-9_-], so the registration's
-- JSON holds it as written).
-- ARGV: watch key prefix, registration key suffix, video key prefix, number of fields, the
-- fields (with 'ev'), then the watch ids.
local nf = tonumber(ARGV[4])
local fields = {unpack(ARGV, 5, 4 + nf)}
local iev
for i = 1, nf do if fields[i] == 'ev' then iev = i end end
local videos, out = {}, {}
for i = 5 + nf, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  local reg = redis.call('GET', key .. ARGV[2])
  if not reg then
    out[#out + 1] = false
  else
    local h = redis.call('HMGET', key, unpack(fields))
    local v = false
    if not h[iev] then
      local video = string.match(reg, '"videoId":"([^"]*)"')
      v = videos[video]
      if not v then
        v = redis.call('HMGET', ARGV[3] .. video, 'status', 'progress', 'changedAt', 'pollError')
        videos[video] = v
      end
    end
    out[#out + 1] = {reg, h, v}
  end
end
return out
