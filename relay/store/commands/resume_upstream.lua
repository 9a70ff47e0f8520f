-- End the upstream pause a 429 set (an operator's `clip-relay upstream resume`): every
-- worker is told at once (ARGV[1], the pause channel: the message '0'), and the polls a
-- poller put off to the pause's end (due by ARGV[3] ms after it) are due now -- also those
-- put off to the end of an earlier, shorter pause this one outlasts -- but none due sooner
-- than ARGV[2] ms from now: a video claimed now has its lease deadline there, and moving it
-- would hand it to a second poller. At most ARGV[4] polls move a call: the caller calls
-- again, with ARGV[5] the pause's end the first call returned, while a call moves that
-- many (a poll moved is due now, before the range, so it is not found again). Until a call
-- moves fewer, KEYS[3] keeps the pause's end: a resume that stopped part-way (a Redis
-- error, Ctrl-C) is carried on by the next, though the pause is gone.
-- KEYS: the pause key (its value: the pause's end, Redis ms), the poll schedule, the
-- resuming key.
-- Returns {the ms the pause had left (0: none), the polls now due, the pause's end}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause_end = tonumber(ARGV[5])
local near = tonumber(ARGV[3])
local ended = pause_end  -- the end of the pause this call ended (what it had left)
if pause_end == 0 then
  pause_end = tonumber(redis.call('GET', KEYS[1]) or '0')
  redis.call('DEL', KEYS[1])
  ended = pause_end
  if pause_end > now then
    redis.call('PUBLISH', ARGV[1], '0')
    -- (a resume of a longer pause that stopped part-way: its polls are put off further)
    pause_end = math.max(pause_end, tonumber(redis.call('GET', KEYS[3]) or '0'))
    redis.call('SET', KEYS[3], pause_end, 'PX', pause_end - now + near + 60000)
  else  -- not paused: unless a resume stopped part-way, and left its pause's end
    pause_end = tonumber(redis.call('GET', KEYS[3]) or '0')
    ended = pause_end
    if pause_end <= now then return {0, 0, 0} end
  end
end
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
if #put_off < tonumber(ARGV[4]) then redis.call('DEL', KEYS[3]) end
return {math.max(ended - now, 0), #put_off, pause_end}
