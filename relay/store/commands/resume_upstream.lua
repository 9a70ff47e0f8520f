-- End the upstream pause a 429 set (an operator's `clip-relay upstream resume`): every
-- worker is told at once (ARGV[1], the pause channel: the message '0'), and the polls a
-- poller put off to the pause's end (due by ARGV[3] ms after it) are due now -- also those
-- put off to the end of an earlier, shorter pause this one outlasts -- but none due sooner
-- than ARGV[2] ms from now: a video claimed now has its lease deadline there, and moving it
-- would hand it to a second poller. At most ARGV[4] polls move (a poller puts off one
-- claim's batch).
-- KEYS: the pause key (its value: the pause's end, Redis ms), the poll schedule.
-- Returns {the ms the pause had left (0: none), the polls now due}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause_end = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('DEL', KEYS[1])
if pause_end <= now then return {0, 0} end
redis.call('PUBLISH', ARGV[1], '0')
local near = tonumber(ARGV[3])
local from = now + tonumber(ARGV[2])
local put_off = redis.call('ZRANGEBYSCORE', KEYS[2], from, pause_end + near,
  'LIMIT', 0, tonumber(ARGV[4]))
if #put_off > 0 then
  local due = {}
  for i = 1, #put_off do
    due[2 * i - 1] = now
    due[2 * i] = put_off[i]
  end
  redis.call('ZADD', KEYS[2], 'XX', unpack(due))
end
return {pause_end - now, #put_off}
