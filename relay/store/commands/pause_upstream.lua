-- Pause every worker's upstream requests until ARGV[1] (ms), keeping a later pause already
-- set. KEYS: the pause key. ARGV: until ms, now ms.
local pause_end = tonumber(ARGV[1])
if pause_end > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], pause_end, 'PX', math.max(pause_end - tonumber(ARGV[2]), 1))
end
return 0
