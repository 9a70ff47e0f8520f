-- Take claimed deliveries off the schedule -- only those whose claim is still the caller's
-- (the schedule's score is its token). A watch its claimer read as having nothing to send
-- (cancelled, final) may since have been redelivered or recovered: it is back on the
-- schedule under another score, and stays there.
-- KEYS: the schedule. ARGV: the claims' token (ms), members...
-- Returns the number taken off.
local token, gone = tonumber(ARGV[1]), {}
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
for i = 2, #ARGV do
  if scores[i - 1] and tonumber(scores[i - 1]) == token then gone[#gone + 1] = ARGV[i] end
end
if #gone == 0 then return 0 end
return redis.call('ZREM', KEYS[1], unpack(gone))
