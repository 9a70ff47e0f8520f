-- Write poll results of claimed videos: each video's changed poll state and its next poll,
-- Redis' clock now + a delay -- only while the caller's claim holds (the video's score is
-- still the claim's lease deadline, its token), so a poller whose claim lapsed writes
-- nothing. KEYS: the poll schedule. ARGV: video key prefix, then per video: video id, the
-- claim's token (ms), the delay to its next poll (ms; '' leaves the schedule alone), the
-- number of field/value pairs that follow, the pairs (the changed poll state).
-- Returns the videos whose claim was no longer ours.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}
local i = 2
while i <= #ARGV do
  local vid, token, delay, n = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  if tonumber(redis.call('ZSCORE', KEYS[1], vid)) == token then
    if n > 0 then redis.call('HSET', ARGV[1] .. vid, unpack(ARGV, i + 4, i + 3 + 2 * n)) end
    if delay ~= '' then redis.call('ZADD', KEYS[1], 'XX', now + tonumber(delay), vid) end
  else
    lost[#lost + 1] = vid
  end
  i = i + 4 + 2 * n
end
return lost
